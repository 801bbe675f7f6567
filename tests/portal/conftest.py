"""Fixtures of the portal tests: cheap argon2, a fresh app over an emptied database with the world."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from portal_http import sign_in
from portal_world import World, build_world
from record_content import add_record_content

from sharedcare.app import create_app
from sharedcare.settings import Settings
from support import cheap_passwords, truncate


@pytest.fixture(autouse=True)
def cheap_hashing() -> Iterator[None]:
    """Real argon2id with the smallest costs: the suite stays fast, the code paths stay real."""
    yield from cheap_passwords()


def make_world(settings: Settings) -> World:
    app = create_app(settings)
    truncate(app.state.engine)
    return build_world(app, settings)


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    w = make_world(settings)
    yield w
    w.engine.dispose()


@pytest.fixture
def browser(world: World) -> Callable[[], TestClient]:
    """A new client (its own cookies, like a separate browser) on the world's app."""

    def new() -> TestClient:
        client = TestClient(world.app, follow_redirects=False)
        client.cookies.set("sharedcare_lang", "en")  # the language chosen before login
        return client

    return new


@pytest.fixture
def record(world: World) -> World:
    """The world with the record content of ``record_content`` (a pending result included)."""
    add_record_content(world)
    return world


@pytest.fixture
def holder(record: World, browser: Callable[[], TestClient]) -> TestClient:
    """Marie Muller signed in over ``record`` (modules with another holder define their own)."""
    c = browser()
    sign_in(c, record.patient)
    return c


@pytest.fixture
def emergency_world(settings: Settings) -> Iterator[World]:
    """The world on a platform that enables the EHDS emergency override (off by default)."""
    w = make_world(settings.model_copy(update={"emergency_override": True}))
    yield w
    w.engine.dispose()
