"""The PostgreSQL pool pings a connection only when it sat idle, and survives dead connections."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from sharedcare.storage import engine as engine_module
from sharedcare.storage.engine import make_engine


@pytest.fixture
def pg_url(db_url: str) -> str:
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL connection behaviour (SQLite has no server connections, pings or plans)")
    return db_url


def test_a_connection_returned_a_moment_ago_is_not_pinged(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(pg_url, pool_size=1, max_overflow=0)
    pings: list[object] = []
    real = engine.dialect.do_ping
    monkeypatch.setattr(engine.dialect, "do_ping", lambda c: pings.append(c) or real(c))
    try:
        for _ in range(5):
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar_one() == 1
        assert pings == []  # the same connection, back in the pool within the window
        monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_SECONDS", 0.0)
        time.sleep(0.01)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert len(pings) == 1  # idle longer than the window: checked before use
    finally:
        engine.dispose()


def test_a_dead_pooled_connection_is_replaced_not_reported(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(pg_url, pool_size=1, max_overflow=0)
    admin = make_engine(pg_url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with admin.connect() as conn:  # the server drops the idle pooled connection
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
            conn.commit()
        monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_SECONDS", 0.0)
        time.sleep(0.05)
        with engine.connect() as conn:  # no error: the dead one is discarded, a new one made
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
    finally:
        engine.dispose()
        admin.dispose()


def test_searches_are_planned_with_their_values_and_reads_by_id_stay_prepared(pg_url: str) -> None:
    from sharedcare.fhir.service import FhirService
    from support import truncate

    engine = make_engine(pg_url, pool_size=1, max_overflow=0)
    truncate(engine)
    svc = FhirService(engine)
    try:
        svc.update("Patient", "p1", {"resourceType": "Patient", "id": "p1", "name": [{"family": "Weber"}]})
        query = svc.parse_search("Patient", [("family", "web")], strict=True)
        # psycopg prepares a statement on its fifth execution and keeps it past commits (as in
        # the audited API, whose reads are write transactions); a rollback would discard it
        for _ in range(8):
            with svc.transaction() as conn:
                assert len(svc.search_in(conn, query).matches) == 1
                svc.read_in(conn, "Patient", "p1")
        with engine.connect() as conn:  # the pool's only connection: the one that ran them
            prepared = list(conn.execute(text("SELECT statement FROM pg_prepared_statements")).scalars())
        assert not any("idx_string" in s for s in prepared)  # the search: never a generic plan
        assert any(s.lstrip().startswith("SELECT") and "resource" in s for s in prepared)  # the read
    finally:
        engine.dispose()


def test_a_long_statement_is_converted_for_the_driver_once(pg_url: str) -> None:
    """psycopg keeps the conversion of statements up to 4 KB only; a professional's search is
    longer. After the first execution, the same long statement is taken from the cache."""
    import psycopg._queries as queries

    engine = make_engine(pg_url)
    padding = " AND ".join(f":v{i} = :v{i}" for i in range(10))
    sql = text(f"SELECT 1 WHERE {padding} /* {'x' * 5000} */")
    values = {f"v{i}": i for i in range(10)}
    assert len(str(sql)) > 5000
    try:
        with engine.connect() as conn:
            conn.execute(sql, values).scalar()
            before = queries._query2pg.cache_info()
            assert conn.execute(sql, values).scalar() == 1
            after = queries._query2pg.cache_info()
    finally:
        engine.dispose()
    assert after.hits == before.hits + 1 and after.misses == before.misses
