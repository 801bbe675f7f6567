"""The rules of an Immunization on write, over the FHIR API, on both databases."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from sharedcare.fhir.store import utcnow
from sharedcare.storage.engine import writer
from sharedcare.storage.tables import resource
from sharedcare.vaccination.products import CVX_SYSTEM, PRODUCT_SYSTEM, catalogue
from sharedcare.vaccination.record import SERIAL_EXTENSION, immunization_problems
from support import add_care, bearer, professional, put_all

GP = professional("gp")


def dose(rid: str, patient: str = "pa", **changes: Any) -> dict[str, Any]:
    """A professional's complete dose of Hexyon to ``patient``."""
    res: dict[str, Any] = {
        "resourceType": "Immunization",
        "id": rid,
        "status": "completed",
        "vaccineCode": {"coding": [{"system": PRODUCT_SYSTEM, "code": "hexyon"}]},
        "patient": {"reference": f"Patient/{patient}"},
        "occurrenceDateTime": "2025-03-01T10:00:00+01:00",
        "primarySource": True,
        "lotNumber": "AB-12",
        "expirationDate": "2027-01-31",
        "performer": [
            {"actor": {"reference": "Practitioner/gp"}},
            {"actor": {"reference": "Organization/org"}},
        ],
        "protocolApplied": [{"doseNumberPositiveInt": 1}],
        "extension": [{"url": SERIAL_EXTENSION, "valueString": "SER9"}],
    }
    res.update(changes)
    return {k: v for k, v in res.items() if v is not None}


@pytest.fixture
def world(client: TestClient) -> TestClient:
    put_all(
        client,
        {"resourceType": "Practitioner", "id": "gp", "active": True},
        {"resourceType": "Organization", "id": "org", "name": "Cabinet"},
        {"resourceType": "Patient", "id": "pa", "birthDate": "2024-12-01"},
    )
    app: Any = client.app
    with writer(app.state.engine).begin() as conn:
        add_care(conn, "gp-solo", "pa", "gp", utcnow())
    return client


def stored(client: TestClient, rid: str) -> Any:
    app: Any = client.app
    with app.state.engine.connect() as conn:
        return conn.execute(select(resource.c.category).where(resource.c.id == rid)).first()


def immunizations(client: TestClient) -> int:
    app: Any = client.app
    with app.state.engine.connect() as conn:
        return len(conn.execute(select(resource.c.pk).where(resource.c.type == "Immunization")).all())


def create(client: TestClient, body: dict[str, Any], who: Any = GP) -> Any:
    """POST the dose as ``who`` (professionals cannot create with their own ids)."""
    body = {k: v for k, v in body.items() if k != "id"}
    return client.post("/fhir/Immunization", json=body, headers=bearer(client.app, who, "user/*.cruds"))


def problems(client: TestClient, body: dict[str, Any]) -> list[str]:
    before = immunizations(client)
    resp = create(client, body)
    assert resp.status_code == 422, resp.text
    outcome = resp.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert immunizations(client) == before  # a rejected request changes nothing
    return [i["diagnostics"] for i in outcome["issue"]]


def test_a_professional_records_a_complete_dose(world: TestClient) -> None:
    resp = create(world, dose("d1"))
    assert resp.status_code == 201, resp.text
    assert resp.json()["extension"] == [{"url": SERIAL_EXTENSION, "valueString": "SER9"}]
    assert "tag" not in resp.json()["meta"]
    assert stored(world, resp.json()["id"]).category == "vaccination"
    cvx_only = dose("d2", vaccineCode={"coding": [{"system": CVX_SYSTEM, "code": "146"}]})
    assert create(world, cvx_only).status_code == 201


def test_a_professionals_dose_needs_the_pack_and_who_gave_it(world: TestClient) -> None:
    found = problems(world, dose("d1", lotNumber=None, expirationDate=None, performer=None))
    assert any("lot number" in p for p in found)
    assert any("expiry date" in p for p in found)
    assert any("vaccinator" in p for p in found)
    assert any("organisation" in p for p in found)
    role = dose("d2", performer=[{"actor": {"reference": "PractitionerRole/gp-at-org"}}])
    assert create(world, role).status_code == 201


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"vaccineCode": {"coding": [{"system": PRODUCT_SYSTEM, "code": "unknown"}]}},
            "not in the catalogue",
        ),
        ({"vaccineCode": {"text": "a vaccine"}}, "neither a catalogue product code nor a CVX code"),
        ({"status": "not-done"}, "statusReason"),
        ({"occurrenceDateTime": (date.today() + timedelta(days=3)).isoformat()}, "in the future"),
        ({"occurrenceDateTime": None, "occurrenceString": "as a child"}, "occurrenceDateTime"),
        ({"expirationDate": "2025-02-28"}, "had expired"),
        ({"extension": [{"url": SERIAL_EXTENSION, "valueCode": "x"}]}, "serial number"),
    ],
)
def test_each_problem_is_named(world: TestClient, changes: dict[str, Any], message: str) -> None:
    found = problems(world, dose("bad", **changes))
    assert any(message in p for p in found), found


def test_not_done_with_its_reason_needs_no_pack(world: TestClient) -> None:
    body = dose(
        "nd",
        status="not-done",
        statusReason={
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "PATOBJ"}]
        },
        lotNumber=None,
        expirationDate=None,
    )
    assert create(world, body).status_code == 201


def test_imports_by_the_platform_need_no_pack(world: TestClient) -> None:
    """Historical doses (Synthea, registries) carry no lot, at times only a text: the agency stores them."""
    synthea = dose("s1", lotNumber=None, expirationDate=None, performer=None, extension=None)
    synthea["vaccineCode"] = {"coding": [{"system": CVX_SYSTEM, "code": "140"}]}
    assert world.put("/fhir/Immunization/s1", json=synthea).status_code == 201
    assert world.put("/fhir/Immunization/s2", json=dose("s2", vaccineCode={"text": "BCG"})).status_code == 201


def test_rules_as_a_function() -> None:
    body = dose("x", lotNumber=None)
    found = immunization_problems(body, catalogue(), today=date(2026, 1, 1), professional_dose=False)
    assert found == []
    found = immunization_problems(body, catalogue(), today=date(2026, 1, 1), professional_dose=True)
    assert [i.expression for i in found] == [("Immunization.lotNumber",)]
