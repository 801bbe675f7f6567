"""The server's start: the objects built with the app leave the cyclic collector's scans."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from sharedcare.app import create_app
from sharedcare.settings import Settings


def test_start_freezes_what_the_app_built(settings: Settings) -> None:
    gc.unfreeze()
    try:
        app = create_app(settings.model_copy(update={"gc_freeze": True}))
        assert gc.get_freeze_count() == 0
        with TestClient(app) as client:  # the lifespan runs at the client's start
            frozen = gc.get_freeze_count()
            assert frozen > 10_000  # the app's definitions, routes and tables at least
            assert client.get("/fhir/metadata").status_code == 200
    finally:
        gc.unfreeze()


def test_the_setting_turns_it_off(settings: Settings) -> None:
    assert settings.gc_freeze is False  # tests/conftest.py: SHAREDCARE_GC_FREEZE=false
    gc.unfreeze()
    try:
        with TestClient(create_app(settings.model_copy(update={"gc_freeze": False}))) as client:
            assert client.get("/fhir/metadata").status_code == 200
            assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
