"""CDSi calendar arithmetic: years, then months, then weeks and days; the end-of-month rule."""

from __future__ import annotations

from datetime import date

import pytest

from sharedcare.vaccination.cdsi import Duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("6 weeks - 4 days", Duration(weeks=6, days=-4)),
        ("3 months + 4 weeks", Duration(months=3, weeks=4)),
        ("12 months - 4 days", Duration(months=12, days=-4)),
        ("1 year", Duration(years=1)),
        ("18 years - 4 days", Duration(years=18, days=-4)),
        ("0 days", Duration()),
    ],
)
def test_parse_supporting_data_durations(text: str, expected: Duration) -> None:
    assert parse_duration(text) == expected


def test_empty_duration_is_none_and_garbage_is_rejected() -> None:
    assert parse_duration("") is None
    assert parse_duration(None) is None
    with pytest.raises(ValueError, match="not a CDSi duration"):
        parse_duration("soon")


@pytest.mark.parametrize(
    ("start", "text", "expected"),
    [
        (date(2025, 11, 10), "3 months + 4 weeks", date(2026, 3, 10)),  # DTaP dose 1 latest age
        (date(2025, 11, 10), "6 weeks - 4 days", date(2025, 12, 18)),
        (date(2000, 3, 31), "6 months", date(2000, 10, 1)),  # 31 Sept does not exist: 1 Oct
        (date(2023, 1, 31), "1 month", date(2023, 3, 1)),  # 31 Feb: 1 March
        (date(2024, 2, 29), "1 year", date(2025, 3, 1)),  # 29 Feb of a common year: 1 March
        (date(2024, 2, 29), "4 years", date(2028, 2, 29)),
        (date(2025, 1, 31), "1 month - 4 days", date(2025, 2, 25)),  # months first, then days
        (date(2025, 12, 15), "2 weeks + 3 days", date(2026, 1, 1)),
    ],
)
def test_adding_calendar_units(start: date, text: str, expected: date) -> None:
    duration = parse_duration(text)
    assert duration is not None
    assert duration.after(start) == expected


def test_years_are_applied_before_months() -> None:
    # 2023-01-31 + 1 year = 2024-01-31, + 1 month = 31 Feb 2024 -> 1 March 2024
    assert Duration(years=1, months=1).after(date(2023, 1, 31)) == date(2024, 3, 1)


def test_far_future_saturates() -> None:
    assert Duration(years=2000).after(date(2020, 1, 1)) == date(2999, 12, 31)
