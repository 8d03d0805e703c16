"""Alembic environment: siar runs migrations itself (`bot.store.Store.migrate`) on its connection."""

from __future__ import annotations

from alembic import context

from bot.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("siar runs its migrations itself on start; no alembic.ini is needed")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
