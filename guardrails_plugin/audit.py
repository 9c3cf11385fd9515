"""Audit trail and escalation queue.

Every Decision a Guard makes is appended to an audit store; ESCALATE decisions also open an entry
in an escalation queue that a reviewer resolves (``guardrails-plugin escalations ...``).

* Stores: ``SQLiteAuditStore`` (default; WAL mode, one file, safe for several processes) and
  ``JsonlAuditStore`` (append-only JSON lines; escalation state is an event log beside it).
* ``Auditor`` is the decision hook (``guard.hooks.append(auditor)``). Durability:

  - ``"background"`` (default): the hook only puts the record on a bounded queue; a writer thread
    commits in batches. The request path never waits on disk; on overflow records are dropped,
    counted (``auditor.dropped``) and logged, never blocked on. ``flush()`` / ``close()`` drain.
  - ``"strict"``: the hook commits (SQLite ``synchronous=FULL`` / fsync) before it returns. Guard
    runs hooks before ``check`` returns, so a Decision a caller holds is already on disk.

Privacy: the judged text is stored only with ``store_content=True``; otherwise only its SHA-256
is kept, and the guards' ``raw_output`` / ``rationale`` (which often quote the text) are dropped
from the stored verdicts.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from .errors import GuardConfigError, GuardError
from .types import Action, Decision, GuardRequest

if TYPE_CHECKING:
    from .guard import Guard

log = logging.getLogger("guardrails_plugin.audit")

Durability = Literal["background", "strict"]
SinkKind = Literal["sqlite", "jsonl"]
EscalationStatus = Literal["pending", "approved", "rejected"]
STATUSES: tuple[str, ...] = ("pending", "approved", "rejected")

#: where the audit store lives when no path is given (also the CLI's default --db)
DEFAULT_PATH_ENV = "GUARDRAILS_PLUGIN_AUDIT_DB"
DEFAULT_SQLITE_PATH = "guardrails_audit.db"
SCHEMA_VERSION = 1


class AuditError(GuardError):
    """The audit store could not be opened or written."""


class AuditWriteError(AuditError):
    """A strict-durability write failed: the Decision is not on record.

    Guard re-raises this one from its hooks (every other hook error is only logged), so a caller
    never holds a strict-mode Decision that the audit trail does not have."""


class EscalationNotFound(AuditError, KeyError):
    """No escalation with that id."""


class EscalationAlreadyResolved(AuditError):
    """The escalation was resolved before; resolutions are final."""


def default_path() -> str:
    return os.environ.get(DEFAULT_PATH_ENV) or DEFAULT_SQLITE_PATH


def content_sha256(text: str) -> str:
    # surrogatepass: a lone surrogate that slipped through normalisation must not break the audit
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# -- records ------------------------------------------------------------------------------------
@dataclass
class AuditRecord:
    """One Decision as stored. ``verdicts`` are JSON-ready dicts."""

    request_id: str
    time: float
    stage: str
    guards: list[str]
    action: str
    reason: str
    risk: float
    categories: list[str]
    verdicts: list[dict[str, Any]]
    latency_ms: float
    guard_latency_ms: dict[str, float]
    degraded: bool
    failure: str | None
    hold: bool
    content_sha256: str
    content: str | None = None
    unguarded: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_decision(
        cls,
        request: GuardRequest,
        decision: Decision,
        *,
        store_content: bool = False,
        now: float | None = None,
    ) -> AuditRecord:
        text = request.target
        drop = set() if store_content else {"raw_output", "rationale"}
        verdicts = [v.model_dump(mode="json", exclude=drop) for v in decision.verdicts]
        guards = list(dict.fromkeys(v.guard for v in decision.verdicts))
        per_guard: dict[str, float] = {}
        for v in decision.verdicts:  # windows of one guard share a call: keep the slowest
            per_guard[v.guard] = max(per_guard.get(v.guard, 0.0), v.latency_ms)
        return cls(
            request_id=decision.request_id or request.request_id,
            time=time.time() if now is None else now,
            stage=str(decision.stage),
            guards=guards,
            action=str(decision.action),
            reason=decision.reason,
            risk=decision.risk,
            categories=list(decision.categories),
            verdicts=verdicts,
            latency_ms=decision.latency_ms,
            guard_latency_ms=per_guard,
            degraded=decision.degraded,
            failure=str(decision.failure) if decision.failure else None,
            hold=decision.hold,
            content_sha256=content_sha256(text),
            content=text if store_content else None,
            unguarded=list(decision.unguarded),
            metadata=_jsonable(dict(request.metadata)),
        )

    @property
    def escalates(self) -> bool:
        return self.action == Action.ESCALATE.value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Escalation:
    """An entry of the escalation queue."""

    id: int
    request_id: str
    time: float
    stage: str
    reason: str
    risk: float
    categories: list[str]
    content_sha256: str
    content: str | None = None
    status: str = "pending"
    resolver: str | None = None
    note: str | None = None
    resolved_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _jsonable(value: Any) -> Any:
    """Metadata is free-form: round-trip through JSON with str() for anything exotic. Never raises:
    a value JSON cannot hold at all (a circular structure, odd keys) is kept as its repr, so the
    Decision is still recorded (in strict mode a failure here would have lost it)."""
    try:
        return json.loads(json.dumps(value, default=str))
    except (ValueError, TypeError, RecursionError):
        if isinstance(value, dict):
            return {str(k): _jsonable_or_repr(v) for k, v in value.items()}
        return repr(value)


def _jsonable_or_repr(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, default=str))
    except (ValueError, TypeError, RecursionError):
        return repr(value)


# -- store protocol -------------------------------------------------------------------------
@runtime_checkable
class AuditStore(Protocol):
    """Where audit records and escalations live. Implementations are thread-safe."""

    path: Path

    def write(self, records: Sequence[AuditRecord], *, durable: bool = False) -> None:
        """Append records atomically; ESCALATE records also enqueue an escalation.
        ``durable=True``: on stable storage when this returns (fsync / synchronous=FULL)."""
        ...

    def records(
        self, *, request_id: str | None = None, action: str | None = None, limit: int | None = None
    ) -> list[AuditRecord]: ...

    def list_escalations(self, status: str | None = None) -> list[Escalation]: ...

    def get_escalation(self, id: int) -> Escalation | None: ...

    def resolve(
        self, id: int, approved: bool, resolver: str | None = None, note: str | None = None
    ) -> Escalation: ...

    def close(self) -> None: ...


def _check_status(status: str | None) -> None:
    if status is not None and status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")


# -- SQLite ---------------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id       TEXT    NOT NULL,
    time             REAL    NOT NULL,
    stage            TEXT    NOT NULL,
    guards           TEXT    NOT NULL,  -- JSON list of guard model names
    action           TEXT    NOT NULL,
    reason           TEXT    NOT NULL,
    risk             REAL    NOT NULL,
    categories       TEXT    NOT NULL,  -- JSON list
    verdicts         TEXT    NOT NULL,  -- JSON list of Verdict dicts
    latency_ms       REAL    NOT NULL,
    guard_latency_ms TEXT    NOT NULL,  -- JSON {guard: ms}
    degraded         INTEGER NOT NULL,
    failure          TEXT,
    hold             INTEGER NOT NULL,
    content_sha256   TEXT    NOT NULL,
    content          TEXT,              -- only with store_content=True
    unguarded        TEXT    NOT NULL,  -- JSON list
    metadata         TEXT    NOT NULL   -- JSON object
);
CREATE INDEX IF NOT EXISTS ix_decisions_request_id ON decisions(request_id);
CREATE INDEX IF NOT EXISTS ix_decisions_time ON decisions(time);
CREATE INDEX IF NOT EXISTS ix_decisions_action ON decisions(action);
CREATE TABLE IF NOT EXISTS escalations (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id     TEXT    NOT NULL,
    time           REAL    NOT NULL,
    stage          TEXT    NOT NULL,
    reason         TEXT    NOT NULL,
    risk           REAL    NOT NULL,
    categories     TEXT    NOT NULL,
    content_sha256 TEXT    NOT NULL,
    content        TEXT,
    status         TEXT    NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'approved', 'rejected')),
    resolver       TEXT,
    note           TEXT,
    resolved_at    REAL
);
CREATE INDEX IF NOT EXISTS ix_escalations_status ON escalations(status, id);
CREATE INDEX IF NOT EXISTS ix_escalations_request_id ON escalations(request_id);
"""

