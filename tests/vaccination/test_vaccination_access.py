"""The CVE's own rights: who reads and writes the vaccination record, through every read path
(read, search, _include/_revinclude, $everything), on both databases."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from sharedcare.access import consent
from sharedcare.access.categories import classify
from sharedcare.access.matrix import access_matrix
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.fhir.store import utcnow
from sharedcare.storage.engine import writer
from sharedcare.vaccination.products import PRODUCT_SYSTEM
from sharedcare.vaccination.record import VERIFICATION_SYSTEM
from support import add_care, bearer, professional, put_all

HOLDER = Principal(PrincipalKind.PATIENT, "acct-pa", patient_id="pa")
GP = professional("gp")
STRANGER = professional("stranger")
LAB = professional("labtech", "laboratory-technician")
PHYSIO = professional("physio", "physiotherapist")
DENTIST = professional("dentist", "dentist")
PHARMACIST = professional("pharm", "pharmacist")
MIDWIFE = professional("sf", "sf")
FACILITY = Principal(
    PrincipalKind.SYSTEM, "hosp-his", organization_id="hosp", scopes=frozenset({"system/*.*"})
)
VACCINATION = {"Immunization/given", "Immunization/reported", "ImmunizationRecommendation/fc"}


def dose(rid: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Immunization",
        "id": rid,
        "status": "completed",
        "vaccineCode": {"coding": [{"system": PRODUCT_SYSTEM, "code": "hexyon"}]},
        "patient": {"reference": "Patient/pa"},
        "occurrenceDateTime": "2025-02-01",
        **extra,
    }


def new_dose() -> dict[str, Any]:
    res = dose("x", lotNumber="L1", expirationDate="2027-01-01")
    del res["id"]
    res["performer"] = [{"actor": {"reference": "PractitionerRole/role"}}]
    return res


@pytest.fixture
def world(client: TestClient) -> TestClient:
    put_all(
        client,
        {"resourceType": "Patient", "id": "pa", "birthDate": "2024-12-01"},
        dose("given"),
        dose("reported", meta={"tag": [{"system": VERIFICATION_SYSTEM, "code": "patient-reported"}]}),
        dose("masked"),
        {
            "resourceType": "ImmunizationRecommendation",
            "id": "fc",
            "patient": {"reference": "Patient/pa"},
            "date": "2026-01-01",
            "recommendation": [
                {"vaccineCode": [{"text": "MMR"}], "forecastStatus": {"text": "Not Complete"}}
            ],
        },
    )
    app: Any = client.app
    now = utcnow()
    with writer(app.state.engine).begin() as conn:
        for who in ("gp", "labtech", "physio", "dentist", "pharm", "sf"):
            add_care(conn, f"care-{who}", "pa", who, now)
        add_care(conn, "hosp-reg", "pa", None, now, organization_id="hosp", context="facility")
        consent.mask(conn, app.state.fhir, HOLDER, "pa", "gp", "Immunization/masked", now)
    return client


def ids(bundle: dict[str, Any]) -> set[str]:
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])}


def seen(client: TestClient, who: Principal) -> dict[str, set[str]]:
    """What ``who`` gets of the vaccination record by each read path."""
    h = bearer(client.app, who, "user/*.rs" if who.kind is not PrincipalKind.SYSTEM else "system/*.rs")
    out: dict[str, set[str]] = {}
    out["search"] = ids(client.get("/fhir/Immunization", headers=h).json()) | ids(
        client.get("/fhir/ImmunizationRecommendation", headers=h).json()
    )
    out["read"] = {
        ref
        for ref in (*VACCINATION, "Immunization/masked")
        if client.get(f"/fhir/{ref}", headers=h).status_code == 200
    }
    revinclude = client.get(
        "/fhir/Patient?_id=pa&_revinclude=Immunization:patient&_revinclude=ImmunizationRecommendation:patient",
        headers=h,
    ).json()
    out["revinclude"] = ids(revinclude) - {"Patient/pa"}
    included = client.get("/fhir/Immunization?_include=Immunization:patient", headers=h).json()
    out["include"] = ids(included)
    everything = client.get("/fhir/Patient/pa/$everything", headers=h)
    out["everything"] = ids(everything.json()) - {"Patient/pa"} if everything.status_code == 200 else set()
    return out


def test_vaccinators_and_annex_readers_see_the_record_but_masked_items(world: TestClient) -> None:
    for who in (GP, LAB, PHYSIO):
        visible = VACCINATION if who is GP else VACCINATION | {"Immunization/masked"}  # masked from the GP
        doses = {ref for ref in visible if ref.startswith("Immunization/")}
        for path, found in seen(world, who).items():
            expected = doses | {"Patient/pa"} if path == "include" else visible
            assert found == expected, (who.subject, path, found)


def test_no_leak_without_rights(world: TestClient) -> None:
    for who in (STRANGER, FACILITY):
        for path, found in seen(world, who).items():
            assert found <= {"Patient/pa"}, (who.subject, path, found)
            assert not any(ref.startswith("Immunization") for ref in found)


def test_only_vaccinating_professions_write(world: TestClient) -> None:
    for who, status in (
        (GP, 201),
        (PHARMACIST, 201),
        (MIDWIFE, 201),
        (PHYSIO, 403),
        (DENTIST, 403),
        (LAB, 403),
    ):
        resp = world.post(
            "/fhir/Immunization", json=new_dose(), headers=bearer(world.app, who, "user/*.cruds")
        )
        assert resp.status_code == status, (who.subject, resp.text)
    physio = bearer(world.app, PHYSIO, "user/*.cruds")
    given = world.get("/fhir/Immunization/given", headers=physio).json()
    given["lotNumber"] = "CHANGED"
    assert world.put("/fhir/Immunization/given", json=given, headers=physio).status_code == 403
    assert world.delete("/fhir/Immunization/given", headers=physio).status_code == 403


def test_matrix_rows_and_classification() -> None:
    m = access_matrix()
    for column in (c.code for c in m.columns):
        assert m.right(column, "vaccination").can_read == m.right(column, "care-reports").can_read
        assert m.right(column, "vaccination") == m.right(column, "vaccination-reported")
    assert {c for c in ("med", "mr", "pha", "inf", "sf") if m.right(c, "vaccination").can_write} == {
        "med",
        "mr",
        "pha",
        "inf",
        "sf",
    }
    assert m.vaccinates("general-practitioner") and m.vaccinates("pharmacist") and m.vaccinates("med")
    assert not m.vaccinates("dentist") and not m.vaccinates("physiotherapist") and not m.vaccinates("pse")
    assert classify(dose("d")) == "vaccination"
    tagged = dose("d", meta={"tag": [{"system": VERIFICATION_SYSTEM, "code": "patient-reported"}]})
    assert classify(tagged) == "vaccination-reported"
    assert (
        classify({"resourceType": "ImmunizationEvaluation", "patient": {"reference": "Patient/p"}})
        == "vaccination"
    )
