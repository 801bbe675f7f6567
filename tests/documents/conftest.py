"""The MHD tests' world: two open records and a closed one, a laboratory and a hospital (system
clients), a GP, a second GP and a pharmacist in the care of Anne (``pa``), a stranger."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sharedcare.access.models import care_relationship, record_status
from sharedcare.fhir.store import utcnow
from sharedcare.storage.engine import writer
from support import put_all


def _relationship(rid: str, patient: str, practitioner: str) -> dict[str, Any]:
    now = utcnow()
    return {
        "id": rid,
        "patient_id": patient,
        "practitioner_id": practitioner,
        "context": "solo",
        "starts": now - timedelta(days=1),
        "ends": now + timedelta(days=14),
        "created_by": "test",
    }


@pytest.fixture
def world(client: TestClient) -> TestClient:
    put_all(
        client,
        {"resourceType": "Organization", "id": "lab1", "name": "Laboratoire Central"},
        {"resourceType": "Organization", "id": "hosp1", "name": "Hôpital du Nord"},
        {
            "resourceType": "Practitioner",
            "id": "gp",
            "active": True,
            "name": [{"family": "Muller", "given": ["Jean"]}],
        },
        {
            "resourceType": "Practitioner",
            "id": "gp2",
            "active": True,
            "name": [{"family": "Weber", "given": ["Lise"]}],
        },
        {"resourceType": "Practitioner", "id": "ph", "active": True, "name": [{"family": "Schmit"}]},
        {"resourceType": "Practitioner", "id": "stranger", "active": True},
        {
            "resourceType": "Patient",
            "id": "pa",
            "identifier": [{"system": "http://example.lu/matricule", "value": "1980010100187"}],
            "gender": "female",
        },
        {"resourceType": "Patient", "id": "pb", "gender": "male"},
        {"resourceType": "Patient", "id": "pc", "gender": "male"},
    )
    app: Any = client.app
    with writer(app.state.engine).begin() as conn:
        for rid, practitioner in (("r-gp", "gp"), ("r-gp2", "gp2"), ("r-ph", "ph")):
            conn.execute(care_relationship.insert().values(**_relationship(rid, "pa", practitioner)))
        conn.execute(
            record_status.insert().values(
                patient_id="pc", status="closed", closed_at=utcnow(), closed_reason="holder"
            )
        )
    return client
