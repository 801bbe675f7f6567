"""Minors (§A.7): the parents act for them, until a professional admits the minor to act alone.

The law of 24 July 2014 (art. 13) has the parents (or the legal representative) exercise a
minor's rights, and lets the treating provider admit a minor with sufficient discernment to
exercise them alone; unless that minor objects, the provider may share with the parents. It sets
no age: the platform therefore records a **decision by a professional** taking part in the
minor's care, never an age rule. Majority (18, Civil Code) is the only age the platform knows.

- ``record_autonomy``: the professional's decision, dated and signed, as a FHIR ``Consent`` in
  the minor's record and a ``minor_autonomy`` row. A Consent, because the decision is about who
  exercises the privacy rights over the record: ``scope`` ``patient-privacy`` (the scope of every
  other choice about the record), ``provision.actor`` the minor (role ``PAT``) with the action
  ``access``, ``performer`` the professional who made the decision, ``dateTime`` its date, and
  ``policyRule`` our ``minor-autonomy`` code. An Observation would record a clinical finding
  (the discernment) rather than its consequence on the rights; Basic would be opaque to other
  systems.
- ``object_to_parents`` / ``allow_parents``: the autonomous minor, personally, objects to their
  parents' access and withdraws the objection. The delegations stay as they are (nothing is
  deleted): ``representation_in_force`` suspends, while the objection stands, every delegation
  held by a parent or guardian of the record, so the parents read nothing of it by any path
  (API, portal, access log, e-mails) and change none of its choices. Every reader of
  delegations applies that condition: ``policy`` (``_holder_filter``, ``holder_patients``),
  ``consent._require_holder``, the portal's record list and the e-mail recipients. Each change
  is a Consent (``deny``, actors the parents and the legal representative) and an audit record
  ``CONSENT_CHANGE``.
- ``withdraw_autonomy``: the decision is withdrawn by the professional who recorded it (a
  mistake, or the minor's discernment reassessed), while in the minor's care, or by the minor,
  personally (handing the exercise of the rights back to the parents). Nothing is deleted: the
  row is dated ``withdrawn_at``, its Consent made ``inactive`` (with the professional's reason);
  a standing objection to the parents ends with it (only an autonomous minor may object), so the
  parents' delegations count again at once. A new decision may be recorded later.
- Every change checks the caller's right before reading anything about the patient, and refuses
  every caller without it in one same message, so that a refusal never tells whether the patient
  is a minor, or acts alone; the state messages are for those with the right. Changes of one
  record are serialised (``_lock_key``).
- At 18 a parent's delegation ends by itself: ``representation_in_force`` compares the birth
  date of the holder's ``Patient`` with the clock of the statement that reads it, so the end is
  exact to the day without a scheduled job. A guardian's delegation is left alone at 18 (a
  guardian may also be appointed for a protected adult); a minor's objection lapses at 18, and so
  does the autonomy decision: its Consent's ``provision.period`` ends on the 18th birthday, and
  ``status`` no longer reports it for an adult (the adult exercises their rights as any holder).

Activation of an account does not look at age (``identity.accounts``): an autonomous minor
activates and uses their own account as holder like anyone else.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    FromClause,
    and_,
    exists,
    func,
    literal_column,
    or_,
    select,
    update,
)

from sharedcare.access import care, consent
from sharedcare.access.models import delegation, minor_autonomy, minor_objection
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.fhir.service import FhirService, serialize
from sharedcare.storage.tables import idx_date, resource

if TYPE_CHECKING:
    from sharedcare.access.policy import AccessPolicy

MAJORITY = 18
"""Age of majority (Civil Code): a parent's delegation ends on the holder's 18th birthday."""
MINOR_REPRESENTATIVES = ("parent", "guardian")
"""The parents and the legal representative: a minor's objection suspends their delegations, and
every other delegation their accounts hold to the record."""
AUTONOMY = "minor-autonomy"
OBJECTION = "minor-objection"
WITHDRAWAL_REASON = "https://sharedcare.lu/fhir/StructureDefinition/withdrawal-reason"
"""Extension of a withdrawn decision's Consent: why the professional withdrew it."""
_ROLE_CLASS = "http://terminology.hl7.org/CodeSystem/v3-RoleClass"
_ACCESS = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}

