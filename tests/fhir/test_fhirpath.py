"""Compiled FHIRPath extractors: exact behaviour of each native construct, and equivalence with
fhirpathpy over every R4 SearchParameter on real data (Synthea, Synthea bulk NDJSON, IPS)."""

from __future__ import annotations

import gzip
import json
import os
import tarfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sharedcare.fhir import fhirpath
from sharedcare.fhir.fhirpath import (
    Typed,
    compile_expression,
    fallback_extractor,
    is_fast,
    reference_target_type,
)

SHARED_DATA = Path(
    os.environ.get(
        "SHAREDCARE_SHARED_DATA", str(Path(__file__).resolve().parents[2].parent / "shared" / "data")
    )
)
SEARCH_PARAMETERS = Path(fhirpath.__file__).resolve().parent / "data" / "search-parameters.json.gz"
NOT_DOMAIN_RESOURCES = frozenset({"Bundle", "Binary", "Parameters"})
# (SearchParameter id, resource type) pairs that are knowingly left to fhirpathpy.
EXPECTED_FALLBACK = {("Patient-deceased", "Patient")}
# Type names fhirpathpy reports differently for the same element: R4 snapshots type Resource.id
# as System.String (the spec says id), and fhirpathpy ignores the SimpleQuantity profile.
TYPE_ALIASES = {("id", "string"), ("SimpleQuantity", "Quantity")}
PER_SOURCE_TYPE_CAP = 150  # resources of one type per data source, to keep the test near 30 s


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


@cache
def _search_parameters() -> list[tuple[str, str, tuple[str, ...]]]:
    with gzip.open(SEARCH_PARAMETERS, "rt", encoding="utf-8") as fh:
        bundle = json.load(fh)
    out = []
    for entry in bundle["entry"]:
        sp = entry["resource"]
        if sp.get("expression"):
            out.append((sp["id"], sp["expression"], tuple(sp["base"])))
    return out


@cache
def _params_for(resource_type: str) -> list[tuple[str, str]]:
    out = []
    for sp_id, expression, bases in _search_parameters():
        if (
            resource_type in bases
            or "Resource" in bases
            or ("DomainResource" in bases and resource_type not in NOT_DOMAIN_RESOURCES)
        ):
            out.append((sp_id, expression))
    return out


def _comparable(items: list[Typed], union: bool) -> list[Any]:
    """Native values as fhirpathpy reports them.

    fhirpathpy drops complex elements that carry nothing but ``extension`` (e.g. a
    data-absent-reason Reference), and the fallback evaluates a view without ``_element``
    primitive extensions (fhirpathpy splits such a primitive into two items), so values that
    differed only there become duplicates that a union removes.
    """
    out = []
    seen = set()
    for item in items:
        v = item.value
        if type(v) is dict and list(v) == ["extension"]:
            continue
        v = fhirpath._without_primitive_extensions(v)
        if union:
            key = json.dumps(v, sort_keys=True) if type(v) is dict else (type(v), v)
            if key in seen:
                continue
            seen.add(key)
        out.append(v)
    return out


def _mismatch(resource: dict[str, Any], sp_id: str, expression: str) -> str | None:
    rt = resource["resourceType"]
    fast = compile_expression(expression, rt)(resource)
    slow = fallback_extractor(expression, rt)(resource)
    if _comparable(fast, "|" in expression) != [s.value for s in slow]:
        return f"{sp_id} on {rt}/{resource.get('id')}: native {fast!r} != fhirpathpy {slow!r}"
    for f, s in zip(fast, slow, strict=False):
        if f.type is None:
            return f"{sp_id} on {rt}/{resource.get('id')}: native value without type {f!r}"
        if s.type is not None and f.type != s.type and (f.type, s.type) not in TYPE_ALIASES:
            return f"{sp_id} on {rt}/{resource.get('id')}: type {f.type} != fhirpathpy {s.type}"
    return None


