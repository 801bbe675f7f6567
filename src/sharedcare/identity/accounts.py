"""Account services: creation, activation by letter, password and TOTP enrolment, sign-in.

Every function works in the caller's transaction (a SQLAlchemy ``Connection``; on SQLite take it
from ``storage.engine.writer(engine)`` so the write lock is held from BEGIN) and takes ``now``
(aware UTC; naive means UTC) so that tests and the portal control time. Failed attempts are
counted in that transaction before the error is raised: commit it even when a service raises an
:class:`~sharedcare.identity.errors.IdentityError`, as :func:`transaction` does. Services keep the
matching invariant: when they raise such an error they have written nothing but attempt counters
(and the re-hash of a password just verified).

The flow, and why each step is where it is, is in ``docs/identity.md``.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Row, Table, delete, or_, select, update

from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.identity import matricule as matricule_rules
from sharedcare.identity import passwords, sessions, throttle, totp
from sharedcare.identity.errors import (
    AccountDisabled,
    AccountExists,
    AccountLocked,
    AccountNotFound,
    ActivationCodeExpired,
    ActivationCodeUsed,
    EnrolmentIncomplete,
    IdentityError,
    InvalidAccountData,
    InvalidActivationCode,
    InvalidContact,
    InvalidCredentials,
    InvalidIdentifier,
    InvalidSecondFactor,
    SecondFactorRequired,
    TooManyAttempts,
)
from sharedcare.identity.models import LANGUAGES, AccountStatus, account, activation_code, attempt_throttle
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer

CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
"""Crockford base32: no I, L, O or U, so a printed code cannot be misread; typed I/L/O are folded."""
CODE_LENGTH = 12
"""60 bits: 5 characters of selector (finds the row) and 7 of verifier (argon2id-hashed)."""
SELECTOR_LENGTH = 5
_CODE_FOLD = str.maketrans({"O": "0", "I": "1", "L": "1"})
_USERNAME = re.compile(r"[a-z0-9][a-z0-9._@+\-]{2,253}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_MOBILE = re.compile(r"\+[1-9]\d{7,14}")
_PROFESSION = re.compile(r"[a-z]{2,8}")
ACTIVATE = "activate"
LOGIN = "login"
"""``identity.throttle`` purposes: activation attempts per typed identifier, sign-in with a login
that names no account."""
PEOPLE = frozenset(PrincipalKind) - {PrincipalKind.SYSTEM}
"""Kinds that have accounts; system clients are OAuth clients (``oauth``), not accounts."""


@dataclass(frozen=True, slots=True)
class Account:
    """An account as the rest of the platform sees it: no password hash, no TOTP secret."""

    id: str
    kind: PrincipalKind
    status: AccountStatus
    display_name: str
    matricule: str | None
    """13-digit national identifier: the login of patients (and of representatives who have one)."""
    username: str | None
    """Lower-case login name of professionals, staff and representatives without matricule."""
    patient_id: str | None
    practitioner_id: str | None
    practitioner_role_id: str | None
    organization_id: str | None
    profession: str | None
    email: str | None
    mobile: str | None
    language: str
    has_password: bool
    totp_confirmed: bool
    failed_attempts: int
    locked_until: datetime | None
    activated: datetime | None
    """When the activation code was redeemed."""
    last_login: datetime | None
    created: datetime

    @property
    def login(self) -> str:
        """What the person types to sign in."""
        if self.kind is PrincipalKind.PATIENT:
            return self.matricule or ""
        return self.username or self.matricule or ""


# --- time, identifiers, contacts -------------------------------------------------------------------


def _utc(now: datetime | None) -> datetime:
    """``now`` (or the current time) as naive UTC, the stored form."""
    if now is None:
        return datetime.now(UTC).replace(tzinfo=None)
    return now.astimezone(UTC).replace(tzinfo=None) if now.tzinfo else now


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None else None


def parse_login(value: str) -> tuple[str, str]:
    """``("matricule", 13 digits)`` or ``("username", lower case)`` for what a person typed.

    A login without any letter is a matricule (11 or 13 digits, spaces allowed; the old 11-digit
    form is upgraded); anything with a letter is a login name. Raises InvalidIdentifier with the
    matricule rule that failed, so a typing error gets a clear message.
    """
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        raise InvalidIdentifier("enter your matricule or login name")
    if any(c.isalpha() for c in text):
        if len(text) > 254:
            raise InvalidIdentifier("a login name has at most 254 characters")
        return "username", text.lower()
    try:
        return "matricule", matricule_rules.normalize(text)
    except matricule_rules.InvalidMatricule as exc:
        raise InvalidIdentifier(str(exc)) from None


def parse_contact(value: str) -> tuple[str, str]:
    """``("email", address)`` or ``("mobile", E.164 number)``; a number without prefix is Luxembourg's."""
    text = value.strip() if isinstance(value, str) else ""
    if "@" in text:
        if len(text) > 254 or not _EMAIL.fullmatch(text):
            raise InvalidContact("this e-mail address is not valid")
        local, domain = text.rsplit("@", 1)
        return "email", f"{local}@{domain.lower()}"
    number = re.sub(r"[\s.\-/()]", "", text)
    if number.startswith("00"):
        number = "+" + number[2:]
    elif number and not number.startswith("+"):
        number = "+352" + number
    if not _MOBILE.fullmatch(number):
        raise InvalidContact("give an e-mail address or a mobile number (with +country prefix if abroad)")
    return "mobile", number


