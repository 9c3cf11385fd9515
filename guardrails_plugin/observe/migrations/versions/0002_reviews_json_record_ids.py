"""Review decisions are appended (a ``reviews`` table) instead of overwriting the escalation;
escalations carry their decision's context; JSON columns get the JSON type; judged text is a
JSON string (PostgreSQL text cannot hold NUL); every record gets a unique ``record_id``.

Data is kept: a resolved escalation's status/resolver/note/resolved_at become its review row; an
escalation's guards/verdicts/metadata/hold are copied from its decision.

Revision ID: 0002
Revises: 0001
"""

import warnings

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_DECISION_JSON = ("guards", "categories", "verdicts", "guard_latency_ms", "unguarded", "metadata")


def _text_to_json(table: str, columns: tuple[str, ...], postgres: bool) -> None:
    if postgres:  # SQLite keeps the text as it is: SQLAlchemy's JSON type reads it back
        for col in columns:
            op.alter_column(table, col, type_=sa.JSON, postgresql_using=f'"{col}"::json')


def _content_to_json(table: str, postgres: bool) -> None:
    if postgres:
        op.alter_column(table, "content", type_=sa.JSON, postgresql_using="to_json(content)")
    else:
        op.execute(f"UPDATE {table} SET content = json_quote(content) WHERE content IS NOT NULL")


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"

    # -- decisions ---------------------------------------------------------------------------
    _text_to_json("decisions", _DECISION_JSON, postgres)
    if postgres:
        for col in ("degraded", "hold"):
            op.alter_column("decisions", col, type_=sa.Boolean, postgresql_using=f'"{col}" <> 0')
    _content_to_json("decisions", postgres)
    op.add_column("decisions", sa.Column("detail", sa.Text))
    op.add_column("decisions", sa.Column("notes", sa.JSON))
    op.add_column("decisions", sa.Column("record_id", sa.Text))
    op.create_index("ux_decisions_record_id", "decisions", ["record_id"], unique=True)

    # -- reviews: one appended row per resolution ----------------------------------------------
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("escalation_id", sa.Integer, sa.ForeignKey("escalations.id"), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("resolver", sa.Text),
        sa.Column("note", sa.Text),
        sa.Column("time", sa.Float, nullable=False),
        sa.UniqueConstraint("escalation_id", name="uq_reviews_escalation_id"),
        sa.CheckConstraint("status IN ('approved', 'rejected')", name="ck_reviews_status"),
        sqlite_autoincrement=True,
    )
    op.execute(
        "INSERT INTO reviews (escalation_id, status, resolver, note, time)"
        " SELECT id, status, resolver, note, COALESCE(resolved_at, time) FROM escalations"
        " WHERE status <> 'pending' ORDER BY id"
    )

    # -- escalations: the decision's context, no mutable review columns ---------------------------
    _text_to_json("escalations", ("categories",), postgres)
    _content_to_json("escalations", postgres)
    op.add_column("escalations", sa.Column("guards", sa.JSON))
    op.add_column("escalations", sa.Column("verdicts", sa.JSON))
    op.add_column("escalations", sa.Column("metadata", sa.JSON))
    op.add_column("escalations", sa.Column("hold", sa.Boolean))
    op.add_column("escalations", sa.Column("record_id", sa.Text))
    first = ("(SELECT d.{col} FROM decisions d WHERE d.request_id = escalations.request_id"
             " AND d.action = 'escalate' ORDER BY d.seq LIMIT 1)")
    op.execute("UPDATE escalations SET " + ", ".join(
        f'"{col}" = ' + first.format(col=f'"{col}"') for col in ("guards", "verdicts", "metadata", "hold")))
    op.drop_index("ix_escalations_status", table_name="escalations")
    # SQLite cannot drop these columns in place (a CHECK names one): batch mode rebuilds the table,
    # leaving out that unnamed CHECK on status (Alembic warns about exactly that; it is the intent)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unnamed CHECK constraint")
        with op.batch_alter_table("escalations", table_kwargs={"sqlite_autoincrement": True}) as batch:
            for col in ("status", "resolver", "note", "resolved_at"):
                batch.drop_column(col)
    op.create_index("ix_escalations_time", "escalations", ["time"])
    op.create_index("ux_escalations_record_id", "escalations", ["record_id"], unique=True)
    if not postgres:
        op.execute("PRAGMA user_version = 2")  # the pre-migration code's own version marker


def downgrade() -> None:
    raise NotImplementedError("the audit trail only moves forward; restore a backup to go back")
