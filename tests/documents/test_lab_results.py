"""Laboratory results (issue 4): a laboratory system client files a DiagnosticReport, its
Observations and its PDF in one transaction; the holder sees them in the portal (table and trend
chart); a professional in care reads them, one without care does not; every broken rule
(LOINC, UCUM, reference ranges, interpretation, results, the PDF) is named in a 422 and nothing
is stored."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fpdf import FPDF
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "portal"))  # the portal tests' world

from mhd_world import Doc, created, provide_bundle
from portal_http import sign_in
from portal_world import World, build_world

from sharedcare.access.categories import CATEGORY_SYSTEM
from sharedcare.access.lifecycle import purge
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.app import create_app
from sharedcare.documents.content import pointer_of
from sharedcare.documents.labresults import PDF as PDF_TYPE
from sharedcare.documents.labresults import is_loinc_code, ucum_problem
from sharedcare.documents.submission import expire_unclaimed
from sharedcare.fhir.store import utcnow
from sharedcare.settings import Settings
from sharedcare.storage.blobstore import BlobInfo, BlobNotFound, BlobStore
from sharedcare.storage.crypto import DataKeyMissing
from sharedcare.storage.engine import writer
from sharedcare.storage.tables import resource, resource_version
from support import add_care, bearer, cheap_passwords, truncate

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
LAB = Principal(PrincipalKind.SYSTEM, "lab-client", display="Labo", organization_id="lab1")
GP = Principal(PrincipalKind.PROFESSIONAL, "acct-gp", practitioner_id="gp", profession="med")
STRANGER = Principal(PrincipalKind.PROFESSIONAL, "acct-x", practitioner_id="stranger", profession="med")
SCOPES = {PrincipalKind.SYSTEM: "system/*.cruds", PrincipalKind.PROFESSIONAL: "user/*.cruds"}
CIRCLE = re.compile(r'<circle class="point" cx="([\d.]+)" cy="([\d.]+)"')
DIAMOND = re.compile(r'<path class="point out" data-x="([\d.]+)"')


def _pdf() -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.cell(text="Laboratoire Central - metabolic panel")
    return bytes(pdf.output())


PDF = _pdf()


def sha1_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data).digest()).decode()


@pytest.fixture(autouse=True)
def cheap_hashing() -> Iterator[None]:
    yield from cheap_passwords()


@pytest.fixture
def lab_world(settings: Settings) -> Iterator[World]:
    """The portal tests' world (Marie Muller ``pa`` with her GP in care, a stranger) and the
    laboratory's Organization in the directory."""
    app = create_app(settings)
    truncate(app.state.engine)
    w = build_world(app, settings)
    org = {"resourceType": "Organization", "id": "lab1", "name": "Laboratoire Central"}
    app.state.fhir.update("Organization", "lab1", org)
    yield w
    w.engine.dispose()


@pytest.fixture
def api(lab_world: World) -> Iterator[TestClient]:
    with TestClient(lab_world.app) as client:
        yield client


def auth(client: TestClient, principal: Principal) -> dict[str, str]:
    return bearer(client.app, principal, SCOPES[principal.kind])


def observation(
    key: str, code: str, name: str, value: float, unit: str, low: float, high: float, flag: str
) -> dict[str, Any]:
    return {
        "fullUrl": f"urn:uuid:{key}",
        "resource": {
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": "laboratory"}]}],
            "code": {"coding": [{"system": LOINC, "code": code, "display": name}], "text": name},
            "subject": {"reference": "Patient/pa"},
            "effectiveDateTime": "2026-03-03T08:00:00Z",
            "performer": [{"reference": "Organization/lab1"}],
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
            "referenceRange": [
                {
                    "low": {"value": low, "unit": unit, "system": UCUM, "code": unit},
                    "high": {"value": high, "unit": unit, "system": UCUM, "code": unit},
                }
            ],
            "interpretation": [{"coding": [{"system": INTERPRETATION, "code": flag}]}],
        },
        "request": {"method": "POST", "url": "Observation"},
    }


def report_bundle(pdf: bytes = PDF) -> dict[str, Any]:
    """A transaction: the metabolic panel report, its three results and the laboratory's PDF."""
    results = [
        observation(
            "6a1c0000-0000-4000-8000-000000000001", "2345-7", "Glucose", 6.8, "mmol/L", 3.9, 5.5, "H"
        ),
        observation(
            "6a1c0000-0000-4000-8000-000000000002", "2160-0", "Creatinine", 0.9, "mg/dL", 0.6, 1.2, "N"
        ),
        observation(
            "6a1c0000-0000-4000-8000-000000000003", "2823-3", "Potassium", 3.2, "mmol/L", 3.5, 5.1, "L"
        ),
    ]
    report = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "category": [{"coding": [{"system": V2_0074, "code": "LAB"}]}],
        "code": {"coding": [{"system": LOINC, "code": "24323-8"}], "text": "Metabolic panel"},
        "subject": {"reference": "Patient/pa"},
        "effectiveDateTime": "2026-03-03T08:00:00Z",
        "issued": "2026-03-03T12:00:00Z",
        "performer": [{"reference": "Organization/lab1"}],
        "result": [{"reference": e["fullUrl"]} for e in results],
        "presentedForm": [
            {
                "contentType": "application/pdf",
                "data": base64.b64encode(pdf).decode(),
                "size": len(pdf),
                "hash": sha1_b64(pdf),
                "title": "Metabolic panel (PDF)",
            }
        ],
    }
    entry = {
        "fullUrl": "urn:uuid:6a1c0000-0000-4000-8000-0000000000aa",
        "resource": report,
        "request": {"method": "POST", "url": "DiagnosticReport"},
    }
    return {"resourceType": "Bundle", "type": "transaction", "entry": [entry, *results]}