_DECISION_COLS = (
    "request_id", "time", "stage", "guards", "action", "reason", "risk", "categories", "verdicts",
    "latency_ms", "guard_latency_ms", "degraded", "failure", "hold", "content_sha256", "content",
    "unguarded", "metadata",
)
_JSON_COLS = {"guards", "categories", "verdicts", "guard_latency_ms", "unguarded", "metadata"}
_ESC_COLS = (
    "id", "request_id", "time", "stage", "reason", "risk", "categories", "content_sha256",
    "content", "status", "resolver", "note", "resolved_at",
)


class SQLiteAuditStore:
    """Audit store in one SQLite file, WAL mode.

    WAL lets the CLI read (and resolve escalations) while an application writes. A commit with
    ``durable=True`` runs under ``synchronous=FULL`` (WAL fsync'd before it returns); background
    batches use ``NORMAL``, which survives a killed process (not a power cut).
    ``create=False`` refuses to make a new file (the CLI pointed at a wrong path).
    """

    def __init__(self, path: str | Path | None = None, *, create: bool = True, busy_timeout_s: float = 30.0):
        self.path = Path(path or default_path())
        if not create and not self.path.exists():
            raise AuditError(f"no audit store at {self.path}")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            # autocommit mode (isolation_level=None): transactions are explicit BEGIN IMMEDIATE
            self._conn = sqlite3.connect(
                str(self.path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise AuditError(f"{self.path}: could not enable WAL (journal_mode={mode})")
            self._sync = "NORMAL"
            self._conn.execute("PRAGMA synchronous=NORMAL")
            if self._conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                with self._tx():
                    self._conn.executescript(
                        "BEGIN IMMEDIATE;" + _SCHEMA + f"PRAGMA user_version={SCHEMA_VERSION};COMMIT;"
                    )
        except sqlite3.DatabaseError as exc:
            raise AuditError(f"cannot open audit store {self.path}: {exc}") from exc

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """Serialises use of the one connection across threads."""
        with self._lock:
            yield

    def _set_sync(self, durable: bool) -> None:
        want = "FULL" if durable else "NORMAL"
        if want != self._sync:  # a pragma per change, not per commit
            self._conn.execute(f"PRAGMA synchronous={want}")
            self._sync = want

    # -- writes -------------------------------------------------------------------------------
    def write(self, records: Sequence[AuditRecord], *, durable: bool = False) -> None:
        if not records:
            return
        rows = [self._decision_row(r) for r in records]
        escs = [self._escalation_row(r) for r in records if r.escalates]
        placeholders = ",".join("?" * len(_DECISION_COLS))
        with self._lock:
            try:
                self._set_sync(durable)
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.executemany(
                        f"INSERT INTO decisions ({','.join(_DECISION_COLS)}) VALUES ({placeholders})", rows
                    )
                    if escs:
                        self._conn.executemany(
                            "INSERT INTO escalations (request_id, time, stage, reason, risk, categories,"
                            " content_sha256, content) VALUES (?,?,?,?,?,?,?,?)",
                            escs,
                        )
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise AuditError(f"audit write to {self.path} failed: {exc}") from exc

    @staticmethod
    def _decision_row(r: AuditRecord) -> tuple[Any, ...]:
        d = r.to_dict()
        out = []
        for col in _DECISION_COLS:
            v = d[col]
            if col in _JSON_COLS:
                v = json.dumps(v, ensure_ascii=False)
            elif isinstance(v, bool):
                v = int(v)
            out.append(v)
        return tuple(out)

    @staticmethod
    def _escalation_row(r: AuditRecord) -> tuple[Any, ...]:
        return (r.request_id, r.time, r.stage, r.reason, r.risk, json.dumps(r.categories),
                r.content_sha256, r.content)

    # -- reads --------------------------------------------------------------------------------
    def records(
        self, *, request_id: str | None = None, action: str | None = None, limit: int | None = None
    ) -> list[AuditRecord]:
        where, args = [], []
        if request_id is not None:
            where.append("request_id = ?")
            args.append(request_id)
        if action is not None:
            where.append("action = ?")
            args.append(str(action))
        sql = f"SELECT {','.join(_DECISION_COLS)} FROM decisions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        out = []
        for row in rows:
            d = dict(zip(_DECISION_COLS, row, strict=True))
            for col in _JSON_COLS:
                d[col] = json.loads(d[col])
            d["degraded"], d["hold"] = bool(d["degraded"]), bool(d["hold"])
            out.append(AuditRecord(**d))
        return out

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])

    def integrity_check(self) -> str:
        with self._lock:
            return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])

    @staticmethod
    def _escalation(row: Sequence[Any]) -> Escalation:
        d = dict(zip(_ESC_COLS, row, strict=True))
        d["categories"] = json.loads(d["categories"])
        return Escalation(**d)

    def list_escalations(self, status: str | None = None) -> list[Escalation]:
        _check_status(status)
        sql = f"SELECT {','.join(_ESC_COLS)} FROM escalations"
        args: list[Any] = []
        if status is not None:
            sql += " WHERE status = ?"
            args.append(status)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY id", args).fetchall()
        return [self._escalation(r) for r in rows]

    def get_escalation(self, id: int) -> Escalation | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {','.join(_ESC_COLS)} FROM escalations WHERE id = ?", (int(id),)
            ).fetchone()
        return self._escalation(row) if row else None

    def resolve(
        self, id: int, approved: bool, resolver: str | None = None, note: str | None = None
    ) -> Escalation:
        status = "approved" if approved else "rejected"
        with self._lock:
            self._set_sync(True)  # a reviewer's decision is rare and must not be lost
            # the WHERE status='pending' makes a concurrent second resolve a no-op we can detect
            cur = self._conn.execute(
                "UPDATE escalations SET status=?, resolver=?, note=?, resolved_at=?"
                " WHERE id=? AND status='pending'",
                (status, resolver, note, time.time(), int(id)),
            )
            changed = cur.rowcount
        esc = self.get_escalation(id)
        if esc is None:
            raise EscalationNotFound(id)
        if not changed:
            raise EscalationAlreadyResolved(
                f"escalation {id} was already {esc.status} by {esc.resolver or 'unknown'}"
            )
        return esc

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()