# own aliases: the condition is nested in statements that read ``resource`` themselves
_PR = resource.alias("mnr_r")
_PD = idx_date.alias("mnr_d")
_MO = minor_objection.alias("mnr_o")
_D2 = delegation.alias("mnr_p")
_ONE: ColumnElement[int] = literal_column("1")


WITHDRAWAL_REFUSED = (
    "Only the professional who recorded this decision, while taking part in the minor's care, "
    "or the minor themselves can withdraw it"
)
"""The one refusal of a withdrawal to a caller without the right: it says nothing of the patient."""


class MinorError(Exception):
    """A decision about a minor that cannot be taken; the message is for the user."""


def _lock_key(patient_id: str) -> str:
    """Key serialising the changes of one record's minor decisions (``fhir.service.serialize``):
    two parallel requests could otherwise record two decisions or two objections."""
    return f"minor-rights/{patient_id}"


@dataclass(frozen=True, slots=True)
class Autonomy:
    """The decision that a minor exercises their rights alone."""

    id: str
    patient_id: str
    practitioner_id: str
    organization_id: str | None
    decided_at: datetime
    consent_id: str | None


@dataclass(frozen=True, slots=True)
class MinorStatus:
    """What the pages show about a record's holder as a minor."""

    birth: datetime | None
    """Start of the birth date in the holder's ``Patient`` (None: unknown)."""
    minor: bool
    """Under 18 by that birth date (False when it is unknown)."""
    autonomy: Autonomy | None
    objection_since: datetime | None
    """The minor objects to their parents' access since then (None: no objection)."""


# -- age ----------------------------------------------------------------------------------------------
def majority_threshold(now: datetime) -> datetime:
    """Birth dates at or before this instant are those of adults at ``now``: 18 years before
    (from a 29 February, the 28th; so in other years someone born on 29 February comes of age
    on 1 March)."""
    try:
        return now.replace(year=now.year - MAJORITY)
    except ValueError:
        return now.replace(year=now.year - MAJORITY, day=28)


def _birth_rows(patient_id: Any) -> list[ColumnElement[bool]]:
    """The birth date index rows of the live ``Patient`` ``patient_id`` (a column or a value).

    The start of the date is used (a birth date given as a year alone counts from 1 January)."""
    return [
        _PR.c.type == "Patient",
        _PR.c.id == patient_id,
        _PR.c.deleted.is_(False),
        _PD.c.res_pk == _PR.c.pk,
        _PD.c.rtype == "Patient",
        _PD.c.param == "birthdate",
    ]


def adult(patient_id: ColumnElement[str], now: datetime) -> ColumnElement[bool]:
    """SQL: the holder ``patient_id`` is 18 or older at ``now`` by their recorded birth date."""
    return exists(
        select(_ONE)
        .select_from(_PR, _PD)
        .where(*_birth_rows(patient_id), _PD.c.low <= majority_threshold(now))
    )


def delegation_in_force(d: FromClause, now: datetime) -> ColumnElement[bool]:
    """SQL on ``delegation`` rows ``d``: the delegation lets its account act for the holder now
    (started, not ended, not revoked, and ``representation_in_force``). Every check of a
    representative's right goes through this one condition."""
    return and_(
        d.c.starts <= now,
        or_(d.c.ends.is_(None), d.c.ends > now),
        d.c.revoked_at.is_(None),
        representation_in_force(d, now),
    )