def file_report(client: TestClient, bundle: dict[str, Any] | None = None) -> Any:
    return client.post("/fhir", json=bundle or report_bundle(), headers=auth(client, LAB))


def stored_count(world: World) -> int:
    """Reports, Observations and Binaries in the database (the world's own included), and blobs
    in the record's content store."""
    kinds = ("DiagnosticReport", "Observation", "Binary")
    with world.engine.connect() as conn:
        query = select(func.count()).select_from(resource)
        rows = int(conn.execute(query.where(resource.c.type.in_(kinds))).scalar_one())
    return rows + len(blob_files(world))


def blob_files(world: World, patient_id: str = "pa") -> list[Path]:
    folder = world.settings.data_dir / "blobs" / patient_id
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def pdf_binary(report: dict[str, Any]) -> str:
    """The id of the Binary a stored report's PDF names."""
    url: str = report["presentedForm"][0]["url"]
    return url.rsplit("/Binary/", 1)[1]


def test_a_laboratory_files_a_report_its_results_and_its_pdf(api: TestClient) -> None:
    response = file_report(api)
    [report_id] = created(response, "DiagnosticReport")
    observations = created(response, "Observation")
    assert len(observations) == 3
    read = api.get(f"/fhir/DiagnosticReport/{report_id}", headers=auth(api, GP))
    assert read.status_code == 200, read.text
    report = read.json()
    assert [r["reference"] for r in report["result"]] == [f"Observation/{i}" for i in observations]
    [form] = report["presentedForm"]
    binary_id = form["url"].rsplit("/Binary/", 1)[1]
    assert form == {
        "contentType": "application/pdf",
        "url": f"http://testserver/fhir/Binary/{binary_id}",
        "size": len(PDF),
        "hash": sha1_b64(PDF),
        "title": "Metabolic panel (PDF)",
    }
    found = api.get("/fhir/Observation?patient=pa&category=laboratory&code=2823-3", headers=auth(api, GP))
    [entry] = found.json()["entry"]
    assert entry["resource"]["interpretation"][0]["coding"][0]["code"] == "L"


def test_the_holder_sees_the_table_and_the_chart(api: TestClient, lab_world: World) -> None:
    file_report(api)
    portal = TestClient(lab_world.app, follow_redirects=False)
    portal.cookies.set("sharedcare_lang", "en")
    sign_in(portal, lab_world.patient)
    page = portal.get("/portal/results")
    assert page.status_code == 200
    section = re.search(r'<section class="card"[^>]*>(.*?)</section>', page.text, re.S)
    assert section is not None  # the newest report first: the laboratory's panel
    table = section.group(1)
    assert "Metabolic panel" in table and "Laboratoire Central" in table
    rows = [
        [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)
    ]
    values = {row[0].split(" — ")[0]: row[1:4] for row in rows if row}
    assert values == {
        "Glucose": ["6.8 mmol/L", "3.9 \N{EN DASH} 5.5 mmol/L", "↑ High"],
        "Creatinine": ["0.9 mg/dL", "0.6 \N{EN DASH} 1.2 mg/dL", "Normal"],
        "Potassium": ["3.2 mmol/L", "3.5 \N{EN DASH} 5.1 mmol/L", "↓ Low"],
    }
    # the glucose trend: the world's 5.4 mmol/L of January and the laboratory's 6.8, out of range
    links = dict(re.findall(r'<a class="analyte" href="([^"]+)">([^<]+)<', table))
    glucose = next(href for href, name in links.items() if name == "Glucose")
    chart = portal.get(glucose)
    assert chart.status_code == 200
    [svg] = re.findall(r"<svg .*?</svg>", chart.text, re.S)
    assert len(CIRCLE.findall(svg)) == 1 and len(DIAMOND.findall(svg)) == 1
    assert "2 results from Jan 10, 2026 to Mar 3, 2026." in svg
    assert "1 result outside the reference range is drawn as a diamond." in svg


def test_a_professional_in_care_reads_one_without_care_does_not(api: TestClient) -> None:
    response = file_report(api)
    [report_id] = created(response, "DiagnosticReport")
    observation_id = created(response, "Observation")[0]
    for principal, status in ((GP, 200), (STRANGER, 404)):
        headers = auth(api, principal)
        assert api.get(f"/fhir/DiagnosticReport/{report_id}", headers=headers).status_code == status
        assert api.get(f"/fhir/Observation/{observation_id}", headers=headers).status_code == status
    searched = api.get("/fhir/DiagnosticReport?patient=pa", headers=auth(api, STRANGER))
    assert searched.status_code == 200 and not searched.json().get("entry")