def _contact_of(value: str | None, field: str) -> str | None:
    """``value`` normalised as a contact of kind ``field`` (``email`` or ``mobile``), or None."""
    if not value:
        return None
    kind, normalized = parse_contact(value)
    if kind != field:
        raise InvalidContact(
            f"this is not a valid {'e-mail address' if field == 'email' else 'mobile number'}"
        )
    return normalized


def _normalize_code(code: str) -> str | None:
    """The 12 code characters of what was typed (case, spaces, dashes and I/L/O folded), or None."""
    if not isinstance(code, str):
        return None
    text = re.sub(r"[\s\-]", "", code).upper().translate(_CODE_FOLD)
    if len(text) != CODE_LENGTH or any(c not in CODE_ALPHABET for c in text):
        return None
    return text


def format_code(code: str) -> str:
    """A code as printed on the letter: groups of four (``7K3M-Q9XD-2HPA``)."""
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))


# --- rows and attempt counters ---------------------------------------------------------------------


def _to_account(row: Row[Any]) -> Account:
    return Account(
        id=row.id,
        kind=PrincipalKind(row.kind),
        status=AccountStatus(row.status),
        display_name=row.display_name,
        matricule=row.matricule,
        username=row.username,
        patient_id=row.patient_id,
        practitioner_id=row.practitioner_id,
        practitioner_role_id=row.practitioner_role_id,
        organization_id=row.organization_id,
        profession=row.profession,
        email=row.email,
        mobile=row.mobile,
        language=row.language,
        has_password=row.password_hash is not None,
        totp_confirmed=bool(row.totp_confirmed),
        failed_attempts=row.failed_attempts,
        locked_until=_aware(row.locked_until),
        activated=_aware(row.activated),
        last_login=_aware(row.last_login),
        created=row.created.replace(tzinfo=UTC),
    )


def _row(conn: Connection, account_id: str) -> Row[Any]:
    row = conn.execute(select(account).where(account.c.id == account_id)).first()
    if row is None:
        raise AccountNotFound(f"no account {account_id!r}")
    return row


def _rule(settings: Settings) -> throttle.Rule:
    """The people's rule: ``max_failed_attempts`` consecutive failures lock for ``lockout_minutes``."""
    return throttle.Rule(settings.max_failed_attempts, timedelta(minutes=settings.lockout_minutes))


def _count_failure(
    conn: Connection, settings: Settings, table: Table, where: Any, now: datetime
) -> datetime | None:
    """One more failed attempt on a row with a failure count; the lock end when this one locks.

    Reaching the limit sets ``locked_until`` and restarts the count, so each lock period is
    followed by a fresh allowance of ``max_failed_attempts`` (``identity.throttle``).
    """
    return throttle.count_failure(conn, table, where, _rule(settings), now)


# --- accounts ---------------------------------------------------------------------------------------


