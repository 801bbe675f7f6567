"""URI parameters: exact match, ``:below`` (prefix) and ``:above`` (the stored URI is a prefix)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Table, func, literal

from sharedcare.fhir.errors import NotSupported
from sharedcare.fhir.search.values import like_escape, unescape

MODIFIERS = ("below", "above", "missing")


def index(value: Any, type_name: str | None) -> list[dict[str, Any]]:
    """Index rows for a uri/url/canonical string."""
    if isinstance(value, str) and value:
        return [{"value": value}]
    return []


def condition(table: Table, value: str, modifier: str | None) -> ColumnElement[bool]:
    """SQL condition for one uri search value."""
    text = unescape(value)
    if modifier is None:
        return table.c.value == text
    if modifier == "below":
        return table.c.value.like(like_escape(text) + "%", escape="\\")
    if modifier == "above":
        # the stored URI is a prefix of the search value (compared literally: no LIKE wildcards)
        return func.substr(literal(text), 1, func.length(table.c.value)) == table.c.value
    raise NotSupported(f"Modifier :{modifier} is not supported on uri parameters")


def matches(row: dict[str, Any], value: str, modifier: str | None) -> bool:
    """In-memory twin of ``condition``."""
    text = unescape(value)
    if modifier is None:
        return bool(row["value"] == text)
    if modifier == "below":
        return bool(row["value"].startswith(text))
    return text.startswith(row["value"])
