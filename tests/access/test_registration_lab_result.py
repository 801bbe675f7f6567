"""A facility's access renewed, with the patient's agreement, until a lab result arrives (§A.3,
Annex 1 §3): it outlasts the 45 days while no result is filed, ends the filing deadline after the
result, and never outlasts the safety cap. Time passes by moving the relationship's dates back."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, event, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql import Select

from sharedcare.access import care
from sharedcare.access.categories import DataCategory, classify
from sharedcare.access.models import care_relationship
from sharedcare.audit import log as audit
from sharedcare.fhir.store import utcnow
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer
from support import CLINIC_DOCTOR as DOCTOR
from support import CLINIC_SYSTEM as SYSTEM
from support import OBSERVATION_CATEGORY, bearer, lab_result, put_all

_DATES = ("starts", "ends", "patient_agreement", "lab_wait_since", "lab_wait_floor", "lab_result_at")


def stamp(moment: datetime) -> str:
    return moment.isoformat() + "Z"


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)


def value(body: dict[str, Any], name: str) -> Any:
    (p,) = [p for p in body["parameter"] if p["name"] == name]
    return next(v for k, v in p.items() if k.startswith("value"))


def diagnostics(resp: Any) -> str:
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome", body
    text: str = body["issue"][0]["diagnostics"]
    return text


def setup(client: TestClient) -> dict[str, dict[str, str]]:
    """The clinic, its doctor, two holders with a lab result each, ``pa`` registered at the clinic."""
    put_all(
        client,
        {"resourceType": "Organization", "id": "clinic", "active": True, "name": "Clinique du Parc"},
        {"resourceType": "Practitioner", "id": "doc", "active": True},
        {"resourceType": "Patient", "id": "pa"},
        {"resourceType": "Patient", "id": "pb"},
        lab_result("lab-a", "pa"),
        lab_result("lab-b", "pb"),
    )
    app: Any = client.app
    h = {"system": bearer(app, SYSTEM, "system/*.cruds"), "doctor": bearer(app, DOCTOR, "user/*.cruds")}
    for patient in ("pa", "pb"):
        resp = client.post(
            f"/fhir/Patient/{patient}/$register",
            json={"resourceType": "Parameters", "parameter": [{"name": "context", "valueCode": "facility"}]},
            headers=h["system"],
        )
        assert resp.status_code == 200, resp.text
    return h


def renew(client: TestClient, headers: dict[str, str], **values: Any) -> Any:
    """``Patient/pa/$renew-registration`` with ``untilLabResult``/``patientAgreement``/``days``."""
    keys = {"untilLabResult": "valueBoolean", "patientAgreement": "valueDateTime", "days": "valuePositiveInt"}
    body = {"resourceType": "Parameters", "parameter": [{"name": n, keys[n]: v} for n, v in values.items()]}
    return client.post("/fhir/Patient/pa/$renew-registration", json=body, headers=headers)


def until_lab_result(client: TestClient, headers: dict[str, str]) -> Any:
    agreed = utcnow() - timedelta(minutes=5)
    resp = renew(client, headers, untilLabResult=True, patientAgreement=stamp(agreed))
    assert resp.status_code == 200, resp.text
    return resp


def registration(client: TestClient, patient: str = "pa") -> care.Relationship:
    app: Any = client.app
    with app.state.engine.connect() as conn:
        (rel,) = care.of_patient(conn, patient, utcnow(), include_ended=True)
    return rel


def row(client: TestClient, patient: str = "pa") -> Any:
    app: Any = client.app
    with app.state.engine.connect() as conn:
        return conn.execute(select(care_relationship).where(care_relationship.c.patient_id == patient)).one()


def days_pass(client: TestClient, days: float) -> None:
    """Move every date of every relationship ``days`` back: as if that time had passed."""
    app: Any = client.app
    cr = care_relationship
    back = timedelta(days=days)
    with app.state.engine.begin() as conn:
        for r in conn.execute(select(cr)).all():
            moved = {name: getattr(r, name) - back for name in _DATES if getattr(r, name) is not None}
            conn.execute(update(cr).where(cr.c.id == r.id).values(**moved))


def reads(client: TestClient, h: dict[str, dict[str, str]], patient: str = "pa") -> list[str]:
    """Ids of the holder's Observations the facility's doctor finds by a FHIR search."""
    resp = client.get(f"/fhir/Observation?patient={patient}", headers=h["doctor"])
    assert resp.status_code == 200, resp.text
    return sorted(e["resource"]["id"] for e in resp.json().get("entry", []))


def file(client: TestClient, resource: dict[str, Any]) -> datetime:
    """Store ``resource`` as the trusted client; the time it was filed."""
    resp = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource)
    assert resp.status_code in (200, 201), resp.text
    return when(resp.json()["meta"]["lastUpdated"])


def test_access_outlasts_45_days_and_ends_15_days_after_the_result(client: TestClient) -> None:
    h = setup(client)
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    before = utcnow()
    resp = until_lab_result(client, h["system"])
    cap = timedelta(days=settings.access_lab_result_max_days)
    assert before + cap <= when(value(resp.json(), "end")) <= utcnow() + cap
    assert value(resp.json(), "untilLabResult") is True
    agreed = when(value(resp.json(), "patientAgreement"))
    assert registration(client).patient_agreement == agreed < before
    days_pass(client, settings.access_facility_days + 5)
    assert reads(client, h) == ["lab-a"]  # past the 45 days: no result yet
    # neither another kind of data, nor a result not yet final, nor another holder's result ends it
    vital_signs = [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "vital-signs"}]}]
    vitals = {**lab_result("bp", "pa", "8480-6"), "category": vital_signs}
    assert classify(vitals) != DataCategory.LAB_RESULTS
    file(client, vitals)
    file(client, {**lab_result("pending", "pa"), "status": "preliminary"})
    file(client, lab_result("lab-b2", "pb"))
    assert registration(client).lab_result_at is None
    assert registration(client).ends == when(value(resp.json(), "end")) - timedelta(
        days=settings.access_facility_days + 5
    )
    filed = file(client, lab_result("lab-final", "pa"))
    rel = registration(client)
    deadline = timedelta(days=settings.access_emergency_extra_days)
    assert (rel.lab_result_at, rel.ends) == (filed, filed + deadline)
    assert not rel.waiting_for_lab_result
    assert "lab-final" in reads(client, h)
    answer = renew(client, h["system"], days=1)  # a plain renewal after the result: the result shows
    assert value(answer.json(), "labResult") == stamp(filed)
    assert value(answer.json(), "untilLabResult") is False
    days_pass(client, settings.access_emergency_extra_days + 1)
    assert reads(client, h) == []
    assert client.get("/fhir/Observation/lab-final", headers=h["doctor"]).status_code == 404
    assert reads(client, h, "pb") == []  # pb's registration ran out long ago


def test_a_diagnostic_report_ends_the_wait_and_never_shortens_the_stay(client: TestClient) -> None:
    h = setup(client)
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    registered = registration(client).ends
    until_lab_result(client, h["system"])
    report = {
        "resourceType": "DiagnosticReport",
        "id": "cbc",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "HM"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}]},
        "subject": {"reference": "Patient/pa"},
    }
    filed = file(client, report)
    rel = registration(client)
    assert rel.lab_result_at == filed
    # the result came on the first day: the 45 days of the registration still stand
    assert rel.ends == registered
    deadline = timedelta(days=settings.access_emergency_extra_days)
    assert registered is not None and registered > filed + deadline


def test_access_ends_at_the_cap_without_a_result(client: TestClient) -> None:
    h = setup(client)
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    until_lab_result(client, h["system"])
    days_pass(client, settings.access_lab_result_max_days - 1)
    assert reads(client, h) == ["lab-a"]
    days_pass(client, 2)
    assert reads(client, h) == []
    assert row(client).lab_result_at is None
    filed_too_late = file(client, lab_result("late", "pa"))
    assert row(client).lab_result_at is None and row(client).ends < filed_too_late  # stays ended
    assert reads(client, h) == []


def test_without_the_patients_agreement_nothing_changes(client: TestClient) -> None:
    h = setup(client)
    before = row(client)
    now = utcnow()
    refusals = {
        "agreement": renew(client, h["system"], untilLabResult=True),
        "future": renew(client, h["system"], untilLabResult=True, patientAgreement=stamp(now + timedelta(1))),
        "untilLabResult": renew(client, h["system"], patientAgreement=stamp(now)),
    }
    for expected, resp in refusals.items():
        assert resp.status_code == 422, resp.text
        assert expected in diagnostics(resp)
    both = renew(client, h["system"], untilLabResult=True, patientAgreement=stamp(now), days=5)
    assert both.status_code == 400 and "not both" in diagnostics(both)
    naive = renew(client, h["system"], untilLabResult=True, patientAgreement="2026-01-01")
    assert naive.status_code == 400 and "time zone" in diagnostics(naive)
    flag = renew(client, h["system"], untilLabResult="yes", patientAgreement=stamp(now))
    assert flag.status_code == 400 and "boolean" in diagnostics(flag)
    assert row(client) == before
    app: Any = client.app
    with app.state.engine.connect() as conn:
        changes = audit.query(conn, patient_id="pa", actions=[audit.AuditAction.CONSENT_CHANGE])
    assert [e.record.interaction for e in changes] == ["register facility Organization/clinic"]
    # once agreed, the renewal is audited with the agreement; a second one while waiting is refused
    until_lab_result(client, h["system"])
    waiting = row(client)
    again = renew(client, h["system"], untilLabResult=True, patientAgreement=stamp(now))
    assert again.status_code == 422 and "already waits for a lab result" in diagnostics(again)
    assert row(client) == waiting
    with app.state.engine.connect() as conn:
        changes = audit.query(conn, patient_id="pa", actions=[audit.AuditAction.CONSENT_CHANGE])
    assert "until a lab result (patient agreed" in (changes[0].record.interaction or "")


def test_only_the_first_version_that_is_a_result_ends_the_wait(client: TestClient) -> None:
    """An amendment, an old result written again or re-created after a deletion is not the result
    awaited; a result first filed as preliminary ends the wait when it becomes final."""
    h = setup(client)
    until_lab_result(client, h["system"])
    waiting = row(client)
    file(client, {**lab_result("lab-a", "pa"), "status": "amended", "valueQuantity": {"value": 5.4}})
    file(client, {**lab_result("lab-a", "pa"), "note": [{"text": "copied again"}]})
    assert client.delete("/fhir/Observation/lab-a").status_code in (200, 204)
    file(client, lab_result("lab-a", "pa"))  # re-created: it was a result before its deletion
    file(client, {**lab_result("pending", "pa"), "status": "preliminary"})
    assert row(client) == waiting
    filed = file(client, lab_result("pending", "pa"))  # the preliminary result becomes final
    rel = registration(client)
    assert rel.lab_result_at == filed and not rel.waiting_for_lab_result


def _statements_locking(client: TestClient, act: Any) -> list[str]:
    """The statements on ``care_relationship`` that ``act()`` runs, as PostgreSQL reads them."""
    app: Any = client.app
    seen: list[str] = []

    def capture(_conn: Any, statement: Any, *_args: Any) -> None:
        if isinstance(statement, Select) and care_relationship in statement.get_final_froms():
            seen.append(str(statement.compile(dialect=postgresql.dialect())))

    event.listen(app.state.engine, "before_execute", capture)
    try:
        act()
    finally:
        event.remove(app.state.engine, "before_execute", capture)
    return [s for s in seen if "FOR UPDATE" in s]


def test_a_renewal_and_a_filed_result_lock_the_relationship(client: TestClient) -> None:
    h = setup(client)
    until_lab_result(client, h["system"])
    renewing = _statements_locking(client, lambda: renew(client, h["system"], days=5))
    filing = _statements_locking(client, lambda: file(client, lab_result("lab-final", "pa")))
    assert [s.split("FOR UPDATE")[1].strip() for s in renewing] == [""]  # care_relationship only
    assert [s.split("FOR UPDATE")[1].strip() for s in filing] == ["OF care_relationship"]
    assert row(client).lab_result_at is not None


def test_on_postgresql_a_renewal_and_a_result_wait_for_each_other(client: TestClient) -> None:
    """Two transactions: while one holds the relationship (renewing, or filing the result), the
    other cannot read it to write its own end (a short lock timeout stands for the wait)."""
    app: Any = client.app
    if app.state.engine.dialect.name != "postgresql":
        pytest.skip("SQLite writers take the database lock at BEGIN: no two renew or file at once")
    h = setup(client)
    settings: Settings = app.state.settings
    service = app.state.fhir
    until_lab_result(client, h["system"])
    resp = client.post(
        "/fhir/Patient/pb/$renew-registration",
        json={
            "resourceType": "Parameters",
            "parameter": [
                {"name": "untilLabResult", "valueBoolean": True},
                {"name": "patientAgreement", "valueDateTime": stamp(utcnow() - timedelta(minutes=1))},
            ],
        },
        headers=h["system"],
    )
    assert resp.status_code == 200, resp.text
    engine = writer(app.state.engine)

    def short_wait(conn: Connection) -> None:
        conn.execute(text("SET LOCAL lock_timeout = '300ms'"))

    # a renewal has read pa's registration (nothing written yet): the result cannot read it
    # until the renewal commits (``care.locked`` is the read of ``renew``, see the test above)
    with engine.connect() as first, engine.connect() as second:
        renewing = first.begin()
        assert care.locked(first, registration(client, "pa").id) is not None
        filing = second.begin()
        short_wait(second)
        with pytest.raises(OperationalError, match="lock timeout"):
            service.update_in(second, "Observation", "lab-new", lab_result("lab-new", "pa"))
        filing.rollback()
        renewing.commit()
    renewed = registration(client, "pa").ends
    filed = file(client, lab_result("lab-new", "pa"))
    assert registration(client, "pa").lab_result_at == filed
    assert renewed is not None and registration(client, "pa").ends == min(
        renewed,
        max(row(client, "pa").lab_wait_floor, filed + timedelta(days=settings.access_emergency_extra_days)),
    )
    # a result holds pb's registration: the renewal waits, then reads the result and keeps it
    with engine.connect() as first, engine.connect() as second:
        filing = first.begin()
        service.update_in(first, "Observation", "lab-b3", lab_result("lab-b3", "pb"))
        renewing = second.begin()
        short_wait(second)
        with pytest.raises(OperationalError, match="lock timeout"):
            care.renew(second, settings, SYSTEM, registration(client, "pb").id, 5, utcnow())
        renewing.rollback()
        filing.commit()
    ended = registration(client, "pb")
    assert ended.lab_result_at is not None
    with engine.begin() as conn:
        after = care.renew(conn, settings, SYSTEM, ended.id, 5, utcnow())
    assert after.lab_result_at == ended.lab_result_at and after.ends == ended.ends  # never shortened
