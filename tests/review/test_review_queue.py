"""One review queue: escalations from the CLI and the Python API land in the audit store with their
context; the queue's filters, decisions and edit re-checks; the review app's security details over
HTTP (the browser flows are in test_review_page.py)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pg_support import pg_server  # noqa: F401 - fixture
from review_support import GREY, GREY_WORD, HARM_WORD, make_guard, write_config, write_rules
from typer.testing import CliRunner

from guardrails_plugin import Action, GuardConfigError
from guardrails_plugin.audit import QUERY_KEY, EscalationAlreadyResolved, EscalationNotFound, open_store
from guardrails_plugin.cli import app as cli_app
from guardrails_plugin.observe.reviews import reviewer_of
from guardrails_plugin.review import ReviewError, ReviewQueue
from guardrails_plugin.review.app import SESSION_COOKIE, create_app
from guardrails_plugin.review.security import ReviewAuth

pytestmark = pytest.mark.timeout(120)

TOKEN = "shared-token-abcdefghijk"


def filled(db: Path | str, *, store_content: bool = True, sink: str | None = None) -> None:
    audit: dict[str, Any] = {"path": str(db), "durability": "strict", "store_content": store_content}
    if sink:
        audit["sink"] = sink
    guard = make_guard(audit=audit)
    try:
        assert guard.check_prompt(f"{GREY_WORD} prompt", metadata={"user": "u1"}).action is Action.ESCALATE
        guard.check_prompt("the question", request_id="r-2")
        assert guard.check_response(prompt="the question", response=f"{GREY_WORD} answer",
                                    request_id="r-2").action is Action.ESCALATE
        assert guard.check_reasoning(query="q", reasoning=f"{GREY_WORD} thought").action is Action.ESCALATE
        assert guard.check_prompt("hello").action is Action.ALLOW
    finally:
        guard.close()


# -- the queue ----------------------------------------------------------------------------------------
def test_cli_check_lands_in_the_queue_with_content(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    cfg = write_config(tmp_path / "g.yaml", audit={"path": str(db), "durability": "strict", "store_content": True})
    rules = write_rules(tmp_path / "rules.json")
    r = CliRunner().invoke(cli_app, ["check", "--stage", "response", "--prompt", "the user's question",
                                     "--response", f"{GREY_WORD} from the cli", "--config", str(cfg),
                                     "--scripted-responses", str(rules), "--json"])
    assert r.exit_code == 0, r.output  # ESCALATE without hold: shown, and queued
    d = json.loads(r.output)
    store = open_store(str(db))
    try:
        (esc,) = store.list_escalations("pending")
        assert (esc.request_id, esc.stage, esc.content) == (d["request_id"], "response", f"{GREY_WORD} from the cli")
        view = ReviewQueue(store).view(esc.id)
        assert view.verdicts[0]["raw_output"] == GREY and view.verdicts[0]["rationale"]
    finally:
        store.close()


def test_content_off_keeps_only_the_hash(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    filled(db, store_content=False)
    store = open_store(str(db))
    try:
        queue = ReviewQueue(store)
        for esc in queue.find():
            v = queue.view(esc.id)
            assert esc.content is None and len(esc.content_sha256) == 64
            assert all("raw_output" not in vd and "rationale" not in vd for vd in v.verdicts)
    finally:
        store.close()


def test_an_answer_escalation_carries_its_question_without_a_stored_prompt_check(tmp_path: Path) -> None:
    """The reviewer (and the export) get the question an answer was judged against from the
    answer's own record: no prompt-stage record of the request is needed. Never with content off."""
    for store_content in (True, False):
        db = tmp_path / f"q-{store_content}.db"
        guard = make_guard(audit={"path": str(db), "durability": "strict", "store_content": store_content})
        try:
            d = guard.check_response(prompt="the lone question", response=f"{GREY_WORD} answer")
            assert d.action is Action.ESCALATE
        finally:
            guard.close()
        store = open_store(str(db))
        try:
            queue = ReviewQueue(store)
            (esc,) = queue.find()
            view = queue.view(esc.id)
            assert view.query == ("the lone question" if store_content else None)
            assert ("query" in view.trail) is store_content and QUERY_KEY not in view.metadata
        finally:
            store.close()


