"""Shared fixtures: every database test runs on SQLite and on PostgreSQL.

PostgreSQL is taken from ``SHAREDCARE_TEST_POSTGRES_URL`` (default: the local server with trust
auth). A fresh database is created for the session and dropped after it. When the server cannot
be reached the PostgreSQL half is skipped with the reason, unless ``SHAREDCARE_REQUIRE_POSTGRES=1``
(set by CI), in which case it fails.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from sharedcare.app import create_app
from sharedcare.settings import Settings
from sharedcare.storage.engine import make_engine
from sharedcare.storage.migrate import upgrade
from support import DEMO_SECRET, ensure_demo, signed_in_client, system_token, truncate

PG_ADMIN_URL = os.environ.get(
    "SHAREDCARE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REQUIRE_PG = os.environ.get("SHAREDCARE_REQUIRE_POSTGRES") == "1"
# a test process builds hundreds of apps, whose reference cycles a freeze would keep for the
# whole run (``app._lifespan``): off, whatever the environment says
os.environ["SHAREDCARE_GC_FREEZE"] = "false"


def _postgres_engine() -> Iterator[Engine]:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"sharedcare_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required but unreachable at {PG_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {type(exc).__name__}")
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url, pool_size=5, max_overflow=5)
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated, empty database of each kind; yields its URL."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("db") / "sharedcare.db"
        url = f"sqlite:///{path}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
        return
    for engine in _postgres_engine():
        upgrade(engine)
        yield engine.url.render_as_string(hide_password=False)


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=db_url, data_dir=tmp_path, demo_data=False, demo_client_secret=DEMO_SECRET)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """An HTTP client on a fresh app over an emptied database, signed in as the trusted demo
    system client (the FHIR core tests run as the agency's own unrestricted client)."""
    app = create_app(settings)
    with signed_in_client(app, settings) as c:
        yield c


@pytest.fixture
def server_url(settings: Settings) -> Iterator[str]:
    """Base URL of a uvicorn server running the app in a thread on a free loopback port."""
    app = create_app(settings)
    truncate(app.state.engine)
    ensure_demo(app.state.engine, settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped during start-up"
        assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/fhir"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        app.state.engine.dispose()
    assert not thread.is_alive(), "uvicorn did not shut down"


@pytest.fixture
def server_token(server_url: str) -> str:
    """A trusted system token from the live server's token endpoint."""
    with httpx.Client() as http:
        return system_token(http, server_url.removesuffix("/fhir") + "/auth/token")
