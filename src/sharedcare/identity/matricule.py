"""The Luxembourg national identifier (matricule), as described in DOMAIN.md §1.12.

Layout of the 13-digit form: ``YYYYMMDD`` (birth date) + ``NNN`` (sequence for people born on the same
day) + ``C1`` + ``C2``. Both check digits are computed over the **same first 11 digits**: C1 with Luhn,
C2 with Verhoeff (not over 12 digits, a mistake seen in public samples). Numbers issued before 2014 have
only the first 11 digits; eSanté still accepts them, so :func:`normalize` upgrades them by computing the
check digits.

Birth-date leniency (DOMAIN.md §1.12 marks it [I], to confirm with CCSS): registries sometimes hold
imprecise birth dates, so a day or month written ``00`` is accepted as "unknown" and
:func:`birth_date` returns ``None`` for it. A date that cannot exist (``20150229``, month 13) is
rejected unless the caller passes ``check_date=False``, e.g. when importing a registry as is.
"""

from __future__ import annotations

import datetime

from stdnum import luhn, verhoeff

# Placeholder: DOMAIN.md names no official identifier-system URI for the matricule. Replace it with the
# Agence eSanté / CCSS NamingSystem URI once one is published (keep the old value as an alias).
MATRICULE_SYSTEM = "http://sharedcare.lu/fhir/sid/matricule"

LENGTH = 13
LEGACY_LENGTH = 11
MAX_SEQUENCE = 999


class InvalidMatricule(ValueError):
    """The value is not a usable matricule; the message says what is wrong, for the person typing it."""


def _compact(value: str) -> str:
    """Drop every whitespace character: people write matricules in groups (``1980 0101 001 87``)."""
    if not isinstance(value, str):
        raise InvalidMatricule(f"a matricule must be given as text, not {type(value).__name__}")
    return "".join(value.split())


def _check_digits(first11: str) -> str:
    """C1 (Luhn) and C2 (Verhoeff), both over the same 11 leading digits."""
    return luhn.calc_check_digit(first11) + verhoeff.calc_check_digit(first11)


def _parse_date(digits: str) -> datetime.date | None:
    """The birth date of the first 8 digits; ``None`` when the day or month is the ``00`` placeholder.

    Raises InvalidMatricule when the digits name a date that cannot exist.
    """
    year, month, day = int(digits[0:4]), int(digits[4:6]), int(digits[6:8])
    if month == 0 or day == 0:
        # Imprecise birth date kept by the registry; only the part that is present must make sense.
        if month > 12 or day > 31 or year == 0:
            raise InvalidMatricule(f"the birth date part {digits[0:8]!r} (YYYYMMDD) is not a possible date")
        return None
    try:
        return datetime.date(year, month, day)
    except ValueError:
        raise InvalidMatricule(
            f"the birth date part {digits[0:8]!r} (YYYYMMDD) is not a possible date"
        ) from None


def normalize(value: str, *, check_date: bool = True) -> str:
    """Return the 13-digit matricule for ``value`` (11 or 13 digits, spaces allowed).

    An 11-digit legacy number is upgraded by appending its two check digits. Raises InvalidMatricule
    naming the problem: non-digit characters, wrong length, a failing check digit, or (unless
    ``check_date`` is false) a birth date that cannot exist.
    """
    digits = _compact(value)
    if not digits:
        raise InvalidMatricule("the matricule is empty")
    for position, char in enumerate(digits, start=1):
        if not ("0" <= char <= "9"):
            raise InvalidMatricule(f"a matricule contains only digits; found {char!r} at position {position}")
    if len(digits) not in (LENGTH, LEGACY_LENGTH):
        raise InvalidMatricule(
            f"a matricule has {LENGTH} digits (or {LEGACY_LENGTH} for the pre-2014 form); got {len(digits)}"
        )
    base = digits[:LEGACY_LENGTH]
    expected = _check_digits(base)
    if len(digits) == LENGTH:
        problems = []
        if digits[11] != expected[0]:
            problems.append(
                f"the first check digit (Luhn over the first 11 digits) is {digits[11]}, "
                f"expected {expected[0]}"
            )
        if digits[12] != expected[1]:
            problems.append(
                f"the second check digit (Verhoeff over the first 11 digits) is {digits[12]}, "
                f"expected {expected[1]}"
            )
        if problems:
            raise InvalidMatricule("; ".join(problems) + " (probably a typing error)")
    if check_date:
        _parse_date(base)
    return base + expected


def is_valid(value: str, *, check_date: bool = True) -> bool:
    """True when :func:`normalize` accepts ``value`` (11 or 13 digits)."""
    try:
        normalize(value, check_date=check_date)
    except InvalidMatricule:
        return False
    return True


def generate(birth_date: datetime.date, sequence: int) -> str:
    """The valid 13-digit matricule for a birth date and a same-day sequence number (0 to 999)."""
    if isinstance(birth_date, datetime.datetime):
        birth_date = birth_date.date()
    if isinstance(sequence, bool) or not 0 <= sequence <= MAX_SEQUENCE:
        raise InvalidMatricule(f"the sequence number must be between 0 and {MAX_SEQUENCE}; got {sequence}")
    base = f"{birth_date.year:04d}{birth_date.month:02d}{birth_date.day:02d}{sequence:03d}"
    return base + _check_digits(base)


def birth_date(value: str) -> datetime.date | None:
    """The birth date encoded in a valid matricule; ``None`` for a ``00`` day or month placeholder.

    Raises InvalidMatricule when the value is not a valid matricule.
    """
    return _parse_date(normalize(value))
