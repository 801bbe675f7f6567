"""Parameters whose index rows are other parameters' rows are not written, and are searched through
their sources (``Definitions.layout``): ``combo-code`` = ``code`` | ``component-code``,
``patient`` = ``subject.where(resolve() is Patient)``, ``code-value-quantity`` from ``code`` and
``value-quantity`` on the same resource, ``combo-code-value-quantity`` = that | the component groups.

Checked three ways: the layout found in the definitions; the rows the old indexer wrote for such a
parameter equal what the new rows give through the layout (hand-made resources and a Synthea
sample); and searches give the same results on a database written with and without the layout
(databases written before it hold the derived parameters' rows too, which must not matter).
"""

from __future__ import annotations

import copy
import tarfile
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from sharedcare.fhir import fhirpath
from sharedcare.fhir.definitions import (
    NOT_RESOLVED,
    Definitions,
    GroupSource,
    Layout,
    Source,
    _strip_parens,
    applicable_parts,
    definitions,
)
from sharedcare.fhir.indexer import Indexer
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.store import Write
from sharedcare.storage.engine import make_engine
from sharedcare.storage.tables import INDEX_TABLES, resource, resource_compartment, resource_version
from support import shared_data

DEFS = definitions()
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
MRN = "http://hospital.example/mrn"
BASE = "http://sharedcare.test/fhir"


def _without_layout() -> Definitions:
    """The definitions as the indexer saw them before layouts: every parameter stored."""
    defs = copy.copy(DEFS)
    defs.layout = lambda _rtype: Layout({}, {}, {})  # type: ignore[method-assign]
    return defs


OLD_INDEXER = Indexer(_without_layout())
NEW_INDEXER = Indexer(DEFS)


# -- the layout found in the definitions -----------------------------------------------------------
def test_layout_of_observation() -> None:
    layout = DEFS.layout("Observation")
    assert layout.sources_of("combo-code") == (Source("code"), Source("component-code"))
    assert layout.sources_of("combo-value-quantity") == (
        Source("component-value-quantity"),
        Source("value-quantity"),
    )
    assert layout.sources_of("combo-value-concept") == (
        Source("component-value-concept"),
        Source("value-concept"),
    )
    assert layout.sources_of("patient") == (Source("subject", "Patient"), Source("patient"))
    assert layout.filtered == {"patient": ("subject", "Patient")}
    root = GroupSource(None, ((Source("code"),), (Source("value-quantity"),)))
    assert layout.groups_of("code-value-quantity") == (root,)
    assert layout.groups_of("combo-code-value-quantity") == (
        root,
        GroupSource("component-code-value-quantity"),
    )
    assert layout.groups_of("component-code-value-quantity") == (
        GroupSource("component-code-value-quantity"),
    )
    # value-string also reads a CodeableConcept's text, which the composite's component does not
    assert layout.groups_of("code-value-string") == (GroupSource("code-value-string"),)
    for code in ("code", "subject", "value-quantity", "component-code"):
        assert layout.sources_of(code) == (Source(code),)
        assert not layout.is_derived(code)
    for code in ("combo-code", "code-value-quantity", "combo-code-value-quantity", "combo-value-quantity"):
        assert layout.is_derived(code)
    assert not layout.is_derived("patient")  # evaluated: the rows subject cannot give are written


def test_layout_of_other_types() -> None:
    assert DEFS.layout("Patient").sources_of("phonetic") == (Source("name"),)  # same expression
    assert DEFS.layout("Coverage").sources_of("patient") == (Source("beneficiary"),)
    assert DEFS.layout("Encounter").sources_of("practitioner") == (
        Source("participant", "Practitioner"),
        Source("practitioner"),
    )
    assert DEFS.layout("Condition").sources_of("patient") == (Source("subject", "Patient"), Source("patient"))
    # different elements that Synthea happens to fill alike stay apart
    assert DEFS.layout("ExplanationOfBenefit").sources_of("care-team") == (Source("care-team"),)


