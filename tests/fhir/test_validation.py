"""Write-path validation: exact issues for each rule, and acceptance of real-world data."""

from __future__ import annotations

import copy
import gzip
import json
import os
import re
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sharedcare.fhir.validation import ValidationIssue, known_resource_types, validate_resource

SHARED_DATA = Path(
    os.environ.get("SHAREDCARE_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data")
)


def found(resource: Any) -> list[tuple[str, str]]:
    """(expression, code) of every issue, sorted: what the tests pin down exactly."""
    return sorted((i.expression, i.code) for i in validate_resource(resource))


PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p-1.a",
    "meta": {"lastUpdated": "2024-05-01T10:00:00.123+02:00", "profile": ["http://example.org/p"]},
    "extension": [
        {
            "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
            "extension": [{"url": "text", "valueString": "White"}],
        }
    ],
    "identifier": [{"system": "urn:oid:1.2.3", "value": "123"}],
    "active": True,
    "name": [{"use": "official", "family": "van\u00a0Dijk", "given": ["Anna", "B."]}],
    "gender": "female",
    "birthDate": "2020-02-29",
    "multipleBirthInteger": 2,
    "address": [{"line": ["Main St 1"], "city": "Luxembourg"}],
    "contact": [{"relationship": [{"text": "mother"}], "name": {"family": "Dijk"}, "gender": "female"}],
}

OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "category": [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "vital-signs",
                }
            ]
        }
    ],
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
    "subject": {"reference": "Patient/p-1.a"},
    "effectiveDateTime": "2020-01-01T10:00:00Z",
    "valueQuantity": {"value": 72.5, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    "component": [{"code": {"text": "x"}, "valueInteger": 3}],
}


def patient(**changes: Any) -> dict[str, Any]:
    res = copy.deepcopy(PATIENT)
    res.update(changes)
    return res


def observation(**changes: Any) -> dict[str, Any]:
    res = copy.deepcopy(OBSERVATION)
    res.update(changes)
    return res


def without(res: dict[str, Any], *keys: str) -> dict[str, Any]:
    res = copy.deepcopy(res)
    for key in keys:
        del res[key]
    return res


# --------------------------------------------------------------------------------------------
# Valid input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "resource",
    [
        PATIENT,
        OBSERVATION,
        {"resourceType": "Basic", "code": {"text": "x"}},
        # status present only as an extension still satisfies min=1
        without(observation(_status={"extension": [{"url": "http://e", "valueCode": "x"}]}), "status"),
        # null placeholders aligning a primitive array with its extensions
        patient(
            name=[
                {
                    "given": [None, "B"],
                    "_given": [{"extension": [{"url": "http://e", "valueString": "x"}]}, None],
                }
            ]
        ),
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"fullUrl": "urn:uuid:1", "resource": OBSERVATION, "request": {"method": "POST", "url": "X"}}
            ],
        },
        patient(contained=[copy.deepcopy(OBSERVATION)]),
        {
            "resourceType": "Condition",
            "subject": {"reference": "Patient/1"},
            "clinicalStatus": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
                ]
            },
        },
        # Expression.language is an *extensible* binding: codes outside the list are legal
        patient(
            extension=[
                {"url": "http://e", "valueExpression": {"language": "text/x-local", "expression": "1"}}
            ]
        ),
        {
            "resourceType": "Questionnaire",
            "status": "draft",
            "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string"}]}],
        },
        {
            "resourceType": "DocumentReference",
            "status": "current",
            "content": [{"attachment": {"contentType": "text/plain", "data": "aGVs\nbG8="}}],
        },
        patient(text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}),
        patient(id="a" * 64),
    ],
    ids=lambda r: r["resourceType"],
)
def test_valid_resources_have_no_issues(resource: dict[str, Any]) -> None:
    assert validate_resource(resource) == []


