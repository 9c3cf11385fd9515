"""The Auditor's mechanics, store-independent: background batching, bounded queue, drain on
close, retries while the store is unreachable, strict group commit, strict failures under each
fail mode, fork safety. Stores are real (SQLite); wrappers only gate or break their writes."""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import pytest
from audit_support import make_guard

from guardrails_plugin import Action, Decision, Stage
from guardrails_plugin.audit import (
    Auditor,
    AuditRecord,
    AuditStore,
    AuditUnavailable,
    AuditWriteError,
    SQLiteAuditStore,
    attach_audit,
)
from guardrails_plugin.observe.metrics import attach_metrics
from guardrails_plugin.types import GuardRequest

pytestmark = pytest.mark.timeout(120)


class GatedStore:
    """Wraps a store; write() waits for ``gate`` (lets a test hold the writer mid-commit)."""

    def __init__(self, inner: AuditStore):
        self.inner = inner
        self.location = inner.location
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


class DownStore(GatedStore):
    """A store whose database is unreachable while ``down`` is set, or rejects poisoned records."""

    def __init__(self, inner: AuditStore):
        super().__init__(inner)
        self.gate.set()
        self.down = threading.Event()
        self.attempts = 0

    def write(self, records: Sequence[AuditRecord], *, durable: bool = False) -> None:
        self.attempts += 1
        if self.down.is_set():
            raise AuditUnavailable("connection refused (test)")
        if any(r.metadata.get("poison") for r in records):
            raise ValueError("the store rejects this record (test)")
        super().write(records, durable=durable)


def ids(store: AuditStore) -> list[str]:
    return [r.request_id for r in store.records()]


# -- background mode --------------------------------------------------------------------------
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
    assert ids(store.inner) == [d.request_id]
    assert auditor.pending == 0 and auditor.written == 1
    auditor.close()


def test_background_overflow_drops_and_counts_never_blocks(tmp_path: Path) -> None:
    store = GatedStore(SQLiteAuditStore(tmp_path / "of.db"))
    auditor = Auditor(store, durability="background", queue_size=2)  # type: ignore[arg-type]
    guard = make_guard()
    guard.hooks.append(auditor)
    metrics = attach_metrics(guard)
    guard.check_prompt("first")
    assert store.entered.wait(10)  # the writer holds record 1; the queue is empty again
    decisions = [guard.check_prompt(f"text {i}") for i in range(5)]  # would hang if it blocked
    assert auditor.dropped == 3  # 2 fit the queue, 3 dropped
    assert metrics.sample("guardrails_audit_records_total", {"outcome": "dropped"}) == 3
    store.gate.set()
    assert auditor.flush(timeout=10)
    kept = set(ids(store.inner))
    assert len(kept) == 3 and {d.request_id for d in decisions[:2]} <= kept
    assert metrics.sample("guardrails_audit_records_total", {"outcome": "written"}) == 3
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


def test_close_drains_the_queue_then_drops_and_counts(tmp_path: Path) -> None:
    db = tmp_path / "drain.db"
    guard = make_guard()
    auditor = attach_audit(guard, path=db)  # background by default
    assert auditor.durability == "background"
    sent = [guard.check_prompt(f"text {i}").request_id for i in range(50)]
    auditor.close()
    guard.check_prompt("after close")  # a closed auditor drops (and counts), never raises
    assert auditor.dropped == 1
    fresh = SQLiteAuditStore(db, create=False)
    assert ids(fresh) == sent
    fresh.close()


def test_a_record_racing_close_is_written_or_counted_never_lost(tmp_path: Path) -> None:
    db = tmp_path / "race.db"
    guard = make_guard()
    auditor = attach_audit(guard, path=db)  # background
    closer: list[threading.Thread] = []

    class RacingQueue(deque):  # close() starts between the closed check and the append
        def append(self, item):  # type: ignore[no-untyped-def]
            if not closer:
                t = threading.Thread(target=auditor.close, daemon=True)
                closer.append(t)
                t.start()
                # The fix: the append runs under the lock close() takes, so close() cannot finish
                # now. Without it, let close() finish first (deterministically, no guessed sleep)
                # and the record would land behind the writer's stop.
                if not auditor._cond._is_owned():
                    t.join(10)
            super().append(item)

    auditor._queue = RacingQueue()
    d = guard.check_prompt("racing")
    closer[0].join(10)
    assert not closer[0].is_alive()
    fresh = SQLiteAuditStore(db, create=False)
    written = ids(fresh)
    fresh.close()
    assert written == [d.request_id] or auditor.dropped == 1
    assert auditor.pending == 0