def create_account(
    conn: Connection,
    kind: PrincipalKind | str,
    *,
    display_name: str,
    matricule: str | None = None,
    username: str | None = None,
    patient_id: str | None = None,
    practitioner_id: str | None = None,
    practitioner_role_id: str | None = None,
    organization_id: str | None = None,
    profession: str | None = None,
    email: str | None = None,
    mobile: str | None = None,
    language: str = "fr",
    now: datetime | None = None,
) -> Account:
    """Create a pending account (the agency's act, art. 2(3) and 5(2)); activation comes by letter.

    Patients need ``matricule`` and ``patient_id``; professionals ``username``, ``practitioner_id``
    and ``profession`` (access-matrix column); staff a ``username``; representatives a matricule or
    a username. Raises InvalidIdentifier, InvalidContact, InvalidAccountData or AccountExists.
    """
    try:
        kind = PrincipalKind(kind)
    except ValueError:
        raise InvalidAccountData(f"unknown account kind {kind!r}") from None
    if kind not in PEOPLE:
        raise InvalidAccountData("system clients are OAuth clients, not accounts")
    if language not in LANGUAGES:
        raise InvalidAccountData(f"language must be one of {', '.join(LANGUAGES)}")
    if matricule is not None:
        column, matricule = parse_login(matricule)
        if column != "matricule":
            raise InvalidIdentifier("a matricule contains only digits")
    if username is not None:
        username = username.strip().lower()
        if not _USERNAME.fullmatch(username) or not any(c.isalpha() for c in username):
            raise InvalidAccountData(
                "a login name has 3 to 254 characters (a-z, 0-9, . _ @ + -) and at least one letter"
            )
    if profession is not None and not _PROFESSION.fullmatch(profession):
        raise InvalidAccountData("profession is an access-matrix column code such as 'med' or 'pha'")
    required: dict[PrincipalKind, tuple[str, ...]] = {
        PrincipalKind.PATIENT: ("matricule", "patient_id"),
        PrincipalKind.PROFESSIONAL: ("username", "practitioner_id", "profession"),
        PrincipalKind.HELPDESK: ("username",),
        PrincipalKind.ADMIN: ("username",),
    }
    given = {
        "matricule": matricule,
        "username": username,
        "patient_id": patient_id,
        "practitioner_id": practitioner_id,
        "profession": profession,
    }
    missing = [name for name in required.get(kind, ()) if not given[name]]
    if kind is PrincipalKind.REPRESENTATIVE and not (matricule or username):
        missing.append("matricule or username")
    if missing:
        raise InvalidAccountData(f"a {kind.value} account needs {', '.join(missing)}")
    email = _contact_of(email, "email")
    mobile = _contact_of(mobile, "mobile")
    clash = []
    if matricule:
        clash.append(account.c.matricule == matricule)
    if username:
        clash.append(account.c.username == username)
    if conn.execute(select(account.c.id).where(or_(*clash)).limit(1)).first() is not None:
        raise AccountExists("an account already uses this matricule or login name")
    account_id = uuid.uuid4().hex
    conn.execute(
        account.insert().values(
            id=account_id,
            kind=kind.value,
            status=AccountStatus.PENDING.value,
            display_name=display_name.strip(),
            matricule=matricule,
            username=username,
            patient_id=patient_id,
            practitioner_id=practitioner_id,
            practitioner_role_id=practitioner_role_id,
            organization_id=organization_id,
            profession=profession,
            email=email,
            mobile=mobile,
            language=language,
            totp_confirmed=False,
            failed_attempts=0,
            created=_utc(now),
        )
    )
    return get_account(conn, account_id)


def get_account(conn: Connection, account_id: str) -> Account:
    """The account with this id; raises AccountNotFound."""
    return _to_account(_row(conn, account_id))


def find_by_login(conn: Connection, login: str) -> Account | None:
    """The account a person means by ``login`` (matricule in either form, or login name), if any."""
    try:
        column, value = parse_login(login)
    except InvalidIdentifier:
        return None
    row = conn.execute(select(account).where(account.c[column] == value)).first()
    return _to_account(row) if row is not None else None