def _obs(bundle: dict[str, Any], n: int = 0) -> dict[str, Any]:
    resource: dict[str, Any] = bundle["entry"][1 + n]["resource"]
    return resource


def _report(bundle: dict[str, Any]) -> dict[str, Any]:
    report: dict[str, Any] = bundle["entry"][0]["resource"]
    return report


def _set(path: Callable[[dict[str, Any]], dict[str, Any]], key: str, value: Any) -> Callable[[Any], None]:
    def change(bundle: dict[str, Any]) -> None:
        path(bundle)[key] = value

    return change


def _range(low: float, high: float, code: str) -> list[dict[str, Any]]:
    """A one-entry ``referenceRange`` with both limits in the UCUM unit ``code``."""
    limit = {"system": UCUM, "code": code}
    return [{"low": {"value": low, **limit}, "high": {"value": high, **limit}}]


def _drop(path: Callable[[dict[str, Any]], dict[str, Any]], key: str) -> Callable[[Any], None]:
    def change(bundle: dict[str, Any]) -> None:
        path(bundle).pop(key)

    return change


OTHER_PDF = _pdf() + b"\n% other"
BROKEN: dict[str, tuple[Callable[[Any], None], str, str]] = {
    "code not LOINC": (
        _set(_obs, "code", {"coding": [{"system": "http://acme.lab/codes", "code": "GLU"}]}),
        "Observation.code",
        "must be coded in LOINC",
    ),
    "LOINC check digit": (
        _set(_obs, "code", {"coding": [{"system": LOINC, "code": "2345-8"}]}),
        "Observation.code",
        "'2345-8' is not a LOINC code",
    ),
    "unit not UCUM": (
        _set(
            _obs,
            "valueQuantity",
            {"value": 6.8, "unit": "mmol/L", "system": "http://acme.lab/units", "code": "mmol/L"},
        ),
        "Observation.valueQuantity.system",
        "must be a UCUM unit",
    ),
    "UCUM syntax": (
        _set(
            _obs, "valueQuantity", {"value": 6.8, "unit": "mmol per L", "system": UCUM, "code": "mmol per L"}
        ),
        "Observation.valueQuantity.code",
        "'mmol per L' is not a UCUM unit expression",
    ),
    "unit without code": (
        _set(_obs, "valueQuantity", {"value": 6.8, "unit": "mmol/L", "system": UCUM}),
        "Observation.valueQuantity.code",
        "needs its UCUM code",
    ),
    "range in another unit": (
        _set(_obs, "referenceRange", _range(70, 99, "mg/dL")),
        "Observation.referenceRange[0].low.code",
        "the reference range is in 'mg/dL' but the value in 'mmol/L'",
    ),
    "range upside down": (
        _set(_obs, "referenceRange", _range(5.5, 3.9, "mmol/L")),
        "Observation.referenceRange[0]",
        "the low limit (5.5) is above the high limit (3.9)",
    ),
    "interpretation unknown": (
        _set(_obs, "interpretation", [{"coding": [{"system": INTERPRETATION, "code": "HIGH"}]}]),
        "Observation.interpretation[0]",
        "'HIGH' is not a code of v3-ObservationInterpretation",
    ),
    "interpretation elsewhere": (
        _set(_obs, "interpretation", [{"coding": [{"system": "http://acme.lab/flags", "code": "H"}]}]),
        "Observation.interpretation[0]",
        "must be coded in http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
    ),
    "report without results": (
        _drop(_report, "result"),
        "DiagnosticReport.result",
        "references its results",
    ),
    "result not an Observation": (
        _set(_report, "result", [{"reference": "Patient/pa"}]),
        "DiagnosticReport.result[0]",
        "a result is an Observation, not 'Patient/pa'",
    ),
    "PDF of another type": (
        lambda b: _report(b)["presentedForm"][0].update(contentType="text/plain"),
        "DiagnosticReport.presentedForm[0].contentType",
        "contentType must be application/pdf",
    ),
    "PDF hash": (
        lambda b: _report(b)["presentedForm"][0].update(hash=sha1_b64(OTHER_PDF)),
        "DiagnosticReport.presentedForm[0].hash",
        "is not the base64 SHA-1 of the content",
    ),
    "PDF size": (
        lambda b: _report(b)["presentedForm"][0].update(size=len(PDF) + 1),
        "DiagnosticReport.presentedForm[0].size",
        f"size {len(PDF) + 1} does not match the content ({len(PDF)} bytes)",
    ),
    "PDF without hash": (
        lambda b: _report(b)["presentedForm"][0].pop("hash"),
        "DiagnosticReport.presentedForm[0].hash",
        "the hash of the PDF (base64 SHA-1) is required",
    ),
    "not a PDF": (
        lambda b: _report(b)["presentedForm"][0].update(
            data=base64.b64encode(b"hello").decode(), size=5, hash=sha1_b64(b"hello")
        ),
        "DiagnosticReport.presentedForm[0].data",
        "the content is not a PDF",
    ),
    "PDF elsewhere": (
        lambda b: _report(b)["presentedForm"][0].update(data=None, url="https://elsewhere.example/r.pdf"),
        "DiagnosticReport.presentedForm[0]",
        "the Binary of a document filed on this server",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_each_broken_rule_is_named_and_nothing_is_stored(
    api: TestClient, lab_world: World, case: str
) -> None:
    change, expression, words = BROKEN[case]
    bundle = copy.deepcopy(report_bundle())
    change(bundle)
    if _report(bundle)["presentedForm"][0].get("data") is None:
        _report(bundle)["presentedForm"][0].pop("data")
    before = stored_count(lab_world)
    response = file_report(api, bundle)
    assert response.status_code == 422, response.text
    issues = [(",".join(i.get("expression", [])), i["diagnostics"]) for i in response.json()["issue"]]
    assert any(where == expression and words in text for where, text in issues), issues
    assert stored_count(lab_world) == before


def test_every_problem_of_a_result_is_named_at_once(api: TestClient) -> None:
    bundle = report_bundle()
    glucose = _obs(bundle)
    glucose["code"]["coding"][0]["code"] = "2345-0"
    glucose["valueQuantity"]["code"] = "mmol/LL"
    glucose["interpretation"][0]["coding"][0]["code"] = "high"
    response = file_report(api, bundle)
    assert response.status_code == 422
    where = sorted(",".join(i["expression"]) for i in response.json()["issue"])
    assert where == [
        "Observation.code",
        "Observation.interpretation[0]",
        "Observation.valueQuantity.code",
    ]


def test_a_large_pdf_is_a_document_the_report_points_at(api: TestClient) -> None:
    """The PDF filed through MHD (the content store), the report naming its Binary."""
    doc = Doc(data=PDF)
    filed = api.post("/fhir", json=provide_bundle("pa", doc), headers=auth(api, LAB))
    [binary_id] = created(filed, "Binary")
    bundle = report_bundle()
    form = _report(bundle)["presentedForm"][0]
    form.pop("data")
    form["url"] = f"http://testserver/fhir/Binary/{binary_id}"
    [report_id] = created(file_report(api, bundle), "DiagnosticReport")
    report = api.get(f"/fhir/DiagnosticReport/{report_id}", headers=auth(api, GP)).json()
    url = report["presentedForm"][0]["url"]
    content = api.get(url, headers=auth(api, GP))
    assert content.status_code == 200 and content.content == PDF
    assert content.headers["content-type"] == "application/pdf"


def test_the_agencys_imports_are_taken_as_they_come(lab_world: World) -> None:
    """Trusted writes (Synthea, registries) are not checked: old results may lack UCUM codes."""
    old = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "laboratory"}]}],
        "code": {"text": "Glycémie"},
        "subject": {"reference": "Patient/pa"},
        "valueQuantity": {"value": 1.1, "unit": "g/l"},
    }
    assert lab_world.app.state.fhir.create(old).created


