"""Sign-in sessions kept on the server, so that ending one (sign-out, the agency) really ends it.

A signed cookie alone stays valid until it expires, even after sign-out, for whoever copied it.
Here the cookie only carries a random token (256 bits); the session is the ``login_session`` row
keyed by the token's SHA-256, checked at every request. A session ends when it is revoked
(sign-out, "sign out everywhere else", a password change, a recovery letter, an agency lock or
the agency's revocation), after ``session_idle_minutes`` without a request, or
``session_hours`` after sign-in, whichever comes first. Ending a session also revokes the
``online_access`` OAuth authorizations given during it (``oauth.revocation``).

Like ``identity.accounts``, every function works in the caller's transaction and takes ``now``
(naive UTC, the stored form). See ``docs/identity.md``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Row, delete, or_, select, update

from sharedcare.identity.models import login_session
from sharedcare.oauth.revocation import revoke_session_tokens
from sharedcare.settings import Settings

SESSION_FIELD = "sid"
"""Where the web session (the portal's signed cookie) keeps the token."""
TOKEN_BYTES = 32
TOUCH_SECONDS = 60
"""``last_seen`` is rewritten at most once a minute: the idle timeout needs no finer clock, and
most requests then write nothing."""


class EndReason(StrEnum):
    """Why a session was revoked (``login_session.revoked_reason``)."""

    SIGN_OUT = "sign-out"
    OTHER_SESSION = "signed-out-elsewhere"
    """The person chose "sign out everywhere else" in another session."""
    PASSWORD = "password-changed"
    RECOVERY = "recovery-letter"
    ACCOUNT_STATUS = "account-locked"
    """The agency locked or disabled the account."""
    AGENCY = "agency"
    """The agency ended the account's sessions (suspected theft of a device or cookie)."""


@dataclass(frozen=True, slots=True)
class LoginSession:
    """A session as the portal lists it; ``id`` is the stored key, never the browser's token."""

    id: str
    account_id: str
    created: datetime
    last_seen: datetime
    expires: datetime
    """The absolute end: sign-in plus ``session_hours``."""
    user_agent: str


def key_of(token: str) -> str:
    """The stored key of a session token."""
    return hashlib.sha256(token.encode()).hexdigest()


def _session(row: Row[Any]) -> LoginSession:
    return LoginSession(
        id=row.id,
        account_id=row.account_id,
        created=row.created,
        last_seen=row.last_seen,
        expires=row.expires,
        user_agent=row.user_agent or "",
    )


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC).replace(tzinfo=None)
    return now.astimezone(UTC).replace(tzinfo=None) if now.tzinfo else now


def _usable(settings: Settings, now: datetime) -> list[Any]:
    """Conditions of a session still in force at ``now``."""
    s = login_session.c
    idle = timedelta(minutes=settings.session_idle_minutes)
    return [s.revoked_at.is_(None), s.expires > now, s.last_seen > now - idle]


_BROWSERS = (("Edg/", "Edge"), ("OPR/", "Opera"), ("Firefox/", "Firefox"), ("Chrome/", "Chrome"))
_SYSTEMS = (
    ("Android", "Android"),
    ("iPhone", "iPhone"),
    ("iPad", "iPad"),
    ("Windows", "Windows"),
    ("Mac OS X", "macOS"),
    ("CrOS", "ChromeOS"),
    ("Linux", "Linux"),
)


def summarize_user_agent(header: str | None) -> str:
    """A short, recognisable name of the browser ("Firefox on Linux"), never the full header
    (which identifies a device very precisely); empty when nothing is recognised."""
    text = header or ""
    browser = next((name for mark, name in _BROWSERS if mark in text), "")
    if not browser and "Safari/" in text:
        browser = "Safari"
    system = next((name for mark, name in _SYSTEMS if mark in text), "")
    if browser and system:
        return f"{browser} on {system}"
    return browser or system or re.sub(r"[^\w .\-/]", "", text.split(" ", 1)[0])[:40]


