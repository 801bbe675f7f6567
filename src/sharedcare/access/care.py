"""Care relationships: the proof that a professional takes part in a holder's care (§A.3).

A relationship starts in one of the regulation's care contexts and lasts its default time:
solo practice (the holder hands over a one-time connection code, 15 days), care facility
(registration posted by the facility, 45 days, renewable by up to 30, or with the holder's
agreement until a lab result arrives), hospital emergency department (registration, 24 hours +
15 days). The referring physician designation and the
holder's permanent grants are relationships without an end (``access.consent``). Every
function works in the caller's transaction.

The end of care (``end_care``, art. 9(3), §A.9) is declared by the facility (or the solo
professional): the relationship then lasts ``filing_deadline_days`` more, so the author files the
key documents, and never longer than it would have anyway; ``access.filing`` lists what is due.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, delete, or_, select, update

from sharedcare.access import labwait as _labwait  # noqa: F401  (a lab result ends a registration's wait)
from sharedcare.access.licence import facility_authorised
from sharedcare.access.models import care_relationship, connection_code, filing_deadline, record_status
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.settings import Settings
from sharedcare.storage.blobstore import BlobStore


class CareError(Exception):
    """A care-relationship request that cannot be honoured; the message is for the user."""


class InvalidConnectionCode(CareError):
    """The code is unknown, used or expired (the three are not told apart)."""


class NotAllowed(CareError):
    """The principal may not take this step."""


@dataclass(frozen=True, slots=True)
class Relationship:
    """One care relationship as the holder's access page shows it."""

    id: str
    patient_id: str
    practitioner_id: str | None
    organization_id: str | None
    context: str
    starts: datetime
    ends: datetime | None
    revoked_at: datetime | None
    reason: str | None
    patient_agreement: datetime | None = None
    """When the holder agreed to the facility's access until a lab result arrives."""
    lab_wait_since: datetime | None = None
    """The renewal from which a filed lab result ends the wait (None: not waiting, never did)."""
    lab_result_at: datetime | None = None
    """When the awaited lab result was filed (``ends`` then set by ``access.labwait``)."""

    @property
    def waiting_for_lab_result(self) -> bool:
        return self.lab_wait_since is not None and self.lab_result_at is None

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and self.starts <= now and (self.ends is None or self.ends > now)


CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"


def _hash_code(code: str) -> str:
    normalised = code.replace(" ", "").replace("-", "").upper()
    return hashlib.sha256(normalised.encode()).hexdigest()


def issue_connection_code(conn: Connection, settings: Settings, patient_id: str, now: datetime) -> str:
    """A one-time code the holder shows the professional (9 characters, ~44 bits, 1 hour)."""
    code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(9))
    conn.execute(
        connection_code.insert().values(
            code_hash=_hash_code(code),
            patient_id=patient_id,
            created=now,
            expires=now + timedelta(minutes=settings.connection_code_minutes),
        )
    )
    return f"{code[:3]}-{code[3:6]}-{code[6:]}"


def open_with_code(
    conn: Connection, settings: Settings, professional: Principal, code: str, now: datetime
) -> Relationship:
    """A solo-practice relationship from the holder's code: the code is used up."""
    if professional.kind is not PrincipalKind.PROFESSIONAL or not professional.practitioner_id:
        raise NotAllowed("Only a professional listed in the national directory can use a connection code")
    c = connection_code
    row = conn.execute(
        select(c.c.pk, c.c.patient_id)
        .where(c.c.code_hash == _hash_code(code), c.c.used_at.is_(None), c.c.expires > now)
        .with_for_update()
    ).first()
    if row is None:
        raise InvalidConnectionCode("This connection code is not valid (unknown, already used or expired)")
    conn.execute(update(c).where(c.c.pk == row.pk).values(used_at=now, used_by=professional.subject))
    _audit(conn, professional, row.patient_id, "open-care-relationship solo (connection code)")
    return _insert(
        conn,
        patient_id=row.patient_id,
        practitioner_id=professional.practitioner_id,
        organization_id=None,
        context="solo",
        starts=now,
        ends=now + timedelta(days=settings.access_solo_days),
        created_by=professional.subject,
    )