def _with_entries(bundle: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield bundle
    for entry in bundle.get("entry", ()):
        resource = entry.get("resource")
        if isinstance(resource, dict) and "resourceType" in resource:
            yield resource


def _capped(resources: Iterator[dict[str, Any]], counts: dict[str, int]) -> Iterator[dict[str, Any]]:
    for resource in resources:
        rt = resource["resourceType"]
        if counts.get(rt, 0) < PER_SOURCE_TYPE_CAP:
            counts[rt] = counts.get(rt, 0) + 1
            yield resource


def _synthea(limit: int = 5) -> Iterator[dict[str, Any]]:
    path = SHARED_DATA / "synthea-r4-bundles" / "synthea-r4-bundles.tar.xz"
    counts: dict[str, int] = {}
    with tarfile.open(path, "r:xz") as tar:
        taken = 0
        for member in tar:
            if not member.isfile() or not member.name.endswith(".json") or "Information" in member.name:
                continue
            fh = tar.extractfile(member)
            assert fh is not None
            yield from _capped(_with_entries(json.load(fh)), counts)
            taken += 1
            if taken >= limit:
                return


def _ndjson() -> Iterator[dict[str, Any]]:
    for path in sorted((SHARED_DATA / "synthea-bulk-ndjson" / "10-patients").glob("*.ndjson.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if i >= PER_SOURCE_TYPE_CAP:
                    break
                if line.strip():
                    yield json.loads(line)


def _ips() -> Iterator[dict[str, Any]]:
    counts: dict[str, int] = {}
    for path in sorted((SHARED_DATA / "ips-examples").rglob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
            yield from _capped(_with_entries(doc), counts)


@pytest.fixture(scope="module")
def real_resources() -> list[dict[str, Any]]:
    needed = [
        SHARED_DATA / "synthea-r4-bundles" / "synthea-r4-bundles.tar.xz",
        SHARED_DATA / "synthea-bulk-ndjson" / "10-patients",
        SHARED_DATA / "ips-examples",
    ]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        pytest.skip(f"shared test data not found (set SHAREDCARE_SHARED_DATA): {', '.join(missing)}")
    return [*_synthea(), *_ndjson(), *_ips()]


# --------------------------------------------------------------------------------------------------
# coverage of the R4 definitions and equivalence on real data
# --------------------------------------------------------------------------------------------------


def _all_pairs() -> Iterator[tuple[str, str, str]]:
    resource_types = sorted(fhirpath._model().resources)
    for sp_id, expression, bases in _search_parameters():
        for base in bases:
            if base == "Resource":
                types = resource_types
            elif base == "DomainResource":
                types = [t for t in resource_types if t not in NOT_DOMAIN_RESOURCES]
            else:
                types = [base]
            for rt in types:
                yield sp_id, expression, rt


def test_all_r4_search_parameters_compile_natively_except_known() -> None:
    pairs = {(sp_id, rt): expression for sp_id, expression, rt in _all_pairs()}
    fallback = {pair for pair, expression in pairs.items() if not is_fast(expression, pair[1])}
    assert fallback == EXPECTED_FALLBACK
    assert len(pairs) > 1000


def test_native_matches_fhirpathpy_on_real_data(real_resources: list[dict[str, Any]]) -> None:
    assert len(real_resources) > 1000
    problems = []
    evaluated = 0
    for resource in real_resources:
        for sp_id, expression in _params_for(resource["resourceType"]):
            evaluated += 1
            problem = _mismatch(resource, sp_id, expression)
            if problem:
                problems.append(problem)
    assert not problems, f"{len(problems)} of {evaluated} differ:\n" + "\n".join(problems[:20])


def test_real_data_exercises_the_native_constructs(real_resources: list[dict[str, Any]]) -> None:
    """Guard against a vacuous equivalence test: the data must hit choice types, where() and |."""
    hits = dict.fromkeys(["choice", "resolve", "where-eq", "union", "of-type"], 0)
    checks = {
        "choice": ("Observation.value", "Observation"),
        "resolve": ("Encounter.subject.where(resolve() is Patient)", "Encounter"),
        "where-eq": ("Patient.telecom.where(system='phone')", "Patient"),
        "union": ("Patient.name.given | Patient.name.family", "Patient"),
        "of-type": ("(MedicationRequest.medication.ofType(CodeableConcept))", "MedicationRequest"),
    }
    for resource in real_resources:
        for key, (expression, rt) in checks.items():
            if resource["resourceType"] == rt and compile_expression(expression, rt)(resource):
                hits[key] += 1
    assert all(hits.values()), hits


# --------------------------------------------------------------------------------------------------
# native constructs, exact values and types
# --------------------------------------------------------------------------------------------------

OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "meta": {"tag": [{"system": "s", "code": "a"}, {"system": "s", "code": "a"}, {"code": "b"}]},
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2020-01-02",
    "valueQuantity": {"value": 1.5, "unit": "kg"},
    "component": [
        {"code": {"text": "a"}, "valueQuantity": {"value": 2}},
        {"code": {"text": "b"}, "valueString": "s"},
        {"code": {"text": "c"}, "valueCodeableConcept": {"text": "cc"}},
    ],
}

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {"tag": [{"code": "t"}, {"code": "t"}]},
    "text": {"status": "generated", "div": "<div>x</div>"},
    "name": [{"family": "Doe", "given": ["Jo", "Ann"]}, {"family": "Doe", "given": ["Jo"]}],
    "telecom": [
        {"system": "phone", "value": "1"},
        {"system": "email", "value": "a@b"},
        {"system": "phone", "_system": {"extension": [{"url": "x", "valueCode": "y"}]}, "value": "2"},
    ],
    "birthDate": "1970-01-01",
}


def _run(expression: str, resource: dict[str, Any], context: str | None = None) -> list[Typed]:
    context = context or resource["resourceType"]
    assert is_fast(expression, context), expression
    return compile_expression(expression, context)(resource)


def _same_as_fallback(expression: str, resource: dict[str, Any]) -> None:
    rt = resource["resourceType"]
    fast = compile_expression(expression, rt)(resource)
    slow = fallback_extractor(expression, rt)(resource)
    assert _comparable(fast, "|" in expression) == [s.value for s in slow]


def test_dotted_path_flattens_arrays() -> None:
    assert _run("Patient.name.given", PATIENT) == [
        Typed("Jo", "string"),
        Typed("Ann", "string"),
        Typed("Jo", "string"),
    ]
    assert _run("Patient.name.family", PATIENT) == [Typed("Doe", "string"), Typed("Doe", "string")]
    assert _run("Patient.birthDate", PATIENT) == [Typed("1970-01-01", "date")]
    assert _run("Patient.gender", PATIENT) == []
    assert _run("Patient.name", PATIENT)[0] == Typed(PATIENT["name"][0], "HumanName")


def test_primitive_extension_only_values_are_skipped() -> None:
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "_birthDate": {"extension": [{"url": "x"}]},
        "name": [{"given": ["A", None], "_given": [None, {"extension": [{"url": "x"}]}]}],
    }
    assert _run("Patient.birthDate", patient) == []
    assert _run("Patient.name.given", patient) == [Typed("A", "string")]
    _same_as_fallback("Patient.name.given", patient)


def test_choice_elements_take_type_from_the_key() -> None:
    assert _run("Observation.value", OBSERVATION) == [Typed({"value": 1.5, "unit": "kg"}, "Quantity")]
    assert _run("Observation.effective", OBSERVATION) == [Typed("2020-01-02", "dateTime")]
    period = {"resourceType": "Observation", "effectivePeriod": {"start": "2020"}}
    assert _run("Observation.effective", period) == [Typed({"start": "2020"}, "Period")]
    # document order is kept across differently typed items
    assert _run("Observation.component.value", OBSERVATION) == [
        Typed({"value": 2}, "Quantity"),
        Typed("s", "string"),
        Typed({"text": "cc"}, "CodeableConcept"),
    ]
    for expression in ("Observation.value", "Observation.effective", "Observation.component.value"):
        _same_as_fallback(expression, OBSERVATION)


def test_of_type_and_as_filter_by_type() -> None:
    quantity = [Typed({"value": 1.5, "unit": "kg"}, "Quantity")]
    assert _run("(Observation.value.ofType(Quantity))", OBSERVATION) == quantity
    assert _run("(Observation.value as Quantity)", OBSERVATION) == quantity
    assert _run("Observation.value.as(Quantity)", OBSERVATION) == quantity
    assert _run("Observation.value.ofType(CodeableConcept)", OBSERVATION) == []
    assert _run("(Observation.component.value.ofType(CodeableConcept)).text", OBSERVATION) == [
        Typed("cc", "string")
    ]
    assert _run("Observation.component.value.ofType(string)", OBSERVATION) == [Typed("s", "string")]
    # 'as' on a multi-item collection is an error in FHIRPath; here it filters like ofType
    assert _run("Observation.component.value as Quantity", OBSERVATION) == [Typed({"value": 2}, "Quantity")]
    # subtypes match: Age is a Quantity
    condition = {"resourceType": "Condition", "onsetAge": {"value": 40, "unit": "a"}}
    assert _run("Condition.onset.ofType(Quantity)", condition) == [Typed({"value": 40, "unit": "a"}, "Age")]
    assert _run("Condition.onset.ofType(dateTime)", condition) == []
    for expression in ("Condition.onset.ofType(Quantity)", "Condition.onset.ofType(Age)"):
        _same_as_fallback(expression, condition)


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ({"reference": "Patient/1"}, "Patient"),
        ({"reference": "http://x/fhir/Patient/1"}, "Patient"),
        ({"reference": "Patient/1/_history/2"}, "Patient"),
        ({"reference": "http://x/fhir/Patient/1/_history/2"}, "Patient"),
        ({"reference": "Patient?identifier=http://x|1"}, "Patient"),
        ({"reference": "Group/1"}, "Group"),
        ({"reference": "urn:uuid:9d8f6c7e-1111-2222-3333-444455556666"}, None),
        ({"reference": "urn:uuid:9d8f6c7e-1111-2222-3333-444455556666", "type": "Patient"}, "Patient"),
        ({"reference": "#c1"}, "Patient"),
        ({"reference": "#c2"}, "Group"),
        ({"reference": "#nope"}, None),
        ({"identifier": {"value": "1"}, "type": "Patient"}, "Patient"),
        ({"display": "someone"}, None),
        ({"reference": "Unknown/1"}, None),
        ({"reference": "Patient/"}, None),
        ("Patient/1", None),
    ],
)
def test_reference_target_type(reference: Any, expected: str | None) -> None:
    root = {
        "resourceType": "Observation",
        "contained": [{"resourceType": "Patient", "id": "c1"}, {"resourceType": "Group", "id": "c2"}],
    }
    assert reference_target_type(reference, root) == expected


