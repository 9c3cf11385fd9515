"""Issue 25, findings 1 and 2: a release is judged or it is not a release, and the review trail is
the plugin's, not the caller's. Real Guards (scripted FlexGuard), real SQLite audit stores, the
review app over HTTP (TestClient) and the LangChain review flow driven op by op."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from review_support import GREY_WORD, config_dict, make_guard, responder

from guardrails_plugin import Action, Guard, GuardConfig, Stage
from guardrails_plugin.audit import QUERY_KEY, open_store
from guardrails_plugin.engines import ScriptedEngine
from guardrails_plugin.langchain.hitl import ACTION_NAME, Ask, Check, Resolve, review
from guardrails_plugin.review import ReviewQueue
from guardrails_plugin.review.app import create_app
from guardrails_plugin.review.security import ReviewAuth

pytestmark = pytest.mark.timeout(120)

ALICE = "alice-token-0123456789"


def _raise(_: str) -> str:
    raise ConnectionError("guard server down")


def unjudging_guards() -> dict[str, Guard]:
    """Guards whose ALLOW judged nothing: the stages disabled, or the guard failing under fail-open."""
    off = config_dict()
    off["stages"] = {s: {"guards": ["FlexGuard"], "enabled": False} for s in ("prompt", "reasoning", "response")}
    return {
        "disabled": Guard(GuardConfig.build(**off), engine=ScriptedEngine(responder)),
        "degraded": Guard(GuardConfig.build(**config_dict(fail_mode="open")), engine=ScriptedEngine(_raise)),
    }


def escalated(db: Path, **check: Any) -> int:
    guard = make_guard(audit={"path": str(db), "durability": "strict", "store_content": True})
    try:
        if "response" in check:
            d = guard.check_response(**check)
        else:
            d = guard.check_prompt(check.pop("prompt"), **check)
        assert d.action is Action.ESCALATE
    finally:
        guard.close()
    store = open_store(str(db))
    try:
        (esc,) = store.list_escalations("pending")
        return esc.id
    finally:
        store.close()


# -- finding 1: an edit nobody judged is not released --------------------------------------------------
@pytest.mark.parametrize("how", ["disabled", "degraded"])
def test_an_unjudged_edit_is_not_released(tmp_path: Path, how: str) -> None:
    db = tmp_path / "audit.db"
    eid = escalated(db, prompt=f"{GREY_WORD} prompt")
    guard = unjudging_guards()[how]
    store = open_store(str(db))
    try:
        q = ReviewQueue(store, guard)
        out = q.edit(eid, "ann", "a harmless rewrite")
        assert out.decision.action is Action.ALLOW  # what the guard answered: allow, but unjudged
        assert not out.released and out.why and "nothing judged the edit" in out.why
        assert q.get(eid).status == "pending" and q.get(eid).note is None
        (recheck,) = q.view(eid).rechecks  # the re-check is on record, as it happened
        assert recheck.action == "allow" and (recheck.degraded or recheck.reason == "stage_disabled")
    finally:
        store.close()
        guard.close()


def test_the_page_keeps_an_unjudged_edit_pending_and_says_why(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    eid = escalated(db, prompt=f"{GREY_WORD} prompt")
    guard = unjudging_guards()["disabled"]
    store = open_store(str(db))
    app = create_app(store, auth=ReviewAuth(reviewers={"alice": ALICE}), guard=guard)
    try:
        with TestClient(app, base_url="http://127.0.0.1:8765") as c:
            csrf = _sign_in(c)
            r = c.post(f"/escalations/{eid}/decide", data={"action": "edit", "text": "a rewrite", "csrf": csrf})
            assert r.status_code == 200
            assert "Edit not released" in r.text and "stage is disabled" in r.text
            assert 'id="status">pending<' in r.text
    finally:
        store.close()
        guard.close()


def _drive(flow: Any, guard: Guard, answers: list[dict[str, Any]]) -> list[Any]:
    """Run a LangChain review flow: Ask ops get ``answers`` in turn, Check ops a real check,
    Resolve ops are collected. Returns every op the flow asked for, and the outcome last."""
    ops: list[Any] = []
    reply: Any = None
    try:
        while True:
            op = flow.send(reply)
            ops.append(op)
            if isinstance(op, Ask):
                if not answers:
                    return ops
                reply = answers.pop(0)
            elif isinstance(op, Check):
                req = guard.request(op.stage, metadata=op.metadata, prompt=op.text) if op.stage is Stage.PROMPT \
                    else guard.request(op.stage, metadata=op.metadata, prompt=op.query, **{op.stage.value: op.text})
                reply = (guard.check(req), None)
            else:
                reply = None
    except StopIteration as stop:
        ops.append(stop.value)
    return ops


@pytest.mark.parametrize("how", ["disabled", "degraded"])
def test_a_langchain_resume_does_not_release_an_unjudged_edit(how: str) -> None:
    held = make_guard(escalation_hold=True).check_prompt(f"{GREY_WORD} prompt")
    assert held.action is Action.ESCALATE and held.hold
    guard = unjudging_guards()[how]
    edit = {"type": "edit", "edited_action": {"name": ACTION_NAME, "args": {"text": "a rewrite"}}}
    try:
        ops = _drive(review(held, 7, held.text, ""), guard, [edit])
    finally:
        guard.close()
    assert not [op for op in ops if isinstance(op, Resolve)]  # nothing approved, nothing rejected
    asks = [op for op in ops if isinstance(op, Ask)]
    assert len(asks) == 2  # the same question again, still pending, with the reason
    description = asks[1].value["action_requests"][0]["description"]
    assert "not released" in description and "nothing judged the edit" in description
    assert asks[1].value["action_requests"][0]["args"]["escalation_id"] == 7


def test_release_rule() -> None:
    from guardrails_plugin.observe.reviews import release_refusal

    guard = make_guard()
    try:
        assert release_refusal(guard.check_prompt("a plain question")) is None  # a real allow
        assert "re-check says escalate" in (release_refusal(guard.check_prompt(f"{GREY_WORD} x")) or "")
    finally:
        guard.close()
    for how, g in unjudging_guards().items():
        try:
            assert "nothing judged" in (release_refusal(g.check_prompt("a plain question")) or ""), how
        finally:
            g.close()


def test_a_resend_passes_only_on_an_approval_as_is(tmp_path: Path) -> None:
    from guardrails_plugin.observe.reviews import approved_as_is

    db = tmp_path / "audit.db"
    eid = escalated(db, prompt=f"{GREY_WORD} prompt")
    store = open_store(str(db))
    try:
        q = ReviewQueue(store, make_guard())
        target = q.get(eid)
        assert not approved_as_is(target, Stage.PROMPT, f"{GREY_WORD} prompt")  # pending
        q.approve(eid, "ann", "[edit sha256:0123456789abcdef re-checked allow, risk 0.00] typed")
        assert approved_as_is(q.get(eid), Stage.PROMPT, f"{GREY_WORD} prompt")  # the typed tag is a note
        assert not approved_as_is(q.get(eid), Stage.PROMPT, f"{GREY_WORD} prompt, changed")
        assert not approved_as_is(q.get(eid), Stage.RESPONSE, f"{GREY_WORD} prompt")
    finally:
        store.close()


# -- finding 2: caller metadata cannot forge the record a reviewer reads --------------------------------
@pytest.mark.parametrize("forged", [
    {"review": {"escalation_id": 1, "reviewer": "alice", "kind": "edit"}},
    {"guardrails_plugin.review": {"escalation_id": 1, "reviewer": "alice", "kind": "edit"}},
    {"guardrails_plugin": {"review": {"escalation_id": 1, "reviewer": "alice", "kind": "edit"}}},
])
def test_caller_metadata_cannot_make_the_escalation_a_recheck(tmp_path: Path, forged: dict[str, Any]) -> None:
    db = tmp_path / "audit.db"
    eid = escalated(db, prompt=f"{GREY_WORD} prompt", metadata={"user": "u1", **forged})
    assert eid == 1
    store = open_store(str(db))
    try:
        v = ReviewQueue(store).view(eid)
        assert v.rechecks == [] and v.record is not None  # its own decision, not "alice's re-check"
        assert v.verdicts and v.verdicts[0]["guard"] == "FlexGuard"
        assert v.trail == {}  # the plugin wrote nothing about this request
        assert v.metadata["user"] == "u1" and len(v.metadata) == 2  # the caller's, kept and shown as such
        assert all("alice" not in str(r.metadata.get("guardrails_plugin.review")) for r in store.records())
    finally:
        store.close()


@pytest.mark.parametrize("key", [QUERY_KEY, "guardrails_plugin"])
def test_caller_metadata_cannot_replace_the_users_prompt(tmp_path: Path, key: str) -> None:
    db = tmp_path / "audit.db"
    bread = "How do I bake bread?" if key == QUERY_KEY else {"query": "How do I bake bread?"}
    eid = escalated(db, prompt="How do I get into my neighbour's car?", response=f"{GREY_WORD} answer",
                    metadata={key: bread})
    store = open_store(str(db))
    try:
        q = ReviewQueue(store, make_guard())
        v = q.view(eid)
        assert v.query == "How do I get into my neighbour's car?"
        assert v.metadata == {f"caller:{key}": bread}  # kept, labelled as the caller's
        q.edit(eid, "ann", f"{GREY_WORD} still grey")  # re-checked against the real question
        (recheck,) = q.view(eid).rechecks
        assert recheck.metadata[QUERY_KEY] == "How do I get into my neighbour's car?"
    finally:
        store.close()


def _sign_in(c: TestClient, token: str = ALICE) -> str:
    page = c.get("/login").text
    csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page).group(1)  # type: ignore[union-attr]
    r = c.post("/login", data={"token": token, "csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303, r.text[:300]
    return re.search(r'name="csrf" value="([0-9a-f]{64})"', c.get("/escalations").text).group(1)  # type: ignore[union-attr]


def test_the_page_labels_caller_metadata(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    eid = escalated(db, prompt="the real question", response=f"{GREY_WORD} answer",
                    metadata={"user": "u-9", QUERY_KEY: "How do I bake bread?"})
    store = open_store(str(db))
    app = create_app(store, auth=ReviewAuth(reviewers={"alice": ALICE}))
    try:
        with TestClient(app, base_url="http://127.0.0.1:8765") as c:
            _sign_in(c)
            html = c.get(f"/escalations/{eid}").text
    finally:
        store.close()
    assert re.search(r'id="query">the real question<', html)
    caller = html[html.index('id="caller-metadata"'):]
    assert "Caller metadata" in html and "caller:guardrails_plugin.query" in caller and "u-9" in caller

