"""Which forecasts rest on unconfirmed schedule data.

A converted schedule keeps every value's source status (V/P/I). A recommendation computed from
an inferred ([I]) value must say so, so that a professional does not take a generic minimum
interval or past-due date for a Luxembourg rule. `annotate` adds, to each vaccine group's
forecast, the paths of the [I] items of the series and target dose it came from (the same paths
`Schedule.unconfirmed()` lists) and a sentence to its reason. CDC's supporting data carries no
statuses, so its forecasts come back unchanged.
"""

from __future__ import annotations

import re
from dataclasses import replace

from sharedcare.vaccination.cdsi.model import (
    Forecast,
    GroupForecast,
    Schedule,
    Series,
    TargetDose,
    series_provenance,
)

_DOSE = re.compile(r"^Dose (\d+) of the ")
UNCONFIRMED = frozenset({"I"})


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


def unconfirmed_paths(schedule: Schedule, forecast: GroupForecast) -> tuple[str, ...]:
    """Paths of the [I] items one vaccine group's forecast rests on."""
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


def annotate(schedule: Schedule, forecast: Forecast) -> Forecast:
    """`forecast` with each group's `unconfirmed` paths filled and its reason saying so."""
    groups = []
    for g in forecast.groups:
        paths = unconfirmed_paths(schedule, g)
        if paths:
            note = f"rests on unconfirmed schedule data ({len(paths)} item{'s' if len(paths) > 1 else ''})"
            g = replace(g, unconfirmed=paths, reason=f"{g.reason}; {note}" if g.reason else note)
        groups.append(g)
    return replace(forecast, groups=tuple(groups))