def test_where_resolve_is_keeps_references_to_that_type() -> None:
    targets = [
        {"reference": "Patient/1"},
        {"reference": "http://x/fhir/Patient/2/_history/3"},
        {"reference": "Practitioner/1"},
        {"reference": "urn:uuid:0000"},
        {"reference": "#c1"},
        {"reference": "#c2"},
        {"reference": "urn:uuid:0001", "type": "Patient"},
    ]
    person = {
        "resourceType": "Person",
        "contained": [{"resourceType": "Patient", "id": "c1"}, {"resourceType": "RelatedPerson", "id": "c2"}],
        "link": [{"target": t} for t in targets],
    }
    assert _run("Person.link.target.where(resolve() is Patient)", person) == [
        Typed(targets[i], "Reference") for i in (0, 1, 4, 6)
    ]
    assert _run("Person.link.target.where(resolve() is RelatedPerson)", person) == [
        Typed(targets[5], "Reference")
    ]
    assert _run("Person.link.target.where(resolve() is DomainResource)", person) == [
        Typed(targets[i], "Reference") for i in (0, 1, 2, 4, 5, 6)
    ]
    for t in ("Patient", "Practitioner", "RelatedPerson"):
        _same_as_fallback(f"Person.link.target.where(resolve() is {t})", person)


