"""Minors (§A.7) over the FHIR API, on both databases: a professional in the minor's care records
that the minor acts alone; the minor may then object to their parents' access, which suspends
their delegations on every read path until the minor withdraws it; at 18 a parent's delegation
ends by itself."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from sharedcare.access import consent, minors
from sharedcare.access.models import delegation, minor_autonomy, minor_objection
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit import log as audit
from sharedcare.fhir.store import utcnow
from sharedcare.storage.engine import writer
from sharedcare.storage.tables import resource
from support import add_care, bearer, put_all

GP = Principal(PrincipalKind.PROFESSIONAL, "acct-gp", display="Dr Gp", practitioner_id="gp", profession="med")
STRANGER = Principal(PrincipalKind.PROFESSIONAL, "acct-x", practitioner_id="stranger", profession="med")
KID = Principal(PrincipalKind.PATIENT, "acct-kid", display="Tom", patient_id="kid")
MUM = Principal(PrincipalKind.REPRESENTATIVE, "acct-mum", display="Christiane", patient_id="mum")
AGENCY = Principal(PrincipalKind.SYSTEM, "test-seed", trusted=True)


def years_ago(now: datetime, days_after: int = 0) -> str:
    """The birth date of someone who turns 18 ``days_after`` days from ``now`` (0: today)."""
    return (minors.majority_threshold(now).date() + timedelta(days=days_after)).isoformat()


def note(patient: str) -> dict[str, Any]:
    """An item of the holder's personal expression area (the only thing the holder side writes)."""
    return {
        "resourceType": "Basic",
        "code": {"text": "note"},
        "subject": {"reference": f"Patient/{patient}"},
        "author": {"reference": f"Patient/{patient}"},
    }


@pytest.fixture
def world(client: TestClient) -> TestClient:
    """Tom (15), his mother Christiane (a parent's delegation), his GP in his care; two
    teenagers of Christiane's about to come of age."""
    now = utcnow()
    put_all(
        client,
        {"resourceType": "Practitioner", "id": "gp", "active": True},
        {"resourceType": "Practitioner", "id": "stranger", "active": True},
        {"resourceType": "Patient", "id": "kid", "birthDate": years_ago(now, 3 * 365)},
        {"resourceType": "Patient", "id": "mum", "birthDate": "1985-02-03"},
        {"resourceType": "Patient", "id": "turns-18-today", "birthDate": years_ago(now)},
        {"resourceType": "Patient", "id": "turns-18-tomorrow", "birthDate": years_ago(now, 1)},
        {"resourceType": "Patient", "id": "nobirth"},
        {
            "resourceType": "Observation",
            "id": "kid-lab",
            "status": "final",
            "code": {"text": "Glucose"},
            "subject": {"reference": "Patient/kid"},
        },
        {
            "resourceType": "Observation",
            "id": "mum-lab",
            "status": "final",
            "code": {"text": "Glucose"},
            "subject": {"reference": "Patient/mum"},
        },
    )
    app: Any = client.app
    with writer(app.state.engine).begin() as conn:
        for patient in ("kid", "mum", "nobirth"):
            add_care(conn, f"gp-{patient}", patient, "gp", now)
        for patient in ("kid", "turns-18-today", "turns-18-tomorrow"):  # appointed while all minors
            consent.appoint(
                conn, app.state.fhir, AGENCY, patient, MUM.subject, "parent", now - timedelta(days=1)
            )
    return client


def as_(client: TestClient, principal: Principal, scope: str = "user/*.cruds") -> dict[str, str]:
    return bearer(client.app, principal, scope)


def refs(bundle: dict[str, Any]) -> set[str]:
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])}


def decide(client: TestClient, who: Principal, patient: str = "kid") -> str:
    app: Any = client.app
    with writer(app.state.engine).begin() as conn:
        return minors.record_autonomy(conn, app.state.fhir, app.state.policy, who, patient, utcnow())