def start(
    conn: Connection,
    settings: Settings,
    account_id: str,
    *,
    user_agent: str | None,
    now: datetime | None = None,
) -> str:
    """Open a session for the account that just signed in; returns its token for the cookie."""
    now = _utc(now)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    conn.execute(
        login_session.insert().values(
            id=key_of(token),
            account_id=account_id,
            created=now,
            last_seen=now,
            expires=now + timedelta(hours=settings.session_hours),
            user_agent=summarize_user_agent(user_agent)[:100],
        )
    )
    return token


def resume(
    conn: Connection, settings: Settings, token: object, now: datetime | None = None
) -> LoginSession | None:
    """The session of ``token`` if it is still in force (not revoked, idle or past its end)."""
    if not isinstance(token, str) or not token:
        return None
    now = _utc(now)
    row = conn.execute(
        select(login_session).where(login_session.c.id == key_of(token), *_usable(settings, now))
    ).first()
    return _session(row) if row is not None else None


def is_open(conn: Connection, settings: Settings, session_id: str, now: datetime | None = None) -> bool:
    """True while the session with this stored key is in force (``online_access`` refreshes)."""
    now = _utc(now)
    found = conn.execute(
        select(login_session.c.id).where(login_session.c.id == session_id, *_usable(settings, now))
    ).first()
    return found is not None


def needs_touch(session: LoginSession, now: datetime) -> bool:
    """True when ``last_seen`` is old enough to be rewritten (see :data:`TOUCH_SECONDS`)."""
    return _utc(now) - session.last_seen >= timedelta(seconds=TOUCH_SECONDS)


def touch(conn: Connection, session_id: str, now: datetime | None = None) -> None:
    """Record activity (the idle timeout restarts); a revoked session stays revoked."""
    now = _utc(now)
    conn.execute(
        update(login_session)
        .where(
            login_session.c.id == session_id,
            login_session.c.revoked_at.is_(None),
            login_session.c.last_seen < now,
        )
        .values(last_seen=now)
    )


def active(
    conn: Connection, settings: Settings, account_id: str, now: datetime | None = None
) -> list[LoginSession]:
    """The account's sessions in force, most recently used first."""
    now = _utc(now)
    rows = conn.execute(
        select(login_session)
        .where(login_session.c.account_id == account_id, *_usable(settings, now))
        .order_by(login_session.c.last_seen.desc(), login_session.c.created.desc())
    ).all()
    return [_session(row) for row in rows]


def _end(conn: Connection, where: list[Any], reason: EndReason, now: datetime) -> int:
    ended = (
        conn.execute(
            update(login_session)
            .where(login_session.c.revoked_at.is_(None), *where)
            .values(revoked_at=now, revoked_reason=reason.value)
            .returning(login_session.c.id)
        )
        .scalars()
        .all()
    )
    revoke_session_tokens(conn, list(ended))
    return len(ended)


def end(conn: Connection, token: object, reason: EndReason, *, now: datetime | None = None) -> bool:
    """Revoke the session of ``token`` (sign-out); False when it was not in force anyway."""
    if not isinstance(token, str) or not token:
        return False
    return _end(conn, [login_session.c.id == key_of(token)], reason, _utc(now)) == 1


def end_all(
    conn: Connection,
    account_id: str,
    reason: EndReason,
    *,
    keep: str | None = None,
    now: datetime | None = None,
) -> int:
    """Revoke every session of the account except the one of token ``keep``; returns how many
    were still unrevoked (expired ones included: revoking them is harmless and keeps the rule
    simple)."""
    where = [login_session.c.account_id == account_id]
    if keep:
        where.append(login_session.c.id != key_of(keep))
    return _end(conn, where, reason, _utc(now))


def purge(conn: Connection, *, now: datetime | None = None, keep: timedelta = timedelta(days=1)) -> int:
    """Delete sessions ended more than ``keep`` ago (a scheduled job); returns rows deleted.

    Idle sessions are kept until their absolute end, then ``keep`` more.
    """
    now = _utc(now)
    s = login_session.c
    result = conn.execute(delete(login_session).where(or_(s.expires < now - keep, s.revoked_at < now - keep)))
    return result.rowcount
