"""The life cycle of a record (§A.1, §A.2): opt-out, closure at death or after inactivity,
deletion ten years after closure. ``run`` is the scheduled job (``sharedcare lifecycle``); a
death also closes the record at the write that records it (``access.death``), the job catching up
on records left open.

Deletion (opt-out, end of retention) removes the record's resources, every version and index
row, the projection rows of the holder's choices and the record's access traces (art. 8:
``audit.retention.delete_traces`` leaves tombstones, so the hash chains still verify), in one
transaction, and destroys the data key of its document content (crypto-shredding,
docs/storage.md) before deleting the blobs. Closure archives the traces with the data:
``audit.retention`` reads the record's status, so there is nothing more to do here.

Retention extension (art. 9(5), [P]): the holder may agree that their record is kept longer
than ``delete_after_closure_years`` after closure, by 1 to ``retention_extension_max_years``
years. The agreement is a dated Consent of the record (``policyRule`` and a ``category`` coding
``retention-extension`` in ``consent.CHOICE_SYSTEM``, the years in the ``RETENTION_YEARS_URL``
extension) written by the platform and audited like every choice of the holder; deletion is due
at closure + the retention period + the years of the active agreement; withdrawing it (the
Consent becomes ``inactive``) restores the default. A record's agreements are serialised, and
agreeing or withdrawing ends every active agreement of the record, not only the newest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, and_, delete, func, or_, select, update

from sharedcare.access import licence
from sharedcare.access.care import ensure_record
from sharedcare.access.consent import (
    CHOICE_SYSTEM,
    audit_change,
    deactivate_consent,
    fhir_consent,
    write_consent,
)
from sharedcare.access.minors import delegation_in_force
from sharedcare.access.models import (
    access_restriction,
    care_relationship,
    connection_code,
    delegation,
    filing_deadline,
    filing_objection,
    minor_autonomy,
    minor_objection,
    record_request,
    record_status,
)
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit import log as audit
from sharedcare.audit import retention
from sharedcare.fhir.service import FhirService, serialize
from sharedcare.settings import Settings
from sharedcare.storage.blobstore import BlobStore
from sharedcare.storage.content import make_backend
from sharedcare.storage.crypto import crypto_shred
from sharedcare.storage.tables import INDEX_TABLES, resource, resource_compartment, resource_version

AGENCY = Principal(
    PrincipalKind.SYSTEM, "sharedcare-lifecycle", display="SharedCare life-cycle job", trusted=True
)
RETENTION_EXTENSION = "retention-extension"
"""Code (in ``consent.CHOICE_SYSTEM``) of the holder's agreement to a longer retention."""
RETENTION_YEARS_URL = "https://sharedcare.lu/fhir/StructureDefinition/retention-extension-years"
"""Extension of that Consent: how many years the record is kept beyond the retention period."""


class RetentionError(Exception):
    """A retention agreement that cannot be recorded as asked; the message is for people."""


@dataclass(frozen=True, slots=True)
class RetentionAgreement:
    """The holder's current agreement to a longer retention: its Consent, years and date."""

    consent_id: str
    years: int
    agreed_at: datetime


@dataclass(slots=True)
class LifecycleReport:
    """What one run changed, by rule."""

    closed_at_death: list[str] = field(default_factory=list)
    closed_inactive: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    licence_withdrawn: list[str] = field(default_factory=list)
    """Professionals whose licence withdrawal was announced to their holders (``access.licence``)."""
    facility_withdrawn: list[str] = field(default_factory=list)
    """Care facilities (Organization ids) whose withdrawn authorisation was announced to the
    holders registered there."""
    traces_deleted: int = 0
    """Audit records deleted with the deleted records (art. 8)."""


def _years(n: int) -> timedelta:
    return timedelta(days=round(365.25 * n))


