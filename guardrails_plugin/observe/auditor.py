"""The decision hook that writes every Decision to an audit store (``guard.hooks.append(auditor)``).

Durability:

* ``"background"`` (default): the hook only appends the record to a bounded in-memory queue; a
  writer thread commits in batches. The request path never waits on the database. When the store
  is unreachable the writer keeps the batch and retries with capped exponential backoff while new
  records queue up; a full queue drops new records, and every dropped record is counted
  (``auditor.dropped``, the ``guardrails_audit_records_total{outcome="dropped"}`` metric) and
  logged. Nothing is lost without being counted. ``flush()`` / ``close()`` drain.
* ``"strict"``: the hook commits (SQLite ``synchronous=FULL``, PostgreSQL synchronous commit)
  before it returns; the Guard runs hooks before ``check`` returns, so a Decision a caller holds
  is on record. Concurrent strict writers share commits (group commit): one thread writes
  everything that queued while the previous commit ran, so N callers pay about one fsync.

A strict write that fails follows the stage's fail mode: ``closed`` (the default) raises
``AuditWriteError``, which the Guard lets out of ``check`` (no Decision is handed out that the
audit lacks); ``open`` hands the Decision out with a note and puts its record on the background
retry queue.

Retention: with ``retention_days`` / ``content_retention_days`` the writer thread purges the store
every ``purge_interval_s`` (see ``AuditStore.purge``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from ..errors import GuardConfigError
from ..types import Decision, GuardRequest
from .records import AuditRecord, AuditUnavailable, AuditWriteError, Durability, Escalation
from .store import AuditStore

log = logging.getLogger("guardrails_plugin.audit")

#: listener(auditor, event, n): event is "written", "dropped", "failed" or "retry"
Listener = Callable[["Auditor", str, int], None]
FailMode = str | Callable[[Any], str]

_live: weakref.WeakSet[Auditor] = weakref.WeakSet()


@atexit.register
def _drain_at_exit() -> None:
    # the writer is a daemon thread: without this, records queued at exit would be lost
    for a in list(_live):
        with contextlib.suppress(Exception):
            a.close(timeout=5.0)


def _after_fork_in_child() -> None:
    for a in list(_live):
        a._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Slot:
    """One strict record waiting for a group commit."""

    __slots__ = ("record", "done", "error", "alone")

    def __init__(self, record: AuditRecord):
        self.record = record
        self.done = False
        self.alone = False  # the shared commit was rejected: write this record on its own
        self.error: BaseException | None = None


class Auditor:
    """See the module docstring."""

    def __init__(
        self,
        store: AuditStore,
        *,
        durability: Durability = "background",
        store_content: bool = False,
        queue_size: int = 10_000,
        batch_size: int = 256,
        batch_window_s: float = 0.02,
        retries: int = 3,
        max_backoff_s: float = 5.0,
        fail_mode: FailMode = "closed",
        retention_days: float | None = None,
        content_retention_days: float | None = None,
        purge_interval_s: float = 3600.0,
    ):
        if durability not in ("background", "strict"):
            raise GuardConfigError(f"audit durability must be 'background' or 'strict', got {durability!r}")
        self.store = store
        self.durability: Durability = durability
        self.store_content = store_content
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.batch_window_s = batch_window_s
        self.retries = retries  #: attempts for a batch the store rejects (not for an outage)
        self.max_backoff_s = max_backoff_s
        self.fail_mode = fail_mode
        self.retention_days = retention_days
        self.content_retention_days = content_retention_days
        self.purge_interval_s = purge_interval_s
        self.listeners: list[Listener] = []
        self._closed = False
        self._init_runtime()
        _live.add(self)

    def _init_runtime(self) -> None:
        """Locks, queue, counters and writer thread (again in a forked child: threads and held
        locks do not survive fork, and the parent's queued records are the parent's to write)."""
        self.written = 0  #: records committed
        self.dropped = 0  #: records lost to a full queue, a closed auditor or an outage at close
        self.failed = 0  #: records the store rejected, or strict records not written
        self.retried = 0  #: batch writes retried because the store was unreachable
        self._enqueued = 0
        self._settled = 0
        self._stop = False
        self._give_up_at: float | None = None
        self._cond = threading.Condition()
        self._queue: deque[AuditRecord] = deque()
        self._wake = threading.Event()
        self._gc = threading.Condition()
        self._gc_pending: list[_Slot] = []
        self._gc_busy = False
        self._next_purge = time.monotonic() if self._purges else None
        self._thread = threading.Thread(target=self._run, name="guardrails-plugin-audit", daemon=True)
        if not self._closed:
            self._thread.start()

    @property
    def _purges(self) -> bool:
        return self.retention_days is not None or self.content_retention_days is not None

    def _after_fork(self) -> None:
        after = getattr(self.store, "after_fork", None)
        if after is not None:
            with contextlib.suppress(Exception):
                after()
        self._init_runtime()

    # -- the hook -----------------------------------------------------------------------------
    @property
    def blocking(self) -> bool:
        """Strict writes commit before returning: the Guard runs them off the event loop."""
        return self.durability == "strict"

    def __call__(self, request: GuardRequest, decision: Decision) -> None:
        if self.durability == "background":
            self._enqueue(AuditRecord.from_decision(request, decision, store_content=self.store_content))
            return
        rid = decision.request_id or request.request_id
        try:
            # building the record is part of the write: if it fails, the Decision is not on record
            record = AuditRecord.from_decision(request, decision, store_content=self.store_content)
        except Exception as exc:
            self._count("failed", 1)
            raise AuditWriteError(f"strict audit write failed for {rid}: {exc}") from exc
        try:
            self._commit_strict(record)
        except Exception as exc:
            if self._mode_for(decision) == "open":  # availability first: hand out, retry later
                queued = self._enqueue(record)
                what = "queued for retry" if queued else "dropped"
                decision.notes.append(f"audit: strict write failed ({exc}); record {what}")
                log.error("audit: strict write failed for %s under fail-open; record %s: %s", rid, what, exc)
                return
            self._count("failed", 1)
            raise AuditWriteError(f"strict audit write failed for {rid}: {exc}") from exc
        self._count("written", 1)

    def record(self, request: GuardRequest, decision: Decision) -> None:
        """Same as calling the auditor."""
        self(request, decision)

    def _mode_for(self, decision: Decision) -> str:
        if callable(self.fail_mode):
            try:
                return str(self.fail_mode(decision.stage))
            except Exception:
                return "closed"
        return str(self.fail_mode)

    def _commit_strict(self, record: AuditRecord) -> None:
        """Group commit: join the next commit; the first waiter to find no commit running writes
        every record that has queued up, the others wait for its outcome."""
        slot = _Slot(record)
        with self._gc:
            self._gc_pending.append(slot)
            while self._gc_busy and not slot.done:
                self._gc.wait()
            if not slot.done:
                batch, self._gc_pending = self._gc_pending, []
                self._gc_busy = True
        if not slot.done:
            err: BaseException | None = None
            try:
                self.store.write([s.record for s in batch], durable=True)
            except BaseException as exc:
                err = exc
            finally:
                with self._gc:
                    alone = err is not None and len(batch) > 1 and not isinstance(err, AuditUnavailable)
                    for s in batch:
                        s.done, s.error, s.alone = True, err, alone
                    self._gc_busy = False
                    self._gc.notify_all()
        if slot.alone:  # one bad record must not fail the others that shared its commit
            self.store.write([record], durable=True)
        elif slot.error is not None:
            raise slot.error

    def _enqueue(self, record: AuditRecord) -> bool:
        """Queue a record for the writer; False (dropped and counted) when full or closed."""
        with self._cond:
            # The closed check and the append are one step under the lock close() takes: a record
            # is either queued ahead of the writer's stop (so written) or dropped and counted.
            if self._closed:
                why = "closed"
            elif len(self._queue) >= self.queue_size:
                why = "full"
            else:
                self._queue.append(record)
                self._enqueued += 1
                if len(self._queue) == 1 or len(self._queue) >= self.batch_size:
                    self._cond.notify()
                return True
            self.dropped += 1
            n = self.dropped
        self._emit("dropped", 1)
        if why == "closed":
            log.warning("audit: auditor closed, dropping the record of %s", record.request_id)
        elif n == 1 or n % 1000 == 0:  # the first and then every 1000th drop
            log.error("audit queue full: %d record(s) dropped so far", n)
        return False

    # -- counters and listeners ---------------------------------------------------------------
    def _count(self, event: str, n: int) -> None:
        with self._cond:
            setattr(self, event, getattr(self, event) + n)
        self._emit(event, n)

    def _settle(self, event: str, n: int) -> None:
        with self._cond:
            setattr(self, event, getattr(self, event) + n)
            self._settled += n
            self._cond.notify_all()
        self._emit(event, n)

    def _emit(self, event: str, n: int) -> None:
        for fn in list(self.listeners):
            try:
                fn(self, event, n)
            except Exception:  # a metrics failure must not touch the audit
                log.exception("audit listener %r failed", fn)

    # -- the writer thread --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if batch:
                self._write_batch(batch)
            self._maybe_purge()

    def _take(self) -> list[AuditRecord] | None:
        """The next batch ([] when only a purge is due); None once stopped and drained."""
        with self._cond:
            if not self._queue:
                if self._stop:
                    return None
                wait = None if self._next_purge is None else max(0.0, self._next_purge - time.monotonic())
                self._cond.wait(wait)
                if not self._queue:
                    return None if self._stop else []
            # linger a moment for more: one commit per burst, not per record
            deadline = time.monotonic() + self.batch_window_s
            while len(self._queue) < self.batch_size and not self._stop:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return [self._queue.popleft() for _ in range(min(len(self._queue), self.batch_size))]

    def _write_batch(self, batch: list[AuditRecord]) -> None:
        delay, rejected = 0.05, 0
        while True:
            try:
                self.store.write(batch)
            except AuditUnavailable as exc:
                self._count("retried", 1)
                if self.retried == 1 or self.retried % 100 == 0:
                    log.warning("audit store unreachable (%s); %d record(s) waiting, retrying", exc,
                                len(batch) + len(self._queue))
                with self._cond:
                    give_up_at = self._give_up_at
                now = time.monotonic()
                if give_up_at is not None and now >= give_up_at:
                    # closing and the store is still down: what is left is lost, counted
                    with self._cond:
                        rest = len(self._queue)
                        self._queue.clear()
                    log.error("audit: closing with the store unreachable; %d record(s) dropped",
                              len(batch) + rest)
                    self._settle("dropped", len(batch) + rest)
                    return
                # close() sets _wake once so a long pause cannot overrun its deadline
                if self._wake.wait(delay if give_up_at is None else min(delay, give_up_at - now)):
                    self._wake.clear()
                delay = min(delay * 2, self.max_backoff_s)
            except Exception:
                rejected += 1
                if rejected <= self.retries:
                    time.sleep(0.05 * 2 ** (rejected - 1))
                    continue
                if len(batch) > 1:  # find the record the store will not take; keep the others
                    for r in batch:
                        self._write_batch([r])
                    return
                log.exception("audit: the store rejected the record of %s; dropping it", batch[0].request_id)
                self._settle("failed", 1)
                return
            else:
                self._settle("written", len(batch))
                return

    def _maybe_purge(self) -> None:
        if self._next_purge is None or time.monotonic() < self._next_purge:
            return
        try:
            res = self.store.purge(older_than_days=self.retention_days,
                                   content_older_than_days=self.content_retention_days)
            log.info("audit retention purge: %s", res.to_dict())
            self._next_purge = time.monotonic() + self.purge_interval_s
        except Exception:
            log.exception("audit retention purge failed; retrying in a minute")
            self._next_purge = time.monotonic() + min(60.0, self.purge_interval_s)

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Records queued or being written, not yet committed (background mode)."""
        with self._cond:
            return self._enqueued - self._settled

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record queued so far is written (or counted lost). False on timeout."""
        with self._cond:
            target = self._enqueued
            return self._cond.wait_for(lambda: self._settled >= target, timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Drain the queue, stop the writer and close the store. Idempotent. If the store stays
        unreachable past ``timeout``, what is still queued is dropped and counted."""
        with self._cond:  # see _enqueue: no record can be queued behind the stop
            if self._closed:
                return
            self._closed = True
            self._stop = True
            if timeout is not None:
                self._give_up_at = time.monotonic() + timeout
            self._cond.notify_all()
        self._wake.set()
        _live.discard(self)
        if self._thread.is_alive():
            self._thread.join(None if timeout is None else timeout + 1.0)
            if self._thread.is_alive():
                log.error("audit writer did not finish within %ss; %d record(s) pending", timeout, self.pending)
                return  # leave the store open for the writer still using it
        self.store.close()

    def __enter__(self) -> Auditor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"written": self.written, "dropped": self.dropped, "failed": self.failed,
                    "retried": self.retried, "queued": len(self._queue)}

    # -- convenience reads --------------------------------------------------------------------
    def list_escalations(self, status: str | None = None) -> list[Escalation]:
        return self.store.list_escalations(status)

    def get_escalation(self, id: int) -> Escalation | None:
        return self.store.get_escalation(id)

    def resolve(self, id: int, approved: bool, resolver: str | None = None, note: str | None = None) -> Escalation:
        return self.store.resolve(id, approved, resolver, note)


__all__ = ["Auditor", "Listener"]