def set_status(
    conn: Connection, account_id: str, status: AccountStatus | str, *, now: datetime | None = None
) -> Account:
    """Agency act: lock, disable or (re-)activate an account. Re-activating clears the lockout;
    locking or disabling ends the account's sign-in sessions.

    Raises EnrolmentIncomplete when asked to activate an account whose enrolment is not finished.
    """
    status = AccountStatus(status)
    row = _row(conn, account_id)
    values: dict[str, Any] = {"status": status.value}
    if status is AccountStatus.ACTIVE:
        missing = _missing(row)
        if missing:
            raise EnrolmentIncomplete(account_id, missing)
        values.update(failed_attempts=0, locked_until=None)
    conn.execute(update(account).where(account.c.id == account_id).values(**values))
    if status in (AccountStatus.LOCKED, AccountStatus.DISABLED):
        sessions.end_all(conn, account_id, sessions.EndReason.ACCOUNT_STATUS, now=now)
    return get_account(conn, account_id)


def set_language(conn: Connection, account_id: str, language: str) -> Account:
    """Remember the portal language the person chose."""
    if language not in LANGUAGES:
        raise InvalidAccountData(f"language must be one of {', '.join(LANGUAGES)}")
    _row(conn, account_id)
    conn.execute(update(account).where(account.c.id == account_id).values(language=language))
    return get_account(conn, account_id)


def _missing(row: Row[Any]) -> tuple[str, ...]:
    """What enrolment still lacks: the activation code, a password, a confirmed TOTP."""
    missing = []
    if row.activated is None:
        missing.append("activation")
    if row.password_hash is None:
        missing.append("password")
    if not row.totp_confirmed:
        missing.append("totp")
    return tuple(missing)


def _refuse_unusable(row: Row[Any]) -> None:
    if row.status == AccountStatus.DISABLED:
        raise AccountDisabled()
    if row.status == AccountStatus.LOCKED:
        raise AccountLocked(None, message="the account is locked by the agency; contact the helpdesk")


def _complete(row: Row[Any], **changes: Any) -> dict[str, Any]:
    """``changes`` plus the move to active once activation, password and TOTP are all done."""
    merged = {**row._mapping, **changes}
    done = merged["activated"] is not None and merged["password_hash"] and merged["totp_confirmed"]
    if done and merged["status"] == AccountStatus.PENDING:
        changes["status"] = AccountStatus.ACTIVE.value
    return changes


# --- activation ------------------------------------------------------------------------------------


def issue_activation_code(
    conn: Connection, account_id: str, settings: Settings, *, now: datetime | None = None
) -> str:
    """A new single-use activation code for the letter, valid ``activation_code_days``.

    Returns the code formatted for print (``XXXX-XXXX-XXXX``); only a hash of it is kept. Any
    unused earlier code of the account is withdrawn: the newest letter is the valid one. Issuing a
    code for an active account is the recovery path (lost phone): redeeming it resets the
    password and the second factor. Raises AccountNotFound or AccountDisabled.
    """
    now = _utc(now)
    row = _row(conn, account_id)
    if row.status == AccountStatus.DISABLED:
        raise AccountDisabled()
    conn.execute(
        delete(activation_code).where(
            activation_code.c.account_id == account_id, activation_code.c.used_at.is_(None)
        )
    )
    code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    conn.execute(
        activation_code.insert().values(
            account_id=account_id,
            selector=code[:SELECTOR_LENGTH],
            verifier_hash=passwords.hash_password(code[SELECTOR_LENGTH:]),
            created=now,
            expires=now + timedelta(days=settings.activation_code_days),
            failed_attempts=0,
        )
    )
    return format_code(code)


def _activation_failure(
    conn: Connection, settings: Settings, identifier: str, codes: list[Row[Any]], now: datetime
) -> IdentityError:
    """Count a wrong activation attempt on the identifier and on the codes it hit; the error to raise."""
    locks = [throttle.failure(conn, ACTIVATE, identifier, _rule(settings), now)]
    for row in codes:
        locks.append(_count_failure(conn, settings, activation_code, activation_code.c.pk == row.pk, now))
    until = max((u for u in locks if u is not None), default=None)
    if until is not None:
        return TooManyAttempts(_aware(until), _aware(now))
    return InvalidActivationCode()


