"""Observability: the audit trail and escalation review queue (metrics live in ``metrics.py``).

Store API (what the review CLI, the review page, webhooks and Python callers use)::

    from guardrails_plugin.audit import open_store
    store = open_store("postgresql://user@host:5432/db")   # or "audit.db", "sqlite:///audit.db", "audit.jsonl"
    store.records(request_id=None, action=None, limit=None)  -> list[AuditRecord], oldest first
                                                                (SQL stores also take since=<epoch s>)
    store.list_escalations(status=None, limit=None, offset=0) -> list[Escalation] by id;
                                                                status pending|approved|rejected|None
    store.get_escalation(id)                                 -> Escalation | None
    store.resolve(id, approved, resolver=None, note=None)    -> Escalation  (appends the review; final:
                                                                EscalationAlreadyResolved on a second call,
                                                                from any process; EscalationNotFound)
    store.purge(older_than_days=None, content_older_than_days=None) -> PurgeResult
    store.location                                           -> str, safe to print (password masked)
    store.close()

An ``Escalation`` carries: id, request_id, time / created_at (epoch s), stage, reason, risk,
categories, content_sha256, content (only with ``store_content``), guards, verdicts (each guard's
risk, label, categories, failure, latency; its raw_output and rationale only with ``store_content``),
metadata (the request's context, e.g. user, model, call id), hold, record_id, and its review:
status, resolver, note, resolved_at.

Writers: ``Auditor`` (the decision hook; strict or background durability), attached by
``GuardConfig(audit=...)`` or ``attach_audit(guard, path)``. Stores: ``SqlAuditStore`` (SQLite or
PostgreSQL through SQLAlchemy Core, schema versions through Alembic) and ``JsonlAuditStore``.
"""

from typing import Any

from .attach import attach_audit, auditor_from_config, open_store
from .auditor import Auditor
from .location import DEFAULT_PATH_ENV, DEFAULT_SQLITE_PATH, default_path, parse_location
from .records import (
    QUERY_KEY,
    STATUSES,
    AuditError,
    AuditRecord,
    AuditUnavailable,
    AuditWriteError,
    Durability,
    Escalation,
    EscalationAlreadyResolved,
    EscalationNotFound,
    PurgeResult,
    content_sha256,
)
from .store import AuditStore

# The store classes import SQLAlchemy (~0.1 s): loaded on first use, not with every Guard.
_LAZY = {"SqlAuditStore": "sql_store", "SQLiteAuditStore": "sql_store", "PostgresAuditStore": "sql_store",
         "JsonlAuditStore": "jsonl_store"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_PATH_ENV",
    "DEFAULT_SQLITE_PATH",
    "STATUSES",
    "AuditError",
    "AuditRecord",
    "QUERY_KEY",
    "AuditStore",
    "AuditUnavailable",
    "AuditWriteError",
    "Auditor",
    "Durability",
    "Escalation",
    "EscalationAlreadyResolved",
    "EscalationNotFound",
    "JsonlAuditStore",
    "PostgresAuditStore",
    "PurgeResult",
    "SQLiteAuditStore",
    "SqlAuditStore",
    "attach_audit",
    "auditor_from_config",
    "content_sha256",
    "default_path",
    "open_store",
    "parse_location",
]
