"""Who may review, sessions that can be ended, and proof that a form post came from our own page.

* Reviewer tokens: one token per reviewer (``name:token``; the token names the reviewer), and/or
  one shared token, whose holder is recorded as ``"shared token"`` (a typed name proves nothing,
  so none is asked for). Every configured token is compared in constant time
  (``hmac.compare_digest``), all of them on every attempt.
* Sessions live on the server (``Sessions``, in memory): the cookie (starlette's signed cookie,
  HttpOnly, SameSite=Strict) carries only a random session id. Logout ends the session at once,
  every request checks that its reviewer is still configured with the same token, and a restart
  ends every session. Nothing an unauthenticated request does writes the session cookie, so a
  cross-site request cannot replace a reviewer's session.
* Login attempts are rate-limited per client address (``LoginLimiter``).
* CSRF: every form carries ``HMAC(secret, "csrf|" + session id)``; the login form's session id is
  a nonce in its own cookie (``gp_login``). A post without the token of its own session is
  refused, and so is one whose Origin / Sec-Fetch-Site says another site sent it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import GuardConfigError

MAX_NAME = 64
#: the resolver recorded for a decision taken with the shared token
SHARED_NAME = "shared token"


@dataclass
class ReviewAuth:
    """``token``: one shared reviewer token; ``reviewers``: ``{name: token}``. At least one."""

    token: str | None = None
    reviewers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.token and not self.reviewers:
            raise GuardConfigError("the review app needs a reviewer token (--token or --reviewer NAME:TOKEN)")
        for name, tok in [("shared", self.token or "x" * 16), *self.reviewers.items()]:
            if len(tok) < 16:
                raise GuardConfigError(f"reviewer token for {name!r} is too short: use 16+ characters")
            if not clean_name(name):
                raise GuardConfigError(f"bad reviewer name {name!r}")

    @property
    def shared(self) -> bool:
        """True when a shared token is configured (its holder is recorded as ``SHARED_NAME``)."""
        return bool(self.token)

    def login(self, token: str, name: str | None = None) -> str | None:
        """The reviewer this token names, ``SHARED_NAME`` for the shared token, or None.
        ``name`` is ignored: a typed name is no identity. Constant time per configured token."""
        given = token.encode("utf-8", "surrogatepass")
        found: str | None = None
        for rname, tok in self.reviewers.items():
            if hmac.compare_digest(given, tok.encode("utf-8")):
                found = rname
        if self.token is not None and hmac.compare_digest(given, self.token.encode("utf-8")) and found is None:
            found = SHARED_NAME
        return found

    def stamp(self, name: str) -> str | None:
        """A fingerprint of the token that logs ``name`` in now (None: no such reviewer any
        more). A session is valid only while its reviewer's stamp is unchanged."""
        tok = self.token if name == SHARED_NAME and name not in self.reviewers else self.reviewers.get(name)
        if not tok:
            return None
        return hashlib.sha256(b"reviewer|" + name.encode() + b"|" + tok.encode()).hexdigest()

    @staticmethod
    def parse_reviewers(specs: list[str]) -> dict[str, str]:
        """``["alice:token1", ...]`` -> ``{"alice": "token1"}``."""
        out: dict[str, str] = {}
        for spec in specs:
            name, sep, tok = spec.partition(":")
            if not sep or not name.strip() or not tok:
                raise GuardConfigError(f"--reviewer wants NAME:TOKEN, got {spec.split(':')[0]!r}:...")
            if name.strip() == SHARED_NAME:
                raise GuardConfigError(f"{SHARED_NAME!r} is the shared token's name: pick another reviewer name")
            out[name.strip()] = tok
        return out


@dataclass
class _Session:
    reviewer: str
    stamp: str
    expires: float


