"""Tables of the identity module: accounts, activation codes, attempt throttling (migration 0002),
sign-in sessions (0008).

Times are stored as naive UTC, like the rest of the schema. Secrets are never stored in clear
except the TOTP secret, which the server must read back to check codes (encryption at rest of
that column comes with issue 4). See ``docs/identity.md``.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import BigInteger, Boolean, Column, DateTime, ForeignKey, Index, Integer, String, Table

from sharedcare.storage.tables import PK, metadata


class AccountStatus(StrEnum):
    """Life cycle of an account."""

    PENDING = "pending"
    """Created; the activation code, a password or the TOTP enrolment is still missing."""
    ACTIVE = "active"
    """May sign in."""
    LOCKED = "locked"
    """Locked by the agency (suspected compromise) until staff unlock it. Temporary lockouts after
    failed attempts use ``account.locked_until`` and leave the status alone."""
    DISABLED = "disabled"
    """Closed: nobody may use it (professional left the directory, holder objected, death...)."""


LANGUAGES = ("fr", "de", "en")
"""Portal languages; French is the default."""

account = Table(
    "account",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("display_name", String(200), nullable=False),
    Column("matricule", String(13), nullable=True, unique=True),
    Column("username", String(254), nullable=True, unique=True),
    Column("patient_id", String(64), nullable=True),
    Column("practitioner_id", String(64), nullable=True),
    Column("practitioner_role_id", String(64), nullable=True),
    Column("organization_id", String(64), nullable=True),
    Column("profession", String(16), nullable=True),
    Column("email", String(254), nullable=True),
    Column("mobile", String(32), nullable=True),
    Column("language", String(2), nullable=False),
    Column("password_hash", String(255), nullable=True),
    Column("totp_secret", String(64), nullable=True),
    Column("totp_pending_secret", String(64), nullable=True),
    Column("totp_confirmed", Boolean, nullable=False),
    Column("totp_last_step", BigInteger, nullable=True),
    Column("failed_attempts", Integer, nullable=False),
    Column("locked_until", DateTime(timezone=False), nullable=True),
    Column("activated", DateTime(timezone=False), nullable=True),
    Column("last_login", DateTime(timezone=False), nullable=True),
    Column("created", DateTime(timezone=False), nullable=False),
    Index("ix_account_patient_id", "patient_id"),
    Index("ix_account_practitioner_id", "practitioner_id"),
)
"""One row per person who may sign in. ``matricule`` (13 digits) is the login of patients,
``username`` (lower case, always with a letter) that of everyone else; ``totp_last_step`` is the
time step of the last accepted TOTP code (replay refusal)."""

activation_code = Table(
    "activation_code",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("account_id", String(32), ForeignKey("account.id", ondelete="CASCADE"), nullable=False),
    Column("selector", String(8), nullable=False),
    Column("verifier_hash", String(255), nullable=False),
    Column("created", DateTime(timezone=False), nullable=False),
    Column("expires", DateTime(timezone=False), nullable=False),
    Column("used_at", DateTime(timezone=False), nullable=True),
    Column("failed_attempts", Integer, nullable=False),
    Column("locked_until", DateTime(timezone=False), nullable=True),
    Index("ix_activation_code_selector", "selector"),
    Index("ix_activation_code_account_id", "account_id"),
)
"""Codes sent by letter. The code itself is never stored: its first characters (``selector``)
find the row, the rest is kept as an argon2id hash (``verifier_hash``)."""

attempt_throttle = Table(
    "attempt_throttle",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("failed_attempts", Integer, nullable=False),
    Column("locked_until", DateTime(timezone=False), nullable=True),
    Column("updated", DateTime(timezone=False), nullable=False),
)
"""Failed attempts per typed identifier (activation, and sign-in with an unknown login). ``key`` is
a SHA-256 of purpose and identifier, so typed text (sometimes a password in the wrong field) is
never stored."""

login_session = Table(
    "login_session",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("account_id", String(32), ForeignKey("account.id", ondelete="CASCADE"), nullable=False),
    Column("created", DateTime(timezone=False), nullable=False),
    Column("last_seen", DateTime(timezone=False), nullable=False),
    Column("expires", DateTime(timezone=False), nullable=False),
    Column("revoked_at", DateTime(timezone=False), nullable=True),
    Column("revoked_reason", String(32), nullable=True),
    Column("user_agent", String(100), nullable=True),
    Index("ix_login_session_account_id", "account_id"),
    Index("ix_login_session_expires", "expires"),
)
"""Sign-in sessions of the portal (migration 0008). ``id`` is the SHA-256 of the session token the
browser holds (256 random bits), so reading the table does not let anyone take over a session;
``expires`` is the absolute end, ``last_seen`` drives the idle timeout; ``user_agent`` is a short
summary ("Firefox on Linux") for the person's list of sessions. No health data."""
