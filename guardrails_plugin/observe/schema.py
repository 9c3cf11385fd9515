"""The audit store's tables as they are at the newest migration (SQLAlchemy Core), for SQLite and
PostgreSQL alike. Migrations under ``migrations/versions`` build and evolve these; this module is
what the store reads and writes with, and must match the head revision.

* ``decisions``: one row per Decision (append-only; a content purge may only null ``content`` and
  drop the text-quoting verdict fields; a retention purge deletes old rows).
* ``escalations``: one row per ESCALATE, written in the same transaction as its decision.
* ``reviews``: the review decision of an escalation, appended by ``resolve()``. At most one per
  escalation (a unique constraint: a second resolve, from any process, is rejected).

JSON columns use the SQL ``JSON`` type (SQLite stores text). Not ``JSONB``: PostgreSQL's JSONB
refuses the ``\\u0000`` escape that a NUL in judged text becomes, and PostgreSQL ``TEXT`` refuses
NUL outright, which is why ``content`` is a JSON string rather than text.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

#: the Alembic revision these tables correspond to
HEAD = "0002"


class SafeText(TypeDecorator[str]):
    """Text that PostgreSQL will take: NUL (which it refuses in text) becomes U+FFFD. Used for
    short descriptive fields (reason, note, ...); judged text goes into JSON and is kept exactly."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: sa.Dialect) -> str | None:
        if value is not None and "\x00" in value:
            return value.replace("\x00", "\ufffd")
        return value


def _json() -> sa.JSON:
    return sa.JSON(none_as_null=True)


metadata = sa.MetaData()

decisions = sa.Table(
    "decisions",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", SafeText, nullable=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("stage", SafeText, nullable=False),
    sa.Column("guards", _json(), nullable=False),
    sa.Column("action", SafeText, nullable=False),
    sa.Column("reason", SafeText, nullable=False),
    sa.Column("risk", sa.Float, nullable=False),
    sa.Column("categories", _json(), nullable=False),
    sa.Column("verdicts", _json(), nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("guard_latency_ms", _json(), nullable=False),
    sa.Column("degraded", sa.Boolean, nullable=False),
    sa.Column("failure", SafeText),
    sa.Column("hold", sa.Boolean, nullable=False),
    sa.Column("content_sha256", SafeText, nullable=False),
    sa.Column("content", _json()),
    sa.Column("unguarded", _json(), nullable=False),
    sa.Column("metadata", _json(), nullable=False),
    sa.Column("detail", SafeText),
    sa.Column("notes", _json()),
    sa.Column("record_id", SafeText),  # NULL for records written before schema 0002
    sa.Index("ix_decisions_request_id", "request_id"),
    sa.Index("ux_decisions_record_id", "record_id", unique=True),
    sa.Index("ix_decisions_time", "time"),
    sa.Index("ix_decisions_action", "action"),
    sqlite_autoincrement=True,  # ids are never reused, even after a purge
)

escalations = sa.Table(
    "escalations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", SafeText, nullable=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("stage", SafeText, nullable=False),
    sa.Column("reason", SafeText, nullable=False),
    sa.Column("risk", sa.Float, nullable=False),
    sa.Column("categories", _json(), nullable=False),
    sa.Column("content_sha256", SafeText, nullable=False),
    sa.Column("content", _json()),
    sa.Column("guards", _json()),
    sa.Column("verdicts", _json()),
    sa.Column("metadata", _json()),
    sa.Column("hold", sa.Boolean),
    sa.Column("record_id", SafeText),
    sa.Index("ix_escalations_request_id", "request_id"),
    sa.Index("ux_escalations_record_id", "record_id", unique=True),
    sa.Index("ix_escalations_time", "time"),
    sqlite_autoincrement=True,
)

reviews = sa.Table(
    "reviews",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("escalation_id", sa.Integer, sa.ForeignKey("escalations.id"), nullable=False),
    sa.Column("status", SafeText, nullable=False),
    sa.Column("resolver", SafeText),
    sa.Column("note", SafeText),
    sa.Column("time", sa.Float, nullable=False),
    sa.UniqueConstraint("escalation_id", name="uq_reviews_escalation_id"),
    sa.CheckConstraint("status IN ('approved', 'rejected')", name="ck_reviews_status"),
    sqlite_autoincrement=True,
)

__all__ = ["HEAD", "SafeText", "decisions", "escalations", "metadata", "reviews"]
