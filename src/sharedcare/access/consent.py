"""The holder's choices (§A.4, §A.7): permanent grants, blocks, masks, representatives, closure.

Each choice is a FHIR ``Consent`` in the holder's record (versioned, readable, exchangeable)
and a row of the projection the access decision reads; both are written in the caller's
transaction, so they never disagree. Withdrawing a choice makes its Consent ``inactive``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select, update

from sharedcare.access import care, minors
from sharedcare.access.models import access_restriction, care_relationship, delegation, record_status
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit import log as audit
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.store import instant
from sharedcare.identity import accounts
from sharedcare.identity.errors import IdentityError
from sharedcare.identity.matricule import MATRICULE_SYSTEM
from sharedcare.settings import Settings

CONSENT_SCOPE = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
}
CONSENT_CATEGORY = [
    {"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}
]
CHOICE_SYSTEM = "https://sharedcare.lu/fhir/CodeSystem/dsp-access-choice"
"""Our code system naming the kind of choice a Consent records."""
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"

DELEGATION_KINDS = ("parent", "guardian", "trusted", "assistant")


class ChoiceError(Exception):
    """A choice that cannot be made; the message is for the holder."""


@dataclass(frozen=True, slots=True)
class Choice:
    """An active choice of the holder as the access page lists it."""

    id: str
    kind: str  # permanent | block | mask | delegation
    practitioner_id: str | None
    resource: str | None
    account_id: str | None
    starts: datetime
    ends: datetime | None
    consent_id: str | None


def fhir_consent(
    patient_id: str,
    kind: str,
    provision_type: str,
    now: datetime,
    *,
    actors: Sequence[dict[str, Any]] = (),
    actions: Sequence[dict[str, Any]] = (),
    data: str | None = None,
    ends: datetime | None = None,
    performer: str | None = None,
    organization_id: str | None = None,
) -> dict[str, Any]:
    """The ``Consent`` of one change of a record's rights, ``kind`` its ``policyRule`` code in
    ``CHOICE_SYSTEM``: the holder's choices here, and those of ``requests`` and ``minors``, are
    all written this one way, so readers and other systems find them alike."""
    provision: dict[str, Any] = {"type": provision_type, "period": {"start": instant(now)}}
    if ends is not None:
        provision["period"]["end"] = instant(ends)
    if actors:
        provision["actor"] = list(actors)
    if actions:
        provision["action"] = list(actions)
    if data is not None:
        provision["data"] = [{"meaning": "instance", "reference": {"reference": data}}]
    res: dict[str, Any] = {
        "resourceType": "Consent",
        "status": "active",
        "scope": CONSENT_SCOPE,
        "category": CONSENT_CATEGORY,
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": instant(now),
    }
    if performer is not None:
        res["performer"] = [{"reference": performer}]
    res["policyRule"] = {"coding": [{"system": CHOICE_SYSTEM, "code": kind}]}
    res["provision"] = provision
    if organization_id:
        res["organization"] = [{"reference": f"Organization/{organization_id}"}]
    return res


def actor(role_system: str, role_code: str, reference: dict[str, str]) -> dict[str, Any]:
    """A ``Consent.provision.actor``: who the choice is about, in the role ``role_code``."""
    return {"role": {"coding": [{"system": role_system, "code": role_code}]}, "reference": reference}


def _practitioner_actor(practitioner_id: str) -> dict[str, Any]:
    return actor(PARTICIPATION_TYPE, "PRCP", {"reference": f"Practitioner/{practitioner_id}"})


def _require_holder(conn: Connection, who: Principal, patient_id: str, now: datetime) -> None:
    """Only the holder or an active representative changes the holder's choices."""
    if who.kind is PrincipalKind.PATIENT and who.patient_id == patient_id:
        return
    d = delegation
    found = conn.execute(
        select(d.c.id).where(
            d.c.account_id == who.subject,
            d.c.patient_id == patient_id,
            minors.delegation_in_force(d, now),
        )
    ).first()
    if found is None:
        raise ChoiceError(
            "Only the holder of the record or their representative can change its access rights"
        )