# -- store outages ----------------------------------------------------------------------------
def test_background_buffers_through_an_outage_and_retries(tmp_path: Path) -> None:
    store = DownStore(SQLiteAuditStore(tmp_path / "out.db"))
    store.down.set()
    auditor = Auditor(store, durability="background", queue_size=5, max_backoff_s=0.05)  # type: ignore[arg-type]
    guard = make_guard()
    guard.hooks.append(auditor)
    metrics = attach_metrics(guard)
    first = guard.check_prompt("first").request_id
    while auditor.retried < 2:  # the writer holds the first batch and keeps retrying
        threading.Event().wait(0.01)
    rest = [guard.check_prompt(f"text {i}").request_id for i in range(8)]
    assert auditor.dropped == 3  # bounded: 5 queued, 3 dropped and counted
    assert metrics.sample("guardrails_audit_records_total", {"outcome": "dropped"}) == 3
    assert metrics.sample("guardrails_audit_retries_total") >= 2
    store.down.clear()
    assert auditor.flush(timeout=30)
    assert ids(store.inner) == [first, *rest[:5]]  # nothing lost but the counted drops, in order
    assert auditor.failed == 0 and auditor.written == 6
    auditor.close()


def test_close_gives_up_on_an_unreachable_store_and_counts(tmp_path: Path) -> None:
    store = DownStore(SQLiteAuditStore(tmp_path / "gone.db"))
    store.down.set()
    auditor = Auditor(store, durability="background", max_backoff_s=0.05)  # type: ignore[arg-type]
    guard = make_guard()
    guard.hooks.append(auditor)
    for i in range(4):
        guard.check_prompt(f"t{i}")
    auditor.close(timeout=0.5)  # returns: the store never came back
    assert auditor.dropped == 4 and auditor.pending == 0
    assert store.attempts < 50  # backed off until the deadline, no busy loop


def test_a_rejected_record_does_not_take_its_batch_with_it(tmp_path: Path) -> None:
    store = DownStore(SQLiteAuditStore(tmp_path / "poison.db"))
    store.gate.clear()
    auditor = Auditor(store, durability="background", retries=1)  # type: ignore[arg-type]
    guard = make_guard()
    guard.hooks.append(auditor)
    first = guard.check_prompt("first").request_id
    assert store.entered.wait(10)
    good = [guard.check(guard.request("prompt", prompt=f"g{i}")).request_id for i in range(3)]
    guard.check(guard.request("prompt", prompt="bad", metadata={"poison": True}))
    store.gate.set()
    assert auditor.flush(timeout=30)
    assert ids(store.inner) == [first, *good] and auditor.failed == 1
    auditor.close()


# -- strict mode ------------------------------------------------------------------------------
def test_strict_write_failure_reaches_the_caller_under_fail_closed(tmp_path: Path) -> None:
    store = DownStore(SQLiteAuditStore(tmp_path / "x.db"))
    store.down.set()
    guard = make_guard()
    auditor = attach_audit(guard, path=tmp_path / "unused.db", durability="strict")
    auditor.store = store  # type: ignore[assignment]
    with pytest.raises(AuditWriteError):
        guard.check_prompt("hello")  # no Decision is handed out that the audit lacks
    assert auditor.failed == 1


def test_strict_failure_under_fail_open_hands_out_and_queues(tmp_path: Path) -> None:
    store = DownStore(SQLiteAuditStore(tmp_path / "open.db"))
    store.down.set()
    guard = make_guard(stages={"response": {"guards": ["GuardReasoner-1B"], "fail_mode": "open"}})
    auditor = attach_audit(guard, path=tmp_path / "unused.db", durability="strict", max_backoff_s=0.05)
    auditor.store = store  # type: ignore[assignment]
    with pytest.raises(AuditWriteError):
        guard.check_prompt("hi")  # the prompt stage is fail-closed
    d = guard.check_response(prompt="q", response="fine answer")  # fail-open stage
    assert d.action is Action.ALLOW
    assert any("audit: strict write failed" in n and "queued for retry" in n for n in d.notes)
    store.down.clear()
    assert auditor.flush(timeout=30)
    assert ids(store.inner) == [d.request_id]  # written once the store was back
    auditor.close()


