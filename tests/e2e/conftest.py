"""Browser tests of the portal: Playwright driving Debian's chromium against a live uvicorn server.

Chromium is ``/usr/bin/chromium`` (``apt-get install -y chromium``) or ``SHAREDCARE_CHROMIUM``.
When it (or Playwright) is missing the tests are skipped with the reason, unless
``SHAREDCARE_REQUIRE_BROWSER=1`` (set by CI), in which case they fail.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "portal"))  # the portal tests' world

from live_portal import LivePortal
from portal_world import build_world

from sharedcare.app import create_app
from sharedcare.settings import Settings
from support import cheap_passwords, truncate

CHROMIUM = os.environ.get("SHAREDCARE_CHROMIUM", "/usr/bin/chromium")
REQUIRE_BROWSER = os.environ.get("SHAREDCARE_REQUIRE_BROWSER") == "1"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


def _unavailable(reason: str) -> None:
    if REQUIRE_BROWSER:
        pytest.fail(f"SHAREDCARE_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """A headless chromium shared by the session's tests (each test opens its own contexts)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - depends on the environment
        _unavailable(f"Playwright is not installed ({exc})")
    if not Path(CHROMIUM).exists():
        _unavailable(f"chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
    except Exception as exc:  # pragma: no cover - depends on the environment
        playwright.stop()
        _unavailable(f"chromium at {CHROMIUM} did not start: {exc}")
    yield browser
    browser.close()
    playwright.stop()


@pytest.fixture(autouse=True)
def cheap_hashing() -> Iterator[None]:
    """Real argon2id with the smallest costs for the world's accounts."""
    yield from cheap_passwords()


@pytest.fixture
def portal(settings: Settings) -> Iterator[LivePortal]:
    """The world served by uvicorn in a thread, on a free loopback port (as ``server_url``)."""
    app = create_app(settings)
    truncate(app.state.engine)
    world = build_world(app, settings)
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
        yield LivePortal(f"http://127.0.0.1:{port}", world)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        app.state.engine.dispose()
    assert not thread.is_alive(), "uvicorn did not shut down"
