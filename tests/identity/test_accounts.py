"""Account services on SQLite and PostgreSQL: activation by letter, enrolment, sign-in, lockouts.

Time is passed explicitly (``now``), never slept; argon2 runs for real with cheap parameters.
Every attempt runs in ``accounts.transaction`` as the portal will, so failure counters are
committed even though the call raises.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pyotp
import pytest
from sqlalchemy import Engine, select

from sharedcare.access.principals import PrincipalKind
from sharedcare.identity import accounts, passwords
from sharedcare.identity.accounts import Account
from sharedcare.identity.errors import (
    AccountDisabled,
    AccountExists,
    AccountLocked,
    ActivationCodeExpired,
    ActivationCodeUsed,
    EnrolmentIncomplete,
    InvalidAccountData,
    InvalidActivationCode,
    InvalidContact,
    InvalidCredentials,
    InvalidIdentifier,
    InvalidSecondFactor,
    SecondFactorRequired,
    TooManyAttempts,
    WeakPassword,
)
from sharedcare.identity.matricule import generate
from sharedcare.identity.models import AccountStatus, account, activation_code, attempt_throttle
from sharedcare.settings import Settings
from support import cheap_passwords, emptied_engine

T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
MATRICULE = generate(datetime(1980, 1, 1).date(), 1)  # 1980010100187
PASSWORD = "correct horse battery staple"
R = TypeVar("R")


@pytest.fixture(autouse=True)
def cheap_hashing() -> Iterator[None]:
    """Real argon2id with the smallest costs: the suite stays fast, the code paths stay real."""
    yield from cheap_passwords()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    yield from emptied_engine(db_url)


def run(engine: Engine, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """Call a service in its own transaction, committed even when it raises (as the portal does)."""
    with accounts.transaction(engine) as conn:
        return fn(conn, *args, **kwargs)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def code_at(secret: str, when: datetime) -> str:
    return pyotp.TOTP(secret).at(when)


def new_patient(engine: Engine, settings: Settings, *, matricule: str = MATRICULE) -> tuple[Account, str]:
    acc = run(
        engine,
        accounts.create_account,
        PrincipalKind.PATIENT,
        display_name="Marie Schmit",
        matricule=matricule,
        patient_id="pat-1",
        now=T0,
    )
    code = run(engine, accounts.issue_activation_code, acc.id, settings, now=T0)
    return acc, code


def enrolled_patient(engine: Engine, settings: Settings) -> tuple[Account, str]:
    """An active patient enrolled at T0; returns the account and its TOTP secret."""
    acc, code = new_patient(engine, settings)
    run(engine, _activate, settings, code, MATRICULE, "marie@example.lu", at(1))
    run(engine, accounts.set_password, settings, acc.id, PASSWORD)
    secret, _, _ = run(engine, accounts.start_totp_enrolment, acc.id)
    acc = run(engine, accounts.confirm_totp, acc.id, code_at(secret, at(2)), now=at(2))
    assert acc.status is AccountStatus.ACTIVE
    return acc, secret


def _activate(conn: Any, settings: Settings, code: str, ident: str, contact: str, now: datetime) -> Account:
    return accounts.activate(conn, settings, code=code, matricule_or_login=ident, contact=contact, now=now)


def login(engine: Engine, settings: Settings, secret: str | None, when: datetime, **kw: Any) -> Account:
    args: dict[str, Any] = {"login": MATRICULE, "password": PASSWORD, "now": when}
    if secret is not None:
        args["totp_code"] = code_at(secret, when)
    args.update(kw)
    return run(engine, accounts.authenticate, settings, **args)


# --- activation ------------------------------------------------------------------------------------


def test_patient_full_activation_path(engine: Engine, settings: Settings) -> None:
    acc, code = new_patient(engine, settings)
    assert acc.status is AccountStatus.PENDING and acc.login == MATRICULE
    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}", code)

    typed = " " + code.lower().replace("-", " ") + " "  # as typed from the letter
    spaced = f"{MATRICULE[:4]} {MATRICULE[4:8]} {MATRICULE[8:11]} {MATRICULE[11:]}"
    acc = run(engine, _activate, settings, typed, spaced, "Marie@Example.LU", at(60))
    assert acc.email == "Marie@example.lu"
    assert acc.activated == at(60)
    assert acc.status is AccountStatus.PENDING
    with pytest.raises(EnrolmentIncomplete) as info:
        accounts.principal_for(acc)
    assert info.value.missing == ("password", "totp")

    acc = run(engine, accounts.set_password, settings, acc.id, PASSWORD)
    assert acc.has_password and acc.status is AccountStatus.PENDING
    secret, uri, svg = run(engine, accounts.start_totp_enrolment, acc.id)
    assert uri.startswith("otpauth://totp/SharedCare:Marie%20Schmit?") and "issuer=SharedCare" in uri
    assert f"secret={secret}" in uri and MATRICULE not in uri
    assert svg.startswith("<svg") and "<title>" in svg
    acc = run(engine, accounts.confirm_totp, acc.id, code_at(secret, at(120)), now=at(120))
    assert acc.status is AccountStatus.ACTIVE and acc.totp_confirmed

    acc = login(engine, settings, secret, at(180))
    assert acc.last_login == at(180) and acc.failed_attempts == 0
    principal = accounts.principal_for(acc)
    assert principal.kind is PrincipalKind.PATIENT
    assert (principal.subject, principal.patient_id, principal.display) == (acc.id, "pat-1", "Marie Schmit")

    # Neither the code nor the TOTP enrolment secret leaves anything readable behind.
    with engine.connect() as conn:
        rows = conn.execute(select(activation_code)).all()
        stored = conn.execute(select(account)).one()
    raw = code.replace("-", "")
    assert len(rows) == 1 and rows[0].selector == raw[:5] and raw[5:] not in rows[0].verifier_hash
    assert rows[0].verifier_hash.startswith("$argon2id$")
    assert stored.password_hash.startswith("$argon2id$") and PASSWORD not in stored.password_hash
    assert stored.totp_pending_secret is None and stored.totp_secret == secret


def test_old_eleven_digit_matricule_is_accepted_and_upgraded(engine: Engine, settings: Settings) -> None:
    acc, code = new_patient(engine, settings)
    acc = run(engine, _activate, settings, code, MATRICULE[:11], "+352 621 123 456", at(1))
    assert acc.matricule == MATRICULE and acc.mobile == "+352621123456"
    with engine.connect() as conn:
        found = accounts.find_by_login(conn, MATRICULE[:11])
    assert found is not None and found.id == acc.id


def test_invalid_matricule_is_named(engine: Engine, settings: Settings) -> None:
    _, code = new_patient(engine, settings)
    wrong = MATRICULE[:12] + str((int(MATRICULE[12]) + 1) % 10)
    with pytest.raises(InvalidIdentifier, match="second check digit"):
        run(engine, _activate, settings, code, wrong, "marie@example.lu", at(1))
    with pytest.raises(InvalidIdentifier, match="12"):
        run(engine, accounts.authenticate, settings, login="198001010018", password="x", now=at(1))
    with pytest.raises(InvalidIdentifier):
        run(engine, accounts.create_account, "patient", display_name="X", matricule="123", patient_id="p")
    # A malformed identifier is not an attempt on anything: nothing was counted.
    assert run(engine, _activate, settings, code, MATRICULE, "marie@example.lu", at(2)).activated


def test_invalid_contact(engine: Engine, settings: Settings) -> None:
    _, code = new_patient(engine, settings)
    for contact in ("marie@", "12", ""):
        with pytest.raises(InvalidContact):
            run(engine, _activate, settings, code, MATRICULE, contact, at(1))


def test_expired_code(engine: Engine, settings: Settings) -> None:
    _, code = new_patient(engine, settings)
    late = T0 + timedelta(days=settings.activation_code_days, seconds=1)
    with pytest.raises(ActivationCodeExpired):
        run(engine, _activate, settings, code, MATRICULE, "marie@example.lu", late)
    just_in_time = T0 + timedelta(days=settings.activation_code_days, seconds=-1)
    assert run(engine, _activate, settings, code, MATRICULE, "marie@example.lu", just_in_time).activated


def test_code_is_single_use(engine: Engine, settings: Settings) -> None:
    _, code = new_patient(engine, settings)
    run(engine, _activate, settings, code, MATRICULE, "marie@example.lu", at(1))
    with pytest.raises(ActivationCodeUsed):
        run(engine, _activate, settings, code, MATRICULE, "marie@example.lu", at(2))


def test_a_new_letter_withdraws_the_previous_code(engine: Engine, settings: Settings) -> None:
    acc, first = new_patient(engine, settings)
    second = run(engine, accounts.issue_activation_code, acc.id, settings, now=at(10))
    with pytest.raises(InvalidActivationCode):
        run(engine, _activate, settings, first, MATRICULE, "marie@example.lu", at(20))
    assert run(engine, _activate, settings, second, MATRICULE, "marie@example.lu", at(30)).activated


def test_wrong_codes_lock_the_identifier_then_unlock(engine: Engine, settings: Settings) -> None:
    _, code = new_patient(engine, settings)
    limit = settings.max_failed_attempts
    wrong = "ABCD-EFGH-JKMN" if code != "ABCD-EFGH-JKMN" else "ABCD-EFGH-JKMP"
    for attempt in range(1, limit):
        with pytest.raises(InvalidActivationCode):
            run(engine, _activate, settings, wrong, MATRICULE, "marie@example.lu", at(attempt))
    with pytest.raises(TooManyAttempts) as info:
        run(engine, _activate, settings, "not a code", MATRICULE, "marie@example.lu", at(limit))
    assert info.value.retry_after == settings.lockout_minutes * 60
    # Even the right code is refused during the lock...
    with pytest.raises(TooManyAttempts) as info:
        run(engine, _activate, settings, code, MATRICULE, "marie@example.lu", at(limit + 60))
    assert info.value.retry_after == settings.lockout_minutes * 60 - 60
    # ...and accepted once the lock has passed.
    after = at(limit) + timedelta(minutes=settings.lockout_minutes, seconds=1)
    assert run(engine, _activate, settings, code, MATRICULE, "marie@example.lu", after).activated


def test_right_code_with_wrong_identifiers_locks_the_code(engine: Engine, settings: Settings) -> None:
    """A stolen letter: guessing the matricule that goes with it is rate-limited on the code itself."""
    _, code = new_patient(engine, settings)
    guesses = [
        generate(datetime(1980, 1, 1).date(), seq) for seq in range(2, 2 + settings.max_failed_attempts)
    ]
    for guess in guesses[:-1]:
        with pytest.raises(InvalidActivationCode):
            run(engine, _activate, settings, code, guess, "thief@example.com", at(1))
    with pytest.raises(TooManyAttempts):
        run(engine, _activate, settings, code, guesses[-1], "thief@example.com", at(2))
    # Each guessed identifier was tried once only, yet the code is now locked for everyone.
    with pytest.raises(TooManyAttempts):
        run(engine, _activate, settings, code, MATRICULE, "marie@example.lu", at(3))
    later = at(2) + timedelta(minutes=settings.lockout_minutes, seconds=1)
    acc = run(engine, _activate, settings, code, MATRICULE, "marie@example.lu", later)
    assert acc.email == "marie@example.lu"


def test_new_letter_for_an_active_account_restarts_enrolment(engine: Engine, settings: Settings) -> None:
    acc, _ = enrolled_patient(engine, settings)
    code = run(engine, accounts.issue_activation_code, acc.id, settings, now=at(100))
    acc = run(engine, _activate, settings, code, MATRICULE, "marie@example.lu", at(200))
    assert acc.status is AccountStatus.PENDING
    assert not acc.has_password and not acc.totp_confirmed
    with pytest.raises(InvalidCredentials):
        login(engine, settings, None, at(300))


# --- password and TOTP -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short", "too-short"),
        ("aaaaaaaaaaaaaaaa", "too-simple"),
        ("1234567890123", "too-simple"),
        ("Password2024!", "common"),
        ("azertyazertyazerty", "common"),
        (f"my id {MATRICULE}", "contains-identity"),
        ("19800101-holidays", "contains-identity"),
        ("schmit-forever-99", "contains-identity"),
    ],
)
def test_weak_passwords_are_refused(engine: Engine, settings: Settings, password: str, reason: str) -> None:
    acc, code = new_patient(engine, settings)
    run(engine, _activate, settings, code, MATRICULE, "marie@example.lu", at(1))
    with pytest.raises(WeakPassword) as info:
        run(engine, accounts.set_password, settings, acc.id, password)
    assert info.value.reason == reason
    assert not run(engine, accounts.get_account, acc.id).has_password


def test_password_needs_activation_first(engine: Engine, settings: Settings) -> None:
    acc, _ = new_patient(engine, settings)
    with pytest.raises(EnrolmentIncomplete):
        run(engine, accounts.set_password, settings, acc.id, PASSWORD)
    with pytest.raises(EnrolmentIncomplete):
        run(engine, accounts.start_totp_enrolment, acc.id)


def test_password_is_rehashed_when_parameters_change(engine: Engine, settings: Settings) -> None:
    acc, secret = enrolled_patient(engine, settings)
    with engine.connect() as conn:
        before = conn.execute(select(account.c.password_hash)).scalar_one()
    assert "t=1" in before
    passwords.set_parameters(passwords.HashParameters(time_cost=2, memory_cost=16, parallelism=1))
    assert passwords.needs_rehash(before)
    login(engine, settings, secret, at(60))
    with engine.connect() as conn:
        after = conn.execute(select(account.c.password_hash)).scalar_one()
    assert "t=2" in after and "m=16" in after and not passwords.needs_rehash(after)
    assert login(engine, settings, secret, at(120)).id == acc.id  # the new hash verifies


def test_wrong_totp_counts_as_a_failure(engine: Engine, settings: Settings) -> None:
    acc, secret = enrolled_patient(engine, settings)
    wrong = f"{(int(code_at(secret, at(60))) + 1) % 1_000_000:06d}"
    with pytest.raises(InvalidSecondFactor):
        login(engine, settings, None, at(60), totp_code=wrong)
    with pytest.raises(InvalidSecondFactor):
        login(engine, settings, None, at(90), totp_code="12345")
    assert run(engine, accounts.get_account, acc.id).failed_attempts == 2
    assert login(engine, settings, secret, at(120)).failed_attempts == 0


def test_wrong_totp_codes_lock_the_account(engine: Engine, settings: Settings) -> None:
    _, secret = enrolled_patient(engine, settings)
    for attempt in range(1, settings.max_failed_attempts):
        with pytest.raises(InvalidSecondFactor):
            login(engine, settings, None, at(60 + attempt), totp_code="000000")
    with pytest.raises(AccountLocked):
        login(engine, settings, None, at(70), totp_code="000000")
    with pytest.raises(AccountLocked):
        login(engine, settings, secret, at(100))


def test_totp_window_and_replay(engine: Engine, settings: Settings) -> None:
    _, secret = enrolled_patient(engine, settings)
    # The code of the previous step is still accepted (clock drift) ...
    login(engine, settings, None, at(300), totp_code=code_at(secret, at(270)))
    # ... but never twice, not even 10 s later within its window.
    with pytest.raises(InvalidSecondFactor):
        login(engine, settings, None, at(310), totp_code=code_at(secret, at(270)))
    # A code two steps old is refused.
    with pytest.raises(InvalidSecondFactor):
        login(engine, settings, None, at(400), totp_code=code_at(secret, at(340)))
    login(engine, settings, secret, at(400))
    with pytest.raises(InvalidSecondFactor):
        login(engine, settings, secret, at(400))


def test_enrolment_code_cannot_be_replayed_at_login(engine: Engine, settings: Settings) -> None:
    _, secret = enrolled_patient(engine, settings)  # confirmed with the code of at(2)
    with pytest.raises(InvalidSecondFactor):
        login(engine, settings, None, at(10), totp_code=code_at(secret, at(2)))


def test_two_step_sign_in(engine: Engine, settings: Settings) -> None:
    acc, secret = enrolled_patient(engine, settings)
    with pytest.raises(SecondFactorRequired) as info:
        login(engine, settings, None, at(60))
    assert info.value.account_id == acc.id
    done = run(engine, accounts.verify_second_factor, settings, acc.id, code_at(secret, at(70)), now=at(70))
    assert done.last_login == at(70)


def test_reenrolling_keeps_the_old_factor_until_confirmed(engine: Engine, settings: Settings) -> None:
    acc, old = enrolled_patient(engine, settings)
    new, _, _ = run(engine, accounts.start_totp_enrolment, acc.id)
    login(engine, settings, old, at(60))  # the old phone still works
    with pytest.raises(InvalidSecondFactor):
        run(engine, accounts.confirm_totp, acc.id, code_at(old, at(120)), now=at(120))
    run(engine, accounts.confirm_totp, acc.id, code_at(new, at(120)), now=at(120))
    with pytest.raises(InvalidSecondFactor):
        login(engine, settings, old, at(180))
    login(engine, settings, new, at(210))


# --- sign-in lockouts and account states -----------------------------------------------------------


def test_brute_force_login_lockout(engine: Engine, settings: Settings) -> None:
    acc, secret = enrolled_patient(engine, settings)
    limit = settings.max_failed_attempts
    for attempt in range(1, limit):
        with pytest.raises(InvalidCredentials):
            login(engine, settings, secret, at(60 + attempt), password=f"guess number {attempt}")
    with pytest.raises(AccountLocked) as info:
        login(engine, settings, secret, at(60 + limit), password="the last guess")
    assert info.value.retry_after == settings.lockout_minutes * 60
    # The right password is refused while locked, and is not even checked.
    with pytest.raises(AccountLocked):
        login(engine, settings, secret, at(200))
    unlocked = at(60 + limit) + timedelta(minutes=settings.lockout_minutes, seconds=1)
    acc = login(engine, settings, secret, unlocked)
    assert acc.failed_attempts == 0 and acc.locked_until is None


def test_unknown_logins_behave_like_known_ones(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No account enumeration: a dummy hash is verified and the same lockout follows."""
    calls: list[str] = []
    real = passwords.verify_dummy
    monkeypatch.setattr(passwords, "verify_dummy", lambda pw: (calls.append(pw), real(pw))[1])
    for attempt in range(1, settings.max_failed_attempts):
        with pytest.raises(InvalidCredentials):
            login(engine, settings, None, at(attempt), login="Nobody@Example.lu", password="x")
    with pytest.raises(AccountLocked) as info:
        login(engine, settings, None, at(10), login="nobody@example.lu", password="x")
    assert info.value.retry_after == settings.lockout_minutes * 60
    assert len(calls) == settings.max_failed_attempts
    with engine.connect() as conn:  # the typed login is not stored in clear
        keys = conn.execute(select(attempt_throttle.c.key)).scalars().all()
    assert keys and all(re.fullmatch(r"[0-9a-f]{64}", k) for k in keys)
    # The scheduled purge keeps locked rows and forgets idle ones.
    assert run(engine, accounts.purge_attempts, now=at(20), idle=timedelta(seconds=1)) == 0
    assert run(engine, accounts.purge_attempts, now=at(10) + timedelta(days=1, minutes=1)) == 1


