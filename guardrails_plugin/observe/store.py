"""The ``AuditStore`` protocol: what the auditor writes to and what reviewers (CLI, review page,
webhooks, Python) read from. Implementations: ``SqlAuditStore`` (SQLite or PostgreSQL) and
``JsonlAuditStore``. All are thread-safe, and several processes may share one store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .records import AuditRecord, Escalation, PurgeResult


@runtime_checkable
class AuditStore(Protocol):
    #: where the store lives, safe to print (a URL's password is masked)
    location: str

    def write(self, records: Sequence[AuditRecord], *, durable: bool = False) -> None:
        """Append records atomically; ESCALATE records also enqueue an escalation.
        ``durable=True``: on stable storage when this returns. Raises AuditUnavailable when the
        store cannot be reached (worth retrying) and AuditError when it rejects the write."""
        ...

    def records(
        self, *, request_id: str | None = None, action: str | None = None, limit: int | None = None
    ) -> list[AuditRecord]: ...

    def list_escalations(self, status: str | None = None) -> list[Escalation]: ...

    def get_escalation(self, id: int) -> Escalation | None: ...

    def resolve(
        self, id: int, approved: bool, resolver: str | None = None, note: str | None = None
    ) -> Escalation: ...

    def purge(
        self,
        *,
        older_than_days: float | None = None,
        content_older_than_days: float | None = None,
        now: float | None = None,
    ) -> PurgeResult: ...

    def close(self) -> None: ...


__all__ = ["AuditStore"]
