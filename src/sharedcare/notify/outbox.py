"""Queue and read holders' notifications (§A.10 of the regulation's consolidated list).

Queued in the transaction of the event, so a message exists exactly when its event happened;
delivery (portal, e-mail) reads the outbox.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, insert, select, update

from sharedcare.notify.models import notification

FIRST_PROFESSIONAL_ACCESS = "first-professional-access"
LICENCE_WITHDRAWN = "licence-withdrawn"
FACILITY_WITHDRAWN = "facility-withdrawn"
"""A care facility's authorisation withdrawn: its registrations ended (``access.licence``)."""
EMERGENCY_ACCESS = "emergency-access"
NEW_DOCUMENT = "new-document"
"""A document filed into the record by someone other than the holder's side (``documents.submission``)."""
VACCINATION_REMINDER = "vaccination-reminder"
"""A vaccination dose coming due or overdue (``vaccination.reminders``)."""
FILING_REQUEST_OVERDUE = "filing-request-overdue"
"""A filing request of the holder past its due date, still open (``access.filing_notices``)."""


@dataclass(frozen=True, slots=True)
class Notification:
    pk: int
    patient_id: str
    kind: str
    params: dict[str, Any]
    created: datetime
    read_at: datetime | None


def queue(
    conn: Connection, patient_id: str, kind: str, now: datetime, *, dedupe: str | None = None, **params: Any
) -> bool:
    """Queue a message; with ``dedupe``, only the first one of that key is kept. True if queued."""
    values = {
        "patient_id": patient_id,
        "kind": kind,
        "params": orjson.dumps(params).decode(),
        "dedupe": dedupe,
        "created": now,
    }
    stmt: Any
    if dedupe is not None and conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(notification).values(values).on_conflict_do_nothing(index_elements=["dedupe"])
    elif dedupe is not None and conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(notification).values(values).on_conflict_do_nothing(index_elements=["dedupe"])
    else:
        stmt = insert(notification).values(values)
    return bool(conn.execute(stmt).rowcount)


def for_patient(
    conn: Connection, patient_id: str, *, unread_only: bool = False, limit: int = 50
) -> list[Notification]:
    """The holder's messages, newest first."""
    n = notification.c
    stmt = select(notification).where(n.patient_id == patient_id)
    if unread_only:
        stmt = stmt.where(n.read_at.is_(None))
    rows = conn.execute(stmt.order_by(n.pk.desc()).limit(limit))
    return [
        Notification(r.pk, r.patient_id, r.kind, orjson.loads(r.params), r.created, r.read_at) for r in rows
    ]


def mark_read(conn: Connection, patient_id: str, pk: int, now: datetime) -> None:
    n = notification.c
    conn.execute(update(notification).where(n.pk == pk, n.patient_id == patient_id).values(read_at=now))


def queue_many(
    conn: Connection, messages: Sequence[tuple[str, str, str | None, dict[str, Any]]], now: datetime
) -> int:
    """Queue many messages ``(patient_id, kind, dedupe, params)`` in one batched statement,
    skipping those whose ``dedupe`` key exists already (a scheduled job's rerun; None: no key,
    the caller keeps them once-only, as the reminder job's items do); the count queued."""
    if not messages:
        return 0
    rows = [
        {"patient_id": p, "kind": k, "params": orjson.dumps(params).decode(), "dedupe": d, "created": now}
        for p, k, d, params in messages
    ]
    stmt: Any
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(notification)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(notification)
    stmt = stmt.on_conflict_do_nothing(index_elements=["dedupe"]).returning(notification.c.pk)
    return len(conn.execute(stmt, rows).all())  # SQLAlchemy's batched "insertmanyvalues"