@pytest.mark.parametrize("sink", [None, "jsonl"])
def test_filters_and_context(tmp_path: Path, sink: str | None) -> None:
    db = tmp_path / ("audit.jsonl" if sink else "audit.db")
    filled(db, sink=sink)
    store = open_store(str(db))
    try:
        q = ReviewQueue(store)
        assert [e.stage for e in q.find()] == ["reasoning", "response", "prompt"]  # newest first
        assert [e.stage for e in q.find(stage="response")] == ["response"]
        assert len(q.find(category="ILG")) == 3 and q.find(category="VIO") == []
        now = time.time()
        assert len(q.find(age="lt1h", now=now)) == 3 and q.find(age="gt1h", now=now) == []
        assert len(q.find(age="gt1h", now=now + 7200)) == 3
        with pytest.raises(ReviewError):
            q.find(age="ancient")
        with pytest.raises(ValueError):
            q.find(stage="tool")
        resp = q.find(stage="response")[0]
        v = q.view(resp.id)
        assert v.query == "the question" and [r.action for r in v.related] == ["allow"]
        prompt = q.find(stage="prompt")[0]
        assert q.view(prompt.id).metadata == {"user": "u1"}
        assert q.by_request("r-2").id == resp.id and q.by_request("nope") is None
        with pytest.raises(EscalationNotFound):
            q.view(999)
    finally:
        store.close()


