"""Licence withdrawal (§A.3, art. 7(4)): the holders in the professional's care are told, once."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from sharedcare.access import licence, lifecycle
from sharedcare.access.models import care_relationship, facility_withdrawal, licence_withdrawal, record_status
from sharedcare.access.policy import category_of
from sharedcare.access.principals import PrincipalKind
from sharedcare.app import create_app
from sharedcare.audit import log as audit
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.store import utcnow
from sharedcare.identity import accounts, passwords
from sharedcare.identity.matricule import MATRICULE_SYSTEM, generate
from sharedcare.notify import outbox
from sharedcare.notify.models import notification
from sharedcare.portal.i18n import Translator
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer
from support import emptied_engine, truncate

GP = {
    "resourceType": "Practitioner",
    "id": "gp",
    "active": True,
    "name": [{"prefix": ["Dr"], "given": ["Claire"], "family": "Hoffmann"}],
}
OTHER = {"resourceType": "Practitioner", "id": "other", "active": True}


def practitioner(active: bool, **more: Any) -> dict[str, Any]:
    return {**GP, "active": active, **more}


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    yield from emptied_engine(db_url)


@pytest.fixture
def fhir(engine: Engine) -> FhirService:
    return FhirService(engine, classify=category_of)


def relate(engine: Engine, rid: str, patient: str, context: str, starts: datetime, **more: Any) -> None:
    values = {"practitioner_id": "gp", "organization_id": None, "ends": None, "revoked_at": None, **more}
    with writer(engine).begin() as conn:
        conn.execute(
            care_relationship.insert().values(
                id=rid, patient_id=patient, context=context, starts=starts, created_by="test", **values
            )
        )


def announced(engine: Engine) -> list[tuple[str, dict[str, Any]]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(notification.c.patient_id, notification.c.params)
            .where(notification.c.kind == outbox.LICENCE_WITHDRAWN)
            .order_by(notification.c.patient_id, notification.c.pk)
        )
        return [(r.patient_id, orjson.loads(r.params)) for r in rows]


def withdraw(fhir: FhirService, **more: Any) -> datetime:
    """Mark the GP inactive in the directory; the time of that version."""
    return fhir.update("Practitioner", "gp", practitioner(False, **more)).stored.last_updated


def run(engine: Engine, now: datetime) -> list[licence.Withdrawal]:
    with writer(engine).begin() as conn:
        return licence.notify_withdrawals(conn, now)


def run_facilities(engine: Engine, now: datetime) -> list[licence.FacilityWithdrawal]:
    with writer(engine).begin() as conn:
        return licence.notify_facility_withdrawals(conn, now)


def test_the_holders_in_care_at_the_withdrawal_are_told_once(engine: Engine, fhir: FhirService) -> None:
    fhir.update("Practitioner", "gp", GP)
    fhir.update("Practitioner", "other", OTHER)
    fhir.update("Practitioner", "gp", {**GP, "gender": "female"})  # still active
    assert run(engine, utcnow()) == []
    at = withdraw(fhir)
    fhir.update("Practitioner", "gp", practitioner(False, gender="female"))  # a later edit, still inactive
    day = timedelta(days=1)
    relate(engine, "solo", "pa", "solo", at - day, ends=at + 14 * day)
    relate(engine, "grant", "pb", "permanent", at - 30 * day)
    relate(engine, "ended", "pc", "solo", at - 20 * day, ends=at - timedelta(hours=1))
    relate(
        engine, "revoked-after", "pd", "solo", at - day, ends=at + day, revoked_at=at + timedelta(minutes=1)
    )
    relate(
        engine,
        "facility",
        "pe",
        "facility",
        at - day,
        ends=at + day,
        practitioner_id=None,
        organization_id="h",
    )
    relate(engine, "someone-else", "pf", "solo", at - day, ends=at + day, practitioner_id="other")
    relate(engine, "later", "pg", "solo", at + timedelta(minutes=1), ends=at + day)
    relate(engine, "deleted-record", "ph", "referent", at - 100 * day)
    relate(engine, "referent", "pi", "referent", at - 100 * day)
    relate(engine, "revoked-before", "pj", "permanent", at - 9 * day, revoked_at=at - day)
    with writer(engine).begin() as conn:
        conn.execute(record_status.insert().values(patient_id="ph", status="deleted"))
    (found,) = run(engine, at + timedelta(hours=2))
    holders = ["pa", "pb", "pd", "pi"]
    assert found.practitioner_id == "gp" and found.holders == tuple(holders)
    assert found.withdrawn_at == at and found.display == "Dr Claire Hoffmann"
    params = {"practitioner_id": "gp", "display": "Dr Claire Hoffmann", "date": at.isoformat()}
    assert announced(engine) == [(p, params) for p in holders]
    with engine.connect() as conn:
        for patient in holders:
            (entry,) = audit.query(conn, patient_id=patient, actions=[audit.AuditAction.CONSENT_CHANGE])
            trace = entry.record
            assert trace.principal_subject == "sharedcare-lifecycle"
            assert trace.resources == ("Practitioner/gp",) and "licence-withdrawn" in (
                trace.interaction or ""
            )
        assert audit.query(conn, patient_id="pc") == []
        (row,) = conn.execute(select(licence_withdrawal)).all()
        assert (row.practitioner_id, row.version, row.holders, row.restored_at) == ("gp", 3, 4, None)
    assert run(engine, at + timedelta(days=1)) == []  # once
    assert len(announced(engine)) == 4
    assert audit.verify(engine).ok


def test_a_licence_restored_then_withdrawn_again_is_announced_again(
    engine: Engine, fhir: FhirService
) -> None:
    fhir.update("Practitioner", "gp", GP)
    first = withdraw(fhir)
    relate(engine, "grant", "pa", "permanent", first - timedelta(days=30))
    assert [w.withdrawn_at for w in run(engine, first)] == [first]
    fhir.update("Practitioner", "gp", GP)  # restored
    restored_seen = utcnow()
    assert run(engine, restored_seen) == []
    second = withdraw(fhir)
    assert [w.withdrawn_at for w in run(engine, second)] == [second]
    restored = fhir.update("Practitioner", "gp", GP).stored.last_updated  # restored and withdrawn
    third = withdraw(fhir)  # again between two runs
    assert [w.withdrawn_at for w in run(engine, third)] == [third]
    assert [p["date"] for _, p in announced(engine)] == [
        first.isoformat(),
        second.isoformat(),
        third.isoformat(),
    ]
    with engine.connect() as conn:
        rows = conn.execute(
            select(licence_withdrawal.c.withdrawn_at, licence_withdrawal.c.restored_at).order_by(
                licence_withdrawal.c.pk
            )
        ).all()
    assert [tuple(r) for r in rows] == [(first, restored_seen), (second, restored), (third, None)]


def test_the_lifecycle_job_announces_and_the_portal_shows_it(settings: Settings) -> None:
    previous = passwords.set_parameters(passwords.HashParameters(time_cost=1, memory_cost=8, parallelism=1))
    app = create_app(settings)
    engine: Engine = app.state.engine
    try:
        truncate(engine)
        fhir: FhirService = app.state.fhir
        matricule = generate(date(1980, 4, 12), 7)
        fhir.update("Practitioner", "gp", GP)
        fhir.update(
            "Patient",
            "pa",
            {
                "resourceType": "Patient",
                "id": "pa",
                "identifier": [{"system": MATRICULE_SYSTEM, "value": matricule}],
            },
        )
        secret, account_id = enrol_holder(engine, settings, matricule)
        relate(engine, "solo", "pa", "solo", utcnow() - timedelta(days=1), ends=utcnow() + timedelta(days=14))
        fhir.update("Organization", "clinic", CLINIC)
        registration = {
            "practitioner_id": None,
            "organization_id": "clinic",
            "ends": utcnow() + timedelta(days=9),
        }
        relate(engine, "stay", "pa", "facility", utcnow() - timedelta(days=1), **registration)
        at = withdraw(fhir)
        closed = withdraw_facility(fhir)
        with writer(engine).begin() as conn:
            report = lifecycle.run(conn, fhir, settings, utcnow())
        assert report.licence_withdrawn == ["gp"] and report.facility_withdrawn == ["clinic"]
        client = TestClient(app, follow_redirects=False)
        sign_in(client, matricule, secret)
        expected = {
            "en": "The licence to practise of Dr Claire Hoffmann was withdrawn on {}: they no longer have "
            "any access to your record.",
            "fr": "L'autorisation d'exercer de Dr Claire Hoffmann a été retirée le {} : cette personne n'a "
            "plus aucun accès à votre dossier.",
            "de": "Die Berufsausübungsberechtigung von Dr Claire Hoffmann wurde am {} entzogen: Diese Person "
            "hat keinen Zugriff mehr auf Ihre Akte.",
        }
        facility = {
            "en": "The authorisation of the care facility Clinique du Parc was withdrawn on {}: its "
            "professionals no longer have access to your record through your registration there.",
            "fr": "L'autorisation de l'établissement de soins Clinique du Parc a été retirée le {} : ses "
            "professionnels n'ont plus accès à votre dossier au titre de votre inscription dans cet "
            "établissement.",
            "de": "Die Genehmigung der Gesundheitseinrichtung Clinique du Parc wurde am {} entzogen: die "
            "Fachpersonen der Einrichtung haben über Ihre Anmeldung dort keinen Zugriff mehr auf Ihre Akte.",
        }
        for lang, text in expected.items():
            with accounts.transaction(engine) as conn:
                accounts.set_language(conn, account_id, lang)
            home = client.get("/portal/home")
            assert home.status_code == 200
            page = home.text.replace("&#39;", "'")
            assert text.format(Translator(lang).date(at)) in page, lang
            assert facility[lang].format(Translator(lang).date(closed)) in page, lang
            assert page.count("Clinique du Parc") == 1, lang  # not also as a licence withdrawal
    finally:
        passwords.set_parameters(previous)
        engine.dispose()


PASSWORD = "blue kettle sings at dawn"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def enrol_holder(engine: Engine, settings: Settings, matricule: str) -> tuple[str, str]:
    """A holder account enrolled for real (activation, password, TOTP confirmed a step ago)."""
    past = datetime.now(UTC) - timedelta(seconds=60)
    with accounts.transaction(engine) as conn:
        created = accounts.create_account(
            conn, PrincipalKind.PATIENT, display_name="Marie Muller", matricule=matricule, patient_id="pa"
        )
        code = accounts.issue_activation_code(conn, created.id, settings)
        accounts.activate(
            conn, settings, code=code, matricule_or_login=matricule, contact="marie@example.org"
        )
        accounts.set_password(conn, settings, created.id, PASSWORD)
        secret, _uri, _svg = accounts.start_totp_enrolment(conn, created.id)
        accounts.confirm_totp(conn, created.id, pyotp.TOTP(secret).at(past), now=past)
    return secret, created.id


def sign_in(client: TestClient, login: str, secret: str) -> None:
    def post(url: str, data: dict[str, str]) -> Any:
        found = CSRF.search(client.get(url).text)
        assert found, url
        return client.post(url, data={"csrf": found.group(1), **data})

    first = post("/portal/login", {"login": login, "password": PASSWORD, "next": ""})
    assert first.status_code == 303 and first.headers["location"] == "/portal/login/code", first.text[:300]
    second = post("/portal/login/code", {"code": pyotp.TOTP(secret).now()})
    assert second.status_code == 303, second.text[:300]


CLINIC = {"resourceType": "Organization", "id": "clinic", "active": True, "name": "Clinique du Parc"}


def withdraw_facility(fhir: FhirService) -> datetime:
    """Mark the clinic inactive in the directory (its authorisation withdrawn); the time of it."""
    return fhir.update("Organization", "clinic", {**CLINIC, "active": False}).stored.last_updated


def test_the_holders_registered_at_a_withdrawn_facility_are_told_once(
    engine: Engine, fhir: FhirService
) -> None:
    fhir.update("Organization", "clinic", CLINIC)
    fhir.update("Organization", "other", {"resourceType": "Organization", "id": "other", "active": True})
    assert run(engine, utcnow()) == []
    at = withdraw_facility(fhir)
    day = timedelta(days=1)
    registration = {"practitioner_id": None, "organization_id": "clinic", "ends": at + day}
    relate(engine, "stay", "pa", "facility", at - day, **registration)
    relate(engine, "er", "pb", "emergency", at - day, **registration)
    relate(engine, "left", "pc", "facility", at - 9 * day, **{**registration, "ends": at - day})
    relate(engine, "elsewhere", "pd", "facility", at - day, **{**registration, "organization_id": "other"})
    relate(engine, "own-gp", "pe", "solo", at - day, ends=at + day, organization_id="clinic")
    assert run(engine, at + timedelta(hours=1)) == []  # no professional's licence was withdrawn
    (first,) = run_facilities(engine, at + timedelta(hours=1))
    assert (first.organization_id, first.display, first.holders) == (
        "clinic",
        "Clinique du Parc",
        ("pa", "pb"),
    )
    with engine.connect() as conn:
        rows = conn.execute(
            select(notification.c.patient_id, notification.c.kind, notification.c.params).order_by(
                notification.c.patient_id
            )
        ).all()
        assert [(r.patient_id, r.kind, orjson.loads(r.params)) for r in rows] == [
            (
                p,
                outbox.FACILITY_WITHDRAWN,
                {"organization_id": "clinic", "display": "Clinique du Parc", "date": at.isoformat()},
            )
            for p in ("pa", "pb")
        ]
        (entry,) = audit.query(conn, patient_id="pa", actions=[audit.AuditAction.CONSENT_CHANGE])
        assert entry.record.resources == ("Organization/clinic",)
        assert audit.query(conn, patient_id="pc") == [] and audit.query(conn, patient_id="pe") == []
        (row,) = conn.execute(select(facility_withdrawal)).all()
        assert (row.organization_id, row.version, row.holders, row.restored_at) == ("clinic", 2, 2, None)
    with writer(engine).begin() as conn:
        assert licence.notify_facility_withdrawals(conn, at + day) == []  # once
    fhir.update("Organization", "clinic", CLINIC)  # authorisation restored
    restored_seen = utcnow()
    assert run_facilities(engine, restored_seen) == []
    with engine.connect() as conn:
        assert conn.execute(select(facility_withdrawal.c.restored_at)).scalar_one() == restored_seen
    again = withdraw_facility(fhir)
    with writer(engine).begin() as conn:
        (second,) = licence.notify_facility_withdrawals(conn, again)
    assert second.withdrawn_at == again and second.holders == ("pa", "pb")  # told again
    assert audit.verify(engine).ok


def test_a_withdrawn_facility_loses_its_registrations_at_once(client: TestClient) -> None:
    """Over the FHIR API: the facility's professionals and system lose what its registrations
    gave them; a professional's own relationship stays; it cannot register anyone any more."""
    from sharedcare.access import care
    from sharedcare.access.principals import Principal
    from support import add_care, bearer, lab_result, put_all

    nurse = Principal(
        PrincipalKind.PROFESSIONAL,
        "acct-n",
        practitioner_id="nurse",
        profession="inf",
        organization_id="clinic",
    )
    system = Principal(PrincipalKind.SYSTEM, "clinic-system", organization_id="clinic")
    put_all(
        client,
        CLINIC,
        {"resourceType": "Practitioner", "id": "nurse", "active": True},
        {"resourceType": "Patient", "id": "pa"},
        {"resourceType": "Patient", "id": "pb"},
        lab_result("lab-a", "pa"),
        lab_result("lab-b", "pb"),
    )
    app: Any = client.app
    settings: Settings = app.state.settings
    with writer(app.state.engine).begin() as conn:
        care.register(conn, settings, system, "pa", emergency=False, now=utcnow())
        add_care(conn, "own", "pb", "nurse", utcnow())
    as_nurse = bearer(app, nurse, "user/*.rs")
    as_system = bearer(app, system, "system/*.rs")

    def sees() -> tuple[bool, bool, bool]:
        return (
            client.get("/fhir/Observation/lab-a", headers=as_nurse).status_code == 200,
            client.get("/fhir/Observation/lab-b", headers=as_nurse).status_code == 200,
            client.get("/fhir/Patient/pa", headers=as_system).status_code == 200,
        )

    assert sees() == (True, True, True)
    client.put("/fhir/Organization/clinic", json={**CLINIC, "active": False})  # as the trusted client
    assert sees() == (False, True, False)
    searched = client.get("/fhir/Observation", headers=as_nurse).json()
    assert [e["resource"]["id"] for e in searched.get("entry", [])] == ["lab-b"] and searched["total"] == 1
    with writer(app.state.engine).begin() as conn, pytest.raises(care.NotAllowed):
        care.register(conn, settings, system, "pb", emergency=True, now=utcnow())
    client.put("/fhir/Organization/clinic", json=CLINIC)  # restored: the stay, still running, counts again
    assert sees() == (True, True, True)


