"""Parsing shared by index extraction and search: FHIR dates with their precision, escaping, text."""

from __future__ import annotations

import calendar
import re
import unicodedata
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sharedcare.fhir.errors import BadRequest

MIN_DT = datetime(1, 1, 1)
MAX_DT = datetime(9999, 12, 31, 23, 59, 59, 999999)

# index columns of type String(255): values are cut to this length when indexed, and search
# values compared with them are cut the same way, so that a long value still finds itself
MAX_INDEX_LEN = 255
# search numbers: at most this many characters, and a decimal exponent within +/- this bound
MAX_NUMBER_LEN = 100
MAX_NUMBER_EXPONENT = 300

_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


def date_range(value: str) -> tuple[datetime, datetime]:
    """The instant range [low, high] (naive UTC, high inclusive) that a FHIR date/dateTime denotes.

    A partial date covers its whole period: ``2020`` is all of 2020, ``2020-03-05T10:15`` the minute.
    Times without a zone are taken as UTC.
    """
    m = _DATE_RE.match(value.strip())
    if not m:
        raise ValueError(f"not a FHIR date/dateTime: {value!r}")
    y = int(m["y"])
    if m["m"] is None:
        return datetime(y, 1, 1), datetime(y, 12, 31, 23, 59, 59, 999999)
    mo = int(m["m"])
    if m["d"] is None:
        last = calendar.monthrange(y, mo)[1]
        return datetime(y, mo, 1), datetime(y, mo, last, 23, 59, 59, 999999)
    d = int(m["d"])
    if m["H"] is None:
        day = datetime(y, mo, d)
        return day, day.replace(hour=23, minute=59, second=59, microsecond=999999)
    hh, mi = int(m["H"]), int(m["M"])
    if m["S"] is None:
        start = datetime(y, mo, d, hh, mi)
        width = timedelta(minutes=1)
    elif m["f"] is None:
        start = datetime(y, mo, d, hh, mi, int(m["S"]))
        width = timedelta(seconds=1)
    else:
        frac = m["f"][:6]
        start = datetime(y, mo, d, hh, mi, int(m["S"]), int(frac.ljust(6, "0")))
        width = timedelta(microseconds=10 ** (6 - len(frac)))
    end = _shift(start, width - timedelta(microseconds=1))
    tz = m["tz"]
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        offset = -sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
        start, end = _shift(start, offset), _shift(end, offset)
    return start, end


def _shift(moment: datetime, delta: timedelta) -> datetime:
    """``moment + delta``, clamped to [MIN_DT, MAX_DT] at the ends of the calendar."""
    try:
        return moment + delta
    except OverflowError:
        return MAX_DT if delta > timedelta(0) else MIN_DT


def to_utc_naive(moment: datetime) -> datetime:
    """A datetime as naive UTC, the form stored in the database."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def split_prefix(value: str) -> tuple[str, str]:
    """Split a search value into its comparison prefix (default ``eq``) and the rest."""
    if len(value) > 2 and value[:2] in PREFIXES and (value[2].isdigit() or value[2] in "-+."):
        return value[:2], value[2:]
    return "eq", value


def parse_decimal(value: str) -> Decimal:
    """A search number, keeping its written precision (``1.50`` differs from ``1.5``).

    Numbers beyond what the index (a double) can hold, or absurdly long ones, are refused.
    """
    if len(value) > MAX_NUMBER_LEN:
        raise BadRequest(f"Invalid number in search: longer than {MAX_NUMBER_LEN} characters")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise BadRequest(f"Invalid number {value!r} in search") from None
    if not number.is_finite():
        raise BadRequest(f"Invalid number {value!r} in search")
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    if number.adjusted() > MAX_NUMBER_EXPONENT or exponent < -MAX_NUMBER_EXPONENT:
        raise BadRequest(
            f"Invalid number {value!r} in search: the exponent must be within "
            f"-{MAX_NUMBER_EXPONENT}..{MAX_NUMBER_EXPONENT}"
        )
    return number


def precision_bounds(number: Decimal) -> tuple[float, float]:
    """The interval implied by a number's precision: 100 means [99.5, 100.5)."""
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5) * Decimal(10) ** (exponent - 1)
    return float(number - half), float(number + half)


def clip(value: Any, limit: int = MAX_INDEX_LEN) -> str | None:
    """A value as stored in (and compared with) a String(255) index column: cut to ``limit``."""
    if value is None:
        return None
    return (value if isinstance(value, str) else str(value))[:limit]


def normalize_text(value: str) -> str:
    """Case- and accent-insensitive form of a string, used by default string search."""
    if value.isascii():
        return " ".join(value.lower().split())
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.casefold().split())


def split_unescaped(value: str, sep: str) -> list[str]:
    """Split on ``sep`` where it is not escaped by a backslash (FHIR search escaping)."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in value:
        if escaped:
            current.append("\\" + ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return parts


def unescape(value: str) -> str:
    """Remove FHIR search escaping (``\\,`` ``\\|`` ``\\$`` ``\\\\``)."""
    return re.sub(r"\\([,|$\\])", r"\1", value)


def like_escape(value: str) -> str:
    """Escape SQL LIKE wildcards; queries use ``escape='\\\\'``."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
