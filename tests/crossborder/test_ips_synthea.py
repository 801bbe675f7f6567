"""Summaries of imported Synthea patients, checked against their source Bundles."""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from ips_checks import assert_valid_summary, by_url, sections

from sharedcare.app import create_app
from sharedcare.crossborder.ips import Limits
from sharedcare.fhir.importer import import_paths
from sharedcare.settings import Settings
from support import DEMO_SECRET, ensure_demo, shared_data, system_token, truncate

SAMPLE = ("Alexis_Toy_", "Asa_Hermiston_", "Agustín_Fonseca_")
"""Eight allergies; five active conditions and five active medications; nothing in the three
required sections (only stopped medications, no allergy, no active condition)."""
EXPECTED = {"Alexis_Toy_": (1, 8, 2), "Asa_Hermiston_": (5, 4, 5), "Agustín_Fonseca_": (0, 0, 0)}
"""Active conditions, allergies and active medications of each, counted by hand in the sources."""
SYNTHEA = "https://github.com/synthetichealth/synthea"
LIMITS = Limits()


@dataclass
class Synthea:
    client: TestClient
    sources: dict[str, list[dict[str, Any]]]
    """The source resources of each sample patient."""
    patient_ids: dict[str, str]
    """The stored Patient id of each sample patient (the import assigns ids)."""


@pytest.fixture(scope="module")
def synthea(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synthea]:
    archive = shared_data("synthea-r4-bundles", "synthea-r4-bundles.tar.xz")
    folder = tmp_path_factory.mktemp("synthea")
    sources: dict[str, list[dict[str, Any]]] = {}
    keys: dict[str, str] = {}
    with tarfile.open(archive, mode="r|xz") as src:
        for member in src:
            name = Path(member.name).name
            prefix = next((p for p in SAMPLE if name.startswith(p)), None)
            if prefix is None or not member.isfile():
                continue
            fh = src.extractfile(member)
            assert fh is not None
            data = fh.read()
            (folder / name).write_bytes(data)
            sources[prefix] = [e["resource"] for e in orjson.loads(data)["entry"]]
            keys[prefix] = name.removesuffix(".json").rsplit("_", 1)[1]
            if len(sources) == len(SAMPLE):
                break
    assert len(sources) == len(SAMPLE)
    settings = Settings(
        database_url=db_url,
        data_dir=tmp_path_factory.mktemp("data"),
        demo_data=False,
        demo_client_secret=DEMO_SECRET,
    )
    app = create_app(settings)
    truncate(app.state.engine)
    ensure_demo(app.state.engine, settings)
    report = import_paths(app.state.engine, [folder])
    assert report.errors == []
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {system_token(client)}"
        ids = {}
        for prefix, key in keys.items():
            found = client.get(f"/fhir/Patient?identifier={SYNTHEA}|{key}").json()
            (entry,) = found["entry"]
            ids[prefix] = entry["resource"]["id"]
        yield Synthea(client, sources, ids)
    app.state.engine.dispose()


def _code(res: dict[str, Any], element: str = "code") -> str:
    coding = res[element]["coding"][0]
    return f"{coding['system']}|{coding['code']}"


def _status(res: dict[str, Any], element: str) -> str | None:
    value = res.get(element)
    return value["coding"][0]["code"] if value else None


def _of(resources: list[dict[str, Any]], rtype: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["resourceType"] == rtype]


def _entries(bundle: dict[str, Any], key: str) -> list[dict[str, Any]]:
    urls = by_url(bundle)
    section = sections(bundle).get(key)
    return [urls[e["reference"]] for e in section.get("entry", [])] if section else []


