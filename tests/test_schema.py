"""The Alembic migrations build exactly the schema the modules' table definitions describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from sharedcare.schema import metadata
from sharedcare.storage.engine import make_engine


def test_migrated_database_matches_the_table_definitions(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    assert diff == []
