"""Classification of FHIR resources into the access matrix's data categories."""

from __future__ import annotations

import gzip
import json
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sharedcare.access.categories import (
    CATEGORY_SYSTEM,
    DEFAULTS,
    DOCUMENT_TYPES,
    EXPLICIT_CODES,
    LOINC,
    NOT_PATIENT_DATA,
    REFERENCE_DATA,
    SNOMED,
    VACCINATION_TYPES,
    DataCategory,
    category_for_document_type,
    classify,
)
from sharedcare.access.matrix import access_matrix
from sharedcare.fhir.definitions import definitions
from support import shared_data

DOC = Path(__file__).resolve().parents[2] / "docs" / "access-matrix.md"
OBS = "http://terminology.hl7.org/CodeSystem/observation-category"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_CATEGORY = "http://terminology.hl7.org/CodeSystem/consentcategorycodes"


def cc(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def ref(reference: str) -> dict[str, str]:
    return {"reference": reference}


def explicit(code: str) -> list[dict[str, Any]]:
    return [cc(CATEGORY_SYSTEM, code)]


# --- every resource type has a decision ----------------------------------------------------------------


def test_every_r4_resource_type_is_decided() -> None:
    types = definitions().resource_types
    assert len(types) == 146
    assert set(DEFAULTS) | set(NOT_PATIENT_DATA) == types
    assert not set(DEFAULTS) & set(NOT_PATIENT_DATA)
    assert all(reason.strip() for reason in NOT_PATIENT_DATA.values())


def test_every_patient_compartment_type_has_a_category_except_group() -> None:
    compartment = set(definitions().patient_compartment)
    assert compartment - set(DEFAULTS) == {"Group"}
    # R4 leaves out document content (Binary) and a patient's Device: the platform adds both, through
    # Binary.patient and Device.patient (fhir/data/search-parameters-local.json, docs/access-matrix.md).
    assert set(DEFAULTS) - compartment == set()
    assert definitions().patient_compartment["Binary"] == ("patient",)
    assert definitions().patient_compartment["Device"] == ("patient",)


def test_none_is_not_a_grant() -> None:
    assert REFERENCE_DATA.issubset(NOT_PATIENT_DATA)
    assert len(REFERENCE_DATA) < len(NOT_PATIENT_DATA)
    assert {
        "Practitioner",
        "PractitionerRole",
        "Organization",
        "Location",
        "Medication",
        "ValueSet",
    } <= REFERENCE_DATA
    assert not {"Group", "Bundle", "Parameters", "Contract", "Binary"} & REFERENCE_DATA


@pytest.mark.parametrize("rtype", sorted(DEFAULTS))
def test_minimal_resource_of_each_type_gets_its_default(rtype: str) -> None:
    resource: dict[str, Any] = {"resourceType": rtype, "id": "x"}
    if rtype == "Device":
        resource["patient"] = ref("Patient/p")
    assert classify(resource) == DEFAULTS[rtype]


@pytest.mark.parametrize("rtype", sorted(NOT_PATIENT_DATA))
def test_types_that_are_not_patient_data(rtype: str) -> None:
    assert classify({"resourceType": rtype, "id": "x", "subject": ref("Patient/p")}) is None


def test_categories_are_the_matrix_categories() -> None:
    matrix = access_matrix()
    assert {c.value for c in DataCategory} == {c.code for c in matrix.categories}
    assert set(EXPLICIT_CODES) == set(matrix.regulation_categories)
    assert set(DEFAULTS.values()) | set(DOCUMENT_TYPES.values()) <= set(DataCategory)
    assert all(code.replace("-", "").isdigit() for code in DOCUMENT_TYPES)


def test_doc_type_table_equals_defaults() -> None:
    text = DOC.read_text(encoding="utf-8")
    block = text.split("<!-- types:begin -->", 1)[1].split("<!-- types:end -->", 1)[0]
    rows = [line for line in block.strip().splitlines() if line.startswith("|")][2:]
    compartment = definitions().patient_compartment
    table = {}
    for row in rows:
        rtype, category, in_compartment = (c.strip().strip("`") for c in row.strip().strip("|").split("|"))
        table[rtype] = category
        assert in_compartment == ("yes" if rtype in compartment else "no"), rtype
    assert table == {t: c.value for t, c in DEFAULTS.items()}


# --- representative resources ---------------------------------------------------------------------------

CASES: list[tuple[str, dict[str, Any], str | None]] = [
    # identity, traces
    ("patient", {"resourceType": "Patient", "name": [{"family": "Weber"}]}, "identity"),
    ("related person", {"resourceType": "RelatedPerson", "patient": ref("Patient/p")}, "identity"),
    ("audit event", {"resourceType": "AuditEvent", "entity": [{"what": ref("Patient/p")}]}, "access-traces"),
    ("provenance", {"resourceType": "Provenance", "target": [ref("Observation/o")]}, "access-traces"),
    # allergies, history
    ("allergy", {"resourceType": "AllergyIntolerance", "recorder": ref("Practitioner/d")}, "allergies"),
    ("condition", {"resourceType": "Condition", "category": [cc(SNOMED, "439401001")]}, "history"),
    (
        "condition asserted by the patient, recorded by a doctor",
        {"resourceType": "Condition", "asserter": ref("Patient/p"), "recorder": ref("Practitioner/d")},
        "history",
    ),
    ("family history", {"resourceType": "FamilyMemberHistory", "patient": ref("Patient/p")}, "history"),
    # observations
    ("lab observation", {"resourceType": "Observation", "category": [cc(OBS, "laboratory")]}, "lab-results"),
    ("imaging observation", {"resourceType": "Observation", "category": [cc(OBS, "imaging")]}, "imaging"),
    ("vital signs", {"resourceType": "Observation", "category": [cc(OBS, "vital-signs")]}, "care-reports"),
    ("exam", {"resourceType": "Observation", "category": [cc(OBS, "exam")]}, "care-reports"),
    ("survey", {"resourceType": "Observation", "category": [cc(OBS, "survey")]}, "care-assessments"),
    ("activity", {"resourceType": "Observation", "category": [cc(OBS, "activity")]}, "care-assessments"),
    (
        "housing status",
        {
            "resourceType": "Observation",
            "category": [cc(OBS, "social-history")],
            "code": cc(LOINC, "71802-3"),
        },
        "social-environment",
    ),
    (
        "smoking status reported by the patient",
        {
            "resourceType": "Observation",
            "category": [cc(OBS, "social-history")],
            "code": cc(LOINC, "72166-2"),
            "performer": [ref("Patient/p")],
        },
        "history",
    ),
    (
        "HIV status is not social environment",
        {
            "resourceType": "Observation",
            "category": [cc(OBS, "social-history")],
            "code": cc(LOINC, "55277-8"),
        },
        "history",
    ),
    (
        "cause of death",
        {"resourceType": "Observation", "category": [cc(OBS, "exam")], "code": cc(LOINC, "69453-9")},
        "certificates",
    ),
    ("lab section code", {"resourceType": "Observation", "category": [cc(V2_0074, "CH")]}, "lab-results"),
    ("specimen, no category", {"resourceType": "Observation", "specimen": ref("Specimen/s")}, "lab-results"),
    (
        "uncategorised observation",
        {"resourceType": "Observation", "code": cc(LOINC, "8867-4")},
        "care-reports",
    ),
    # diagnostic reports
    ("lab report", {"resourceType": "DiagnosticReport", "category": [cc(V2_0074, "LAB")]}, "lab-results"),
    ("microbiology", {"resourceType": "DiagnosticReport", "category": [cc(V2_0074, "MB")]}, "lab-results"),
    ("radiology", {"resourceType": "DiagnosticReport", "category": [cc(V2_0074, "RAD")]}, "imaging"),
    ("CT", {"resourceType": "DiagnosticReport", "category": [cc(V2_0074, "CT")]}, "imaging"),
    (
        "US Core radiology",
        {"resourceType": "DiagnosticReport", "category": [cc(LOINC, "LP29684-5")]},
        "imaging",
    ),
    ("nursing", {"resourceType": "DiagnosticReport", "category": [cc(V2_0074, "NRS")]}, "care-assessments"),
    ("cardiology", {"resourceType": "DiagnosticReport", "category": [cc(V2_0074, "EC")]}, "care-reports"),
    (
        "death certificate filed as a LAB report (Synthea)",
        {"resourceType": "DiagnosticReport", "category": [cc(V2_0074, "LAB")], "code": cc(LOINC, "69409-1")},
        "certificates",
    ),
    (
        "uncategorised report",
        {"resourceType": "DiagnosticReport", "code": cc(LOINC, "80381-7")},
        "care-reports",
    ),
    ("imaging study", {"resourceType": "ImagingStudy", "subject": ref("Patient/p")}, "imaging"),
    ("specimen", {"resourceType": "Specimen", "subject": ref("Patient/p")}, "lab-results"),
    # documents
    (
        "lab report document",
        {"resourceType": "DocumentReference", "type": cc(LOINC, "11502-2")},
        "lab-results",
    ),
    ("imaging report", {"resourceType": "DocumentReference", "type": cc(LOINC, "18748-4")}, "imaging"),
    (
        "discharge summary",
        {"resourceType": "DocumentReference", "type": cc(LOINC, "18842-5")},
        "care-reports",
    ),
    ("prescription", {"resourceType": "DocumentReference", "type": cc(LOINC, "57833-6")}, "prescriptions"),
    ("dispense", {"resourceType": "DocumentReference", "type": cc(LOINC, "60593-1")}, "dispensations"),
    (
        "immunization history",
        {"resourceType": "DocumentReference", "type": cc(LOINC, "11369-6")},
        "care-reports",
    ),
    ("consult note", {"resourceType": "DocumentReference", "type": cc(LOINC, "11488-4")}, "care-reports"),
    ("patient summary", {"resourceType": "DocumentReference", "type": cc(LOINC, "60591-5")}, "summaries"),
    (
        "death certificate",
        {"resourceType": "DocumentReference", "type": cc(LOINC, "64297-5")},
        "certificates",
    ),
    (
        "organ donation",
        {"resourceType": "DocumentReference", "type": cc(LOINC, "64300-7")},
        "personal-expression",
    ),
    ("unknown type", {"resourceType": "DocumentReference", "type": cc(LOINC, "99999-9")}, "care-reports"),
    (
        "XDS class code only",
        {
            "resourceType": "DocumentReference",
            "type": cc(LOINC, "99999-9"),
            "category": [cc(LOINC, "26436-6")],
        },
        "lab-results",
    ),
    (
        "explicit category wins over the type",
        {
            "resourceType": "DocumentReference",
            "type": cc(LOINC, "11502-2"),
            "category": explicit("prevention"),
        },
        "prevention",
    ),
    (
        "platform codes cannot be chosen",
        {"resourceType": "DocumentReference", "type": cc(LOINC, "11502-2"), "category": explicit("identity")},
        "lab-results",
    ),
    (
        "unknown explicit code is ignored",
        {"resourceType": "DocumentReference", "type": cc(LOINC, "11502-2"), "category": explicit("gossip")},
        "lab-results",
    ),
    (
        "uploaded by the patient",
        {
            "resourceType": "DocumentReference",
            "type": cc(LOINC, "11502-2"),
            "category": explicit("lab-results"),
            "author": [ref("Patient/p")],
        },
        "personal-expression",
    ),
    (
        "uploaded by a parent",
        {"resourceType": "DocumentReference", "author": [ref("https://lu.example/fhir/RelatedPerson/r")]},
        "personal-expression",
    ),
    (
        "co-authored with a professional",
        {
            "resourceType": "DocumentReference",
            "type": cc(LOINC, "11502-2"),
            "author": [ref("Patient/p"), ref("Practitioner/d")],
        },
        "lab-results",
    ),
    ("IPS composition", {"resourceType": "Composition", "type": cc(LOINC, "60591-5")}, "summaries"),
    ("problem list", {"resourceType": "List", "code": cc(LOINC, "11450-4")}, "history"),
    (
        "explicit category on a condition",
        {"resourceType": "Condition", "category": explicit("summaries")},
        "summaries",
    ),
    # holder's authorship
    (
        "patient-recorded allergy",
        {"resourceType": "AllergyIntolerance", "recorder": ref("Patient/p/_history/2")},
        "personal-expression",
    ),
    (
        "patient-recorded condition, typed reference",
        {"resourceType": "Condition", "recorder": {"type": "Patient", "identifier": {"value": "1"}}},
        "personal-expression",
    ),
    (
        "conditional reference",
        {"resourceType": "Condition", "recorder": ref("Patient?identifier=urn:x|1")},
        "personal-expression",
    ),
    (
        "unresolved urn:uuid is not assumed to be the holder",
        {"resourceType": "Condition", "recorder": ref("urn:uuid:0f5c")},
        "history",
    ),
    (
        "questionnaire answered at home",
        {"resourceType": "QuestionnaireResponse", "author": ref("Patient/p")},
        "personal-expression",
    ),
    ("questionnaire at the clinic", {"resourceType": "QuestionnaireResponse"}, "care-assessments"),
    (
        "message from the patient",
        {"resourceType": "Communication", "sender": ref("Patient/p")},
        "personal-expression",
    ),
    (
        "message between professionals",
        {"resourceType": "Communication", "sender": ref("Practitioner/d")},
        "care-reports",
    ),
    # consent
    (
        "privacy consent",
        {"resourceType": "Consent", "scope": cc(CONSENT_SCOPE, "patient-privacy")},
        "holder-choices",
    ),
    (
        "research consent",
        {"resourceType": "Consent", "scope": cc(CONSENT_SCOPE, "research")},
        "holder-choices",
    ),
    (
        "advance directive",
        {"resourceType": "Consent", "scope": cc(CONSENT_SCOPE, "adr")},
        "personal-expression",
    ),
    (
        "do not resuscitate",
        {
            "resourceType": "Consent",
            "scope": cc(CONSENT_SCOPE, "treatment"),
            "category": [cc(CONSENT_CATEGORY, "dnr")],
        },
        "personal-expression",
    ),
    (
        "treatment consent",
        {"resourceType": "Consent", "scope": cc(CONSENT_SCOPE, "treatment")},
        "certificates",
    ),
    (
        "a privacy choice never becomes readable",
        {
            "resourceType": "Consent",
            "scope": cc(CONSENT_SCOPE, "patient-privacy"),
            "category": explicit("summaries"),
            "performer": [ref("Patient/p")],
        },
        "holder-choices",
    ),
    # medication, vaccination, requests
    (
        "immunization",
        {"resourceType": "Immunization", "vaccineCode": cc("http://hl7.org/fhir/sid/cvx", "140")},
        "vaccination",
    ),
    ("forecast", {"resourceType": "ImmunizationRecommendation", "patient": ref("Patient/p")}, "vaccination"),
    ("dispensation", {"resourceType": "MedicationDispense", "subject": ref("Patient/p")}, "dispensations"),
    ("medication request", {"resourceType": "MedicationRequest", "intent": "order"}, "prescriptions"),
    ("medication statement", {"resourceType": "MedicationStatement", "status": "active"}, "prescriptions"),
    (
        "administration record",
        {"resourceType": "MedicationAdministration", "status": "completed"},
        "care-reports",
    ),
    ("lab order", {"resourceType": "ServiceRequest", "category": [cc(SNOMED, "108252007")]}, "prescriptions"),
    ("device request", {"resourceType": "DeviceRequest", "intent": "order"}, "prescriptions"),
    ("care plan", {"resourceType": "CarePlan", "category": [cc(SNOMED, "734163000")]}, "prescriptions"),
    (
        "education plan",
        {"resourceType": "CarePlan", "category": [cc(SNOMED, "409073007")]},
        "health-education",
    ),
    (
        "education session",
        {"resourceType": "Procedure", "category": cc(SNOMED, "409073007")},
        "health-education",
    ),
    (
        "social service",
        {"resourceType": "Procedure", "category": cc(SNOMED, "410606002")},
        "social-environment",
    ),
    ("surgery", {"resourceType": "Procedure", "category": cc(SNOMED, "387713003")}, "care-reports"),
    # devices
    ("implanted device", {"resourceType": "Device", "patient": ref("Patient/p")}, "devices"),
    ("hospital equipment", {"resourceType": "Device", "owner": ref("Organization/o")}, None),
    ("device use", {"resourceType": "DeviceUseStatement", "subject": ref("Patient/p")}, "devices"),
    (
        "DICOM media",
        {"resourceType": "Media", "modality": cc("http://dicom.nema.org/resources/ontology/DCM", "XC")},
        "imaging",
    ),
    (
        "clinical photo",
        {"resourceType": "Media", "type": cc("http://terminology.hl7.org/CodeSystem/media-type", "image")},
        "care-reports",
    ),
    # coverage, care frame, risk
    ("coverage", {"resourceType": "Coverage", "beneficiary": ref("Patient/p")}, "social-coverage"),
    ("claim", {"resourceType": "Claim", "patient": ref("Patient/p")}, "social-coverage"),
    ("explanation of benefit", {"resourceType": "ExplanationOfBenefit"}, "social-coverage"),
    ("encounter", {"resourceType": "Encounter", "class": {"code": "EMER"}}, "care-reports"),
    ("risk assessment", {"resourceType": "RiskAssessment"}, "prevention"),
    # not patient data, malformed input
    ("practitioner", {"resourceType": "Practitioner"}, None),
    ("medication", {"resourceType": "Medication"}, None),
    ("group", {"resourceType": "Group", "member": [{"entity": ref("Patient/p")}]}, None),
    ("binary", {"resourceType": "Binary", "securityContext": ref("DocumentReference/d")}, "care-reports"),
    (
        "binary of a lab report",
        {"resourceType": "Binary", "meta": {"tag": [{"system": CATEGORY_SYSTEM, "code": "lab-results"}]}},
        "lab-results",
    ),
    ("unknown resource type", {"resourceType": "Gossip"}, None),
    ("no type", {"id": "x"}, None),
    ("type not a string", {"resourceType": ["Patient"]}, None),
    ("malformed category", {"resourceType": "Observation", "category": "laboratory"}, "care-reports"),
    (
        "malformed codings",
        {"resourceType": "Observation", "category": [{"coding": [["laboratory"]]}]},
        "care-reports",
    ),
    ("malformed author", {"resourceType": "DocumentReference", "author": ["Patient/p", 3]}, "care-reports"),
]


@pytest.mark.parametrize(("resource", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classify(resource: dict[str, Any], expected: str | None) -> None:
    assert classify(resource) == expected


def test_document_types_for_mhd() -> None:
    assert category_for_document_type("11502-2") == "lab-results"
    assert category_for_document_type("60591-5") == "summaries"
    assert category_for_document_type("99999-9") is None
    assert category_for_document_type("11502-2", system="urn:oid:1.2.3") is None
    # DOMAIN.md §1.3's suggested national document types are all mapped.
    domain = [
        "60591-5",
        "11502-2",
        "18842-5",
        "34105-7",
        "18748-4",
        "57833-6",
        "60593-1",
        "11369-6",
        "11488-4",
    ]
    assert all(category_for_document_type(code) for code in domain)


def test_vaccination_types_are_classified() -> None:
    assert {DEFAULTS[t] for t in VACCINATION_TYPES} == {"vaccination"}  # the CVE's own rows (issue 5)


# --- real data -------------------------------------------------------------------------------------------


def _synthea_resources(bundles: int) -> Iterator[dict[str, Any]]:
    archive = shared_data("synthea-r4-bundles", "synthea-r4-bundles.tar.xz")
    with tarfile.open(archive, "r:xz") as tar:
        read = 0
        for member in tar:
            if not member.isfile() or "Information" in member.name:
                continue
            handle = tar.extractfile(member)
            assert handle is not None
            for entry in json.load(handle)["entry"]:
                yield entry["resource"]
            read += 1
            if read == bundles:
                return


def _observation_category(resource: dict[str, Any]) -> str | None:
    for concept in resource.get("category", []):
        for coding in concept.get("coding", []):
            return str(coding.get("code"))
    return None


def test_synthea_bundles() -> None:
    resources = list(_synthea_resources(bundles=20))
    seen: Counter[tuple[str, str | None]] = Counter()
    started = time.perf_counter()
    results = [classify(r) for r in resources]
    elapsed = time.perf_counter() - started
    for resource, category in zip(resources, results, strict=True):
        rtype = resource["resourceType"]
        seen[(rtype, category)] += 1
        if rtype in NOT_PATIENT_DATA:
            assert category is None, rtype
            continue
        assert category in EXPLICIT_CODES or category in ("identity", "vaccination"), rtype
        code = resource.get("code", {}).get("coding", [{}])[0].get("code")
        if rtype == "Observation":
            expected = {
                "laboratory": "lab-results",
                "vital-signs": "care-reports",
                "survey": "history" if code == "72166-2" else "care-assessments",
            }.get(_observation_category(resource) or "")
            if expected and code != "69453-9":
                assert category == expected, (code, _observation_category(resource))
        elif rtype == "DiagnosticReport":
            assert category == ("certificates" if code == "69409-1" else "lab-results")
    for expected in [
        ("Patient", "identity"),
        ("Condition", "history"),
        ("Immunization", "vaccination"),
        ("Claim", "social-coverage"),
        ("ExplanationOfBenefit", "social-coverage"),
        ("MedicationRequest", "prescriptions"),
        ("CarePlan", "prescriptions"),
        ("Encounter", "care-reports"),
        ("Procedure", "care-reports"),
        ("Observation", "lab-results"),
        ("Organization", None),
        ("Practitioner", None),
    ]:
        assert seen[expected] > 0, expected
    # Write-path budget: plain dict lookups, a few microseconds each (generous bound for busy machines).
    assert elapsed / len(resources) < 100e-6, f"{elapsed / len(resources) * 1e6:.1f} µs per resource"


def test_synthea_bulk_notes_and_devices() -> None:
    folder = shared_data("synthea-bulk-ndjson", "10-patients")
    with gzip.open(folder / "DocumentReference.000.ndjson.gz", "rt", encoding="utf-8") as lines:
        notes = [classify(json.loads(line)) for line in lines]
    assert notes and set(notes) == {"care-reports"}
    with gzip.open(folder / "Device.000.ndjson.gz", "rt", encoding="utf-8") as lines:
        devices = [classify(json.loads(line)) for line in lines]
    assert devices and set(devices) == {"devices"}


def _ips_resources() -> Iterator[tuple[str, dict[str, Any]]]:
    root = shared_data("ips-examples")
    for path in sorted(root.rglob("*.json")):
        entries = list(json.loads(path.read_text(encoding="utf-8")).get("entry", []))
        for entry in entries:
            resource = entry.get("resource", {})
            if resource.get("resourceType") == "Bundle":  # searchset wrapping a document
                entries.extend(resource.get("entry", []))
            else:
                yield path.name, resource


def test_ips_examples() -> None:
    seen: Counter[tuple[str, str | None]] = Counter()
    for name, resource in _ips_resources():
        category = classify(resource)
        rtype = resource.get("resourceType")
        seen[(rtype, category)] += 1
        if rtype in NOT_PATIENT_DATA:
            assert category is None, (name, rtype)
        elif rtype != "Device":
            assert category is not None, (name, rtype)
        if rtype == "Observation":
            codes = {c.get("code") for c in resource.get("code", {}).get("coding", [])}
            if codes & {"72166-2", "74013-4"}:  # smoking, alcohol: history, even with performer: Patient
                assert category == "history", name
        if rtype == "Composition" and name.startswith("Bundle-"):
            assert category == "summaries", name
    assert seen[("Composition", "summaries")] >= 60
    assert seen[("Consent", "personal-expression")] >= 2  # advance directives, DNR
    assert seen[("AllergyIntolerance", "allergies")] > 0
    assert seen[("Immunization", "vaccination")] > 0
    assert seen[("MedicationStatement", "prescriptions")] > 0
    assert seen[("Device", "devices")] > 0
    assert seen[("Observation", "lab-results")] > 0
