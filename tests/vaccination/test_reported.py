"""Doses the holder reports from a paper card, and their validation by a vaccinator (both databases)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from sharedcare.access import consent
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit.models import audit_log
from sharedcare.fhir.store import utcnow
from sharedcare.storage.engine import writer
from sharedcare.storage.tables import resource
from sharedcare.vaccination.products import PRODUCT_SYSTEM
from sharedcare.vaccination.record import (
    ORIGIN_SYSTEM,
    VALIDATION_EXTENSION,
    VERIFICATION_SYSTEM,
    validation_extension,
)
from support import add_care, bearer, professional, put_all

HOLDER = Principal(PrincipalKind.PATIENT, "acct-pa", display="Anne", patient_id="pa")
PARENT = Principal(PrincipalKind.REPRESENTATIVE, "acct-parent", display="Jean")
OTHER_HOLDER = Principal(PrincipalKind.PATIENT, "acct-pb", patient_id="pb")
GP = professional("gp")
PHARMACIST = professional("pharm", "pha")
PHYSIO = professional("physio", "pse")
TRUSTED = Principal(PrincipalKind.SYSTEM, "demo-system", trusted=True)


def paper_dose(**changes: Any) -> dict[str, Any]:
    """A dose copied from the yellow card, claiming more than a holder may (the server decides)."""
    res: dict[str, Any] = {
        "resourceType": "Immunization",
        "status": "completed",
        "vaccineCode": {"coding": [{"system": PRODUCT_SYSTEM, "code": "priorix"}]},
        "patient": {"reference": "Patient/pa"},
        "occurrenceDateTime": "1995-05-10",
        "primarySource": True,
        "meta": {"tag": [{"system": VERIFICATION_SYSTEM, "code": "validated"}]},
        "extension": [validation_extension("gp", utcnow())],
    }
    res.update(changes)
    return res


@pytest.fixture
def world(client: TestClient) -> TestClient:
    put_all(
        client,
        {"resourceType": "Practitioner", "id": "gp", "active": True},
        {"resourceType": "Patient", "id": "pa", "birthDate": "1990-01-01"},
        {"resourceType": "Patient", "id": "pb", "birthDate": "1991-01-01"},
        {
            "resourceType": "Immunization",
            "id": "given",
            "status": "completed",
            "vaccineCode": {"coding": [{"system": PRODUCT_SYSTEM, "code": "boostrix"}]},
            "patient": {"reference": "Patient/pa"},
            "occurrenceDateTime": "2020-01-01",
        },
    )
    app: Any = client.app
    now = utcnow()
    with writer(app.state.engine).begin() as conn:
        for rel, who in (("r1", "gp"), ("r2", "pharm"), ("r3", "physio")):
            add_care(conn, rel, "pa", who, now)
        consent.appoint(conn, app.state.fhir, TRUSTED, "pa", "acct-parent", "guardian", now)
    return client


def as_(client: TestClient, who: Principal) -> dict[str, str]:
    return bearer(
        client.app, who, "user/*.cruds" if who.kind is not PrincipalKind.PATIENT else "patient/*.cruds"
    )


def category(client: TestClient, rid: str) -> str:
    app: Any = client.app
    with app.state.engine.connect() as conn:
        found = conn.execute(
            select(resource.c.category).where(resource.c.type == "Immunization", resource.c.id == rid)
        ).scalar_one()
    return str(found)


def tag(res: dict[str, Any]) -> list[str]:
    return [t["code"] for t in res.get("meta", {}).get("tag", []) if t["system"] == VERIFICATION_SYSTEM]


def report(client: TestClient, who: Principal = HOLDER, **changes: Any) -> dict[str, Any]:
    resp = client.post("/fhir/Immunization", json=paper_dose(**changes), headers=as_(client, who))
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


@pytest.mark.parametrize("who", [HOLDER, PARENT], ids=["holder", "parent"])
def test_the_server_marks_a_reported_dose(world: TestClient, who: Principal) -> None:
    res = report(world, who)
    assert tag(res) == ["patient-reported"]  # whatever the client claimed
    assert res["primarySource"] is False
    assert res["reportOrigin"]["coding"][0] == {"system": ORIGIN_SYSTEM, "code": "record"}
    assert "extension" not in res  # no forged validator
    assert category(world, res["id"]) == "vaccination-reported"


def test_holders_write_only_their_reported_doses(world: TestClient) -> None:
    own = report(world)
    headers = as_(world, HOLDER)
    own["lotNumber"] = "ON-THE-CARD"
    own["meta"] = {"tag": [{"system": VERIFICATION_SYSTEM, "code": "validated"}]}
    resp = world.put(f"/fhir/Immunization/{own['id']}", json=own, headers=headers)
    assert resp.status_code == 200, resp.text
    assert tag(resp.json()) == ["patient-reported"] and resp.json()["lotNumber"] == "ON-THE-CARD"
    given = world.get("/fhir/Immunization/given", headers=headers).json()
    given["lotNumber"] = "CHANGED"
    assert world.put("/fhir/Immunization/given", json=given, headers=headers).status_code == 403
    assert world.delete("/fhir/Immunization/given", headers=headers).status_code == 403
    forecast = {
        "resourceType": "ImmunizationRecommendation",
        "patient": {"reference": "Patient/pa"},
        "date": "2026-01-01",
        "recommendation": [{"vaccineCode": [{"text": "MMR"}], "forecastStatus": {"text": "Complete"}}],
    }
    assert world.post("/fhir/ImmunizationRecommendation", json=forecast, headers=headers).status_code == 403
    other = paper_dose(patient={"reference": "Patient/pb"})
    assert world.post("/fhir/Immunization", json=other, headers=headers).status_code == 403
    assert world.delete(f"/fhir/Immunization/{own['id']}", headers=headers).status_code in (200, 204)


def test_a_vaccinator_validates_it(world: TestClient) -> None:
    res = report(world)
    resp = world.post(f"/fhir/Immunization/{res['id']}/$validate-reported", headers=as_(world, GP))
    assert resp.status_code == 200, resp.text
    done = resp.json()
    assert tag(done) == ["validated"]
    ext = next(e for e in done["extension"] if e["url"] == VALIDATION_EXTENSION)
    assert {"url": "validator", "valueReference": {"reference": "Practitioner/gp"}} in ext["extension"]
    assert category(world, res["id"]) == "vaccination"
    assert done["meta"]["versionId"] == "2"
    app: Any = world.app
    with app.state.engine.connect() as conn:
        acts = conn.execute(
            select(audit_log.c.interaction).where(audit_log.c.principal_subject == "acct-gp")
        ).scalars()
        assert {"update", "validate-reported"} <= set(acts)
    # now a professional's dose: the holder no longer changes it, and it cannot be validated twice
    done["lotNumber"] = "X"
    assert (
        world.put(f"/fhir/Immunization/{res['id']}", json=done, headers=as_(world, HOLDER)).status_code == 403
    )
    again = world.post(f"/fhir/Immunization/{res['id']}/$validate-reported", headers=as_(world, PHARMACIST))
    assert again.status_code == 409


def test_only_vaccinators_validate(world: TestClient) -> None:
    res = report(world)
    for who, status in ((PHYSIO, 403), (HOLDER, 403), (OTHER_HOLDER, 403)):
        resp = world.post(f"/fhir/Immunization/{res['id']}/$validate-reported", headers=as_(world, who))
        assert resp.status_code == status, (who.subject, resp.text)
        assert resp.json()["resourceType"] == "OperationOutcome"
    assert category(world, res["id"]) == "vaccination-reported"
    resp = world.post(f"/fhir/Immunization/{res['id']}/$validate-reported", headers=as_(world, PHARMACIST))
    assert resp.status_code == 200
    unknown = world.post("/fhir/Immunization/nope/$validate-reported", headers=as_(world, GP))
    assert unknown.status_code == 404


def test_an_update_keeps_the_mark_until_validated(world: TestClient) -> None:
    res = report(world)
    del res["meta"]
    res["note"] = [{"text": "seen the card"}]
    resp = world.put(f"/fhir/Immunization/{res['id']}", json=res, headers=as_(world, GP))
    assert resp.status_code == 200, resp.text
    assert tag(resp.json()) == ["patient-reported"]
    forged = paper_dose(primarySource=False, extension=[validation_extension("someone-else", utcnow())])
    forged["reportOrigin"] = {"coding": [{"system": ORIGIN_SYSTEM, "code": "record"}]}
    created = world.post("/fhir/Immunization", json=forged, headers=as_(world, GP))
    assert created.status_code == 201, created.text
    ext = next(e for e in created.json()["extension"] if e["url"] == VALIDATION_EXTENSION)
    assert {"url": "validator", "valueReference": {"reference": "Practitioner/gp"}} in ext["extension"]
