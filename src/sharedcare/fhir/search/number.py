"""Number parameters, compared with the precision the search value was written with."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, not_

from sharedcare.fhir.errors import BadRequest, NotSupported
from sharedcare.fhir.search.values import parse_decimal, precision_bounds, split_prefix

MODIFIERS = ("missing",)


def index(value: Any, type_name: str | None) -> list[dict[str, Any]]:
    """Index rows for an integer or decimal."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        return []
    try:
        return [{"value": float(value)}]
    except ValueError:
        return []


def number_condition(column: Any, prefix: str, number: Decimal) -> ColumnElement[bool]:
    """Prefix comparison of a numeric column against a search number with implicit precision."""
    low, high = precision_bounds(number)
    exact = float(number)
    if prefix == "eq":
        return and_(column >= low, column < high)
    if prefix == "ne":
        return not_(and_(column >= low, column < high))
    if prefix == "gt" or prefix == "sa":
        return column > exact
    if prefix == "lt" or prefix == "eb":
        return column < exact
    if prefix == "ge":
        return column >= exact
    if prefix == "le":
        return column <= exact
    if prefix == "ap":
        margin = abs(exact) * 0.1
        return and_(column >= exact - margin, column <= exact + margin)
    raise BadRequest(f"Unknown prefix {prefix!r}")


def number_matches(stored: float, prefix: str, number: Decimal) -> bool:
    """In-memory twin of ``number_condition``."""
    low, high = precision_bounds(number)
    exact = float(number)
    return {
        "eq": low <= stored < high,
        "ne": not (low <= stored < high),
        "gt": stored > exact,
        "sa": stored > exact,
        "lt": stored < exact,
        "eb": stored < exact,
        "ge": stored >= exact,
        "le": stored <= exact,
        "ap": exact - abs(exact) * 0.1 <= stored <= exact + abs(exact) * 0.1,
    }[prefix]


def condition(table: Table, value: str, modifier: str | None) -> ColumnElement[bool]:
    """SQL condition for one number search value."""
    if modifier is not None:
        raise NotSupported(f"Modifier :{modifier} is not supported on number parameters")
    prefix, rest = split_prefix(value)
    return number_condition(table.c.value, prefix, parse_decimal(rest))


def matches(row: dict[str, Any], value: str) -> bool:
    """In-memory twin of ``condition``."""
    prefix, rest = split_prefix(value)
    return number_matches(row["value"], prefix, parse_decimal(rest))