def objects(client: TestClient, who: Principal, allow: bool = False) -> None:
    app: Any = client.app
    with writer(app.state.engine).begin() as conn:
        change = minors.allow_parents if allow else minors.object_to_parents
        change(conn, app.state.fhir, who, "kid", utcnow())


def parent_reads_kid(client: TestClient) -> dict[str, bool]:
    """What Christiane sees of Tom's record, path by path."""
    h = as_(client, MUM)
    history = client.get("/fhir/_history", headers=h).json()
    log = client.get("/fhir/AuditEvent?patient=kid", headers=h).json()
    return {
        "read": client.get("/fhir/Observation/kid-lab", headers=h).status_code == 200,
        "search": "Observation/kid-lab" in refs(client.get("/fhir/Observation", headers=h).json()),
        "history": "Observation/kid-lab" in refs(history),
        "everything": client.get("/fhir/Patient/kid/$everything", headers=h).status_code == 200,
        "log": bool(log.get("entry")),
        "write": client.post("/fhir/Basic", json=note("kid"), headers=h).status_code == 201,
    }


def test_a_minor_admitted_to_act_alone_suspends_and_restores_the_parents_access(world: TestClient) -> None:
    everything = dict.fromkeys(("read", "search", "history", "everything", "log", "write"), True)
    assert parent_reads_kid(world) == everything
    with pytest.raises(minors.MinorError):  # not admitted to act alone yet
        objects(world, KID)
    decide(world, GP)
    # the minor uses their own account as holder, and so do the parents until the objection
    kid = as_(world, KID)
    assert world.get("/fhir/Observation/kid-lab", headers=kid).status_code == 200
    assert parent_reads_kid(world)["read"]
    with pytest.raises(minors.MinorError):  # only the minor personally objects
        objects(world, MUM)
    objects(world, KID)
    assert parent_reads_kid(world) == dict.fromkeys(everything, False)
    h = as_(world, MUM)
    assert world.get("/fhir/AuditEvent?patient=kid", headers=h).json().get("entry", []) == []
    # the parent keeps their own record, and the delegation is suspended, not ended
    assert world.get("/fhir/Observation/mum-lab", headers=h).status_code == 200
    app: Any = world.app
    with app.state.engine.connect() as conn:
        rows = conn.execute(
            select(delegation.c.revoked_at, delegation.c.ends).where(delegation.c.patient_id == "kid")
        ).all()
        assert rows and all(r.revoked_at is None and r.ends is None for r in rows)
    # the parent can neither change the minor's choices nor lift the objection
    with writer(app.state.engine).begin() as conn, pytest.raises(consent.ChoiceError):
        consent.block(conn, app.state.fhir, MUM, "kid", "stranger", utcnow())
    with pytest.raises(minors.MinorError):
        objects(world, MUM, allow=True)
    with pytest.raises(minors.MinorError):
        objects(world, KID)  # already objecting
    objects(world, KID, allow=True)
    assert parent_reads_kid(world) == everything
    with app.state.engine.connect() as conn:
        changes = [
            e.record.interaction
            for e in audit.query(conn, patient_id="kid", actions=[audit.AuditAction.CONSENT_CHANGE])
        ]
        assert {"minor-autonomy", "object-to-parents", "allow-parents"} <= set(changes)
        assert conn.execute(select(minor_objection.c.removed_at)).scalar_one() is not None


def test_an_objection_suspends_every_delegation_a_parent_holds(world: TestClient) -> None:
    """A parent who made themselves the minor's assistant does not keep access through it."""
    app: Any = world.app
    with writer(app.state.engine).begin() as conn:
        consent.appoint(
            conn,
            app.state.fhir,
            MUM,
            "kid",
            MUM.subject,
            "assistant",
            utcnow(),
            ends=utcnow() + timedelta(days=30),
            legal_basis="signed appointment",
        )
    decide(world, GP)
    objects(world, KID)
    assert world.get("/fhir/Observation/kid-lab", headers=as_(world, MUM)).status_code == 404
    # the minor's own representative (not a parent) keeps access
    aunt = Principal(PrincipalKind.REPRESENTATIVE, "acct-aunt")
    with writer(app.state.engine).begin() as conn:
        consent.appoint(
            conn,
            app.state.fhir,
            KID,
            "kid",
            aunt.subject,
            "assistant",
            utcnow(),
            ends=utcnow() + timedelta(days=30),
            legal_basis="signed appointment",
        )
    assert world.get("/fhir/Observation/kid-lab", headers=as_(world, aunt)).status_code == 200


