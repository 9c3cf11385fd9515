# ruff: noqa: F401, F811 - pytest fixtures imported from audit_support / pg_support are parameters here
"""Retention: records older than N days are purged (pending escalations stay until reviewed),
stored text older than M days is erased with the guard outputs that quote it, hashes stay; the
same on SQLite, PostgreSQL and JSON lines; run by the auditor on a schedule or by the CLI."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from audit_support import backend, make_guard, sha
from pg_support import pg_server
from typer.testing import CliRunner

from guardrails_plugin.audit import AuditRecord, JsonlAuditStore, attach_audit, open_store
from guardrails_plugin.cli.escalations import audit_app, escalations_app
from guardrails_plugin.types import Action, Decision, GuardRequest, Stage, Verdict

pytestmark = pytest.mark.timeout(120)
DAY = 86400.0


@pytest.fixture(params=["sqlite", "postgres", "jsonl"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return request.getfixturevalue("pg_server").create_db()
    return str(tmp_path / ("audit.jsonl" if request.param == "jsonl" else "audit.db"))


def record(text: str, action: Action, age_days: float, now: float) -> AuditRecord:
    req = GuardRequest(stage=Stage.REASONING, prompt="q", reasoning=text)
    v = Verdict(guard="ReasoningShield-1B", stage=Stage.REASONING, risk=0.5, raw_output=f"raw {text}",
                rationale=f"about {text}")
    dec = Decision(action=action, stage=Stage.REASONING, text=text, reason="r", verdicts=[v],
                   request_id=req.request_id)
    return AuditRecord.from_decision(req, dec, store_content=True, now=now - age_days * DAY)


def fill(target: str, now: float) -> dict[str, AuditRecord]:
    recs = {
        "old-allow": record("old allow", Action.ALLOW, 40, now),
        "old-resolved": record("old resolved", Action.ESCALATE, 40, now),
        "old-pending": record("old pending", Action.ESCALATE, 40, now),
        "mid": record("mid age", Action.ESCALATE, 10, now),
        "new": record("brand new", Action.ALLOW, 1, now),
    }
    store = open_store(target)
    store.write(list(recs.values()), durable=True)
    by_rid = {e.request_id: e for e in store.list_escalations()}
    store.resolve(by_rid[recs["old-resolved"].request_id].id, approved=True, resolver="a")
    store.close()
    return recs


def test_purge_records_and_text_separately(any_store: str) -> None:
    now = time.time()
    recs = fill(any_store, now)
    store = open_store(any_store)
    top_id = max(e.id for e in store.list_escalations())

    res = store.purge(content_older_than_days=7, now=now)  # text only: every record stays
    assert res.content == 7  # four decisions (all but "new") and three escalations
    assert res.records == 0 and store.count() == 5  # type: ignore[attr-defined]
    kept = {r.request_id: r for r in store.records()}
    for name, r in recs.items():
        got = kept[r.request_id]
        assert got.content_sha256 == sha(r.content)  # type: ignore[arg-type]
        if name == "new":
            assert got.content == "brand new" and got.verdicts[0]["raw_output"] == "raw brand new"
        else:  # erased, with the guard outputs that quote it; the verdict itself stays
            assert got.content is None and got.verdicts[0]["risk"] == 0.5
            assert "raw_output" not in got.verdicts[0] and "rationale" not in got.verdicts[0]
            assert r.content not in json.dumps(got.to_dict())  # type: ignore[operator]
    assert all(e.content is None and "rationale" not in e.verdicts[0] for e in store.list_escalations())

    res = store.purge(older_than_days=30, now=now)
    assert (res.records, res.escalations, res.kept_pending) == (3, 1, 1)
    assert {r.request_id for r in store.records()} == {recs["mid"].request_id, recs["new"].request_id}
    left = {e.request_id: e for e in store.list_escalations()}
    # a pending escalation is kept until a person has looked at it, even past retention
    assert set(left) == {recs["old-pending"].request_id, recs["mid"].request_id}
    assert left[recs["old-pending"].request_id].status == "pending"
    assert store.purge(older_than_days=30, now=now).records == 0  # idempotent
    store.close()

    # ids are never reused after a purge
    again = open_store(any_store)
    again.write([record("later", Action.ESCALATE, 0, now)], durable=True)
    assert max(e.id for e in again.list_escalations()) == top_id + 1
    again.close()


def test_auditor_purges_on_its_schedule(backend: str) -> None:
    now = time.time()
    recs = fill(backend, now)
    guard = make_guard(audit={"path": backend, "retention_days": 30, "content_retention_days": 7})
    auditor = guard.auditor
    assert auditor is not None
    deadline = time.monotonic() + 30  # the first purge runs when the writer starts
    while time.monotonic() < deadline and auditor.store.count() > 2:  # type: ignore[attr-defined]
        time.sleep(0.05)
    d = guard.check_prompt("fresh")
    guard.close()
    store = open_store(backend)
    got = {r.request_id: r for r in store.records()}
    assert set(got) == {recs["mid"].request_id, recs["new"].request_id, d.request_id}
    assert got[recs["mid"].request_id].content is None and got[recs["new"].request_id].content == "brand new"
    store.close()


def test_cli_purge(any_store: str) -> None:
    fill(any_store, time.time())
    run = CliRunner().invoke
    assert run(escalations_app, ["purge", "--db", any_store]).exit_code == 2  # nothing asked
    assert run(escalations_app, ["purge", "--older-than", "soon", "--db", any_store]).exit_code == 2
    r = run(audit_app, ["purge", "--content-older-than", "168h", "--db", any_store, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["content"] == 7
    r = run(escalations_app, ["purge", "--older-than", "30d", "--db", any_store])
    assert r.exit_code == 0 and "3 record(s)" in r.output and "1 old pending" in r.output, r.output
    assert run(escalations_app, ["purge", "--older-than", "30", "--db", "/nonexistent/x.db"]).exit_code == 1


def test_jsonl_purge_under_a_concurrent_writer_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    now = time.time()
    writer = JsonlAuditStore(path)
    writer.write([record(f"old {i}", Action.ALLOW, 40, now) for i in range(50)], durable=False)
    purger = JsonlAuditStore(path)  # another process's view: its own handles and locks
    stop = threading.Event()
    written: list[str] = []

    def write() -> None:
        while not stop.is_set():
            r = record("new", Action.ALLOW, 0, time.time())
            writer.write([r])
            written.append(r.request_id)

    t = threading.Thread(target=write)
    t.start()
    for _ in range(5):  # the file is replaced under the writer, again and again
        purger.purge(older_than_days=30)
    stop.set()
    t.join(30)
    ids = [r.request_id for r in JsonlAuditStore(path).records()]
    assert ids == written  # every new record, in order, none of the old ones
    writer.close()
    purger.close()
