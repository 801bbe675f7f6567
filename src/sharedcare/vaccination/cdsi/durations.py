"""CDSi calendar arithmetic: durations such as "12 months - 4 days" applied to dates.

The CDSi Logic Specification adds calendar units, not day counts: years first, then months, then
weeks and days. When adding years or months lands on a day that does not exist (31 April,
29 February of a common year) the date rolls to the first day of the next month. Negative parts
("- 4 days", the grace period) are applied in the same order.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache

_PART = re.compile(r"([+-]?)\s*(\d+)\s*(year|month|week|day)s?", re.IGNORECASE)

#: CDSi defaults: an absent minimum age means "any time", an absent maximum age "never".
DATE_MIN = date(1900, 1, 1)
DATE_MAX = date(2999, 12, 31)


@dataclass(frozen=True, slots=True)
class Duration:
    """A signed calendar duration, kept in its units so it is applied the CDSi way."""

    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0

    def after(self, start: date) -> date:
        """The date this duration after `start` (years, then months, then weeks and days)."""
        return _add(start, self.years * 12 + self.months, self.weeks * 7 + self.days)

    def before(self, end: date) -> date:
        """The date this duration before `end` (used for the "age at" questions)."""
        return _add(end, -(self.years * 12 + self.months), -(self.weeks * 7 + self.days))

    def __str__(self) -> str:
        parts = [(self.years, "year"), (self.months, "month"), (self.weeks, "week"), (self.days, "day")]
        text = " ".join(
            f"{'+' if n > 0 else '-'} {abs(n)} {u}{'s' if abs(n) != 1 else ''}" for n, u in parts if n
        )
        return text.removeprefix("+ ").strip() or "0 days"


_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _month_days(year: int, month: int) -> int:
    if month == 2 and calendar.isleap(year):
        return 29
    return _MONTH_DAYS[month - 1]


@lru_cache(maxsize=65536)  # the same birth dates and durations recur across a patient's series
def _add(start: date, months: int, days: int) -> date:
    if months:
        total = start.year * 12 + (start.month - 1) + months
        year, month = divmod(total, 12)
        month += 1
        if year > 2999:
            return DATE_MAX
        if year < 1:
            return date(1, 1, 1)
        last = _month_days(year, month)
        if start.day > last:  # the day does not exist in that month: first of the next month
            start = date(year, month, last) + timedelta(days=1)
        else:
            start = date(year, month, start.day)
    if days:
        try:
            start = start + timedelta(days=days)
        except OverflowError:
            return DATE_MAX if days > 0 else date(1, 1, 1)
    return start


@lru_cache(maxsize=1024)
def parse_duration(text: str | None) -> Duration | None:
    """Parse a supporting-data duration ("6 weeks - 4 days", "3 months + 4 weeks"); None if empty."""
    if text is None or not text.strip():
        return None
    counts = {"year": 0, "month": 0, "week": 0, "day": 0}
    matched = False
    for sign, number, unit in _PART.findall(text):
        matched = True
        counts[unit.lower()] += -int(number) if sign == "-" else int(number)
    if not matched:
        raise ValueError(f"not a CDSi duration: {text!r}")
    return Duration(counts["year"], counts["month"], counts["week"], counts["day"])


def add(start: date, duration: Duration | None, default: date) -> date:
    """`start` + `duration`, or `default` when the rule has no such duration."""
    return default if duration is None else duration.after(start)
