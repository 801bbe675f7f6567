"""Token parameters: ``code``, ``system|code``, ``|code``, ``system|``; ``:not``, ``:text``, ``:of-type``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Table, and_

from sharedcare.fhir.errors import BadRequest, NotSupported
from sharedcare.fhir.search.values import (
    MAX_INDEX_LEN,
    clip,
    like_escape,
    normalize_text,
    split_unescaped,
    unescape,
)

MODIFIERS = ("not", "text", "of-type", "missing")
OF_TYPE_SUFFIX = ":of-type"


def _coding(coding: dict[str, Any]) -> dict[str, Any] | None:
    code = coding.get("code")
    display = coding.get("display")
    if code is None and display is None:
        return None
    return {
        "system": clip(coding.get("system")),
        "code": clip(code),
        "text": clip(normalize_text(display)) if isinstance(display, str) else None,
    }


def _infer(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "code"
    if isinstance(value, dict):
        if "coding" in value or ("text" in value and "system" not in value):
            return "CodeableConcept"
        if "value" in value and ("use" in value or value.get("system") in _CONTACT_SYSTEMS):
            return "ContactPoint"
        if "value" in value:
            return "Identifier"
        if "code" in value or "display" in value:
            return "Coding"
    return None


_CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})


def index(value: Any, type_name: str | None) -> list[dict[str, Any]]:
    """Index rows for one value; an Identifier's type also yields an ``:of-type`` row."""
    kind = type_name or _infer(value)
    rows: list[dict[str, Any]] = []
    if kind == "boolean":
        return [{"system": None, "code": "true" if value else "false", "text": None}]
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [{"system": None, "code": clip(value), "text": None}]
    if not isinstance(value, dict):
        return rows
    if kind == "CodeableConcept":
        # the concept's text rides on the rows of codings without a display (one row per coding);
        # a display is kept too, since :text searches the concept's text and its codings' displays
        text = value.get("text")
        concept_text = clip(normalize_text(text)) if isinstance(text, str) else None
        for coding in value.get("coding", ()):
            row = _coding(coding)
            if row:
                if concept_text and row["text"] is None:
                    row["text"] = concept_text
                rows.append(row)
        if concept_text and not any(r["text"] == concept_text for r in rows):
            rows.append({"system": None, "code": None, "text": concept_text})
    elif kind == "Coding":
        row = _coding(value)
        if row:
            rows.append(row)
    elif kind == "Identifier":
        ident = value.get("value")
        if ident is None:
            return rows
        type_text = value.get("type", {}).get("text")
        rows.append(
            {
                "system": clip(value.get("system")),
                "code": clip(ident),
                "text": clip(normalize_text(type_text)) if isinstance(type_text, str) else None,
            }
        )
        for coding in value.get("type", {}).get("coding", ()):
            if coding.get("code") is not None:
                rows.append(
                    {
                        "param_suffix": OF_TYPE_SUFFIX,
                        "system": clip(coding.get("system")),
                        "code": clip(f"{coding['code']}|{ident}"),
                        "text": None,
                    }
                )
    elif kind == "ContactPoint":
        if value.get("value") is not None:
            rows.append({"system": clip(value.get("system")), "code": clip(value["value"]), "text": None})
    elif kind in ("Quantity", "Age", "Duration", "SimpleQuantity", "Money") and value.get("code"):
        rows.append({"system": clip(value.get("system")), "code": clip(value["code"]), "text": None})
    return rows


def parse(value: str) -> tuple[str | None, str | None, bool]:
    """Split ``system|code`` into (system, code, system_given); ``|code`` means no system.

    Both are cut to the length the index keeps (``MAX_INDEX_LEN``), so a long value finds itself.
    """
    parts = split_unescaped(value, "|")
    if len(parts) == 1:
        return None, unescape(parts[0])[:MAX_INDEX_LEN], False
    if len(parts) == 2:
        system, code = unescape(parts[0])[:MAX_INDEX_LEN], unescape(parts[1])[:MAX_INDEX_LEN]
        return system, (code or None), True
    raise BadRequest(f"Invalid token {value!r}: more than one '|'")


def _text(value: str) -> str:
    """A ``:text`` search value as the index holds concept texts (normalised, cut to length)."""
    return normalize_text(unescape(value))[:MAX_INDEX_LEN]


def condition(table: Table, value: str, modifier: str | None) -> ColumnElement[bool]:
    """SQL condition for one token value (``:not`` is applied by the caller as NOT EXISTS)."""
    if modifier == "text":
        return table.c.text.like(like_escape(_text(value)) + "%", escape="\\")
    if modifier == "of-type":
        parts = split_unescaped(value, "|")
        if len(parts) != 3:
            raise BadRequest(f"Invalid :of-type value {value!r}: expected system|code|value")
        type_system, type_code, ident = (unescape(p) for p in parts)
        return and_(table.c.system == clip(type_system), table.c.code == clip(f"{type_code}|{ident}"))
    if modifier not in (None, "not"):
        raise NotSupported(f"Modifier :{modifier} is not supported on token parameters")
    system, code, system_given = parse(value)
    if not system_given:
        if code is None:
            raise BadRequest("Empty token value")
        return table.c.code == code
    assert system is not None
    if code is None:
        if not system:
            raise BadRequest("Empty token value '|'")
        return table.c.system == system
    if not system:
        return and_(table.c.code == code, table.c.system.is_(None))
    return and_(table.c.code == code, table.c.system == system)


def matches(row: dict[str, Any], value: str, modifier: str | None) -> bool:
    """In-memory twin of ``condition``."""
    if modifier == "text":
        return bool(row["text"]) and row["text"].startswith(_text(value))
    system, code, system_given = parse(value)
    if not system_given:
        return bool(row["code"] == code)
    if code is None:
        return bool(row["system"] == system)
    if not system:
        return row["code"] == code and row["system"] is None
    return row["code"] == code and row["system"] == system
