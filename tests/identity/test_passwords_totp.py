"""Password hashing and policy, TOTP steps, and the parsing of what people type (no database)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pyotp
import pytest

from sharedcare.identity import passwords, totp
from sharedcare.identity.accounts import _normalize_code, format_code, parse_contact, parse_login
from sharedcare.identity.errors import InvalidContact, InvalidIdentifier, TooManyAttempts, WeakPassword

T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def cheap_hashing() -> Iterator[None]:
    previous = passwords.set_parameters(passwords.HashParameters(1, 8, 1))
    yield
    passwords.set_parameters(previous)


def test_hash_and_verify() -> None:
    hashed = passwords.hash_password("a long enough passphrase")
    assert hashed.startswith("$argon2id$v=19$m=8,t=1,p=1$")
    assert passwords.verify_password(hashed, "a long enough passphrase")
    assert not passwords.verify_password(hashed, "a long enough passphrasE")
    assert not passwords.verify_password("not a hash", "anything")
    assert passwords.needs_rehash("not a hash")
    assert hashed != passwords.hash_password("a long enough passphrase")  # salted


def test_parameters_are_restorable() -> None:
    previous = passwords.set_parameters(passwords.HashParameters(2, 16, 1))
    assert passwords.current_parameters() == passwords.HashParameters(2, 16, 1)
    passwords.set_parameters(previous)
    assert passwords.current_parameters() == passwords.HashParameters(1, 8, 1)
    assert passwords.HashParameters(3, 65536, 4) == passwords.DEFAULT_PARAMETERS


def test_policy_accepts_passphrases() -> None:
    passwords.check_policy("correct horse battery staple", min_length=12)
    passwords.check_policy("Ënnerwee op Lëtzebuerg", min_length=12, identity=("1980010100187", None))
    with pytest.raises(WeakPassword, match="at least 20"):
        passwords.check_policy("correct horse", min_length=20)
    with pytest.raises(WeakPassword) as info:
        passwords.check_policy("x" * 1025 + "abcde", min_length=12)
    assert info.value.reason == "too-long"


def test_totp_window_replay_and_format() -> None:
    secret = totp.new_secret()
    assert len(secret) == 32
    gen = pyotp.TOTP(secret)
    step = totp.current_step(T0)
    assert step == int(T0.timestamp()) // 30
    assert totp.current_step(T0.replace(tzinfo=None)) == step  # naive means UTC
    assert totp.matching_step(secret, gen.at(T0), T0) == step
    spaced = gen.at(T0)[:3] + " " + gen.at(T0)[3:]
    assert totp.matching_step(secret, spaced, T0) == step
    assert totp.matching_step(secret, gen.at(T0 - timedelta(seconds=30)), T0) == step - 1
    assert totp.matching_step(secret, gen.at(T0 + timedelta(seconds=30)), T0) == step + 1
    assert totp.matching_step(secret, gen.at(T0 - timedelta(seconds=60)), T0) is None
    assert totp.matching_step(secret, gen.at(T0), T0, after=step) is None
    assert totp.matching_step(secret, gen.at(T0), T0, after=step - 1) == step
    for bad in ("", "12345", "1234567", "abcdef"):
        assert totp.matching_step(secret, bad, T0) is None


def test_provisioning_uri_and_qr() -> None:
    uri = totp.provisioning_uri("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP", "Dr Jean Muller")
    assert (
        uri
        == "otpauth://totp/SharedCare:Dr%20Jean%20Muller?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=SharedCare"
    )
    svg = totp.qr_svg(uri)
    assert svg.startswith("<svg") and svg.endswith("</svg>") and 'class="totp-qr"' in svg


def test_parse_login() -> None:
    assert parse_login(" 1980 0101 001 87 ") == ("matricule", "1980010100187")
    assert parse_login("19800101001") == ("matricule", "1980010100187")
    assert parse_login("Dr.Muller@Cabinet.lu") == ("username", "dr.muller@cabinet.lu")
    with pytest.raises(InvalidIdentifier, match="enter your matricule"):
        parse_login("   ")
    with pytest.raises(InvalidIdentifier, match="first check digit"):
        parse_login("1980010100197")


def test_parse_contact() -> None:
    assert parse_contact("Jean.Muller@Post.LU") == ("email", "Jean.Muller@post.lu")
    assert parse_contact("621 123 456") == ("mobile", "+352621123456")
    assert parse_contact("0049 170 1234567") == ("mobile", "+491701234567")
    assert parse_contact("+33 (6) 12-34-56-78") == ("mobile", "+33612345678")
    for bad in ("jean@post", "@post.lu", "12", "+0123456789", "call me"):
        with pytest.raises(InvalidContact):
            parse_contact(bad)


def test_activation_code_typing_is_forgiving() -> None:
    assert format_code("0123456789AB") == "0123-4567-89AB"
    assert _normalize_code("o123 4567-89ab") == "0123456789AB"
    assert _normalize_code("I1L1-0000-0000") == "111100000000"
    assert _normalize_code("0123-4567-89AU") is None  # U is not in the alphabet
    assert _normalize_code("0123-4567-89A") is None


def test_retry_after_is_whole_seconds() -> None:
    error = TooManyAttempts(T0 + timedelta(seconds=90.2), T0)
    assert error.retry_after == 91 and error.until == T0 + timedelta(seconds=90.2)
    assert TooManyAttempts(None).retry_after is None