def audit_change(
    conn: Connection, who: Principal, patient_id: str, what: str, consent_id: str | None = None
) -> None:
    """Every change of a record's rights is in its access log, in the same transaction."""
    audit.append(
        conn,
        audit.record_for(
            who,
            audit.AuditAction.CONSENT_CHANGE,
            patient_id=patient_id,
            interaction=what,
            resources=(f"Consent/{consent_id}",) if consent_id else (),
        ),
    )


def write_consent(conn: Connection, fhir: FhirService, consent: dict[str, Any]) -> str:
    """Store the Consent as the platform (not as the caller: the choice itself was authorised)."""
    return fhir.for_session(None).create_in(conn, consent).stored.id


def deactivate_consent(conn: Connection, fhir: FhirService, consent_id: str | None) -> None:
    """Mark a withdrawn choice's Consent ``inactive`` (kept, versioned: the record's history)."""
    if not consent_id:
        return
    svc = fhir.for_session(None)
    current = svc.store.current(conn, "Consent", consent_id)
    if current is None or current.deleted:
        return
    res = current.resource()
    res["status"] = "inactive"
    svc.update_in(conn, "Consent", consent_id, res)


# -- permanent access -------------------------------------------------------------------------
def grant_permanent(
    conn: Connection, fhir: FhirService, who: Principal, patient_id: str, practitioner_id: str, now: datetime
) -> str:
    """The holder extends a professional's access without end, until revoked."""
    _require_holder(conn, who, patient_id, now)
    consent_id = write_consent(
        conn,
        fhir,
        fhir_consent(patient_id, "permanent", "permit", now, actors=[_practitioner_actor(practitioner_id)]),
    )
    rid = uuid.uuid4().hex
    conn.execute(
        care_relationship.insert().values(
            id=rid,
            patient_id=patient_id,
            practitioner_id=practitioner_id,
            context="permanent",
            starts=now,
            ends=None,
            consent_id=consent_id,
            created_by=who.subject,
        )
    )
    audit_change(conn, who, patient_id, f"grant-permanent Practitioner/{practitioner_id}", consent_id)
    return rid


def revoke_permanent(
    conn: Connection, fhir: FhirService, who: Principal, patient_id: str, practitioner_id: str, now: datetime
) -> int:
    """End every permanent grant of the professional; returns how many were ended."""
    _require_holder(conn, who, patient_id, now)
    cr = care_relationship
    rows = list(
        conn.execute(
            select(cr.c.id, cr.c.consent_id).where(
                cr.c.patient_id == patient_id,
                cr.c.practitioner_id == practitioner_id,
                cr.c.context == "permanent",
                cr.c.revoked_at.is_(None),
            )
        )
    )
    for row in rows:
        care.end(conn, row.id, now)
        deactivate_consent(conn, fhir, row.consent_id)
        audit_change(
            conn, who, patient_id, f"revoke-permanent Practitioner/{practitioner_id}", row.consent_id
        )
    return len(rows)


# -- blocks and masks -----------------------------------------------------------------------------
def block(
    conn: Connection, fhir: FhirService, who: Principal, patient_id: str, practitioner_id: str, now: datetime
) -> str:
    """ "Privé": forbid a named professional the whole record, whatever their relationship."""
    _require_holder(conn, who, patient_id, now)
    if _restriction(conn, patient_id, practitioner_id, "block", None) is not None:
        raise ChoiceError("This professional is already blocked")
    consent_id = write_consent(
        conn,
        fhir,
        fhir_consent(patient_id, "block", "deny", now, actors=[_practitioner_actor(practitioner_id)]),
    )
    audit_change(conn, who, patient_id, f"block Practitioner/{practitioner_id}", consent_id)
    return _insert_restriction(conn, patient_id, practitioner_id, "block", None, consent_id, now)


def unblock(
    conn: Connection, fhir: FhirService, who: Principal, patient_id: str, practitioner_id: str, now: datetime
) -> None:
    _require_holder(conn, who, patient_id, now)
    consent_id = _remove_restriction(conn, fhir, patient_id, practitioner_id, "block", None, now)
    audit_change(conn, who, patient_id, f"unblock Practitioner/{practitioner_id}", consent_id)