def close(conn: Connection, patient_id: str, reason: str, now: datetime) -> bool:
    """Close an open record (``reason``: death, inactivity…) and trace it; False when it was not
    open (closed already, or deleted), so a second closure changes nothing."""
    ensure_record(conn, patient_id, letter_sent=None, activated=None)
    changed = conn.execute(
        update(record_status)
        .where(record_status.c.patient_id == patient_id, record_status.c.status == "open")
        .values(status="closed", closed_at=now, closed_reason=reason)
    ).rowcount
    if not changed:
        return False
    audit.append(
        conn,
        audit.record_for(
            AGENCY,
            audit.AuditAction.CONSENT_CHANGE,
            patient_id=patient_id,
            interaction=f"close-record ({reason})",
        ),
    )
    return True


def _inactive(idle: datetime) -> ColumnElement[bool]:
    """Open records with no sign of life since ``idle`` (art. 4(4)). Activity is the last access,
    else the activation, else the creation letter, else the creation of the holder's ``Patient``
    (a record nobody ever opened is idle from its creation); the most recent known date counts."""
    s, rv = record_status, resource_version
    created = (
        select(func.min(rv.c.last_updated))
        .select_from(rv.join(resource, resource.c.pk == rv.c.res_pk))
        .where(resource.c.type == "Patient", resource.c.id == s.c.patient_id)
        .correlate(s)
        .scalar_subquery()
    )
    dates = (s.c.last_access, s.c.activated_at, s.c.letter_sent)
    return and_(
        s.c.status == "open",
        *(or_(d.is_(None), d < idle) for d in dates),
        func.coalesce(*dates, created) < idle,
    )


def purge(conn: Connection, patient_id: str, blobs: BlobStore | None = None) -> int:
    """Delete the record's content for good; returns how many resources went.

    A resource shared with another patient's record (in several compartments) stays. The
    record's document content is crypto-shredded (``storage.crypto.crypto_shred``): its data
    key goes in this transaction, then its blobs are deleted from ``blobs`` when given.
    """
    c = resource_compartment
    mine = select(c.c.res_pk).where(c.c.patient_id == patient_id)
    shared = select(c.c.res_pk).where(c.c.res_pk.in_(mine), c.c.patient_id != patient_id)
    pks = [pk for pk in conn.execute(mine.except_(shared)).scalars()]
    for start in range(0, len(pks), 500):
        chunk = pks[start : start + 500]
        for table in (*INDEX_TABLES.values(), resource_compartment, resource_version):
            conn.execute(delete(table).where(table.c.res_pk.in_(chunk)))
        conn.execute(delete(resource).where(resource.c.pk.in_(chunk)))
    for table in (
        care_relationship,
        filing_deadline,
        access_restriction,
        delegation,
        connection_code,
        minor_autonomy,
        minor_objection,
        filing_objection,
        record_request,
        *_derived_tables(),
    ):
        conn.execute(delete(table).where(table.c.patient_id == patient_id))
    crypto_shred(conn, patient_id, blobs)
    return len(pks)


def _derived_tables() -> tuple[Table, ...]:
    """Other modules' rows about the record: its holder's messages and its vaccination forecast
    state go with it (imported here: those modules build on access, not the reverse)."""
    from sharedcare.notify.models import notification
    from sharedcare.vaccination.models import forecast_state, reminder_item

    return (notification, forecast_state, reminder_item)


def opt_out(conn: Connection, patient_id: str, now: datetime, blobs: BlobStore | None = None) -> int:
    """The holder objected (§A.1): the record never becomes active and is deleted (its content
    from ``blobs``, the application's store)."""
    count = purge(conn, patient_id, blobs)
    ensure_record(conn, patient_id, letter_sent=None, activated=None)
    conn.execute(
        update(record_status)
        .where(record_status.c.patient_id == patient_id)
        .values(status="deleted", closed_at=now, closed_reason="objection")
    )
    audit.append(
        conn, audit.record_for(AGENCY, audit.AuditAction.DELETE, patient_id=patient_id, interaction="opt-out")
    )
    retention.delete_traces(conn, patient_id, AGENCY)
    return count