def test_loinc_and_ucum_checks() -> None:
    assert all(is_loinc_code(c) for c in ("2345-7", "718-7", "24323-8", "60591-5", "2160-0"))
    assert not any(is_loinc_code(c) for c in ("2345-8", "2345", "A2345-7", "12345678-9", 2345, ""))
    for unit in ("mg/dL", "mmol/L", "10*9/L", "[IU]/L", "mL/min/{1.73_m2}", "%", "1", "mm[Hg]", "U/L"):
        assert ucum_problem(unit) is None, unit
    for unit in ("µg/L", "mmol/LL", "mg per dL", " mg", "", "cel"):
        assert ucum_problem(unit) is not None, unit


# -- the PDF in the content store (the report points at its Binary) -----------------------------
SOCIAL_WORKER = Principal(PrincipalKind.PROFESSIONAL, "acct-sw", practitioner_id="sw", profession="is")


def _filed_report(api: TestClient) -> dict[str, Any]:
    [report_id] = created(file_report(api), "DiagnosticReport")
    report: dict[str, Any] = api.get(f"/fhir/DiagnosticReport/{report_id}", headers=auth(api, GP)).json()
    return report


def test_the_pdf_is_a_binary_in_the_content_store(api: TestClient, lab_world: World) -> None:
    report = _filed_report(api)
    binary_id = pdf_binary(report)
    content = api.get(f"/fhir/Binary/{binary_id}", headers=auth(api, GP))
    assert content.status_code == 200, content.text
    assert content.content == PDF and content.headers["content-type"] == "application/pdf"
    binary = api.get(
        f"/fhir/Binary/{binary_id}", headers={**auth(api, GP), "Accept": "application/fhir+json"}
    ).json()
    assert binary["securityContext"] == {"reference": f"DiagnosticReport/{report['id']}"}
    assert {"system": CATEGORY_SYSTEM, "code": "lab-results"} in binary["meta"]["tag"]
    # the bytes are a blob (encrypted), in no row: neither the report's versions nor the Binary's
    [blob] = blob_files(lab_world)
    assert PDF[:200] not in blob.read_bytes()
    encoded = base64.b64encode(PDF).decode()[:200]
    with lab_world.engine.connect() as conn:
        contents = conn.execute(select(resource_version.c.content)).scalars().all()
    assert contents and not any(encoded in str(c) for c in contents)


