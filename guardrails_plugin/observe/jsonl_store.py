"""Audit records as JSON lines: ``path`` holds one record per line; the escalation queue is an
append-only event log in ``<path>.escalations.jsonl`` (``enqueued`` / ``resolved`` events, folded
on read; the first resolution wins, later ones are refused).

Several processes may append to the same files: every append holds an advisory lock (``flock``),
and an escalation id is taken under that lock. A line torn by a crash is skipped on read and never
glued to the next record. ``purge()`` rewrites a file into a new one and renames it over the old;
a writer that finds, after taking the lock, that its file was replaced reopens it first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from .records import (
    AuditError,
    AuditRecord,
    Escalation,
    EscalationAlreadyResolved,
    EscalationNotFound,
    PurgeResult,
    check_status,
    cutoff,
    strip_content,
)

try:  # advisory locks keep appends and escalation ids safe across processes (POSIX)
    import fcntl
except ImportError:  # pragma: no cover - Windows: single-process use only
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("guardrails_plugin.audit")


def _line(x: dict[str, Any]) -> bytes:
    return json.dumps(x, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n"


class JsonlAuditStore:
    """See the module docstring."""

    def __init__(self, path: str | Path | None = None, *, create: bool = True):
        self.path = Path(path or "guardrails_audit.jsonl")
        self.location = str(self.path)
        self.escalations_path = self.path.with_name(self.path.name + ".escalations.jsonl")
        if not create and not self.path.exists():
            raise AuditError(f"no audit store at {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._fhs: dict[Path, BinaryIO] = {}
        try:
            for p in (self.path, self.escalations_path):
                self._fhs[p] = open(p, "a+b")  # noqa: SIM115 - held open for appends
        except OSError as exc:
            raise AuditError(f"cannot open audit store {self.path}: {exc}") from exc

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[BinaryIO]:
        """The file's handle, under the thread lock and the cross-process file lock."""
        with self._lock:
            while True:
                fh = self._fhs[path]
                if fcntl is None:
                    break
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
                try:
                    same = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                # a purge replaced the file while we waited: append to the new one
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
                fh.close()
                self._fhs[path] = open(path, "a+b")  # noqa: SIM115
            try:
                yield fh
            finally:
                if fcntl is not None:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    @staticmethod
    def _append(fh: BinaryIO, lines: list[dict[str, Any]], durable: bool) -> None:
        fh.seek(0, os.SEEK_END)
        data = b"".join(_line(x) for x in lines)
        if fh.tell() > 0:  # a crash may have left a torn last line: start on a fresh one
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                data = b"\n" + data
        fh.write(data)
        fh.flush()
        if durable:
            os.fsync(fh.fileno())

    @staticmethod
    def _read(path: Path) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return out
        for n, line in enumerate(raw.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line.decode("utf-8", "surrogatepass")))
            except (ValueError, UnicodeDecodeError):
                log.warning("%s:%d: skipping a torn or corrupt audit line", path, n)
        return out

    def _next_escalation_id(self) -> int:
        # "purged" markers keep the highest id ever given, so a purge never lets an id be reused
        return max((max(e.get("id", 0) or 0, e.get("max_id", 0) or 0)
                    for e in self._read(self.escalations_path)), default=0) + 1

    def write(self, records: Sequence[AuditRecord], *, durable: bool = False) -> None:
        if not records:
            return
        try:
            with self._locked(self.path) as fh:
                self._append(fh, [r.to_dict() for r in records], durable)
            escs = [r for r in records if r.escalates]
            if escs:
                with self._locked(self.escalations_path) as efh:
                    first = self._next_escalation_id()
                    events = [{"event": "enqueued", **Escalation.from_record(first + i, r).to_dict()}
                              for i, r in enumerate(escs)]
                    self._append(efh, events, durable)
        except OSError as exc:
            raise AuditError(f"audit write to {self.path} failed: {exc}") from exc

    def records(
        self, *, request_id: str | None = None, action: str | None = None, limit: int | None = None
    ) -> list[AuditRecord]:
        out = []
        for d in self._read(self.path):
            if "event" in d:  # a purge marker
                continue
            if request_id is not None and d.get("request_id") != request_id:
                continue
            if action is not None and d.get("action") != str(action):
                continue
            try:
                out.append(AuditRecord(**d))
            except TypeError:
                log.warning("%s: skipping a record with unknown fields", self.path)
            if limit is not None and len(out) >= limit:
                break
        return out

    def count(self) -> int:
        return len(self.records())

    def _fold(self) -> dict[int, Escalation]:
        state: dict[int, Escalation] = {}
        for ev in self._read(self.escalations_path):
            kind, eid = ev.pop("event", None), int(ev.get("id") or 0)
            ev.pop("created_at", None)  # derived from time
            if kind == "enqueued" and eid not in state:
                try:
                    state[eid] = Escalation(**ev)
                except TypeError:
                    log.warning("%s: skipping an escalation with unknown fields", self.escalations_path)
            elif kind == "resolved" and eid in state and state[eid].status == "pending":
                e = state[eid]  # first resolution wins
                e.status, e.resolver, e.note, e.resolved_at = (
                    ev["status"], ev.get("resolver"), ev.get("note"), ev.get("resolved_at"))
        return state

    def list_escalations(
        self, status: str | None = None, *, limit: int | None = None, offset: int = 0
    ) -> list[Escalation]:
        check_status(status)
        items = [e for _, e in sorted(self._fold().items()) if status is None or e.status == status]
        return items[offset:] if limit is None else items[offset:offset + limit]

    def get_escalation(self, id: int) -> Escalation | None:
        return self._fold().get(int(id))

    def resolve(
        self, id: int, approved: bool, resolver: str | None = None, note: str | None = None
    ) -> Escalation:
        with self._locked(self.escalations_path) as efh:  # read-check-append under the lock
            esc = self._fold().get(int(id))
            if esc is None:
                raise EscalationNotFound(id)
            if esc.status != "pending":
                raise EscalationAlreadyResolved(
                    f"escalation {id} was already {esc.status} by {esc.resolver or 'unknown'}"
                )
            esc.status = "approved" if approved else "rejected"
            esc.resolver, esc.note, esc.resolved_at = resolver, note, time.time()
            self._append(efh, [{"event": "resolved", "id": esc.id, "status": esc.status,
                                "resolver": resolver, "note": note,
                                "resolved_at": esc.resolved_at}], True)
        return esc

    # -- retention ----------------------------------------------------------------------------
    def purge(
        self,
        *,
        older_than_days: float | None = None,
        content_older_than_days: float | None = None,
        now: float | None = None,
    ) -> PurgeResult:
        """As ``SqlAuditStore.purge``: old records and resolved escalations go, pending ones
        stay; old stored text is erased, hashes stay."""
        res = PurgeResult()
        rec_cut, text_cut = cutoff(older_than_days, now), cutoff(content_older_than_days, now)
        if rec_cut is None and text_cut is None:
            return res

        def keep_record(d: dict[str, Any]) -> dict[str, Any] | None:
            t = d.get("time", 0.0)
            if rec_cut is not None and "event" not in d and t < rec_cut:
                res.records += 1
                return None
            return _erase(d, text_cut, res)

        try:
            self._rewrite(self.path, lambda lines: [x for d in lines if (x := keep_record(d)) is not None])
            self._rewrite(self.escalations_path, lambda lines: self._purge_escalations(lines, rec_cut, text_cut, res))
        except OSError as exc:
            raise AuditError(f"audit purge of {self.path} failed: {exc}") from exc
        return res

    def _purge_escalations(self, lines: list[dict[str, Any]], rec_cut: float | None,
                           text_cut: float | None, res: PurgeResult) -> list[dict[str, Any]]:
        times = {e.get("id"): e.get("time", 0.0) for e in lines if e.get("event") == "enqueued"}
        resolved = {e.get("id") for e in lines if e.get("event") == "resolved"}
        top = max([e.get("max_id", 0) or 0 for e in lines] + [int(i or 0) for i in times], default=0)
        drop = set()
        if rec_cut is not None:
            old = {i for i, t in times.items() if t < rec_cut}
            drop = old & resolved
            res.escalations += len(drop)
            res.kept_pending += len(old - resolved)
        out: list[dict[str, Any]] = [{"event": "purged", "max_id": top, "time": time.time()}]
        for e in lines:
            if e.get("event") == "purged" or e.get("id") in drop:
                continue
            out.append(_erase(e, text_cut, res) if e.get("event") == "enqueued" else e)
        return out

    def _rewrite(self, path: Path, transform: Any) -> None:
        with self._locked(path):
            new = transform(self._read(path))
            tmp = path.with_name(path.name + ".purge-tmp")
            with open(tmp, "wb") as out:
                out.write(b"".join(_line(x) for x in new))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)  # writers waiting on the old file's lock will reopen
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def after_fork(self) -> None:
        """In a forked child: own file handles (a shared open file shares its flock)."""
        self._lock = threading.RLock()
        for p, fh in list(self._fhs.items()):
            with contextlib.suppress(OSError):
                fh.close()
            self._fhs[p] = open(p, "a+b")  # noqa: SIM115

    def close(self) -> None:
        with self._lock:
            for fh in self._fhs.values():
                fh.close()


def _erase(d: dict[str, Any], text_cut: float | None, res: PurgeResult) -> dict[str, Any]:
    if text_cut is None or d.get("content") is None or d.get("time", 0.0) >= text_cut:
        return d
    res.content += 1
    return {**d, "content": None, "verdicts": strip_content(d.get("verdicts") or [])}


__all__ = ["JsonlAuditStore"]