def mask(
    conn: Connection,
    fhir: FhirService,
    who: Principal,
    patient_id: str,
    practitioner_id: str,
    reference: str,
    now: datetime,
) -> str:
    """ "Restreint": hide one item of the record from a named professional."""
    _require_holder(conn, who, patient_id, now)
    rtype, _, rid = reference.partition("/")
    owned = fhir.for_session(None).store.current(conn, rtype, rid) if rid else None
    if owned is None:
        raise ChoiceError(f"{reference} is not an item of this record")
    if _restriction(conn, patient_id, practitioner_id, "mask", reference) is not None:
        raise ChoiceError("This item is already hidden from this professional")
    consent_id = write_consent(
        conn,
        fhir,
        fhir_consent(
            patient_id, "mask", "deny", now, actors=[_practitioner_actor(practitioner_id)], data=reference
        ),
    )
    audit_change(conn, who, patient_id, f"hide {reference} from Practitioner/{practitioner_id}", consent_id)
    return _insert_restriction(conn, patient_id, practitioner_id, "mask", reference, consent_id, now)


def unmask(
    conn: Connection,
    fhir: FhirService,
    who: Principal,
    patient_id: str,
    practitioner_id: str,
    reference: str,
    now: datetime,
) -> None:
    _require_holder(conn, who, patient_id, now)
    consent_id = _remove_restriction(conn, fhir, patient_id, practitioner_id, "mask", reference, now)
    audit_change(conn, who, patient_id, f"unhide {reference} from Practitioner/{practitioner_id}", consent_id)


def _restriction(
    conn: Connection, patient_id: str, practitioner_id: str, kind: str, reference: str | None
) -> Any:
    r = access_restriction
    conds = [
        r.c.patient_id == patient_id,
        r.c.practitioner_id == practitioner_id,
        r.c.kind == kind,
        r.c.removed_at.is_(None),
    ]
    if reference is not None:
        rtype, _, rid = reference.partition("/")
        conds += [r.c.resource_type == rtype, r.c.resource_id == rid]
    return conn.execute(select(r.c.id, r.c.consent_id).where(*conds)).first()


def _insert_restriction(
    conn: Connection,
    patient_id: str,
    practitioner_id: str,
    kind: str,
    reference: str | None,
    consent_id: str,
    now: datetime,
) -> str:
    rtype, _, rid = (reference or "").partition("/")
    restriction_id = uuid.uuid4().hex
    conn.execute(
        access_restriction.insert().values(
            id=restriction_id,
            patient_id=patient_id,
            practitioner_id=practitioner_id,
            kind=kind,
            resource_type=rtype or None,
            resource_id=rid or None,
            created=now,
            consent_id=consent_id,
        )
    )
    return restriction_id


def _remove_restriction(
    conn: Connection,
    fhir: FhirService,
    patient_id: str,
    practitioner_id: str,
    kind: str,
    reference: str | None,
    now: datetime,
) -> str | None:
    row = _restriction(conn, patient_id, practitioner_id, kind, reference)
    if row is None:
        raise ChoiceError("There is no such restriction")
    conn.execute(update(access_restriction).where(access_restriction.c.id == row.id).values(removed_at=now))
    deactivate_consent(conn, fhir, row.consent_id)
    consent_id: str | None = row.consent_id
    return consent_id


# -- representatives ------------------------------------------------------------------------------
REPRESENTATIVE_ROLE = "https://sharedcare.lu/fhir/CodeSystem/representative-role"
"""Our code for the DSP assistant, a role no HL7 code system names (guichet.lu, §A.7)."""
ACCOUNT_SYSTEM = "https://sharedcare.lu/fhir/sid/account"
"""Identifier system of platform accounts: links a RelatedPerson to the account that acts."""
_RELATIONSHIPS: dict[str, tuple[str, str, str]] = {
    "parent": (ROLE_CODE, "PRN", "parent"),
    "guardian": (ROLE_CODE, "GUARD", "guardian"),
    "trusted": (ROLE_CODE, "NOK", "next of kin"),
    "assistant": (REPRESENTATIVE_ROLE, "dsp-assistant", "DSP assistant"),
}
"""``RelatedPerson.relationship`` and ``Consent.provision.actor.role`` of each kind."""
AGENCY_KINDS = ("parent", "guardian")
"""What the agency registers for a holder (a minor's parents, a protected adult's tutor); the
assistant and the trusted person are the holder's own choice."""