def test_where_child_equality() -> None:
    phones = _run("Patient.telecom.where(system='phone')", PATIENT)
    assert phones == [
        Typed(PATIENT["telecom"][0], "ContactPoint"),
        Typed(PATIENT["telecom"][2], "ContactPoint"),
    ]
    assert _run("Patient.telecom.where(system = 'email').value", PATIENT) == [Typed("a@b", "string")]
    assert _run("Patient.telecom.where('fax' = system)", PATIENT) == []
    _same_as_fallback("Patient.telecom.where(system='phone')", PATIENT)
    library = {
        "resourceType": "Library",
        "relatedArtifact": [
            {"type": "depends-on", "resource": "http://x/Library/a"},
            {"type": "composed-of", "resource": "http://x/Library/b"},
        ],
    }
    assert _run("Library.relatedArtifact.where(type='depends-on').resource", library) == [
        Typed("http://x/Library/a", "canonical")
    ]


def test_union_removes_duplicates_and_single_paths_do_not() -> None:
    assert _run("Patient.meta.tag", PATIENT) == [Typed({"code": "t"}, "Coding")] * 2
    assert _run("Patient.name.given | Patient.name.family", PATIENT) == [
        Typed("Jo", "string"),
        Typed("Ann", "string"),
        Typed("Doe", "string"),
    ]
    # a union keeps its de-duplication when only one of its parts applies to the type
    assert _run("Patient.meta.tag | Observation.meta.tag", PATIENT) == [Typed({"code": "t"}, "Coding")]
    # equal JSON only: "1" and 1 differ
    basic = {"resourceType": "Basic", "identifier": [{"value": "1"}], "code": {"text": "1"}}
    assert len(_run("Basic.identifier.value | Basic.code.text", basic)) == 1
    for expression in (
        "Patient.meta.tag",
        "Patient.name.given | Patient.name.family",
        "Patient.meta.tag | Observation.meta.tag",
        "Patient.name | Patient.name",
    ):
        _same_as_fallback(expression, PATIENT)