def test_a_professional_whose_column_does_not_read_lab_results_gets_404(
    api: TestClient, lab_world: World
) -> None:
    """In care of the patient, but a social worker: the matrix gives ``is`` no lab results."""
    with writer(lab_world.engine).begin() as conn:
        add_care(conn, "sw-care", "pa", "sw", datetime.now(UTC).replace(tzinfo=None))
    report = _filed_report(api)
    binary = f"/fhir/Binary/{pdf_binary(report)}"
    assert api.get(binary, headers=auth(api, SOCIAL_WORKER)).status_code == 404
    assert api.get(binary, headers=auth(api, STRANGER)).status_code == 404
    assert api.get(binary, headers=auth(api, GP)).status_code == 200
    searched = api.get("/fhir/Binary?patient=pa", headers=auth(api, SOCIAL_WORKER))
    assert searched.status_code == 200 and not searched.json().get("entry")


def test_a_report_posted_or_put_alone_files_its_pdf_too(api: TestClient, lab_world: World) -> None:
    bundle = report_bundle()
    alone = _report(bundle)
    _report(bundle).pop("presentedForm")
    observations = created(file_report(api, bundle), "Observation")
    alone["result"] = [{"reference": f"Observation/{i}"} for i in observations]
    alone["presentedForm"] = report_bundle()["entry"][0]["resource"]["presentedForm"]
    posted = api.post("/fhir/DiagnosticReport", json=alone, headers=auth(api, LAB))
    assert posted.status_code == 201, posted.text
    stored = posted.json()
    assert "data" not in stored["presentedForm"][0] and stored["presentedForm"][0]["size"] == len(PDF)
    first = pdf_binary(stored)
    assert api.get(f"/fhir/Binary/{first}", headers=auth(api, GP)).content == PDF
    # an amended PDF replaces it (by a GP: the laboratory's client writes, it does not read): a
    # new Binary, the first one kept for the report's history
    amended = _pdf() + b"\n% amended"
    data = base64.b64encode(amended).decode()
    form = {"contentType": PDF_TYPE, "data": data, "size": len(amended), "hash": sha1_b64(amended)}
    put = api.put(
        f"/fhir/DiagnosticReport/{stored['id']}",
        json={**alone, "id": stored["id"], "status": "amended", "presentedForm": [form]},
        headers=auth(api, GP),
    )
    assert put.status_code == 200, put.text
    second = pdf_binary(put.json())
    assert second != first and put.json()["presentedForm"][0]["hash"] == sha1_b64(amended)
    assert api.get(f"/fhir/Binary/{second}", headers=auth(api, GP)).content == amended
    assert api.get(f"/fhir/Binary/{first}", headers=auth(api, GP)).content == PDF


@pytest.mark.parametrize("what", ["hash", "size"])
def test_a_wrong_hash_or_size_stores_nothing(api: TestClient, lab_world: World, what: str) -> None:
    before = stored_count(lab_world)
    wrong = {"hash": sha1_b64(OTHER_PDF), "size": len(PDF) - 1}[what]
    bundle = report_bundle()
    _report(bundle)["presentedForm"][0][what] = wrong
    alone = {**_report(bundle), "result": [{"reference": "Observation/obs-a1"}]}
    for response in (
        file_report(api, bundle),
        api.post("/fhir/DiagnosticReport", json=alone, headers=auth(api, LAB)),
    ):
        assert response.status_code == 422, response.text
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        [issue] = outcome["issue"]
        assert issue["expression"] == [f"DiagnosticReport.presentedForm[0].{what}"]
    assert stored_count(lab_world) == before and not blob_files(lab_world)


def test_a_caller_without_the_right_stores_no_blob(api: TestClient, lab_world: World) -> None:
    response = api.post("/fhir", json=report_bundle(), headers=auth(api, STRANGER))
    assert response.status_code in (403, 404), response.text
    assert not blob_files(lab_world)


def test_purging_the_record_shreds_the_pdf(api: TestClient, lab_world: World) -> None:
    report = _filed_report(api)
    blobs = lab_world.app.state.blobs
    with lab_world.engine.connect() as conn:
        [row] = conn.execute(
            select(resource.c.content).where(resource.c.type == "Binary", resource.c.id == pdf_binary(report))
        ).all()
    pointer = pointer_of(json.loads(row.content))
    assert pointer is not None and pointer.patient_id == "pa"
    assert b"".join(blobs.open("pa", pointer.digest)) == PDF
    [blob] = blob_files(lab_world)
    kept = blob.read_bytes()
    with writer(lab_world.engine).begin() as conn:
        purge(conn, "pa")  # no blob store given: the key goes, the ciphertext stays behind
    assert blob.read_bytes() == kept
    with pytest.raises(DataKeyMissing):
        b"".join(blobs.open("pa", pointer.digest))
    assert api.get(f"/fhir/Binary/{pdf_binary(report)}", headers=auth(api, GP)).status_code == 404


