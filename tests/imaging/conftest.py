"""Fixtures of the imaging tests: a real Orthanc (session), and the portal tests' world with a
hospital's DICOMweb server configured, its Endpoint in the directory and a study of Marie Muller.

Orthanc comes from Debian (``orthanc``, ``orthanc-dicomweb``, installed by ``.ci/run``). When it
cannot be started the tests are skipped with the reason, unless ``SHAREDCARE_REQUIRE_ORTHANC=1``
(set by CI), in which case they fail.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "portal"))  # the portal tests' world

from imaging_helpers import endpoint
from orthanc_server import ORTHANC_USER, OrthancServer, OrthancUnavailable, load_studies
from portal_world import World, build_world

from sharedcare.app import create_app
from sharedcare.settings import DicomWebServer, Settings
from support import cheap_passwords, ensure_demo, system_token, truncate

REQUIRE_ORTHANC = os.environ.get("SHAREDCARE_REQUIRE_ORTHANC") == "1"
PACS = "pacs-nord"
"""The configured endpoint id of the test hospital's DICOMweb server."""


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """A real Orthanc with the DICOMweb plugin, holding the test studies (``orthanc_server``)."""
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"))
    try:
        server.start()
        load_studies(server)
    except (OrthancUnavailable, OSError) as exc:
        server.stop()
        if REQUIRE_ORTHANC:
            pytest.fail(f"SHAREDCARE_REQUIRE_ORTHANC=1 but Orthanc could not be started: {exc}")
        pytest.skip(f"Orthanc unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def cheap_hashing() -> Iterator[None]:
    """Real argon2id with the smallest costs for the world's accounts."""
    yield from cheap_passwords()


@pytest.fixture
def imaging_settings(settings: Settings, orthanc: OrthancServer) -> Settings:
    server = DicomWebServer(url=orthanc.dicomweb, username=ORTHANC_USER, password=orthanc.password)
    return settings.model_copy(update={"dicomweb_endpoints": {PACS: server}})


@pytest.fixture
def world(imaging_settings: Settings, orthanc: OrthancServer) -> Iterator[World]:
    """The portal world (records of Marie Muller ``pa`` and Paul Schmit ``pb``; the GP in Marie's
    care; a pharmacist and a stranger) with the hospital's DICOMweb Endpoint in the directory."""
    app = create_app(imaging_settings)
    truncate(app.state.engine)
    ensure_demo(app.state.engine, imaging_settings)
    w = build_world(app, imaging_settings)
    app.state.fhir.update("Endpoint", "pacs-nord", endpoint(orthanc.dicomweb))
    yield w
    w.engine.dispose()


@pytest.fixture
def agency(world: World) -> Iterator[TestClient]:
    """A client signed in as the agency's trusted system client (for set-up and checks)."""
    with TestClient(world.app) as client:
        client.headers["Authorization"] = f"Bearer {system_token(client)}"
        yield client
