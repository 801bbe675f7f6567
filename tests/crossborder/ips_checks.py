"""Checks every generated summary must pass, and ways to look into one."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

from sharedcare.crossborder.ips import SECTIONS, profile_issues, read_summary
from sharedcare.fhir.validation import validate_resource

SECTION_KEYS = {s.code: s.key for s in SECTIONS}


def references(node: Any) -> Iterator[str]:
    """Every literal reference anywhere in ``node`` (but contained ones)."""
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and not ref.startswith("#"):
            yield ref
        for value in node.values():
            yield from references(value)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


def by_url(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["fullUrl"]: e["resource"] for e in bundle["entry"]}


def sections(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Composition's sections by key (``problems``…)."""
    composition = bundle["entry"][0]["resource"]
    return {SECTION_KEYS[s["code"]["coding"][0]["code"]]: s for s in composition["section"]}


def section_items(bundle: dict[str, Any]) -> dict[str, set[str]]:
    """``Type/id`` of each section's entries, by section key."""
    urls = by_url(bundle)
    return {
        key: {
            f"{urls[e['reference']]['resourceType']}/{urls[e['reference']]['id']}" for e in s.get("entry", [])
        }
        for key, s in sections(bundle).items()
    }


def assert_valid_summary(bundle: dict[str, Any]) -> None:
    """A conformant IPS document: R4-valid, IPS rules met, every reference inside, narratives
    well-formed XHTML, and readable by our own reader."""
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "document"
    assert bundle["identifier"]["value"] and bundle["timestamp"]
    assert bundle["entry"][0]["resource"]["resourceType"] == "Composition"
    assert [i for i in validate_resource(bundle) if i.severity == "error"] == []
    assert [i for i in profile_issues(bundle) if i.severity == "error"] == []
    urls = by_url(bundle)
    assert len(urls) == len(bundle["entry"]), "fullUrls are unique"
    dangling = [ref for e in bundle["entry"] for ref in references(e["resource"]) if ref not in urls]
    assert dangling == []
    composition = bundle["entry"][0]["resource"]
    for narrative in [composition["text"], *(s["text"] for s in composition["section"])]:
        assert narrative["status"] == "generated"
        root = ET.fromstring(narrative["div"])
        assert root.tag == "{http://www.w3.org/1999/xhtml}div"
        assert "".join(root.itertext()).strip()
    for code in ("11450-4", "48765-2", "10160-0"):
        (section,) = [s for s in composition["section"] if s["code"]["coding"][0]["code"] == code]
        assert section.get("entry") or section.get("emptyReason")
    read = read_summary(bundle)
    assert read.issues == []
    for key, section in sections(bundle).items():
        found = read.section(key)
        assert found is not None and len(found.resolved) == len(section.get("entry", []))