def test_known_resource_types_are_the_146_r4_types() -> None:
    types = known_resource_types()
    assert len(types) == 146
    assert {"Patient", "Observation", "Bundle", "MedicinalProduct", "EffectEvidenceSynthesis"} <= types
    assert "SubscriptionStatus" not in types  # R4B/R5 only
    assert "Project" not in types  # the npm package's own type, removed from the vendored schema


def test_issue_is_frozen_and_carries_all_fields() -> None:
    [issue] = validate_resource(patient(gender="mal"))
    assert isinstance(issue, ValidationIssue)
    assert (issue.severity, issue.code, issue.expression) == ("error", "code-invalid", "Patient.gender")
    assert "'mal'" in issue.diagnostics and "administrative-gender" in issue.diagnostics
    with pytest.raises(AttributeError):
        issue.code = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# One rule at a time: the exact (expression, code) of every issue
# --------------------------------------------------------------------------------------------

CASES: list[tuple[str, Any, list[tuple[str, str]]]] = [
    # data types
    ("string-for-boolean", patient(active="true"), [("Patient.active", "structure")]),
    (
        "object-for-string",
        patient(name=[{"family": {"text": "x"}}]),
        [("Patient.name[0].family", "structure")],
    ),
    (
        "number-in-string-array",
        patient(name=[{"given": ["A", 3]}]),
        [("Patient.name[0].given[1]", "structure")],
    ),
    ("boolean-for-string", patient(name=[{"family": True}]), [("Patient.name[0].family", "structure")]),
    ("string-for-object", observation(code="8867-4"), [("Observation.code", "structure")]),
    (
        "string-for-decimal",
        observation(valueQuantity={"value": "72"}),
        [("Observation.value.ofType(Quantity).value", "structure")],
    ),
    (
        "float-for-integer",
        patient(multipleBirthInteger=1.5),
        [("Patient.multipleBirth.ofType(integer)", "structure")],
    ),
    (
        "integer-out-of-range",
        patient(multipleBirthInteger=2**31),
        [("Patient.multipleBirth.ofType(integer)", "value")],
    ),
    (
        "positiveInt-zero",
        {
            "resourceType": "Immunization",
            "status": "completed",
            "vaccineCode": {"text": "x"},
            "patient": {"reference": "Patient/1"},
            "occurrenceString": "childhood",
            "protocolApplied": [{"doseNumberPositiveInt": 0}],
        },
        [("Immunization.protocolApplied[0].doseNumber.ofType(positiveInt)", "value")],
    ),
    (
        "nan-decimal",
        observation(valueQuantity={"value": float("nan")}),
        [("Observation.value.ofType(Quantity).value", "value")],
    ),
    # cardinality
    ("missing-status", without(OBSERVATION, "status"), [("Observation.status", "required")]),
    ("missing-code", without(OBSERVATION, "code"), [("Observation.code", "required")]),
    (
        "missing-status-and-code",
        without(OBSERVATION, "status", "code"),
        [
            ("Observation.code", "required"),
            ("Observation.status", "required"),
        ],
    ),
    (
        "missing-in-datatype",
        patient(extension=[{"valueString": "x"}]),
        [("Patient.extension[0].url", "required")],
    ),
    ("array-where-max-1", patient(gender=["female"]), [("Patient.gender", "structure")]),
    ("single-where-array", patient(name={"family": "x"}), [("Patient.name", "structure")]),
    ("empty-array", patient(name=[]), [("Patient.name", "structure")]),
    ("empty-object", patient(maritalStatus={}), [("Patient.maritalStatus", "structure")]),
    # primitive formats
    ("bad-date", patient(birthDate="2020-13-45"), [("Patient.birthDate", "value")]),
    ("not-a-calendar-date", patient(birthDate="2021-02-29"), [("Patient.birthDate", "value")]),
    (
        "dateTime-without-zone",
        observation(effectiveDateTime="2020-01-01T10:00:00"),
        [("Observation.effective.ofType(dateTime)", "value")],
    ),
    ("bad-id", patient(id="bad id!"), [("Patient.id", "value")]),
    ("id-too-long", patient(id="a" * 65), [("Patient.id", "value")]),
    ("empty-string", patient(name=[{"family": ""}]), [("Patient.name[0].family", "value")]),
    ("control-character", patient(name=[{"family": "a\x07b"}]), [("Patient.name[0].family", "value")]),
    ("trailing-newline-in-code", patient(gender="female\n"), [("Patient.gender", "code-invalid")]),
    ("bad-uri", patient(identifier=[{"system": "has space"}]), [("Patient.identifier[0].system", "value")]),
    (
        "bad-base64",
        {
            "resourceType": "DocumentReference",
            "status": "current",
            "content": [{"attachment": {"data": "###"}}],
        },
        [("DocumentReference.content[0].attachment.data", "value")],
    ),
    (
        "narrative-not-xhtml",
        patient(text={"status": "generated", "div": "plain"}),
        [("Patient.text.div", "value")],
    ),
    # required bindings
    ("gender-mal", patient(gender="mal"), [("Patient.gender", "code-invalid")]),
    ("status-done", observation(status="done"), [("Observation.status", "code-invalid")]),
    ("code-not-a-string", observation(status=1), [("Observation.status", "structure")]),
    (
        "codeableconcept-binding",
        {
            "resourceType": "Condition",
            "subject": {"reference": "Patient/1"},
            "clinicalStatus": {
                "coding": [{"system": "http://hl7.org/fhir/ValueSet/condition-clinical", "code": "active"}]
            },
        },
        [("Condition.clinicalStatus", "code-invalid")],
    ),
    # unknown elements and resource types
    ("unknown-element", patient(foo=1), [("Patient.foo", "structure")]),
    (
        "unknown-nested",
        patient(name=[{"family": "x", "suffixes": ["Jr"]}]),
        [("Patient.name[0].suffixes", "structure")],
    ),
    ("unknown-underscore", patient(_foo={}), [("Patient._foo", "structure")]),
    (
        "modifierExtension-on-plain-element",
        {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {"text": "x"},
            "subject": {"reference": "Patient/1"},
            "dosageInstruction": [
                {
                    "timing": {
                        "repeat": {
                            "frequency": 1,
                            "modifierExtension": [{"url": "http://e", "valueString": "x"}],
                        }
                    }
                }
            ],
        },
        [("MedicationRequest.dosageInstruction[0].timing.repeat.modifierExtension", "structure")],
    ),
    (
        "vendor-only-property",
        observation(subject={"reference": "Patient/1", "resource": {}}),
        [("Observation.subject.resource", "structure")],
    ),
    (
        "resourceType-as-ordinary-element",
        {
            "resourceType": "ExampleScenario",
            "status": "draft",
            "instance": [{"resourceId": "a", "resourceType": "X"}],
        },
        [("ExampleScenario.instance[0].resourceType", "code-invalid")],
    ),
    ("unknown-resourceType", {"resourceType": "Foo", "id": "1"}, [("Resource", "not-supported")]),
    ("missing-resourceType", {"id": "1"}, [("Resource", "required")]),
    ("resourceType-not-string", {"resourceType": ["Patient"]}, [("Resource", "structure")]),
    ("not-an-object", ["Patient"], [("Resource", "structure")]),
    # choice types
    ("choice-unknown-type", observation(valueFoo=1), [("Observation.valueFoo", "structure")]),
    ("choice-two-types", observation(valueString="x"), [("Observation.value", "structure")]),
    (
        "choice-in-extension",
        patient(extension=[{"url": "http://e", "valueString": "a", "valueBoolean": True}]),
        [("Patient.extension[0].value", "structure")],
    ),
    (
        "choice-wrong-shape",
        observation(valueQuantity=[{"value": 1}]),
        [("Observation.value.ofType(Quantity)", "structure")],
    ),
    # primitive extensions ('_x') and null alignment
    (
        "primitive-extension-checked",
        patient(_birthDate={"extension": [{"valueCode": "x"}]}),
        [("Patient.birthDate.extension[0].url", "required")],
    ),
    ("primitive-extension-not-object", patient(_birthDate="x"), [("Patient.birthDate", "structure")]),
    (
        "null-without-extension",
        patient(name=[{"given": ["A", None]}]),
        [("Patient.name[0].given[1]", "structure")],
    ),
    (
        "null-pair",
        patient(name=[{"given": [None], "_given": [None]}]),
        [("Patient.name[0].given[0]", "structure")],
    ),
    (
        "misaligned-arrays",
        patient(name=[{"given": ["A", "B"], "_given": [None]}]),
        [("Patient.name[0].given", "structure")],
    ),
    # contained resources
    (
        "contained-invalid",
        patient(contained=[without(observation(status="done", foo=1), "code")]),
        [
            ("Patient.contained[0].code", "required"),
            ("Patient.contained[0].foo", "structure"),
            ("Patient.contained[0].status", "code-invalid"),
        ],
    ),
    (
        "contained-unknown-type",
        patient(contained=[{"resourceType": "Nope"}]),
        [("Patient.contained[0]", "not-supported")],
    ),
    ("contained-not-object", patient(contained=["x"]), [("Patient.contained[0]", "structure")]),
    # nested backbone elements (including contentReference recursion)
    (
        "backbone",
        patient(contact=[{"gender": "mal", "foo": 1}]),
        [
            ("Patient.contact[0].foo", "structure"),
            ("Patient.contact[0].gender", "code-invalid"),
        ],
    ),
    (
        "bundle-entry",
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"resource": OBSERVATION, "request": {"method": "POST", "url": "Observation"}},
                {
                    "resource": without(OBSERVATION, "status"),
                    "request": {"method": "FETCH", "url": "Observation"},
                },
            ],
        },
        [
            ("Bundle.entry[1].request.method", "code-invalid"),
            ("Bundle.entry[1].resource.status", "required"),
        ],
    ),
    (
        "content-reference",
        {
            "resourceType": "Questionnaire",
            "status": "draft",
            "item": [
                {"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "text", "item": [{}]}]}
            ],
        },
        [("Questionnaire.item[0].item[0].item[0]", "structure")],
    ),
    (
        "content-reference-required",
        {
            "resourceType": "Questionnaire",
            "status": "draft",
            "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "1.1"}]}],
        },
        [("Questionnaire.item[0].item[0].type", "required")],
    ),
    # several problems at once are all reported
    (
        "many",
        {
            "resourceType": "Observation",
            "id": "x y",
            "status": "done",
            "valueQuantity": {"value": "1"},
            "valueString": "s",
            "subject": [{"reference": "Patient/1"}],
            "foo": True,
        },
        [
            ("Observation.code", "required"),
            ("Observation.foo", "structure"),
            ("Observation.id", "value"),
            ("Observation.status", "code-invalid"),
            ("Observation.subject", "structure"),
            ("Observation.value", "structure"),
            ("Observation.value.ofType(Quantity).value", "structure"),
        ],
    ),
]


