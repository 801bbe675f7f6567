"""Representatives as FHIR (§A.7), on both databases: each delegation is a RelatedPerson in the
holder's record and a Consent whose actor references it; a DSP assistant needs an end and a legal
basis, a parent's delegation ends on the child's 18th birthday; refused appointments change
nothing; the agency registers parents and guardians and ends delegations, and reads no record."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from sharedcare.access import consent, minors
from sharedcare.access.models import delegation
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit import log as audit
from sharedcare.fhir.store import utcnow
from sharedcare.identity import accounts
from sharedcare.identity.matricule import MATRICULE_SYSTEM, generate
from sharedcare.storage.engine import writer
from support import bearer, put_all

HOLDER = Principal(PrincipalKind.PATIENT, "acct-anna", display="Anna", patient_id="anna")
ADMIN = Principal(PrincipalKind.ADMIN, "acct-admin", display="Agency admin")
HELPDESK = Principal(PrincipalKind.HELPDESK, "acct-help", display="Helpdesk")
STRANGER = Principal(PrincipalKind.PATIENT, "acct-x", patient_id="someone-else")
BASIS = "signed appointment of 2026-01-10"
MARC_MATRICULE = generate(date(1978, 3, 4), 5)


def _birth(now: datetime, years: int) -> str:
    return (minors.majority_threshold(now).date() + timedelta(days=365 * (18 - years))).isoformat()


@pytest.fixture
def world(client: TestClient) -> TestClient:
    """Anna (adult, holder), her son Leo (10), an account for Leo's father with a matricule."""
    now = utcnow()
    put_all(
        client,
        {"resourceType": "Patient", "id": "anna", "birthDate": "1980-05-06"},
        {"resourceType": "Patient", "id": "leo", "birthDate": _birth(now, 10)},
        {
            "resourceType": "Observation",
            "id": "leo-lab",
            "status": "final",
            "code": {"text": "Glucose"},
            "subject": {"reference": "Patient/leo"},
        },
    )
    app: Any = client.app
    with accounts.transaction(app.state.engine) as conn:
        accounts.create_account(
            conn,
            PrincipalKind.REPRESENTATIVE,
            display_name="Marc Weber",
            matricule=MARC_MATRICULE,
        )
    return client


def _marc(client: TestClient) -> str:
    """The id of Marc's account (created by the agency, so chosen by the platform)."""
    app: Any = client.app
    with app.state.engine.connect() as conn:
        found = accounts.find_by_login(conn, MARC_MATRICULE)
    assert found is not None
    return found.id


def _appoint(client: TestClient, who: Principal, patient: str, account: str, kind: str, **kw: Any) -> str:
    """``consent.appoint`` now; ``account`` "marc" means Marc's account."""
    app: Any = client.app
    account = _marc(client) if account == "marc" else account
    with writer(app.state.engine).begin() as conn:
        return consent.appoint(conn, app.state.fhir, who, patient, account, kind, utcnow(), **kw)


def _resource(client: TestClient, ref: str) -> dict[str, Any]:
    resp = client.get(f"/fhir/{ref}")  # as the trusted client
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _row(client: TestClient, delegation_id: str) -> Any:
    app: Any = client.app
    with app.state.engine.connect() as conn:
        return conn.execute(select(delegation).where(delegation.c.id == delegation_id)).one()


def _counts(client: TestClient) -> tuple[int, int, int]:
    """Delegations, Consents and RelatedPersons stored: a refused appointment changes none."""
    app: Any = client.app
    with app.state.engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(delegation)).scalar_one()
    consents = client.get("/fhir/Consent?_summary=count").json()["total"]
    related = client.get("/fhir/RelatedPerson?_summary=count").json()["total"]
    return rows, consents, related


