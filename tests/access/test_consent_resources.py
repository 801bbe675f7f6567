"""The holder's choices as FHIR ``Consent`` resources, on both databases: a permanent grant is
a ``permit`` and a block or a hidden item a ``deny``, each naming the professional as actor (and
the item as data), in force from the moment of the choice; withdrawing the choice makes its
Consent ``inactive``, a new version of the same resource (the history keeps both)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from sharedcare.access import consent
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.fhir.store import utcnow
from sharedcare.storage.engine import writer
from support import lab_result, put_all

HOLDER = Principal(PrincipalKind.PATIENT, "acct-anna", display="Anna", patient_id="anna")
PRACTITIONER_ROLE = {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}


@pytest.fixture
def world(client: TestClient) -> TestClient:
    put_all(
        client,
        {"resourceType": "Patient", "id": "anna"},
        {"resourceType": "Practitioner", "id": "dr-a", "active": True},
        lab_result("lab-1", "anna"),
    )
    return client


def _consent(app: Any, consent_id: str) -> dict[str, Any]:
    found: dict[str, Any] = app.state.fhir.read("Consent", consent_id).resource()
    return found


def _kind(res: dict[str, Any]) -> str:
    return str(res["policyRule"]["coding"][0]["code"])


@pytest.mark.parametrize("choice", ["permanent", "block", "mask"])
def test_each_choice_is_a_consent_its_withdrawal_inactive(world: TestClient, choice: str) -> None:
    app: Any = world.app
    fhir = app.state.fhir
    now = utcnow()
    with writer(app.state.engine).begin() as conn:
        if choice == "permanent":
            rel = consent.grant_permanent(conn, fhir, HOLDER, "anna", "dr-a", now)
        elif choice == "block":
            rel = consent.block(conn, fhir, HOLDER, "anna", "dr-a", now)
        else:
            rel = consent.mask(conn, fhir, HOLDER, "anna", "dr-a", "Observation/lab-1", now)
    assert rel
    (found,) = [
        e["resource"]
        for e in world.get("/fhir/Consent?patient=anna").json().get("entry", [])
        if _kind(e["resource"]) == choice
    ]
    assert found["status"] == "active" and found["patient"] == {"reference": "Patient/anna"}
    provision = found["provision"]
    assert provision["type"] == ("permit" if choice == "permanent" else "deny")
    assert provision["actor"] == [
        {"role": {"coding": [PRACTITIONER_ROLE]}, "reference": {"reference": "Practitioner/dr-a"}}
    ]
    assert "end" not in provision["period"] and provision["period"]["start"].startswith(str(now.year))
    if choice == "mask":
        assert provision["data"] == [{"meaning": "instance", "reference": {"reference": "Observation/lab-1"}}]
    else:
        assert "data" not in provision
    later = utcnow()
    with writer(app.state.engine).begin() as conn:
        if choice == "permanent":
            assert consent.revoke_permanent(conn, fhir, HOLDER, "anna", "dr-a", later) == 1
        elif choice == "block":
            consent.unblock(conn, fhir, HOLDER, "anna", "dr-a", later)
        else:
            consent.unmask(conn, fhir, HOLDER, "anna", "dr-a", "Observation/lab-1", later)
    after = _consent(app, found["id"])
    assert after["status"] == "inactive" and after["provision"] == provision
    history = world.get(f"/fhir/Consent/{found['id']}/_history").json()
    assert [e["resource"]["status"] for e in history["entry"]] == ["inactive", "active"]