# -- every write path keeps the PDF out of the stored report (issue 4) ---------------------------
def _alone(api: TestClient, pdf: bytes = PDF, identifier: str | None = None) -> dict[str, Any]:
    """A report on its own, its PDF inline, its results filed first (a transaction without PDF)."""
    bundle = report_bundle()
    alone = _report(bundle)
    _report(bundle).pop("presentedForm")
    observations = created(file_report(api, bundle), "Observation")
    alone = copy.deepcopy(alone)
    alone["result"] = [{"reference": f"Observation/{i}"} for i in observations]
    alone["presentedForm"] = [
        {
            "contentType": PDF_TYPE,
            "data": base64.b64encode(pdf).decode(),
            "size": len(pdf),
            "hash": sha1_b64(pdf),
        }
    ]
    if identifier:
        alone["identifier"] = [{"system": "urn:example:lab-report", "value": identifier}]
    return alone


def _no_inline_bytes(world: World) -> None:
    """No version of any resource holds a PDF's bytes (base64), and none carries ``data`` in a form."""
    with world.engine.connect() as conn:
        contents = (
            conn.execute(
                select(resource_version.c.content).where(resource_version.c.type == "DiagnosticReport")
            )
            .scalars()
            .all()
        )
    for content in contents:
        for form in json.loads(content or "{}").get("presentedForm") or ():
            assert "data" not in form, content


def _binaries(world: World) -> int:
    with world.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(resource).where(resource.c.type == "Binary")
            ).scalar_one()
        )


def test_a_batch_routes_each_reports_pdf_to_the_content_store(api: TestClient, lab_world: World) -> None:
    """A batch Bundle: each report carrying its PDF (POST, PUT) has it moved to the content store,
    a wrong one is refused in its own entry, the other entries go on as in any batch."""
    first, amended, wrong = _alone(api), _alone(api, OTHER_PDF), _alone(api)
    wrong["presentedForm"][0]["size"] = 3
    posted = api.post("/fhir/DiagnosticReport", json=_alone(api), headers=auth(api, LAB))
    assert posted.status_code == 201, posted.text
    stored = posted.json()
    entries = [
        {"resource": first, "request": {"method": "POST", "url": "DiagnosticReport"}},
        {"resource": wrong, "request": {"method": "POST", "url": "DiagnosticReport"}},
        {
            "resource": {**amended, "id": stored["id"], "status": "amended"},
            "request": {"method": "PUT", "url": f"DiagnosticReport/{stored['id']}"},
        },
        observation(
            "6a1c0000-0000-4000-8000-0000000000b1", "2345-7", "Glucose", 5.0, "mmol/L", 3.9, 5.5, "N"
        ),
    ]
    batch = {"resourceType": "Bundle", "type": "batch", "entry": entries}
    response = api.post("/fhir", json=batch, headers=auth(api, GP))  # who updates must read the report
    assert response.status_code == 200, response.text
    answers = [e["response"] for e in response.json()["entry"]]
    assert [a["status"].split()[0] for a in answers] == ["201", "422", "200", "201"]
    assert answers[1]["outcome"]["issue"][0]["expression"] == ["DiagnosticReport.presentedForm[0].size"]
    for answer, pdf in ((answers[0], PDF), (answers[2], OTHER_PDF)):
        report = api.get(f"/fhir/{answer['location'].split('/_history')[0]}", headers=auth(api, GP)).json()
        assert "data" not in report["presentedForm"][0]
        assert api.get(f"/fhir/Binary/{pdf_binary(report)}", headers=auth(api, GP)).content == pdf
    _no_inline_bytes(lab_world)


def test_a_patch_or_conditional_update_carrying_the_pdf_is_refused(api: TestClient, lab_world: World) -> None:
    """A JSON Patch adding ``data`` and a conditional update with the PDF inline cannot move it to
    the content store: 422, saying how to send it; nothing stored. A patch of another element of a
    report (its PDF a Binary) goes through."""
    posted = api.post("/fhir/DiagnosticReport", json=_alone(api), headers=auth(api, LAB))
    assert posted.status_code == 201, posted.text
    report = posted.json()
    conditional_body = _alone(api, identifier="r-77")
    before = (stored_count(lab_world), len(blob_files(lab_world)))
    patch = [{"op": "add", "path": "/presentedForm/0/data", "value": base64.b64encode(OTHER_PDF).decode()}]
    patched = api.patch(
        f"/fhir/DiagnosticReport/{report['id']}",
        content=json.dumps(patch),
        headers={**auth(api, GP), "Content-Type": "application/json-patch+json"},
    )
    assert patched.status_code == 422, patched.text
    [issue] = patched.json()["issue"]
    assert issue["expression"] == ["DiagnosticReport.presentedForm[0].data"]
    assert "by POST or PUT" in issue["diagnostics"]
    conditional = api.put(
        "/fhir/DiagnosticReport?identifier=urn:example:lab-report|r-77",
        json=conditional_body,
        headers=auth(api, LAB),
    )
    assert conditional.status_code == 422, conditional.text
    assert "by POST or PUT" in conditional.json()["issue"][0]["diagnostics"]
    assert (stored_count(lab_world), len(blob_files(lab_world))) == before
    status = [{"op": "replace", "path": "/status", "value": "amended"}]
    fine = api.patch(
        f"/fhir/DiagnosticReport/{report['id']}",
        content=json.dumps(status),
        headers={**auth(api, GP), "Content-Type": "application/json-patch+json"},
    )
    assert fine.status_code == 200, fine.text
    _no_inline_bytes(lab_world)