def representation_in_force(d: FromClause, now: datetime) -> ColumnElement[bool]:
    """SQL on ``delegation`` rows ``d``: the part of a delegation's validity that depends on the
    holder being a minor (that it is started, not ended and not revoked is the caller's part).

    A parent's delegation holds only while the holder is under 18. While a minor holder objects
    to their parents' access, every delegation held by a parent or guardian of the record is
    suspended, whatever its kind (a parent cannot come back as the minor's assistant); the
    minor's objection lapses at 18."""
    grown = adult(d.c.patient_id, now)
    objected = exists(
        select(_ONE).select_from(_MO).where(_MO.c.patient_id == d.c.patient_id, _MO.c.removed_at.is_(None))
    )
    parental = or_(
        d.c.kind.in_(MINOR_REPRESENTATIVES),
        exists(
            select(_ONE)
            .select_from(_D2)
            .where(
                _D2.c.patient_id == d.c.patient_id,
                _D2.c.account_id == d.c.account_id,
                _D2.c.kind.in_(MINOR_REPRESENTATIVES),
            )
        ),
    )
    return and_(or_(d.c.kind != "parent", ~grown), or_(~objected, grown, ~parental))


def majority_date(birth: datetime) -> datetime:
    """The 18th birthday (from a 29 February, 1 March), as ``majority_threshold`` counts it."""
    try:
        return birth.replace(year=birth.year + MAJORITY)
    except ValueError:
        return birth.replace(year=birth.year + MAJORITY, month=3, day=1)


def birth_date(conn: Connection, patient_id: str) -> datetime | None:
    """The start of the holder's recorded birth date, as the access decision reads it."""
    found: datetime | None = conn.execute(
        select(func.min(_PD.c.low)).select_from(_PR, _PD).where(*_birth_rows(patient_id))
    ).scalar()
    return found


# -- reading --------------------------------------------------------------------------------------------
def autonomy_of(conn: Connection, patient_id: str) -> Autonomy | None:
    """The decision in force that the holder acts alone (not withdrawn), if one was recorded."""
    a = minor_autonomy
    row = conn.execute(
        select(a)
        .where(a.c.patient_id == patient_id, a.c.withdrawn_at.is_(None))
        .order_by(a.c.decided_at)
        .limit(1)
    ).first()
    if row is None:
        return None
    return Autonomy(
        row.id, row.patient_id, row.practitioner_id, row.organization_id, row.decided_at, row.consent_id
    )


def _objection(conn: Connection, patient_id: str) -> Any:
    o = minor_objection
    return conn.execute(
        select(o.c.id, o.c.created, o.c.consent_id).where(
            o.c.patient_id == patient_id, o.c.removed_at.is_(None)
        )
    ).first()


def status(conn: Connection, patient_id: str, now: datetime) -> MinorStatus:
    """The holder's birth date, whether they are a minor, act alone, and object to their parents
    (the decision and the objection lapse at 18: an adult's status reports neither)."""
    birth = birth_date(conn, patient_id)
    minor = birth is not None and birth > majority_threshold(now)
    if not minor:
        return MinorStatus(birth, minor, None, None)
    objection = _objection(conn, patient_id)
    return MinorStatus(
        birth, minor, autonomy_of(conn, patient_id), objection.created if objection is not None else None
    )


# -- the professional's decision ---------------------------------------------------------------------
def in_care(conn: Connection, policy: AccessPolicy, who: Principal, patient_id: str, now: datetime) -> bool:
    """``who`` takes part in the holder's care: a professional whose care relationship (not an
    emergency override) lets them write into the record now, by the access decision."""
    from sharedcare.access.policy import IDENTITY, OVERRIDE

    if who.kind is not PrincipalKind.PROFESSIONAL or not who.practitioner_id or not who.profession:
        return False
    allowed = policy.writable_patients(who, IDENTITY, now).subquery()
    if conn.execute(select(allowed.c.patient_id).where(allowed.c.patient_id == patient_id)).first() is None:
        return False
    return any(
        r.active(now)
        and r.context != OVERRIDE
        and (
            r.practitioner_id == who.practitioner_id
            or (r.practitioner_id is None and r.organization_id and r.organization_id == who.organization_id)
        )
        for r in care.of_patient(conn, patient_id, now)
    )