def test_only_a_professional_in_the_minors_care_records_the_decision(world: TestClient) -> None:
    for who in (STRANGER, KID, MUM, AGENCY):
        with pytest.raises(minors.MinorError):
            decide(world, who)
    with pytest.raises(minors.MinorError):
        decide(world, GP, "mum")  # an adult
    with pytest.raises(minors.MinorError):
        decide(world, GP, "nobirth")  # no birth date: not shown to be a minor
    decision = decide(world, GP)
    with pytest.raises(minors.MinorError):
        decide(world, GP)  # already recorded
    app: Any = world.app
    with app.state.engine.connect() as conn:
        recorded = minors.autonomy_of(conn, "kid")
        assert recorded is not None and recorded.id == decision and recorded.practitioner_id == "gp"
        status = minors.status(conn, "kid", utcnow())
        assert status.minor and status.autonomy == recorded and status.objection_since is None
    stored = world.get(f"/fhir/Consent/{recorded.consent_id}").json()  # as the trusted client
    assert stored["policyRule"]["coding"][0]["code"] == "minor-autonomy"
    assert stored["performer"] == [{"reference": "Practitioner/gp"}]
    assert stored["provision"]["actor"][0]["reference"] == {"reference": "Patient/kid"}
    # a blocked professional is no longer in the minor's care
    with writer(app.state.engine).begin() as conn:
        consent.block(conn, app.state.fhir, KID, "kid", "gp", utcnow())
        assert not minors.in_care(conn, app.state.policy, GP, "kid", utcnow())


def test_the_18th_birthday_ends_a_parents_delegation(world: TestClient) -> None:
    h = as_(world, MUM)
    assert world.get("/fhir/Patient/turns-18-tomorrow", headers=h).status_code == 200
    assert world.get("/fhir/Patient/turns-18-today", headers=h).status_code == 404
    assert world.get("/fhir/AuditEvent?patient=turns-18-today", headers=h).json().get("entry", []) == []
    app: Any = world.app
    policy = app.state.policy
    now = utcnow()
    with app.state.engine.connect() as conn:
        today = set(conn.execute(policy.holder_patients(MUM, now)).scalars())
        tomorrow = set(conn.execute(policy.holder_patients(MUM, now + timedelta(days=1, hours=1))).scalars())
    assert today == {"kid", "turns-18-tomorrow"}
    assert tomorrow == {"kid"}
    # a guardian's delegation is not an age rule: it goes on after 18
    with writer(app.state.engine).begin() as conn:
        consent.appoint(conn, app.state.fhir, AGENCY, "turns-18-today", "acct-tutor", "guardian", now)
    tutor = Principal(PrincipalKind.REPRESENTATIVE, "acct-tutor")
    assert world.get("/fhir/Patient/turns-18-today", headers=as_(world, tutor)).status_code == 200


def withdraw(client: TestClient, who: Principal, patient: str = "kid") -> None:
    app: Any = client.app
    with writer(app.state.engine).begin() as conn:
        minors.withdraw_autonomy(conn, app.state.fhir, app.state.policy, who, patient, utcnow())


