"""Audit trail and escalation review queue: the public import path.

The code lives in ``guardrails_plugin.observe`` (auditor, SQL store for SQLite and PostgreSQL,
JSONL store, schema migrations); see that package's docstring for the store API. This module
keeps ``from guardrails_plugin.audit import open_store`` (and the other names) working.
"""

from typing import Any

from . import observe as _observe
from .observe import (  # noqa: F401 - re-exported
    DEFAULT_PATH_ENV,
    DEFAULT_SQLITE_PATH,
    STATUSES,
    AuditError,
    Auditor,
    AuditRecord,
    AuditStore,
    AuditUnavailable,
    AuditWriteError,
    Durability,
    Escalation,
    EscalationAlreadyResolved,
    EscalationNotFound,
    PurgeResult,
    attach_audit,
    auditor_from_config,
    content_sha256,
    default_path,
    open_store,
    parse_location,
)


def __getattr__(name: str) -> Any:  # the store classes, loaded on first use (see observe)
    return getattr(_observe, name)


__all__ = list(_observe.__all__)