def record_autonomy(
    conn: Connection, fhir: FhirService, policy: AccessPolicy, who: Principal, patient_id: str, now: datetime
) -> str:
    """A professional in the minor's care records that the minor exercises their rights alone."""
    if not in_care(conn, policy, who, patient_id, now):
        raise MinorError("Only a professional taking part in the care of this minor can record this decision")
    serialize(conn, _lock_key(patient_id))
    current = status(conn, patient_id, now)
    if not current.minor:
        raise MinorError("This decision is only for a minor whose date of birth is in the record")
    if current.autonomy is not None:
        raise MinorError("This minor already exercises their rights alone")
    assert who.practitioner_id is not None and current.birth is not None
    minor = consent.actor(_ROLE_CLASS, "PAT", {"reference": f"Patient/{patient_id}"})
    decision = consent.fhir_consent(
        patient_id,
        AUTONOMY,
        "permit",
        now,
        actors=[minor],
        actions=[_ACCESS],
        ends=majority_date(current.birth),
        performer=f"Practitioner/{who.practitioner_id}",
        organization_id=who.organization_id,
    )
    consent_id = consent.write_consent(conn, fhir, decision)
    decision_id = uuid.uuid4().hex
    conn.execute(
        minor_autonomy.insert().values(
            id=decision_id,
            patient_id=patient_id,
            practitioner_id=who.practitioner_id,
            organization_id=who.organization_id,
            decided_at=now,
            consent_id=consent_id,
        )
    )
    consent.audit_change(conn, who, patient_id, "minor-autonomy", consent_id)
    return decision_id


def withdraw_autonomy(
    conn: Connection,
    fhir: FhirService,
    policy: AccessPolicy,
    who: Principal,
    patient_id: str,
    now: datetime,
    reason: str = "",
) -> None:
    """Withdraw the decision in force: by the professional who recorded it, while in the minor's
    care, or by the minor personally. A standing objection to the parents ends with it. The
    ``reason`` (the portal asks the professional for one) is kept in the inactive Consent.

    The caller's right is checked before anything about the patient: every caller without it gets
    ``WITHDRAWAL_REFUSED``, whether the patient is an adult, a minor or a minor acting alone."""
    by = _withdrawer(conn, policy, who, patient_id, now)
    if by is None:
        raise MinorError(WITHDRAWAL_REFUSED)
    serialize(conn, _lock_key(patient_id))
    current = status(conn, patient_id, now)
    if not current.minor:
        raise MinorError("This patient is no longer a minor by the date of birth in the record")
    decision = current.autonomy
    if decision is None:
        raise MinorError("This minor does not exercise their rights alone")
    conn.execute(
        update(minor_autonomy)
        .where(minor_autonomy.c.id == decision.id)
        .values(withdrawn_at=now, withdrawn_by=by)
    )
    _end_decision(conn, fhir, decision.consent_id, reason.strip())
    consent.audit_change(conn, who, patient_id, "withdraw-minor-autonomy", decision.consent_id)
    objection = _objection(conn, patient_id)
    if objection is not None:
        conn.execute(
            update(minor_objection).where(minor_objection.c.id == objection.id).values(removed_at=now)
        )
        consent.deactivate_consent(conn, fhir, objection.consent_id)
        consent.audit_change(conn, who, patient_id, "allow-parents", objection.consent_id)


