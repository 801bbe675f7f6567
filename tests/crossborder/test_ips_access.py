"""``Patient/[id]/$summary`` over HTTP: each person's summary holds exactly what they may read."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.testclient import TestClient
from ips_checks import assert_valid_summary, by_url, section_items, sections
from ips_world import GP, HOLDER, IDENTIFIER_SYSTEM, LAB, PHARMACIST, STRANGER, IpsWorld, ok_summary
from sqlalchemy import select

from sharedcare.audit.models import audit_log
from sharedcare.crossborder.ips import BUNDLE_PROFILE

HIDDEN_FROM_GP = "Condition/c-masked"


def test_the_gp_summary_follows_the_selection_rules(ips_world: IpsWorld) -> None:
    bundle = ok_summary(ips_world, GP)
    assert_valid_summary(bundle)
    items = section_items(bundle)
    assert items["problems"] == {"Condition/c-active"}  # refuted left out, masked item absent
    assert items["past-illness"] == {"Condition/c-resolved"}
    assert items["allergies"] == {"AllergyIntolerance/a-peanut"}  # entered-in-error left out
    assert items["medications"] == {"MedicationRequest/mr-active", "MedicationStatement/ms-active"}
    assert items["immunizations"] == {"Immunization/imm-1"}
    assert items["results"] == {"Observation/lab-new", "Observation/lab-pending"}  # last HbA1c only
    assert items["vital-signs"] == {"Observation/vital-1"}
    assert items["procedures"] == {"Procedure/proc-1"}
    assert items["devices"] == {"DeviceUseStatement/dus-1"}
    held = {f"{r['resourceType']}/{r['id']}" for r in by_url(bundle).values()}
    assert HIDDEN_FROM_GP not in held and "Patient/pb" not in held and "Encounter/enc-1" not in held
    # the referenced Medication and prescriber are in the document; references point at them
    urls = by_url(bundle)
    request = next(r for r in urls.values() if r.get("id") == "mr-active")
    assert urls[request["medicationReference"]["reference"]]["id"] == "med-1"
    assert urls[request["requester"]["reference"]]["id"] == "gp"
    # the holder's Device is in their record (Device.patient): the GP in care reads it, so it is included
    statement = next(r for r in urls.values() if r.get("id") == "dus-1")
    assert urls[statement["device"]["reference"]]["deviceName"][0]["name"] == "Insulin pump"
    condition = next(r for r in urls.values() if r.get("id") == "c-active")
    assert "encounter" not in condition  # an optional reference to something left out is dropped
    procedure = next(r for r in urls.values() if r.get("id") == "proc-1")
    assert procedure["performer"] == [{"actor": {"display": "Practitioner"}}]
    composition = bundle["entry"][0]["resource"]
    assert composition["author"][0]["display"] == "Agence eSanté"
    assert bundle["meta"]["profile"] == [BUNDLE_PROFILE]
    narrative = sections(bundle)["medications"]["text"]["div"]
    assert "Metformin 500 mg" in narrative and "1 tablet twice a day" in narrative


def test_the_trusted_platform_client_reads_the_device_itself(ips_world: IpsWorld) -> None:
    bundle = ips_world.client.get("/fhir/Patient/pa/$summary").json()
    assert_valid_summary(bundle)
    urls = by_url(bundle)
    statement = next(r for r in urls.values() if r.get("id") == "dus-1")
    assert urls[statement["device"]["reference"]]["deviceName"][0]["name"] == "Insulin pump"
    assert "Insulin pump" in sections(bundle)["devices"]["text"]["div"]
    assert HIDDEN_FROM_GP in {f"{r['resourceType']}/{r['id']}" for r in urls.values()}


def test_a_pharmacist_summary_lacks_what_the_matrix_hides(ips_world: IpsWorld) -> None:
    bundle = ok_summary(ips_world, PHARMACIST)
    assert_valid_summary(bundle)
    items = section_items(bundle)
    assert "devices" not in items  # "Prothèses et appareillages": no right for pharmacists
    assert items["problems"] == {"Condition/c-active", "Condition/c-masked"}  # the mask is the GP's
    assert items["medications"] == {"MedicationRequest/mr-active", "MedicationStatement/ms-active"}
    assert items["allergies"] == {"AllergyIntolerance/a-peanut"}
    held = {r["resourceType"] for r in by_url(bundle).values()}
    assert "DeviceUseStatement" not in held


def test_a_laboratory_summary_has_no_problems_and_says_so(ips_world: IpsWorld) -> None:
    bundle = ok_summary(ips_world, LAB)
    assert_valid_summary(bundle)
    items = section_items(bundle)
    problems = sections(bundle)["problems"]
    assert "entry" not in problems and problems["emptyReason"]["coding"][0]["code"] == "unavailable"
    assert "No information available" in problems["text"]["div"]
    assert "past-illness" not in items and "devices" not in items
    assert items["results"] == {"Observation/lab-new", "Observation/lab-pending"}
    assert items["medications"] == {"MedicationRequest/mr-active", "MedicationStatement/ms-active"}
    assert not any(r["resourceType"] == "Condition" for r in by_url(bundle).values())


def test_the_holder_has_everything_but_what_waits_for_disclosure(ips_world: IpsWorld) -> None:
    bundle = ok_summary(ips_world, HOLDER)
    assert_valid_summary(bundle)
    items = section_items(bundle)
    assert items["results"] == {"Observation/lab-new"}
    assert items["problems"] == {"Condition/c-active", "Condition/c-masked"}
    assert items["devices"] == {"DeviceUseStatement/dus-1"}
    assert "Creatinine" not in orjson.dumps(bundle).decode()


def test_a_professional_outside_the_care_gets_unknown(ips_world: IpsWorld) -> None:
    resp = ips_world.client.get("/fhir/Patient/pa/$summary", headers=ips_world.headers(STRANGER))
    assert resp.status_code == 404
    assert resp.json()["resourceType"] == "OperationOutcome"
    other = ips_world.client.get("/fhir/Patient/pb/$summary", headers=ips_world.headers(GP))
    unknown = ips_world.client.get("/fhir/Patient/nobody/$summary", headers=ips_world.headers(GP))
    assert other.status_code == unknown.status_code == 404
    assert other.json()["issue"][0]["code"] == unknown.json()["issue"][0]["code"] == "not-found"


def test_scopes_narrow_the_summary(ips_world: IpsWorld) -> None:
    headers = ips_world.headers(GP, "user/Patient.rs user/Condition.rs")
    bundle = ips_world.client.get("/fhir/Patient/pa/$summary", headers=headers).json()
    assert_valid_summary(bundle)
    items = section_items(bundle)
    assert items["problems"] == {"Condition/c-active"}
    assert "emptyReason" in sections(bundle)["medications"]
    assert {r["resourceType"] for r in by_url(bundle).values()} <= {
        "Composition",
        "Patient",
        "Condition",
        "Organization",
    }
    no_patient = ips_world.client.get(
        "/fhir/Patient/pa/$summary", headers=ips_world.headers(GP, "user/Condition.rs")
    )
    assert no_patient.status_code == 403


def test_the_summary_is_audited_as_one_act_naming_what_it_held(ips_world: IpsWorld) -> None:
    bundle = ok_summary(ips_world, GP)
    held = {f"{r['resourceType']}/{r['id']}" for r in by_url(bundle).values()}
    app: Any = ips_world.client.app
    with app.state.engine.connect() as conn:
        rows = list(
            conn.execute(
                select(audit_log).where(audit_log.c.interaction == "summary", audit_log.c.patient_id == "pa")
            )
        )
    assert len(rows) == 1
    row = rows[0]
    assert row.principal_subject == "acct-gp" and row.action == "operation"
    assert row.query == "Patient/pa/$summary"
    logged = {r.split("/_history/")[0] for r in orjson.loads(row.resources)}
    assert "Condition/c-active" in logged and "Observation/lab-new" in logged
    assert HIDDEN_FROM_GP not in logged
    assert logged <= held


def test_summary_by_identifier_and_in_the_capability_statement(ips_world: IpsWorld) -> None:
    client: TestClient = ips_world.client
    bundle = client.get(
        f"/fhir/Patient/$summary?identifier={IDENTIFIER_SYSTEM}|1980010112345", headers=ips_world.headers(GP)
    ).json()
    assert_valid_summary(bundle)
    assert by_url(bundle)[bundle["entry"][0]["resource"]["subject"]["reference"]]["id"] == "pa"
    assert client.get(f"/fhir/Patient/$summary?identifier={IDENTIFIER_SYSTEM}|0").status_code == 404
    assert client.get("/fhir/Patient/$summary").status_code == 400
    patient = next(
        r for r in client.get("/fhir/metadata").json()["rest"][0]["resource"] if r["type"] == "Patient"
    )
    assert {
        "name": "summary",
        "definition": "http://hl7.org/fhir/uv/ips/OperationDefinition/summary",
    } in patient["operation"]


def test_language_and_posted_parameters(ips_world: IpsWorld) -> None:
    client: TestClient = ips_world.client
    french = client.get("/fhir/Patient/pa/$summary?language=fr", headers=ips_world.headers(GP)).json()
    assert french["language"] == "fr" and sections(french)["problems"]["title"] == "Liste des problèmes"
    german = client.get(
        "/fhir/Patient/pa/$summary", headers={**ips_world.headers(GP), "Accept-Language": "de-LU,de;q=0.9"}
    ).json()
    assert german["entry"][0]["resource"]["title"] == "Internationale Patientenkurzakte"
    posted = client.post(
        "/fhir/Patient/pa/$summary",
        json={"resourceType": "Parameters", "parameter": [{"name": "language", "valueCode": "de"}]},
        headers=ips_world.headers(GP),
    )
    assert posted.status_code == 200 and posted.json()["language"] == "de"
    assert_valid_summary(posted.json())
