"""Yearly seasons (issue 5 follow-ups): influenza October-March and RSV September-February come
back every year; a seasonal dose is due from the season's start, one given in the season completes
it until the next, and outside the season the forecast says when the next one starts."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

from sharedcare.vaccination.cdsi import (
    AdministeredDose,
    GroupForecast,
    Patient,
    YearlySeason,
    forecast,
    load_schedule,
)

FLU = YearlySeason((10, 1), (3, 31))
RSV = YearlySeason((9, 1), (2, 31))  # an end past the month's length is its last day


def group(birth: date, doses: Iterable[tuple[date, str]], on: date, name: str) -> GroupForecast:
    schedule = load_schedule("lu")
    given = [AdministeredDose(f"d{i}", d, cvx) for i, (d, cvx) in enumerate(doses)]
    found = forecast(schedule, Patient(birth, "F"), given, on).group(name)
    assert found is not None
    return found


def test_a_season_across_the_new_year() -> None:
    assert FLU.starting_in(2025) == (date(2025, 10, 1), date(2026, 3, 31))
    assert RSV.starting_in(2023) == (date(2023, 9, 1), date(2024, 2, 29))  # leap year
    assert RSV.starting_in(2024) == (date(2024, 9, 1), date(2025, 2, 28))
    assert FLU.current(date(2026, 1, 10)) == (date(2025, 10, 1), date(2026, 3, 31))
    assert FLU.current(date(2026, 3, 31)) == (date(2025, 10, 1), date(2026, 3, 31))
    assert FLU.current(date(2026, 4, 1)) is None
    assert FLU.next_start(date(2026, 4, 1)) == date(2026, 10, 1)
    assert FLU.next_start(date(2026, 10, 1)) == date(2027, 10, 1)
    assert str(RSV) == "September 1 to end of February"
    lu = load_schedule("lu")
    seasons = {
        d.yearly_season
        for a in lu.antigens.values()
        for s in a.series
        for d in s.doses
        if d.yearly_season is not None
    }
    assert seasons == {
        FLU.__class__((10, 1), (3, 31), "V", ("S6",)),
        RSV.__class__((9, 1), (2, 31), "V", ("S1",)),
    }


def test_influenza_outside_the_season_waits_for_the_next() -> None:
    older = date(1950, 6, 1)
    last = [(date(2025, 11, 3), "88")]
    spring = group(older, last, date(2026, 5, 1), "Influenza")
    assert (spring.status, spring.earliest, spring.recommended) == (
        "Not Complete",
        date(2026, 10, 1),
        date(2026, 10, 1),
    )
    assert "next season starts 2026-10-01" in (spring.reason or "")
    # given in March, still this season: complete until the next one
    march = group(older, [(date(2026, 3, 2), "88")], date(2026, 3, 20), "Influenza")
    assert march.status == "Complete" and "next season from 2026-10-01" in (march.reason or "")
    # a dose given off season (April) does not count for the coming season
    april = group(older, [(date(2026, 4, 15), "88")], date(2026, 10, 5), "Influenza")
    assert (april.status, april.earliest) == ("Not Complete", date(2026, 10, 1))
    # a dose missed last season is due from this season's start, not overdue since last year
    missed = group(older, last, date(2026, 12, 1), "Influenza")
    assert missed.earliest == date(2026, 10, 1)


def test_a_newborns_rsv_antibody_at_the_first_season() -> None:
    # born in spring: due when the season starts (4 months old)
    spring = group(date(2025, 4, 10), [], date(2025, 5, 1), "RSV")
    assert (spring.status, spring.earliest) == ("Not Complete", date(2025, 9, 1))
    # born in the season: due from birth
    autumn = group(date(2025, 10, 10), [], date(2025, 10, 12), "RSV")
    assert (autumn.status, autumn.earliest) == ("Not Complete", date(2025, 10, 10))
    # born in December and not given by the end of February: the next season starts after 8 months
    # (the newborn series aged out: what remains is the dose at 75)
    late = group(date(2024, 12, 15), [], date(2025, 4, 1), "RSV")
    assert late.series == "RSV LU 75 years+ series" and late.earliest == date(2099, 12, 15)
    in_time = group(date(2024, 12, 15), [], date(2025, 2, 1), "RSV")
    assert (in_time.series, in_time.earliest) == (
        "RSV LU newborn passive immunisation series",
        date(2024, 12, 15),
    )
    given = group(date(2024, 12, 15), [(date(2024, 12, 20), "306")], date(2025, 4, 1), "RSV")
    assert given.status == "Complete"