def activate(
    conn: Connection,
    settings: Settings,
    *,
    code: str,
    matricule_or_login: str,
    contact: str,
    now: datetime | None = None,
) -> Account:
    """Redeem an activation code (art. 3): the first step of enrolment, then password, then TOTP.

    Checks the identifier's form, the code, that code and identifier name the same account, that
    the code is unused and unexpired, and records ``contact`` (e-mail or mobile). Wrong attempts
    are counted per typed identifier and per code: after ``max_failed_attempts`` either is refused
    for ``lockout_minutes``. Raises InvalidIdentifier, InvalidContact, InvalidActivationCode,
    TooManyAttempts, ActivationCodeUsed, ActivationCodeExpired, AccountDisabled or AccountLocked.
    """
    now = _utc(now)
    column, identifier = parse_login(matricule_or_login)
    contact_field, contact_value = parse_contact(contact)
    until = throttle.locked_until(conn, ACTIVATE, identifier, now)
    if until is not None:
        raise TooManyAttempts(_aware(until), _aware(now))
    typed = _normalize_code(code)
    if typed is None:
        raise _activation_failure(conn, settings, identifier, [], now)
    candidates = conn.execute(
        select(activation_code).where(activation_code.c.selector == typed[:SELECTOR_LENGTH])
    ).all()
    open_codes = [c for c in candidates if c.locked_until is None or c.locked_until <= now]
    locked = [c.locked_until for c in candidates if c.locked_until is not None and c.locked_until > now]
    match = next(
        (c for c in open_codes if passwords.verify_password(c.verifier_hash, typed[SELECTOR_LENGTH:])), None
    )
    if match is None:
        error = _activation_failure(conn, settings, identifier, open_codes, now)
        if locked and isinstance(error, InvalidActivationCode):
            error = TooManyAttempts(_aware(max(locked)), _aware(now))
        raise error
    row = _row(conn, match.account_id)
    if row._mapping[column] != identifier:
        raise _activation_failure(conn, settings, identifier, [match], now)
    if match.used_at is not None:
        raise ActivationCodeUsed()
    if match.expires <= now:
        raise ActivationCodeExpired()
    _refuse_unusable(row)
    used = conn.execute(
        update(activation_code)
        .where(activation_code.c.pk == match.pk, activation_code.c.used_at.is_(None))
        .values(used_at=now)
    )
    if used.rowcount != 1:  # redeemed concurrently
        raise ActivationCodeUsed()
    values: dict[str, Any] = {
        contact_field: contact_value,
        "activated": now,
        "failed_attempts": 0,
        "locked_until": None,
    }
    if row.status == AccountStatus.ACTIVE:  # recovery by a new letter: enrol again from scratch
        values.update(
            status=AccountStatus.PENDING.value,
            password_hash=None,
            totp_secret=None,
            totp_pending_secret=None,
            totp_confirmed=False,
        )
        sessions.end_all(conn, row.id, sessions.EndReason.RECOVERY, now=now)
    conn.execute(update(account).where(account.c.id == row.id).values(**values))
    throttle.clear(conn, ACTIVATE, identifier)
    return get_account(conn, row.id)


# --- password and second factor --------------------------------------------------------------------


def set_password(
    conn: Connection,
    settings: Settings,
    account_id: str,
    password: str,
    *,
    now: datetime | None = None,
    keep_session: str | None = None,
) -> Account:
    """Set the password (enrolment after :func:`activate`, or a change after a fresh sign-in).

    The caller vouches for the person: the portal calls it for the account its session just
    activated or authenticated. Every sign-in session of the account ends (whoever knew the old
    password is signed out), except the one of token ``keep_session`` (the person changing it).
    Raises WeakPassword (``reason`` names the rule), EnrolmentIncomplete before activation,
    AccountDisabled or AccountLocked.
    """
    row = _row(conn, account_id)
    _refuse_unusable(row)
    if row.activated is None:
        raise EnrolmentIncomplete(account_id, ("activation",))
    passwords.check_policy(
        password,
        min_length=settings.password_min_length,
        identity=(row.matricule, row.username, row.email, row.display_name),
    )
    changes = _complete(row, password_hash=passwords.hash_password(password))
    conn.execute(update(account).where(account.c.id == account_id).values(**changes))
    sessions.end_all(conn, account_id, sessions.EndReason.PASSWORD, keep=keep_session, now=now)
    return get_account(conn, account_id)