def test_the_recording_professional_withdraws_the_decision_and_the_objection_ends(world: TestClient) -> None:
    decide(world, GP)
    objects(world, KID)
    assert not parent_reads_kid(world)["read"]
    for who in (STRANGER, MUM, AGENCY):
        with pytest.raises(minors.MinorError):
            withdraw(world, who)
    assert not parent_reads_kid(world)["read"]  # a refused withdrawal changes nothing
    app: Any = world.app
    with app.state.engine.connect() as conn:
        decision = minors.autonomy_of(conn, "kid")
    assert decision is not None
    withdraw(world, GP)
    # the parents exercise the minor's rights again at once, on every path
    assert parent_reads_kid(world) == dict.fromkeys(
        ("read", "search", "history", "everything", "log", "write"), True
    )
    with app.state.engine.connect() as conn:
        state = minors.status(conn, "kid", utcnow())
        assert state.autonomy is None and state.objection_since is None
        changes = [
            e.record.interaction
            for e in audit.query(conn, patient_id="kid", actions=[audit.AuditAction.CONSENT_CHANGE])
        ]
    assert {"withdraw-minor-autonomy", "allow-parents"} <= set(changes)
    stored = world.get(f"/fhir/Consent/{decision.consent_id}").json()  # kept, made inactive
    assert stored["status"] == "inactive"
    with pytest.raises(minors.MinorError):
        withdraw(world, GP)  # nothing left to withdraw
    with pytest.raises(minors.MinorError):
        objects(world, KID)  # no longer admitted to act alone
    assert decide(world, GP) != decision.id  # a new decision may be recorded later


def test_the_minor_withdraws_their_own_autonomy(world: TestClient) -> None:
    decide(world, GP)
    withdraw(world, KID)
    app: Any = world.app
    with app.state.engine.connect() as conn:
        assert minors.status(conn, "kid", utcnow()).autonomy is None
        row = conn.execute(select(minor_autonomy.c.withdrawn_by, minor_autonomy.c.withdrawn_at)).one()
    assert row.withdrawn_by == "minor" and row.withdrawn_at is not None


def test_the_recording_professional_out_of_care_cannot_withdraw(world: TestClient) -> None:
    decide(world, GP)
    app: Any = world.app
    with writer(app.state.engine).begin() as conn:
        consent.block(conn, app.state.fhir, KID, "kid", "gp", utcnow())
    with pytest.raises(minors.MinorError):
        withdraw(world, GP)
    with app.state.engine.connect() as conn:
        assert minors.autonomy_of(conn, "kid") is not None


def test_the_decision_lapses_at_18(world: TestClient) -> None:
    """The Consent says until when (the 18th birthday), and an adult's status no longer shows it."""
    app: Any = world.app
    now = utcnow()
    decide(world, GP)
    with app.state.engine.connect() as conn:
        decision = minors.autonomy_of(conn, "kid")
        assert decision is not None
        birth = minors.birth_date(conn, "kid")
        assert birth is not None
        adult_day = minors.majority_date(birth)
        assert minors.status(conn, "kid", adult_day - timedelta(days=1)).autonomy == decision
        grown = minors.status(conn, "kid", adult_day + timedelta(hours=1))
        assert not grown.minor and grown.autonomy is None and grown.objection_since is None
    stored = world.get(f"/fhir/Consent/{decision.consent_id}").json()
    assert stored["provision"]["period"]["end"].startswith(adult_day.date().isoformat())
    assert adult_day > now
    assert minors.majority_date(datetime(2008, 2, 29)) == datetime(2026, 3, 1)


# -- a refusal says nothing about the patient ----------------------------------------------------------
COLLEAGUE = Principal(
    PrincipalKind.PROFESSIONAL,
    "acct-col",
    display="Dr Colleague",
    practitioner_id="colleague",
    profession="med",
)
STATES = ("kid", "turns-18-tomorrow", "mum", "nobirth")
"""A minor acting alone (once ``decide``d), a minor who does not, an adult, no birth date."""