def test_professional_must_enrol_totp(engine: Engine, settings: Settings) -> None:
    pro = run(
        engine,
        accounts.create_account,
        "professional",
        display_name="Dr Jean Muller",
        username="J.Muller@cabinet.lu",
        practitioner_id="prac-7",
        practitioner_role_id="role-7",
        organization_id="org-3",
        profession="med",
        language="de",
        now=T0,
    )
    assert pro.username == "j.muller@cabinet.lu" and pro.login == "j.muller@cabinet.lu"
    code = run(engine, accounts.issue_activation_code, pro.id, settings, now=T0)
    run(engine, _activate, settings, code, "J.MULLER@cabinet.lu", "+352 691 000 111", at(1))
    run(engine, accounts.set_password, settings, pro.id, "Stethoscope-Echographie")
    pw = {"login": "j.muller@cabinet.lu", "password": "Stethoscope-Echographie"}
    with pytest.raises(EnrolmentIncomplete) as info:
        run(engine, accounts.authenticate, settings, **pw, totp_code="000000", now=at(30))
    assert info.value.missing == ("totp",) and info.value.account_id == pro.id
    with pytest.raises(EnrolmentIncomplete):
        accounts.principal_for(run(engine, accounts.get_account, pro.id))
    secret, _, _ = run(engine, accounts.start_totp_enrolment, pro.id)
    run(engine, accounts.confirm_totp, pro.id, code_at(secret, at(60)), now=at(60))
    pro = run(engine, accounts.authenticate, settings, **pw, totp_code=code_at(secret, at(90)), now=at(90))
    principal = accounts.principal_for(pro)
    assert principal.kind is PrincipalKind.PROFESSIONAL and principal.subject == pro.id
    assert (principal.practitioner_id, principal.practitioner_role_id) == ("prac-7", "role-7")
    assert (principal.organization_id, principal.profession, principal.patient_id) == ("org-3", "med", None)


