"""ITI-67 Find Document References and ITI-66 Find Document Lists, one parameter at a time."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from mhd_world import (
    CLASS,
    FORMAT,
    GP,
    HOSPITAL,
    LAB,
    LIST_TYPES,
    LOINC,
    Doc,
    auth,
    created,
    provide,
    provide_bundle,
)

SNOMED = "http://snomed.info/sct"
FACILITY = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
EVENT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


@pytest.fixture
def filed(world: TestClient) -> tuple[TestClient, dict[str, str]]:
    """A laboratory report and a hospital's imaging report for Anne, a report for Bert; their ids."""
    lab = Doc(data=b"lab", date="2026-03-02T10:00:00Z")
    imaging = Doc(
        type_code="18748-4",
        data=b"imaging",
        date="2026-01-15T08:00:00Z",
        authors=["Practitioner/gp", "Organization/hosp1"],
        confidentiality="R",
        extra={
            "category": [{"coding": [{"system": CLASS, "code": "IMAGES"}]}],
            "context": {
                "event": [{"coding": [{"system": EVENT, "code": "IMAGING"}]}],
                "period": {"start": "2026-01-10", "end": "2026-01-12"},
                "facilityType": {"coding": [{"system": FACILITY, "code": "HOSP"}]},
                "practiceSetting": {"coding": [{"system": SNOMED, "code": "394914008"}]},
                "related": [{"reference": "Encounter/stay-1"}],
            },
        },
    )
    imaging_bundle = provide_bundle("pa", imaging, source="Organization/hosp1")
    imaging_bundle["entry"][1]["resource"]["content"][0]["format"]["code"] = "urn:ihe:rad:PDF"
    imaging_bundle["entry"][1]["resource"]["content"][0]["attachment"]["creation"] = "2026-01-12T17:00:00Z"
    ids = {
        "lab": created(provide(world, LAB, provide_bundle("pa", lab)), "DocumentReference")[0],
        "imaging": created(provide(world, HOSPITAL, imaging_bundle), "DocumentReference")[0],
        "other": created(provide(world, LAB, provide_bundle("pb", Doc(data=b"b"))), "DocumentReference")[0],
    }
    return world, ids


def found(client: TestClient, query: str) -> set[str]:
    response = client.get(f"/fhir/{query}", headers=auth(client, GP))
    assert response.status_code == 200, response.text
    bundle: dict[str, Any] = response.json()
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


ITI_67 = [
    ("patient=pa", {"lab", "imaging"}),
    ("patient=Patient/pa", {"lab", "imaging"}),
    ("patient.identifier=http://example.lu/matricule|1980010100187", {"lab", "imaging"}),
    ("patient.identifier=http://example.lu/matricule|0000", set()),
    ("status=current", {"lab", "imaging"}),
    ("status=superseded", set()),
    (f"category={CLASS}|IMAGES", {"imaging"}),
    (f"category={CLASS}|REPORTS", {"lab"}),
    (f"type={LOINC}|18748-4", {"imaging"}),
    (f"type={LOINC}|11502-2", {"lab"}),
    ("date=ge2026-03-01", {"lab"}),
    ("date=lt2026-02-01", {"imaging"}),
    ("period=2026-01", {"imaging"}),
    ("period=ge2026-01-11", {"imaging"}),
    ("period=2026-02", set()),
    ("author.given=Jean", {"imaging"}),
    ("author.family=Muller", {"imaging"}),
    ("author.family=Weber", set()),
    ("author=Organization/lab1", {"lab"}),
    (f"setting={SNOMED}|394914008", {"imaging"}),
    (f"facility={FACILITY}|HOSP", {"imaging"}),
    (f"event={EVENT}|IMAGING", {"imaging"}),
    ("security-label=http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R", {"imaging"}),
    ("security-label=http://terminology.hl7.org/CodeSystem/v3-Confidentiality|N", {"lab"}),
    (f"format={FORMAT}|urn:ihe:rad:PDF", {"imaging"}),
    (f"format={FORMAT}|urn:ihe:iti:xds:2017:mimeTypeSufficient", {"lab"}),
    ("related=Encounter/stay-1", {"imaging"}),
    ("creation=ge2026-02-01", {"lab"}),
    ("creation=lt2026-02-01", {"imaging"}),
    ("contenttype=application/pdf", {"lab", "imaging"}),
]


def test_find_document_references_by_each_parameter(filed: tuple[TestClient, dict[str, str]]) -> None:
    """One world for every parameter (building it is the slow part); each query checked apart."""
    client, ids = filed
    names = {v: k for k, v in ids.items()}
    wrong = {}
    for query, expected in ITI_67:
        got = found(client, f"DocumentReference?{query}")
        if got != {ids[k] for k in expected}:
            wrong[query] = sorted(names[i] for i in got)
    assert wrong == {}


def test_the_search_stays_within_the_callers_record_access(filed: tuple[TestClient, dict[str, str]]) -> None:
    client, ids = filed
    assert found(client, "DocumentReference?patient=pb") == set()  # not in the GP's care
    assert found(client, "DocumentReference") == {ids["lab"], ids["imaging"]}


ITI_66 = [
    (f"code={LIST_TYPES}|submissionset&patient=pa", 2),
    (f"code={LIST_TYPES}|submissionset&patient.identifier=http://example.lu/matricule|1980010100187", 2),
    (f"code={LIST_TYPES}|folder&patient=pa", 0),
    (f"designationType={LOINC}|18748-4", 1),
    (f"designationType={LOINC}|11502-2&patient=pa", 1),
    ("source=Organization/hosp1", 1),
    ("sourceId=urn:oid:1.2.3.4&patient=pa", 2),
    ("status=current&patient=pa", 2),
    ("date=ge2026-03-01&patient=pa", 2),
]


def test_find_document_lists_by_each_parameter(filed: tuple[TestClient, dict[str, str]]) -> None:
    client, _ = filed
    wrong = {q: n for q, count in ITI_66 if (n := len(found(client, f"List?{q}"))) != count}
    assert wrong == {}


def test_folders_are_filed_and_found(world: TestClient) -> None:
    doc = Doc(data=b"in a folder")
    folder = {
        "fullUrl": "urn:uuid:folder-1",
        "resource": {
            "resourceType": "List",
            "status": "current",
            "mode": "working",
            "code": {"coding": [{"system": LIST_TYPES, "code": "folder"}]},
            "subject": {"reference": "Patient/pa"},
            "title": "Pregnancy follow-up",
            "entry": [{"item": {"reference": f"urn:uuid:{doc.key}"}}],
        },
        "request": {"method": "POST", "url": "List"},
    }
    bundle = provide_bundle("pa", doc, extra=[folder])
    bundle["entry"][0]["resource"]["entry"].append({"item": {"reference": "urn:uuid:folder-1"}})
    response = provide(world, LAB, bundle)
    (doc_id,) = created(response, "DocumentReference")
    folders = world.get(
        f"/fhir/List?code={LIST_TYPES}|folder&patient=pa&item=DocumentReference/{doc_id}"
    ).json()
    assert [e["resource"]["title"] for e in folders["entry"]] == ["Pregnancy follow-up"]
    bundle = provide_bundle("pa", Doc(data=b"other"), extra=[{**folder, "fullUrl": "urn:uuid:folder-2"}])
    bundle["entry"][-1]["resource"]["subject"] = {"reference": "Patient/pb"}
    assert provide(world, LAB, bundle).status_code == 422  # a folder of another patient