def test_expression_parts_agree_with_fhirpath() -> None:
    """The parts the layout compares are the parts ``fhirpath`` evaluates for the type."""
    checked = 0
    for rtype in sorted(DEFS.resource_types):
        for param in DEFS.params_for(rtype).values():
            if not param.is_indexed:
                continue
            terms = applicable_parts(param.expression, rtype)
            if terms is None:
                continue
            plan = fhirpath._plan(param.expression, rtype)
            assert not plan.whole
            assert terms == {_strip_parens(" ".join(p.text.split())) for p in plan.parts}, (rtype, param.code)
            checked += 1
    assert checked > 2000


def test_every_source_is_compiled_natively() -> None:
    """Aliases and their sources are evaluated by the same compiled extractors (not fhirpathpy,
    whose values are typed differently), so their rows are made alike."""
    for rtype in sorted(DEFS.resource_types):
        layout = DEFS.layout(rtype)
        params = DEFS.params_for(rtype)
        involved = set(layout.sources) | {s.param for v in layout.sources.values() for s in v}
        for groups in layout.groups.values():
            involved |= {s.param for g in groups for comp in g.components for s in comp}
        for code in involved:
            assert fhirpath.is_fast(params[code].expression, rtype), (rtype, code)


# -- rows ------------------------------------------------------------------------------------------
def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((k, v) for k, v in row.items() if k not in ("param", "grp")))


def _rows(indexed: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(kind, row) for kind, rows in indexed.rows.items() for row in rows]


def _plain_rows(rows: list[tuple[str, dict[str, Any]]], sources: tuple[Source, ...]) -> set[Any]:
    """The rows ``sources`` select, as searches read them."""
    out = set()
    for _kind, row in rows:
        for s in sources:
            if row["param"] != s.param:
                continue
            if s.target_type is None or (row.get("target_type") == s.target_type and row.get("grp") is None):
                out.add(_key(row))
    return out


def _groups(rows: list[tuple[str, dict[str, Any]]], code: str, n: int) -> set[tuple[frozenset[Any], ...]]:
    by_grp: dict[int, list[set[Any]]] = {}
    for _kind, row in rows:
        name, _, i = row["param"].partition("#")
        if name == code and i:
            by_grp.setdefault(row["grp"], [set() for _ in range(n)])[int(i)].add(_key(row))
    return {tuple(frozenset(s) for s in parts) for parts in by_grp.values()}


def check_rows(resource: dict[str, Any]) -> int:
    """Every parameter's rows in the old index equal what the new index gives through the layout;
    returns how many rows fewer the new index has."""
    rtype = resource["resourceType"]
    old, new = _rows(OLD_INDEXER.index(resource)), _rows(NEW_INDEXER.index(resource))
    assert OLD_INDEXER.index(resource).patients == NEW_INDEXER.index(resource).patients, rtype
    layout = DEFS.layout(rtype)
    for code, param in DEFS.params_for(rtype).items():
        if not param.is_indexed:
            continue
        if param.type != "composite":
            expected = _plain_rows(old, (Source(code),))
            assert _plain_rows(new, layout.sources_of(code)) == expected, (rtype, code)
            continue
        n = len(param.components)
        got: set[tuple[frozenset[Any], ...]] = set()
        for group in layout.groups_of(code):
            if group.param is not None:
                got |= _groups(new, group.param, n)
            else:
                parts = tuple(frozenset(_plain_rows(new, sources)) for sources in group.components)
                if all(parts):
                    got.add(parts)
        assert got == _groups(old, code, n), (rtype, code)
    # nothing the old index had under a parameter's own code is lost or added
    assert {(r["param"], _key(r)) for _k, r in new} - {(r["param"], _key(r)) for _k, r in old} == set()
    return len(old) - len(new)


def observation(oid: str, **fields: Any) -> dict[str, Any]:
    code = fields.pop("code", {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]})
    return {"resourceType": "Observation", "id": oid, "status": "final", "code": code, **fields}


def quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def component(code: str, value: float) -> dict[str, Any]:
    return {"code": {"coding": [{"system": LOINC, "code": code}]}, "valueQuantity": quantity(value, "mm[Hg]")}