@dataclass(frozen=True, slots=True)
class Representation:
    """A delegation as the agency's pages list it (no clinical data: who, why, until when)."""

    id: str
    patient_id: str
    account_id: str
    kind: str
    legal_basis: str | None
    starts: datetime
    ends: datetime | None
    related_person_id: str | None
    in_force: bool


def _agency(who: Principal) -> bool:
    """The agency's own acts: its administrators and trusted platform clients."""
    return who.kind is PrincipalKind.ADMIN or (who.kind is PrincipalKind.SYSTEM and who.trusted)


def _delegation_end(
    conn: Connection,
    patient_id: str,
    kind: str,
    now: datetime,
    ends: datetime | None,
    legal_basis: str | None,
) -> tuple[datetime | None, datetime | None]:
    """The end of a new delegation by the rules of its kind, for its row and for its Consent;
    raises ChoiceError with the reason.

    A parent's row keeps no end of its own when none is given: the access decision ends it on the
    18th birthday from the record's birth date (``minors.representation_in_force``), so a
    corrected birth date is followed; the Consent states that date, as other systems read it."""
    if ends is not None and ends <= now:
        raise ChoiceError("The end of the delegation must be in the future")
    if kind == "assistant":
        if ends is None:
            raise ChoiceError("A DSP assistant is appointed for a limited time: give the end date")
        if not legal_basis:
            raise ChoiceError("Give the legal basis of the delegation")
    if kind == "parent":
        birth = minors.birth_date(conn, patient_id)
        if birth is not None:  # unknown birth date: the delegation's own end only (existing rule)
            majority = minors.majority_date(birth)
            if majority <= now:
                raise ChoiceError("A parent represents only a minor: this holder is 18 or older")
            if ends is not None and ends > majority:
                raise ChoiceError("A parent's delegation ends at the latest on the child's 18th birthday")
            return ends, ends or majority
    return ends, ends


def _related_person(
    conn: Connection, fhir: FhirService, patient_id: str, account_id: str, kind: str, given: str | None
) -> str:
    """The RelatedPerson of the representative in the holder's record: ``given``, else the one of
    an earlier delegation of the same account, else a new one; active and with ``kind``'s code."""
    svc = fhir.for_session(None)
    system, code, display = _RELATIONSHIPS[kind]
    coding = {"system": system, "code": code, "display": display}
    candidates = [given] if given else []
    if not given:
        d = delegation
        candidates += [
            r.related_person_id
            for r in conn.execute(
                select(d.c.related_person_id)
                .where(d.c.patient_id == patient_id, d.c.account_id == account_id)
                .where(d.c.related_person_id.is_not(None))
                .order_by(d.c.starts.desc())
            )
        ]
    for rid in candidates:
        current = svc.store.current(conn, "RelatedPerson", rid)
        if current is None or current.deleted:
            continue
        res = current.resource()
        if res.get("patient", {}).get("reference") != f"Patient/{patient_id}":
            continue
        codes = {
            (c.get("system"), c.get("code")) for r in res.get("relationship", []) for c in r.get("coding", [])
        }
        if (system, code) not in codes or res.get("active") is not True:
            if (system, code) not in codes:
                res.setdefault("relationship", []).append({"coding": [coding]})
            res["active"] = True
            svc.update_in(conn, "RelatedPerson", rid, res)
        return rid
    if given:
        raise ChoiceError("This RelatedPerson is not in the holder's record")
    resource: dict[str, Any] = {
        "resourceType": "RelatedPerson",
        "active": True,
        "patient": {"reference": f"Patient/{patient_id}"},
        "relationship": [{"coding": [coding]}],
        "identifier": [{"system": ACCOUNT_SYSTEM, "value": account_id}],
    }
    try:
        account = accounts.get_account(conn, account_id)
    except IdentityError:
        account = None  # an account of an external identity provider: the identifier says who
    if account is not None:
        if account.matricule:
            resource["identifier"].append({"system": MATRICULE_SYSTEM, "value": account.matricule})
        resource["name"] = [{"text": account.display_name}]
    return svc.create_in(conn, resource).stored.id


