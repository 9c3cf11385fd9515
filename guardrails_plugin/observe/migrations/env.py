"""Alembic environment of the audit store. Run through ``guardrails_plugin.observe.migrate``,
which hands over a connection whose transaction already holds the migration lock."""

from alembic import context

from guardrails_plugin.observe.migrate import VERSION_TABLE

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - misuse
    raise RuntimeError("audit migrations run through guardrails_plugin.observe.migrate.upgrade()")

context.configure(connection=connection, version_table=VERSION_TABLE)
with context.begin_transaction():  # a no-op: the caller's transaction is the one that commits
    context.run_migrations()