def test_a_withdrawn_facility_writes_nothing_any_more(client: TestClient) -> None:
    """Over the FHIR API: once the directory marks the facility inactive, neither its system
    client nor a professional acting through it writes (403 naming the withdrawal, nothing
    stored); the same professional without the facility writes through their own relationship."""
    from sharedcare.access.principals import Principal
    from support import add_care, bearer, lab_result, put_all

    nurse = Principal(
        PrincipalKind.PROFESSIONAL,
        "acct-n",
        practitioner_id="nurse",
        profession="med",
        organization_id="clinic",
    )
    own = Principal(PrincipalKind.PROFESSIONAL, "acct-n", practitioner_id="nurse", profession="med")
    system = Principal(PrincipalKind.SYSTEM, "clinic-system", organization_id="clinic")
    put_all(
        client,
        CLINIC,
        {"resourceType": "Practitioner", "id": "nurse", "active": True},
        {"resourceType": "Patient", "id": "pa"},
    )
    app: Any = client.app
    with writer(app.state.engine).begin() as conn:
        add_care(conn, "own", "pa", "nurse", utcnow())
    as_nurse = bearer(app, nurse, "user/*.cruds")
    as_own = bearer(app, own, "user/*.cruds")
    as_system = bearer(app, system, "system/*.cruds")

    def write(rid: str, headers: dict[str, str]) -> int:
        changed = {**lab_result(rid, "pa"), "note": [{"text": f"{rid} {utcnow()}"}]}  # never a no-op
        return client.put(f"/fhir/Observation/{rid}", json=changed, headers=headers).status_code

    assert client.put("/fhir/Observation/kept", json=lab_result("kept", "pa")).status_code == 201
    assert client.post("/fhir/Observation", json=lab_result("x", "pa"), headers=as_system).status_code == 201
    assert write("kept", as_nurse) == 200
    client.put("/fhir/Organization/clinic", json={**CLINIC, "active": False})  # authorisation withdrawn
    for headers, rid in ((as_system, "by-system"), (as_nurse, "by-nurse")):
        refused = client.post("/fhir/Observation", json=lab_result(rid, "pa"), headers=headers)
        assert refused.status_code == 403, refused.text
        outcome = refused.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert "authorisation of the care facility Organization/clinic is withdrawn" in str(outcome)
    before = client.get("/fhir/Observation/kept").json()["meta"]["versionId"]
    assert write("kept", as_nurse) == 403
    assert client.delete("/fhir/Observation/kept", headers=as_nurse).status_code == 403
    assert client.get("/fhir/Observation/kept").json()["meta"]["versionId"] == before  # unchanged
    total = client.get("/fhir/Observation?_summary=count").json()["total"]
    assert total == 2  # "kept" and the system's first one: nothing else was stored
    # without the facility, their own relationship still lets them write
    assert (
        client.post("/fhir/Observation", json=lab_result("by-own", "pa"), headers=as_own).status_code == 201
    )
    assert write("kept", as_own) == 200
    client.put("/fhir/Organization/clinic", json=CLINIC)  # restored
    assert client.post("/fhir/Observation", json=lab_result("y", "pa"), headers=as_system).status_code == 201
    assert write("kept", as_nurse) == 200