def appoint(
    conn: Connection,
    fhir: FhirService,
    who: Principal,
    patient_id: str,
    account_id: str,
    kind: str,
    now: datetime,
    *,
    ends: datetime | None = None,
    legal_basis: str | None = None,
    related_person_id: str | None = None,
) -> str:
    """A representative acting on behalf of the holder, for a limited time (§A.7).

    Recorded as FHIR: the representative is a ``RelatedPerson`` of the holder's record (reused
    for the same account) and the delegation a ``Consent`` whose ``provision.actor`` references
    it, plus the ``delegation`` row the access decision reads. A DSP assistant needs an end and
    a legal basis; a parent's delegation ends on the child's 18th birthday at the latest. The
    holder (or their representative) appoints; the agency registers parents and guardians.
    """
    if kind not in DELEGATION_KINDS:
        raise ChoiceError(f"Unknown kind of representative {kind!r}")
    if who.kind is PrincipalKind.ADMIN and kind not in AGENCY_KINDS:
        raise ChoiceError("The agency registers only parents and guardians")
    if not _agency(who):
        _require_holder(conn, who, patient_id, now)
    legal_basis = (legal_basis or "").strip() or None
    ends, consent_ends = _delegation_end(conn, patient_id, kind, now, ends, legal_basis)
    related = _related_person(conn, fhir, patient_id, account_id, kind, related_person_id)
    system, code, _display = _RELATIONSHIPS[kind]
    representative = actor(system, code, {"reference": f"RelatedPerson/{related}"})
    consent_id = write_consent(
        conn,
        fhir,
        fhir_consent(
            patient_id, f"delegation-{kind}", "permit", now, actors=[representative], ends=consent_ends
        ),
    )
    delegation_id = uuid.uuid4().hex
    conn.execute(
        delegation.insert().values(
            id=delegation_id,
            patient_id=patient_id,
            account_id=account_id,
            kind=kind,
            legal_basis=legal_basis,
            starts=now,
            ends=ends,
            consent_id=consent_id,
            related_person_id=related,
        )
    )
    audit_change(conn, who, patient_id, f"appoint {kind} account {account_id}", consent_id)
    return delegation_id


def remove_delegation(
    conn: Connection, fhir: FhirService, who: Principal, delegation_id: str, now: datetime
) -> None:
    """End a delegation (the holder's side, or the agency); its RelatedPerson becomes inactive
    when no other delegation of the record still names it."""
    d = delegation
    row = conn.execute(select(d).where(d.c.id == delegation_id, d.c.revoked_at.is_(None))).first()
    if row is None:
        raise ChoiceError("There is no such representative")
    if not _agency(who):
        _require_holder(conn, who, row.patient_id, now)
    conn.execute(update(d).where(d.c.id == delegation_id).values(revoked_at=now))
    deactivate_consent(conn, fhir, row.consent_id)
    if row.related_person_id:
        _retire_related_person(conn, fhir, row.related_person_id, now)
    audit_change(conn, who, row.patient_id, f"remove {row.kind} account {row.account_id}", row.consent_id)


def _retire_related_person(
    conn: Connection, fhir: FhirService, related_person_id: str, now: datetime
) -> None:
    d = delegation
    still = conn.execute(
        select(d.c.id).where(
            d.c.related_person_id == related_person_id,
            d.c.revoked_at.is_(None),
            (d.c.ends.is_(None)) | (d.c.ends > now),
        )
    ).first()
    if still is not None:
        return
    svc = fhir.for_session(None)
    current = svc.store.current(conn, "RelatedPerson", related_person_id)
    if current is None or current.deleted:
        return
    res = current.resource()
    if res.get("active") is not False:
        res["active"] = False
        svc.update_in(conn, "RelatedPerson", related_person_id, res)