RESOURCES: list[dict[str, Any]] = [
    {
        "resourceType": "Patient",
        "id": "p1",
        "name": [{"family": "Müller", "given": ["Anna"]}],
        "identifier": [{"system": MRN, "value": "123"}],
    },
    {"resourceType": "Patient", "id": "p2", "name": [{"family": "Smith", "given": ["Bob"]}]},
    # a value on the Observation itself
    observation("o1", subject={"reference": "Patient/p1"}, valueQuantity=quantity(72, "/min")),
    # a blood pressure panel: values on the components only
    observation(
        "o2",
        code={"coding": [{"system": LOINC, "code": "85354-9"}], "text": "Blood pressure"},
        subject={"reference": f"{BASE}/Patient/p2"},
        component=[component("8480-6", 120), component("8462-4", 80)],
    ),
    # a coded value, a Group subject
    observation(
        "o3",
        subject={"reference": "Group/g1"},
        valueCodeableConcept={"coding": [{"system": "http://snomed.info/sct", "code": "10828004"}]},
    ),
    # identifier-only subject, typed: a patient row the subject rows pointing at Patients cannot give
    observation(
        "o4",
        code={"coding": [{"system": LOINC, "code": "29463-7"}]},
        subject={"identifier": {"system": MRN, "value": "123"}, "type": "Patient"},
    ),
    # literally Patient/p1 for the index, but not resolvable as a Patient: subject only, not patient
    observation("o5", code={"text": "Note"}, subject={"reference": "urn:x/Patient/p1"}),
    # a value and components, no subject
    observation(
        "o6",
        valueQuantity=quantity(60, "/min"),
        component=[component("8480-6", 100)],
        effectiveDateTime="2020-01-01",
    ),
    {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p2"},
        "code": {"text": "Asthma"},
    },
    {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "finished",
        "class": {"code": "AMB"},
        "subject": {"reference": "Patient/p1"},
        "participant": [{"individual": {"reference": "Practitioner/dr1"}}],
    },
    {"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "House", "given": ["Greg"]}]},
]


def test_rows_of_hand_made_resources() -> None:
    saved = sum(check_rows(r) for r in RESOURCES)
    assert saved > 0
    rows = _rows(NEW_INDEXER.index(RESOURCES[2]))
    params = {r["param"] for _k, r in rows}
    assert "subject" in params
    assert not params & {"patient", "combo-code", "combo-value-quantity", "code-value-quantity#0"}
    identifier_only = [r for _k, r in _rows(NEW_INDEXER.index(RESOURCES[5])) if r["param"] == "patient"]
    assert identifier_only == [
        {"param": "patient", "target_type": None, "target_id": None, "url": None}
        | {"ident_system": MRN, "ident_value": "123"}
    ]
    marked = [r for _k, r in _rows(NEW_INDEXER.index(RESOURCES[6])) if r["param"] == "subject"]
    assert [(r["target_type"], r["target_id"], r.get("grp")) for r in marked] == [
        ("Patient", "p1", NOT_RESOLVED)
    ]


def _resolved(bundle: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The resources of a Synthea transaction with their urn:uuid references made relative."""
    ids = {}
    for entry in bundle["entry"]:
        res = entry["resource"]
        res.setdefault("id", entry["fullUrl"].rpartition(":")[2])
        ids[entry["fullUrl"]] = f"{res['resourceType']}/{res['id']}"
    text = orjson.dumps(bundle).decode()
    for urn, ref in ids.items():
        text = text.replace(f'"{urn}"', f'"{ref}"')
    for entry in orjson.loads(text)["entry"]:
        yield entry["resource"]


def test_rows_of_synthea_resources() -> None:
    archive = shared_data("synthea-r4-bundles", "synthea-r4-bundles.tar.xz")
    resources, saved = 0, 0
    with tarfile.open(archive, mode="r|xz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".json"):
                continue
            fh = tar.extractfile(member)
            assert fh is not None
            for res in _resolved(orjson.loads(fh.read())):
                saved += check_rows(res)
                resources += 1
            if resources > 3000:
                break
    assert saved > resources  # more than a row a resource


# -- searches --------------------------------------------------------------------------------------
@pytest.fixture
def svc(db_url: str) -> Iterator[FhirService]:
    engine = make_engine(db_url)
    yield FhirService(engine, validator=None)
    engine.dispose()


def load(svc: FhirService, indexer: Indexer) -> None:
    """Empty the database and write ``RESOURCES`` with ``indexer``."""
    svc.store.indexer = indexer
    try:
        with svc.write_engine.begin() as conn:
            # the FHIR store's tables only (the audit log shares the MetaData and refuses DELETE)
            for table in (*INDEX_TABLES.values(), resource_compartment, resource_version, resource):
                conn.execute(table.delete())
            writes = [Write("PUT", r["resourceType"], r["id"], copy.deepcopy(r), None) for r in RESOURCES]
            svc.store.apply(conn, writes)
    finally:
        svc.store.indexer = NEW_INDEXER


def ids(
    svc: FhirService, rtype: str, params: list[tuple[str, str]], compartment: str | None = None
) -> list[str]:
    query = svc.parse_search(rtype, [*params, ("_count", "100")], strict=True)
    result = svc.search(query, base_url=BASE, compartment=compartment)
    found = [s.id for s in result.matches]
    assert result.total == len(found), params
    return found + [s.id for s in result.included]


SEARCHES: list[tuple[str, list[tuple[str, str]], list[str]]] = [
    # union parameters
    ("Observation", [("combo-code", "8867-4")], ["o1", "o3", "o6"]),
    ("Observation", [("combo-code", f"{LOINC}|8480-6")], ["o2", "o6"]),
    ("Observation", [("combo-code", "8462-4,29463-7")], ["o2", "o4"]),
    ("Observation", [("combo-code:not", "8867-4")], ["o2", "o4", "o5"]),
    ("Observation", [("combo-code:text", "blood")], ["o2"]),
    ("Observation", [("combo-value-quantity", "gt90")], ["o2", "o6"]),
    ("Observation", [("combo-value-quantity", f"72|{UCUM}|/min")], ["o1"]),
    ("Observation", [("combo-value-concept", "10828004")], ["o3"]),
    # :missing on a union: missing in every source
    ("Observation", [("combo-value-quantity:missing", "true")], ["o3", "o4", "o5"]),
    ("Observation", [("combo-value-quantity:missing", "false")], ["o1", "o2", "o6"]),
    ("Observation", [("component-value-quantity:missing", "false")], ["o2", "o6"]),
    ("Observation", [("combo-code:missing", "true")], []),  # o5's code is a text
    ("Observation", [("combo-code:missing", "false")], ["o1", "o2", "o3", "o4", "o5", "o6"]),
    # composites: on the resource itself, on the components, or both
    ("Observation", [("code-value-quantity", "8867-4$72")], ["o1"]),
    ("Observation", [("code-value-quantity", "8867-4$gt50")], ["o1", "o6"]),
    ("Observation", [("code-value-quantity", "8480-6$120")], []),
    ("Observation", [("component-code-value-quantity", "8480-6$120")], ["o2"]),
    ("Observation", [("component-code-value-quantity", "8867-4$72")], []),
    ("Observation", [("combo-code-value-quantity", "8867-4$72")], ["o1"]),
    ("Observation", [("combo-code-value-quantity", "8480-6$120")], ["o2"]),
    ("Observation", [("combo-code-value-quantity", "8480-6$80")], []),  # one code, another's value
    ("Observation", [("combo-code-value-quantity", "85354-9$120")], []),
    ("Observation", [("combo-code-value-quantity", "8867-4$100")], []),  # o6: the value is a component's
    ("Observation", [("combo-code-value-quantity", "8480-6$100,8867-4$60")], ["o6"]),
    ("Observation", [("combo-code-value-concept", "8867-4$10828004")], ["o3"]),
    ("Observation", [("code-value-concept", f"{LOINC}|8867-4$10828004")], ["o3"]),
    ("Observation", [("code-value-quantity:missing", "true")], ["o2", "o3", "o4", "o5"]),
    ("Observation", [("combo-code-value-quantity:missing", "false")], ["o1", "o2", "o6"]),
    ("Observation", [("combo-code-value-quantity:missing", "true")], ["o3", "o4", "o5"]),
    # a filtered reference parameter
    ("Observation", [("patient", "Patient/p1")], ["o1"]),
    ("Observation", [("subject", "Patient/p1")], ["o1", "o5"]),
    ("Observation", [("patient", "p2")], ["o2"]),
    ("Observation", [("patient:identifier", f"{MRN}|123")], ["o4"]),
    ("Observation", [("subject:identifier", f"{MRN}|123")], ["o4"]),
    ("Observation", [("patient:missing", "true")], ["o3", "o5", "o6"]),
    ("Observation", [("patient:missing", "false")], ["o1", "o2", "o4"]),
    ("Observation", [("patient.family", "muller")], ["o1"]),
    ("Observation", [("subject:Patient.family", "muller")], ["o1", "o5"]),
    ("Patient", [("_has:Observation:patient:combo-code", "8867-4")], ["p1"]),
    ("Patient", [("_has:Observation:subject:code:text", "note")], ["p1"]),
    ("Patient", [("_has:Observation:patient:code:text", "note")], []),
    ("Patient", [("_has:Observation:patient:code-value-quantity", "8867-4$72")], ["p1"]),
    ("Encounter", [("practitioner", "Practitioner/dr1")], ["e1"]),
    ("Encounter", [("practitioner.name", "house")], ["e1"]),
    ("Condition", [("patient", "Patient/p2")], ["c1"]),
    ("Patient", [("phonetic", "mull")], ["p1"]),
    # sorting by an alias: the lowest (highest) value of all its sources
    ("Observation", [("_sort", "combo-value-quantity")], ["o6", "o1", "o2", "o3", "o4", "o5"]),
    ("Observation", [("_sort", "-combo-value-quantity")], ["o2", "o6", "o1", "o3", "o4", "o5"]),
    ("Observation", [("_sort", "-patient"), ("patient:missing", "false")], ["o2", "o1", "o4"]),
    ("Patient", [("_sort", "phonetic")], ["p1", "p2"]),  # anna < bob
    ("Patient", [("_sort", "-phonetic")], ["p2", "p1"]),  # smith > müller
    # includes through an alias
    ("Observation", [("_id", "o1,o4,o5"), ("_include", "Observation:patient")], ["o1", "o4", "o5", "p1"]),
    ("Observation", [("_id", "o5"), ("_include", "Observation:subject")], ["o5", "p1"]),
    ("Patient", [("_id", "p1"), ("_revinclude", "Observation:patient")], ["p1", "o1"]),
    ("Patient", [("_id", "p2"), ("_revinclude", "Condition:patient")], ["p2", "c1"]),
]


# o5's subject, ``urn:x/Patient/p1``, is indexed as pointing at Patient/p1 but does not resolve to a
# Patient. A database written before the layout has not marked it, so through subject it counts for
# ``patient`` there (such a reference is not valid; rewriting the resource marks it).
BEFORE_LAYOUT: dict[tuple[str, ...], list[str]] = {
    ("patient", "Patient/p1"): ["o1", "o5"],
    ("patient:missing", "true"): ["o3", "o6"],
    ("patient:missing", "false"): ["o1", "o2", "o4", "o5"],
    ("patient.family", "muller"): ["o1", "o5"],
    ("_has:Observation:patient:code:text", "note"): ["p1"],
    ("_sort", "-patient", "patient:missing", "false"): ["o2", "o1", "o5", "o4"],
    ("_id", "p1", "_revinclude", "Observation:patient"): ["p1", "o1", "o5"],
}


@pytest.mark.parametrize("indexer", ["new", "old"])
def test_searches_read_aliases_from_their_sources(svc: FhirService, indexer: str) -> None:
    """The same answers whether the database was written with the layout or before it."""
    load(svc, NEW_INDEXER if indexer == "new" else OLD_INDEXER)
    for rtype, params, expected in SEARCHES:
        if indexer == "old":
            expected = BEFORE_LAYOUT.get(tuple(x for kv in params for x in kv), expected)
        got = ids(svc, rtype, params)
        if any(k == "_sort" for k, _v in params):
            assert got == expected, (params, got)
        else:
            assert sorted(got) == sorted(expected), (params, got)


@pytest.mark.parametrize("indexer", ["new", "old"])
def test_compartments_through_aliases(svc: FhirService, indexer: str) -> None:
    """Condition's compartment parameter is ``patient``: it is recorded from the subject rows."""
    load(svc, NEW_INDEXER if indexer == "new" else OLD_INDEXER)
    assert ids(svc, "Condition", [], compartment="p2") == ["c1"]
    assert sorted(ids(svc, "Observation", [], compartment="p1")) == ["o1", "o5"]
    assert ids(svc, "Encounter", [], compartment="p1") == ["e1"]