def register(
    conn: Connection,
    settings: Settings,
    actor: Principal,
    patient_id: str,
    *,
    emergency: bool,
    now: datetime,
    organization_id: str | None = None,
    ends: datetime | None = None,
    reason: str | None = None,
) -> Relationship:
    """A facility's registration of the holder (entrance or emergency department).

    Posted by the facility's system client or one of its professionals; the relationship is
    with the organisation, so every professional acting for it is in the holder's care. It
    lasts the context's default duration (Annex 1 §3), or less when ``ends`` says so: the
    default is a maximum, never exceeded.
    """
    organization = organization_id or actor.organization_id
    if actor.kind not in (PrincipalKind.SYSTEM, PrincipalKind.PROFESSIONAL) or not organization:
        raise NotAllowed("Only a care facility's system or professional can register a patient")
    if actor.organization_id and organization != actor.organization_id and not actor.trusted:
        raise NotAllowed("A facility registers patients only for itself")
    if not facility_authorised(conn, organization):
        raise NotAllowed("The facility's authorisation is withdrawn: it cannot register patients")
    ends = registration_end(settings, now, emergency=emergency, ends=ends)
    _audit(
        conn,
        actor,
        patient_id,
        f"register {'emergency' if emergency else 'facility'} Organization/{organization}",
    )
    return _insert(
        conn,
        patient_id=patient_id,
        practitioner_id=None,
        organization_id=organization,
        context="emergency" if emergency else "facility",
        starts=now,
        ends=ends,
        reason=reason.strip() if reason and reason.strip() else None,
        created_by=actor.subject,
    )


def registration_end(
    settings: Settings, now: datetime, *, emergency: bool, ends: datetime | None
) -> datetime:
    """When a registration made now ends: ``ends`` if within the context's default duration
    (Annex 1 §3), else that default. Whether ``ends`` is acceptable depends on no record, so the
    API checks it before it looks the holder up (a refusal must not tell a known record apart)."""
    if emergency:
        longest = now + timedelta(
            hours=settings.access_emergency_hours, days=settings.access_emergency_extra_days
        )
    else:
        longest = now + timedelta(days=settings.access_facility_days)
    if ends is not None and not now < ends <= longest:
        raise CareError(
            f"A registration ends after now and at the latest on {longest.isoformat(timespec='minutes')}"
        )
    return ends or longest


def holds_registration(conn: Connection, patient_id: str, organization_id: str, now: datetime) -> bool:
    """Whether the facility has a registration of the holder in force now, in any context: it
    takes part in the holder's care, so it may be told what became of the record (closed, …)
    where any other facility is told only that it may not act on it."""
    return any(
        current_registration(conn, patient_id, organization_id, context, now) is not None
        for context in ("facility", "emergency")
    )


def current_registration(
    conn: Connection, patient_id: str, organization_id: str, context: str, now: datetime
) -> Relationship | None:
    """The facility's registration of the holder in force now (the latest ending), if any:
    what a renewal prolongs, so the facility needs to know no relationship id."""
    cr = care_relationship
    row = conn.execute(
        select(cr)
        .where(
            cr.c.patient_id == patient_id,
            cr.c.organization_id == organization_id,
            cr.c.practitioner_id.is_(None),
            cr.c.context == context,
            cr.c.revoked_at.is_(None),
            cr.c.starts <= now,
            cr.c.ends > now,
        )
        .order_by(cr.c.ends.desc())
        .limit(1)
    ).first()
    return _from_row(row) if row else None