def test_resource_and_domain_resource_roots() -> None:
    assert _run("Resource.meta.tag", OBSERVATION) == [
        Typed({"system": "s", "code": "a"}, "Coding"),
        Typed({"system": "s", "code": "a"}, "Coding"),
        Typed({"code": "b"}, "Coding"),
    ]
    assert _run("Resource.id", OBSERVATION) == [Typed("o1", "id")]
    assert _run("Resource.meta.lastUpdated", {"resourceType": "Bundle", "meta": {"lastUpdated": "x"}}) == [
        Typed("x", "instant")
    ]
    assert _run("DomainResource.text", PATIENT) == [Typed(PATIENT["text"], "Narrative")]
    assert compile_expression("DomainResource.text", "Bundle")({"resourceType": "Bundle"}) == []
    # fhirpathpy alone yields nothing for supertype roots; the fallback makes them concrete
    assert [t.value for t in fallback_extractor("Resource.meta.tag", "Observation")(OBSERVATION)] == (
        OBSERVATION["meta"]["tag"]
    )


def test_only_parts_for_the_type_apply() -> None:
    expression = "AllergyIntolerance.patient | CarePlan.subject.where(resolve() is Patient) | Goal.subject"
    care_plan = {"resourceType": "CarePlan", "subject": {"reference": "Patient/1"}}
    assert _run(expression, care_plan) == [Typed({"reference": "Patient/1"}, "Reference")]
    assert compile_expression(expression, "Observation")(OBSERVATION) == []
    assert is_fast(expression, "Observation")
    # unrooted parts are relative to the resource
    plan = {"resourceType": "InsurancePlan", "name": "N", "alias": ["A", "N"]}
    assert _run("name | alias", plan) == [Typed("N", "string"), Typed("A", "string")]


def test_indexing_and_resource_typed_elements() -> None:
    composition = {"resourceType": "Composition", "id": "c"}
    bundle = {
        "resourceType": "Bundle",
        "type": "document",
        "entry": [{"resource": composition}, {"resource": {"resourceType": "Patient"}}],
    }
    assert _run("Bundle.entry[0].resource", bundle) == [Typed(composition, "Composition")]
    assert _run("Bundle.entry[1].resource", bundle) == [Typed({"resourceType": "Patient"}, "Patient")]
    assert _run("Bundle.entry[2].resource", bundle) == []
    assert _run("Observation.component[1].value", OBSERVATION) == [Typed("s", "string")]
    _same_as_fallback("Bundle.entry[0].resource", bundle)


def test_composite_roots_and_element_contexts() -> None:
    got = _run("Observation | Observation.component", OBSERVATION)
    assert got[0] == Typed(OBSERVATION, "Observation")
    assert got[1:] == [Typed(c, "Observation.component") for c in OBSERVATION["component"]]
    component = OBSERVATION["component"][0]
    assert _run("code | value.ofType(Quantity)", component, "Observation.component") == [
        Typed({"text": "a"}, "CodeableConcept"),
        Typed({"value": 2}, "Quantity"),
    ]
    usage = {"code": {"code": "age"}, "valueRange": {"low": {"value": 1}}}
    assert _run("value.ofType(Quantity) | value.ofType(Range)", usage, "UsageContext") == [
        Typed({"low": {"value": 1}}, "Range")
    ]
    # System type names (as in Observation-code-value-date) match the FHIR primitives
    assert _run("value.ofType(DateTime)", {"valueDateTime": "2020"}, "Observation.component") == [
        Typed("2020", "dateTime")
    ]


