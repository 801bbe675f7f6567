"""Registrations at a care facility and the holder's objection, over the FHIR API (§A.1, §A.3)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from sharedcare.access import care
from sharedcare.access.models import care_relationship, record_status
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.api.registrations import REGISTER_REFUSED, RENEW_REFUSED
from sharedcare.audit import log as audit
from sharedcare.fhir.store import utcnow
from sharedcare.identity import accounts
from sharedcare.identity.matricule import MATRICULE_SYSTEM, generate
from sharedcare.identity.models import AccountStatus
from sharedcare.notify import outbox
from sharedcare.notify.models import notification
from sharedcare.settings import Settings
from support import CLINIC, CLINIC_DOCTOR, OTHER_DOCTOR, OTHER_SYSTEM, bearer, lab_result, put_all
from support import CLINIC_SYSTEM as SYSTEM
from support import OTHER_ORGANIZATION as OTHER

DOCTOR = replace(CLINIC_DOCTOR, scopes=frozenset({"user/*.cruds"}))
ADMIN = Principal(PrincipalKind.ADMIN, "acct-admin", display="Agency admin")


def params(**values: Any) -> dict[str, Any]:
    """A Parameters body: ``days`` as valuePositiveInt, ``end`` as valueDateTime, others as code."""
    out = []
    for name, value in values.items():
        key = {"days": "valuePositiveInt", "end": "valueDateTime", "reason": "valueString"}.get(
            name, "valueCode"
        )
        out.append({"name": name, key: value})
    return {"resourceType": "Parameters", "parameter": out}


def register(client: TestClient, patient: str, context: str, headers: dict[str, str]) -> Any:
    """``$register`` of ``patient`` in ``context`` (facility | emergency | anything to refuse)."""
    return client.post(f"/fhir/Patient/{patient}/$register", json=params(context=context), headers=headers)


def value(body: dict[str, Any], name: str) -> Any:
    (p,) = [p for p in body["parameter"] if p["name"] == name]
    return next(v for k, v in p.items() if k.startswith("value"))


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)


def world(client: TestClient) -> dict[str, dict[str, str]]:
    put_all(
        client,
        CLINIC,
        OTHER,
        {"resourceType": "Practitioner", "id": "doc", "active": True},
        {"resourceType": "Practitioner", "id": "od", "active": True},
        {"resourceType": "Patient", "id": "pa"},
        {"resourceType": "Patient", "id": "pb"},
        lab_result("lab-a", "pa"),
    )
    app: Any = client.app
    return {
        "system": bearer(app, SYSTEM, "system/*.cruds"),
        "other": bearer(app, OTHER_SYSTEM, "system/*.cruds"),
        "doctor": bearer(app, DOCTOR, "user/*.cruds"),
        "other_doctor": bearer(app, OTHER_DOCTOR, "user/*.cruds"),
        "admin": bearer(app, ADMIN, "user/*.rs"),
    }


def relationships(client: TestClient, patient: str) -> list[care.Relationship]:
    app: Any = client.app
    with app.state.engine.connect() as conn:
        return care.of_patient(conn, patient, utcnow(), include_ended=True)


def diagnostics(resp: Any) -> str:
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome", body
    text: str = body["issue"][0]["diagnostics"]
    return text


def test_an_emergency_registration_lets_the_facilitys_doctor_read(client: TestClient) -> None:
    h = world(client)
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    assert client.get("/fhir/Observation/lab-a", headers=h["doctor"]).status_code == 404
    before = utcnow()
    resp = client.post(
        "/fhir/Patient/pa/$register",
        json=params(context="emergency", reason="Road accident"),
        headers=h["system"],
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["resourceType"] == "Parameters"
    assert value(body, "context") == "emergency"
    assert value(body, "organization") == {"reference": "Organization/clinic"}
    assert value(body, "reason") == "Road accident"
    longest = timedelta(hours=settings.access_emergency_hours, days=settings.access_emergency_extra_days)
    end = when(value(body, "end"))
    assert before + longest <= end <= utcnow() + longest
    assert client.get("/fhir/Observation/lab-a", headers=h["doctor"]).status_code == 200
    assert client.get("/fhir/Patient/pa", headers=h["system"]).status_code == 200  # identity only
    assert client.get("/fhir/Observation/lab-a", headers=h["other_doctor"]).status_code == 404
    (rel,) = relationships(client, "pa")
    assert (rel.context, rel.organization_id, rel.practitioner_id, rel.reason) == (
        "emergency",
        "clinic",
        None,
        "Road accident",
    )
    app: Any = client.app
    with app.state.engine.connect() as conn:
        changes = audit.query(conn, patient_id="pa", actions=[audit.AuditAction.CONSENT_CHANGE])
    assert [(e.record.interaction, e.record.principal_kind) for e in changes] == [
        ("register emergency Organization/clinic", "system")
    ]


def test_a_professional_of_the_facility_registers_and_the_end_is_bounded(client: TestClient) -> None:
    h = world(client)
    too_late = (utcnow() + timedelta(days=46)).isoformat() + "Z"
    resp = client.post(
        "/fhir/Patient/pa/$register", json=params(context="facility", end=too_late), headers=h["doctor"]
    )
    assert resp.status_code == 422 and "at the latest" in diagnostics(resp)
    assert relationships(client, "pa") == []
    soon = (utcnow() + timedelta(days=3)).replace(microsecond=0)
    resp = client.post(
        "/fhir/Patient/pa/$register",
        json=params(context="facility", end=soon.isoformat() + "+00:00"),
        headers=h["doctor"],
    )
    assert resp.status_code == 200, resp.text
    assert when(value(resp.json(), "end")) == soon
    bad = register(client, "pa", "ward", h["doctor"])
    assert bad.status_code == 400 and "facility or emergency" in diagnostics(bad)
    naive = client.post(
        "/fhir/Patient/pa/$register", json=params(context="facility", end="2030-01-01"), headers=h["doctor"]
    )
    assert naive.status_code == 400 and "time zone" in diagnostics(naive)
    client.put("/fhir/Practitioner/doc", json={"resourceType": "Practitioner", "id": "doc", "active": False})
    lost = register(client, "pb", "facility", h["doctor"])
    assert lost.status_code == 403 and "listed as active" in diagnostics(lost)  # licence withdrawn
    assert relationships(client, "pb") == []


def test_renewal_within_and_beyond_the_limit(client: TestClient) -> None:
    h = world(client)
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    limit = settings.access_facility_renewal_days
    soon = (utcnow() + timedelta(days=2)).isoformat() + "Z"
    resp = client.post(
        "/fhir/Patient/pa/$register", json=params(context="facility", end=soon), headers=h["system"]
    )
    assert resp.status_code == 200, resp.text
    registration = value(resp.json(), "registration")
    beyond = client.post(
        "/fhir/Patient/pa/$renew-registration", json=params(days=limit + 1), headers=h["system"]
    )
    assert beyond.status_code == 422
    assert f"A renewal lasts 1 to {limit} days" in diagnostics(beyond)
    (rel,) = relationships(client, "pa")
    assert rel.ends is not None and rel.ends < utcnow() + timedelta(days=3)  # unchanged
    before = utcnow()
    within = client.post("/fhir/Patient/pa/$renew-registration", json=params(days=limit), headers=h["system"])
    assert within.status_code == 200, within.text
    assert value(within.json(), "registration") == registration
    end = when(value(within.json(), "end"))
    assert before + timedelta(days=limit) <= end <= utcnow() + timedelta(days=limit)
    (rel,) = relationships(client, "pa")
    assert rel.ends == end
    app: Any = client.app
    with app.state.engine.connect() as conn:
        changes = audit.query(conn, patient_id="pa", actions=[audit.AuditAction.CONSENT_CHANGE])
    assert changes[0].record.interaction == (
        f"register renewal facility Organization/clinic until {end.isoformat()}"
    )
    # no body: the longest renewal
    assert client.post("/fhir/Patient/pa/$renew-registration", headers=h["doctor"]).status_code == 200


def test_a_client_of_another_facility_is_refused(client: TestClient) -> None:
    h = world(client)
    assert register(client, "pa", "facility", h["system"]).status_code == 200
    other = client.post("/fhir/Patient/pa/$renew-registration", json=params(days=10), headers=h["other"])
    assert other.status_code == 404 and diagnostics(other) == RENEW_REFUSED  # as for an unknown id
    nobody = client.post("/fhir/Patient/nobody/$renew-registration", json=params(days=10), headers=h["other"])
    assert (nobody.status_code, nobody.json()) == (404, other.json())
    assert client.get("/fhir/Patient/pa", headers=h["other"]).status_code == 404
    assert client.get("/fhir/Observation/lab-a", headers=h["other_doctor"]).status_code == 404
    (rel,) = relationships(client, "pa")
    assert rel.organization_id == "clinic"
    # neither the holder, nor a professional acting for no facility, nor an unlisted facility
    app: Any = client.app
    holder = Principal(
        PrincipalKind.PATIENT, "acct-pa", patient_id="pa", scopes=frozenset({"patient/*.cruds"})
    )
    alone = Principal(PrincipalKind.PROFESSIONAL, "acct-doc", practitioner_id="doc", profession="med")
    ghost = Principal(PrincipalKind.SYSTEM, "ghost", organization_id="ghost")
    for who, scope in ((holder, "patient/*.cruds"), (alone, "user/*.cruds"), (ghost, "system/*.cruds")):
        resp = register(client, "pb", "facility", bearer(app, who, scope))
        assert resp.status_code == 403, resp.text
    read_only = bearer(app, SYSTEM, "system/Patient.r")
    resp = register(client, "pb", "facility", read_only)
    assert resp.status_code == 403 and "scopes" in diagnostics(resp)
    assert relationships(client, "pb") == []
    unknown = register(client, "nobody", "facility", h["system"])
    assert unknown.status_code == 404 and diagnostics(unknown) == REGISTER_REFUSED


def test_a_withdrawn_facility_is_refused(client: TestClient) -> None:
    h = world(client)
    assert register(client, "pa", "facility", h["system"]).status_code == 200
    client.put("/fhir/Organization/clinic", json={**CLINIC, "active": False})  # as the trusted client
    for who in ("system", "doctor"):
        for patient in ("pb", "nobody"):  # refused before the record is looked up: alike
            resp = register(client, patient, "emergency", h[who])
            assert resp.status_code == 403, resp.text
            assert "authorisation is withdrawn" in diagnostics(resp)
    renew = client.post("/fhir/Patient/pa/$renew-registration", json=params(days=5), headers=h["system"])
    assert renew.status_code == 403 and "cannot renew" in diagnostics(renew)
    assert relationships(client, "pb") == []
    assert client.get("/fhir/Observation/lab-a", headers=h["doctor"]).status_code == 404


def close(client: TestClient, patient: str) -> None:
    app: Any = client.app
    with app.state.engine.begin() as conn:
        conn.execute(record_status.insert().values(patient_id=patient, status="closed", closed_at=utcnow()))


def test_a_closed_record_takes_no_registration(client: TestClient) -> None:
    """Only a facility in the holder's care is told the record is closed; any other is answered
    as for an unknown record."""
    h = world(client)
    assert register(client, "pa", "facility", h["system"]).status_code == 200
    close(client, "pa")
    before = relationships(client, "pa")
    resp = register(client, "pa", "emergency", h["system"])
    assert resp.status_code == 422 and "closed" in diagnostics(resp)
    renewal = client.post("/fhir/Patient/pa/$renew-registration", json=params(days=5), headers=h["system"])
    assert renewal.status_code == 422 and "closed" in diagnostics(renewal)
    for patient in ("pa", "nobody"):
        refused = register(client, patient, "emergency", h["other"])
        assert (refused.status_code, diagnostics(refused)) == (404, REGISTER_REFUSED)
        refused = client.post(f"/fhir/Patient/{patient}/$renew-registration", headers=h["other_doctor"])
        assert (refused.status_code, diagnostics(refused)) == (404, RENEW_REFUSED)
    assert relationships(client, "pa") == before


def test_the_agency_files_the_holders_objection(client: TestClient) -> None:
    h = world(client)
    app: Any = client.app
    assert register(client, "pa", "facility", h["system"]).status_code == 200
    with accounts.transaction(app.state.engine) as conn:
        holder_account = accounts.create_account(
            conn,
            PrincipalKind.PATIENT,
            display_name="Marie",
            matricule=generate(date(1980, 1, 1), 12),
            patient_id="pa",
        )
        outbox.queue(conn, "pa", outbox.NEW_DOCUMENT, utcnow(), display="Discharge letter")
        outbox.queue(conn, "pb", outbox.NEW_DOCUMENT, utcnow(), display="Lab report")
    for who in ("system", "doctor"):  # no professional or facility deletes a record
        refused = client.post("/fhir/Patient/pa/$opt-out", headers=h[who])
        assert refused.status_code == 403 and "Agence" in diagnostics(refused)
    assert client.get("/fhir/Observation/lab-a", headers=h["doctor"]).status_code == 200
    resp = client.post("/fhir/Patient/pa/$opt-out", headers=h["admin"])
    assert resp.status_code == 200, resp.text
    assert "deleted" in resp.json()["issue"][0]["diagnostics"]
    for path in ("Patient/pa", "Observation/lab-a", "Patient/pa/$everything", "Patient/pa/_history"):
        assert client.get(f"/fhir/{path}").status_code == 404, path  # the trusted client too
        assert client.get(f"/fhir/{path}", headers=h["doctor"]).status_code == 404, path
    found = client.get("/fhir/Observation?subject=Patient/pa").json()
    assert found["total"] == 0 if "total" in found else not found.get("entry")
    assert client.get("/fhir/Patient/pb").status_code == 200  # only that record
    with app.state.engine.connect() as conn:
        assert (
            conn.execute(select(care_relationship).where(care_relationship.c.patient_id == "pa")).all() == []
        )
        assert (
            conn.execute(
                select(record_status.c.status).where(record_status.c.patient_id == "pa")
            ).scalar_one()
            == "deleted"
        )
        assert accounts.get_account(conn, holder_account.id).status is AccountStatus.DISABLED
        assert [n.patient_id for n in conn.execute(select(notification))] == ["pb"]
        kept = audit.query(conn, patient_id="pa", actions=[audit.AuditAction.DELETE])
    assert ("admin", "opt-out") in [(e.record.principal_kind, e.record.interaction) for e in kept]
    assert audit.verify(app.state.engine).ok
    again = client.post("/fhir/Patient/pa/$opt-out", headers=h["admin"])
    assert again.status_code == 404
    refused = register(client, "pa", "facility", h["system"])
    assert refused.status_code == 404


def test_the_holder_objects_through_the_api(client: TestClient) -> None:
    world(client)
    app: Any = client.app
    holder = Principal(PrincipalKind.PATIENT, "acct-pb", patient_id="pb")
    other_holder = bearer(
        app, Principal(PrincipalKind.PATIENT, "acct-pa", patient_id="pa"), "patient/*.cruds"
    )
    refused = client.post("/fhir/Patient/pb/$opt-out", headers=other_holder)
    assert refused.status_code == 403 and "Only the holder" in diagnostics(refused)
    assert client.get("/fhir/Patient/pb").status_code == 200
    reading = client.post("/fhir/Patient/pb/$opt-out", headers=bearer(app, holder, "patient/*.rs"))
    assert reading.status_code == 403 and "scopes" in diagnostics(reading)
    assert client.get("/fhir/Patient/pb").status_code == 200
    mine = bearer(app, holder, "patient/*.cruds")
    assert client.post("/fhir/Patient/pb/$opt-out", headers=mine).status_code == 200
    assert client.get("/fhir/Patient/pb").status_code == 404
    assert client.get("/fhir/Patient/pa").status_code == 200  # the other holder's record stays


# --- by the patient's matricule, as at a facility's entrance (Patient/$register) ----------------------

MATRICULE = generate(date(1975, 3, 14), 7)


def by_matricule(
    client: TestClient, operation: str, number: str, headers: dict[str, str], **more: Any
) -> Any:
    """``Patient/$<operation>`` naming the holder by ``number`` (system: the matricule's)."""
    body = params(**more)
    identifier = {"system": MATRICULE_SYSTEM, "value": number}
    body["parameter"].append({"name": "identifier", "valueIdentifier": identifier})
    return client.post(f"/fhir/Patient/${operation}", json=body, headers=headers)


def matricule_world(client: TestClient) -> dict[str, dict[str, str]]:
    """``world`` plus ``Patient/pm`` carrying ``MATRICULE`` and a lab result of it."""
    h = world(client)
    patient = {
        "resourceType": "Patient",
        "id": "pm",
        "identifier": [{"system": MATRICULE_SYSTEM, "value": MATRICULE}],
    }
    put_all(client, patient, lab_result("lab-m", "pm"))
    return h


def lab_results_seen(client: TestClient, patient: str, headers: dict[str, str]) -> list[str]:
    """Ids of the Observations of ``patient`` a FHIR search by the caller finds."""
    resp = client.get(f"/fhir/Observation?patient={patient}", headers=headers)
    assert resp.status_code == 200, resp.text
    return [e["resource"]["id"] for e in resp.json().get("entry", [])]


def consent_changes(client: TestClient, patient: str) -> list[str]:
    app: Any = client.app
    with app.state.engine.connect() as conn:
        found = audit.query(conn, patient_id=patient, actions=[audit.AuditAction.CONSENT_CHANGE])
    return [e.record.interaction or "" for e in found]


def test_a_facility_registers_by_matricule_and_its_doctor_reads(client: TestClient) -> None:
    h = matricule_world(client)
    assert lab_results_seen(client, "pm", h["doctor"]) == []
    resp = by_matricule(client, "register", MATRICULE, h["system"], context="facility")
    assert resp.status_code == 200, resp.text
    assert value(resp.json(), "organization") == {"reference": "Organization/clinic"}
    assert lab_results_seen(client, "pm", h["doctor"]) == ["lab-m"]
    assert lab_results_seen(client, "pm", h["other_doctor"]) == []
    (rel,) = relationships(client, "pm")
    assert (rel.id, rel.context, rel.organization_id) == (
        value(resp.json(), "registration"),
        "facility",
        "clinic",
    )
    assert relationships(client, "pa") == [] and relationships(client, "pb") == []
    assert consent_changes(client, "pm") == ["register facility Organization/clinic"]


def test_the_pre_2014_form_and_spaces_name_the_same_holder(client: TestClient) -> None:
    h = matricule_world(client)
    legacy = MATRICULE[:11]
    first = by_matricule(client, "register", legacy, h["doctor"], context="facility")
    assert first.status_code == 200, first.text
    spaced = f"{MATRICULE[:4]} {MATRICULE[4:8]} {MATRICULE[8:11]} {MATRICULE[11:]}"
    renewed = by_matricule(client, "renew-registration", spaced, h["system"], days=10)
    assert renewed.status_code == 200, renewed.text
    assert value(renewed.json(), "registration") == value(first.json(), "registration")
    (rel,) = relationships(client, "pm")
    assert rel.ends == when(value(renewed.json(), "end"))
    assert lab_results_seen(client, "pm", h["doctor"]) == ["lab-m"]


def test_invalid_and_unknown_matricules_are_refused_and_change_nothing(client: TestClient) -> None:
    h = matricule_world(client)
    wrong_check = MATRICULE[:12] + str((int(MATRICULE[12]) + 1) % 10)
    invalid = {
        wrong_check: "second check digit",
        MATRICULE[:10]: "13 digits",
        MATRICULE[:10] + "A12": "only digits",
    }
    for number, problem in invalid.items():
        for operation in ("register", "renew-registration"):
            resp = by_matricule(client, operation, number, h["system"], context="facility")
            assert resp.status_code == 400, (number, resp.text)
            assert "not a valid matricule" in diagnostics(resp) and problem in diagnostics(resp)
    unknown = by_matricule(client, "register", generate(date(1990, 6, 1), 3), h["system"], context="facility")
    assert unknown.status_code == 404 and diagnostics(unknown) == REGISTER_REFUSED
    foreign = client.post(
        "/fhir/Patient/$register",
        json={
            "resourceType": "Parameters",
            "parameter": [
                {"name": "context", "valueCode": "facility"},
                {"name": "identifier", "valueIdentifier": {"system": "urn:oid:1.2.3", "value": MATRICULE}},
            ],
        },
        headers=h["system"],
    )
    assert foreign.status_code == 400 and MATRICULE_SYSTEM in diagnostics(foreign)
    missing = client.post("/fhir/Patient/$register", json=params(context="facility"), headers=h["system"])
    assert missing.status_code == 400 and "'identifier'" in diagnostics(missing)
    twice = by_matricule(client, "renew-registration", MATRICULE, h["system"])
    assert twice.status_code == 404 and diagnostics(twice) == RENEW_REFUSED
    # the URL already names the record: an identifier besides is refused
    both = client.post(
        "/fhir/Patient/pm/$register",
        json={
            "resourceType": "Parameters",
            "parameter": [
                {"name": "context", "valueCode": "facility"},
                {"name": "identifier", "valueIdentifier": {"system": MATRICULE_SYSTEM, "value": MATRICULE}},
            ],
        },
        headers=h["system"],
    )
    assert both.status_code == 400 and "names the patient" in diagnostics(both)
    # who may not register learns nothing of which matricules exist
    app: Any = client.app
    holder = bearer(app, Principal(PrincipalKind.PATIENT, "acct-pa", patient_id="pa"), "patient/*.cruds")
    for number in (MATRICULE, generate(date(1990, 6, 1), 3)):
        assert by_matricule(client, "register", number, holder, context="facility").status_code == 403
    assert relationships(client, "pm") == []
    assert consent_changes(client, "pm") == []
    assert lab_results_seen(client, "pm", h["doctor"]) == []


def refusals_logged(client: TestClient, subject: str) -> list[tuple[Any, ...]]:
    """The caller's refused acts in the access log, oldest first."""
    app: Any = client.app
    with app.state.engine.connect() as conn:
        entries = audit.query(conn, principal_subject=subject)
    return [
        (e.record.action, e.record.interaction, e.record.patient_id, e.record.outcome_desc)
        for e in reversed(entries)
        if e.record.outcome == audit.AuditOutcome.MINOR_FAILURE
    ]


def test_by_matricule_a_facility_not_in_care_learns_nothing_and_is_logged(client: TestClient) -> None:
    """No record, a duplicate, a closed record, no registration of the caller's: one answer that
    names neither the record nor its state, and each refusal in the access log (naming no one)."""
    h = matricule_world(client)
    unknown = generate(date(1990, 6, 1), 3)
    duplicated = generate(date(1960, 2, 2), 5)
    put_all(
        client,
        {
            "resourceType": "Patient",
            "id": "pd1",
            "identifier": [{"system": MATRICULE_SYSTEM, "value": duplicated}],
        },
        {
            "resourceType": "Patient",
            "id": "pd2",
            "identifier": [{"system": MATRICULE_SYSTEM, "value": duplicated}],
        },
    )
    # the clinic takes part in pm's care (an emergency registration); the other facility does not
    assert by_matricule(client, "register", MATRICULE, h["system"], context="emergency").status_code == 200
    renewals = [by_matricule(client, "renew-registration", n, h["other"]) for n in (unknown, duplicated)]
    renewals.append(by_matricule(client, "renew-registration", MATRICULE, h["other"]))  # open, not theirs
    registrations = [
        by_matricule(client, "register", n, h["other"], context="facility") for n in (unknown, duplicated)
    ]
    close(client, "pm")
    renewals.append(by_matricule(client, "renew-registration", MATRICULE, h["other"]))
    registrations.append(by_matricule(client, "register", MATRICULE, h["other"], context="facility"))
    for answers, message in ((renewals, RENEW_REFUSED), (registrations, REGISTER_REFUSED)):
        for resp in answers:
            assert (resp.status_code, diagnostics(resp)) == (404, message), resp.text
            assert resp.json() == answers[0].json()
            assert "pm" not in resp.text and "closed" not in resp.text
    # a bad end is refused before the record is looked up: known or not, the same answer
    late = (utcnow() + timedelta(days=60)).isoformat() + "Z"
    ends = [
        by_matricule(client, "register", n, h["other"], context="facility", end=late)
        for n in (unknown, MATRICULE)
    ]
    assert [r.status_code for r in ends] == [422, 422] and ends[0].json() == ends[1].json()
    renew_path = ("POST /fhir/Patient/$renew-registration", "404 not-found")
    register_path = ("POST /fhir/Patient/$register", "404 not-found")
    assert (
        refusals_logged(client, "other-system")
        == [
            (audit.AuditAction.CREATE, path, None, outcome)
            for path, outcome in [renew_path] * 3 + [register_path] * 2 + [renew_path, register_path]
        ]
        + [(audit.AuditAction.CREATE, "POST /fhir/Patient/$register", None, "422 processing")] * 2
    )
    assert relationships(client, "pd1") == [] and relationships(client, "pd2") == []
    assert [r.organization_id for r in relationships(client, "pm")] == ["clinic"]
    # the facility in the holder's care is told precisely, the record named
    closed = by_matricule(client, "renew-registration", MATRICULE, h["doctor"])
    assert closed.status_code == 422 and "closed" in diagnostics(closed)
    assert "Patient/pm" in diagnostics(closed)
    assert refusals_logged(client, "acct-doc")[0][-1] == "422 processing"


def test_a_facility_in_care_keeps_the_precise_answers(client: TestClient) -> None:
    h = matricule_world(client)
    assert by_matricule(client, "register", MATRICULE, h["system"], context="emergency").status_code == 200
    resp = by_matricule(client, "renew-registration", MATRICULE, h["system"])
    assert resp.status_code == 422
    assert "Organization/clinic has no registration of Patient/pm in force" in diagnostics(resp)
    assert "an emergency registration is not renewed" in diagnostics(resp)
    # a second record with the same matricule: the clinic is told to have them merged, no one else
    put_all(
        client,
        {
            "resourceType": "Patient",
            "id": "pm2",
            "identifier": [{"system": MATRICULE_SYSTEM, "value": MATRICULE}],
        },
    )
    twice = by_matricule(client, "register", MATRICULE, h["system"], context="facility")
    assert twice.status_code == 422 and "Several records" in diagnostics(twice)
    other = by_matricule(client, "register", MATRICULE, h["other"], context="facility")
    assert (other.status_code, diagnostics(other)) == (404, REGISTER_REFUSED)
    assert [r.context for r in relationships(client, "pm")] == ["emergency"]