def _renewable(conn: Connection, actor: Principal, relationship_id: str, now: datetime) -> Relationship:
    """The facility registration ``actor`` may renew now (its own, in force, facility authorised,
    its care not declared ended), its row locked until the transaction ends (see ``locked``)."""
    rel = locked(conn, relationship_id)
    if rel is None or rel.context != "facility" or rel.organization_id != actor.organization_id:
        raise NotAllowed("Only the registering facility renews its own registration")
    if not facility_authorised(conn, rel.organization_id or ""):
        raise NotAllowed("The facility's authorisation is withdrawn: it cannot renew registrations")
    if not rel.active(now):
        raise CareError("An ended registration cannot be renewed; register the patient again")
    ended = care_ended(conn, rel.id)
    if ended is not None:
        raise CareError(
            f"The care ended on {ended.isoformat(timespec='minutes')}: the registration lasts only "
            "for the filing deadline; register the patient again for a new stay"
        )
    return rel


def renew(
    conn: Connection, settings: Settings, actor: Principal, relationship_id: str, days: int, now: datetime
) -> Relationship:
    """Prolong a facility stay by up to the renewal limit, counted from now (never shortening
    it, nor what a lab result still awaited will leave of it)."""
    if not 0 < days <= settings.access_facility_renewal_days:
        raise CareError(f"A renewal lasts 1 to {settings.access_facility_renewal_days} days")
    rel = _renewable(conn, actor, relationship_id, now)
    ends = max(rel.ends or now, now + timedelta(days=days))
    values: dict[str, object] = {"ends": ends}
    if rel.waiting_for_lab_result:
        floor = conn.execute(
            select(care_relationship.c.lab_wait_floor).where(care_relationship.c.id == rel.id)
        ).scalar_one()
        values["lab_wait_floor"] = max(floor or now, now + timedelta(days=days))
    conn.execute(update(care_relationship).where(care_relationship.c.id == rel.id).values(**values))
    _audit(
        conn,
        actor,
        rel.patient_id,
        f"register renewal facility Organization/{rel.organization_id} until {ends.isoformat()}",
    )
    return get(conn, rel.id)  # type: ignore[return-value]


def renew_until_lab_result(
    conn: Connection,
    settings: Settings,
    actor: Principal,
    relationship_id: str,
    agreed: datetime | None,
    now: datetime,
) -> Relationship:
    """Prolong a facility stay, with the holder's agreement, until a lab result arrives (Annex 1 §3).

    The relationship keeps ``ends`` at the safety cap (``access_lab_result_max_days`` from now)
    until a final laboratory result is filed in the record; ``access.labwait`` then ends it the
    filing deadline of art. 9(3) later (``access_emergency_extra_days``), never before the end in
    force before this renewal nor after the cap. ``agreed`` (when the holder agreed) is required.
    """
    if agreed is None:
        raise CareError(
            "Access until a lab result needs the patient's agreement: "
            "give 'patientAgreement', the date and time the patient agreed"
        )
    if agreed > now:
        raise CareError("The patient's agreement cannot be dated in the future")
    rel = _renewable(conn, actor, relationship_id, now)
    if rel.waiting_for_lab_result:
        raise CareError(
            "This registration already waits for a lab result, until "
            f"{(rel.ends or now).isoformat(timespec='minutes')} at the latest"
        )
    ends = max(rel.ends or now, now + timedelta(days=settings.access_lab_result_max_days))
    conn.execute(
        update(care_relationship)
        .where(care_relationship.c.id == rel.id)
        .values(
            ends=ends,
            patient_agreement=agreed,
            lab_wait_since=now,
            lab_wait_floor=rel.ends,
            lab_wait_days=settings.access_emergency_extra_days,
            lab_result_at=None,
        )
    )
    _audit(
        conn,
        actor,
        rel.patient_id,
        f"register renewal facility Organization/{rel.organization_id} until a lab result "
        f"(patient agreed {agreed.isoformat()}) at the latest {ends.isoformat()}",
    )
    return get(conn, rel.id)  # type: ignore[return-value]


ENDED_CONTEXTS = ("solo", "facility", "emergency")
"""The care contexts of Annex 1 §3 whose care ends, and with it a filing deadline (art. 9(3))."""