def test_backbone_and_content_reference_navigation() -> None:
    questionnaire = {
        "resourceType": "Questionnaire",
        "item": [{"linkId": "1", "item": [{"linkId": "1.1", "code": [{"code": "x"}]}]}],
    }
    assert _run("Questionnaire.item.item.code", questionnaire) == [Typed({"code": "x"}, "Coding")]
    repeat = {"boundsPeriod": {"start": "2020"}}
    timing = {"resourceType": "MedicationRequest", "dosageInstruction": [{"timing": {"repeat": repeat}}]}
    assert _run("MedicationRequest.dosageInstruction.timing.repeat.bounds", timing) == [
        Typed({"start": "2020"}, "Period")
    ]


def test_simple_quantity_profile_is_reported() -> None:
    dispense = {"resourceType": "MedicationDispense", "quantity": {"value": 3}}
    assert _run("MedicationDispense.quantity", dispense) == [Typed({"value": 3}, "SimpleQuantity")]


@pytest.mark.parametrize(
    "expression",
    [
        "Patient.deceased.exists() and Patient.deceased != false",
        "Patient.extension('http://x').value",
        "Patient.name.first()",
        "Patient.name.where(given.exists())",
        "Patient.generalPractitioner.resolve()",
        "Patient.name.family + 'x'",
        "%resource.id",
        "Patient.nosuchelement",
    ],
)
def test_other_constructs_use_fhirpathpy(expression: str) -> None:
    assert not is_fast(expression, "Patient")
    compile_expression(expression, "Patient")(PATIENT)  # must not raise


def test_fallback_results_and_types() -> None:
    expression = "Patient.deceased.exists() and Patient.deceased != false"
    extract = compile_expression(expression, "Patient")
    assert extract(PATIENT) == [Typed(False, "boolean")]
    assert extract({"resourceType": "Patient", "deceasedDateTime": "2020"}) == [Typed(True, "boolean")]
    assert extract({"resourceType": "Patient", "deceasedBoolean": False}) == [Typed(False, "boolean")]
    assert fallback_extractor("Patient.name.where(resolve() is Patient)", "Patient")(PATIENT) == []


def test_fallback_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    # 'as' on more than one item is an error in fhirpathpy
    assert fallback_extractor("Patient.name as HumanName", "Patient")(PATIENT) == []
    assert not is_fast("Patient.name.(", "Patient")
    assert isinstance(compile_expression("Patient.name.(", "Patient")(PATIENT), list)
    assert compile_expression("Patient.name.given.toInteger() + 1", "Patient")(PATIENT) == []
    assert compile_expression("Patient.name.where(", "Patient")(PATIENT) == []
    assert any("fhirpath" in r.getMessage() for r in caplog.records)


def test_malformed_data_does_not_raise() -> None:
    broken: dict[str, Any] = {
        "resourceType": "Patient",
        "name": "oops",
        "telecom": [None, "x", {"system": ["phone", "sms"]}],
        "link": [{"other": "Patient/1"}],
    }
    for expression in (
        "Patient.name.family",
        "Patient.telecom.where(system='phone')",
        "Patient.link.other.where(resolve() is Patient)",
        "Patient.name | Patient.telecom",
    ):
        assert isinstance(_run(expression, broken), list)


def test_extractors_are_cached() -> None:
    a = compile_expression("Patient.name.family", "Patient")
    assert compile_expression("Patient.name.family", "Patient") is a
    assert fallback_extractor("Patient.name", "Patient") is fallback_extractor("Patient.name", "Patient")


# --------------------------------------------------------------------------------------------------
# generated resources
# --------------------------------------------------------------------------------------------------