@pytest.mark.parametrize(("resource", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_exact_issues(resource: Any, expected: list[tuple[str, str]]) -> None:
    assert found(resource) == sorted(expected)


@pytest.mark.parametrize(
    "resource",
    [
        None,
        1,
        "Patient",
        [],
        {},
        {"resourceType": None},
        {"resourceType": "Patient", 1: 2},
        {"resourceType": {}},
    ],
)
def test_never_raises_on_garbage(resource: Any) -> None:
    issues = validate_resource(resource)
    assert issues and all(i.severity == "error" for i in issues)


def test_deep_nesting_is_reported_not_raised() -> None:
    ext: dict[str, Any] = {"url": "http://e", "valueString": "leaf"}
    for _ in range(5000):
        ext = {"url": "http://e", "extension": [ext]}
    issues = validate_resource({"resourceType": "Basic", "code": {"text": "x"}, "extension": [ext]})
    assert [(i.code, i.expression) for i in issues] == [("structure", "Basic")]


def test_diagnostics_name_the_element_and_value() -> None:
    by_expr = {i.expression: i.diagnostics for i in validate_resource(observation(status="done", foo=1))}
    assert "observation-status" in by_expr["Observation.status"]
    assert "'done'" in by_expr["Observation.status"]
    assert "Unknown element 'foo'" in by_expr["Observation.foo"]


# --------------------------------------------------------------------------------------------
# Real data: every Synthea and IPS resource must pass, except documented spec violations
# --------------------------------------------------------------------------------------------


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"shared data not available at {path} (set SHAREDCARE_SHARED_DATA)")
    return path


def _summary(issues: list[ValidationIssue]) -> str:
    return "\n".join(f"{i.code} {i.expression}: {i.diagnostics}" for i in issues[:20])


def test_synthea_transaction_bundles_are_valid() -> None:
    archive = _shared("synthea-r4-bundles/synthea-r4-bundles.tar.xz")
    bundles = resources = 0
    with tarfile.open(archive, "r:xz") as tar:
        for member in tar:
            fh = tar.extractfile(member) if member.isfile() else None
            if fh is None:
                continue
            bundle = json.load(fh)
            issues = validate_resource(bundle)
            assert not issues, f"{member.name}:\n{_summary(issues)}"
            bundles += 1
            resources += len(bundle["entry"])
    assert bundles > 0
    print(f"\nSynthea: {bundles} bundles, {resources} resources, no issues")


def _ndjson_resources() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(_shared("synthea-bulk-ndjson").rglob("*.ndjson.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    yield f"{path.parent.name}/{path.name}:{number}", json.loads(line)


def test_synthea_bulk_ndjson_resources_are_valid() -> None:
    count = 0
    for where, resource in _ndjson_resources():
        issues = validate_resource(resource)
        assert not issues, f"{where}:\n{_summary(issues)}"
        count += 1
    assert count > 0
    print(f"\nbulk ndjson: {count} resources, no issues")


# Connectathon samples that really violate FHIR R4 (checked by hand against the spec). The
# validator must keep flagging exactly these (code, expression with indexes elided) pairs.
IPS_KNOWN_INVALID: dict[str, tuple[str, set[tuple[str, str]]]] = {
    "connectathon-samples/connectathon_May2025/hl7_connectathon_may_2025_epic_example2.json": (
        "Medication.id values of 109 characters: id is limited to 64",
        {("value", "Bundle.entry[*].resource.id")},
    ),
    "connectathon-samples/connectathon_Sept2024/US_Epic_Connectathon_Sept.json": (
        "Medication.id values longer than 64 characters",
        {("value", "Bundle.entry[*].resource.id")},
    ),
    "connectathon-samples/connectathon_Sept2024/CA_DAVE_DEBRONKART_VERTO.json": (
        "reaction.severity 'low'/'high': the required value set is mild | moderate | severe",
        {("code-invalid", "Bundle.entry[*].resource.reaction[*].severity")},
    ),
    "connectathon-samples/connectathon_Sept2024/CA_VeroSource_buddy_bear.json": (
        "meta.versionId like '1313.2022-12-16T18:10:14Z' (':' is not allowed in id); "
        "contained ServiceRequest without the mandatory subject",
        {
            ("required", "Bundle.entry[*].resource.contained[*].subject"),
            ("value", "Bundle.entry[*].resource.meta.versionId"),
        },
    ),
    "connectathon-samples/connectathon_Sept2024/EU_IPS_wylem_bars.json": (
        "Composition section narrative with status but no div (Narrative.div is 1..1)",
        {("required", "Bundle.entry[*].resource.section[*].text.div")},
    ),
    "connectathon-samples/connectathon_archive/HK_IPS_Sample_with_medication.json": (
        "periodUnit 'week' (units-of-time requires 'wk'); doseAndRate.rate instead of rate[x]",
        {
            ("code-invalid", "Bundle.entry[*].resource.dosage[*].timing.repeat.periodUnit"),
            ("structure", "Bundle.entry[*].resource.dosage[*].doseAndRate[*].rate"),
        },
    ),
    "connectathon-samples/connectathon_archive/NL_Drimpy_01.json": (
        "STU3-shaped content: clinicalStatus as code, Observation.context/comment/related, "
        "MedicationRequest.requester.agent, Immunization.notGiven/date/practitioner ...",
        {
            ("required", "Bundle.entry[*].resource.occurrence"),
            ("required", "Bundle.entry[*].resource.status"),
            ("structure", "Bundle.entry[*].resource._clinicalStatus"),
            ("structure", "Bundle.entry[*].resource._verificationStatus"),
            ("structure", "Bundle.entry[*].resource.author"),
            ("structure", "Bundle.entry[*].resource.category"),
            ("structure", "Bundle.entry[*].resource.clinicalStatus"),
            ("structure", "Bundle.entry[*].resource.comment"),
            ("structure", "Bundle.entry[*].resource.context"),
            ("structure", "Bundle.entry[*].resource.date"),
            ("structure", "Bundle.entry[*].resource.dosageInstruction[*].doseQuantity"),
            ("structure", "Bundle.entry[*].resource.interpretation"),
            ("structure", "Bundle.entry[*].resource.notGiven"),
            ("structure", "Bundle.entry[*].resource.practitioner"),
            ("structure", "Bundle.entry[*].resource.related"),
            ("structure", "Bundle.entry[*].resource.requester.agent"),
            ("structure", "Bundle.entry[*].resource.type.coding[*]"),
            ("structure", "Bundle.entry[*].resource.verificationStatus"),
        },
    ),
    **{
        f"connectathon-samples/connectathon_archive/US_Interoperability_Institute_{name}-IPS.json": (
            "Condition status codings use the ValueSet URL as system instead of "
            "http://terminology.hl7.org/CodeSystem/condition-clinical (-ver-status)",
            {
                ("code-invalid", "Bundle.entry[*].resource.clinicalStatus"),
                ("code-invalid", "Bundle.entry[*].resource.verificationStatus"),
            },
        )
        for name in ("Louis_Daniel_Saunders", "Pearl_Holmes_Levine", "Rose_Cox_Burnett", "Troy_Dudley_Gross")
    },
}


def _ips_files() -> list[str]:
    root = SHARED_DATA / "ips-examples"
    if not root.is_dir():
        return ["<missing>"]
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.json"))


@pytest.mark.parametrize("relative", _ips_files())
def test_ips_example_bundles(relative: str) -> None:
    root = _shared("ips-examples")
    bundle = json.loads((root / relative).read_text(encoding="utf-8"))
    issues = validate_resource(bundle)
    known = IPS_KNOWN_INVALID.get(relative)
    if known is None:
        assert not issues, f"{relative}:\n{_summary(issues)}"
    else:
        signature = {(i.code, re.sub(r"\[\d+\]", "[*]", i.expression)) for i in issues}
        assert signature == known[1], f"{relative} ({known[0]}):\n{_summary(issues)}"


def test_known_invalid_list_matches_files() -> None:
    files = set(_ips_files())
    if files == {"<missing>"}:
        pytest.skip("shared data not available")
    assert set(IPS_KNOWN_INVALID) <= files


def test_timing_report() -> None:
    """Prints the validation cost on real data (run with -s); never asserts on time."""
    resources = [r for _, r in _ndjson_resources()]
    validate_resource({"resourceType": "Basic"})  # table build is not part of the per-resource cost
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for resource in resources:
            validate_resource(resource)
        best = min(best, time.perf_counter() - start)
    per_resource = best / len(resources) * 1e6
    print(f"\nvalidate_resource: {per_resource:.1f} us/resource over {len(resources)} ndjson resources")