def care_ended(conn: Connection, relationship_id: str) -> datetime | None:
    """When the relationship's care was declared ended (``end_care``), if it was."""
    fd = filing_deadline
    found: datetime | None = conn.execute(
        select(fd.c.care_end).where(fd.c.relationship_id == relationship_id)
    ).scalar_one_or_none()
    return found


def holds_solo(conn: Connection, patient_id: str, practitioner_id: str, now: datetime) -> bool:
    """Whether the professional has a solo-practice relationship with the holder in force now."""
    cr = care_relationship
    return (
        conn.execute(
            select(cr.c.id).where(
                cr.c.patient_id == patient_id,
                cr.c.practitioner_id == practitioner_id,
                cr.c.context == "solo",
                cr.c.revoked_at.is_(None),
                cr.c.starts <= now,
                cr.c.ends > now,
            )
        ).first()
        is not None
    )


def end_care(
    conn: Connection, settings: Settings, actor: Principal, patient_id: str, end: datetime, now: datetime
) -> list[Relationship]:
    """Declare the end of the holder's care on ``end`` (at most ``now``): the stay at the facility
    ``actor`` acts for (its facility and emergency registrations in force), or, for a professional
    acting for no facility, their own solo-practice relationship (art. 9(3), §A.9).

    Each relationship then ends at ``end`` + ``filing_deadline_days``, the due date of the key
    documents, or when it ended before if that is sooner: a declared end never lengthens access.
    An end already past the deadline ends it at once. A ``filing_deadline`` row keeps the due
    date; a relationship's care ends once (a second declaration is refused, as is a renewal of
    it: the facility registers the holder again for a new stay). Audited as a consent change on
    the holder's access log, like the registration. Rows are locked as ``renew`` locks them.
    Raises ``CareError`` when nothing is in force to end, or ``end`` is before a relationship
    began; the API decides beforehand what the caller may be told (``api.registrations``).
    """
    if end > now:
        raise CareError("The end of care cannot be in the future")
    cr = care_relationship
    if actor.organization_id:
        if actor.kind not in (PrincipalKind.SYSTEM, PrincipalKind.PROFESSIONAL):
            raise NotAllowed("Only a care facility's system or professional declares the end of a stay")
        if not facility_authorised(conn, actor.organization_id):
            raise NotAllowed("The facility's authorisation is withdrawn: it cannot end care")
        whose = and_(
            cr.c.organization_id == actor.organization_id,
            cr.c.practitioner_id.is_(None),
            cr.c.context.in_(("facility", "emergency")),
        )
        what = f"Organization/{actor.organization_id}"
    elif actor.kind is PrincipalKind.PROFESSIONAL and actor.practitioner_id:
        whose = and_(cr.c.practitioner_id == actor.practitioner_id, cr.c.context == "solo")
        what = f"Practitioner/{actor.practitioner_id}"
    else:
        raise NotAllowed(
            "Only a care facility or a professional in the patient's care declares the end of care"
        )
    ids = (
        conn.execute(
            select(cr.c.id)
            .where(cr.c.patient_id == patient_id, whose, cr.c.revoked_at.is_(None), cr.c.starts <= now)
            .where(cr.c.ends > now)
            .order_by(cr.c.id)  # locked in one order, as ``access.labwait`` does
        )
        .scalars()
        .all()
    )
    in_force = [rel for rel in (locked(conn, rid) for rid in ids) if rel is not None and rel.active(now)]
    open_ = [rel for rel in in_force if care_ended(conn, rel.id) is None]
    if not open_:
        ended = [care_ended(conn, rel.id) for rel in in_force]
        if ended:
            latest = max(e for e in ended if e is not None)
            raise CareError(
                f"The care already ended on {latest.isoformat(timespec='minutes')}; "
                "its filing deadline runs until the registration ends"
            )
        raise CareError("No care relationship with this patient is in force to end")
    for rel in open_:
        if end < rel.starts:
            raise CareError(
                f"The end of care is before the {rel.context} relationship began "
                f"({rel.starts.isoformat(timespec='minutes')})"
            )
    due_after = timedelta(days=settings.filing_deadline_days)
    ended_now: list[Relationship] = []
    for rel in open_:
        due = min(rel.ends or end + due_after, end + due_after)
        conn.execute(update(cr).where(cr.c.id == rel.id).values(ends=due))
        conn.execute(
            filing_deadline.insert().values(
                id=uuid.uuid4().hex,
                relationship_id=rel.id,
                patient_id=rel.patient_id,
                practitioner_id=rel.practitioner_id,
                organization_id=rel.organization_id,
                context=rel.context,
                care_start=rel.starts,
                care_end=end,
                due=due,
                created=now,
                created_by=actor.subject,
            )
        )
        _audit(
            conn,
            actor,
            patient_id,
            f"end-care {rel.context} {what} on {end.isoformat()} until {due.isoformat()}",
        )
        ended_now.append(get(conn, rel.id))  # type: ignore[arg-type]
    return ended_now