# -- retention extension (art. 9(5)) ------------------------------------------------------------------
def _agreement_search(patient_id: str, count: int) -> list[tuple[str, str]]:
    return [
        ("patient", f"Patient/{patient_id}"),
        ("category", f"{CHOICE_SYSTEM}|{RETENTION_EXTENSION}"),
        ("status", "active"),
        ("_sort", "-_lastUpdated"),
        ("_count", str(count)),
    ]


def retention_agreement(
    svc: FhirService, patient_id: str, conn: Connection | None = None
) -> RetentionAgreement | None:
    """The record's active retention agreement as ``svc`` may read it (the holder's session for
    the portal, audited; the platform's for the job), on ``conn`` when given; else None."""
    query = svc.parse_search("Consent", _agreement_search(patient_id, 1), strict=True)
    found = (svc.search_in(conn, query) if conn is not None else svc.search(query)).matches
    if not found:
        return None
    res = found[0].resource()
    years = next(
        (e.get("valueInteger") for e in res.get("extension") or () if e.get("url") == RETENTION_YEARS_URL),
        None,
    )
    if not isinstance(years, int) or years < 1:
        return None
    agreed = datetime.fromisoformat(str(res["dateTime"]).removesuffix("Z"))
    return RetentionAgreement(found[0].id, years, agreed.replace(tzinfo=None))


def _end_agreements(
    conn: Connection, fhir: FhirService, who: Principal, patient_id: str, interaction: str | None
) -> bool:
    """Make every active agreement of the record ``inactive`` (each audited as ``interaction``
    unless None: a replaced one is audited with its replacement); False when there was none. All
    of them, not the newest only: records written before agreements were serialised may hold
    several."""
    svc = fhir.for_session(None)
    query = svc.parse_search("Consent", _agreement_search(patient_id, 100), strict=True)
    ids: list[str] = []
    while True:
        result = svc.search_in(conn, query)
        ids.extend(stored.id for stored in result.matches)
        if not result.next_cursor:
            break
        query.page = result.next_cursor
    for consent_id in ids:
        deactivate_consent(conn, fhir, consent_id)
        if interaction is not None:
            audit_change(conn, who, patient_id, interaction, consent_id)
    return bool(ids)


def _lock_key(patient_id: str) -> str:
    """Key serialising a record's agreements (``fhir.service.serialize``): two parallel ones
    would each replace the same current agreement and leave two active."""
    return f"retention-extension/{patient_id}"


def agree_retention_extension(
    conn: Connection,
    fhir: FhirService,
    settings: Settings,
    who: Principal,
    patient_id: str,
    years: int,
    now: datetime,
) -> RetentionAgreement:
    """Record the holder's (or a representative's) agreement that the record is kept ``years``
    longer after closure; a new agreement replaces the current ones (made ``inactive``)."""
    _require_holder(conn, who, patient_id, now)
    if not 1 <= years <= settings.retention_extension_max_years:
        raise RetentionError(f"Choose between 1 and {settings.retention_extension_max_years} extra years")
    serialize(conn, _lock_key(patient_id))
    _end_agreements(conn, fhir, who, patient_id, None)
    consent: dict[str, Any] = fhir_consent(
        patient_id, RETENTION_EXTENSION, "permit", now, performer=_performer(who, patient_id)
    )
    consent["category"] = [
        *consent["category"],
        {"coding": [{"system": CHOICE_SYSTEM, "code": RETENTION_EXTENSION}]},
    ]
    consent["extension"] = [{"url": RETENTION_YEARS_URL, "valueInteger": years}]
    consent_id = write_consent(conn, fhir, consent)
    audit_change(conn, who, patient_id, f"{RETENTION_EXTENSION} {years} years", consent_id)
    return RetentionAgreement(consent_id, years, now)


