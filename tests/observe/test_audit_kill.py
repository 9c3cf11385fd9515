# ruff: noqa: F401, F811 - pytest fixtures imported from audit_support / pg_support are parameters here
"""THE KILL TEST: a real child process runs a Guard with strict audit durability and prints each
returned Decision's request id; the parent SIGKILLs it mid-stream and checks that the store opens
cleanly and holds every Decision that was handed to a caller. On SQLite and on PostgreSQL.

Runs in rounds on one database: each new child opens the store left by the killed one (on SQLite,
a WAL recovery) and writes on; the final check is made from a fresh process with the plain
driver (sqlite3 / psycopg), no library code.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from audit_support import backend
from pg_support import pg_server

from guardrails_plugin.audit import AuditRecord, open_store
from guardrails_plugin.types import Action, Decision, GuardRequest, Stage

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL"),
]

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import sys, threading
    from guardrails_plugin import Guard, GuardConfig
    from guardrails_plugin.engines import ScriptedEngine

    db, durability, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    SAFE = "ok\\nAnswers: \\nRequest: unharmful\\nCompletion: compliance\\nResponse: unharmful\\n"
    HARM = "x\\nAnswers: \\nRequest: harmful\\nCompletion: refusal\\nResponse: harmful\\n"

    def responder(text):
        if "<|user|>" in text:
            return '"Analysis": grey\\n"Judgment": 0.5'   # escalate band
        return HARM if "bomb" in text else SAFE

    cfg = GuardConfig(strictness="loose", escalate_threshold=0.3,
                      audit={"path": db, "durability": durability})
    guard = Guard(cfg, engine=ScriptedEngine(responder))
    out_lock = threading.Lock()

    def work(w):
        i = 0
        while True:
            k = i % 3
            if k == 0:
                d = guard.check_prompt(f"hello {w}-{i}")
            elif k == 1:
                d = guard.check_prompt(f"a bomb {w}-{i}")
            else:
                d = guard.check_reasoning(query="q", reasoning=f"thinking {w}-{i}")
            with out_lock:  # printed only after check() returned the Decision to this caller
                sys.stdout.write(f"{d.request_id} {d.action.value}\\n")
                sys.stdout.flush()
            i += 1

    print("READY", flush=True)
    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    """
)