def test_a_conditional_create_files_one_pdf(api: TestClient, lab_world: World) -> None:
    """``If-None-Exist`` (REST) and ``ifNoneExist`` (transaction): the first files the report and
    its PDF; again, the report found is the answer and no Binary is added for the PDF sent again.
    Sent by the GP: a conditional create matches what its caller reads (the laboratory's client
    reads no results: its conditional creates never match)."""
    alone = _alone(api, identifier="r-1")
    headers = {**auth(api, GP), "If-None-Exist": "identifier=urn:example:lab-report|r-1"}
    first = api.post("/fhir/DiagnosticReport", json=alone, headers=headers)
    assert first.status_code == 201, first.text
    binaries = _binaries(lab_world)
    again = api.post("/fhir/DiagnosticReport", json=alone, headers=headers)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert _binaries(lab_world) == binaries
    bundle = report_bundle(OTHER_PDF)
    _report(bundle)["identifier"] = [{"system": "urn:example:lab-report", "value": "r-2"}]
    bundle["entry"][0]["request"]["ifNoneExist"] = "identifier=urn:example:lab-report|r-2"
    filed = api.post("/fhir", json=copy.deepcopy(bundle), headers=auth(api, GP))
    assert filed.status_code == 200, filed.text
    [report_id] = created(filed, "DiagnosticReport")
    binaries = _binaries(lab_world)
    bundle["entry"] = bundle["entry"][:1]  # the report alone, found this time
    _report(bundle)["result"] = [{"reference": "Observation/none-needed"}]
    repeated = api.post("/fhir", json=bundle, headers=auth(api, GP))
    assert repeated.status_code == 200, repeated.text
    assert repeated.json()["entry"][0]["response"]["status"].startswith("200")
    assert _binaries(lab_world) == binaries  # no Binary of the PDF sent again, pointing at the report found
    report = api.get(f"/fhir/DiagnosticReport/{report_id}", headers=auth(api, GP)).json()
    assert api.get(f"/fhir/Binary/{pdf_binary(report)}", headers=auth(api, GP)).content == OTHER_PDF
    _no_inline_bytes(lab_world)


