"""Issue 25, findings 3, 4 and 7 over HTTP (the review app in-process, a real SQLite store a Guard
filled): who a decision is recorded as, sessions that end, the 401 page, the login rate limit, and
the security headers on every response (errors included). The browser flows are in
test_review_page.py (a real cross-site post) and test_review_display.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from review_support import GREY_WORD, make_guard

from guardrails_plugin import Action
from guardrails_plugin.audit import open_store
from guardrails_plugin.review.app import SESSION_COOKIE, create_app
from guardrails_plugin.review.security import ReviewAuth

pytestmark = pytest.mark.timeout(120)

SHARED = "shared-token-abcdefghijk"
ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789ab"
SECRET = "a-fixed-secret-key-for-restarts"
BASE = "http://127.0.0.1:8765"
HEADERS = ("content-security-policy", "x-frame-options", "x-content-type-options", "referrer-policy",
           "cache-control", "permissions-policy", "cross-origin-opener-policy")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Any]:
    db = tmp_path / "audit.db"
    guard = make_guard(audit={"path": str(db), "durability": "strict", "store_content": True})
    try:
        for i in range(3):
            assert guard.check_prompt(f"{GREY_WORD} prompt {i}").action is Action.ESCALATE
    finally:
        guard.close()
    s = open_store(str(db))
    yield s
    s.close()


def app_for(store: Any, **auth: Any) -> Any:
    return create_app(store, auth=ReviewAuth(**auth), guard=make_guard(), secret_key=SECRET)


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert m, html[:400]
    return m.group(1)


def sign_in(c: TestClient, token: str, name: str = "") -> Any:
    csrf = csrf_of(c.get("/login").text)
    return c.post("/login", data={"token": token, "name": name, "csrf": csrf}, follow_redirects=False)


def pending(store: Any) -> list[int]:
    return [e.id for e in store.list_escalations("pending")]


# -- finding 3: identity ---------------------------------------------------------------------------------
def test_a_shared_token_records_shared_token_never_a_typed_name(store: Any) -> None:
    app = app_for(store, token=SHARED, reviewers={"alice": ALICE})
    with TestClient(app, base_url=BASE) as c:
        assert sign_in(c, SHARED, name="alice").status_code == 303  # the holder types "alice"
        eid = pending(store)[0]
        csrf = csrf_of(c.get(f"/escalations/{eid}").text)
        c.post(f"/escalations/{eid}/decide", data={"action": "approve", "csrf": csrf})
    assert store.get_escalation(eid).resolver == "shared token"


def test_a_removed_reviewer_is_signed_out_after_a_restart_with_the_same_secret(store: Any) -> None:
    before = app_for(store, reviewers={"alice": ALICE, "bob": BOB})
    with TestClient(before, base_url=BASE) as c:
        assert sign_in(c, BOB).status_code == 303
        cookie = c.cookies[SESSION_COOKIE]
    after = app_for(store, reviewers={"alice": ALICE})  # restarted without bob, same --secret-key
    with TestClient(after, base_url=BASE, cookies={SESSION_COOKIE: cookie}) as c:
        assert c.get("/escalations", follow_redirects=False).status_code == 303  # to the login page
        eid = pending(store)[0]
        r = c.post(f"/escalations/{eid}/decide", data={"action": "approve", "csrf": "0" * 64})
        assert r.status_code in (401, 403)
    assert store.get_escalation(eid).status == "pending"


def test_logout_ends_the_session_at_once(store: Any) -> None:
    app = app_for(store, reviewers={"alice": ALICE})
    with TestClient(app, base_url=BASE) as c:
        assert sign_in(c, ALICE).status_code == 303
        old = c.cookies[SESSION_COOKIE]
        page = c.get("/escalations")
        assert page.status_code == 200
        csrf = csrf_of(page.text)
        c.post("/logout", data={"csrf": csrf}, follow_redirects=False)
    with TestClient(app, base_url=BASE, cookies={SESSION_COOKIE: old}) as replay:  # the old cookie, kept
        assert replay.get("/escalations", follow_redirects=False).status_code == 303
        eid = pending(store)[0]
        r = replay.post(f"/escalations/{eid}/decide", data={"action": "approve", "csrf": csrf})
        assert r.status_code == 401
    assert store.get_escalation(eid).status == "pending"


def test_failed_logins_are_rate_limited(store: Any) -> None:
    app = app_for(store, reviewers={"alice": ALICE})
    with TestClient(app, base_url=BASE) as c:
        for _ in range(10):
            assert sign_in(c, "wrong-token-0000000000").status_code == 401
        r = sign_in(c, ALICE)  # the right token, but this address has spent its attempts
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        assert SESSION_COOKIE not in c.cookies
        assert c.get("/escalations", follow_redirects=False).status_code == 303


# -- finding 4: the 401 page never replaces a session ----------------------------------------------------
def test_an_unauthenticated_post_sets_no_session_cookie(store: Any) -> None:
    """A cross-site post arrives without the SameSite=Strict cookie: its 401 answer must not set
    one (the browser would replace the reviewer's session with it)."""
    app = app_for(store, reviewers={"alice": ALICE})
    with TestClient(app, base_url=BASE) as c:
        eid = pending(store)[0]
        r = c.post(f"/escalations/{eid}/decide", data={"action": "approve"},
                   headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 401
        assert not [h for h in r.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE)]
        r = c.post("/logout", data={}, headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403 and not r.headers.get_list("set-cookie")
        r = c.get("/login")  # the login form's nonce has its own cookie, never the session's
        assert not [h for h in r.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE)]


# -- finding 7: security headers on every response -------------------------------------------------------
def test_security_headers_on_every_response_errors_included(store: Any) -> None:
    app = app_for(store, reviewers={"alice": ALICE})

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("store exploded")

    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as c:
        answers = {"login": c.get("/login"), "401": c.post("/escalations/1/decide", data={"action": "approve"}),
                   "unknown route": c.get("/nope"), "healthz": c.get("/healthz")}
        sign_in(c, ALICE)
        answers["404"] = c.get("/escalations/999")
        answers["page"] = c.get("/escalations")
        store.list_escalations = broken  # the next page hits a server error
        answers["500"] = c.get("/escalations")
    assert answers["500"].status_code == 500 and "store exploded" not in answers["500"].text
    for what, r in answers.items():
        missing = [h for h in HEADERS if h not in r.headers]
        assert not missing, (what, r.status_code, missing)
        assert r.headers["cross-origin-opener-policy"] == "same-origin"
        assert "camera=()" in r.headers["permissions-policy"]
        assert "strict-transport-security" not in r.headers  # plain HTTP: no HSTS


def test_a_server_error_carries_the_security_headers(store: Any) -> None:
    app = app_for(store, reviewers={"alice": ALICE})

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("store exploded")

    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as c:
        sign_in(c, ALICE)
        store.records = broken
        r = c.get(f"/escalations/{pending(store)[0]}")
    assert r.status_code == 500
    for h in ("content-security-policy", "x-frame-options", "x-content-type-options", "cache-control"):
        assert h in r.headers, h


def test_hsts_under_https_only(store: Any) -> None:
    app = create_app(store, auth=ReviewAuth(reviewers={"alice": ALICE}), https_only=True)
    with TestClient(app, base_url="https://review.example", raise_server_exceptions=False) as c:
        for r in (c.get("/login"), c.get("/nope"), c.post("/escalations/1/decide", data={"action": "x"})):
            assert r.headers["strict-transport-security"] == "max-age=31536000", r.status_code
