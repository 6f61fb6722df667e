"""Alembic environment for the registry schema: always online, on the connection ``registry_db.migrate`` passes."""

from __future__ import annotations

from alembic import context

from fhiradapter.shell.registry.registry_db import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
