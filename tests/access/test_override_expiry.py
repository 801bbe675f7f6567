"""The EHDS emergency override ends by itself after ``emergency_override_hours``: through the
FHIR API, a professional whose override has run out is back to what the holder allowed (here: a
block, so nothing), with no job to run."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sharedcare.access import care, consent
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.app import create_app
from sharedcare.fhir.store import utcnow
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer
from support import DEMO_SECRET, add_care, bearer, lab_result, professional, put_all, signed_in_client

HOURS = 2
HOLDER = Principal(PrincipalKind.PATIENT, "acct-pa", display="Anne", patient_id="pa")


@pytest.fixture
def override_client(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    """The app with the override enabled, lasting ``HOURS`` hours."""
    settings = Settings(
        database_url=db_url,
        data_dir=tmp_path,
        demo_data=False,
        demo_client_secret=DEMO_SECRET,
        emergency_override=True,
        emergency_override_hours=HOURS,
    )
    with signed_in_client(create_app(settings), settings) as c:
        yield c


def test_the_override_ends_after_its_hours(override_client: TestClient) -> None:
    client = override_client
    app: Any = client.app
    put_all(
        client,
        *({"resourceType": "Practitioner", "id": pid, "active": True} for pid in ("er-now", "er-past")),
        {"resourceType": "Patient", "id": "pa"},
        lab_result("lab-a", "pa"),
    )
    now = utcnow()
    duration = timedelta(hours=HOURS)
    with writer(app.state.engine).begin() as conn:
        for pid in ("er-now", "er-past"):  # in the holder's care, but blocked by the holder
            add_care(conn, f"solo-{pid}", "pa", pid, now)
            consent.block(conn, app.state.fhir, HOLDER, "pa", pid, now)
        # the clock: one override began just inside its hours, the other just past them
        five = timedelta(minutes=5)
        for pid, began in (("er-now", duration - five), ("er-past", duration + five)):
            rel = care.emergency_override(
                conn, app.state.settings, professional(pid), "pa", "unconscious patient", now - began
            )
            assert rel.ends == now - began + duration
    in_force = bearer(app, professional("er-now"), "user/*.rs")
    expired = bearer(app, professional("er-past"), "user/*.rs")
    assert client.get("/fhir/Observation/lab-a", headers=in_force).status_code == 200
    assert client.get("/fhir/Observation?patient=pa", headers=in_force).json()["total"] == 1
    refused = client.get("/fhir/Observation/lab-a", headers=expired)
    assert refused.status_code == 404 and refused.json()["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/Observation?patient=pa", headers=expired).json()["total"] == 0
    assert client.get("/fhir/Patient/pa/$everything", headers=expired).status_code == 404
    assert client.get("/fhir/Patient/pa", headers=expired).status_code == 404