def start_totp_enrolment(conn: Connection, account_id: str) -> tuple[str, str, str]:
    """A new TOTP secret for the account: ``(secret, otpauth URI, inline SVG QR code)``.

    The secret stays pending until :func:`confirm_totp` sees a code from it, so re-enrolling a new
    phone does not lose the old one halfway. The URI's label is the display name, never the
    matricule (authenticator apps and their cloud backups would keep it).
    """
    row = _row(conn, account_id)
    _refuse_unusable(row)
    if row.activated is None:
        raise EnrolmentIncomplete(account_id, ("activation",))
    secret = totp.new_secret()
    conn.execute(update(account).where(account.c.id == account_id).values(totp_pending_secret=secret))
    uri = totp.provisioning_uri(secret, row.display_name or row.username or "account")
    return secret, uri, totp.qr_svg(uri)


def confirm_totp(conn: Connection, account_id: str, code: str, *, now: datetime | None = None) -> Account:
    """Confirm the pending TOTP secret with a code from the app; the account becomes active once it
    also has a password. Raises InvalidSecondFactor (not counted: the person is enrolling)."""
    now = _utc(now)
    row = _row(conn, account_id)
    _refuse_unusable(row)
    if row.totp_pending_secret is None:
        raise InvalidSecondFactor("no second-factor enrolment in progress")
    step = totp.matching_step(row.totp_pending_secret, code, now, after=row.totp_last_step)
    if step is None:
        raise InvalidSecondFactor()
    changes = _complete(
        row,
        totp_secret=row.totp_pending_secret,
        totp_pending_secret=None,
        totp_confirmed=True,
        totp_last_step=step,
    )
    conn.execute(update(account).where(account.c.id == account_id).values(**changes))
    return get_account(conn, account_id)


# --- sign-in -----------------------------------------------------------------------------------------


def authenticate(
    conn: Connection,
    settings: Settings,
    *,
    login: str,
    password: str,
    totp_code: str | None = None,
    now: datetime | None = None,
) -> Account:
    """Sign in with login, password and TOTP code; returns the account on success.

    Unknown logins cost one dummy argon2 verification and are throttled like accounts, so neither
    timing nor lockouts reveal which logins exist. Wrong passwords and wrong TOTP codes both count
    towards the lockout. Account state is revealed only after the password is verified. With
    ``totp_code`` None, a right password raises SecondFactorRequired and the portal continues with
    :func:`verify_second_factor`. A password hashed with older parameters is re-hashed.
    Raises InvalidIdentifier, InvalidCredentials, AccountLocked, AccountDisabled,
    EnrolmentIncomplete, SecondFactorRequired or InvalidSecondFactor.
    """
    now = _utc(now)
    column, identifier = parse_login(login)
    row = conn.execute(select(account).where(account.c[column] == identifier)).first()
    if row is None:
        until = throttle.locked_until(conn, LOGIN, identifier, now)
        if until is None:
            passwords.verify_dummy(password)
            until = throttle.failure(conn, LOGIN, identifier, _rule(settings), now)
        if until is not None:
            raise AccountLocked(_aware(until), _aware(now))
        raise InvalidCredentials()
    if row.locked_until is not None and row.locked_until > now:
        raise AccountLocked(_aware(row.locked_until), _aware(now))
    if row.password_hash is None or not passwords.verify_password(row.password_hash, password):
        if row.password_hash is None:
            passwords.verify_dummy(password)
        until = _count_failure(conn, settings, account, account.c.id == row.id, now)
        if until is not None:
            raise AccountLocked(_aware(until), _aware(now))
        raise InvalidCredentials()
    if passwords.needs_rehash(row.password_hash):
        conn.execute(
            update(account)
            .where(account.c.id == row.id)
            .values(password_hash=passwords.hash_password(password))
        )
    _refuse_unusable(row)
    missing = _missing(row)
    if missing:
        raise EnrolmentIncomplete(row.id, missing)
    if totp_code is None:
        raise SecondFactorRequired(row.id)
    return _second_factor(conn, settings, row, totp_code, now)


