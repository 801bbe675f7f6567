"""``$immds-forecast`` (HL7 Immunization Decision Support Forecast): the operation contract of issue 5,
on request data and on a stored record read through the caller's view (both databases)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from sharedcare.access import consent
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.fhir.store import utcnow
from sharedcare.storage.engine import writer
from sharedcare.vaccination import cdsi
from sharedcare.vaccination.inputs import condition_codings, forecast_inputs
from sharedcare.vaccination.products import CVX_SYSTEM, PRODUCT_SYSTEM
from support import add_care, bearer, professional, put_all

HOLDER = Principal(PrincipalKind.PATIENT, "acct-pa", patient_id="pa")
GP = professional("gp")
STRANGER = professional("stranger")
LOINC = "http://loinc.org"
CRITERIA = {"30981-5", "30980-7", "59778-1", "59777-3"}
PATIENT = {"resourceType": "Patient", "id": "pa", "birthDate": "2024-12-01", "gender": "female"}


def imm(
    rid: str, system: str, code: str, when: str = "2025-02-01", status: str = "completed"
) -> dict[str, Any]:
    return {
        "resourceType": "Immunization",
        "id": rid,
        "status": status,
        "vaccineCode": {"coding": [{"system": system, "code": code}]},
        "patient": {"reference": "Patient/pa"},
        "occurrenceDateTime": when,
    }


DOSES = [
    imm("hexa1", CVX_SYSTEM, "146"),
    imm("rota1", PRODUCT_SYSTEM, "rotarix"),  # a national code: CVX from the catalogue
    imm("oops", CVX_SYSTEM, "03", status="entered-in-error"),
]


def request_body(*extra: dict[str, Any], schedule: str | None = None) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": "assessmentDate", "valueDate": "2025-06-01"},
        {"name": "patient", "resource": PATIENT},
        *({"name": "immunization", "resource": d} for d in DOSES),
        *extra,
    ]
    if schedule:
        params.append({"name": "schedule", "valueString": schedule})
    return {"resourceType": "Parameters", "parameter": params}


def parts(answer: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    assert answer["resourceType"] == "Parameters"
    evaluations = [p["resource"] for p in answer["parameter"] if p["name"] == "evaluation"]
    recommendations = [p["resource"] for p in answer["parameter"] if p["name"] == "recommendation"]
    assert len(recommendations) == 1
    rec = recommendations[0]
    assert rec["resourceType"] == "ImmunizationRecommendation"
    by_group = {e["vaccineCode"][0]["text"]: e for e in rec["recommendation"]}
    return evaluations, by_group


def criteria(entry: dict[str, Any]) -> dict[str, str]:
    out = {}
    for c in entry.get("dateCriterion", []):
        coding = c["code"]["coding"][0]
        assert coding["system"] == LOINC
        out[coding["code"]] = c["value"]
    return out


def check_contract(answer: dict[str, Any], *, dtap_dose: int) -> None:
    evaluations, groups = parts(answer)
    assert all(e["resourceType"] == "ImmunizationEvaluation" for e in evaluations)
    events = {e["immunizationEvent"]["reference"] for e in evaluations}
    assert "Immunization/oops" not in events  # entered in error: ignored
    assert "Immunization/rota1" in events
    assert {
        e["targetDisease"]["text"]
        for e in evaluations
        if e["immunizationEvent"]["reference"] == "Immunization/rota1"
    } == {"Rotavirus"}
    for group in ("DTaP/Tdap/Td", "Polio", "MMR", "HepB", "Pneumococcal", "Meningococcal B"):
        assert group in groups, group
    for entry in groups.values():
        assert entry["forecastStatus"]["text"] in {
            "Not Complete",
            "Complete",
            "Immune",
            "Contraindicated",
            "Aged Out",
            "Not Recommended",
        }
        assert set(criteria(entry)) <= CRITERIA
    dtap = groups["DTaP/Tdap/Td"]
    assert dtap["forecastStatus"]["text"] == "Not Complete"
    assert dtap["doseNumberPositiveInt"] == dtap_dose
    assert {"30981-5", "30980-7"} <= set(criteria(dtap))
    mmr = groups["MMR"]
    assert mmr["doseNumberPositiveInt"] == 1
    assert criteria(mmr)["30981-5"] == "2025-12-01"  # 12 months of age


@pytest.fixture
def world(client: TestClient) -> TestClient:
    put_all(client, PATIENT, *DOSES, imm("masked", CVX_SYSTEM, "119"))
    app: Any = client.app
    now = utcnow()
    with writer(app.state.engine).begin() as conn:
        add_care(conn, "care-gp", "pa", "gp", now)
        consent.mask(conn, app.state.fhir, HOLDER, "pa", "gp", "Immunization/hexa1", now)
    return client


def test_forecast_of_the_request(world: TestClient) -> None:
    resp = world.post(
        "/fhir/$immds-forecast", json=request_body(), headers=bearer(world.app, STRANGER, "user/*.rs")
    )
    assert resp.status_code == 200, resp.text
    check_contract(resp.json(), dtap_dose=2)
    evaluations, _ = parts(resp.json())
    hexa = {
        e["targetDisease"]["text"]
        for e in evaluations
        if e["immunizationEvent"]["reference"] == "Immunization/hexa1"
    }
    assert {"Diphtheria", "Tetanus", "Pertussis", "Polio", "HepB", "Hib"} <= hexa
    assert all(e["doseStatus"]["text"] == "Valid" for e in evaluations)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"resourceType": "Patient"}, "Parameters"),
        ({"resourceType": "Parameters", "parameter": []}, "exactly one 'patient'"),
        (
            {
                "resourceType": "Parameters",
                "parameter": [{"name": "patient", "resource": {"resourceType": "Patient"}}],
            },
            "birthDate",
        ),
        (request_body(schedule="xx"), "Unknown or unavailable schedule"),
        (
            {
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "assessmentDate", "valueDate": "June"},
                    {"name": "patient", "resource": PATIENT},
                ],
            },
            "assessmentDate must be a date",
        ),
        (request_body({"name": "immunization", "resource": PATIENT}), "must hold a Immunization"),
    ],
)
def test_bad_requests_answer_an_outcome(world: TestClient, body: dict[str, Any], message: str) -> None:
    resp = world.post("/fhir/$immds-forecast", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["resourceType"] == "OperationOutcome"
    assert message in resp.json()["issue"][0]["diagnostics"]


def test_stored_record_through_the_callers_view(world: TestClient) -> None:
    holder = bearer(world.app, HOLDER, "patient/*.rs")
    resp = world.get("/fhir/Patient/pa/$immds-forecast?assessmentDate=2025-06-01", headers=holder)
    assert resp.status_code == 200, resp.text
    check_contract(resp.json(), dtap_dose=2)
    gp = bearer(world.app, GP, "user/*.rs")
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "assessmentDate", "valueDate": "2025-06-01"}],
    }
    masked = world.post("/fhir/Patient/pa/$immds-forecast", json=body, headers=gp)
    assert masked.status_code == 200, masked.text
    check_contract(masked.json(), dtap_dose=1)  # the dose masked from the GP is not in their forecast
    evaluations, _ = parts(masked.json())
    assert "Immunization/hexa1" not in {e["immunizationEvent"]["reference"] for e in evaluations}
    stranger = world.get("/fhir/Patient/pa/$immds-forecast", headers=bearer(world.app, STRANGER, "user/*.rs"))
    assert stranger.status_code == 404
    bad = world.post(
        "/fhir/Patient/pa/$immds-forecast",
        json={"resourceType": "Parameters", "parameter": [{"name": "patient", "valueString": "x"}]},
        headers=gp,
    )
    assert bad.status_code == 400


def test_inputs_from_fhir() -> None:
    schedule = cdsi.load_schedule("cdc")
    conditions = [
        {
            "resourceType": "Condition",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "370388006"}]},
        },
        {
            "resourceType": "Condition",
            "clinicalStatus": {"coding": [{"code": "resolved"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "77386006"}]},
        },
    ]
    assert condition_codings(conditions) == [("http://snomed.info/sct", "370388006")]
    repevax = imm("r", PRODUCT_SYSTEM, "repevax", "2025-05-01")
    no_code = imm("n", "http://example.org", "x")
    inputs = forecast_inputs(PATIENT, [*DOSES, repevax, no_code], conditions, schedule)
    assert inputs.patient.gender == "F" and "003" in inputs.patient.observations
    assert [(d.ref, d.cvx) for d in inputs.doses] == [
        ("Immunization/hexa1", "146"),
        ("Immunization/rota1", "119"),
        ("Immunization/r", "115"),
        ("Immunization/r", "10"),
    ]
    assert inputs.unusable == (("Immunization/n", "neither a CVX code nor a catalogue product with one"),)
