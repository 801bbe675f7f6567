"""Which forecasts rest on unconfirmed schedule data (applied by `engine.forecast` itself).

A converted schedule keeps every value's source status (V/P/I). A recommendation computed from
an inferred ([I]) value must say so, so that a professional does not take a generic minimum
interval or past-due date for a Luxembourg rule. `annotate` adds, to each vaccine group's
forecast, the paths of the [I] items of the series and target dose it came from (the same paths
`Schedule.unconfirmed()` lists) and a sentence to its reason. It lives in the engine's package so
that every caller of `forecast` (the operation, the portal, the reminder job) gets it without an
import cycle; CDC's supporting data carries no statuses, so its forecasts come back unchanged
(one cached check per schedule).
"""

from __future__ import annotations

import re
import weakref

from .model import Forecast, GroupForecast, Schedule, Series, TargetDose, series_provenance

_DOSE = re.compile(r"^Dose (\d+) of the ")
UNCONFIRMED = frozenset({"I"})
UNCONFIRMED_NOTE = "rests on unconfirmed schedule data"

# per schedule (by identity: a Schedule holds dicts, so it is not hashable): whether it has any
# unconfirmed item, and the paths found per (group, series, target dose number)
_Paths = dict[tuple[str, str, int | None], tuple[str, ...]]
_SCHEDULES: dict[int, tuple[weakref.ref[Schedule], bool, _Paths]] = {}


def _cache(schedule: Schedule) -> tuple[bool, _Paths]:
    entry = _SCHEDULES.get(id(schedule))
    if entry is None or entry[0]() is not schedule:
        key = id(schedule)
        ref = weakref.ref(schedule, lambda _r: _SCHEDULES.pop(key, None))
        entry = (ref, bool(schedule.unconfirmed()), {})
        _SCHEDULES[key] = entry
    return entry[1], entry[2]


def _target(series: Series, forecast: GroupForecast) -> TargetDose | None:
    """The target dose a group forecast is for (its reason names it; else its dose number)."""
    m = _DOSE.match(forecast.reason or "")
    number = int(m.group(1)) if m else forecast.dose_number
    if number is None:
        return None
    for dose in series.doses:
        if dose.number == number:
            return dose
    recurring = [d for d in series.doses if d.recurring]
    return recurring[-1] if recurring else series.doses[-1]


def _paths(schedule: Schedule, forecast: GroupForecast) -> tuple[str, ...]:
    group = schedule.groups.get(forecast.vaccine_group)
    if group is None or forecast.series is None:
        return ()
    for name in group.antigens:
        antigen = schedule.antigens.get(name)
        series = next((s for s in antigen.series if s.name == forecast.series), None) if antigen else None
        if series is None:
            continue
        target = _target(series, forecast) if forecast.status == "Not Complete" else None
        items = series_provenance(name, series, UNCONFIRMED, [target] if target else [])
        return tuple(i.path for i in items)
    return ()


def unconfirmed_paths(schedule: Schedule, forecast: GroupForecast) -> tuple[str, ...]:
    """Paths of the [I] items one vaccine group's forecast rests on."""
    has_any, found = _cache(schedule)
    if not has_any or forecast.series is None:
        return ()
    m = _DOSE.match(forecast.reason or "")
    number = int(m.group(1)) if m else forecast.dose_number
    key = (forecast.vaccine_group, forecast.series, number if forecast.status == "Not Complete" else None)
    paths = found.get(key)
    if paths is None:
        paths = found[key] = _paths(schedule, forecast)
    return paths


def annotate(schedule: Schedule, forecast: Forecast) -> Forecast:
    """`forecast` with each group's `unconfirmed` paths filled and its reason saying so
    (idempotent: a group already annotated is left as it is)."""
    if not _cache(schedule)[0]:
        return forecast
    groups = []
    changed = False
    for g in forecast.groups:
        paths = () if g.unconfirmed else unconfirmed_paths(schedule, g)
        if paths:
            note = f"{UNCONFIRMED_NOTE} ({len(paths)} item{'s' if len(paths) > 1 else ''})"
            # built directly: dataclasses.replace costs more than the whole lookup (reminder job)
            g = GroupForecast(
                g.vaccine_group,
                g.status,
                g.dose_number,
                g.earliest,
                g.recommended,
                g.past_due,
                g.latest,
                g.vaccines,
                g.series,
                f"{g.reason}; {note}" if g.reason else note,
                paths,
            )
            changed = True
        groups.append(g)
    return Forecast(forecast.assessment_date, forecast.evaluations, tuple(groups)) if changed else forecast