def test_an_assistant_is_a_related_person_and_a_consent_naming_it(world: TestClient) -> None:
    ends = utcnow() + timedelta(days=90)
    delegation_id = _appoint(world, HOLDER, "anna", "marc", "assistant", ends=ends, legal_basis=BASIS)
    row = _row(world, delegation_id)
    assert row.related_person_id and row.legal_basis == BASIS and row.ends == ends
    person = _resource(world, f"RelatedPerson/{row.related_person_id}")
    assert person["patient"] == {"reference": "Patient/anna"} and person["active"] is True
    assert person["relationship"][0]["coding"][0] == {
        "system": consent.REPRESENTATIVE_ROLE,
        "code": "dsp-assistant",
        "display": "DSP assistant",
    }
    systems = {i["system"]: i["value"] for i in person["identifier"]}
    assert systems[consent.ACCOUNT_SYSTEM] == _marc(world) and MATRICULE_SYSTEM in systems
    assert person["name"] == [{"text": "Marc Weber"}]
    stored = _resource(world, f"Consent/{row.consent_id}")
    [actor] = stored["provision"]["actor"]
    assert actor["reference"] == {"reference": f"RelatedPerson/{row.related_person_id}"}
    assert actor["role"]["coding"][0]["code"] == "dsp-assistant"
    assert stored["provision"]["period"]["end"].startswith(ends.date().isoformat())
    assert stored["policyRule"]["coding"][0]["code"] == "delegation-assistant"
    # the assistant acts for Anna, as the holder (the access decision reads the delegation row)
    rep = Principal(PrincipalKind.REPRESENTATIVE, _marc(world))
    assert world.get("/fhir/Patient/anna", headers=bearer(world.app, rep, "user/*.cruds")).status_code == 200


def test_a_trusted_person_acts_for_the_holder_until_the_end_set(world: TestClient) -> None:
    """A trusted person (§A.7) needs no legal basis; the delegation is a RelatedPerson "next of
    kin" and a Consent naming it; with its end past, the trusted person reads nothing."""
    ends = utcnow() + timedelta(days=30)
    delegation_id = _appoint(world, HOLDER, "anna", "marc", "trusted", ends=ends)
    row = _row(world, delegation_id)
    person = _resource(world, f"RelatedPerson/{row.related_person_id}")
    assert person["relationship"][0]["coding"][0]["code"] == "NOK"
    stored = _resource(world, f"Consent/{row.consent_id}")
    assert stored["provision"]["actor"][0]["reference"] == {
        "reference": f"RelatedPerson/{row.related_person_id}"
    }
    assert stored["policyRule"]["coding"][0]["code"] == "delegation-trusted"
    rep = Principal(PrincipalKind.REPRESENTATIVE, _marc(world))
    headers = bearer(world.app, rep, "user/*.cruds")
    assert world.get("/fhir/Patient/anna", headers=headers).status_code == 200
    assert world.get("/fhir/Patient/leo", headers=headers).status_code == 404  # Anna's record only
    app: Any = world.app
    with writer(app.state.engine).begin() as conn:
        conn.execute(delegation.update().where(delegation.c.id == delegation_id).values(ends=utcnow()))
    assert world.get("/fhir/Patient/anna", headers=headers).status_code == 404


def test_an_assistant_needs_an_end_and_a_legal_basis_and_refusals_change_nothing(world: TestClient) -> None:
    before = _counts(world)
    later = utcnow() + timedelta(days=30)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"legal_basis": BASIS}, "give the end date"),
        ({"ends": later}, "legal basis"),
        ({"ends": later, "legal_basis": "   "}, "legal basis"),
        ({"ends": utcnow() - timedelta(days=1), "legal_basis": BASIS}, "in the future"),
    ]
    for kw, message in cases:
        with pytest.raises(consent.ChoiceError, match=message):
            _appoint(world, HOLDER, "anna", "marc", "assistant", **kw)
    with pytest.raises(consent.ChoiceError, match="Only the holder"):
        _appoint(world, STRANGER, "anna", "marc", "assistant", ends=later, legal_basis=BASIS)
    assert _counts(world) == before