def verify_second_factor(
    conn: Connection, settings: Settings, account_id: str, totp_code: str, *, now: datetime | None = None
) -> Account:
    """Second step of a two-step sign-in, for the account named by SecondFactorRequired.

    The caller must have verified the password in this sign-in (the portal keeps the account id in
    a half-authenticated session). Wrong codes count towards the lockout. Raises AccountLocked,
    AccountDisabled, EnrolmentIncomplete or InvalidSecondFactor.
    """
    now = _utc(now)
    row = _row(conn, account_id)
    if row.locked_until is not None and row.locked_until > now:
        raise AccountLocked(_aware(row.locked_until), _aware(now))
    _refuse_unusable(row)
    missing = _missing(row)
    if missing:
        raise EnrolmentIncomplete(row.id, missing)
    return _second_factor(conn, settings, row, totp_code, now)


def _second_factor(conn: Connection, settings: Settings, row: Row[Any], code: str, now: datetime) -> Account:
    """Check the TOTP code, refusing any step not after the last accepted one; record the sign-in."""
    step = totp.matching_step(row.totp_secret, code, now, after=row.totp_last_step)
    if step is not None:
        # Conditional on the last step, so two sign-ins racing with one code cannot both pass.
        done = conn.execute(
            update(account)
            .where(
                account.c.id == row.id,
                or_(account.c.totp_last_step.is_(None), account.c.totp_last_step < step),
            )
            .values(totp_last_step=step, failed_attempts=0, locked_until=None, last_login=now)
        )
        if done.rowcount == 1:
            return get_account(conn, row.id)
    until = _count_failure(conn, settings, account, account.c.id == row.id, now)
    if until is not None:
        raise AccountLocked(_aware(until), _aware(now))
    raise InvalidSecondFactor()


def purge_attempts(
    conn: Connection, *, now: datetime | None = None, idle: timedelta = timedelta(days=1)
) -> int:
    """Forget per-identifier failure counts idle for ``idle`` and not locked (a scheduled job).

    Unknown logins never succeed, so their rows are only ever removed here. Returns rows deleted.
    """
    now = _utc(now)
    result = conn.execute(
        delete(attempt_throttle).where(
            attempt_throttle.c.updated < now - idle,
            or_(attempt_throttle.c.locked_until.is_(None), attempt_throttle.c.locked_until <= now),
        )
    )
    return result.rowcount


def principal_for(account: Account) -> Principal:
    """The principal of a signed-in person: identity only; rights come from ``access.policy``.

    Representatives' ``acting_for`` is left empty: the access module resolves the delegations.
    Raises AccountDisabled, AccountLocked or EnrolmentIncomplete unless the account is active.
    """
    if account.status is AccountStatus.DISABLED:
        raise AccountDisabled()
    if account.status is AccountStatus.LOCKED:
        raise AccountLocked(None, message="the account is locked by the agency")
    if account.status is not AccountStatus.ACTIVE:
        missing = (
            ("activation",) * (account.activated is None)
            + ("password",) * (not account.has_password)
            + ("totp",) * (not account.totp_confirmed)
        )
        raise EnrolmentIncomplete(account.id, missing)
    return Principal(
        kind=account.kind,
        subject=account.id,
        display=account.display_name,
        patient_id=account.patient_id,
        practitioner_id=account.practitioner_id,
        practitioner_role_id=account.practitioner_role_id,
        organization_id=account.organization_id,
        profession=account.profession,
    )


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction for the services: committed on success **and** on an IdentityError.

    Failed attempts must survive the error that reports them, or lockouts would never happen.
    Other exceptions roll back. Anything the caller wrote in the block before the error (an audit
    record of the failed attempt, say) is committed with the counters.
    """
    with writer(engine).connect() as conn:
        trans = conn.begin()
        try:
            yield conn
        except IdentityError:
            trans.commit()
            raise
        except BaseException:
            trans.rollback()
            raise
        trans.commit()