@pytest.mark.parametrize("prefix", SAMPLE)
def test_summary_matches_the_source_record(synthea: Synthea, prefix: str) -> None:
    source = synthea.sources[prefix]
    resp = synthea.client.get(f"/fhir/Patient/{synthea.patient_ids[prefix]}/$summary")
    assert resp.status_code == 200, resp.text
    bundle = resp.json()
    assert_valid_summary(bundle)

    active = [
        c
        for c in _of(source, "Condition")
        if _status(c, "clinicalStatus") in ("active", "recurrence", "relapse")
        and _status(c, "verificationStatus") not in ("refuted", "entered-in-error")
    ]
    allergies = [
        a
        for a in _of(source, "AllergyIntolerance")
        if _status(a, "verificationStatus") not in ("refuted", "entered-in-error")
    ]
    medications = [m for m in _of(source, "MedicationRequest") if m["status"] == "active"]
    assert (len(active), len(allergies), len(medications)) == EXPECTED[prefix]
    assert sorted(_code(c) for c in _entries(bundle, "problems")) == sorted(_code(c) for c in active)
    assert sorted(_code(a) for a in _entries(bundle, "allergies")) == sorted(_code(a) for a in allergies)
    assert sorted(_code(m, "medicationCodeableConcept") for m in _entries(bundle, "medications")) == sorted(
        _code(m, "medicationCodeableConcept") for m in medications
    )
    for key, expected in (("problems", active), ("allergies", allergies), ("medications", medications)):
        section = sections(bundle)[key]
        assert bool(section.get("emptyReason")) == (not expected)
        for res in expected:  # the narrative names every entry
            label = res.get("code", res.get("medicationCodeableConcept"))["text"]
            assert label.replace("'", "&#x27;") in section["text"]["div"]

    completed = [i for i in _of(source, "Immunization") if i["status"] == "completed"]
    assert len(_entries(bundle, "immunizations")) == len(completed)

    labs = [
        o
        for o in _of(source, "Observation")
        if any(c["coding"][0]["code"] == "laboratory" for c in o.get("category", []))
    ]
    latest: dict[str, str] = {}
    for o in labs:
        latest[_code(o)] = max(latest.get(_code(o), ""), o["effectiveDateTime"])
    results = _entries(bundle, "results")
    assert len(results) == min(len(latest), LIMITS.results)
    assert all(r["effectiveDateTime"] == latest[_code(r)] for r in results)
    assert len({_code(r) for r in results}) == len(results)

    procedures = [p for p in _of(source, "Procedure") if p["status"] == "completed"]
    assert len(_entries(bundle, "procedures")) == min(len(procedures), LIMITS.procedures)
    newest = sorted((p["performedPeriod"]["start"] for p in procedures), reverse=True)[: LIMITS.procedures]
    assert (
        sorted((p["performedPeriod"]["start"] for p in _entries(bundle, "procedures")), reverse=True)
        == newest
    )

    patient = by_url(bundle)[bundle["entry"][0]["resource"]["subject"]["reference"]]
    assert patient["id"] == synthea.patient_ids[prefix]
    assert patient["name"] == _of(source, "Patient")[0]["name"]


def test_a_patient_with_nothing_recorded_has_empty_reasons(synthea: Synthea) -> None:
    client = synthea.client
    created = client.post(
        "/fhir/Patient",
        json={"resourceType": "Patient", "name": [{"family": "Empty"}], "birthDate": "2001-02-03"},
    )
    assert created.status_code == 201
    try:
        bundle = client.get(f"/fhir/Patient/{created.json()['id']}/$summary").json()
        assert_valid_summary(bundle)
        found = sections(bundle)
        assert list(found) == ["problems", "allergies", "medications"]
        for section in found.values():
            assert "entry" not in section
            assert section["emptyReason"]["coding"][0] == {
                "system": "http://terminology.hl7.org/CodeSystem/list-empty-reason",
                "code": "unavailable",
                "display": "Unavailable",
            }
            assert "No information available." in section["text"]["div"]
        assert [e["resource"]["resourceType"] for e in bundle["entry"]] == [
            "Composition",
            "Patient",
            "Organization",
        ]
    finally:
        client.delete(f"/fhir/Patient/{created.json()['id']}")


# -- every Synthea patient -------------------------------------------------------------------------
BILLING = frozenset({"Claim", "ExplanationOfBenefit"})
"""Not read by a summary, nor referenced by what it reads: left out of the import to save time."""


