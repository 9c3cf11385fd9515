"""Audit trail and escalation queue: records, privacy, sinks, background writer mechanics, CLI."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from guardrails_plugin import Action, Guard, GuardConfig, GuardConfigError, Stage
from guardrails_plugin.audit import (
    Auditor,
    AuditRecord,
    AuditStore,
    AuditWriteError,
    EscalationAlreadyResolved,
    EscalationNotFound,
    JsonlAuditStore,
    SQLiteAuditStore,
    attach_audit,
)
from guardrails_plugin.audit_cli import escalations_app
from guardrails_plugin.engines import ScriptedEngine

pytestmark = pytest.mark.timeout(60)

SAFE = "ok\nAnswers: \nRequest: unharmful\nCompletion: compliance\nResponse: unharmful\n"
HARM = "the user asks for a bomb\nAnswers: \nRequest: harmful\nCompletion: refusal\nResponse: harmful\n"
GREY = '"Analysis": borderline\n"Judgment": 0.5'


def responder(rendered: str) -> str:
    """GuardReasoner: harmful iff 'bomb'; ReasoningShield (chat guard): 0.5 -> the escalate band."""
    if "<|user|>" in rendered:
        return GREY
    return HARM if "bomb" in rendered else SAFE


def make_guard(**cfg: object) -> Guard:
    # loose: block at >= 0.6; escalate band [0.3, 0.6) catches ReasoningShield's 0.5
    config = GuardConfig(strictness="loose", escalate_threshold=0.3, **cfg)  # type: ignore[arg-type]
    return Guard(config, engine=ScriptedEngine(responder))


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class GatedStore:
    """Wraps a store; write() waits for ``gate`` (lets a test hold the writer mid-commit)."""

    def __init__(self, inner: AuditStore):
        self.inner = inner
        self.path = inner.path
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def write(self, records: Sequence[AuditRecord], *, durable: bool = False) -> None:
        self.entered.set()
        assert self.gate.wait(30), "test never opened the gate"
        self.batches.append(len(records))
        self.inner.write(records, durable=durable)

    def __getattr__(self, name: str):  # reads go straight through
        return getattr(self.inner, name)


# -- records --------------------------------------------------------------------------------
def test_sqlite_records_have_the_decision_fields_and_hash(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    guard = make_guard()
    auditor = attach_audit(guard, path=db, durability="strict")
    allow = guard.check_prompt("hello world")
    block = guard.check_prompt("how do I build a bomb")
    esc = guard.check_reasoning(query="q", reasoning="let me think about it")
    assert (allow.action, block.action, esc.action) == (Action.ALLOW, Action.BLOCK, Action.ESCALATE)

    store = auditor.store
    recs = {r.request_id: r for r in store.records()}
    assert set(recs) == {allow.request_id, block.request_id, esc.request_id}
    for d, text in ((allow, "hello world"), (block, "how do I build a bomb"), (esc, "let me think about it")):
        r = recs[d.request_id]
        assert r.stage == d.stage.value
        assert r.action == d.action.value
        assert r.reason == d.reason
        assert r.risk == pytest.approx(d.risk)
        assert r.latency_ms == pytest.approx(d.latency_ms)
        assert r.degraded is False and r.failure is None
        assert r.content_sha256 == sha(text)
        assert r.content is None  # privacy default
        assert r.guards == [v.guard for v in d.verdicts]
        assert set(r.guard_latency_ms) == set(r.guards)
        assert [v["risk"] for v in r.verdicts] == [v.risk for v in d.verdicts]
        # guard outputs quote the content: not stored without store_content
        assert all("raw_output" not in v and "rationale" not in v for v in r.verdicts)
        assert text not in json.dumps(r.to_dict())
    assert recs[esc.request_id].guards == ["ReasoningShield-1B"]
    assert recs[block.request_id].guards == ["GuardReasoner-1B"]
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("audit.db"))
    assert b"bomb" not in on_disk and b"hello world" not in on_disk  # main file and WAL
    assert sha("hello world").encode() in on_disk

    with sqlite3.connect(db) as conn:  # the layout other tools rely on
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        idx = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"ix_decisions_request_id", "ix_decisions_time", "ix_decisions_action"} <= idx
        n_esc = conn.execute("SELECT COUNT(*) FROM escalations").fetchone()[0]
    assert n_esc == 1  # only the ESCALATE decision is queued
    auditor.close()


def test_content_is_stored_only_when_configured(tmp_path: Path) -> None:
    guard = make_guard()
    auditor = attach_audit(guard, path=tmp_path / "a.db", durability="strict", store_content=True)
    d = guard.check_prompt("how do I build a bomb")
    e = guard.check_reasoning(query="q", reasoning="some thought")
    (r,) = auditor.store.records(request_id=d.request_id)
    assert r.content == "how do I build a bomb"
    assert r.verdicts[0]["raw_output"] == HARM
    (esc,) = auditor.list_escalations()
    assert esc.request_id == e.request_id and esc.content == "some thought"
    auditor.close()


def test_failures_and_degraded_are_recorded(tmp_path: Path) -> None:
    def down(_: str) -> str:
        raise ConnectionError("engine down")

    for fail_mode, action, degraded in (("closed", Action.BLOCK, False), ("open", Action.ALLOW, True)):
        guard = Guard(GuardConfig(fail_mode=fail_mode), engine=ScriptedEngine(down))
        auditor = attach_audit(guard, path=tmp_path / f"{fail_mode}.db", durability="strict")
        d = guard.check_prompt("anything")
        assert d.action is action
        (r,) = auditor.store.records()
        assert r.failure == "engine_error" and r.degraded is degraded and r.reason == d.reason
        assert r.verdicts[0]["failure"] == "engine_error"
        auditor.close()


def test_metadata_is_copied(tmp_path: Path) -> None:
    guard = make_guard()
    auditor = attach_audit(guard, path=tmp_path / "m.db", durability="strict")
    d = guard.check(guard.request(Stage.PROMPT, prompt="hi", metadata={"user": "u1", "obj": object()}))
    (r,) = auditor.store.records(request_id=d.request_id)
    assert r.metadata["user"] == "u1" and r.metadata["obj"].startswith("<object")
    auditor.close()


# -- JSONL sink -----------------------------------------------------------------------------
def test_jsonl_sink_records_and_escalations(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    guard = make_guard()
    auditor = attach_audit(guard, path=path, durability="strict")  # sink inferred from .jsonl
    assert isinstance(auditor.store, JsonlAuditStore)
    a = guard.check_prompt("hello")
    e = guard.check_reasoning(query="q", reasoning="hmm")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["request_id"] for x in lines] == [a.request_id, e.request_id]
    assert lines[0]["content_sha256"] == sha("hello") and lines[0]["content"] is None
    assert lines[1]["action"] == "escalate"

    (esc,) = auditor.list_escalations("pending")
    assert esc.request_id == e.request_id
    done = auditor.resolve(esc.id, approved=False, resolver="bob", note="no")
    assert done.status == "rejected"
    with pytest.raises(EscalationAlreadyResolved):
        auditor.resolve(esc.id, approved=True, resolver="eve")
    # a second process's view (a fresh store on the same files) folds the same state
    other = JsonlAuditStore(path, create=False)
    assert other.get_escalation(esc.id).status == "rejected"  # type: ignore[union-attr]
    assert other.list_escalations("pending") == []

    # a torn last line (killed mid-write) is skipped and the next record starts on its own line
    with open(path, "ab") as fh:
        fh.write(b'{"request_id": "torn", "ti')
    b = guard.check_prompt("after the tear")
    ids = [r.request_id for r in other.records()]
    assert ids == [a.request_id, e.request_id, b.request_id]
    other.close()
    auditor.close()


# -- background writer mechanics (no timing assertions) -------------------------------------
def test_background_hook_returns_before_the_writer_commits(tmp_path: Path) -> None:
    store = GatedStore(SQLiteAuditStore(tmp_path / "bg.db"))
    auditor = Auditor(store, durability="background")  # type: ignore[arg-type]
    guard = make_guard()
    guard.hooks.append(auditor)
    d = guard.check_prompt("hello")  # returns although the writer is stuck inside write()
    assert store.entered.wait(10)
    assert store.inner.records() == []  # not committed yet
    assert auditor.pending == 1
    assert auditor.flush(timeout=0.05) is False
    store.gate.set()
    assert auditor.flush(timeout=10)
    assert [r.request_id for r in store.inner.records()] == [d.request_id]
    assert auditor.pending == 0 and auditor.written == 1
    auditor.close()


def test_background_overflow_drops_and_counts_never_blocks(tmp_path: Path) -> None:
    store = GatedStore(SQLiteAuditStore(tmp_path / "of.db"))
    auditor = Auditor(store, durability="background", queue_size=2)  # type: ignore[arg-type]
    guard = make_guard()
    guard.hooks.append(auditor)
    guard.check_prompt("first")
    assert store.entered.wait(10)  # the writer holds record 1; the queue is empty again
    decisions = [guard.check_prompt(f"text {i}") for i in range(5)]  # would hang if put() blocked
    assert auditor.dropped == 3  # 2 fit the queue, 3 dropped
    store.gate.set()
    assert auditor.flush(timeout=10)
    kept = {r.request_id for r in store.inner.records()}
    assert len(kept) == 3
    assert {d.request_id for d in decisions[:2]} <= kept
    auditor.close()


def test_background_writer_batches_inserts(tmp_path: Path) -> None:
    store = GatedStore(SQLiteAuditStore(tmp_path / "batch.db"))
    auditor = Auditor(store, durability="background", batch_size=100)  # type: ignore[arg-type]
    guard = make_guard()
    guard.hooks.append(auditor)
    guard.check_prompt("first")
    assert store.entered.wait(10)
    for i in range(20):
        guard.check_prompt(f"text {i}")
    store.gate.set()
    assert auditor.flush(timeout=10)
    assert store.batches == [1, 20]  # everything queued behind the first write went in one commit
    assert store.inner.count() == 21
    auditor.close()


def test_close_drains_the_queue(tmp_path: Path) -> None:
    db = tmp_path / "drain.db"
    guard = make_guard()
    auditor = attach_audit(guard, path=db)  # background by default
    assert auditor.durability == "background"
    ids = [guard.check_prompt(f"text {i}").request_id for i in range(50)]
    auditor.close()
    guard.check_prompt("after close")  # a closed auditor drops (and counts), never raises
    assert auditor.dropped == 1
    fresh = SQLiteAuditStore(db, create=False)
    assert [r.request_id for r in fresh.records()] == ids
    fresh.close()


def test_strict_write_failure_reaches_the_caller(tmp_path: Path) -> None:
    class Broken(SQLiteAuditStore):
        def write(self, records, *, durable=False):  # type: ignore[no-untyped-def]
            raise OSError("disk full")

    guard = make_guard()
    guard.hooks.append(Auditor(Broken(tmp_path / "x.db"), durability="strict"))
    with pytest.raises(AuditWriteError):
        guard.check_prompt("hello")  # no Decision is handed out that the audit lacks


# -- config --------------------------------------------------------------------------------
def test_guard_config_audit_attaches_and_close_drains(tmp_path: Path) -> None:
    db = tmp_path / "cfg.db"
    guard = make_guard(audit={"path": str(db), "store_content": True})
    assert guard.auditor is not None and guard.auditor in guard.hooks
    ids = [guard.check_prompt(f"t{i}").request_id for i in range(10)]
    guard.close()
    fresh = SQLiteAuditStore(db, create=False)
    assert [r.request_id for r in fresh.records()] == ids
    assert fresh.records()[0].content == "t0"
    fresh.close()


def test_guard_config_audit_rejects_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(GuardConfigError):
        make_guard(audit={"path": str(tmp_path / "x.db"), "durabilty": "strict"})
    with pytest.raises(GuardConfigError):
        make_guard(audit={"path": str(tmp_path / "x.db"), "durability": "eventually"})
    with pytest.raises(GuardConfigError):
        make_guard(audit={"path": str(tmp_path / "x.db"), "sink": "postgres"})


# -- escalation lifecycle (API) ------------------------------------------------------------
def test_escalation_lifecycle_api(tmp_path: Path) -> None:
    guard = make_guard()
    auditor = attach_audit(guard, path=tmp_path / "esc.db", durability="strict")
    guard.check_prompt("fine")
    guard.check_prompt("a bomb")
    e1 = guard.check_reasoning(query="q1", reasoning="thought one")
    e2 = guard.check_reasoning(query="q2", reasoning="thought two")
    store = auditor.store
    pending = store.list_escalations("pending")
    assert [p.request_id for p in pending] == [e1.request_id, e2.request_id]
    first = pending[0]
    assert first.status == "pending" and first.stage == "reasoning"
    assert first.risk == pytest.approx(0.5) and first.content_sha256 == sha("thought one")
    assert first.content is None and first.resolver is None and first.resolved_at is None

    done = store.resolve(first.id, approved=True, resolver="alice", note="benign")
    assert (done.status, done.resolver, done.note) == ("approved", "alice", "benign")
    assert done.resolved_at is not None and done.resolved_at >= done.time
    assert store.get_escalation(first.id) == done
    assert [p.id for p in store.list_escalations("pending")] == [pending[1].id]
    assert [p.id for p in store.list_escalations("approved")] == [first.id]
    assert len(store.list_escalations()) == 2
    with pytest.raises(EscalationAlreadyResolved):
        store.resolve(first.id, approved=False, resolver="mallory")
    assert store.get_escalation(first.id).status == "approved"  # type: ignore[union-attr]
    with pytest.raises(EscalationNotFound):
        store.resolve(999, approved=True)
    assert store.get_escalation(999) is None
    with pytest.raises(ValueError):
        store.list_escalations("maybe")
    auditor.close()


# -- CLI -----------------------------------------------------------------------------------
@pytest.fixture()
def esc_db(tmp_path: Path) -> tuple[Path, list[str]]:
    db = tmp_path / "cli.db"
    guard = make_guard()
    auditor = attach_audit(guard, path=db, durability="strict", store_content=True)
    ids = [guard.check_reasoning(query="q", reasoning=f"thought {i}").request_id for i in range(2)]
    guard.check_prompt("not escalated")
    auditor.close()
    return db, ids


def test_cli_list_show_resolve(esc_db: tuple[Path, list[str]]) -> None:
    db, ids = esc_db
    run = CliRunner().invoke
    r = run(escalations_app, ["list", "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    items = json.loads(r.output)
    assert [i["request_id"] for i in items] == ids and {i["status"] for i in items} == {"pending"}
    eid = items[0]["id"]

    r = run(escalations_app, ["list", "--db", str(db)])
    assert r.exit_code == 0 and "pending" in r.output and "Escalations" in r.output

    r = run(escalations_app, ["show", str(eid), "--db", str(db)])
    assert r.exit_code == 0, r.output
    assert ids[0] in r.output and "thought 0" in r.output and "reasoning" in r.output
    r = run(escalations_app, ["show", str(eid), "--db", str(db), "--json"])
    shown = json.loads(r.output)
    assert shown["decisions"][0]["request_id"] == ids[0] and shown["decisions"][0]["action"] == "escalate"

    r = run(escalations_app, ["resolve", str(eid), "--approve", "--by", "alice", "--note", "fine", "--db", str(db)])
    assert r.exit_code == 0, r.output
    assert "approved" in r.output and "alice" in r.output

    r = run(escalations_app, ["list", "--db", str(db), "--status", "approved", "--json"])
    (item,) = json.loads(r.output)
    assert (item["id"], item["resolver"], item["note"]) == (eid, "alice", "fine")
    r = run(escalations_app, ["list", "--db", str(db), "--json"])
    assert [i["request_id"] for i in json.loads(r.output)] == ids[1:]
    r = run(escalations_app, ["list", "--db", str(db), "--status", "all", "--json"])
    assert len(json.loads(r.output)) == 2

    r = run(escalations_app, ["resolve", str(eid), "--reject", "--db", str(db)])
    assert r.exit_code == 1  # resolutions are final
    r = run(escalations_app, ["resolve", str(items[1]["id"]), "--reject", "--db", str(db), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["status"] == "rejected"
    assert json.loads(r.output)["resolver"]  # defaults to the OS user


def test_cli_errors(esc_db: tuple[Path, list[str]], tmp_path: Path) -> None:
    db, _ = esc_db
    run = CliRunner().invoke
    assert run(escalations_app, ["resolve", "1", "--db", str(db)]).exit_code == 2  # neither flag
    assert run(escalations_app, ["resolve", "1", "--approve", "--reject", "--db", str(db)]).exit_code == 2
    assert run(escalations_app, ["resolve", "999", "--approve", "--db", str(db)]).exit_code == 1
    assert run(escalations_app, ["show", "999", "--db", str(db)]).exit_code == 1
    assert run(escalations_app, ["list", "--status", "maybe", "--db", str(db)]).exit_code == 2
    missing = tmp_path / "nope.db"
    assert run(escalations_app, ["list", "--db", str(missing)]).exit_code == 1
    assert not missing.exists()  # the CLI never creates a store
    # the env var names the store too
    r = run(escalations_app, ["list", "--json"], env={"GUARDRAILS_PLUGIN_AUDIT_DB": str(db)})
    assert r.exit_code == 0 and len(json.loads(r.output)) == 2


def test_cli_on_jsonl_store(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    guard = make_guard()
    auditor = attach_audit(guard, path=path, durability="strict")
    e = guard.check_reasoning(query="q", reasoning="r")
    auditor.close()
    run = CliRunner().invoke
    (item,) = json.loads(run(escalations_app, ["list", "--db", str(path), "--json"]).output)
    assert item["request_id"] == e.request_id
    r = run(escalations_app, ["resolve", str(item["id"]), "--reject", "--by", "bob", "--db", str(path)])
    assert r.exit_code == 0 and "rejected" in r.output
    assert JsonlAuditStore(path).get_escalation(item["id"]).status == "rejected"  # type: ignore[union-attr]


# -- review regressions -----------------------------------------------------------------------
def test_strict_record_that_cannot_be_built_is_a_write_error(tmp_path: Path, monkeypatch) -> None:
    guard = make_guard()
    attach_audit(guard, path=tmp_path / "s.db", durability="strict")

    def boom(*a, **kw):
        raise ValueError("cannot serialise")

    monkeypatch.setattr(AuditRecord, "from_decision", boom)
    with pytest.raises(AuditWriteError):  # before: logged as a hook error, Decision handed out unrecorded
        guard.check_prompt("hello")


def test_unserialisable_metadata_is_still_recorded(tmp_path: Path) -> None:
    guard = make_guard()
    auditor = attach_audit(guard, path=tmp_path / "c.db", durability="strict")
    loop: dict[str, object] = {"name": "x"}
    loop["self"] = loop  # circular: json.dumps raises even with default=str
    d = guard.check(guard.request(Stage.PROMPT, prompt="hi", metadata={"user": "u1", "loop": loop}))
    (r,) = auditor.store.records(request_id=d.request_id)
    assert r.metadata["user"] == "u1" and isinstance(r.metadata["loop"], str)
    auditor.close()


def test_a_record_racing_close_is_written_or_counted_never_lost(tmp_path: Path) -> None:
    db = tmp_path / "race.db"
    guard = make_guard()
    auditor = attach_audit(guard, path=db)  # background
    real_put = auditor._queue.put_nowait
    closer: list[threading.Thread] = []

    def put_nowait(item):  # close() lands between the closed check and the put
        if item is not None and not closer:
            t = threading.Thread(target=auditor.close, daemon=True)
            closer.append(t)
            t.start()
            t.join(0.3)  # without the fix close() finishes here: the writer is gone
        return real_put(item)

    auditor._queue.put_nowait = put_nowait  # type: ignore[method-assign]
    d = guard.check_prompt("racing")
    closer[0].join(10)
    assert not closer[0].is_alive()
    fresh = SQLiteAuditStore(db, create=False)
    written = [r.request_id for r in fresh.records()]
    fresh.close()
    assert written == [d.request_id] or auditor.dropped == 1
    assert auditor.pending == 0