_refs = st.sampled_from(
    [
        {"reference": "Patient/1"},
        {"reference": "Practitioner/2"},
        {"reference": "http://x/fhir/Patient/3/_history/1"},
        {"reference": "urn:uuid:abc"},
        {"reference": "urn:uuid:abd", "type": "Patient"},
        {"reference": "#c"},
        {"reference": "Group/4"},
        {"display": "x"},
    ]
)
_codings = st.sampled_from([{"system": "s", "code": "a"}, {"system": "s", "code": "b"}, {"code": "a"}])
_concepts = st.builds(
    lambda c, t: {"coding": c, **({"text": t} if t else {})}, st.lists(_codings), st.sampled_from(["", "t"])
)
_quantities = st.builds(
    lambda v, u: {"value": v, "unit": u}, st.sampled_from([1, 1.0, 2.5]), st.sampled_from(["kg", "mg"])
)
_dates = st.sampled_from(["2020", "2020-01-02", "2020-01-02T03:04:05Z"])
_choice_values = st.one_of(
    st.builds(lambda q: {"valueQuantity": q}, _quantities),
    st.builds(lambda c: {"valueCodeableConcept": c}, _concepts),
    st.builds(lambda s: {"valueString": s}, st.sampled_from(["a", "b"])),
    st.builds(lambda b: {"valueBoolean": b}, st.booleans()),
    st.builds(lambda d: {"valueDateTime": d}, _dates),
    st.builds(lambda d: {"valuePeriod": {"start": d}}, _dates),
    st.just({}),
)


def _optional(key: str, strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(st.just({}), strategy.map(lambda v: {key: v}))


def _merge(*parts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in parts:
        out.update(p)
    return out


_common = st.tuples(
    _optional("meta", st.builds(lambda t: {"tag": t}, st.lists(_codings, min_size=1))),
    _optional("contained", st.just([{"resourceType": "Patient", "id": "c"}])),
    _optional("id", st.sampled_from(["a", "b"])),
)
_observations = st.builds(
    lambda common, subject, code, value, effective, components: _merge(
        {"resourceType": "Observation", "status": "final"},
        *common,
        subject,
        code,
        value,
        effective,
        components,
    ),
    _common,
    _optional("subject", _refs),
    _optional("code", _concepts),
    _choice_values,
    st.one_of(
        st.just({}),
        _dates.map(lambda d: {"effectiveDateTime": d}),
        _dates.map(lambda d: {"effectivePeriod": {"start": d}}),
        _dates.map(lambda d: {"effectiveInstant": d}),
    ),
    _optional(
        "component",
        st.lists(st.builds(lambda c, v: {"code": c, **v}, _concepts, _choice_values), min_size=1, max_size=3),
    ),
)
_telecoms = st.builds(
    lambda s, v, ext: {
        "system": s,
        "value": v,
        **({"_system": {"extension": [{"url": "x"}]}} if ext else {}),
    },
    st.sampled_from(["phone", "email", "fax"]),
    st.sampled_from(["1", "2"]),
    st.booleans(),
)
_patients = st.builds(
    lambda common, names, telecom, gp, deceased: _merge(
        {"resourceType": "Patient"}, *common, names, telecom, gp, deceased
    ),
    _common,
    _optional(
        "name",
        st.lists(
            st.builds(
                lambda f, g: {"family": f, "given": g},
                st.sampled_from(["Doe", "Roe"]),
                st.lists(st.sampled_from(["Jo", "Doe"]), max_size=2),
            ),
            min_size=1,
            max_size=3,
        ),
    ),
    _optional("telecom", st.lists(_telecoms, min_size=1, max_size=3)),
    _optional("generalPractitioner", st.lists(_refs, min_size=1, max_size=2)),
    st.one_of(
        st.just({}),
        st.booleans().map(lambda b: {"deceasedBoolean": b}),
        _dates.map(lambda d: {"deceasedDateTime": d}),
    ),
)
_conditions = st.builds(
    lambda common, subject, onset, code: _merge({"resourceType": "Condition"}, *common, subject, onset, code),
    _common,
    _optional("subject", _refs),
    st.one_of(
        st.just({}),
        _dates.map(lambda d: {"onsetDateTime": d}),
        _quantities.map(lambda q: {"onsetAge": q}),
        st.just({"onsetString": "child"}),
        st.builds(lambda lo, hi: {"onsetRange": {"low": lo, "high": hi}}, _quantities, _quantities),
    ),
    _optional("code", _concepts),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_observations, _patients, _conditions))
def test_generated_resources_native_matches_fhirpathpy(resource: dict[str, Any]) -> None:
    problems = [
        problem
        for sp_id, expression in _params_for(resource["resourceType"])
        if (problem := _mismatch(resource, sp_id, expression))
    ]
    assert not problems, "\n".join(problems[:10])
