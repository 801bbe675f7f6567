"""Revocation records: revoked access tokens, refresh-token families, used client assertions.

Every write here is idempotent, so it can be replayed after a rolled-back transaction (a
detected replay must stay revoked even though the request that detected it fails).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, delete, exists, select, update
from sqlalchemy.dialects import postgresql, sqlite

from sharedcare.fhir.store import utcnow
from sharedcare.oauth.models import (
    oauth_assertion_jti,
    oauth_code,
    oauth_refresh_token,
    oauth_revoked,
)


def insert_once(conn: Connection, table: Table, **values: Any) -> bool:
    """Insert a row unless its primary key exists; True when this call inserted it.

    ``ON CONFLICT DO NOTHING`` rather than catching the error: on PostgreSQL a failed insert
    would abort the whole transaction.
    """
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    key = next(iter(table.primary_key.columns))
    statement = dialect.insert(table).values(**values).on_conflict_do_nothing().returning(key)
    # RETURNING, not rowcount: the driver's rowcount is not reliable for ON CONFLICT DO NOTHING
    return conn.execute(statement).first() is not None


def revoke_jti(conn: Connection, jti: str, expires_at: datetime) -> None:
    """Refuse the access token ``jti`` from now until it expires."""
    insert_once(conn, oauth_revoked, jti=jti, expires_at=expires_at, revoked_at=utcnow())


def is_revoked(conn: Connection, jti: str) -> bool:
    """True when the access token ``jti`` was revoked."""
    return bool(conn.execute(select(revoked_clause(jti))).scalar())


def revoked_clause(jti: str) -> ColumnElement[bool]:
    """SQL: the access token ``jti`` was revoked (for a statement that reads more at once)."""
    return exists(select(oauth_revoked.c.jti).where(oauth_revoked.c.jti == jti))


def revoke_family(conn: Connection, family: str) -> None:
    """Revoke every refresh token of an authorization and the access tokens issued with them."""
    now = utcnow()
    conn.execute(
        update(oauth_refresh_token).where(oauth_refresh_token.c.family == family).values(revoked=True)
    )
    issued = list(
        conn.execute(
            select(oauth_refresh_token.c.access_jti, oauth_refresh_token.c.access_expires_at).where(
                oauth_refresh_token.c.family == family,
                oauth_refresh_token.c.access_jti.is_not(None),
                oauth_refresh_token.c.access_expires_at > now,
            )
        ).all()
    )
    issued += conn.execute(
        select(oauth_code.c.access_jti, oauth_code.c.access_expires_at).where(
            oauth_code.c.family == family,
            oauth_code.c.access_jti.is_not(None),
            oauth_code.c.access_expires_at > now,
        )
    ).all()
    for jti, expires_at in issued:
        revoke_jti(conn, jti, expires_at)


def revoke_session_tokens(conn: Connection, session_ids: list[str]) -> int:
    """Revoke the ``online_access`` authorizations given during these portal sessions (their
    refresh-token families and access tokens): they last only as long as the session. Returns
    how many families were revoked."""
    if not session_ids:
        return 0
    families = (
        conn.execute(
            select(oauth_refresh_token.c.family)
            .where(
                oauth_refresh_token.c.session_id.in_(session_ids), oauth_refresh_token.c.revoked.is_(False)
            )
            .distinct()
        )
        .scalars()
        .all()
    )
    for family in families:
        revoke_family(conn, family)
    return len(families)


def remember_assertion(conn: Connection, client_id: str, jti: str, expires_at: datetime) -> bool:
    """Record a client assertion's ``jti``; False when it was seen before (a replay)."""
    return insert_once(conn, oauth_assertion_jti, client_id=client_id, jti=jti, expires_at=expires_at)


def purge_expired(conn: Connection, now: datetime | None = None) -> int:
    """Delete records nothing can use any more; returns how many rows went. For a scheduled job.

    Authorization codes are kept a day past their expiry so that a late replay is still
    recognised as one (and revokes what the code produced).
    """
    now = now or utcnow()
    count = 0
    for statement in (
        delete(oauth_revoked).where(oauth_revoked.c.expires_at < now),
        delete(oauth_assertion_jti).where(oauth_assertion_jti.c.expires_at < now),
        delete(oauth_refresh_token).where(oauth_refresh_token.c.expires_at < now),
        delete(oauth_code).where(oauth_code.c.expires_at < now - timedelta(days=1)),
    ):
        count += conn.execute(statement).rowcount or 0
    return count