def _newest_of_each_test(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The resources with, of the Observations, only the newest of each code and category: the
    summary's observation sections (results, vital signs, social history, pregnancy) take the
    last of each test, so the older ones change nothing but the import's time."""
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    kept: list[dict[str, Any]] = []
    for res in resources:
        when = res.get("effectiveDateTime")
        if res["resourceType"] != "Observation" or not isinstance(when, str):
            kept.append(res)
            continue
        categories = ",".join(sorted(c["code"] for cat in res.get("category", []) for c in cat["coding"]))
        key = (orjson.dumps(res["code"]).decode(), categories)
        if key not in newest or newest[key]["effectiveDateTime"] < when:
            newest[key] = res
    return kept + list(newest.values())


def _reduced(bundle: dict[str, Any]) -> dict[str, Any]:
    """The patient's Bundle without billing, older results, and reports naming them; every entry
    another kept entry refers to stays (the transaction must resolve its ``urn:uuid``s)."""
    entries = {e["fullUrl"]: e for e in bundle["entry"]}
    wanted = {
        id(r)
        for r in _newest_of_each_test(
            [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] not in BILLING]
        )
        if r["resourceType"] != "DiagnosticReport"
    }
    kept = {url for url, e in entries.items() if id(e["resource"]) in wanted}
    pending = list(kept)
    while pending:
        text = orjson.dumps(entries[pending.pop()]["resource"]).decode()
        for url in set(re.findall(r"urn:uuid:[0-9a-f-]{36}", text)) - kept:
            if url in entries:
                kept.add(url)
                pending.append(url)
    return {**bundle, "entry": [e for url, e in entries.items() if url in kept]}


@dataclass
class Expected:
    """What a patient's summary must hold, counted in the source Bundle."""

    key: str
    problems: int
    allergies: int
    medications: int
    immunizations: int


@pytest.fixture(scope="module")
def every_synthea(
    db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, list[Expected]]]:
    """Every patient of the shared Synthea Bundles imported into one database (PostgreSQL, the
    production profile: one run of a few minutes is enough), with what each summary must hold."""
    if not db_url.startswith("postgresql"):
        pytest.skip("every Synthea patient is summarised on one database: PostgreSQL")
    archive = shared_data("synthea-r4-bundles", "synthea-r4-bundles.tar.xz")
    folder = tmp_path_factory.mktemp("synthea-all")
    expected: list[Expected] = []
    with tarfile.open(archive, mode="r|xz") as src:
        for member in src:
            name = Path(member.name).name
            fh = src.extractfile(member) if member.isfile() else None
            if fh is None or "Information" in name:
                continue
            bundle = orjson.loads(fh.read())
            source = [e["resource"] for e in bundle["entry"]]
            active = [
                c
                for c in _of(source, "Condition")
                if _status(c, "clinicalStatus") in ("active", "recurrence", "relapse")
                and _status(c, "verificationStatus") not in ("refuted", "entered-in-error")
            ]
            allergies = [
                a
                for a in _of(source, "AllergyIntolerance")
                if _status(a, "verificationStatus") not in ("refuted", "entered-in-error")
            ]
            medications = [
                m for m in _of(source, "MedicationRequest") if m["status"] in ("active", "on-hold")
            ]
            immunizations = [i for i in _of(source, "Immunization") if i["status"] == "completed"]
            key = name.removesuffix(".json").rsplit("_", 1)[1]
            expected.append(Expected(key, len(active), len(allergies), len(medications), len(immunizations)))
            (folder / name).write_bytes(orjson.dumps(_reduced(bundle)))
    settings = Settings(
        database_url=db_url,
        data_dir=tmp_path_factory.mktemp("data-all"),
        demo_data=False,
        demo_client_secret=DEMO_SECRET,
    )
    app = create_app(settings)
    truncate(app.state.engine)
    ensure_demo(app.state.engine, settings)
    report = import_paths(app.state.engine, [folder], validate=False)  # the importer's tests validate
    assert report.errors == []
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {system_token(client)}"
        yield client, expected
    truncate(app.state.engine)  # the next modules start from an empty database
    app.state.engine.dispose()


def test_every_synthea_patient_has_a_valid_summary(every_synthea: tuple[TestClient, list[Expected]]) -> None:
    client, expected = every_synthea
    assert len(expected) == 479
    failures: dict[str, str] = {}
    for patient in expected:
        found = client.get(f"/fhir/Patient?identifier={SYNTHEA}|{patient.key}&_elements=id").json()
        (entry,) = found["entry"]
        resp = client.get(f"/fhir/Patient/{entry['resource']['id']}/$summary")
        try:
            assert resp.status_code == 200, resp.text[:300]
            bundle = resp.json()
            assert_valid_summary(bundle)
            counts = {key: len(section.get("entry", [])) for key, section in sections(bundle).items()}
            wanted = {
                "problems": patient.problems,
                "allergies": patient.allergies,
                "medications": patient.medications,
                "immunizations": min(patient.immunizations, LIMITS.entries),
            }
            assert {k: counts.get(k, 0) for k in wanted} == wanted
        except AssertionError as exc:
            failures[patient.key] = str(exc)[:500]
    assert failures == {}, f"{len(failures)} of {len(expected)} summaries fail: {failures}"
