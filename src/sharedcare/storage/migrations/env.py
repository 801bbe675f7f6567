"""Alembic environment: runs migrations on the connection handed over by ``storage.migrate``."""

from __future__ import annotations

from alembic import context

from sharedcare.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only when alembic's own CLI is used
    from sharedcare.settings import get_settings
    from sharedcare.storage.engine import make_engine

    engine = make_engine(get_settings().effective_database_url)
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
