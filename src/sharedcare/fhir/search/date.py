"""Date parameters: every value is an instant range; prefixes compare ranges as FHIR R4 defines."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, not_, or_

from sharedcare.fhir.errors import BadRequest, NotSupported
from sharedcare.fhir.search.values import MAX_DT, MIN_DT, date_range, split_prefix

MODIFIERS = ("missing",)


def _range(text: Any) -> tuple[datetime, datetime] | None:
    if not isinstance(text, str):
        return None
    try:
        return date_range(text)
    except ValueError:
        return None


def index(value: Any, type_name: str | None) -> list[dict[str, Any]]:
    """Index rows: a date/dateTime/instant, a Period (open ends unbounded) or a Timing's events."""
    if isinstance(value, str):
        r = _range(value)
        return [{"low": r[0], "high": r[1]}] if r else []
    if not isinstance(value, dict):
        return []
    if type_name == "Timing" or "event" in value or "repeat" in value:
        rows = [{"low": r[0], "high": r[1]} for r in map(_range, value.get("event", ())) if r]
        bounds = value.get("repeat", {}).get("boundsPeriod")
        if bounds:
            rows.extend(index(bounds, "Period"))
        return rows
    if "start" in value or "end" in value:
        start = _range(value.get("start"))
        end = _range(value.get("end"))
        if start is None and end is None:
            return []
        return [{"low": start[0] if start else MIN_DT, "high": end[1] if end else MAX_DT}]
    return []


def _approx(low: datetime, high: datetime, now: datetime) -> tuple[datetime, datetime]:
    # "ap": within 10 % of the distance between now and the value (at least a day), as HAPI does.
    gap = abs(now - low) * 0.1
    gap = max(gap, timedelta(days=1))
    return max(MIN_DT, low - gap) if low - MIN_DT > gap else MIN_DT, min(
        MAX_DT, high + gap
    ) if MAX_DT - high > gap else MAX_DT


def parse(value: str) -> tuple[str, datetime, datetime]:
    """(prefix, low, high) of a search value such as ``ge2020-03``."""
    prefix, rest = split_prefix(value)
    try:
        low, high = date_range(rest)
    except ValueError:
        raise BadRequest(f"Invalid date {value!r} in search") from None
    return prefix, low, high


def condition(table: Table, value: str, modifier: str | None, now: datetime) -> ColumnElement[bool]:
    """SQL condition comparing the stored range [low, high] with the search range."""
    if modifier is not None:
        raise NotSupported(f"Modifier :{modifier} is not supported on date parameters")
    prefix, low, high = parse(value)
    return range_condition(table.c.low, table.c.high, prefix, low, high, now)


def range_condition(
    col_low: Any, col_high: Any, prefix: str, low: datetime, high: datetime, now: datetime
) -> ColumnElement[bool]:
    """The prefix semantics over any pair of low/high columns (also used for ``_lastUpdated``)."""
    if prefix == "eq":
        return and_(col_low >= low, col_high <= high)
    if prefix == "ne":
        return not_(and_(col_low >= low, col_high <= high))
    if prefix == "gt":
        return col_high > high
    if prefix == "lt":
        return col_low < low
    if prefix == "ge":
        return or_(col_high > high, and_(col_low >= low, col_high <= high))
    if prefix == "le":
        return or_(col_low < low, and_(col_low >= low, col_high <= high))
    if prefix == "sa":
        return col_low > high
    if prefix == "eb":
        return col_high < low
    if prefix == "ap":
        a_low, a_high = _approx(low, high, now)
        return and_(col_low <= a_high, col_high >= a_low)
    raise BadRequest(f"Unknown prefix {prefix!r}")


def matches(row: dict[str, Any], value: str, now: datetime) -> bool:
    """In-memory twin of ``condition``."""
    prefix, low, high = parse(value)
    r_low, r_high = row["low"], row["high"]
    inside = r_low >= low and r_high <= high
    return {
        "eq": inside,
        "ne": not inside,
        "gt": r_high > high,
        "lt": r_low < low,
        "ge": r_high > high or inside,
        "le": r_low < low or inside,
        "sa": r_low > high,
        "eb": r_high < low,
    }.get(prefix, False) or (
        prefix == "ap" and r_low <= _approx(low, high, now)[1] and r_high >= _approx(low, high, now)[0]
    )
