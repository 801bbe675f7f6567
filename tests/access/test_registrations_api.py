"""Registrations at a care facility and the holder's objection, over the FHIR API (§A.1, §A.3)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from sharedcare.access import care
from sharedcare.access.models import care_relationship, record_status
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit import log as audit
from sharedcare.fhir.store import utcnow
from sharedcare.identity import accounts
from sharedcare.identity.matricule import generate
from sharedcare.identity.models import AccountStatus
from sharedcare.notify import outbox
from sharedcare.notify.models import notification
from sharedcare.settings import Settings
from support import bearer, lab_result, put_all

CLINIC = {"resourceType": "Organization", "id": "clinic", "active": True, "name": "Clinique du Parc"}
OTHER = {"resourceType": "Organization", "id": "other", "active": True, "name": "Hôpital du Nord"}
SYSTEM = Principal(PrincipalKind.SYSTEM, "clinic-system", display="Clinic", organization_id="clinic")
OTHER_SYSTEM = Principal(PrincipalKind.SYSTEM, "other-system", organization_id="other")
DOCTOR = Principal(
    PrincipalKind.PROFESSIONAL,
    "acct-doc",
    display="Dr Doc",
    practitioner_id="doc",
    profession="med",
    organization_id="clinic",
    scopes=frozenset({"user/*.cruds"}),
)
OTHER_DOCTOR = Principal(
    PrincipalKind.PROFESSIONAL,
    "acct-od",
    practitioner_id="od",
    profession="med",
    organization_id="other",
)
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
    assert other.status_code == 422
    assert "Organization/other has no registration of Patient/pa in force" in diagnostics(other)
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
    assert unknown.status_code == 404


def test_a_withdrawn_facility_is_refused(client: TestClient) -> None:
    h = world(client)
    assert register(client, "pa", "facility", h["system"]).status_code == 200
    client.put("/fhir/Organization/clinic", json={**CLINIC, "active": False})  # as the trusted client
    for who in ("system", "doctor"):
        resp = register(client, "pb", "emergency", h[who])
        assert resp.status_code == 403, resp.text
        assert "authorisation is withdrawn" in diagnostics(resp)
    renew = client.post("/fhir/Patient/pa/$renew-registration", json=params(days=5), headers=h["system"])
    assert renew.status_code == 403 and "cannot renew" in diagnostics(renew)
    assert relationships(client, "pb") == []
    assert client.get("/fhir/Observation/lab-a", headers=h["doctor"]).status_code == 404


def test_a_closed_record_takes_no_registration(client: TestClient) -> None:
    h = world(client)
    app: Any = client.app
    with app.state.engine.begin() as conn:
        conn.execute(record_status.insert().values(patient_id="pa", status="closed", closed_at=utcnow()))
    resp = register(client, "pa", "emergency", h["system"])
    assert resp.status_code == 422 and "closed" in diagnostics(resp)
    assert relationships(client, "pa") == []


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