# -- the blobs a transaction holds (review findings) ---------------------------------------------
class MeetingStore:
    """The app's real content store, where each write transaction's first blob check
    (``hold_blobs``, after it took the blob locks) waits up to ``hold`` seconds for the other
    transaction's to arrive: two that each took part of their locks meet there, then each asks
    for the rest (a deadlock when they took them in other orders). ``met`` counts the times both
    were there at once."""

    def __init__(self, inner: BlobStore, hold: float = 3.0) -> None:
        self.inner, self.hold = inner, hold
        self.arrived: set[int] = set()
        self.met = 0

    def put(self, namespace: str, chunks: Iterable[bytes], *, max_size: int | None = None) -> BlobInfo:
        return self.inner.put(namespace, chunks, max_size=max_size)

    def size(self, namespace: str, digest: str) -> int:
        me = threading.get_ident()
        if me not in self.arrived:
            self.arrived.add(me)
            if len(self.arrived) == 1:  # the first there waits for the other
                deadline = time.monotonic() + self.hold
                while time.monotonic() < deadline and len(self.arrived) < 2:
                    time.sleep(0.02)
                self.met += len(self.arrived) == 2
        return self.inner.size(namespace, digest)

    def open(self, namespace: str, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        return self.inner.open(namespace, digest, start, end)

    def delete(self, namespace: str, digest: str) -> bool:
        return self.inner.delete(namespace, digest)

    def delete_namespace(self, namespace: str) -> int:
        return self.inner.delete_namespace(namespace)


def _two_reports(first: bytes, second: bytes) -> dict[str, Any]:
    """A transaction: the metabolic panel with its results, and a second report of the same
    results: the first report carrying ``first``, the second ``second``."""
    bundle = report_bundle(first)
    other = copy.deepcopy(bundle["entry"][0])
    other["fullUrl"] = "urn:uuid:6a1c0000-0000-4000-8000-0000000000bb"
    form = other["resource"]["presentedForm"][0]
    form.update(data=base64.b64encode(second).decode(), size=len(second), hash=sha1_b64(second))
    bundle["entry"].insert(1, other)
    return bundle


def test_transactions_naming_the_same_pdfs_in_other_orders_both_file(
    api: TestClient, lab_world: World
) -> None:
    """Two transactions for one record, their reports carrying PDFs X, Y and Y, X, run at once:
    each holds its blobs in one order across the Bundle, so the second waits for the first
    instead of each waiting for the other (PostgreSQL refused one as a deadlock: 500). Both are
    filed, each PDF readable. Forced: each transaction's blob check waits for the other's."""
    app: Any = lab_world.app
    real = app.state.blobs
    meeting = MeetingStore(real)
    app.state.blobs = meeting
    answers: dict[str, Any] = {}
    sides = [
        threading.Thread(target=lambda k=k, b=b: answers.__setitem__(k, file_report(api, b)))
        for k, b in (("xy", _two_reports(PDF, OTHER_PDF)), ("yx", _two_reports(OTHER_PDF, PDF)))
    ]
    try:
        for side in sides:
            side.start()
        for side in sides:
            side.join(60)
    finally:
        app.state.blobs = real
    assert sorted(answers) == ["xy", "yx"]
    for key, first in (("xy", PDF), ("yx", OTHER_PDF)):
        assert answers[key].status_code == 200, answers[key].text
        report_ids = created(answers[key], "DiagnosticReport")
        assert len(report_ids) == 2
        report = api.get(f"/fhir/DiagnosticReport/{report_ids[0]}", headers=auth(api, GP)).json()
        assert api.get(f"/fhir/Binary/{pdf_binary(report)}", headers=auth(api, GP)).content == first
    # one held the blobs while the other waited for them: they never met inside
    assert meeting.met == 0


class ExpiringStore:
    """The app's real content store, with the expiry of unclaimed uploads running right after each
    put (the interleaving the expiry race tests force with threads)."""

    def __init__(self, inner: BlobStore, app: Any) -> None:
        self.inner, self.app = inner, app

    def put(self, namespace: str, chunks: Iterable[bytes], *, max_size: int | None = None) -> BlobInfo:
        info = self.inner.put(namespace, chunks, max_size=max_size)
        expire_unclaimed(self.app.state.engine, self.app.state.settings, utcnow(), blobs=self.inner)
        return info

    def size(self, namespace: str, digest: str) -> int:
        return self.inner.size(namespace, digest)

    def open(self, namespace: str, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        return self.inner.open(namespace, digest, start, end)

    def delete(self, namespace: str, digest: str) -> bool:
        return self.inner.delete(namespace, digest)

    def delete_namespace(self, namespace: str) -> int:
        return self.inner.delete_namespace(namespace)


def _forgotten_upload(api: TestClient, data: bytes) -> None:
    """An upload of ``data`` to Marie's record that no document claimed, past its expiry."""
    app: Any = api.app
    headers = {**auth(api, LAB), "Content-Type": "application/pdf", "X-Security-Context": "Patient/pa"}
    response = api.post("/fhir/Binary", content=data, headers=headers)
    assert response.status_code == 201, response.text
    hours = app.state.settings.unclaimed_upload_hours
    with writer(app.state.engine).begin() as conn:
        row = conn.execute(
            select(resource.c.pk, resource.c.last_updated).where(resource.c.id == response.json()["id"])
        ).one()
        conn.execute(
            resource.update()
            .where(resource.c.pk == row.pk)
            .values(last_updated=row.last_updated - timedelta(hours=hours, minutes=1))
        )


@pytest.mark.parametrize("path", ["REST", "transaction"])
def test_a_conditional_create_that_found_its_report_holds_no_blob(
    api: TestClient, lab_world: World, path: str
) -> None:
    """A conditional create finding the report filed before writes no Binary for the PDF sent
    (a corrected one here): its blob is none of the transaction's business. Removed meanwhile by
    the expiry of an upload of the same bytes, it refuses nothing (was: 409, "send it again")."""
    app: Any = lab_world.app
    alone = _alone(api, identifier="r-9")
    condition = "identifier=urn:example:lab-report|r-9"
    headers = {**auth(api, GP), "If-None-Exist": condition}
    first = api.post("/fhir/DiagnosticReport", json=alone, headers=headers)
    assert first.status_code == 201, first.text
    corrected = b"%PDF-1.7 corrected " + os.urandom(2000)
    _forgotten_upload(api, corrected)
    again = copy.deepcopy(alone)
    again["presentedForm"][0].update(
        data=base64.b64encode(corrected).decode(), size=len(corrected), hash=sha1_b64(corrected)
    )
    binaries = _binaries(lab_world)
    real = app.state.blobs
    app.state.blobs = ExpiringStore(real, app)
    try:
        if path == "REST":
            response = api.post("/fhir/DiagnosticReport", json=again, headers=headers)
            assert response.status_code == 200, response.text
            found = response.json()["id"]
        else:
            entry = {
                "resource": again,
                "request": {"method": "POST", "url": "DiagnosticReport", "ifNoneExist": condition},
            }
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
            response = api.post("/fhir", json=bundle, headers=auth(api, GP))
            assert response.status_code == 200, response.text
            [answer] = [e["response"] for e in response.json()["entry"]]
            assert answer["status"].startswith("200")
            found = answer["location"].split("/")[1]
    finally:
        app.state.blobs = real
    assert found == first.json()["id"]
    assert _binaries(lab_world) == binaries  # no Binary added for the PDF sent again
    with pytest.raises(BlobNotFound):  # the expiry did remove its blob
        real.size("pa", hashlib.sha256(corrected).hexdigest())
    report = api.get(f"/fhir/DiagnosticReport/{found}", headers=auth(api, GP)).json()
    assert api.get(f"/fhir/Binary/{pdf_binary(report)}", headers=auth(api, GP)).content == PDF