def test_disabled_account_is_refused(engine: Engine, settings: Settings) -> None:
    acc, secret = enrolled_patient(engine, settings)
    run(engine, accounts.set_status, acc.id, AccountStatus.DISABLED)
    with pytest.raises(AccountDisabled):
        login(engine, settings, secret, at(60))
    # A wrong password reveals nothing about the state.
    with pytest.raises(InvalidCredentials):
        login(engine, settings, secret, at(90), password="wrong wrong wrong")
    with pytest.raises(AccountDisabled):
        run(engine, accounts.issue_activation_code, acc.id, settings)
    with pytest.raises(AccountDisabled):
        accounts.principal_for(run(engine, accounts.get_account, acc.id))


def test_agency_lock_and_unlock(engine: Engine, settings: Settings) -> None:
    acc, secret = enrolled_patient(engine, settings)
    run(engine, accounts.set_status, acc.id, "locked")
    with pytest.raises(AccountLocked) as info:
        login(engine, settings, secret, at(60))
    assert info.value.until is None and info.value.retry_after is None
    run(engine, accounts.set_status, acc.id, AccountStatus.ACTIVE)
    assert login(engine, settings, secret, at(90)).status is AccountStatus.ACTIVE


def test_cannot_activate_an_incomplete_account_by_status(engine: Engine, settings: Settings) -> None:
    acc, _ = new_patient(engine, settings)
    with pytest.raises(EnrolmentIncomplete):
        run(engine, accounts.set_status, acc.id, "active")