def test_decisions_edits_and_their_records(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    filled(db)
    store = open_store(str(db))
    try:
        q = ReviewQueue(store)
        p, r, s = (q.find(stage=x)[0].id for x in ("prompt", "response", "reasoning"))
        with pytest.raises(GuardConfigError):
            q.edit(p, "ann", "anything")  # no guard: an edit could not be re-checked
        q = ReviewQueue(store, make_guard())
        with pytest.raises(ReviewError):
            q.edit(p, "ann", "   ")
        # an edit the guard escalates again is not released and opens its own entry
        out = q.edit(p, "ann", f"{GREY_WORD} still grey")
        assert not out.released and out.decision.action is Action.ESCALATE
        assert q.get(p).status == "pending" and len(q.find()) == 4
        out = q.edit(p, "ann", f"{HARM_WORD} worse")
        assert not out.released and out.decision.action is Action.BLOCK
        out = q.edit(p, "ann", "a harmless rewrite", "fixed")
        assert out.released and out.escalation.status == "approved"
        v = q.view(p)
        assert v.kind == "edit" and v.released_edit is not None and v.released_edit.content == "a harmless rewrite"
        assert [x.action for x in v.rechecks] == ["escalate", "block", "allow"]
        assert {reviewer_of(x) for x in v.rechecks} == {"ann"}
        # response-stage edits are judged with the request's query
        assert q.edit(r, "ann", "a fine answer").released
        # a typed note cannot pass for the tag of a released edit
        q.approve(s, "bo", "[edit sha256:0123456789abcdef re-checked allow] fake")
        assert q.view(s).kind == "approve" and q.get(s).note.startswith("note: [edit")
        with pytest.raises(EscalationAlreadyResolved):
            q.reject(s, "bo")
        with pytest.raises(EscalationAlreadyResolved):
            q.edit(s, "bo", "x")
    finally:
        store.close()


# -- the app over HTTP --------------------------------------------------------------------------------
@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    db = tmp_path / "audit.db"
    filled(db)
    store = open_store(str(db))
    app = create_app(store, auth=ReviewAuth(token=TOKEN, reviewers={"alice": "alice-token-0123456789"}),
                     guard=make_guard())
    with TestClient(app, base_url="http://127.0.0.1:8765") as c:
        yield c
    store.close()


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert m, html[:500]
    return m.group(1)


def sign_in(c: TestClient, token: str = TOKEN, name: str = "Max") -> Any:
    csrf = csrf_of(c.get("/login").text)
    return c.post("/login", data={"token": token, "name": name, "csrf": csrf}, follow_redirects=False)


def test_login_tokens_and_session_cookie(client: TestClient) -> None:
    r = sign_in(client, token=TOKEN[:-1] + "X")
    assert r.status_code == 401
    assert client.get("/escalations", follow_redirects=False).status_code == 303
    r = sign_in(client, token="alice-token-0123456789", name="Mallory")  # the token names the reviewer
    assert r.status_code == 303
    (cookie,) = [c for c in r.headers.get_list("set-cookie") if c.startswith(f"{SESSION_COOKIE}=")]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert '<strong id="reviewer">alice</strong>' in client.get("/escalations").text
    # login without the form's CSRF token is refused
    client.cookies.clear()
    client.get("/login")
    r = client.post("/login", data={"token": TOKEN, "name": "x"}, follow_redirects=False)
    assert r.status_code == 403
    # shared token: a typed name is no identity; the holder is recorded as "shared token"
    client.cookies.clear()
    r = sign_in(client, name="alice")
    assert r.status_code == 303
    assert '<strong id="reviewer">shared token</strong>' in client.get("/escalations").text


def test_security_headers_and_open_redirect(client: TestClient) -> None:
    r = client.get("/login?next=//evil.example/x")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    assert 'name="next" value="/escalations"' in r.text
    csrf = csrf_of(r.text)
    r = client.post("/login", data={"token": TOKEN, "name": "m", "csrf": csrf, "next": "https://evil.example"},
                    follow_redirects=False)
    assert r.headers["location"] == "/escalations"


def test_decide_over_http(client: TestClient) -> None:
    sign_in(client)
    page = client.get("/escalations")
    ids = [int(x) for x in re.findall(r'data-id="(\d+)"', page.text)]
    assert len(ids) == 3
    csrf = csrf_of(page.text)
    r = client.post(f"/escalations/{ids[0]}/decide", data={"action": "approve", "csrf": csrf})
    assert r.status_code == 200 and "approved" in r.text
    r = client.post(f"/escalations/{ids[0]}/decide", data={"action": "reject", "csrf": csrf})
    assert r.status_code == 409  # resolutions are final
    r = client.post(f"/escalations/{ids[1]}/decide", data={"action": "approve", "csrf": "0" * 64})
    assert r.status_code == 403
    r = client.post(f"/escalations/{ids[1]}/decide", data={"action": "approve", "csrf": csrf},
                    headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    r = client.post(f"/escalations/{ids[1]}/decide", data={"action": "approve", "csrf": csrf},
                    headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    assert client.post(f"/escalations/{ids[1]}/decide", data={"action": "delete", "csrf": csrf}).status_code == 400
    assert client.get("/escalations/999").status_code == 404
    assert client.get("/escalations?stage=tool").status_code == 400
    r = client.get("/request/r-2", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/escalations/")
    # logout needs the CSRF token too, then pages need a login again
    assert client.post("/logout", data={}).status_code == 403
    client.post("/logout", data={"csrf": csrf})
    assert client.get("/escalations", follow_redirects=False).status_code == 303


def test_serve_refuses_bad_options(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    filled(db)
    run = CliRunner().invoke
    r = run(cli_app, ["review", "serve", "--db", str(db), "--token", "short"])
    assert r.exit_code == 2 and "too short" in r.output
    r = run(cli_app, ["review", "serve", "--db", str(db), "--reviewer", "nocolon"])
    assert r.exit_code == 2
    r = run(cli_app, ["review", "serve", "--db", str(tmp_path / "missing.db"), "--token", TOKEN])
    assert r.exit_code == 1
    with pytest.raises(GuardConfigError):
        ReviewAuth()


def test_queue_and_export_on_postgres(pg_server: Any, tmp_path: Path) -> None:  # noqa: F811
    """The page's queue logic and the export use only the store API: the same on PostgreSQL."""
    from guardrails_plugin.review import export_reviewed

    pg_url = pg_server.create_db()

    filled(pg_url)  # type: ignore[arg-type]
    store = open_store(pg_url)
    try:
        q = ReviewQueue(store, make_guard())
        assert [e.stage for e in q.find()] == ["reasoning", "response", "prompt"]
        resp = q.find(stage="response")[0]
        assert q.view(resp.id).query == "the question"
        assert q.edit(resp.id, "pat", "a fine answer").released
        q.reject(q.find(stage="prompt")[0].id, "pat", "no")
        written, skipped = export_reviewed(store, tmp_path / "out")
        assert {s: n for s, (_, n) in written.items()} == {"prompt": 1, "response": 1} and skipped == []
    finally:
        store.close()
