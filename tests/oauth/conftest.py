"""Fixtures of the OAuth tests: plain-http test server allowed, registered clients, a patient."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from oauth_helpers import SMART_APP, login, register

from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.oauth.clients import ensure_demo_client
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer


@pytest.fixture(autouse=True)
def insecure_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    """The TestClient talks plain http to ``testserver``, which authlib refuses by default."""
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")


@pytest.fixture
def demo_secret(client: TestClient, settings: Settings) -> str:
    """The generated secret of ``demo-system``."""
    with writer(client.app.state.engine).begin() as conn:  # type: ignore[attr-defined]
        secret = ensure_demo_client(conn, settings) or settings.demo_client_secret
    assert secret
    return secret


PATIENT = Principal(
    kind=PrincipalKind.PATIENT, subject="acc-pat-1", display="Anna Muller", patient_id="pat-1"
)


@pytest.fixture
def patient_session(client: TestClient) -> Iterator[Principal]:
    """A patient logged in to the portal, and the SMART app registered (trusted: no consent)."""
    register(client, SMART_APP)
    login(client, PATIENT)
    yield PATIENT
