"""The IPS rules (``profile_issues``) and the generator's own rules, without a database."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ips_checks import assert_valid_summary, by_url, section_items, sections
from ips_world import record

from sharedcare.crossborder.ips import (
    Limits,
    Signer,
    SummaryUnreadable,
    build_summary,
    profile_issues,
    read_summary,
)
from sharedcare.fhir.store import Stored
from support import shared_data

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _stored(resources: Iterable[dict[str, Any]]) -> list[Stored]:
    return [
        Stored(i, r["resourceType"], r["id"], 1, NOW.replace(tzinfo=None), False, orjson.dumps(r).decode())
        for i, r in enumerate(resources, start=1)
    ]


def _build(resources: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
    """A summary of patient ``pa`` from ``resources``, everything readable."""
    stored = _stored(resources)
    patient = next(s for s in stored if s.type == "Patient" and s.id == "pa")
    by_key = {(s.type, s.id): s for s in stored}

    def fetch(keys: Iterable[tuple[str, str]]) -> Mapping[tuple[str, str], Stored]:
        return {k: by_key[k] for k in keys if k in by_key}

    in_compartment = [s for s in stored if s.type not in ("Patient", "Practitioner", "Medication", "Device")]
    return build_summary(patient, in_compartment, fetch, now=NOW, **options).bundle


def _errors(bundle: Any) -> list[str]:
    return [i.diagnostics for i in profile_issues(bundle) if i.severity == "error"]


def test_the_generated_summary_of_the_record_is_valid() -> None:
    bundle = _build(record(), base_url="https://dsp.example.lu/fhir")
    assert_valid_summary(bundle)
    assert all(
        e["fullUrl"].startswith(("https://dsp.example.lu/fhir/", "urn:uuid:")) for e in bundle["entry"]
    )
    # without a base URL, every entry is a urn:uuid, stable for the same resource
    again = _build(record())
    assert all(e["fullUrl"].startswith("urn:uuid:") for e in again["entry"])
    assert sorted(e["fullUrl"] for e in again["entry"][1:]) == sorted(
        e["fullUrl"] for e in _build(record())["entry"][1:]
    )
    assert_valid_summary(again)


def test_pending_items_are_left_out_on_request_and_signing_adds_the_attester() -> None:
    signed = _build(record(), exclude_pending=True, signer=Signer("gp", "Dr Greta Pinto"))
    assert_valid_summary(signed)
    assert section_items(signed)["results"] == {"Observation/lab-new"}
    composition = signed["entry"][0]["resource"]
    author = by_url(signed)[composition["author"][0]["reference"]]
    assert author["resourceType"] == "Practitioner" and author["id"] == "gp"
    assert composition["attester"] == [
        {
            "mode": "legal",
            "time": "2025-03-01T12:00:00Z",
            "party": {"reference": composition["author"][0]["reference"]},
        }
    ]
    # a signer the directory does not know is described from their token
    unknown = _build(record(), signer=Signer("gp-new", "Dr New"))
    author = by_url(unknown)[unknown["entry"][0]["resource"]["author"][0]["reference"]]
    assert author["name"] == [{"text": "Dr New"}]
    assert_valid_summary(unknown)


def test_narratives_escape_what_the_record_says() -> None:
    resources = record()
    condition = next(r for r in resources if r["id"] == "c-active")
    condition["code"]["text"] = '<script>alert("x")</script> & <b>bold</b>'
    bundle = _build(resources)
    assert_valid_summary(bundle)
    div = sections(bundle)["problems"]["text"]["div"]
    assert "<script" not in div and "&lt;script&gt;" in div and "&amp; &lt;b&gt;" in div


def test_limits_keep_the_newest() -> None:
    resources = [r for r in record() if r["resourceType"] != "Procedure"]
    for year in range(1990, 2000):
        resources.append(
            {
                "resourceType": "Procedure",
                "id": f"p{year}",
                "status": "completed",
                "code": {"text": f"Procedure of {year}"},
                "subject": {"reference": "Patient/pa"},
                "performedDateTime": f"{year}-01-01",
            }
        )
    bundle = _build(resources, limits=Limits(procedures=3, results=1))
    assert section_items(bundle)["procedures"] == {"Procedure/p1999", "Procedure/p1998", "Procedure/p1997"}
    assert section_items(bundle)["results"] == {"Observation/lab-pending"}  # newest test first


def _valid() -> dict[str, Any]:
    return _build(record())


def _first(bundle: dict[str, Any], rtype: str) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype)


def _drop_section(bundle: dict[str, Any], code: str) -> None:
    composition = bundle["entry"][0]["resource"]
    composition["section"] = [s for s in composition["section"] if s["code"]["coding"][0]["code"] != code]


def _empty_section(bundle: dict[str, Any], code: str) -> None:
    section = next(
        s for s in bundle["entry"][0]["resource"]["section"] if s["code"]["coding"][0]["code"] == code
    )
    section.pop("entry", None)
    section.pop("emptyReason", None)


BREAKAGES = {
    "Bundle.type must be 'document'": lambda b: b.update(type="collection"),
    "identifier": lambda b: b.pop("identifier"),
    "timestamp": lambda b: b.pop("timestamp"),
    "first entry of a document is its Composition": lambda b: b["entry"].reverse(),
    "appears twice": lambda b: b["entry"][2].update(fullUrl=b["entry"][1]["fullUrl"]),
    "neither absolute nor a urn": lambda b: b["entry"][3].update(fullUrl="Condition/x"),
    "does not resolve inside the Bundle": lambda b: _first(b, "Condition").update(
        subject={"reference": "Patient/elsewhere"}
    ),
    "60591-5": lambda b: b["entry"][0]["resource"]["type"]["coding"][0].update(code="11488-4"),
    "Composition.author is required": lambda b: b["entry"][0]["resource"].pop("author"),
    "allergies section (LOINC 48765-2) must appear once, not 0": lambda b: _drop_section(b, "48765-2"),
    "entries or an emptyReason": lambda b: _empty_section(b, "10160-0"),
    "has no emptyReason (cmp-2)": lambda b: b["entry"][0]["resource"]["section"][0].update(
        emptyReason={"text": "x"}
    ),
    "not well-formed XHTML": lambda b: b["entry"][0]["resource"]["section"][0]["text"].update(
        div="<div><p></div>"
    ),
    "may not hold <script>": lambda b: b["entry"][0]["resource"]["section"][0]["text"].update(
        div='<div xmlns="http://www.w3.org/1999/xhtml"><script>x()</script>text</div>'
    ),
    "a narrative (text.div) is required": lambda b: b["entry"][0]["resource"]["section"][1].pop("text"),
    "may not hold a Immunization": lambda b: b["entry"][0]["resource"]["section"][0]["entry"].append(
        {
            "reference": next(
                e["fullUrl"] for e in b["entry"] if e["resource"]["resourceType"] == "Immunization"
            )
        }
    ),
    "exactly one Patient": lambda b: b["entry"].append(
        {"fullUrl": "urn:uuid:other", "resource": {"resourceType": "Patient", "id": "other"}}
    ),
}


@pytest.mark.parametrize("expected", list(BREAKAGES))
def test_each_broken_rule_is_reported(expected: str) -> None:
    bundle = _valid()
    assert _errors(bundle) == []
    broken = copy.deepcopy(bundle)
    BREAKAGES[expected](broken)
    errors = _errors(broken)
    assert any(expected in e for e in errors), errors


def test_entry_profile_minimums_are_warnings() -> None:
    bundle = _valid()
    lab = next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation" and "laboratory" in str(e)
    )
    assert "performer" not in lab
    warnings = [i for i in profile_issues(bundle) if i.severity == "warning"]
    assert any("performer" in i.diagnostics for i in warnings)
    assert _errors(bundle) == []


def test_hl7_examples_meet_the_rules() -> None:
    folder = shared_data("ips-examples", "hl7-ips-ig", "example-bundles")
    for path in sorted(folder.glob("*.json")):
        assert _errors(orjson.loads(path.read_bytes())) == [], path.name


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*path, i))
    return out


_DOCUMENT = _valid()
_PATHS = _paths(_DOCUMENT)[1:]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_PATHS), _JSON), min_size=1, max_size=4))
def test_reader_and_rules_never_crash_on_damaged_documents(damage: list[tuple[tuple[Any, ...], Any]]) -> None:
    document = copy.deepcopy(_DOCUMENT)
    for path, value in damage:
        node: Any = document
        for step in path[:-1]:
            try:
                node = node[step]
            except (KeyError, IndexError, TypeError):
                break
        else:
            with contextlib.suppress(IndexError, TypeError):
                node[path[-1]] = value
    profile_issues(document)
    try:
        summary = read_summary(document)
    except SummaryUnreadable:
        return
    summary.report()
