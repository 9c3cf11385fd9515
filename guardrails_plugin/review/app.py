"""The review web app: FastAPI, pages rendered on the server (Jinja2, autoescaped), no JavaScript.

``create_app(store, auth=ReviewAuth(token=...), guard=...)``; ``guardrails-plugin review serve``
builds one from the CLI options. Pages: ``/escalations`` (filters: status, stage, category, age),
``/escalations/{id}`` (content, verdicts with rationale and raw output, request context, decision
forms), ``/request/{request_id}`` (a webhook's link), ``/login``. See security.py for tokens,
sessions and CSRF.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import datetime, timezone
from importlib import resources
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.middleware.sessions import SessionMiddleware

from ..errors import GuardConfigError
from ..observe import STATUSES, AuditStore, EscalationAlreadyResolved, EscalationNotFound
from ..observe.reviews import reviewer_of
from ..types import Stage
from .display import finalize, install_filters
from .queue import AGE_FILTERS, ReviewError, ReviewQueue
from .security import (
    LoginLimiter,
    ReviewAuth,
    Sessions,
    csrf_ok,
    csrf_token,
    new_session_id,
    same_origin,
    security_headers,
)

SESSION_COOKIE = "gp_review"
#: the login form's CSRF nonce: its own cookie, so nothing before login writes the session cookie
LOGIN_COOKIE = "gp_login"
SESSION_MAX_AGE_S = 8 * 3600


class _NeedLogin(Exception):
    pass


class _Refused(Exception):
    def __init__(self, status: int, title: str, message: str, headers: dict[str, str] | None = None):
        self.status, self.title, self.message, self.headers = status, title, message, headers or {}


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(ts: float, now: float) -> str:
    s = max(0, int(now - ts))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("guardrails_plugin.review", "templates"),
        autoescape=True,  # everything shown is attacker-controlled text until proven otherwise
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=finalize,  # every {{ }}: hidden characters visible, every text encodable (display.py)
    )
    env.filters["when"] = _when
    env.filters["pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    install_filters(env)
    env.globals["reviewer_of"] = reviewer_of
    return env


def create_app(
    store: AuditStore,
    *,
    auth: ReviewAuth,
    guard: Any | None = None,
    secret_key: str | None = None,
    https_only: bool = False,
    login_limiter: LoginLimiter | None = None,
) -> FastAPI:
    """The review app over ``store``. ``guard`` re-checks reviewers' edits (edits are disabled
    without one). ``secret_key`` signs session cookies and CSRF tokens (random per start by
    default). Sessions live in this process (security.py ``Sessions``): logout, a reviewer's
    removal or token change, and a restart end them. ``login_limiter``: failed logins allowed per
    client address (default 10 per 5 minutes)."""
    secret = secret_key or secrets.token_urlsafe(32)
    queue = ReviewQueue(store, guard)
    sessions = Sessions(auth, SESSION_MAX_AGE_S)
    limiter = login_limiter or LoginLimiter()
    headers = security_headers(https_only)
    env = _templates()
    css = resources.files("guardrails_plugin.review").joinpath("static/review.css").read_text("utf-8")
    app = FastAPI(title="guardrails-plugin review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.queue, app.state.sessions = queue, sessions

    @app.middleware("http")
    async def security_headers_mw(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        for k, v in headers.items():
            response.headers.setdefault(k, v)
        return response

    # added after the headers middleware, so it wraps it: the session exists in every handler
    app.add_middleware(SessionMiddleware, secret_key=secret, session_cookie=SESSION_COOKIE,
                       max_age=SESSION_MAX_AGE_S, same_site="strict", https_only=https_only)

    # -- helpers ---------------------------------------------------------------------------------
    def current(request: Request) -> tuple[str, str] | None:
        """``(reviewer, session id)`` of a live session, else None (nothing is written)."""
        sid = request.session.get("sid") if SESSION_COOKIE in request.cookies else None
        who = sessions.reviewer(sid if isinstance(sid, str) else None)
        return (who, str(sid)) if who else None

    def render(request: Request, name: str, status: int = 200, *, csrf: str | None = None,
               extra_headers: dict[str, str] | None = None, **ctx: Any) -> HTMLResponse:
        """A page. Only a live session's page pops flashes or carries its CSRF token: rendering
        never creates or replaces a session (a 401 to a cross-site post must not log anyone out)."""
        me = current(request)
        flashes = request.session.pop("flash", []) if me else []
        html = env.get_template(name).render(
            reviewer=me[0] if me else None, csrf=csrf if csrf is not None else csrf_token(secret, me[1]) if me else "",
            flashes=flashes, **ctx)
        return HTMLResponse(html, status_code=status, headers=extra_headers)

    def flash(request: Request, level: str, text: str) -> None:
        request.session["flash"] = [*request.session.get("flash", []), [level, text]]

    def reviewer(request: Request) -> str:
        me = current(request)
        if me is None:
            raise _NeedLogin()
        return me[0]

    def check_origin(request: Request) -> None:
        if not same_origin(request.headers.get("origin"), request.headers.get("sec-fetch-site"),
                           str(request.base_url)):
            raise _Refused(403, "Cross-site request refused", "This form was not sent from this site.")

    def check_post(request: Request, csrf: str | None) -> None:
        """CSRF: the form's token must be this session's, and the browser must not say that
        another site sent the post."""
        check_origin(request)
        me = current(request)
        if not csrf_ok(secret, me[1] if me else None, csrf):
            raise _Refused(403, "CSRF check failed",
                           "The form's security token is missing or belongs to another session. "
                           "Reload the page and try again.")

    def login_nonce(request: Request) -> str | None:
        nonce = request.cookies.get(LOGIN_COOKIE)
        return f"login|{nonce}" if nonce and len(nonce) <= 64 else None

    def login_form(request: Request, next: str, status: int = 200, error: str | None = None,
                   extra_headers: dict[str, str] | None = None) -> HTMLResponse:
        nonce = request.cookies.get(LOGIN_COOKIE)
        fresh = not nonce or len(nonce) > 64
        if fresh:
            nonce = new_session_id()
        page = render(request, "login.html", status, csrf=csrf_token(secret, f"login|{nonce}"),
                      extra_headers=extra_headers, shared=auth.shared, next=_safe_next(next), error=error)
        if fresh:
            page.set_cookie(LOGIN_COOKIE, str(nonce), max_age=3600, path="/login", httponly=True,
                            samesite="strict", secure=https_only)
        return page

    @app.exception_handler(_NeedLogin)
    async def need_login(request: Request, exc: _NeedLogin) -> Response:
        if request.method == "GET":
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        return render(request, "error.html", 401, title="Not logged in",
                      message="Log in with a reviewer token first.")

    @app.exception_handler(_Refused)
    async def refused(request: Request, exc: _Refused) -> Response:
        return render(request, "error.html", exc.status, extra_headers=exc.headers, title=exc.title,
                      message=exc.message)

    @app.exception_handler(EscalationNotFound)
    async def not_found(request: Request, exc: EscalationNotFound) -> Response:
        return render(request, "error.html", 404, title="Not found", message=f"No escalation {exc.args[0]}.")

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        # starlette answers a 500 outside every middleware: the security headers go on here
        return HTMLResponse("<!doctype html><title>Server error</title><h1>Server error</h1>"
                            "<p>The review page hit an error; the server log has the details.</p>",
                            status_code=500, headers=headers)

    # -- login -----------------------------------------------------------------------------------
    @app.get("/healthz")
    def healthz() -> JSONResponse:
        return JSONResponse({"ok": True})

    @app.get("/static/review.css")
    def stylesheet() -> Response:
        return Response(css, media_type="text/css")

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/escalations") -> HTMLResponse:
        return login_form(request, next)

    @app.post("/login", response_class=HTMLResponse)
    def login(request: Request, token: str = Form(""), next: str = Form("/escalations"),
              csrf: str = Form("")) -> Response:
        check_origin(request)
        if not csrf_ok(secret, login_nonce(request), csrf):
            raise _Refused(403, "CSRF check failed", "The sign-in form expired or came from elsewhere. "
                           "Reload the page and try again.")
        client = request.client.host if request.client else "?"
        wait = limiter.retry_after(client)
        if wait is not None:
            return login_form(request, next, 429, f"Too many failed sign-ins: try again in {int(wait) + 1} s.",
                              {"Retry-After": str(int(wait) + 1)})
        who = auth.login(token)
        if who is None:
            limiter.failed(client)
            return login_form(request, next, 401, "Invalid reviewer token.")
        limiter.succeeded(client)
        me = current(request)
        if me:
            sessions.close(me[1])
        request.session.clear()  # a new server-side session on login: a planted one is worthless
        request.session["sid"] = sessions.open(who)
        out = RedirectResponse(_safe_next(next), status_code=303)
        out.delete_cookie(LOGIN_COOKIE, path="/login")
        return out

    @app.post("/logout")
    def logout(request: Request, csrf: str = Form("")) -> Response:
        check_post(request, csrf)
        me = current(request)
        sessions.close(me[1] if me else None)  # ended on the server: the old cookie is worthless
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # -- pages -----------------------------------------------------------------------------------
    @app.get("/")
    def home() -> Response:
        return RedirectResponse("/escalations", status_code=303)

    @app.get("/escalations", response_class=HTMLResponse)
    def list_page(request: Request, status: str = "pending", stage: str = "", category: str = "",
                  age: str = "") -> HTMLResponse:
        reviewer(request)
        if status not in (*STATUSES, "all") or (stage and stage not in {s.value for s in Stage}) \
                or (age and age not in AGE_FILTERS):
            raise _Refused(400, "Bad filter", "Unknown status, stage or age filter.")
        now = time.time()
        items = queue.find(status=None if status == "all" else status, stage=stage or None,
                           category=category or None, age=age or None, now=now)
        return render(request, "list.html", items=items, now=now, age_of=_age,
                      filters={"status": status, "stage": stage, "category": category, "age": age},
                      statuses=[*STATUSES, "all"], stages=[s.value for s in Stage],
                      categories=queue.categories(), ages=AGE_FILTERS)

    @app.get("/escalations/{id}", response_class=HTMLResponse)
    def detail_page(request: Request, id: int) -> HTMLResponse:
        reviewer(request)
        view = queue.view(id)
        return render(request, "detail.html", v=view, e=view.escalation, can_edit=guard is not None)

    @app.get("/request/{request_id}")
    def by_request(request: Request, request_id: str) -> Response:
        reviewer(request)
        esc = queue.by_request(request_id)
        if esc is None:
            raise _Refused(404, "Not found", "No escalation for that request.")
        return RedirectResponse(f"/escalations/{esc.id}", status_code=303)

    @app.post("/escalations/{id}/decide")
    def decide(request: Request, id: int, action: str = Form(...), note: str = Form(""), text: str = Form(""),
               csrf: str = Form("")) -> Response:
        who = reviewer(request)
        check_post(request, csrf)
        here = f"/escalations/{id}"
        try:
            if action == "approve":
                queue.approve(id, who, note)
                flash(request, "ok", f"Escalation {id} approved: the content is released.")
            elif action == "reject":
                queue.reject(id, who, note)
                flash(request, "ok", f"Escalation {id} rejected: the content stays blocked.")
            elif action == "edit":
                out = queue.edit(id, who, text, note)
                d = out.decision
                if out.released:
                    flash(request, "ok", f"Edit re-checked ({d.action}, risk {d.risk:.2f}) and released.")
                else:
                    flash(request, "error", f"Edit not released: {out.why}. The escalation stays pending.")
            else:
                raise _Refused(400, "Bad request", "Unknown action.")
        except EscalationAlreadyResolved as exc:
            raise _Refused(409, "Already resolved", str(exc)) from None
        except (ReviewError, GuardConfigError) as exc:
            flash(request, "error", str(exc))
        return RedirectResponse(here, status_code=303)

    return app


def _safe_next(target: str) -> str:
    """Only a path on this site (no scheme, no //host): login must not become an open redirect."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/escalations"
    return target


__all__ = ["LOGIN_COOKIE", "SESSION_COOKIE", "create_app"]
