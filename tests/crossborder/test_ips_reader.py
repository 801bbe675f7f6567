"""The reader takes every IPS example of HL7 and of the connectathons, and says what it understood."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import orjson
import pytest

from sharedcare.crossborder.fhirxml import XmlNotFhir, parse_xml
from sharedcare.crossborder.ips import SummaryUnreadable, read_summary
from sharedcare.crossborder.reader import SECTION_CODES
from support import shared_data

CDA = "L3_PS_ReferenceTestData_W4.xml"
"""The eHDSI CDA patient summary: not FHIR, and said so."""


def _examples() -> list[tuple[str, bytes]]:
    """Every example document file, and the example Bundles inside the IG's package."""
    root = shared_data("ips-examples")
    found = [
        (str(p.relative_to(root)), p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in (".json", ".xml")
    ]
    for package in sorted(root.rglob("*.tgz")):
        with tarfile.open(package) as tgz:
            for member in tgz.getmembers():
                if member.isfile() and Path(member.name).name.startswith("Bundle-"):
                    fh = tgz.extractfile(member)
                    assert fh is not None
                    found.append((f"{package.name}:{member.name}", fh.read()))
    return found


def _composition(raw: Any) -> dict[str, Any]:
    """The Composition of a JSON example, found naively (for the expectations of the test)."""
    bundles = [raw] + [
        e["resource"] for e in raw.get("entry", []) if e["resource"]["resourceType"] == "Bundle"
    ]
    for bundle in bundles:
        for entry in bundle.get("entry", []):
            if entry["resource"]["resourceType"] == "Composition":
                return dict(entry["resource"])
    raise AssertionError("no Composition")


def test_every_example_loads_and_its_sections_are_found() -> None:
    examples = _examples()
    assert len(examples) >= 66
    loaded = 0
    report: dict[str, dict[str, Any]] = {}
    for name, data in examples:
        if name.endswith(CDA):
            with pytest.raises(SummaryUnreadable, match="ClinicalDocument"):
                read_summary(data)
            continue
        summary = read_summary(data)
        loaded += 1
        report[name] = summary.report()
        assert summary.patient is not None and summary.patient["resourceType"] == "Patient", name
        assert summary.resources > 1
        if name.endswith(".json"):
            composition = _composition(orjson.loads(data))
            assert len(summary.sections) == len(composition.get("section", [])), name
            for raw, read in zip(composition.get("section", []), summary.sections, strict=True):
                codes = {c.get("code") for c in raw.get("code", {}).get("coding", [])}
                known = codes & set(SECTION_CODES)
                if known:  # an IPS section code: found under its key, with every entry
                    assert read.key == SECTION_CODES[known.pop()], (name, raw.get("title"))
                assert len(read.entries) == len(raw.get("entry", [])), (name, raw.get("title"))
                assert (read.empty_reason is not None) == ("emptyReason" in raw), name
    assert loaded == len(examples) - 1
    # across the examples, nearly every section entry resolves to its resource
    entries = sum(s["entries"] for r in report.values() for s in r["sections"])
    resolved = sum(s["resolved"] for r in report.values() for s in r["sections"])
    assert entries > 1500 and resolved / entries > 0.99


def test_sections_without_codes_are_found_by_title() -> None:
    path = shared_data(
        "ips-examples", "connectathon-samples", "connectathon_archive", "CA_PuraJuniper_01.json"
    )
    summary = read_summary(path.read_bytes())
    assert [s.key for s in summary.sections] == [
        "medications",
        "problems",
        "past-illness",
        "results",
        "procedures",
        "vital-signs",
        "plan-of-care",
    ]
    assert any("no LOINC code" in issue for issue in summary.issues)
    assert summary.section("vital-signs") is not None and len(summary.section("vital-signs").resolved) == 50


def test_a_document_wrapped_in_a_search_result_is_unwrapped() -> None:
    path = shared_data(
        "ips-examples", "connectathon-samples", "connectathon_Sept2024", "US_MEDITECH_ips_1.json"
    )
    summary = read_summary(orjson.loads(path.read_bytes()))
    assert summary.patient_name == "Veronica Williams"
    assert summary.section("procedures") is not None and len(summary.section("procedures").entries) == 26
    assert summary.issues


def test_fhir_xml_reads_like_its_json_twin() -> None:
    folder = shared_data("ips-examples", "connectathon-samples", "connectathon_archive")
    from_xml = read_summary((folder / "XML_Samples" / "UK_IPS_Example.xml").read_bytes())
    from_json = read_summary((folder / "UK_NHSx_IPS_Example_01-modified.json").read_bytes())
    assert from_xml.patient_name == from_json.patient_name == "Horace SKELLY"
    assert [(s.key, len(s.resolved)) for s in from_xml.sections] == [
        (s.key, len(s.resolved)) for s in from_json.sections
    ]
    assert from_xml.patient is not None and from_xml.patient["birthDate"] == "1925-04-21"


def test_fhir_xml_conversion_rules() -> None:
    xml = """<Bundle xmlns="http://hl7.org/fhir"><type value="document"/>
      <entry><fullUrl value="urn:uuid:1"/><resource><Observation>
        <status value="final"/>
        <code><coding><code value="x"/></coding><text value="T"/></code>
        <valueQuantity><value value="1.50"/></valueQuantity>
        <text><status value="generated"/>
          <div xmlns="http://www.w3.org/1999/xhtml"><p>Hi <b>there</b></p></div></text>
        <note id="n1"><text value="a"/></note>
      </Observation></resource></entry></Bundle>"""
    bundle = parse_xml(xml)
    observation = bundle["entry"][0]["resource"]
    assert observation["resourceType"] == "Observation"
    assert observation["code"]["coding"] == [{"code": "x"}]  # repeating element: a list
    assert observation["valueQuantity"] == {"value": 1.5}  # a decimal is a JSON number
    assert observation["note"] == [{"id": "n1", "text": "a"}]
    assert observation["text"]["div"].startswith('<div xmlns="http://www.w3.org/1999/xhtml"><p>Hi <b>')
    with pytest.raises(XmlNotFhir, match="document type"):
        parse_xml('<!DOCTYPE x [<!ENTITY a "b">]><Bundle xmlns="http://hl7.org/fhir"/>')
    with pytest.raises(XmlNotFhir):
        parse_xml("<Bundle>")


@pytest.mark.parametrize(
    "document",
    [
        {"resourceType": "Patient"},
        {"resourceType": "Bundle", "type": "document", "entry": [{"resource": {"resourceType": "Patient"}}]},
        "not json",
        b"<x/>",
        [1, 2],
    ],
)
def test_no_document_at_all_is_unreadable(document: Any) -> None:
    with pytest.raises(SummaryUnreadable):
        read_summary(document)


def test_broken_documents_are_read_with_issues() -> None:
    document = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "urn:uuid:p",
                "resource": {"resourceType": "Patient", "id": "p", "name": [{"text": "P"}]},
            },
            {
                "resource": {
                    "resourceType": "Composition",
                    "subject": {"reference": "urn:uuid:nowhere"},
                    "section": [
                        {"title": "Allergies", "entry": [{"reference": "urn:uuid:gone"}, "junk"]},
                        {"title": "Odd", "code": {"coding": [{"code": "zzz"}]}, "entry": "not a list"},
                        "junk",
                    ],
                }
            },
        ],
    }
    summary = read_summary(io.BytesIO(orjson.dumps(document)).getvalue())
    assert summary.patient_name == "P"
    assert [s.key for s in summary.sections] == ["allergies", None]
    assert summary.section("allergies") is not None and summary.section("allergies").resolved == []
    text = " ".join(summary.issues)
    for fragment in ("not 'document'", "not the first entry", "no fullUrl", "do not resolve", "subject"):
        assert fragment in text