# -- JSONL ----------------------------------------------------------------------------------
try:  # advisory locks keep escalation ids unique across processes sharing the files (POSIX)
    import fcntl
except ImportError:  # pragma: no cover - Windows: single-process use only
    fcntl = None  # type: ignore[assignment]


class JsonlAuditStore:
    """Audit records as JSON lines in ``path``; the escalation queue is an append-only event log
    in ``<path>.escalations.jsonl`` (``enqueued`` / ``resolved`` events, folded on read).

    A line torn by a crash is skipped on read and never glued to the next record."""

    def __init__(self, path: str | Path | None = None, *, create: bool = True):
        self.path = Path(path or "guardrails_audit.jsonl")
        self.escalations_path = self.path.with_name(self.path.name + ".escalations.jsonl")
        if not create and not self.path.exists():
            raise AuditError(f"no audit store at {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._fh = open(self.path, "a+b")  # noqa: SIM115 - held open for appends
        self._efh = open(self.escalations_path, "a+b")  # noqa: SIM115

    @contextlib.contextmanager
    def _flocked(self, fh: Any) -> Iterator[None]:
        with self._lock:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    @staticmethod
    def _append(fh: Any, lines: list[dict[str, Any]], durable: bool) -> None:
        fh.seek(0, os.SEEK_END)
        data = b"".join(
            json.dumps(x, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n" for x in lines
        )
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
        return max((e.get("id", 0) for e in self._read(self.escalations_path)), default=0) + 1

    def write(self, records: Sequence[AuditRecord], *, durable: bool = False) -> None:
        if not records:
            return
        try:
            with self._flocked(self._fh):
                self._append(self._fh, [r.to_dict() for r in records], durable)
            escs = [r for r in records if r.escalates]
            if escs:
                with self._flocked(self._efh):
                    first = self._next_escalation_id()
                    events = [
                        {"event": "enqueued", **Escalation(
                            id=first + i, request_id=r.request_id, time=r.time, stage=r.stage,
                            reason=r.reason, risk=r.risk, categories=r.categories,
                            content_sha256=r.content_sha256, content=r.content,
                        ).to_dict()}
                        for i, r in enumerate(escs)
                    ]
                    self._append(self._efh, events, durable)
        except OSError as exc:
            raise AuditError(f"audit write to {self.path} failed: {exc}") from exc

    def records(
        self, *, request_id: str | None = None, action: str | None = None, limit: int | None = None
    ) -> list[AuditRecord]:
        out = []
        for d in self._read(self.path):
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
            if kind == "enqueued" and eid not in state:
                try:
                    state[eid] = Escalation(**ev)
                except TypeError:
                    log.warning("%s: skipping an escalation with unknown fields", self.escalations_path)
            elif kind == "resolved" and eid in state and state[eid].status == "pending":
                e = state[eid]  # first resolution wins, as in the SQLite store
                e.status, e.resolver, e.note, e.resolved_at = (
                    ev["status"], ev.get("resolver"), ev.get("note"), ev.get("resolved_at"))
        return state

    def list_escalations(self, status: str | None = None) -> list[Escalation]:
        _check_status(status)
        return [e for _, e in sorted(self._fold().items()) if status is None or e.status == status]

    def get_escalation(self, id: int) -> Escalation | None:
        return self._fold().get(int(id))

    def resolve(
        self, id: int, approved: bool, resolver: str | None = None, note: str | None = None
    ) -> Escalation:
        with self._flocked(self._efh):  # read-check-append under the lock: one resolution wins
            esc = self._fold().get(int(id))
            if esc is None:
                raise EscalationNotFound(id)
            if esc.status != "pending":
                raise EscalationAlreadyResolved(
                    f"escalation {id} was already {esc.status} by {esc.resolver or 'unknown'}"
                )
            esc.status = "approved" if approved else "rejected"
            esc.resolver, esc.note, esc.resolved_at = resolver, note, time.time()
            self._append(self._efh, [{"event": "resolved", "id": esc.id, "status": esc.status,
                                      "resolver": resolver, "note": note,
                                      "resolved_at": esc.resolved_at}], True)
        return esc

    def close(self) -> None:
        with self._lock:
            self._fh.close()
            self._efh.close()


def open_store(
    path: str | Path | None = None, *, sink: SinkKind | None = None, create: bool = True
) -> AuditStore:
    """An audit store; ``sink`` defaults to jsonl for ``*.jsonl`` paths, sqlite otherwise."""
    p = Path(path or default_path())
    kind = sink or ("jsonl" if p.name.endswith(".jsonl") else "sqlite")
    if kind == "sqlite":
        return SQLiteAuditStore(p, create=create)
    if kind == "jsonl":
        return JsonlAuditStore(p, create=create)
    raise GuardConfigError(f"unknown audit sink {kind!r} (expected 'sqlite' or 'jsonl')")


# -- the hook -------------------------------------------------------------------------------
_live: weakref.WeakSet[Auditor] = weakref.WeakSet()


@atexit.register
def _drain_at_exit() -> None:
    # the writer is a daemon thread: without this, records queued at exit would be lost
    for a in list(_live):
        with contextlib.suppress(Exception):
            a.close(timeout=5.0)


class Auditor:
    """Decision hook that writes every Decision to ``store`` (``guard.hooks.append(auditor)``)."""

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
    ):
        if durability not in ("background", "strict"):
            raise GuardConfigError(f"audit durability must be 'background' or 'strict', got {durability!r}")
        self.store = store
        self.durability: Durability = durability
        self.store_content = store_content
        self.batch_size = batch_size
        self.batch_window_s = batch_window_s
        self.retries = retries
        self.written = 0  #: records committed
        self.dropped = 0  #: records lost to a full queue
        self.failed = 0  #: records lost to write errors after retries
        self._enqueued = 0
        self._closed = False
        self._cond = threading.Condition()
        self._queue: queue.Queue[AuditRecord | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        if durability == "background":
            self._thread = threading.Thread(target=self._run, name="guardrails-plugin-audit", daemon=True)
            self._thread.start()
        _live.add(self)

    # the hook -----------------------------------------------------------------------------
    @property
    def blocking(self) -> bool:
        """Strict writes commit (fsync) before returning: the Guard runs them off the event loop."""
        return self.durability == "strict"

    def __call__(self, request: GuardRequest, decision: Decision) -> None:
        if self.durability == "strict":
            # Building the record is part of the write: if it fails, the Decision is not on
            # record either, and only AuditWriteError makes the Guard withhold it.
            try:
                record = AuditRecord.from_decision(request, decision, store_content=self.store_content)
                self.store.write([record], durable=True)
            except Exception as exc:
                with self._cond:
                    self.failed += 1
                rid = decision.request_id or request.request_id
                raise AuditWriteError(f"strict audit write failed for {rid}: {exc}") from exc
            with self._cond:
                self.written += 1
            return
        record = AuditRecord.from_decision(request, decision, store_content=self.store_content)
        full = False
        with self._cond:
            # The closed check and the put are one step under the lock close() takes to set
            # _closed: a record is either queued ahead of the writer's stop sentinel (so written)
            # or dropped and counted, never queued behind it and silently lost.
            if self._closed:
                self.dropped += 1
                closed = True
            else:
                closed = False
                self._enqueued += 1  # counted with the put so flush() can never miss a record
                try:
                    self._queue.put_nowait(record)  # never wait: the request path must not block on disk
                except queue.Full:
                    self._enqueued -= 1
                    self.dropped += 1
                    full = True
            n = self.dropped
        if closed:
            log.warning("audit: auditor closed, dropping the record of %s", record.request_id)
        elif full and (n == 1 or n % 1000 == 0):  # log the first and then every 1000th drop
            log.error("audit queue full: %d record(s) dropped so far", n)

    def record(self, request: GuardRequest, decision: Decision) -> None:
        """Same as calling the auditor."""
        self(request, decision)

    # the writer thread -------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            stop = item is None
            batch: list[AuditRecord] = [] if item is None else [item]
            # linger a moment for more: one commit per burst, not per record (fewer wakeups,
            # less GIL traffic next to the request path)
            deadline = time.monotonic() + self.batch_window_s
            while not stop and len(batch) < self.batch_size:
                remaining = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                else:
                    batch.append(nxt)
            if batch:
                self._write_batch(batch)
            if stop:
                return

    def _write_batch(self, batch: list[AuditRecord]) -> None:
        for attempt in range(self.retries + 1):
            try:
                self.store.write(batch)
                with self._cond:
                    self.written += len(batch)
                    self._cond.notify_all()
                return
            except Exception:
                if attempt == self.retries:
                    log.exception("audit: dropping %d record(s) after %d failed writes",
                                  len(batch), attempt + 1)
                    with self._cond:
                        self.failed += len(batch)
                        self._cond.notify_all()
                    return
                time.sleep(0.05 * 2**attempt)

    # lifecycle ---------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Records queued or being written, not yet committed (background mode)."""
        with self._cond:
            return self._enqueued - self.written - self.failed

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record queued so far is written (or failed). False on timeout."""
        if self._thread is None:
            return True
        with self._cond:
            target = self._enqueued
            return self._cond.wait_for(lambda: self.written + self.failed >= target, timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Drain the queue, stop the writer and close the store. Idempotent."""
        with self._cond:  # see __call__: no record can be queued behind the sentinel
            if self._closed:
                return
            self._closed = True
        _live.discard(self)
        if self._thread is not None:
            self._queue.put(None)  # after every queued record: the writer drains, then stops
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("audit writer did not finish within %ss; %d record(s) pending", timeout, self.pending)
                return  # leave the store open for the writer still using it
        self.store.close()

    def __enter__(self) -> Auditor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # convenience reads -------------------------------------------------------------------
    def list_escalations(self, status: str | None = None) -> list[Escalation]:
        return self.store.list_escalations(status)

    def get_escalation(self, id: int) -> Escalation | None:
        return self.store.get_escalation(id)

    def resolve(self, id: int, approved: bool, resolver: str | None = None, note: str | None = None) -> Escalation:
        return self.store.resolve(id, approved, resolver, note)


AuditSink = Auditor  # the name the issue uses


def attach_audit(
    guard: Guard,
    path: str | Path | None = None,
    durability: Durability = "background",
    store_content: bool = False,
    sink: SinkKind | None = None,
    **auditor_kw: Any,
) -> Auditor:
    """Open a store and attach an Auditor to ``guard``'s decision hooks; returns the Auditor.

    ``sink`` defaults to ``"jsonl"`` for ``*.jsonl`` paths and ``"sqlite"`` otherwise;
    ``path`` defaults to ``$GUARDRAILS_PLUGIN_AUDIT_DB`` or ``./guardrails_audit.db``."""
    store = open_store(path, sink=sink)
    auditor = Auditor(store, durability=durability, store_content=store_content, **auditor_kw)
    guard.hooks.append(auditor)
    return auditor


def auditor_from_config(guard: Guard, settings: dict[str, Any]) -> Auditor:
    """``GuardConfig.audit`` (path, durability, store_content, sink, queue_size, batch_size)."""
    allowed = {"path", "durability", "store_content", "sink", "queue_size", "batch_size", "batch_window_s",
               "retries"}
    unknown = set(settings) - allowed
    if unknown:
        raise GuardConfigError(f"unknown audit setting(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return attach_audit(guard, **settings)


__all__ = [
    "AuditError",
    "AuditRecord",
    "AuditSink",
    "AuditStore",
    "AuditWriteError",
    "Auditor",
    "Escalation",
    "EscalationAlreadyResolved",
    "EscalationNotFound",
    "JsonlAuditStore",
    "SQLiteAuditStore",
    "attach_audit",
    "auditor_from_config",
    "content_sha256",
    "default_path",
    "open_store",
]