def _withdrawer(
    conn: Connection, policy: AccessPolicy, who: Principal, patient_id: str, now: datetime
) -> str | None:
    """Who ``who`` withdraws as (``minor``, ``professional``), None when they may not.

    The professional's right is that of the author of the latest decision recorded for the
    patient (the one in force, else the last withdrawn: its author re-sending a withdrawal is told
    why nothing happens), while in the patient's care; it reveals nothing to anyone else."""
    if who.kind is PrincipalKind.PATIENT and who.patient_id == patient_id and not who.acting_for:
        return "minor"
    if who.kind is not PrincipalKind.PROFESSIONAL or not who.practitioner_id:
        return None
    a = minor_autonomy
    author = conn.execute(
        select(a.c.practitioner_id)
        .where(a.c.patient_id == patient_id)
        .order_by(a.c.withdrawn_at.is_(None).desc(), a.c.decided_at.desc())
        .limit(1)
    ).scalar()
    if author != who.practitioner_id or not in_care(conn, policy, who, patient_id, now):
        return None
    return "professional"


def _end_decision(conn: Connection, fhir: FhirService, consent_id: str | None, reason: str) -> None:
    """The decision's Consent made ``inactive`` in one new version, with the professional's
    reason as an extension (R4 ``Consent`` has no element for it)."""
    if not reason or not consent_id:
        consent.deactivate_consent(conn, fhir, consent_id)
        return
    svc = fhir.for_session(None)
    current = svc.store.current(conn, "Consent", consent_id)
    if current is None or current.deleted:
        return
    res = current.resource()
    res["status"] = "inactive"
    res["extension"] = [*res.get("extension", []), {"url": WITHDRAWAL_REASON, "valueString": reason}]
    svc.update_in(conn, "Consent", consent_id, res)


# -- the minor's objection ---------------------------------------------------------------------------
def _require_autonomous_minor(conn: Connection, who: Principal, patient_id: str, now: datetime) -> None:
    """Only the minor, personally (not a representative), and only once admitted to act alone."""
    if who.kind is not PrincipalKind.PATIENT or who.patient_id != patient_id or who.acting_for:
        raise MinorError("Only the minor themselves can object to their parents' access")
    serialize(conn, _lock_key(patient_id))
    current = status(conn, patient_id, now)
    if not current.minor or current.autonomy is None:
        raise MinorError(
            "Only a minor whom a professional has admitted to exercise their rights alone can object "
            "to their parents' access"
        )


def object_to_parents(
    conn: Connection, fhir: FhirService, who: Principal, patient_id: str, now: datetime
) -> str:
    """The autonomous minor objects to their parents' access: their delegations are suspended."""
    _require_autonomous_minor(conn, who, patient_id, now)
    if _objection(conn, patient_id) is not None:
        raise MinorError("You already object to your parents' access")
    parents = [
        consent.actor(consent.ROLE_CODE, code, {"display": display})
        for code, display in (("PRN", "parents"), ("GUARD", "legal representative"))
    ]
    objection = consent.fhir_consent(
        patient_id,
        OBJECTION,
        "deny",
        now,
        actors=parents,
        actions=[_ACCESS],
        performer=f"Patient/{patient_id}",
    )
    consent_id = consent.write_consent(conn, fhir, objection)
    objection_id = uuid.uuid4().hex
    conn.execute(
        minor_objection.insert().values(
            id=objection_id, patient_id=patient_id, created=now, consent_id=consent_id
        )
    )
    consent.audit_change(conn, who, patient_id, "object-to-parents", consent_id)
    return objection_id


def allow_parents(
    conn: Connection, fhir: FhirService, who: Principal, patient_id: str, now: datetime
) -> None:
    """The minor withdraws the objection: the parents' delegations count again (if still valid)."""
    _require_autonomous_minor(conn, who, patient_id, now)
    row = _objection(conn, patient_id)
    if row is None:
        raise MinorError("You do not object to your parents' access")
    conn.execute(update(minor_objection).where(minor_objection.c.id == row.id).values(removed_at=now))
    consent.deactivate_consent(conn, fhir, row.consent_id)
    consent.audit_change(conn, who, patient_id, "allow-parents", row.consent_id)