def emergency_override(
    conn: Connection, settings: Settings, professional: Principal, patient_id: str, reason: str, now: datetime
) -> Relationship:
    """The EHDS emergency override (§A.6): off unless the setting allows it; a reason is
    required; it lasts ``emergency_override_hours``, lifts the holder's blocks and masks (not
    closure, not the matrix), and every act under it is flagged in the audit trail."""
    if not settings.emergency_override:
        raise NotAllowed("The emergency override is not enabled on this platform")
    if professional.kind is not PrincipalKind.PROFESSIONAL or not professional.practitioner_id:
        raise NotAllowed(
            "Only a professional listed in the national directory can use the emergency override"
        )
    if not reason or not reason.strip():
        raise CareError("The emergency override needs a reason")
    rel = _insert(
        conn,
        patient_id=patient_id,
        practitioner_id=professional.practitioner_id,
        organization_id=professional.organization_id,
        context="override",
        starts=now,
        ends=now + timedelta(hours=settings.emergency_override_hours),
        reason=reason.strip(),
        created_by=professional.subject,
    )
    from sharedcare.audit import log as audit
    from sharedcare.notify import outbox

    outbox.queue(
        conn,
        patient_id,
        outbox.EMERGENCY_ACCESS,
        now,
        practitioner_id=professional.practitioner_id,
        display=professional.display,
        reason=reason.strip(),
        until=rel.ends.isoformat() if rel.ends else None,
    )
    audit.append(
        conn,
        audit.record_for(
            professional,
            audit.AuditAction.EMERGENCY_ACCESS,
            patient_id=patient_id,
            emergency=True,
            emergency_reason=reason.strip(),
        ),
    )
    return rel


def active_overrides(conn: Connection, practitioner_id: str, now: datetime) -> dict[str, str]:
    """Patient id → reason of the professional's active emergency overrides."""
    cr = care_relationship
    rows = conn.execute(
        select(cr.c.patient_id, cr.c.reason).where(
            cr.c.practitioner_id == practitioner_id,
            cr.c.context == "override",
            cr.c.revoked_at.is_(None),
            cr.c.starts <= now,
            or_(cr.c.ends.is_(None), cr.c.ends > now),
        )
    )
    return {row.patient_id: row.reason or "" for row in rows}


def locked(conn: Connection, relationship_id: str) -> Relationship | None:
    """The relationship, its row locked until the transaction ends (``SELECT … FOR UPDATE`` on
    PostgreSQL; SQLite writers hold the database lock already). A renewal and a filed lab result
    (``access.labwait``, which locks the same rows) both read ``ends`` and write it back: each
    waits for the other's commit and reads what it wrote, so neither loses the other's end."""
    row = conn.execute(
        select(care_relationship).where(care_relationship.c.id == relationship_id).with_for_update()
    ).first()
    return _from_row(row) if row else None


def get(conn: Connection, relationship_id: str) -> Relationship | None:
    row = conn.execute(select(care_relationship).where(care_relationship.c.id == relationship_id)).first()
    return _from_row(row) if row else None