def withdraw_retention_extension(
    conn: Connection, fhir: FhirService, who: Principal, patient_id: str, now: datetime
) -> bool:
    """Withdraw the agreement (every active one): the default retention applies again. False
    when there was none."""
    _require_holder(conn, who, patient_id, now)
    serialize(conn, _lock_key(patient_id))
    return _end_agreements(conn, fhir, who, patient_id, f"withdraw-{RETENTION_EXTENSION}")


def deletion_due(closed_at: datetime, settings: Settings, agreement: RetentionAgreement | None) -> datetime:
    """When a record closed at ``closed_at`` is deleted: the retention period after closure,
    plus the years the holder agreed to."""
    extra = agreement.years if agreement is not None else 0
    return closed_at + _years(settings.delete_after_closure_years + extra)


def _require_holder(conn: Connection, who: Principal, patient_id: str, now: datetime) -> None:
    if who.kind is PrincipalKind.PATIENT and who.patient_id == patient_id:
        return
    d = delegation
    if (
        who.kind is PrincipalKind.REPRESENTATIVE
        and conn.execute(
            select(d.c.id).where(
                d.c.account_id == who.subject, d.c.patient_id == patient_id, delegation_in_force(d, now)
            )
        ).first()
    ):
        return
    raise RetentionError("Only the holder of the record or their representative can agree to this")


def _performer(who: Principal, patient_id: str) -> str | None:
    return f"Patient/{patient_id}" if who.kind is PrincipalKind.PATIENT else None


def run(
    conn: Connection, fhir: FhirService, settings: Settings, now: datetime, blobs: BlobStore | None = None
) -> LifecycleReport:
    """Apply the rules once: close at death, close after inactivity, delete after retention;
    tell the holders of the professionals whose licence was withdrawn and of the facilities whose
    authorisation was withdrawn. Deleted records' content goes from ``blobs``, by default the
    store of the settings. A retention agreement of the holder postpones the deletion."""
    report = LifecycleReport()
    s = record_status
    closed = set(conn.execute(select(s.c.patient_id).where(s.c.status != "open")).scalars())
    svc = fhir.for_session(None)
    query = svc.parse_search(
        "Patient", [("deceased", "true"), ("_count", "1000"), ("_elements", "id")], strict=True
    )
    while True:
        result = svc.search_in(conn, query)
        for stored in result.matches:
            if stored.id not in closed and close(conn, stored.id, "death", now):
                closed.add(stored.id)
                report.closed_at_death.append(stored.id)
        if not result.next_cursor:
            break
        query.page = result.next_cursor
    idle = now - _years(settings.inactivity_closure_years)
    for patient_id in conn.execute(select(s.c.patient_id).where(_inactive(idle))).scalars():
        if close(conn, patient_id, "inactivity", now):
            report.closed_inactive.append(patient_id)
    expired = now - _years(settings.delete_after_closure_years)
    for patient_id, closed_at in conn.execute(
        select(s.c.patient_id, s.c.closed_at).where(s.c.status == "closed", s.c.closed_at < expired)
    ).all():
        if deletion_due(closed_at, settings, retention_agreement(svc, patient_id, conn)) > now:
            continue
        if blobs is None:
            blobs = make_backend(settings)
        purge(conn, patient_id, blobs)
        conn.execute(update(s).where(s.c.patient_id == patient_id).values(status="deleted"))
        audit.append(
            conn,
            audit.record_for(
                AGENCY, audit.AuditAction.DELETE, patient_id=patient_id, interaction="delete-after-retention"
            ),
        )
        report.traces_deleted += retention.delete_traces(conn, patient_id, AGENCY).records
        report.deleted.append(patient_id)
    report.licence_withdrawn = [w.practitioner_id for w in licence.notify_withdrawals(conn, now, AGENCY)]
    report.facility_withdrawn = [
        w.organization_id for w in licence.notify_facility_withdrawals(conn, now, AGENCY)
    ]
    return report
