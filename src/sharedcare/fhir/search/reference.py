"""Reference parameters: ``Type/id``, ``id``, absolute URLs, ``:Type`` and ``:identifier``.

Chains (``subject.name=x``, ``subject:Patient.name=x``) and ``_has`` are compiled by ``compile``,
which joins these rows with the target resources.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, or_

from sharedcare.fhir.errors import BadRequest
from sharedcare.fhir.search import token
from sharedcare.fhir.search.values import clip, like_escape, unescape

_REF_RE = re.compile(r"(?:^|/)(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def split_reference(reference: str, known_types: frozenset[str]) -> tuple[str | None, str | None]:
    """(type, id) of a literal reference (relative or absolute), or (None, None)."""
    m = _REF_RE.search(reference)
    if not m or m["type"] not in known_types:
        return None, None
    return m["type"], m["id"]


def index(value: Any, type_name: str | None, known_types: frozenset[str]) -> list[dict[str, Any]]:
    """Index rows for a Reference, or a canonical/uri string used as a reference."""
    if isinstance(value, str):
        target_type, target_id = split_reference(value, known_types)
        return [{"target_type": clip(target_type, 64), "target_id": clip(target_id, 64), "url": value}]
    if not isinstance(value, dict):
        return []
    ref = value.get("reference")
    row: dict[str, Any] = {"target_type": None, "target_id": None, "url": None}
    if isinstance(ref, str) and not ref.startswith("#"):
        target_type, target_id = split_reference(ref, known_types)
        row["target_type"], row["target_id"] = clip(target_type, 64), clip(target_id, 64)
        row["url"] = ref if row["target_id"] is None or "://" in ref else None
    ident = value.get("identifier")
    if isinstance(ident, dict) and ident.get("value") is not None:
        row["ident_system"] = clip(ident.get("system"))
        row["ident_value"] = clip(ident["value"])
    if row["target_id"] is None and row["url"] is None and "ident_value" not in row:
        return []
    return [row]


def parse_target(
    value: str, modifier: str | None, base_url: str, known_types: frozenset[str]
) -> tuple[str | None, str | None, str | None]:
    """(type, id, url) a reference search value asks for; only one of id/url is set."""
    text = unescape(value)
    if modifier and modifier != "identifier":
        if modifier not in known_types:
            raise BadRequest(f"Unknown resource type :{modifier} on reference parameter")
        if "/" in text:
            t, i = split_reference(text, known_types)
            if t != modifier:
                raise BadRequest(f"Reference {text!r} does not match the type modifier :{modifier}")
            return t, i, None
        return modifier, text, None
    if "://" in text:
        if base_url and text.startswith(base_url.rstrip("/") + "/"):
            t, i = split_reference(text[len(base_url.rstrip("/")) + 1 :], known_types)
            if t:
                return t, i, None
        return None, None, text
    if "/" in text:
        t, i = split_reference(text, known_types)
        if not t:
            raise BadRequest(f"Invalid reference {text!r}")
        return t, i, None
    return None, text, None


def local(table: Any, base_url: str) -> ColumnElement[bool]:
    """Index rows whose literal reference points into this server: relative, or absolute under
    ``base_url``. An absolute reference to another server (``http://other/fhir/Patient/1``) is
    matched by its URL only, never as the local ``Patient/1``."""
    if not base_url:
        return table.c.url.is_(None)
    prefix = like_escape(base_url.rstrip("/") + "/") + "%"
    return or_(table.c.url.is_(None), table.c.url.like(prefix, escape="\\"))


def _is_local(row: dict[str, Any], base_url: str) -> bool:
    url = row.get("url")
    return url is None or bool(base_url and url.startswith(base_url.rstrip("/") + "/"))


def condition(
    table: Table, value: str, modifier: str | None, base_url: str, known_types: frozenset[str]
) -> ColumnElement[bool]:
    """SQL condition for one reference search value."""
    if modifier == "identifier":
        system, code, system_given = token.parse(value)
        if code is None:
            raise BadRequest(f"Invalid :identifier value {value!r}")
        if system_given and system:
            return and_(table.c.ident_value == code, table.c.ident_system == system)
        return table.c.ident_value == code
    target_type, target_id, url = parse_target(value, modifier, base_url, known_types)
    if url is not None:
        return table.c.url == url
    if target_type:
        return and_(
            table.c.target_id == target_id, table.c.target_type == target_type, local(table, base_url)
        )
    return and_(table.c.target_id == target_id, local(table, base_url))


def matches(
    row: dict[str, Any], value: str, modifier: str | None, base_url: str, known: frozenset[str]
) -> bool:
    """In-memory twin of ``condition``."""
    if modifier == "identifier":
        system, code, system_given = token.parse(value)
        if system_given and system:
            return row.get("ident_value") == code and row.get("ident_system") == system
        return bool(row.get("ident_value") == code)
    target_type, target_id, url = parse_target(value, modifier, base_url, known)
    if url is not None:
        return bool(row["url"] == url)
    if target_type and row["target_type"] != target_type:
        return False
    return row["target_id"] == target_id and _is_local(row, base_url)