def of_patient(
    conn: Connection, patient_id: str, now: datetime, *, include_ended: bool = False
) -> list[Relationship]:
    """The holder's relationships, newest first (active ones only unless asked)."""
    cr = care_relationship
    conds = [cr.c.patient_id == patient_id]
    if not include_ended:
        conds += [cr.c.revoked_at.is_(None), cr.c.starts <= now, or_(cr.c.ends.is_(None), cr.c.ends > now)]
    rows = conn.execute(select(cr).where(and_(*conds)).order_by(cr.c.starts.desc()))
    return [_from_row(r) for r in rows]


def end(conn: Connection, relationship_id: str, now: datetime) -> None:
    """End a relationship at once (revoked grant, lost licence)."""
    conn.execute(
        update(care_relationship)
        .where(care_relationship.c.id == relationship_id, care_relationship.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )


def ensure_record(
    conn: Connection, patient_id: str, *, letter_sent: datetime | None, activated: datetime | None
) -> None:
    """Create the life-cycle row of a record if it has none (creation letter, activation)."""
    exists = conn.execute(
        select(record_status.c.patient_id).where(record_status.c.patient_id == patient_id)
    ).first()
    if exists is None:
        conn.execute(
            record_status.insert().values(
                patient_id=patient_id, status="open", letter_sent=letter_sent, activated_at=activated
            )
        )


def mark_activated(conn: Connection, patient_id: str, now: datetime) -> None:
    """The holder activated their account (§A.1): from now on the activation window no longer
    keeps professionals out, and the holder reads and adds data."""
    ensure_record(conn, patient_id, letter_sent=None, activated=now)
    conn.execute(
        update(record_status)
        .where(record_status.c.patient_id == patient_id, record_status.c.activated_at.is_(None))
        .values(activated_at=now)
    )


def honour_objection(
    conn: Connection, actor: Principal, patient_id: str, now: datetime, blobs: BlobStore | None = None
) -> int:
    """The holder objected to their record (§A.1, art. 3(1)), in the portal or through the
    Agence: ``lifecycle.opt_out`` deletes it (content, choices, traces), every relationship with
    it ends with it, the holder's messages about it go too, and the holder's accounts are
    disabled (their record never becomes active, so nothing is left to sign in to). The deletion
    names who asked for it, in a record the trace deletion keeps. Returns how many resources went.
    """
    from sharedcare.access.lifecycle import opt_out
    from sharedcare.audit import log as audit
    from sharedcare.identity import accounts
    from sharedcare.identity.models import AccountStatus, account
    from sharedcare.notify.models import notification

    deleted = opt_out(conn, patient_id, now, blobs)
    # the holder's messages about the record go with it (``lifecycle.purge`` keeps them so far)
    conn.execute(delete(notification).where(notification.c.patient_id == patient_id))
    holders = conn.execute(select(account.c.id).where(account.c.patient_id == patient_id)).scalars().all()
    for account_id in holders:
        accounts.set_status(conn, account_id, AccountStatus.DISABLED, now=now)
    audit.append(
        conn, audit.record_for(actor, audit.AuditAction.DELETE, patient_id=patient_id, interaction="opt-out")
    )
    return deleted


def _audit(conn: Connection, who: Principal, patient_id: str, what: str) -> None:
    from sharedcare.audit import log as audit

    audit.append(
        conn, audit.record_for(who, audit.AuditAction.CONSENT_CHANGE, patient_id=patient_id, interaction=what)
    )


def _insert(conn: Connection, **values: object) -> Relationship:
    rid = uuid.uuid4().hex
    conn.execute(care_relationship.insert().values(id=rid, **values))
    rel = get(conn, rid)
    assert rel is not None
    return rel


def _from_row(row: object) -> Relationship:
    m = row._mapping  # type: ignore[attr-defined]
    return Relationship(
        m["id"],
        m["patient_id"],
        m["practitioner_id"],
        m["organization_id"],
        m["context"],
        m["starts"],
        m["ends"],
        m["revoked_at"],
        m["reason"],
        m["patient_agreement"],
        m["lab_wait_since"],
        m["lab_result_at"],
    )