def test_the_facility_notice_has_its_own_email_words() -> None:
    """The e-mail names the kind of event, never the facility (e-mail is not a safe channel)."""
    from sharedcare.notify import texts

    words = {
        "fr": "retrait de l'autorisation d'un établissement de soins",
        "de": "Entzug der Genehmigung einer Gesundheitseinrichtung",
        "en": "withdrawal of a care facility's authorisation",
    }
    for lang, kind in words.items():
        body = texts.body(lang, outbox.FACILITY_WITHDRAWN, representative=False, portal_url=None)
        assert kind in body and texts.KIND[outbox.LICENCE_WITHDRAWN][lang] not in body, lang
    assert "the name of the facility concerned" in texts.body(
        "en", outbox.FACILITY_WITHDRAWN, representative=False, portal_url=None
    )


def test_the_lifecycle_command_reports_facility_withdrawals(
    engine: Engine, fhir: FhirService, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from sharedcare import settings as settings_module
    from sharedcare.cli import app as cli

    fhir.update("Practitioner", "gp", GP)
    fhir.update("Organization", "clinic", CLINIC)
    day = timedelta(days=1)
    relate(engine, "grant", "pa", "permanent", utcnow() - day)
    relate(engine, "stay", "pb", "facility", utcnow() - day, practitioner_id=None, organization_id="clinic")
    withdraw(fhir)
    withdraw_facility(fhir)
    monkeypatch.setenv("SHAREDCARE_DATABASE_URL", db_url)
    settings_module.get_settings.cache_clear()
    try:
        first = CliRunner().invoke(cli, ["lifecycle"])
        again = CliRunner().invoke(cli, ["lifecycle"])
    finally:
        settings_module.get_settings.cache_clear()
    assert first.exit_code == 0, first.output
    assert first.output.splitlines()[1:] == [
        "licence withdrawals announced to holders: gp",
        "facility authorisation withdrawals announced to holders: clinic",
    ]
    assert again.exit_code == 0 and len(again.output.splitlines()) == 1  # announced once
    with engine.connect() as conn:
        kinds = conn.execute(select(notification.c.patient_id, notification.c.kind).order_by("patient_id"))
        assert [tuple(r) for r in kinds] == [
            ("pa", outbox.LICENCE_WITHDRAWN),
            ("pb", outbox.FACILITY_WITHDRAWN),
        ]
