"""The life cycle of a record (§A.1, §A.2): opt-out, closure at death or after inactivity,
deletion ten years after closure. ``run`` is the scheduled job (``sharedcare lifecycle``).

Deletion (opt-out, end of retention) removes the record's resources, every version and index
row, and the projection rows of the holder's choices, in one transaction. The access log is
append-only and hash-chained: its entries stay, which art. 8 allows only as long as the data
(documented as a known gap until the log can be archived per record).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, select, update

from sharedcare.access.care import ensure_record
from sharedcare.access.models import (
    access_restriction,
    care_relationship,
    connection_code,
    delegation,
    record_status,
)
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit import log as audit
from sharedcare.fhir.service import FhirService
from sharedcare.settings import Settings
from sharedcare.storage.tables import INDEX_TABLES, resource, resource_compartment, resource_version

AGENCY = Principal(
    PrincipalKind.SYSTEM, "sharedcare-lifecycle", display="SharedCare life-cycle job", trusted=True
)


@dataclass(slots=True)
class LifecycleReport:
    """What one run changed, by rule."""

    closed_at_death: list[str] = field(default_factory=list)
    closed_inactive: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def _years(n: int) -> timedelta:
    return timedelta(days=round(365.25 * n))


def _close(conn: Connection, patient_id: str, reason: str, now: datetime) -> None:
    ensure_record(conn, patient_id, letter_sent=None, activated=None)
    conn.execute(
        update(record_status)
        .where(record_status.c.patient_id == patient_id)
        .values(status="closed", closed_at=now, closed_reason=reason)
    )
    audit.append(
        conn,
        audit.record_for(
            AGENCY,
            audit.AuditAction.CONSENT_CHANGE,
            patient_id=patient_id,
            interaction=f"close-record ({reason})",
        ),
    )


def purge(conn: Connection, patient_id: str) -> int:
    """Delete the record's content for good; returns how many resources went.

    A resource shared with another patient's record (in several compartments) stays.
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
    for table in (care_relationship, access_restriction, delegation, connection_code):
        conn.execute(delete(table).where(table.c.patient_id == patient_id))
    return len(pks)


def opt_out(conn: Connection, patient_id: str, now: datetime) -> int:
    """The holder objected (§A.1): the record never becomes active and is deleted."""
    count = purge(conn, patient_id)
    ensure_record(conn, patient_id, letter_sent=None, activated=None)
    conn.execute(
        update(record_status)
        .where(record_status.c.patient_id == patient_id)
        .values(status="deleted", closed_at=now, closed_reason="objection")
    )
    audit.append(
        conn, audit.record_for(AGENCY, audit.AuditAction.DELETE, patient_id=patient_id, interaction="opt-out")
    )
    return count


def run(conn: Connection, fhir: FhirService, settings: Settings, now: datetime) -> LifecycleReport:
    """Apply the rules once: close at death, close after inactivity, delete after retention."""
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
            if stored.id not in closed:
                _close(conn, stored.id, "death", now)
                closed.add(stored.id)
                report.closed_at_death.append(stored.id)
        if not result.next_cursor:
            break
        query.page = result.next_cursor
    idle = now - _years(settings.inactivity_closure_years)
    for patient_id in conn.execute(
        select(s.c.patient_id).where(
            s.c.status == "open", s.c.last_access.is_not(None), s.c.last_access < idle
        )
    ).scalars():
        _close(conn, patient_id, "inactivity", now)
        report.closed_inactive.append(patient_id)
    expired = now - _years(settings.delete_after_closure_years)
    for patient_id in conn.execute(
        select(s.c.patient_id).where(s.c.status == "closed", s.c.closed_at < expired)
    ).scalars():
        purge(conn, patient_id)
        conn.execute(update(s).where(s.c.patient_id == patient_id).values(status="deleted"))
        audit.append(
            conn,
            audit.record_for(
                AGENCY, audit.AuditAction.DELETE, patient_id=patient_id, interaction="delete-after-retention"
            ),
        )
        report.deleted.append(patient_id)
    return report
