"""Database engine creation for SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, any_, bindparam, create_engine, event, exc
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import make_url

PING_AFTER_IDLE_SECONDS = 0.5
"""A pooled PostgreSQL connection idle longer than this is pinged before use (see ``_ping_idle``)."""
_RETURNED = "sharedcare_returned"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine with the settings each backend needs for concurrent, durable use."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets readers run beside the single writer; the server is multi-threaded.
            # Python's sqlite3 opens transactions lazily; take control so BEGIN IMMEDIATE
            # serialises writers up front instead of failing with "database is locked" mid-way.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Writers (engines made by ``writer()``) take the write lock at BEGIN; readers
            # start deferred transactions and run concurrently under WAL.
            immediate = conn.get_execution_options().get("sharedcare_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    kwargs.setdefault("pool_size", 20)
    kwargs.setdefault("max_overflow", 20)
    _cache_long_statements()
    engine = create_engine(url, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        _ping_idle(engine)
    return engine


LONGEST_CACHED_STATEMENT = 64 * 1024
"""Statements whose conversion psycopg keeps (bytes of SQL; its own limit is 4 KB)."""


def _cache_long_statements() -> None:
    """psycopg turns a statement's ``%(name)s`` placeholders into PostgreSQL's ``$n`` at each
    execution and keeps the result (an LRU of 128 statements) only for statements of at most
    4 KB (``psycopg._queries.MAX_CACHED_STATEMENT_LENGTH``). A professional's search, with its
    access filter, is about 6 KB: splitting its text again at every request was a sixth of the
    extra time the filter cost in Python. The limit is raised for the platform's statements,
    whose shapes are few; the pinned psycopg (requirements.lock) has the constant, a version
    without it is left as it is."""
    import psycopg._queries as queries

    if getattr(queries, "MAX_CACHED_STATEMENT_LENGTH", LONGEST_CACHED_STATEMENT) < LONGEST_CACHED_STATEMENT:
        queries.MAX_CACHED_STATEMENT_LENGTH = LONGEST_CACHED_STATEMENT


def _ping_idle(engine: Engine) -> None:
    """Check a pooled connection before use only when it sat idle, as HikariCP does
    (``aliveBypassWindowMs``): SQLAlchemy's ``pool_pre_ping`` costs a round trip at every
    checkout, i.e. on every request, though a connection returned a moment ago is alive. A dead
    one (server restarted, connection cut) is discarded and the pool tries another."""

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_conn: Any, record: Any) -> None:
        record.info[_RETURNED] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get(_RETURNED)
        if returned is None or time.monotonic() - returned <= PING_AFTER_IDLE_SECONDS:
            return  # new (just connected) or returned a moment ago
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as err:  # any failure: this connection is unusable
            raise exc.DisconnectionError(f"pooled connection is dead: {err}") from err


def is_postgres(engine: Engine) -> bool:
    """True when the engine talks to PostgreSQL."""
    return engine.dialect.name == "postgresql"


def writer(engine: Engine) -> Engine:
    """The same engine, marked so that SQLite transactions take the write lock at BEGIN."""
    return engine.execution_options(sharedcare_write=True)


def refresh_statistics(engine: Engine) -> None:
    """Have PostgreSQL vacuum the store's tables and re-read their statistics after a bulk load.

    Autovacuum analyses a table only after enough changes *and* some delay; until then the planner
    plans searches on a freshly imported database with empty statistics, and picks sequential scans
    and nested loops that made one search 10-40 times slower in the load benchmark. The vacuum
    marks the loaded pages all-visible, as autovacuum later would: index-only scans (the access
    filter's record check) then need not visit the rows, and the first reads do not rewrite the
    pages to set their hint bits (10 s for a million documents). SQLite plans without statistics
    of this kind."""
    if not is_postgres(engine):
        return
    from sharedcare.storage.tables import INDEX_TABLES, resource, resource_compartment, resource_version

    tables = [resource, resource_version, resource_compartment, *INDEX_TABLES.values()]
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM (ANALYZE) " + ", ".join(t.name for t in tables))


@contextmanager
def planned_with_values(conn: Connection) -> Iterator[None]:
    """Run the statements inside unprepared, so PostgreSQL plans each with its actual values.

    psycopg prepares a statement on its fifth execution on a connection (and keeps it until a
    rollback: audited reads commit, so the API's statements do get prepared), and PostgreSQL
    then may keep a *generic* plan, one made without the parameters' values. That suits lookups
    by key, but a search's best plan depends on the values: for ``Observation?patient&code``
    the generic plan walks every Observation of the code (thousands) instead of the patient's
    few hundred, 4x slower on the mean and 8x at p90 in the load benchmark's data. Searches
    therefore pay their planning (a fraction of a millisecond) each time; reads by id and audit
    appends stay prepared."""
    with _prepare_threshold(conn, None):
        yield


@contextmanager
def planned_once(conn: Connection) -> Iterator[None]:
    """Prepare the statements inside at their first execution, also within
    ``planned_with_values``: for statements whose best plan does not depend on their values
    (those that fetch by keys, as the resources a page includes), PostgreSQL may then keep one
    generic plan instead of planning them at each execution. Their keys must be passed as one
    array (``any_of``), so that their text, and their prepared statement, stays the same."""
    with _prepare_threshold(conn, 0):
        yield


@contextmanager
def _prepare_threshold(conn: Connection, threshold: int | None) -> Iterator[None]:
    if conn.dialect.name != "postgresql":
        yield
        return
    raw: Any = conn.connection.dbapi_connection
    before = raw.prepare_threshold
    raw.prepare_threshold = threshold
    try:
        yield
    finally:
        raw.prepare_threshold = before


def any_of(column: ColumnElement[Any], values: Sequence[Any], dialect: str) -> ColumnElement[bool]:
    """``column`` is one of ``values``: on PostgreSQL ``= ANY`` one array parameter, so the text
    of the statement does not change with the number of values (``planned_once``)."""
    if dialect == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(list(values))
