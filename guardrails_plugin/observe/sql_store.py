"""The audit store on SQL: one code path (SQLAlchemy Core) for SQLite and PostgreSQL.

Every write is one transaction: the decisions of a batch and the escalations they raise commit
together or not at all. Inserts skip a ``record_id`` already present, so a batch retried after an
ambiguous commit (the connection died while COMMIT was in flight) is never written twice.
Reviews are appended: ``resolve()`` inserts the escalation's one review row, and the database's
unique constraint makes a second resolution fail, whichever process tries it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from .migrate import ensure_schema
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
from .schema import decisions, escalations, reviews
from .sql_engine import begin_write, is_postgres, make_engine, translate

_DECISION_COLS = [c.name for c in decisions.columns if c.name != "seq"]
_ESC_COLS = [c.name for c in escalations.columns]
_CHUNK = 500  # rows per statement / transaction in purges


class SqlAuditStore:
    """Audit records and the escalation review queue in a SQL database (see module docstring).

    ``url``: a SQLAlchemy URL (``sqlite:///path``, ``postgresql+psycopg://...``); ``open_store``
    builds it from what users write. ``create=False`` refuses to create a store that is not
    there; ``migrate=False`` refuses to upgrade an old schema. Thread-safe; one per process."""

    def __init__(
        self,
        url: str | sa.URL,
        *,
        create: bool = True,
        migrate: bool = True,
        pool_size: int = 5,
        connect_timeout_s: float = 10.0,
        busy_timeout_s: float = 30.0,
    ):
        self.url = sa.make_url(url)
        #: where the store lives, safe to print (no password)
        self.location = self.url.render_as_string(hide_password=True)
        self.path: Path | None = None
        if self.url.get_backend_name() == "sqlite":
            self.path = Path(self.url.database or "")
            self.location = str(self.path)
            if not create and not self.path.exists():
                raise AuditError(f"no audit store at {self.path}")
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
        self._engine = make_engine(self.url, pool_size=pool_size, connect_timeout_s=connect_timeout_s,
                                   busy_timeout_s=busy_timeout_s)
        self._insert = postgresql.insert if is_postgres(self._engine) else sqlite.insert
        try:
            self.schema = ensure_schema(self._engine, location=self.location, create=create, migrate=migrate)
        except BaseException:
            self._engine.dispose()
            raise

    @property
    def engine(self) -> sa.Engine:
        return self._engine

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    def _fail(self, exc: BaseException, what: str) -> AuditError:
        return translate(exc, f"audit {what} on {self.location} failed")

    # -- writes -------------------------------------------------------------------------------
    def write(self, records: Sequence[AuditRecord], *, durable: bool = False) -> None:
        """Append ``records`` in one transaction; ESCALATE records also enqueue an escalation.
        ``durable=True``: on stable storage when this returns."""
        if not records:
            return
        rows = [self._decision_row(r) for r in records]
        escs = [self._escalation_row(r) for r in records if r.escalates]
        try:
            with self._engine.connect() as conn, begin_write(conn, durable=durable):
                conn.execute(self._insert(decisions).on_conflict_do_nothing(index_elements=["record_id"]), rows)
                if escs:
                    conn.execute(
                        self._insert(escalations).on_conflict_do_nothing(index_elements=["record_id"]), escs)
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(exc, "write") from exc

    @staticmethod
    def _decision_row(r: AuditRecord) -> dict[str, Any]:
        return {c: getattr(r, c) for c in _DECISION_COLS}  # shallow: asdict() deep-copies

    @staticmethod
    def _escalation_row(r: AuditRecord) -> dict[str, Any]:
        e = Escalation.from_record(0, r)
        return {c: getattr(e, c) for c in _ESC_COLS if c != "id"}

    # -- reads --------------------------------------------------------------------------------
    def records(
        self,
        *,
        request_id: str | None = None,
        action: str | None = None,
        limit: int | None = None,
        since: float | None = None,
    ) -> list[AuditRecord]:
        """Audit records, oldest first, filtered by request id / action / time (``since``)."""
        q = sa.select(*(decisions.c[c] for c in _DECISION_COLS)).order_by(decisions.c.seq)
        if request_id is not None:
            q = q.where(decisions.c.request_id == request_id)
        if action is not None:
            q = q.where(decisions.c.action == str(action))
        if since is not None:
            q = q.where(decisions.c.time >= since)
        if limit is not None:
            q = q.limit(int(limit))
        rows = self._read(q, "read")
        return [AuditRecord(**{**r, "notes": r["notes"] or []}) for r in rows]

    def count(self) -> int:
        q = sa.select(sa.func.count().label("n")).select_from(decisions)
        return int(self._read(q, "count")[0]["n"])

    def _read(self, q: sa.Select[Any], what: str) -> list[dict[str, Any]]:
        try:
            with self._engine.connect() as conn:
                return [dict(r._mapping) for r in conn.execute(q)]
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(exc, what) from exc

    def _escalation_query(self) -> sa.Select[Any]:
        return sa.select(
            *(escalations.c[c] for c in _ESC_COLS),
            reviews.c.status, reviews.c.resolver, reviews.c.note, reviews.c.time.label("resolved_at"),
        ).select_from(escalations.outerjoin(reviews, reviews.c.escalation_id == escalations.c.id))

    @staticmethod
    def _escalation(row: dict[str, Any]) -> Escalation:
        row["status"] = row["status"] or "pending"
        for key, empty in (("guards", []), ("verdicts", []), ("metadata", {}), ("hold", False)):
            if row[key] is None:  # escalations migrated without their decision
                row[key] = empty
        return Escalation(**row)

    def list_escalations(
        self, status: str | None = None, *, limit: int | None = None, offset: int = 0
    ) -> list[Escalation]:
        """Escalations by id (oldest first); ``status`` pending / approved / rejected or None."""
        check_status(status)
        q = self._escalation_query().order_by(escalations.c.id)
        if status == "pending":
            q = q.where(reviews.c.id.is_(None))
        elif status is not None:
            q = q.where(reviews.c.status == status)
        if limit is not None:
            q = q.limit(int(limit))
        if offset:
            q = q.offset(int(offset))
        return [self._escalation(r) for r in self._read(q, "read")]

    def get_escalation(self, id: int) -> Escalation | None:
        rows = self._read(self._escalation_query().where(escalations.c.id == int(id)), "read")
        return self._escalation(rows[0]) if rows else None

    def resolve(
        self, id: int, approved: bool, resolver: str | None = None, note: str | None = None
    ) -> Escalation:
        """Append the review of escalation ``id``. Final: EscalationAlreadyResolved if any process
        resolved it before; EscalationNotFound if there is no such escalation."""
        status = "approved" if approved else "rejected"
        try:
            with self._engine.connect() as conn, begin_write(conn, durable=True):
                found = conn.execute(sa.select(escalations.c.id).where(escalations.c.id == int(id))).first()
                if found is None:
                    raise EscalationNotFound(id)
                conn.execute(reviews.insert().values(
                    escalation_id=int(id), status=status, resolver=resolver, note=note, time=time.time()))
        except sa.exc.IntegrityError:
            prior = self.get_escalation(id)
            if prior is None:  # purged between our check and insert
                raise EscalationNotFound(id) from None
            raise EscalationAlreadyResolved(
                f"escalation {id} was already {prior.status} by {prior.resolver or 'unknown'}"
            ) from None
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(exc, "resolve") from exc
        esc = self.get_escalation(id)
        assert esc is not None
        return esc

    # -- retention ----------------------------------------------------------------------------
    def purge(
        self,
        *,
        older_than_days: float | None = None,
        content_older_than_days: float | None = None,
        now: float | None = None,
    ) -> PurgeResult:
        """Delete records older than ``older_than_days`` (and resolved escalations with their
        review; pending ones stay until reviewed), and erase the stored text of records and
        escalations older than ``content_older_than_days``. Hashes stay, so a kept record still
        proves which text was judged."""
        res = PurgeResult()
        rec_cut, text_cut = cutoff(older_than_days, now), cutoff(content_older_than_days, now)
        try:
            if rec_cut is not None:
                self._purge_records(rec_cut, res)
            if text_cut is not None:
                res.content += self._purge_text(decisions, decisions.c.seq, text_cut)
                res.content += self._purge_text(escalations, escalations.c.id, text_cut)
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(exc, "purge") from exc
        return res

    def _purge_records(self, cut: float, res: PurgeResult) -> None:
        with self._engine.connect() as conn:
            with begin_write(conn, durable=True):
                res.records = conn.execute(sa.delete(decisions).where(decisions.c.time < cut)).rowcount
            while True:
                with begin_write(conn, durable=True):
                    ids = list(conn.execute(
                        sa.select(escalations.c.id).join(reviews, reviews.c.escalation_id == escalations.c.id)
                        .where(escalations.c.time < cut).limit(_CHUNK)).scalars())
                    if not ids:
                        break
                    conn.execute(sa.delete(reviews).where(reviews.c.escalation_id.in_(ids)))
                    res.escalations += conn.execute(
                        sa.delete(escalations).where(escalations.c.id.in_(ids))).rowcount
            conn.execution_options(guardrails_write=False)  # the count below only reads
            res.kept_pending = int(conn.execute(
                sa.select(sa.func.count()).select_from(
                    escalations.outerjoin(reviews, reviews.c.escalation_id == escalations.c.id))
                .where(escalations.c.time < cut, reviews.c.id.is_(None))).scalar() or 0)
            conn.rollback()

    def _purge_text(self, table: sa.Table, key: sa.Column[Any], cut: float) -> int:
        # the guards' raw output and rationale quote the text: they go with it
        upd = (sa.update(table).where(key == sa.bindparam("k"))
               .values(content=None, verdicts=sa.bindparam("v")))
        done = 0
        with self._engine.connect() as conn:
            while True:
                with begin_write(conn, durable=True):
                    rows = conn.execute(sa.select(key, table.c.verdicts)
                                        .where(table.c.time < cut, table.c.content.is_not(None))
                                        .limit(_CHUNK)).all()
                    if not rows:
                        return done
                    conn.execute(upd, [{"k": k, "v": strip_content(v or [])} for k, v in rows])
                    done += len(rows)

    # -- maintenance --------------------------------------------------------------------------
    def integrity_check(self) -> str:
        """``"ok"`` or what is wrong (SQLite's integrity_check; PostgreSQL: a round trip)."""
        try:
            with self._engine.connect() as conn:
                if self.dialect == "sqlite":
                    return str(conn.exec_driver_sql("PRAGMA integrity_check").scalar())
                conn.exec_driver_sql("SELECT 1")
                return "ok"
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(exc, "check") from exc

    def after_fork(self) -> None:
        """In a forked child: drop the parent's pooled connections (never shared)."""
        self._engine.dispose(close=False)

    def close(self) -> None:
        self._engine.dispose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"


class SQLiteAuditStore(SqlAuditStore):
    """The SQL store on a SQLite file (WAL): ``SQLiteAuditStore("audit.db")``."""

    def __init__(self, path: str | Path | None = None, *, create: bool = True, **kw: Any):
        from .location import default_path

        p = Path(path or default_path())
        super().__init__(sa.URL.create("sqlite", database=str(p)), create=create, **kw)


class PostgresAuditStore(SqlAuditStore):
    """The SQL store on PostgreSQL: ``PostgresAuditStore("postgresql://user@host:5432/db")``."""

    def __init__(self, url: str | sa.URL, **kw: Any):
        from .location import parse_location

        loc = parse_location(url if isinstance(url, str) else url.render_as_string(hide_password=False))
        if loc.kind != "postgresql":
            raise AuditError(f"not a PostgreSQL URL: {loc.display}")
        super().__init__(loc.target, **kw)


__all__ = ["PostgresAuditStore", "SQLiteAuditStore", "SqlAuditStore"]