def test_a_parents_delegation_ends_on_the_childs_18th_birthday(world: TestClient) -> None:
    app: Any = world.app
    delegation_id = _appoint(world, ADMIN, "leo", "marc", "parent", legal_basis="birth certificate")
    row = _row(world, delegation_id)
    with app.state.engine.connect() as conn:
        birth = minors.birth_date(conn, "leo")
    assert birth is not None
    majority = minors.majority_date(birth)
    # the row keeps no end of its own (the decision follows the record's birth date); the Consent states it
    assert row.ends is None
    stored = _resource(world, f"Consent/{row.consent_id}")
    assert stored["provision"]["period"]["end"].startswith(majority.date().isoformat())
    person = _resource(world, f"RelatedPerson/{row.related_person_id}")
    assert person["relationship"][0]["coding"][0]["code"] == "PRN"
    with pytest.raises(consent.ChoiceError, match="18th birthday"):
        _appoint(world, ADMIN, "leo", "marc", "parent", ends=majority + timedelta(days=1))
    with pytest.raises(consent.ChoiceError, match="only a minor"):
        _appoint(world, ADMIN, "anna", "marc", "parent")
    # an earlier end is allowed: it is the row's own end
    shorter = utcnow() + timedelta(days=10)
    assert _row(world, _appoint(world, ADMIN, "leo", "marc", "parent", ends=shorter)).ends == shorter


def test_the_same_account_reuses_its_related_person_which_ends_with_the_last_delegation(
    world: TestClient,
) -> None:
    app: Any = world.app
    first = _appoint(world, ADMIN, "leo", "marc", "parent", legal_basis="birth certificate")
    second = _appoint(world, ADMIN, "leo", "marc", "guardian", legal_basis="court decision 12/2026")
    rp = _row(world, first).related_person_id
    assert _row(world, second).related_person_id == rp
    codes = {c["code"] for r in _resource(world, f"RelatedPerson/{rp}")["relationship"] for c in r["coding"]}
    assert codes == {"PRN", "GUARD"}
    with writer(app.state.engine).begin() as conn:
        consent.remove_delegation(conn, app.state.fhir, ADMIN, first, utcnow())
    assert _resource(world, f"RelatedPerson/{rp}")["active"] is True  # the guardian's still names it
    with writer(app.state.engine).begin() as conn:
        consent.remove_delegation(conn, app.state.fhir, ADMIN, second, utcnow())
    assert _resource(world, f"RelatedPerson/{rp}")["active"] is False
    assert _resource(world, f"Consent/{_row(world, second).consent_id}")["status"] == "inactive"
    with app.state.engine.connect() as conn:
        assert consent.representations(conn, patient_id="leo", now=utcnow()) == []
        changes = audit.query(conn, patient_id="leo", actions=[audit.AuditAction.CONSENT_CHANGE])
    assert {(e.record.principal_kind, e.record.interaction) for e in changes} >= {
        ("admin", f"appoint parent account {_marc(world)}"),
        ("admin", f"remove guardian account {_marc(world)}"),
    }
    # a new delegation brings the same RelatedPerson back to active
    again = _appoint(world, ADMIN, "leo", "marc", "parent", legal_basis="birth certificate")
    assert _row(world, again).related_person_id == rp
    assert _resource(world, f"RelatedPerson/{rp}")["active"] is True


def test_the_agency_registers_only_parents_and_guardians_and_staff_read_no_record(world: TestClient) -> None:
    later = utcnow() + timedelta(days=30)
    with pytest.raises(consent.ChoiceError, match="only parents and guardians"):
        _appoint(world, ADMIN, "anna", "marc", "assistant", ends=later, legal_basis=BASIS)
    with pytest.raises(consent.ChoiceError, match="Only the holder"):
        _appoint(world, HELPDESK, "leo", "marc", "parent")
    _appoint(world, ADMIN, "leo", "marc", "parent", legal_basis="birth certificate")
    for staff in (ADMIN, HELPDESK):
        h = bearer(world.app, staff, "user/*.cruds")
        assert world.get("/fhir/Observation/leo-lab", headers=h).status_code == 404
        assert world.get("/fhir/Patient/leo", headers=h).status_code == 404
        assert world.get("/fhir/Observation", headers=h).json().get("entry", []) == []
        assert world.get("/fhir/Patient/leo/$everything", headers=h).status_code == 404
    # the parent, registered by the agency, reads the child's record
    parent = bearer(world.app, Principal(PrincipalKind.REPRESENTATIVE, _marc(world)), "user/*.cruds")
    assert world.get("/fhir/Observation/leo-lab", headers=parent).status_code == 200
