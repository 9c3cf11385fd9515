"""Schema versions of the SQL audit store (Alembic, run in-process).

``ensure_schema`` brings a database to the schema this code needs, once, however many processes
open it at the same moment: the check and the upgrade run in one write transaction that first
takes a lock (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-scoped advisory lock), and
PostgreSQL and SQLite both roll DDL back with the transaction, so a failed upgrade leaves the
previous schema intact.

A SQLite store written before migrations existed (schema "v1": tables, no version table) is
stamped as revision 0001 and upgraded from there, keeping its data. The version table has its
own name (``guardrails_audit_version``) so a database shared with another Alembic user is safe.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from .records import AuditError
from .schema import HEAD
from .sql_engine import begin_write, is_postgres, translate

VERSION_TABLE = "guardrails_audit_version"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
KNOWN_REVISIONS = ("0001", "0002")
V1 = "v1"  #: an unversioned store made before migrations existed
_PG_LOCK_KEY = 0x67726C5F61756469  # "grl_audi": any fixed 64-bit key shared by all processes
_V1_DECISION_COLUMNS = {"seq", "request_id", "time", "action", "verdicts", "content_sha256"}


def revision(conn: sa.Connection) -> str | None:
    """The store's schema revision: an Alembic revision id, ``"v1"``, or None (no store here)."""
    insp = sa.inspect(conn)
    if insp.has_table(VERSION_TABLE):
        return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    if not insp.has_table("decisions"):
        return None
    decision_cols = {c["name"] for c in insp.get_columns("decisions")}
    esc_cols = {c["name"] for c in insp.get_columns("escalations")} if insp.has_table("escalations") else set()
    if _V1_DECISION_COLUMNS <= decision_cols and "status" in esc_cols:
        return V1
    raise AuditError(
        "this database has a 'decisions' table that is not a guardrails-plugin audit store; "
        "give the audit store its own database (or PostgreSQL schema)"
    )


def _alembic_config(conn: sa.Connection) -> object:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = conn
    return cfg


def _upgrade_locked(conn: sa.Connection, rev: str | None) -> None:
    from alembic import command

    cfg = _alembic_config(conn)
    if rev == V1:
        command.stamp(cfg, "0001")  # type: ignore[arg-type]
    command.upgrade(cfg, "head")  # type: ignore[arg-type]


def ensure_schema(engine: sa.Engine, *, location: str, create: bool = True, migrate: bool = True) -> str:
    """Check (and unless told not to, create or upgrade) the store's schema; returns the revision.

    Raises AuditError: no store there and ``create=False``; a schema newer than this code knows; an
    old schema with ``migrate=False``; AuditUnavailable when the database cannot be reached."""
    try:
        with engine.connect() as conn:
            rev = revision(conn)
            conn.rollback()
        if rev == HEAD:  # the common case: one cheap read, no lock, no Alembic import
            return rev
        _check_known(rev, location)
        if rev is None and not create:
            raise AuditError(f"no audit store at {location}")
        if not migrate:
            raise AuditError(
                f"audit store {location} has schema {rev}; this version of guardrails-plugin needs "
                f"{HEAD}: run `guardrails-plugin escalations upgrade --db ...`"
            )
        with engine.connect() as conn:
            with begin_write(conn, durable=True):
                if is_postgres(conn):
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
                rev = revision(conn)  # again, under the lock: another process may have done it
                _check_known(rev, location)
                if rev != HEAD:
                    _upgrade_locked(conn, rev)
        return HEAD
    except AuditError:
        raise
    except sa.exc.SQLAlchemyError as exc:
        raise translate(exc, f"cannot open audit store {location}") from exc


def _check_known(rev: str | None, location: str) -> None:
    if rev is not None and rev != V1 and rev not in KNOWN_REVISIONS:
        raise AuditError(
            f"audit store {location} has schema revision {rev!r}, newer than this version of "
            f"guardrails-plugin knows (newest {HEAD}): upgrade guardrails-plugin"
        )


__all__ = ["KNOWN_REVISIONS", "VERSION_TABLE", "ensure_schema", "revision"]