VERIFY = textwrap.dedent(
    """
    import json, sys
    target = sys.argv[1]
    if target.startswith("postgresql://"):
        import psycopg
        conn = psycopg.connect(target)
        integrity, journal = "ok", "n/a"
    else:
        import sqlite3
        conn = sqlite3.connect(target)
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    print(json.dumps({
        "integrity": integrity,
        "journal_mode": journal,
        "decisions": [r[0] for r in conn.execute("SELECT request_id FROM decisions ORDER BY seq")],
        "escalations": [r[0] for r in conn.execute(
            "SELECT e.request_id FROM escalations e LEFT JOIN reviews r ON r.escalation_id = e.id"
            " WHERE r.id IS NULL")],
    }))
    """
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_and_kill(script: Path, db: Path | str, durability: str, kill_after: int, workers: int = 1) -> list[tuple[str, str]]:
    """Start the child, SIGKILL it after ``kill_after`` decisions; every line it printed."""
    proc = subprocess.Popen(
        [sys.executable, str(script), str(db), durability, str(workers)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=str(REPO),
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:  # a thread, so a stuck child cannot hang the test on readline()
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    got: list[tuple[str, str]] = []
    try:
        first = lines.get(timeout=60)
        assert first == "READY\n", f"child failed to start: {first!r} {proc.stderr.read() if proc.poll() is not None else ''}"  # type: ignore[union-attr]
        while len(got) < kill_after:
            line = lines.get(timeout=60)
            assert line is not None, f"child exited early: {proc.stderr.read()}"  # type: ignore[union-attr]
            rid, action = line.split()
            got.append((rid, action))
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the child is inside its next check/commit
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    reader.join(timeout=30)
    while True:  # lines printed after the count was reached but before the kill count too
        line = lines.get(timeout=5)
        if line is None:
            break
        if line.strip():
            parts = line.split()
            if len(parts) == 2:  # a line torn by the kill was never fully handed over
                got.append((parts[0], parts[1]))
    return got


def verify_in_fresh_process(db: Path | str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", VERIFY, str(db)], capture_output=True, text=True, timeout=60, env=_env()
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_sigkill_mid_stream_loses_no_strict_decision(backend: str, tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    sqlite = not backend.startswith("postgresql://")
    printed: list[tuple[str, str]] = []
    # round 1: one caller; round 2: a restart on the killed store, four concurrent callers
    for kill_after, workers in ((40, 1), (60, 4)):
        got = run_and_kill(script, backend, "strict", kill_after, workers)
        assert len(got) >= kill_after
        printed += got
        if sqlite:  # the killed process never checkpointed or removed its WAL: a real recovery follows
            assert (tmp_path / "audit.db-wal").exists()

    state = verify_in_fresh_process(backend)  # a new process, the plain driver, no library code
    assert state["integrity"] == "ok"
    assert state["journal_mode"] == ("wal" if sqlite else "n/a")
    stored = set(state["decisions"])
    missing = [rid for rid, _ in printed if rid not in stored]
    assert not missing, f"{len(missing)} returned decision(s) missing from the audit store"
    assert len(stored) == len(state["decisions"])  # none twice
    escalated = {rid for rid, action in printed if action == "escalate"}
    assert escalated and escalated <= set(state["escalations"])
    assert {a for _, a in printed} == {"allow", "block", "escalate"}

    # and through the library's own reader, after recovery
    store = open_store(backend, create=False)
    assert store.integrity_check() == "ok"
    recs = {r.request_id: r for r in store.records()}
    assert all(recs[rid].action == action for rid, action in printed)
    store.close()


def test_sigkill_during_background_writes_leaves_a_clean_store(backend: str, tmp_path: Path) -> None:
    """Background mode may lose the queued tail on a kill, but never corrupts the store."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    printed = run_and_kill(script, backend, "background", 200, workers=2)
    assert len(printed) >= 200
    state = verify_in_fresh_process(backend)
    assert state["integrity"] == "ok"
    assert len(set(state["decisions"])) == len(state["decisions"])  # no duplicated rows
    # the recovered store takes new writes from a new process and reads them back
    req = GuardRequest(stage=Stage.PROMPT, prompt="after the crash")
    dec = Decision(action=Action.ALLOW, stage=Stage.PROMPT, text="after the crash", reason="test",
                   request_id=req.request_id)
    store = open_store(backend, create=False)
    before = store.count()
    assert before == len(state["decisions"])
    store.write([AuditRecord.from_decision(req, dec)], durable=True)
    assert store.count() == before + 1 and store.integrity_check() == "ok"
    store.close()


EXIT_CHILD = textwrap.dedent(
    """
    import sys
    from guardrails_plugin import Guard, GuardConfig
    from guardrails_plugin.engines import ScriptedEngine

    SAFE = "ok\\nAnswers: \\nRequest: unharmful\\nCompletion: compliance\\nResponse: unharmful\\n"
    guard = Guard(GuardConfig(audit={"path": sys.argv[1]}), engine=ScriptedEngine([SAFE]))
    for i in range(300):
        print(guard.check_prompt(f"hello {i}").request_id)
    # no guard.close(): the interpreter exits with records still queued
    """
)


def test_background_queue_is_drained_at_interpreter_exit(backend: str, tmp_path: Path) -> None:
    script = tmp_path / "exit_child.py"
    script.write_text(EXIT_CHILD)
    db = backend
    out = subprocess.run([sys.executable, str(script), str(db)], capture_output=True, text=True,
                         timeout=90, env=_env(), cwd=str(REPO))
    assert out.returncode == 0, out.stderr
    printed = out.stdout.split()
    assert len(printed) == 300
    assert verify_in_fresh_process(db)["decisions"] == printed
