"""How each person wants to be told: channel, language, and the kinds they opted out of.

Preferences belong to an account (a holder or a representative), not to a record: a parent's
choice covers every child they represent, and a holder's choice does not bind their parents.
They only change the e-mail (``notify.delivery``): every message stays in the portal, where
the person reads it after signing in. Messages the regulation requires (§A.10: first
professional access, licence withdrawal, emergency access) cannot be opted out of one by one;
only the channel "portal only" stops their e-mails too, since the portal then tells the person.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Connection, delete, insert, select

from sharedcare.identity.models import LANGUAGES
from sharedcare.notify import outbox
from sharedcare.notify.models import notification_preference

VACCINATION_REMINDER = outbox.VACCINATION_REMINDER


class Channel(StrEnum):
    EMAIL = "email"
    """E-mail and portal (the default)."""
    PORTAL = "portal"
    """Portal only: no e-mail at all."""


OPTIONAL_KINDS: dict[str, str] = {
    VACCINATION_REMINDER: "vaccination_reminders",
    outbox.NEW_DOCUMENT: "new_documents",
}
"""The kinds a person may opt out of, with their column in ``notification_preference``."""


class InvalidPreference(ValueError):
    """A channel, language or kind that is not one of ours; the message names it."""


@dataclass(frozen=True, slots=True)
class Preferences:
    channel: Channel = Channel.EMAIL
    language: str | None = None
    """None: the account's portal language."""
    opted_out: frozenset[str] = frozenset()
    """Kinds of ``OPTIONAL_KINDS`` not to e-mail."""

    def emails(self, kind: str) -> bool:
        """Whether a message of ``kind`` is e-mailed to this person."""
        return self.channel is Channel.EMAIL and kind not in self.opted_out

    def language_or(self, account_language: str) -> str:
        return self.language or account_language


DEFAULT = Preferences()


def validated(channel: str, language: str | None, opted_out: frozenset[str] | set[str]) -> Preferences:
    """Preferences from untrusted values (a form); raises ``InvalidPreference``."""
    try:
        chosen = Channel(channel)
    except ValueError:
        raise InvalidPreference(f"unknown channel {channel!r} (email or portal)") from None
    if language is not None and language not in LANGUAGES:
        raise InvalidPreference(f"unknown language {language!r} ({', '.join(LANGUAGES)})")
    unknown = set(opted_out) - OPTIONAL_KINDS.keys()
    if unknown:
        raise InvalidPreference(f"these messages cannot be turned off: {', '.join(sorted(unknown))}")
    return Preferences(chosen, language, frozenset(opted_out))


def from_row(
    channel: str | None, language: str | None, reminders: bool | None, documents: bool | None
) -> Preferences:
    """Preferences from a (possibly missing: all None) ``notification_preference`` row."""
    if channel is None:
        return DEFAULT
    off = {
        kind for kind, on in ((VACCINATION_REMINDER, reminders), (outbox.NEW_DOCUMENT, documents)) if not on
    }
    return Preferences(Channel(channel), language, frozenset(off))


def get(conn: Connection, account_id: str) -> Preferences:
    """The account's preferences (the defaults when it never chose)."""
    p = notification_preference.c
    row = conn.execute(
        select(p.channel, p.language, p.vaccination_reminders, p.new_documents).where(
            p.account_id == account_id
        )
    ).first()
    return from_row(*row) if row else DEFAULT


def save(conn: Connection, account_id: str, preferences: Preferences, now: datetime) -> None:
    """Replace the account's preferences (in the caller's transaction)."""
    p = notification_preference
    conn.execute(delete(p).where(p.c.account_id == account_id))
    conn.execute(
        insert(p).values(
            account_id=account_id,
            channel=preferences.channel.value,
            language=preferences.language,
            vaccination_reminders=VACCINATION_REMINDER not in preferences.opted_out,
            new_documents=outbox.NEW_DOCUMENT not in preferences.opted_out,
            updated=now,
        )
    )


def opt_out(conn: Connection, account_id: str, kind: str, now: datetime) -> Preferences:
    """Stop e-mails of one optional ``kind`` for the account, keeping its other choices."""
    if kind not in OPTIONAL_KINDS:
        raise InvalidPreference(f"these messages cannot be turned off: {kind}")
    current = get(conn, account_id)
    changed = replace(current, opted_out=current.opted_out | {kind})
    save(conn, account_id, changed, now)
    return changed
