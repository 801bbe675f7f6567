"""Limit wrong connection codes per professional, in the identity module's ``attempt_throttle``.

A connection code has about 44 bits and lives an hour, so guessing is already hopeless; the
limit still stops a compromised professional account from sweeping codes. The counter is
per professional account (not per session, which a client can drop), uses the same table,
key scheme (SHA-256 of purpose and identifier) and rule as sign-in lockouts:
``max_failed_attempts`` wrong codes lock further attempts for ``lockout_minutes``, and the
count restarts after each lock and on success. ``identity.accounts.purge_attempts`` forgets
idle rows. ``identity`` exposes no public throttling API yet, hence these few lines here.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from sharedcare.identity.models import attempt_throttle
from sharedcare.settings import Settings

PURPOSE = "connection-code"


def _key(account_id: str) -> str:
    return hashlib.sha256(f"{PURPOSE}\x00{account_id}".encode()).hexdigest()


def locked_until(conn: Connection, account_id: str, now: datetime) -> datetime | None:
    """When the professional may try codes again, or None if they may now."""
    t = attempt_throttle
    until = conn.execute(select(t.c.locked_until).where(t.c.key == _key(account_id))).scalar_one_or_none()
    return until if until is not None and until > now else None


def failure(conn: Connection, settings: Settings, account_id: str, now: datetime) -> datetime | None:
    """Count a wrong code; returns the end of the lock when this attempt locks."""
    t, key = attempt_throttle, _key(account_id)
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    conn.execute(
        insert(t)
        .values(key=key, failed_attempts=0, updated=now)
        .on_conflict_do_update(index_elements=[t.c.key], set_={"updated": now})
    )
    count = conn.execute(
        update(t)
        .where(t.c.key == key)
        .values(failed_attempts=t.c.failed_attempts + 1)
        .returning(t.c.failed_attempts)
    ).scalar_one()
    if count < settings.max_failed_attempts:
        return None
    until = now + timedelta(minutes=settings.lockout_minutes)
    conn.execute(update(t).where(t.c.key == key).values(failed_attempts=0, locked_until=until))
    return until


def clear(conn: Connection, account_id: str) -> None:
    conn.execute(delete(attempt_throttle).where(attempt_throttle.c.key == _key(account_id)))