def test_strict_writers_share_commits(tmp_path: Path) -> None:
    store = GatedStore(SQLiteAuditStore(tmp_path / "group.db"))
    guard = make_guard()
    auditor = Auditor(store, durability="strict")  # type: ignore[arg-type]
    guard.hooks.append(auditor)
    done: list[str] = []
    first = threading.Thread(target=lambda: done.append(guard.check_prompt("first").request_id))
    first.start()
    assert store.entered.wait(10)  # the first commit is in flight
    # four more (the Guard runs blocking hooks on asyncio's default executor: 6 threads on 2 cores)
    others = [threading.Thread(target=lambda i=i: done.append(guard.check_prompt(f"t{i}").request_id))
              for i in range(4)]
    for t in others:
        t.start()
    while len(auditor._gc_pending) < 4:  # all four wait for the running commit
        threading.Event().wait(0.01)
    assert done == []  # nobody returned before their record was committed
    store.gate.set()
    for t in [first, *others]:
        t.join(30)
    assert store.batches == [1, 4]  # four callers, one commit
    assert sorted(done) == sorted(ids(store.inner)) and len(done) == 5
    auditor.close()


def test_a_rejected_strict_record_fails_alone(tmp_path: Path) -> None:
    store = DownStore(SQLiteAuditStore(tmp_path / "alone.db"))
    store.gate.clear()
    guard = make_guard()
    auditor = Auditor(store, durability="strict")  # type: ignore[arg-type]
    guard.hooks.append(auditor)
    results: dict[str, object] = {}

    def check(text: str, poison: bool = False) -> None:
        try:
            results[text] = guard.check(guard.request("prompt", prompt=text, metadata={"poison": poison}))
        except AuditWriteError as exc:
            results[text] = exc

    first = threading.Thread(target=check, args=("first",))
    first.start()
    assert store.entered.wait(10)
    threads = [threading.Thread(target=check, args=(f"g{i}",)) for i in range(2)]
    threads.append(threading.Thread(target=check, args=("bad", True)))
    for t in threads:
        t.start()
    while len(auditor._gc_pending) < 3:
        threading.Event().wait(0.01)
    store.gate.set()
    for t in [first, *threads]:
        t.join(30)
    assert isinstance(results["bad"], AuditWriteError)
    good = [results[k] for k in ("first", "g0", "g1")]
    assert all(not isinstance(r, Exception) for r in good)
    assert set(ids(store.inner)) == {r.request_id for r in good}  # type: ignore[union-attr]
    auditor.close()


def test_strict_record_that_cannot_be_built_is_a_write_error(tmp_path: Path, monkeypatch) -> None:
    guard = make_guard()
    attach_audit(guard, path=tmp_path / "s.db", durability="strict")

    def boom(*a, **kw):
        raise ValueError("cannot serialise")

    monkeypatch.setattr(AuditRecord, "from_decision", boom)
    with pytest.raises(AuditWriteError):  # not logged as a hook error with the Decision handed out
        guard.check_prompt("hello")


# -- fork ----------------------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_writes_its_own_records_not_the_parents(tmp_path: Path) -> None:
    db = tmp_path / "fork.db"
    store = GatedStore(SQLiteAuditStore(db))
    guard = make_guard()
    auditor = Auditor(store, durability="background")  # type: ignore[arg-type]
    guard.hooks.append(auditor)
    parent_first = guard.check_prompt("parent before fork").request_id
    assert store.entered.wait(10)  # held in flight, and one more queued, across the fork
    parent_queued = guard.check_prompt("parent queued").request_id
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(r)
            store.gate.set()  # the child's copy of the gate
            # (the Guard's engine loop thread did not survive the fork: feed the hook directly)
            child = []
            for i in range(5):
                req = GuardRequest(stage=Stage.PROMPT, prompt=f"child {i}")
                auditor(req, Decision(action=Action.ALLOW, stage=Stage.PROMPT, text="", reason="child",
                                      request_id=req.request_id))
                child.append(req.request_id)
            auditor.close(timeout=20)
            os.write(w, " ".join(child).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    child_ids = os.read(r, 10_000).decode().split()
    os.close(r)
    assert os.waitstatus_to_exitcode(status) == 0 and len(child_ids) == 5
    store.gate.set()
    assert auditor.flush(timeout=10)
    written = ids(store.inner)
    assert sorted(written) == sorted([parent_first, parent_queued, *child_ids])  # once each
    auditor.close()