def rights_rows(client: TestClient) -> tuple[Any, ...]:
    """Everything a change of a minor's rights writes: the decisions, the objections, the
    Consents (with their versions) and the access-rights audit records."""
    app: Any = client.app
    with app.state.engine.connect() as conn:
        return (
            conn.execute(select(minor_autonomy).order_by(minor_autonomy.c.id)).all(),
            conn.execute(select(minor_objection).order_by(minor_objection.c.id)).all(),
            conn.execute(
                select(resource.c.id, resource.c.version)
                .where(resource.c.type == "Consent")
                .order_by(resource.c.id)
            ).all(),
            sorted(
                e.record.interaction or ""
                for patient in STATES
                for e in audit.query(
                    conn, patient_id=patient, actions=[audit.AuditAction.CONSENT_CHANGE], limit=1000
                )
            ),
        )


def refusal(client: TestClient, change: Callable[[], None]) -> str:
    """The message of a refused change, which must have changed nothing."""
    before = rights_rows(client)
    with pytest.raises(minors.MinorError) as refused:
        change()
    assert rights_rows(client) == before
    return str(refused.value)


@pytest.fixture
def colleague(world: TestClient) -> TestClient:
    """Another doctor in the care of every record of ``STATES``: in care, but not the author."""
    app: Any = world.app
    put_all(world, {"resourceType": "Practitioner", "id": "colleague", "active": True})
    with writer(app.state.engine).begin() as conn:
        for patient in STATES:
            add_care(conn, f"colleague-{patient}", patient, "colleague", utcnow())
    with app.state.engine.connect() as conn:
        assert all(minors.in_care(conn, app.state.policy, COLLEAGUE, p, utcnow()) for p in STATES)
        assert not any(minors.in_care(conn, app.state.policy, STRANGER, p, utcnow()) for p in STATES)
    return world


def test_a_refused_withdrawal_is_the_same_whatever_the_patient(colleague: TestClient) -> None:
    world = colleague
    decide(world, GP)
    messages = {
        (who.practitioner_id, patient): refusal(
            world, lambda who=who, patient=patient: withdraw(world, who, patient)
        )
        for who in (STRANGER, COLLEAGUE)
        for patient in STATES
    }
    assert set(messages.values()) == {minors.WITHDRAWAL_REFUSED}, messages
    # the same for an adult whose decision, taken while a minor, lapsed at 18
    app: Any = world.app
    with app.state.engine.connect() as conn:
        birth = minors.birth_date(conn, "kid")
    assert birth is not None
    grown = minors.majority_date(birth) + timedelta(days=1)
    for who in (STRANGER, COLLEAGUE):

        def late(who: Principal = who) -> None:
            with writer(app.state.engine).begin() as conn:
                minors.withdraw_autonomy(conn, app.state.fhir, app.state.policy, who, "kid", grown)

        assert refusal(world, late) == minors.WITHDRAWAL_REFUSED
    # the author of the decision, in the minor's care, has the right: told the state precisely
    withdraw(world, GP)
    assert refusal(world, lambda: withdraw(world, GP)) == "This minor does not exercise their rights alone"
    assert refusal(world, lambda: withdraw(world, COLLEAGUE)) == minors.WITHDRAWAL_REFUSED


def test_refused_records_and_objections_are_the_same_whatever_the_patient(colleague: TestClient) -> None:
    """Recording and objecting check the caller's right first too: one message per refusal."""
    world = colleague
    decide(world, GP)
    recorded = {refusal(world, lambda p=p: decide(world, STRANGER, p)) for p in STATES}
    assert recorded == {"Only a professional taking part in the care of this minor can record this decision"}
    app: Any = world.app
    for change in (minors.object_to_parents, minors.allow_parents):
        for who in (MUM, STRANGER, Principal(PrincipalKind.PATIENT, "acct-other", patient_id="other")):
            messages = set()
            for patient in STATES:

                def attempt(change: Any = change, who: Principal = who, patient: str = patient) -> None:
                    with writer(app.state.engine).begin() as conn:
                        change(conn, app.state.fhir, who, patient, utcnow())

                messages.add(refusal(world, attempt))
            assert messages == {"Only the minor themselves can object to their parents' access"}
