# ruff: noqa: F401, F811 - pytest fixtures imported from audit_support / pg_support are parameters here
"""Many processes, one audit trail: concurrent writer processes lose nothing and share no ids; an
escalation raised in one process is listed, shown and resolved from others (CLI and Python);
PostgreSQL going away mid-run and coming back (strict and background)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
from audit_support import REPO, backend, child_env, make_guard, run_child
from pg_support import pg_server

from guardrails_plugin import Action
from guardrails_plugin.audit import QUERY_KEY, AuditWriteError, attach_audit, open_store
from guardrails_plugin.observe.metrics import attach_metrics

pytestmark = pytest.mark.timeout(240)

WRITER = textwrap.dedent(
    """
    import sys
    from audit_support import make_guard

    store, durability, n, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    guard = make_guard(audit={"path": store, "durability": durability})
    for i in range(n):
        k = i % 3
        if k == 0:
            d = guard.check_prompt(f"hello {tag}-{i}")
        elif k == 1:
            d = guard.check_prompt(f"a bomb {tag}-{i}")
        else:
            d = guard.check_reasoning(query="q", reasoning=f"thinking {tag}-{i}")
        print(d.request_id, d.action.value, flush=True)
    guard.close()  # drains the background queue
    """
)


def test_four_writer_processes_lose_nothing(backend: str) -> None:
    open_store(backend).close()  # the schema exists before the race (its creation is tested elsewhere)
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, backend, ("strict", "background")[i % 2], "45", f"w{i}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=str(REPO))
        for i in range(4)
    ]
    printed: list[tuple[str, str]] = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
        printed += [tuple(line.split()) for line in out.splitlines()]  # type: ignore[misc]
    assert len(printed) == 180
    store = open_store(backend, create=False)
    records = store.records()
    assert sorted(r.request_id for r in records) == sorted(rid for rid, _ in printed)  # all, once
    assert len({r.record_id for r in records}) == 180
    assert all(dict(printed)[r.request_id] == r.action for r in records)
    escalations = store.list_escalations()
    assert len({e.id for e in escalations}) == len(escalations) == 60  # every third, unique ids
    assert {e.request_id for e in escalations} == {rid for rid, a in printed if a == "escalate"}
    store.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "guardrails_plugin.cli", "escalations", *args],
                          capture_output=True, text=True, timeout=120, env=child_env(), cwd=str(REPO))


def test_an_escalation_crosses_processes(backend: str) -> None:
    raise_it = textwrap.dedent(
        """
        import sys
        from audit_support import make_guard
        guard = make_guard(audit={"path": sys.argv[1], "durability": "strict", "store_content": True})
        d = guard.check(guard.request("reasoning", prompt="q", reasoning="a grey thought",
                                      metadata={"user": "u7", "route": "/chat"}))
        print(d.request_id, d.action.value)
        guard.close()
        """
    )
    rid, action = run_child(raise_it, backend).stdout.split()
    assert action == "escalate"

    listed = _cli("list", "--db", backend, "--json")  # another process: the reviewer's CLI
    assert listed.returncode == 0, listed.stderr
    (item,) = json.loads(listed.stdout)
    assert item["request_id"] == rid and item["status"] == "pending"
    assert item["content"] == "a grey thought" and item["metadata"] == {"user": "u7", "route": "/chat", QUERY_KEY: "q"}
    shown = _cli("show", str(item["id"]), "--db", backend)
    assert shown.returncode == 0 and rid in shown.stdout and "u7" in shown.stdout

    # two reviewers in two more processes resolve at the same moment: exactly one wins
    racers = [subprocess.Popen([sys.executable, "-m", "guardrails_plugin.cli", "escalations", "resolve",
                                str(item["id"]), flag, "--by", who, "--db", backend, "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
                               cwd=str(REPO))
              for flag, who in (("--approve", "alice"), ("--reject", "bob"))]
    results = [(p.wait(120), p.stdout.read(), p.stderr.read()) for p in racers]  # type: ignore[union-attr]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    winner = next(json.loads(out) for code, out, _ in results if code == 0)
    assert "already" in next(err for code, _, err in results if code == 1)

    store = open_store(backend, create=False)  # and Python in this process sees the same
    esc = store.get_escalation(item["id"])
    assert esc is not None and (esc.status, esc.resolver) == (winner["status"], winner["resolver"])
    assert store.list_escalations("pending") == []
    store.close()
    again = _cli("resolve", str(item["id"]), "--approve", "--db", backend)
    assert again.returncode == 1 and "already" in again.stderr


# -- PostgreSQL going away ------------------------------------------------------------------------
def test_background_survives_a_postgres_restart(pg_server) -> None:
    url = pg_server.create_db()
    guard = make_guard()
    auditor = attach_audit(guard, path=url, durability="background", queue_size=20, max_backoff_s=0.2,
                           store_options={"connect_timeout_s": 2})
    metrics = attach_metrics(guard)
    before = [guard.check_prompt(f"before {i}").request_id for i in range(10)]
    assert auditor.flush(30)
    pg_server.stop("immediate")  # a crash: every connection in the pool is dead
    try:
        first = guard.check_prompt("during 0").request_id
        deadline = time.monotonic() + 60
        while auditor.retried < 2 and time.monotonic() < deadline:  # held and retried, not lost
            time.sleep(0.05)
        assert auditor.retried >= 2
        during = [first] + [guard.check_prompt(f"during {i}").request_id for i in range(1, 30)]
        assert auditor.dropped == 9  # 1 in flight + 20 queued; the rest dropped and counted
        assert metrics.sample("guardrails_audit_records_total", {"outcome": "dropped"}) == 9
    finally:
        pg_server.start()
    assert auditor.flush(60)
    after = [guard.check_prompt(f"after {i}").request_id for i in range(5)]
    auditor.close()
    store = open_store(url, create=False)
    got = [r.request_id for r in store.records()]
    store.close()
    # the crash lost no committed batch (PostgreSQL commits are synchronous, background ones too)
    assert got == before + during[:21] + after  # in order, each once, only the counted drops missing
    assert auditor.failed == 0


def test_strict_follows_the_fail_mode_while_postgres_is_down(pg_server) -> None:
    url = pg_server.create_db()
    guard = make_guard(stages={"response": {"guards": ["GuardReasoner-1B"], "fail_mode": "open"}})
    auditor = attach_audit(guard, path=url, durability="strict", max_backoff_s=0.2,
                           store_options={"connect_timeout_s": 2})
    ok = guard.check_prompt("before").request_id
    pg_server.stop("fast")
    try:
        with pytest.raises(AuditWriteError):
            guard.check_prompt("while down")  # fail-closed stage: no Decision without a record
        d = guard.check_response(prompt="q", response="while down")  # fail-open stage
        assert d.action is Action.ALLOW and any("queued for retry" in n for n in d.notes)
    finally:
        pg_server.start()
    after = guard.check_prompt("after the restart").request_id  # a fresh connection, no error
    assert auditor.flush(60)
    auditor.close()
    store = open_store(url, create=False)
    got = [r.request_id for r in store.records()]
    store.close()
    assert sorted(got) == sorted([ok, d.request_id, after])


def test_idle_pool_after_restart_reconnects_for_reads_and_writes(pg_server) -> None:
    url = pg_server.create_db()
    store = open_store(url)
    guard = make_guard()
    auditor = attach_audit(guard, path=url, durability="strict")
    guard.check_reasoning(query="q", reasoning="grey")
    assert len(store.list_escalations()) == 1  # both pools now hold live connections
    pg_server.restart("fast")
    guard.check_reasoning(query="q", reasoning="grey again")  # pre-ping replaces dead connections
    esc = store.list_escalations()
    assert len(esc) == 2 and auditor.failed == 0
    assert store.resolve(esc[1].id, approved=True, resolver="r").status == "approved"
    auditor.close()
    store.close()
