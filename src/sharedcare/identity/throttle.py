"""Counting failed attempts and locking after too many: the one mechanism every limit uses.

Sign-in (per account, and per typed login when no account matches), activation (per typed
identifier and per code), connection codes (per professional, ``portal.throttle``) and the OAuth
token endpoint (per client and per source address, ``oauth.throttle``) all count failures with
:func:`count_failure`. A counter lives either on the row it protects (``account``,
``activation_code``: columns ``failed_attempts`` and ``locked_until``) or, for things that have no
row of their own, in ``attempt_throttle`` under :func:`key` (a SHA-256 of purpose and
identifier, so typed text is never stored).

The rule: the ``limit``-th failure locks for ``lockout`` and restarts the count, so each lock is
followed by a fresh allowance; a success clears the count (the caller's choice). With a
``window``, a failure more than ``window`` after the previous one starts a new count, so rare
failures of a busy client never add up to a lock. Counters are written in the caller's
transaction, which must be committed even when the attempt is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, case, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from sharedcare.identity.models import attempt_throttle


@dataclass(frozen=True, slots=True)
class Rule:
    """How many failures lock, for how long, and (optionally) how far apart they may be."""

    limit: int
    lockout: timedelta
    window: timedelta | None = None
    """Failures further apart than this start a new count; None: they add up until a success."""


@dataclass(frozen=True, slots=True)
class Counter:
    """The state of one ``attempt_throttle`` counter."""

    failures: int
    locked_until: datetime | None
    """Naive UTC end of the current lock, None when not locked at the time asked."""


def key(purpose: str, identifier: str) -> str:
    """The ``attempt_throttle`` key of ``identifier`` counted for ``purpose`` (hex SHA-256)."""
    return hashlib.sha256(f"{purpose}\x00{identifier}".encode()).hexdigest()


def count_failure(conn: Connection, table: Table, where: Any, rule: Rule, now: datetime) -> datetime | None:
    """One more failure on the row ``where`` of ``table``; the end of the lock when this one locks."""
    count = conn.execute(
        update(table)
        .where(where)
        .values(failed_attempts=table.c.failed_attempts + 1)
        .returning(table.c.failed_attempts)
    ).scalar_one()
    if count < rule.limit:
        return None
    until = now + rule.lockout
    conn.execute(update(table).where(where).values(failed_attempts=0, locked_until=until))
    return until


def counter(conn: Connection, purpose: str, identifier: str, now: datetime) -> Counter | None:
    """The counter of ``identifier`` for ``purpose``, or None when it has none."""
    t = attempt_throttle
    row = conn.execute(
        select(t.c.failed_attempts, t.c.locked_until).where(t.c.key == key(purpose, identifier))
    ).first()
    if row is None:
        return None
    locked = row.locked_until if row.locked_until is not None and row.locked_until > now else None
    return Counter(row.failed_attempts, locked)


def locked_until(conn: Connection, purpose: str, identifier: str, now: datetime) -> datetime | None:
    """When ``identifier`` may try again for ``purpose``, or None if it may now."""
    found = counter(conn, purpose, identifier, now)
    return found.locked_until if found is not None else None


def failure(conn: Connection, purpose: str, identifier: str, rule: Rule, now: datetime) -> datetime | None:
    """Count a failure of ``identifier`` for ``purpose``; the end of the lock when this one locks.

    The row is created on first failure (an upsert, safe against a concurrent first failure).
    """
    t, row_key = attempt_throttle, key(purpose, identifier)
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    restart: dict[str, Any] = {"updated": now}
    if rule.window is not None:
        restart["failed_attempts"] = case((t.c.updated < now - rule.window, 0), else_=t.c.failed_attempts)
    statement = insert(t).values(key=row_key, failed_attempts=0, updated=now)
    conn.execute(statement.on_conflict_do_update(index_elements=[t.c.key], set_=restart))
    return count_failure(conn, t, t.c.key == row_key, rule, now)


def clear(conn: Connection, purpose: str, identifier: str) -> None:
    """Forget the failures of ``identifier`` for ``purpose`` (after a success)."""
    conn.execute(delete(attempt_throttle).where(attempt_throttle.c.key == key(purpose, identifier)))
