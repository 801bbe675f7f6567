"""Reading the access log through the access decision (AuditEvent over FHIR, the portal page).

The log itself belongs to ``audit``; who may read which patient's log is the policy's
``trace_patients``. An entry the caller may not read is reported as unknown.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection

from sharedcare.access.policy import AccessPolicy
from sharedcare.access.principals import Principal
from sharedcare.audit import log as audit
from sharedcare.fhir.errors import Forbidden, NotFound


def _allowed(conn: Connection, policy: AccessPolicy, p: Principal, now: datetime) -> set[str] | None:
    scope = policy.trace_patients(p, now)
    return None if scope is None else set(conn.execute(scope).scalars())


def search(
    conn: Connection,
    policy: AccessPolicy,
    p: Principal,
    now: datetime,
    *,
    patient_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: int | None = None,
    limit: int = 50,
) -> list[audit.AuditEntry]:
    """Log entries the caller may read, newest first; a caller restricted to some records
    must name one of them when they have several."""
    allowed = _allowed(conn, policy, p, now)
    if allowed is not None:
        if patient_id is None:
            if len(allowed) != 1:
                raise Forbidden("Name the record whose access log to read (patient=…)")
            patient_id = next(iter(allowed))
        if patient_id not in allowed:
            return []
    return audit.query(conn, patient_id=patient_id, since=since, until=until, before=before, limit=limit)


def read(
    conn: Connection, policy: AccessPolicy, p: Principal, now: datetime, entry_id: str
) -> audit.AuditEntry:
    """One entry; NotFound when it does not exist or is not the caller's to read."""
    entry = audit.get(conn, int(entry_id)) if entry_id.isdigit() else None
    if entry is None:
        raise NotFound(f"Resource AuditEvent/{entry_id} is not known")
    allowed = _allowed(conn, policy, p, now)
    if allowed is not None and entry.record.patient_id not in allowed:
        raise NotFound(f"Resource AuditEvent/{entry_id} is not known")
    return entry