# --- creation ---------------------------------------------------------------------------------------


def test_account_creation_rules(engine: Engine) -> None:
    run(engine, accounts.create_account, "patient", display_name="A", matricule=MATRICULE, patient_id="p1")
    with pytest.raises(AccountExists):
        run(
            engine,
            accounts.create_account,
            "patient",
            display_name="B",
            matricule=MATRICULE[:11],
            patient_id="p2",
        )
    with pytest.raises(InvalidAccountData, match="patient_id"):
        other = generate(datetime(1990, 5, 5).date(), 3)
        run(engine, accounts.create_account, "patient", display_name="C", matricule=other)
    with pytest.raises(InvalidAccountData, match="OAuth"):
        run(engine, accounts.create_account, "system", display_name="Lab", username="lab")
    with pytest.raises(InvalidAccountData, match="language"):
        run(engine, accounts.create_account, "admin", display_name="Ad", username="admin1", language="lb")
    with pytest.raises(InvalidAccountData, match="letter"):
        run(engine, accounts.create_account, "helpdesk", display_name="H", username="12345")
    with pytest.raises(InvalidContact):
        run(
            engine,
            accounts.create_account,
            "helpdesk",
            display_name="H",
            username="help",
            email="+352621123456",
        )
    rep = run(engine, accounts.create_account, "representative", display_name="Tutor", username="tutor.one")
    assert rep.kind is PrincipalKind.REPRESENTATIVE and rep.login == "tutor.one"
    with pytest.raises(InvalidAccountData):
        run(engine, accounts.create_account, "representative", display_name="Nobody")
    with pytest.raises(AccountExists):
        run(engine, accounts.create_account, "admin", display_name="Ad", username="TUTOR.one")


def test_language_is_remembered(engine: Engine) -> None:
    acc = run(engine, accounts.create_account, "admin", display_name="Ad", username="admin1")
    assert acc.language == "fr"
    assert run(engine, accounts.set_language, acc.id, "en").language == "en"
    with pytest.raises(InvalidAccountData):
        run(engine, accounts.set_language, acc.id, "xx")


def test_transaction_rolls_back_other_errors(engine: Engine) -> None:
    with pytest.raises(RuntimeError), accounts.transaction(engine) as conn:
        accounts.create_account(conn, "admin", display_name="Ad", username="admin1")
        raise RuntimeError("boom")
    with engine.connect() as conn:
        assert accounts.find_by_login(conn, "admin1") is None
