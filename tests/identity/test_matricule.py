"""The matricule rules of DOMAIN.md §1.12: Luhn then Verhoeff, both over the first 11 digits."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sharedcare.identity import matricule
from sharedcare.identity.matricule import InvalidMatricule, birth_date, generate, is_valid, normalize

# Test vectors from DOMAIN.md §1.12 (checked there with python-stdnum).
VALID = ["1893120105732", "1980010100187", "2024013112305", "1945050899965"]

dates = st.dates(min_value=datetime.date(1850, 1, 1), max_value=datetime.date(2099, 12, 31))
sequences = st.integers(min_value=0, max_value=999)


@pytest.mark.parametrize("value", VALID)
def test_domain_examples_are_valid(value: str) -> None:
    assert is_valid(value)
    assert normalize(value) == value


def test_oecd_example_birth_date() -> None:
    assert birth_date("1893120105732") == datetime.date(1893, 12, 1)
    assert birth_date("2024013112305") == datetime.date(2024, 1, 31)


def test_verhoeff_failure_is_named() -> None:
    with pytest.raises(InvalidMatricule, match=r"second check digit \(Verhoeff") as info:
        normalize("1893120105733")
    assert "Luhn" not in str(info.value)
    assert "expected 2" in str(info.value)


def test_luhn_failure_is_named() -> None:
    with pytest.raises(InvalidMatricule, match=r"first check digit \(Luhn") as info:
        normalize("1893120105742")
    assert "Verhoeff" not in str(info.value)
    assert "expected 3" in str(info.value)


def test_both_check_digits_failing_are_both_named() -> None:
    with pytest.raises(InvalidMatricule, match=r"Luhn.*Verhoeff"):
        normalize("1893120105700")


def test_checksum_valid_but_impossible_date_is_rejected() -> None:
    with pytest.raises(InvalidMatricule, match=r"'20150229' \(YYYYMMDD\) is not a possible date"):
        normalize("2015022900126")
    assert not is_valid("2015022900126")
    # The leniency switch for registry imports keeps the number (its check digits are right).
    assert normalize("2015022900126", check_date=False) == "2015022900126"


def test_public_sample_with_verhoeff_over_12_digits_is_rejected() -> None:
    assert not is_valid("2000060500127")


def test_legacy_11_digits_are_upgraded() -> None:
    assert normalize("18931201057") == "1893120105732"
    assert normalize("19800101001") == "1980010100187"
    assert is_valid("19450508999")


def test_spaces_are_ignored() -> None:
    assert normalize(" 1980 0101 001 87 ") == "1980010100187"
    assert normalize("1980\t0101\u00a0001") == "1980010100187"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("1980-0101-00187", r"only digits; found '-' at position 5"),
        ("19800101OO187", r"found 'O' at position 9"),
        ("198001010018", "13 digits .*got 12"),
        ("19800101001870", "got 14"),
        ("1980010", "got 7"),
        ("19801301001", "not a possible date"),
        ("19800132001", "not a possible date"),
        ("00000101001", "not a possible date"),
    ],
)
def test_error_messages_say_what_is_wrong(value: str, message: str) -> None:
    with pytest.raises(InvalidMatricule, match=message):
        normalize(value)
    assert not is_valid(value)


def test_invalid_matricule_is_a_value_error() -> None:
    assert issubclass(InvalidMatricule, ValueError)


def test_non_text_is_rejected() -> None:
    not_text: Any = 19800101001
    with pytest.raises(InvalidMatricule, match="text"):
        normalize(not_text)


def test_placeholder_day_or_month_has_no_birth_date() -> None:
    unknown_day = generate_with_raw_date("19800100", 1)
    unknown_month = generate_with_raw_date("19800000", 2)
    assert is_valid(unknown_day) and is_valid(unknown_month)
    assert birth_date(unknown_day) is None
    assert birth_date(unknown_month) is None
    with pytest.raises(InvalidMatricule, match="not a possible date"):
        normalize(generate_with_raw_date("19801300", 1))


def generate_with_raw_date(yyyymmdd: str, sequence: int) -> str:
    """A checksum-valid number for a raw date part (generate() only takes real dates)."""
    return normalize(f"{yyyymmdd}{sequence:03d}", check_date=False)


def test_generate_rejects_out_of_range_sequences() -> None:
    for bad in (-1, 1000):
        with pytest.raises(InvalidMatricule, match="between 0 and 999"):
            generate(datetime.date(2000, 1, 1), bad)


def test_generate_accepts_a_datetime() -> None:
    moment = datetime.datetime(1980, 1, 1, 23, 59)
    assert generate(moment, 1) == "1980010100187"


def test_system_uri_is_an_absolute_uri() -> None:
    assert matricule.MATRICULE_SYSTEM.startswith(("http://", "https://", "urn:"))


@given(dates, sequences)
def test_generated_numbers_round_trip(day: datetime.date, sequence: int) -> None:
    value = generate(day, sequence)
    assert len(value) == 13 and value.isdigit()
    assert is_valid(value)
    assert normalize(value) == value
    assert normalize(value[:11]) == value
    assert birth_date(value) == day
    assert int(value[8:11]) == sequence


@given(dates, sequences, st.integers(min_value=0, max_value=12), st.integers(min_value=1, max_value=9))
def test_every_single_digit_corruption_is_rejected(
    day: datetime.date, sequence: int, position: int, shift: int
) -> None:
    value = generate(day, sequence)
    wrong = str((int(value[position]) + shift) % 10)
    corrupted = value[:position] + wrong + value[position + 1 :]
    assert not is_valid(corrupted)
    # Even when the corrupted date part still happens to be a possible date, a check digit catches it.
    assert not is_valid(corrupted, check_date=False)


@pytest.mark.parametrize("value", VALID)
def test_every_single_digit_corruption_of_domain_examples_is_rejected(value: str) -> None:
    for position in range(13):
        for digit in "0123456789":
            if digit != value[position]:
                corrupted = value[:position] + digit + value[position + 1 :]
                assert not is_valid(corrupted, check_date=False), corrupted
