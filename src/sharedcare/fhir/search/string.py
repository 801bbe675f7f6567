"""String parameters: case- and accent-insensitive prefix match by default, ``:exact``, ``:contains``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Table

from sharedcare.fhir.errors import NotSupported
from sharedcare.fhir.search.values import like_escape, normalize_text, unescape

MODIFIERS = ("exact", "contains", "missing")
_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")


def _strings(value: Any, keys: tuple[str, ...] | None = None) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        out: list[str] = []
        for key, item in value.items():
            if keys is not None and key not in keys:
                continue
            if key in ("extension", "modifierExtension", "id") or key.startswith("_"):
                continue
            items = item if isinstance(item, list) else [item]
            for one in items:
                if isinstance(one, str):
                    out.append(one)
        return out
    return []


def index(value: Any, type_name: str | None) -> list[dict[str, Any]]:
    """Index rows for one extracted value (HumanName and Address contribute each part)."""
    if type_name == "HumanName" or (type_name is None and isinstance(value, dict) and "family" in value):
        texts = _strings(value, _NAME_PARTS)
    elif type_name == "Address":
        texts = _strings(value, _ADDRESS_PARTS)
    else:
        texts = _strings(value)
    return [{"norm": normalize_text(t)[:255], "exact": t} for t in texts if t]


def condition(table: Table, value: str, modifier: str | None) -> ColumnElement[bool]:
    """SQL condition for one search value on ``idx_string``."""
    text = unescape(value)
    if modifier is None:
        return table.c.norm.like(like_escape(normalize_text(text)[:255]) + "%", escape="\\")
    if modifier == "exact":
        return table.c.exact == text
    if modifier == "contains":
        return table.c.norm.like("%" + like_escape(normalize_text(text)) + "%", escape="\\")
    raise NotSupported(f"Modifier :{modifier} is not supported on string parameters")


def matches(row: dict[str, Any], value: str, modifier: str | None) -> bool:
    """In-memory twin of ``condition`` (used by tests as the reference semantics)."""
    text = unescape(value)
    if modifier is None:
        return bool(row["norm"].startswith(normalize_text(text)[:255]))
    if modifier == "exact":
        return bool(row["exact"] == text)
    return normalize_text(text) in row["norm"]