def representations(
    conn: Connection, *, patient_id: str | None = None, account_id: str | None = None, now: datetime
) -> list[Representation]:
    """The delegations not revoked and not past their end, of a holder or of a representative's
    account, newest first; ``in_force`` also applies the minors' rules (18th birthday, objection)."""
    d = delegation
    query = select(d, minors.delegation_in_force(d, now).label("in_force")).where(
        d.c.revoked_at.is_(None), (d.c.ends.is_(None)) | (d.c.ends > now)
    )
    if patient_id is not None:
        query = query.where(d.c.patient_id == patient_id)
    if account_id is not None:
        query = query.where(d.c.account_id == account_id)
    return [
        Representation(
            r.id,
            r.patient_id,
            r.account_id,
            r.kind,
            r.legal_basis,
            r.starts,
            r.ends,
            r.related_person_id,
            bool(r.in_force),
        )
        for r in conn.execute(query.order_by(d.c.starts.desc(), d.c.id))
    ]


# -- closure -----------------------------------------------------------------------------------
def close_record(
    conn: Connection, who: Principal, patient_id: str, now: datetime, reason: str = "holder"
) -> None:
    """Close the record: no professional access, no new data; the holder may reopen it (§A.2)."""
    if reason == "holder":
        _require_holder(conn, who, patient_id, now)
    care.ensure_record(conn, patient_id, letter_sent=None, activated=None)
    s = record_status
    conn.execute(
        update(s)
        .where(s.c.patient_id == patient_id)
        .values(status="closed", closed_at=now, closed_reason=reason)
    )
    audit_change(conn, who, patient_id, f"close-record ({reason})")


def reopen_record(
    conn: Connection, settings: Settings, who: Principal, patient_id: str, now: datetime
) -> None:
    """Reopen within the reopening window, with the data held at closure."""
    _require_holder(conn, who, patient_id, now)
    s = record_status
    row = conn.execute(select(s).where(s.c.patient_id == patient_id)).first()
    if row is None or row.status != "closed":
        raise ChoiceError("The record is not closed")
    if row.closed_reason == "death":
        raise ChoiceError("A record closed at death cannot be reopened")
    if row.closed_at < now - timedelta(days=365 * settings.reopen_window_years):
        raise ChoiceError(f"A record can be reopened only within {settings.reopen_window_years} years")
    conn.execute(
        update(s)
        .where(s.c.patient_id == patient_id)
        .values(status="open", closed_at=None, closed_reason=None)
    )
    audit_change(conn, who, patient_id, "reopen-record")


def status(conn: Connection, patient_id: str) -> str:
    """``open`` or ``closed`` (a record without a life-cycle row is open)."""
    row = conn.execute(select(record_status.c.status).where(record_status.c.patient_id == patient_id)).first()
    return row.status if row else "open"


# -- listing ------------------------------------------------------------------------------------
def choices(conn: Connection, patient_id: str, now: datetime) -> list[Choice]:
    """The holder's active choices: grants, blocks, masks and representatives."""
    out: list[Choice] = []
    cr = care_relationship
    for row in conn.execute(
        select(cr).where(
            cr.c.patient_id == patient_id, cr.c.context == "permanent", cr.c.revoked_at.is_(None)
        )
    ):
        out.append(
            Choice(row.id, "permanent", row.practitioner_id, None, None, row.starts, row.ends, row.consent_id)
        )
    r = access_restriction
    for row in conn.execute(select(r).where(r.c.patient_id == patient_id, r.c.removed_at.is_(None))):
        ref = f"{row.resource_type}/{row.resource_id}" if row.resource_type else None
        out.append(
            Choice(row.id, row.kind, row.practitioner_id, ref, None, row.created, None, row.consent_id)
        )
    d = delegation
    for row in conn.execute(
        select(d).where(
            d.c.patient_id == patient_id, d.c.revoked_at.is_(None), (d.c.ends.is_(None)) | (d.c.ends > now)
        )
    ):
        out.append(
            Choice(row.id, "delegation", None, None, row.account_id, row.starts, row.ends, row.consent_id)
        )
    return out
