"""SQLAlchemy engines for the audit store: the only place where SQLite and PostgreSQL differ.

* SQLite: WAL journal (readers never wait for the writer; several processes on one host share a
  file), ``BEGIN IMMEDIATE`` for writes (the write lock is taken up front, so two writers queue on
  the busy timeout instead of failing on lock upgrade), ``synchronous=FULL`` for durable commits
  (the WAL is fsync'd before COMMIT returns) and ``NORMAL`` for background batches (survives a
  killed process, not a power cut).
* PostgreSQL: psycopg 3 behind SQLAlchemy's connection pool, ``pool_pre_ping`` so a connection
  broken by a server restart is replaced at checkout instead of failing a write. Every commit is
  synchronous (the server's default), background batches too: ``synchronous_commit=off`` would
  lose the last fraction of a second of "written" records when the server crashes, and a batch
  shares one WAL flush among its records anyway.
"""

from __future__ import annotations

import json
import os
import weakref
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc

from .records import AuditError, AuditUnavailable, dumps

#: execution options a write transaction sets before it begins (read by the SQLite begin hook)
WRITE = "guardrails_write"
DURABLE = "guardrails_durable"

_engines: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Pooled connections inherited over fork() are shared with the parent: a child must never use
    # them (PostgreSQL would interleave two processes' protocol on one socket). close=False leaves
    # them to the parent.
    for engine in list(_engines):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def make_engine(
    url: sa.URL,
    *,
    pool_size: int = 5,
    connect_timeout_s: float = 10.0,
    busy_timeout_s: float = 30.0,
) -> sa.Engine:
    common: dict[str, Any] = {"json_serializer": dumps, "json_deserializer": json.loads}
    if url.get_backend_name() == "sqlite":
        engine = sa.create_engine(
            url,
            connect_args={"timeout": busy_timeout_s, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=pool_size,
            **common,
        )
        _sqlite_events(engine)
    else:
        defaults = {"connect_timeout": max(2, round(connect_timeout_s)),
                    "application_name": "guardrails-plugin-audit"}
        engine = sa.create_engine(
            url,
            connect_args={k: v for k, v in defaults.items() if k not in url.query},  # the URL's win
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_timeout=connect_timeout_s,
            pool_pre_ping=True,
            **common,
        )
    _engines.add(engine)
    return engine


def _sqlite_events(engine: sa.Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, record: Any) -> None:
        # pysqlite's own transaction handling would BEGIN lazily (DEFERRED); we issue BEGIN ourselves
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            mode = cur.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise AuditError(f"could not enable WAL on the audit store (journal_mode={mode})")
            cur.execute("PRAGMA synchronous=FULL")
        finally:
            cur.close()
        record.info["synchronous"] = "FULL"

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        opts = conn.get_execution_options()
        if not opts.get(WRITE):
            conn.exec_driver_sql("BEGIN")  # readers: a WAL snapshot, no lock
            return
        want = "FULL" if opts.get(DURABLE, True) else "NORMAL"
        info = conn.connection.info
        if info.get("synchronous") != want:  # a pragma per change, not per commit
            conn.exec_driver_sql(f"PRAGMA synchronous={want}")
            info["synchronous"] = want
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def is_postgres(engine: sa.Engine | sa.Connection) -> bool:
    return engine.dialect.name == "postgresql"


def begin_write(conn: sa.Connection, *, durable: bool) -> sa.RootTransaction:
    """Begin a write transaction on ``conn`` with the durability asked for."""
    conn.execution_options(**{WRITE: True, DURABLE: durable})
    return conn.begin()


def translate(error: BaseException, what: str) -> AuditError:
    """An AuditError for a database error: AuditUnavailable when retrying may help (the server is
    unreachable, the connection broke, the database is locked or full), AuditError otherwise."""
    if isinstance(error, AuditError):
        return error
    transient = isinstance(error, (exc.OperationalError, exc.InterfaceError, exc.TimeoutError,
                                   exc.DisconnectionError, ConnectionError, TimeoutError))
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        transient = True
    msg = f"{what}: {_short(error)}"
    return AuditUnavailable(msg) if transient else AuditError(msg)


def _short(error: BaseException) -> str:
    # SQLAlchemy's messages carry the whole statement and a link; the first line says it
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error).strip()
    return text.splitlines()[0] if text else type(error).__name__
