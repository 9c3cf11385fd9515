"""The first audit schema (guardrails-plugin's SQLite store before migrations: user_version 1).

An existing store made by that version has these tables and no version table; it is stamped as
this revision and upgraded from here. On a new database this builds the same tables, so every
store walks the same path to the head.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "decisions",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("stage", sa.Text, nullable=False),
        sa.Column("guards", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("risk", sa.Float, nullable=False),
        sa.Column("categories", sa.Text, nullable=False),
        sa.Column("verdicts", sa.Text, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("guard_latency_ms", sa.Text, nullable=False),
        sa.Column("degraded", sa.Integer, nullable=False),
        sa.Column("failure", sa.Text),
        sa.Column("hold", sa.Integer, nullable=False),
        sa.Column("content_sha256", sa.Text, nullable=False),
        sa.Column("content", sa.Text),
        sa.Column("unguarded", sa.Text, nullable=False),
        sa.Column("metadata", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_decisions_request_id", "decisions", ["request_id"])
    op.create_index("ix_decisions_time", "decisions", ["time"])
    op.create_index("ix_decisions_action", "decisions", ["action"])
    op.create_table(
        "escalations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("stage", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("risk", sa.Float, nullable=False),
        sa.Column("categories", sa.Text, nullable=False),
        sa.Column("content_sha256", sa.Text, nullable=False),
        sa.Column("content", sa.Text),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("resolver", sa.Text),
        sa.Column("note", sa.Text),
        sa.Column("resolved_at", sa.Float),
        sa.CheckConstraint("status IN ('pending', 'approved', 'rejected')"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_escalations_status", "escalations", ["status", "id"])
    op.create_index("ix_escalations_request_id", "escalations", ["request_id"])


def downgrade() -> None:
    op.drop_table("escalations")
    op.drop_table("decisions")
