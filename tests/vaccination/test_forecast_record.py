"""What the record knows reaches ``Patient/[id]/$immds-forecast`` (issue 5 follow-ups): pregnancy
Observations (with the onset from the last period), the person's own PractitionerRole (health
worker), through the caller's view; and unconfirmed schedule data shown on the recommendation."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sharedcare.access import consent
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.fhir.store import utcnow
from sharedcare.identity.matricule import MATRICULE_SYSTEM, generate
from sharedcare.storage.engine import writer
from sharedcare.vaccination.cdsi import Patient, forecast, load_schedule
from sharedcare.vaccination.cdsi.provenance import annotate
from sharedcare.vaccination.inputs import forecast_inputs
from sharedcare.vaccination.operations import UNCONFIRMED_EXTENSION
from sharedcare.vaccination.products import CVX_SYSTEM
from support import add_care, bearer, professional, put_all

LOINC = "http://loinc.org"
MOTHER = Principal(PrincipalKind.PATIENT, "acct-pw", patient_id="pw")
NURSE = Principal(PrincipalKind.PATIENT, "acct-nu", patient_id="nu")
GP = professional("gp")
NURSE_ID = generate(date(1990, 5, 1), 7)


def imm(rid: str, pid: str, cvx: str, when: date) -> dict[str, Any]:
    return {
        "resourceType": "Immunization",
        "id": rid,
        "status": "completed",
        "vaccineCode": {"coding": [{"system": CVX_SYSTEM, "code": cvx}]},
        "patient": {"reference": f"Patient/{pid}"},
        "occurrenceDateTime": when.isoformat(),
    }


def observation(rid: str, pid: str, code: str, **value: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": "2025-05-20",
        **value,
    }


HISTORY = [
    (date(1995, 3, 1), "146"),
    (date(1995, 5, 1), "146"),
    (date(1995, 12, 1), "146"),
    (date(2000, 3, 1), "130"),
    (date(2010, 3, 1), "115"),
    (date(2021, 3, 1), "139"),
]
PREGNANT = observation(
    "pw-pregnant",
    "pw",
    "82810-3",
    valueCodeableConcept={"coding": [{"system": LOINC, "code": "LA15173-0", "display": "Pregnant"}]},
)
LAST_PERIOD = observation("pw-lmp", "pw", "8665-2", valueDateTime="2025-05-01")


@pytest.fixture
def world(client: TestClient) -> TestClient:
    mother = {"resourceType": "Patient", "id": "pw", "birthDate": "1995-01-01", "gender": "female"}
    doses = [imm(f"pw-{i}", "pw", cvx, when) for i, (when, cvx) in enumerate(HISTORY)]
    ident = {"system": MATRICULE_SYSTEM, "value": NURSE_ID}
    nurse = {
        "resourceType": "Patient",
        "id": "nu",
        "birthDate": "1990-05-01",
        "gender": "male",
        "identifier": [ident],
    }
    practitioner = {"resourceType": "Practitioner", "id": "nu-prac", "identifier": [ident]}
    role = {
        "resourceType": "PractitionerRole",
        "id": "nu-role",
        "active": True,
        "practitioner": {"reference": "Practitioner/nu-prac"},
        "code": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/practitioner-role", "code": "nurse"}
                ]
            }
        ],
    }
    put_all(client, mother, *doses, PREGNANT, LAST_PERIOD, nurse, practitioner, role)
    app: Any = client.app
    now = utcnow()
    with writer(app.state.engine).begin() as conn:
        add_care(conn, "care-gp", "pw", "gp", now)
        consent.mask(conn, app.state.fhir, MOTHER, "pw", "gp", "Observation/pw-pregnant", now)
    return client


def recommendations(resp: Any) -> dict[str, dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    [rec] = [p["resource"] for p in resp.json()["parameter"] if p["name"] == "recommendation"]
    return {e["vaccineCode"][0]["text"]: e for e in rec["recommendation"]}


def dates(entry: dict[str, Any]) -> dict[str, str]:
    return {c["code"]["coding"][0]["code"]: c["value"] for c in entry.get("dateCriterion", [])}


def test_a_pregnant_womans_pertussis_from_her_stored_observations(world: TestClient) -> None:
    url = "/fhir/Patient/pw/$immds-forecast?schedule=lu&assessmentDate=2025-06-01"
    dtap = recommendations(world.get(url, headers=bearer(world.app, MOTHER, "patient/*.rs")))["DTaP/Tdap/Td"]
    assert dtap["series"] == "Pertussis LU pregnancy series"
    # onset from the last period (2025-05-01): recommended from week 13, past due after week 26
    assert dates(dtap)["30980-7"] == "2025-07-31" and dates(dtap)["59778-1"] == "2025-11-05"
    # the pregnancy status masked from the GP: their forecast does not know she is pregnant
    gp = recommendations(world.get(url, headers=bearer(world.app, GP, "user/*.rs")))["DTaP/Tdap/Td"]
    assert gp["series"] != "Pertussis LU pregnancy series"
    assert dates(gp)["30980-7"] == "2031-03-01"  # only the adult 10-year booster


def test_a_nurses_influenza_from_her_practitioner_role(world: TestClient) -> None:
    url = "/fhir/Patient/nu/$immds-forecast?schedule=lu&assessmentDate=2025-11-01"
    flu = recommendations(world.get(url, headers=bearer(world.app, NURSE, "patient/*.rs")))["Influenza"]
    assert flu["series"] == "Influenza LU risk groups yearly series"
    assert flu["forecastStatus"]["text"] == "Not Complete"
    assert dates(flu)["30980-7"] <= "2025-11-01"  # due now, this season
    # the forecast rests on inferred values (CDC's 4-week gap): flagged on the recommendation
    flagged = [x["valueString"] for x in flu["extension"] if x["url"] == UNCONFIRMED_EXTENSION]
    assert any("interval from the previous dose min = 4 weeks" in p for p in flagged)
    assert flu["description"].startswith("Rests on unconfirmed schedule data")
    assert "unconfirmed" in flu["forecastReason"][0]["text"]


def test_the_request_variant_takes_observations_and_roles(world: TestClient) -> None:
    nurse = {"resourceType": "Patient", "birthDate": "1990-05-01", "gender": "male"}
    role = {
        "resourceType": "PractitionerRole",
        "active": True,
        "code": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/practitioner-role", "code": "nurse"}
                ]
            }
        ],
    }
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "assessmentDate", "valueDate": "2025-11-01"},
            {"name": "schedule", "valueString": "lu"},
            {"name": "patient", "resource": nurse},
            {"name": "practitionerRole", "resource": role},
        ],
    }
    flu = recommendations(world.post("/fhir/$immds-forecast", json=body))["Influenza"]
    assert flu["series"] == "Influenza LU risk groups yearly series"
    body["parameter"] = body["parameter"][:3]
    assert recommendations(world.post("/fhir/$immds-forecast", json=body))["Influenza"]["series"] == (
        "Influenza LU 65 years+ yearly series"
    )
    body["parameter"].append({"name": "observation", "resource": role})
    bad = world.post("/fhir/$immds-forecast", json=body)
    assert bad.status_code == 400 and "must hold a Observation" in bad.json()["issue"][0]["diagnostics"]
    # CDC's data carries no statuses: no extension, no description
    body["parameter"] = [p for p in body["parameter"][:3] if p["name"] != "schedule"]
    body["parameter"].append({"name": "schedule", "valueString": "cdc"})
    cdc = recommendations(world.post("/fhir/$immds-forecast", json=body))
    assert all("extension" not in e and "description" not in e for e in cdc.values())


def test_the_onset_of_pregnancy_from_the_record() -> None:
    schedule = load_schedule("lu")
    woman = {"resourceType": "Patient", "birthDate": "1995-01-01", "gender": "female"}
    due = observation("edd", "pw", "11778-8", valueDateTime="2026-01-01")
    onset = dict(
        forecast_inputs(woman, [], [], schedule, observations=[PREGNANT, due]).patient.observation_dates
    )
    assert onset == {"170": date(2026, 1, 1) - timedelta(days=280)}
    # the latest of the dates the record gives (a newer last period wins over an older estimate)
    both = forecast_inputs(woman, [], [], schedule, observations=[PREGNANT, due, LAST_PERIOD]).patient
    assert both.observation_date("170") == date(2025, 5, 1)
    # a pregnancy Condition's onset; a refuted one, or dates without a pregnancy, give nothing
    condition = {
        "resourceType": "Condition",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "77386006"}]},
        "onsetDateTime": "2025-04-20",
    }
    assert forecast_inputs(woman, [], [condition], schedule).patient.observation_date("170") == date(
        2025, 4, 20
    )
    refuted = {**condition, "verificationStatus": {"coding": [{"code": "refuted"}]}}
    assert forecast_inputs(woman, [], [refuted], schedule).patient.observation_dates == ()
    not_pregnant = forecast_inputs(woman, [], [], schedule, observations=[LAST_PERIOD]).patient
    assert not_pregnant.observation_dates == () and not_pregnant.observations == frozenset()


def test_every_forecast_carries_its_provenance() -> None:
    """``cdsi.forecast`` applies the schedule's provenance itself; applying it again changes nothing."""
    schedule = load_schedule("lu")
    result = forecast(schedule, Patient(date(2025, 1, 15), "F"), [], date(2025, 6, 1))
    hib = result.group("Hib")
    assert hib is not None and hib.unconfirmed and "unconfirmed schedule data" in (hib.reason or "")
    assert annotate(schedule, result) == result
    cdc = forecast(load_schedule("cdc"), Patient(date(2025, 1, 15), "F"), [], date(2025, 6, 1))
    assert all(not g.unconfirmed and "unconfirmed" not in (g.reason or "") for g in cdc.groups)
