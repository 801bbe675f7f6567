"""Build response Bundles (searchset, history) and resource subsets (_summary, _elements).

Pure functions of stored rows and the public base URL; the HTTP layer and the bundle
processor share them.
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from typing import Any
from urllib.parse import urlencode

import orjson

from sharedcare.fhir.definitions import DATA
from sharedcare.fhir.search.engine import SearchResult
from sharedcare.fhir.store import Stored, instant

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
_ALWAYS = ("resourceType", "id", "meta")


@cache
def _element_flags() -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """Per resource type: (summary elements, mandatory elements) at the top level, from the profiles."""
    with gzip.open(DATA / "profiles-resources.json.gz", "rb") as fh:
        bundle = json.load(fh)
    flags: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
    for entry in bundle["entry"]:
        sd = entry["resource"]
        if sd.get("resourceType") != "StructureDefinition" or sd.get("kind") != "resource":
            continue
        rtype = sd["type"]
        summary: set[str] = set()
        mandatory: set[str] = set()
        for el in sd.get("snapshot", {}).get("element", []):
            path = el["path"].split(".")
            if len(path) != 2:
                continue
            name = path[1].replace("[x]", "")
            if el.get("isSummary"):
                summary.add(name)
            if el.get("min", 0) > 0:
                mandatory.add(name)
        flags[rtype] = (frozenset(summary), frozenset(mandatory))
    return flags


def _keep(res: dict[str, Any], names: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in res.items():
        base = key[1:] if key.startswith("_") else key
        if base in names or any(base.startswith(n) and base[len(n) : len(n) + 1].isupper() for n in names):
            out[key] = value
    return out


def _mark_subsetted(res: dict[str, Any]) -> dict[str, Any]:
    meta = dict(res.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    res["meta"] = meta
    return res


def subset(res: dict[str, Any], summary: str | None, elements: tuple[str, ...]) -> dict[str, Any]:
    """Apply ``_summary`` (true, text, data) or ``_elements`` to one resource."""
    rtype = res.get("resourceType", "")
    summary_names, mandatory = _element_flags().get(rtype, (frozenset(), frozenset()))
    if summary == "true":
        return _mark_subsetted(_keep(res, {*summary_names, *_ALWAYS}))
    if summary == "text":
        return _mark_subsetted(_keep(res, {"text", *mandatory, *_ALWAYS}))
    if summary == "data":
        return _mark_subsetted({k: v for k, v in res.items() if k != "text"})
    if elements:
        return _mark_subsetted(_keep(res, {*(e.split(".")[0] for e in elements), *mandatory, *_ALWAYS}))
    return res


def resource_json(stored: Stored, summary: str | None = None, elements: tuple[str, ...] = ()) -> Any:
    """The resource for a response: the stored JSON untouched unless a subset was asked for."""
    if summary or elements:
        return subset(stored.resource(), summary, elements)
    return orjson.Fragment(stored.content or "null")


def full_url(base_url: str, stored: Stored) -> str:
    return f"{base_url}/{stored.type}/{stored.id}"


def searchset(
    result: SearchResult,
    base_url: str,
    self_path: str,
    params: list[tuple[str, str]],
    summary: str | None = None,
    elements: tuple[str, ...] = (),
    extra_issues: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A searchset Bundle with ``self``/``next``/``previous`` links and search modes."""
    kept = [(k, v) for k, v in params if k not in ("_page",)]

    def link(relation: str, page: str | None) -> dict[str, str]:
        query = kept + ([("_page", page)] if page else [])
        return {
            "relation": relation,
            "url": f"{base_url}/{self_path}" + (f"?{urlencode(query)}" if query else ""),
        }

    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if result.total is not None:
        bundle["total"] = result.total
    links = [link("self", dict(params).get("_page"))]
    if result.next_cursor:
        links.append(link("next", result.next_cursor))
    if result.previous_cursor:
        links.append(link("previous", result.previous_cursor))
    bundle["link"] = links
    entries = [
        {
            "fullUrl": full_url(base_url, s),
            "resource": resource_json(s, summary, elements),
            "search": {"mode": "match"},
        }
        for s in result.matches
    ]
    entries += [
        {"fullUrl": full_url(base_url, s), "resource": resource_json(s), "search": {"mode": "include"}}
        for s in result.included
    ]
    if extra_issues:
        entries.append(
            {
                "resource": {"resourceType": "OperationOutcome", "issue": extra_issues},
                "search": {"mode": "outcome"},
            }
        )
    if entries:
        bundle["entry"] = entries
    return bundle


def history_bundle(
    versions: list[Stored],
    total: int | None,
    base_url: str,
    self_path: str,
    params: list[tuple[str, str]],
    next_page: str | None,
) -> dict[str, Any]:
    """A history Bundle: each version with its request method and response status."""
    kept = [(k, v) for k, v in params if k != "_page"]
    links = [
        {"relation": "self", "url": f"{base_url}/{self_path}" + (f"?{urlencode(params)}" if params else "")}
    ]
    if next_page:
        links.append(
            {"relation": "next", "url": f"{base_url}/{self_path}?{urlencode([*kept, ('_page', next_page)])}"}
        )
    entries = []
    for s in versions:
        method = "DELETE" if s.deleted else ("POST" if s.method == "POST" else "PUT")
        entry: dict[str, Any] = {
            "fullUrl": full_url(base_url, s),
            "request": {"method": method, "url": f"{s.type}/{s.id}" if method != "POST" else s.type},
            "response": {
                "status": "204" if s.deleted else ("201" if s.version == 1 else "200"),
                "etag": s.etag,
                "lastModified": instant(s.last_updated),
            },
        }
        if not s.deleted:
            entry["resource"] = orjson.Fragment(s.content or "null")
        entries.append(entry)
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history", "link": links}
    if total is not None:
        bundle["total"] = total
    if entries:
        bundle["entry"] = entries
    return bundle
