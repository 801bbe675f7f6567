"""Quantity parameters: ``[prefix]number|system|code``; a bare unit matches code or unit text."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, or_

from sharedcare.fhir.errors import BadRequest, NotSupported
from sharedcare.fhir.search.number import number_condition, number_matches
from sharedcare.fhir.search.values import clip, parse_decimal, split_prefix, split_unescaped, unescape

MODIFIERS = ("missing",)
_QUANTITY_TYPES = ("Quantity", "Age", "Duration", "SimpleQuantity", "Distance", "Count", "MoneyQuantity")


def _row(q: dict[str, Any]) -> dict[str, Any] | None:
    value = q.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return None
    return {
        "value": float(value),
        "system": clip(q.get("system")),
        "code": clip(q.get("code")),
        "unit": clip(q.get("unit")),
    }


def index(value: Any, type_name: str | None) -> list[dict[str, Any]]:
    """Index rows: a Quantity (and its kinds), Money (currency as code), or a Range's low and high.

    A SampledData (in ``value-quantity``'s expression) is not a quantity and gives none, which
    ``definitions.NO_ROWS`` relies on."""
    if not isinstance(value, dict) or type_name == "SampledData":
        return []
    if type_name == "Range" or (type_name is None and ("low" in value or "high" in value)):
        return [r for r in (_row(value[k]) for k in ("low", "high") if isinstance(value.get(k), dict)) if r]
    if type_name == "Money" or "currency" in value:
        row = _row(value)
        if row:
            currency = clip(value.get("currency"))
            row.update(system="urn:iso:std:iso:4217", code=currency, unit=currency)
        return [row] if row else []
    row = _row(value)
    return [row] if row else []


def parse(value: str) -> tuple[str, Any, str | None, str | None]:
    """(prefix, number, system, code) of ``ge5.4|http://unitsofmeasure.org|mg``.

    System and code are cut to the length the index keeps, so a long unit still finds itself.
    """
    parts = split_unescaped(value, "|")
    if len(parts) not in (1, 3):
        raise BadRequest(f"Invalid quantity {value!r}: expected number or number|system|code")
    prefix, number = split_prefix(parts[0])
    system = clip(unescape(parts[1])) or None if len(parts) == 3 else None
    code = clip(unescape(parts[2])) or None if len(parts) == 3 else None
    return prefix, parse_decimal(number), system, code


def condition(table: Table, value: str, modifier: str | None) -> ColumnElement[bool]:
    """SQL condition for one quantity search value."""
    if modifier is not None:
        raise NotSupported(f"Modifier :{modifier} is not supported on quantity parameters")
    prefix, number, system, code = parse(value)
    clauses = [number_condition(table.c.value, prefix, number)]
    if system and code:
        clauses += [table.c.system == system, table.c.code == code]
    elif code:
        clauses.append(or_(table.c.code == code, table.c.unit == code))
    elif system:
        clauses.append(table.c.system == system)
    return and_(*clauses)


def matches(row: dict[str, Any], value: str) -> bool:
    """In-memory twin of ``condition``."""
    prefix, number, system, code = parse(value)
    if not number_matches(row["value"], prefix, number):
        return False
    if system and code:
        return row["system"] == system and row["code"] == code
    if code:
        return code in (row["code"], row["unit"])
    if system:
        return bool(row["system"] == system)
    return True