class Sessions:
    """Server-side sessions: ``open`` one at login, ``reviewer`` checks it on every request,
    ``close`` ends it (logout). In memory: a restart ends them all. At most ``max_sessions``
    live (the oldest go first), so a login flood cannot grow memory without bound."""

    def __init__(self, auth: ReviewAuth, max_age_s: float, *, max_sessions: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        self.auth, self.max_age_s, self.max_sessions, self.clock = auth, max_age_s, max_sessions, clock
        self._live: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def open(self, reviewer: str) -> str:
        stamp = self.auth.stamp(reviewer)
        if stamp is None:
            raise ValueError(f"{reviewer!r} is no configured reviewer")
        sid = new_session_id()
        with self._lock:
            while len(self._live) >= self.max_sessions:
                self._live.pop(next(iter(self._live)))
            self._live[sid] = _Session(reviewer, stamp, self.clock() + self.max_age_s)
        return sid

    def reviewer(self, sid: str | None) -> str | None:
        """The reviewer of a live session: not closed, not expired, and its reviewer still
        configured with the token it logged in with."""
        if not sid:
            return None
        with self._lock:
            s = self._live.get(sid)
            if s is None:
                return None
            if s.expires <= self.clock() or self.auth.stamp(s.reviewer) != s.stamp:
                del self._live[sid]
                return None
            return s.reviewer

    def close(self, sid: str | None) -> None:
        with self._lock:
            self._live.pop(sid or "", None)

    def __len__(self) -> int:
        return len(self._live)


class LoginLimiter:
    """At most ``max_failures`` failed logins per client address in ``window_s``; then that
    address is refused (even with a valid token) until the oldest failure leaves the window."""

    def __init__(self, max_failures: int = 10, window_s: float = 300.0, *, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        self.max_failures, self.window_s, self.max_clients, self.clock = max_failures, window_s, max_clients, clock
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> list[float]:
        kept = [t for t in self._failures.get(client, []) if now - t < self.window_s]
        if kept:
            self._failures[client] = kept
        else:
            self._failures.pop(client, None)
        return kept

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None when it may try now."""
        with self._lock:
            now = self.clock()
            recent = self._recent(client, now)
            if len(recent) < self.max_failures:
                return None
            return max(1.0, self.window_s - (now - recent[0]))

    def failed(self, client: str) -> None:
        with self._lock:
            now = self.clock()
            if client not in self._failures and len(self._failures) >= self.max_clients:
                self._failures.pop(next(iter(self._failures)))  # the oldest client first
            self._failures.setdefault(client, []).append(now)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)


def clean_name(name: str) -> str:
    """A reviewer name as recorded: printable, single line, at most 64 characters."""
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    return " ".join(name.split())[:MAX_NAME]


def new_session_id() -> str:
    return secrets.token_urlsafe(24)


def csrf_token(secret: str, session_id: str) -> str:
    return hmac.new(secret.encode(), b"csrf|" + session_id.encode(), hashlib.sha256).hexdigest()


def csrf_ok(secret: str, session_id: str | None, given: str | None) -> bool:
    if not session_id or not given:
        return False
    return hmac.compare_digest(csrf_token(secret, session_id).encode(), given.encode("utf-8", "surrogatepass"))


def same_origin(origin: str | None, fetch_site: str | None, host_url: str) -> bool:
    """False when the browser says another site sent the request (Origin / Sec-Fetch-Site)."""
    if fetch_site and fetch_site not in ("same-origin", "none"):
        return False
    if origin and origin != "null":
        return origin.rstrip("/") == host_url.rstrip("/")
    return origin != "null"


SECURITY_HEADERS = {
    # No script runs on these pages at all: even a template bug cannot execute injected markup.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    # the page needs no browser feature, and no other window may hold a reference to it
    "Permissions-Policy": "accelerometer=(), camera=(), display-capture=(), geolocation=(), gyroscope=(), "
    "microphone=(), payment=(), usb=(), clipboard-read=(), clipboard-write=()",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
#: added under --https-only (the page is served over TLS only): browsers refuse plain HTTP for a year
HSTS = ("Strict-Transport-Security", "max-age=31536000")


def security_headers(https_only: bool) -> dict[str, str]:
    """The headers every response carries, errors included."""
    return {**SECURITY_HEADERS, **(dict([HSTS]) if https_only else {})}


__all__ = ["HSTS", "SECURITY_HEADERS", "SHARED_NAME", "LoginLimiter", "ReviewAuth", "Sessions", "clean_name",
           "csrf_ok", "csrf_token", "new_session_id", "same_origin", "security_headers"]
