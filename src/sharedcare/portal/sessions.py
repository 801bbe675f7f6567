"""Who is using the portal: the signed-in account, its principal and the record it acts on.

The Starlette session (a signed cookie, see ``api.auth.session_options``) holds only opaque ids
and short-lived step markers, never names, codes or health data:

- ``sid``: the token of the sign-in session, kept on the server (``identity.sessions``) and
  checked at every request, so signing out or a revocation ends it even for a copied cookie
  (the OAuth authorize endpoint reads it too);
- ``pending_login``: password verified, second factor awaited (account id, time, ``next``);
- ``enrol``: activation or enrolment under way (account id, time);
- ``record``: the holder a representative (or a parent) chose to act for;
- ``csrf`` and ``flash``.

The session and the account are read again at every request, so a revoked, idle or expired
session, or a disabled or locked account, loses the portal at once, and representatives lose a
holder as soon as the delegation ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import Request
from sqlalchemy import Connection, select

from sharedcare.access.minors import delegation_in_force
from sharedcare.access.models import delegation
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.identity import accounts, sessions
from sharedcare.identity.accounts import Account
from sharedcare.identity.errors import IdentityError
from sharedcare.portal.i18n import N_
from sharedcare.storage.engine import writer

SIGNED_IN = sessions.SESSION_FIELD
PENDING_LOGIN = "pending_login"
ENROL = "enrol"
RECORD = "record"
FLASH = "flash"
PENDING_SECONDS = 5 * 60
"""How long a verified password waits for its second factor."""
ENROL_SECONDS = 30 * 60
"""How long an activation may take to choose a password and enrol the authenticator app."""
HOLDER_SIDE = (PrincipalKind.PATIENT, PrincipalKind.REPRESENTATIVE)


class LoginRequired(Exception):
    """The page needs a signed-in user; the handler sends them to the login page and back."""

    def __init__(self, next_path: str) -> None:
        self.next_path = next_path
        super().__init__(next_path)


class PortalError(Exception):
    """A page that cannot be shown to this user; ``message`` is a catalogue msgid."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class PortalUser:
    """The signed-in person, with the principal every access decision and audit record uses."""

    account: Account
    principal: Principal
    session: sessions.LoginSession
    """The sign-in session of this request (``session.id`` is its stored key)."""
    records: tuple[str, ...] = ()
    """Patient ids whose record this person may act on: their own first, then delegations."""
    record: str | None = None
    """The record the pages are about (None: a representative must choose)."""

    @property
    def holder_side(self) -> bool:
        return self.principal.kind in HOLDER_SIDE

    @property
    def professional(self) -> bool:
        return self.principal.kind is PrincipalKind.PROFESSIONAL

    @property
    def acting_for_other(self) -> bool:
        """The chosen record is not the person's own (a representative's page)."""
        return self.record is not None and self.record != self.principal.patient_id


def safe_next(value: str | None, default: str = "/portal/") -> str:
    """``value`` if it is a path on this site, else ``default``: never an open redirect.

    Accepted: a path starting with one ``/`` (``/auth/authorize?...`` included), with no scheme,
    host, backslash or control character.
    """
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


def login_url(next_path: str) -> str:
    return f"/portal/login?next={quote(safe_next(next_path), safe='')}"


def step(request: Request, key: str, max_age: int) -> str | None:
    """The account id of a sign-in or enrolment step still within ``max_age`` seconds."""
    value = request.session.get(key)
    if not isinstance(value, dict):
        return None
    started = value.get("at")
    if not isinstance(started, int | float) or time.time() - started > max_age:
        request.session.pop(key, None)
        return None
    account_id = value.get("account")
    return account_id if isinstance(account_id, str) else None


def start_step(request: Request, key: str, account_id: str, **extra: Any) -> None:
    request.session[key] = {"account": account_id, "at": int(time.time()), **extra}


def delegated_records(conn: Connection, account_id: str, now: datetime) -> list[str]:
    """Holders the account acts for through an active delegation, oldest delegation first."""
    d = delegation
    rows = conn.execute(
        select(d.c.patient_id)
        .where(
            d.c.account_id == account_id,
            delegation_in_force(d, now),  # a parent's ends at 18; a minor may suspend it
        )
        .order_by(d.c.starts)
    ).scalars()
    return list(dict.fromkeys(rows))


def load_user(request: Request, now: datetime) -> PortalUser | None:
    """The signed-in user, or None (signed out, session ended, or the account can no longer be used)."""
    token = request.session.get(SIGNED_IN)
    if not isinstance(token, str):
        return None
    engine = request.app.state.engine
    with engine.connect() as conn:
        session = sessions.resume(conn, request.app.state.settings, token, now)
        if session is None:
            request.session.clear()
            request.session[FLASH] = [N_("Your session has ended. Please sign in again."), {}]
            return None
        try:
            account = accounts.get_account(conn, session.account_id)
            principal = accounts.principal_for(account)
        except IdentityError:
            request.session.clear()
            return None
        delegated = delegated_records(conn, account.id, now) if principal.kind in HOLDER_SIDE else []
    if sessions.needs_touch(session, now):
        with writer(engine).begin() as conn:
            sessions.touch(conn, session.id, now)
    records = tuple(dict.fromkeys([*([principal.patient_id] if principal.patient_id else []), *delegated]))
    chosen = request.session.get(RECORD)
    if chosen not in records:
        chosen = principal.patient_id or (records[0] if len(records) == 1 else None)
    if chosen and chosen != principal.patient_id:
        principal = replace(principal, acting_for=(chosen,))
    return PortalUser(account, principal, session, records, chosen)
