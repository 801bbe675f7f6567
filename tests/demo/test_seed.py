"""The demo bundle: deterministic, self-contained (every reference resolves), clinically coherent, valid."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from sharedcare.demo.seed import REFERENCE_DATE, build_demo_bundle, resource_counts
from sharedcare.identity.matricule import MATRICULE_SYSTEM, birth_date, is_valid

Resource = dict[str, Any]

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2}))?$")
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"


@pytest.fixture(scope="module")
def bundle() -> Resource:
    return build_demo_bundle()


@pytest.fixture(scope="module")
def resources(bundle: Resource) -> list[Resource]:
    return [entry["resource"] for entry in bundle["entry"]]


@pytest.fixture(scope="module")
def by_url(bundle: Resource) -> dict[str, Resource]:
    return {entry["fullUrl"]: entry["resource"] for entry in bundle["entry"]}


def of_type(resources: list[Resource], resource_type: str) -> list[Resource]:
    return [r for r in resources if r["resourceType"] == resource_type]


def walk_references(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every (path, reference) pair anywhere inside a resource."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield path, value
            else:
                yield from walk_references(value, f"{path}.{key}")
    elif isinstance(node, list):
        for item in node:
            yield from walk_references(item, path)


def age_on(birth: dt.date, day: dt.date) -> float:
    return (day - birth).days / 365.25


# --- determinism and bundle shape -----------------------------------------------------------


def test_same_seed_gives_the_same_bundle(bundle: Resource) -> None:
    assert json.dumps(build_demo_bundle(), sort_keys=True) == json.dumps(bundle, sort_keys=True)


def test_another_seed_gives_other_people_but_the_same_ids(bundle: Resource) -> None:
    other = build_demo_bundle(seed=7)
    assert json.dumps(other, sort_keys=True) != json.dumps(bundle, sort_keys=True)
    # Re-seeding is idempotent on the fixed part: organisations and professionals keep their ids.
    fixed = {"Organization", "Practitioner", "PractitionerRole"}
    urls = [e["request"]["url"] for e in bundle["entry"] if e["resource"]["resourceType"] in fixed]
    other_urls = [e["request"]["url"] for e in other["entry"] if e["resource"]["resourceType"] in fixed]
    assert urls == other_urls


def test_is_a_transaction_of_puts_with_readable_ids(bundle: Resource) -> None:
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "transaction"
    urls, full_urls = set(), set()
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert entry["request"] == {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
        assert FHIR_ID.match(resource["id"]), resource["id"]
        assert resource["id"].startswith("lu-")
        assert entry["fullUrl"].startswith("urn:uuid:")
        uuid.UUID(entry["fullUrl"].removeprefix("urn:uuid:"))
        urls.add(entry["request"]["url"])
        full_urls.add(entry["fullUrl"])
    assert len(urls) == len(full_urls) == len(bundle["entry"])
    ids = {e["resource"]["id"] for e in bundle["entry"]}
    assert {"lu-org-chl", "lu-org-chem", "lu-org-hrs", "lu-org-chdn", "lu-pat-0001", "lu-prac-0003"} <= ids


def test_every_reference_resolves_to_an_entry(resources: list[Resource], by_url: dict[str, Resource]) -> None:
    count = 0
    for resource in resources:
        for path, reference in walk_references(resource):
            assert reference.startswith("urn:uuid:"), (resource["id"], path, reference)
            assert reference in by_url, (resource["id"], path, reference)
            count += 1
    assert count > 1000


@pytest.mark.parametrize(
    ("resource_type", "element", "target"),
    [
        ("Condition", "subject", "Patient"),
        ("Observation", "subject", "Patient"),
        ("MedicationRequest", "subject", "Patient"),
        ("MedicationRequest", "requester", "Practitioner"),
        ("AllergyIntolerance", "patient", "Patient"),
        ("Immunization", "patient", "Patient"),
        ("RelatedPerson", "patient", "Patient"),
        ("PractitionerRole", "practitioner", "Practitioner"),
        ("PractitionerRole", "organization", "Organization"),
    ],
)
def test_references_point_at_the_right_type(
    resources: list[Resource], by_url: dict[str, Resource], resource_type: str, element: str, target: str
) -> None:
    for resource in of_type(resources, resource_type):
        assert by_url[resource[element]["reference"]]["resourceType"] == target


def test_expected_counts(bundle: Resource, resources: list[Resource], by_url: dict[str, Resource]) -> None:
    counts = resource_counts(bundle)
    assert counts["Organization"] == 4 + 3 + 5 + 2  # hospital groups, labs, pharmacies, GP practices
    assert counts["Practitioner"] == 15
    assert counts["PractitionerRole"] == 15
    assert counts["Patient"] == 40
    assert counts["RelatedPerson"] == 12  # 4 families, 6 children, two parents each
    for clinical in ("Condition", "AllergyIntolerance", "MedicationRequest", "Observation", "Immunization"):
        assert counts[clinical] > 0, clinical
    patients = {url for url, resource in by_url.items() if resource["resourceType"] == "Patient"}
    with_condition = {r["subject"]["reference"] for r in of_type(resources, "Condition")}
    with_vitals = {r["subject"]["reference"] for r in of_type(resources, "Observation")}
    assert with_condition == patients
    assert with_vitals == patients


@pytest.mark.parametrize(("patients", "related"), [(0, 0), (1, 0), (3, 2), (10, 2), (25, 6)])
def test_patient_count_parameter(patients: int, related: int) -> None:
    counts = resource_counts(build_demo_bundle(seed=11, patients=patients))
    assert counts.get("Patient", 0) == patients
    assert counts.get("RelatedPerson", 0) == related
    assert counts["Organization"] == 14


def test_negative_patient_count_is_refused() -> None:
    with pytest.raises(ValueError, match="patients"):
        build_demo_bundle(patients=-1)


# --- identity and families ------------------------------------------------------------------


def test_every_patient_has_a_valid_matricule_matching_the_birth_date(resources: list[Resource]) -> None:
    seen = set()
    for patient in of_type(resources, "Patient"):
        values = [i["value"] for i in patient["identifier"] if i["system"] == MATRICULE_SYSTEM]
        assert len(values) == 1
        value = values[0]
        assert is_valid(value), value
        assert birth_date(value) == dt.date.fromisoformat(patient["birthDate"])
        seen.add(value)
    assert len(seen) == 40


def test_children_have_an_adult_patient_as_parent(
    resources: list[Resource], by_url: dict[str, Resource]
) -> None:
    patients_by_matricule = {
        i["value"]: p
        for p in of_type(resources, "Patient")
        for i in p["identifier"]
        if i["system"] == MATRICULE_SYSTEM
    }
    related = of_type(resources, "RelatedPerson")
    children = [
        p
        for p in of_type(resources, "Patient")
        if age_on(dt.date.fromisoformat(p["birthDate"]), REFERENCE_DATE) < 18
    ]
    assert len(children) == 6
    for child in children:
        parents = [r for r in related if by_url[r["patient"]["reference"]] is child]
        assert {r["relationship"][1]["coding"][0]["code"] for r in parents} == {"MTH", "FTH"}
        assert all(r["relationship"][0]["coding"][0]["code"] == "PRN" for r in parents)
        for parent_role in parents:
            (matricule,) = [i["value"] for i in parent_role["identifier"] if i["system"] == MATRICULE_SYSTEM]
            parent = patients_by_matricule[matricule]
            parent_birth = dt.date.fromisoformat(parent["birthDate"])
            child_birth = dt.date.fromisoformat(child["birthDate"])
            assert age_on(parent_birth, REFERENCE_DATE) >= 18
            assert age_on(parent_birth, child_birth) >= 16
            assert parent_role["birthDate"] == parent["birthDate"]
            assert parent_role["telecom"] == parent["telecom"]
            assert parent["address"] == child["address"]
            # The parent's Patient record points at the RelatedPerson that is the same human.
            links = [link["other"]["reference"] for link in parent.get("link", ())]
            assert any(by_url[url] is parent_role for url in links)


def test_patients_have_languages_addresses_and_a_doctor(
    resources: list[Resource], by_url: dict[str, Resource]
) -> None:
    languages: Counter[str] = Counter()
    for patient in of_type(resources, "Patient"):
        address = patient["address"][0]
        assert address["country"] == "LU" and re.fullmatch(r"\d{4}", address["postalCode"])
        preferred = [c for c in patient["communication"] if c["preferred"]]
        assert len(preferred) == 1
        languages[preferred[0]["language"]["coding"][0]["code"]] += 1
        doctor = by_url[patient["generalPractitioner"][0]["reference"]]
        assert doctor["resourceType"] == "Practitioner"
    assert set(languages) <= {"lb", "fr", "de", "pt", "en"}
    assert len(languages) >= 3


# --- clinical coherence ----------------------------------------------------------------------


def test_immunizations_fit_the_patient_age(resources: list[Resource], by_url: dict[str, Resource]) -> None:
    minimum_age_years = {
        "146": 6 / 52,
        "119": 6 / 52,
        "133": 6 / 52,
        "216": 6 / 52,
        "163": 2 / 12,
        "03": 0.95,
        "21": 0.95,
        "203": 0.95,
        "165": 9.0,
        "208": 12.0,
        "187": 18.0,
    }
    for immunization in of_type(resources, "Immunization"):
        patient = by_url[immunization["patient"]["reference"]]
        birth = dt.date.fromisoformat(patient["birthDate"])
        day = dt.date.fromisoformat(immunization["occurrenceDateTime"][:10])
        assert birth < day <= REFERENCE_DATE, immunization["id"]
        cvx = next(c["code"] for c in immunization["vaccineCode"]["coding"] if c["system"].endswith("/cvx"))
        assert age_on(birth, day) >= minimum_age_years.get(cvx, 0), (immunization["id"], cvx)
        assert immunization["status"] == "completed"
        assert immunization["lotNumber"]


def test_children_follow_the_schedule_in_order(
    resources: list[Resource], by_url: dict[str, Resource]
) -> None:
    doses: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for immunization in of_type(resources, "Immunization"):
        cvx = immunization["vaccineCode"]["coding"][0]["code"]
        key = (immunization["patient"]["reference"], cvx)
        doses.setdefault(key, []).append(
            (immunization["occurrenceDateTime"], immunization["protocolApplied"][0]["doseNumberPositiveInt"])
        )
    for series in doses.values():
        numbers = [number for _, number in sorted(series)]
        assert numbers == sorted(numbers)
    infants = [
        p
        for p in of_type(resources, "Patient")
        if age_on(dt.date.fromisoformat(p["birthDate"]), REFERENCE_DATE) < 1
    ]
    assert infants, "the default population includes an infant"
    child_codes = {i["vaccineCode"]["coding"][0]["code"] for i in of_type(resources, "Immunization")}
    assert {"146", "03"} <= child_codes


def test_no_penicillin_for_penicillin_allergic_patients(resources: list[Resource]) -> None:
    allergic = {
        a["patient"]["reference"]
        for a in of_type(resources, "AllergyIntolerance")
        if a["code"]["coding"][0]["code"] == "373270004"
    }
    for request in of_type(resources, "MedicationRequest"):
        if request["subject"]["reference"] in allergic:
            assert not request["medicationCodeableConcept"]["coding"][0]["code"].startswith("J01C")


def test_vital_signs_use_loinc_and_ucum(resources: list[Resource]) -> None:
    units = {
        "29463-7": "kg",
        "8302-2": "cm",
        "39156-5": "kg/m2",
        "8867-4": "/min",
        "4548-4": "%",
        "1558-6": "mg/dL",
    }
    seen = set()
    for observation in of_type(resources, "Observation"):
        code = observation["code"]["coding"][0]
        assert code["system"] == LOINC
        seen.add(code["code"])
        category = observation["category"][0]["coding"][0]
        assert category["system"] == "http://terminology.hl7.org/CodeSystem/observation-category"
        if code["code"] == "85354-9":
            assert "valueQuantity" not in observation
            parts = {c["code"]["coding"][0]["code"]: c["valueQuantity"] for c in observation["component"]}
            assert set(parts) == {"8480-6", "8462-4"}
            assert all(q["code"] == "mm[Hg]" and q["system"] == UCUM for q in parts.values())
            assert parts["8480-6"]["value"] > parts["8462-4"]["value"]
        else:
            quantity = observation["valueQuantity"]
            assert quantity["system"] == UCUM
            if code["code"] in units:
                assert quantity["code"] == units[code["code"]]
    assert {"29463-7", "8302-2", "85354-9", "4548-4"} <= seen


# --- structural checks -------------------------------------------------------------------------

REQUIRED = {
    "Patient": [],
    "Organization": ["name"],
    "Practitioner": ["name"],
    "PractitionerRole": ["practitioner"],
    "RelatedPerson": ["patient", "relationship"],
    "Observation": ["status", "code", "subject", "effectiveDateTime", "category"],
    "Immunization": ["status", "vaccineCode", "patient", "occurrenceDateTime"],
    "Condition": ["subject", "code", "clinicalStatus", "verificationStatus"],
    "MedicationRequest": ["status", "intent", "medicationCodeableConcept", "subject"],
    "AllergyIntolerance": ["patient", "code", "clinicalStatus", "verificationStatus"],
}
REQUIRED_CODES = {
    ("Observation", "status"): {"registered", "preliminary", "final", "amended"},
    ("Immunization", "status"): {"completed", "entered-in-error", "not-done"},
    ("MedicationRequest", "status"): {"active", "on-hold", "cancelled", "completed", "stopped", "draft"},
    ("MedicationRequest", "intent"): {"proposal", "plan", "order", "original-order"},
    ("AllergyIntolerance", "type"): {"allergy", "intolerance"},
    ("AllergyIntolerance", "criticality"): {"low", "high", "unable-to-assess"},
    ("Patient", "gender"): {"male", "female", "other", "unknown"},
}
CONCEPT_SYSTEMS = {
    ("Condition", "clinicalStatus"): "http://terminology.hl7.org/CodeSystem/condition-clinical",
    ("Condition", "verificationStatus"): "http://terminology.hl7.org/CodeSystem/condition-ver-status",
    (
        "AllergyIntolerance",
        "clinicalStatus",
    ): "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
    ("AllergyIntolerance", "verificationStatus"): (
        "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
    ),
}


def check_codings(node: Any, where: str) -> None:
    """Every Coding has system and code; every Quantity with a code says UCUM."""
    if isinstance(node, dict):
        if "coding" in node:
            for coding in node["coding"]:
                assert coding.get("system") and coding.get("code"), where
        if "value" in node and "unit" in node:
            assert node.get("system") == UCUM and node.get("code"), where
        for key, value in node.items():
            check_codings(value, f"{where}.{key}")
    elif isinstance(node, list):
        for item in node:
            check_codings(item, where)


def test_every_resource_passes_a_light_structural_check(resources: list[Resource]) -> None:
    for resource in resources:
        resource_type = resource["resourceType"]
        where = f"{resource_type}/{resource['id']}"
        for element in REQUIRED[resource_type]:
            assert resource.get(element), f"{where} lacks {element}"
        for (rtype, element), allowed in REQUIRED_CODES.items():
            if rtype == resource_type and element in resource:
                assert resource[element] in allowed, f"{where}.{element}"
        for (rtype, element), system in CONCEPT_SYSTEMS.items():
            if rtype == resource_type:
                assert resource[element]["coding"][0]["system"] == system, f"{where}.{element}"
        for key in ("birthDate", "onsetDateTime", "abatementDateTime", "expirationDate"):
            if key in resource:
                assert DATE.match(resource[key]), f"{where}.{key}"
        for key in ("effectiveDateTime", "occurrenceDateTime", "authoredOn", "recorded", "issued"):
            if key in resource:
                assert DATE_TIME.match(resource[key]), f"{where}.{key}"
                assert dt.date.fromisoformat(resource[key][:10]) <= REFERENCE_DATE
        check_codings(resource, where)
        assert resource["meta"]["tag"][0]["code"] == "demo"


def test_resources_validate_with_the_platform_validator(bundle: Resource, resources: list[Resource]) -> None:
    from sharedcare.fhir import validation

    errors = [
        (resource["resourceType"], resource["id"], issue)
        for resource in resources
        for issue in validation.validate_resource(resource)
        if getattr(issue, "severity", "error") in ("error", "fatal")
    ]
    assert errors == []
    assert [
        i for i in validation.validate_resource(bundle) if getattr(i, "severity", "error") == "error"
    ] == []
