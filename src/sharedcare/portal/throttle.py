"""Limit wrong connection codes per professional, with ``identity.throttle``.

A connection code has about 44 bits and lives an hour, so guessing is already hopeless; the
limit still stops a compromised professional account from sweeping codes. The counter is
per professional account (not per session, which a client can drop) and follows the sign-in
rule: ``max_failed_attempts`` wrong codes lock further attempts for ``lockout_minutes``, and the
count restarts after each lock and on success. ``identity.accounts.purge_attempts`` forgets
idle rows.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Connection

from sharedcare.identity import throttle
from sharedcare.settings import Settings

PURPOSE = "connection-code"


def locked_until(conn: Connection, account_id: str, now: datetime) -> datetime | None:
    """When the professional may try codes again, or None if they may now."""
    return throttle.locked_until(conn, PURPOSE, account_id, now)


def failure(conn: Connection, settings: Settings, account_id: str, now: datetime) -> datetime | None:
    """Count a wrong code; returns the end of the lock when this attempt locks."""
    rule = throttle.Rule(settings.max_failed_attempts, timedelta(minutes=settings.lockout_minutes))
    return throttle.failure(conn, PURPOSE, account_id, rule, now)


def clear(conn: Connection, account_id: str) -> None:
    """Forget the professional's wrong codes (after a right one)."""
    throttle.clear(conn, PURPOSE, account_id)
