"""ITI-65 Provide Document Bundle over HTTP: what is filed, and every refusal leaving nothing behind."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from mhd_world import (
    GP,
    HOLDER,
    HOSPITAL,
    LAB,
    PHARMACIST,
    STRANGER,
    Doc,
    auth,
    blob_files,
    created,
    issues,
    provide,
    provide_bundle,
)
from sqlalchemy import func, select

from sharedcare.settings import Settings
from sharedcare.storage.tables import resource

PERSONAL = ("https://sharedcare.lu/fhir/CodeSystem/document-type", "personal-document")


def stored_count(client: TestClient) -> int:
    with client.app.state.engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(select(func.count()).select_from(resource)).scalar_one())


def category(client: TestClient, rtype: str, rid: str) -> str:
    with client.app.state.engine.connect() as conn:  # type: ignore[attr-defined]
        found = conn.execute(
            select(resource.c.category).where(resource.c.type == rtype, resource.c.id == rid)
        )
        return str(found.scalar_one())


def test_a_laboratory_files_documents_with_binary_and_inline_content(
    world: TestClient, settings: Settings
) -> None:
    report, inline = (
        Doc(data=b"%PDF-1.7 glucose 5.1 mmol/L"),
        Doc(type_code="18748-4", data=b"CT report", inline=True),
    )
    bundle = provide_bundle("pa", report, inline)
    response = provide(world, LAB, bundle)
    body = response.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "transaction-response"
    assert len(body["entry"]) == len(bundle["entry"])  # one answer per request entry, in order
    assert [e["response"]["status"] for e in body["entry"]] == ["201 Created"] * 4
    assert [e["response"]["location"].split("/")[0] for e in body["entry"]] == [
        "List",
        "DocumentReference",
        "Binary",
        "DocumentReference",
    ]
    lab_id, ct_id = created(response, "DocumentReference")
    (binary_id,) = created(response, "Binary")

    lab = world.get(f"/fhir/DocumentReference/{lab_id}").json()
    attachment = lab["content"][0]["attachment"]
    assert attachment["url"] == f"http://testserver/fhir/Binary/{binary_id}"
    assert "data" not in attachment and attachment["size"] == len(report.data)
    binary = world.get(f"/fhir/Binary/{binary_id}", headers={"Accept": "application/fhir+json"}).json()
    assert binary["securityContext"] == {"reference": f"DocumentReference/{lab_id}"}
    assert base64.b64decode(binary["data"]) == report.data
    stored = world.get(f"/fhir/Binary?_id={binary_id}").json()["entry"][0]["resource"]
    assert "data" not in stored  # the database holds a pointer, the bytes are a blob

    ct = world.get(f"/fhir/DocumentReference/{ct_id}").json()
    ct_url = ct["content"][0]["attachment"]["url"]
    assert "data" not in ct["content"][0]["attachment"]
    assert world.get(ct_url).content == b"CT report"  # inline content became a Binary too

    submission_set = world.get(
        f"/fhir/{body['entry'][0]['response']['location'].rsplit('/_history', 1)[0]}"
    ).json()
    assert [e["item"]["reference"] for e in submission_set["entry"]] == [
        f"DocumentReference/{lab_id}",
        f"DocumentReference/{ct_id}",
    ]
    # the content is in the patient's record: categories of its documents, compartment, namespace
    assert category(world, "DocumentReference", lab_id) == "lab-results"
    assert category(world, "Binary", binary_id) == "lab-results"
    assert category(world, "Binary", ct_url.rsplit("/", 1)[1]) == "imaging"
    in_record = world.get("/fhir/Patient/pa/Binary").json()
    assert {e["resource"]["id"] for e in in_record["entry"]} == {binary_id, ct_url.rsplit("/", 1)[1]}
    assert len(blob_files(settings.data_dir, "pa")) == 2


def test_detected_without_the_profile_by_its_submission_set(world: TestClient) -> None:
    bundle = provide_bundle("pa", Doc())
    del bundle["meta"]
    bundle["entry"][1]["resource"]["content"][0]["attachment"]["hash"] = "AAAA"
    response = provide(world, LAB, bundle)
    assert response.status_code == 422
    assert any(expr.endswith("attachment.hash") for expr, _ in issues(response))


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation setting ``path`` (dots and list indices) in the bundle; None deletes it."""

    def mutate(bundle: dict[str, Any]) -> None:
        node: Any = bundle
        parts = [int(p) if p.isdigit() else p for p in path.split(".")]
        for part in parts[:-1]:
            node = node[part]
        if value is None:
            del node[parts[-1]]
        else:
            node[parts[-1]] = value

    return mutate


def _both(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(bundle: dict[str, Any]) -> None:
        for m in mutations:
            m(bundle)

    return mutate


DOC = "entry.1.resource"
ATTACHMENT = f"{DOC}.content.0.attachment"
FAILURES: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("hash", _set(f"{ATTACHMENT}.hash", "2jmj7l5rSw0yVb/vlWAYkK/YBwk="), "attachment.hash", "does not match"),
    ("size", _set(f"{ATTACHMENT}.size", 3), "attachment.size", "bytes"),
    ("no size", _set(f"{ATTACHMENT}.size", None), "attachment.size", "missing"),
    ("missing patient", _set(f"{DOC}.subject", None), "entry[1].resource.subject", "patient is missing"),
    (
        "subject not a patient",
        _set(f"{DOC}.subject", {"reference": "Group/g"}),
        "resource.subject",
        "Patient",
    ),
    (
        "mismatched subject",
        _set(f"{DOC}.subject", {"reference": "Patient/pb"}),
        "resource.subject",
        "one patient",
    ),
    (
        "unknown type",
        _set(f"{DOC}.type", {"coding": [{"system": "http://loinc.org", "code": "99999-9"}]}),
        "resource.type",
        "Unknown document type",
    ),
    ("no class", _set(f"{DOC}.category", None), "resource.category", "class"),
    ("no author", _set(f"{DOC}.author", None), "resource.author", "author"),
    ("no date", _set(f"{DOC}.date", None), "resource.date", "date"),
    ("no confidentiality", _set(f"{DOC}.securityLabel", None), "resource.securityLabel", "confidentiality"),
    (
        "unknown confidentiality",
        _set(
            f"{DOC}.securityLabel",
            [
                {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "X"}
                    ]
                }
            ],
        ),
        "resource.securityLabel",
        "confidentiality",
    ),
    ("no content type", _set(f"{ATTACHMENT}.contentType", None), "attachment.contentType", "contentType"),
    ("no language", _set(f"{ATTACHMENT}.language", None), "attachment.language", "language"),
    ("no format", _set(f"{DOC}.content.0.format", None), "content[0].format", "format"),
    ("not current", _set(f"{DOC}.status", "superseded"), "resource.status", "current"),
    ("content elsewhere", _set(f"{ATTACHMENT}.url", "https://elsewhere/doc.pdf"), "attachment.url", "Binary"),
    ("bad base64", _set("entry.2.resource.data", "@@@not base64"), "entry[2].resource.data", "base64"),
    ("binary type", _set("entry.2.resource.contentType", "text/plain"), "attachment.contentType", "differs"),
    (
        "unknown patient",
        _set("entry.0.resource.subject", {"reference": "Patient/nobody"}),
        "resource.subject",
        "",
    ),
    ("set mode", _set("entry.0.resource.mode", "snapshot"), "entry[0].resource.mode", "working"),
    ("set date", _set("entry.0.resource.date", None), "entry[0].resource.date", "date"),
    (
        "set source",
        _both(_set("entry.0.resource.source", None), _set("entry.0.resource.extension", None)),
        "source",
        "",
    ),
    (
        "unlisted document",
        _set("entry.0.resource.entry", [{"item": {"reference": "urn:uuid:x"}}]),
        "entry",
        "listed",
    ),
    ("invalid FHIR", _set(f"{DOC}.status", 7), "resource.status", ""),
]


@pytest.mark.parametrize(("mutate", "where", "text"), [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES])
def test_each_validation_failure_is_named_and_nothing_is_stored(
    world: TestClient, settings: Settings, mutate: Callable[[dict[str, Any]], None], where: str, text: str
) -> None:
    before = stored_count(world)
    bundle = provide_bundle("pa", Doc())
    mutate(bundle)
    response = provide(world, LAB, bundle)
    assert response.status_code == 422, response.text
    found = issues(response)
    assert any(where in expr and text in diagnostics for expr, diagnostics in found), found
    assert stored_count(world) == before
    assert blob_files(settings.data_dir) == []


def test_every_problem_is_named_in_one_outcome(world: TestClient, settings: Settings) -> None:
    first, second = Doc(), Doc(type_code="18748-4", inline=True)
    bundle = provide_bundle("pa", first, second)
    bundle["entry"][1]["resource"]["content"][0]["attachment"]["hash"] = "2jmj7l5rSw0yVb/vlWAYkK/YBwk="
    bundle["entry"][3]["resource"]["content"][0]["attachment"]["size"] = 1
    bundle["entry"][3]["resource"]["type"]["coding"][0]["code"] = "00000-0"
    bundle["entry"].append(
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}
    )
    response = provide(world, LAB, bundle)
    assert response.status_code == 422
    expressions = {expr for expr, _ in issues(response)}
    assert expressions >= {
        "Bundle.entry[1].resource.content[0].attachment.hash",
        "Bundle.entry[3].resource.content[0].attachment.size",
        "Bundle.entry[3].resource.type",
        "Bundle.entry[4].resource",
    }
    assert blob_files(settings.data_dir) == []


def test_bundle_structure_errors(world: TestClient) -> None:
    no_set = provide_bundle("pa", Doc())
    no_set["entry"] = no_set["entry"][1:]
    response = provide(world, LAB, no_set)
    assert response.status_code == 422 and "exactly one SubmissionSet" in response.text
    stray = provide_bundle("pa", Doc())
    stray["entry"].append(
        {
            "fullUrl": "urn:uuid:orphan",
            "resource": {"resourceType": "Binary", "contentType": "text/plain", "data": "aGk="},
            "request": {"method": "POST", "url": "Binary"},
        }
    )
    response = provide(world, LAB, stray)
    assert response.status_code == 422 and "is not the content of any DocumentReference" in response.text
    deleting = provide_bundle("pa", Doc())
    deleting["entry"].append({"request": {"method": "DELETE", "url": "Patient/pa"}})
    assert provide(world, LAB, deleting).status_code == 422


def test_a_closed_record_refuses_new_documents_clearly(world: TestClient, settings: Settings) -> None:
    before = stored_count(world)
    response = provide(world, LAB, provide_bundle("pc", Doc()))
    assert response.status_code == 422
    (issue,) = response.json()["issue"]
    assert issue["code"] == "business-rule"
    assert "record of patient pc is closed" in issue["diagnostics"]
    assert stored_count(world) == before and blob_files(settings.data_dir) == []


def test_who_may_file(world: TestClient, settings: Settings) -> None:
    # a professional without a care relationship: refused before any content is stored
    note = Doc(type_code="11488-4", authors=["Practitioner/stranger"])
    response = provide(world, STRANGER, provide_bundle("pa", note, source="Practitioner/stranger"))
    assert response.status_code == 403
    assert blob_files(settings.data_dir) == []
    # the GP in the patient's care files a consultation note; a hospital system a discharge letter
    note = Doc(type_code="11488-4", authors=["Practitioner/gp"], data=b"consultation")
    assert provide(world, GP, provide_bundle("pa", note, source="Practitioner/gp")).status_code == 200
    letter = Doc(type_code="18842-5", authors=["Organization/hosp1"], data=b"discharge letter")
    assert (
        provide(world, HOSPITAL, provide_bundle("pa", letter, source="Organization/hosp1")).status_code == 200
    )
    # the holder may not file a laboratory report into their record
    lab = Doc(authors=["Organization/lab1"])
    assert provide(world, HOLDER, provide_bundle("pa", lab)).status_code == 403
    assert len(blob_files(settings.data_dir, "pa")) == 2


def test_the_holders_own_documents_land_in_their_personal_area(world: TestClient) -> None:
    mine = Doc(
        type_system=PERSONAL[0],
        type_code=PERSONAL[1],
        authors=["Patient/pa"],
        content_type="image/jpeg",
        data=b"\xff\xd8\xff photo of a vaccination card",
    )
    response = provide(world, HOLDER, provide_bundle("pa", mine, source="Patient/pa"))
    (doc_id,) = created(response, "DocumentReference")
    (binary_id,) = created(response, "Binary")
    assert category(world, "DocumentReference", doc_id) == "personal-expression"
    assert category(world, "Binary", binary_id) == "personal-expression"
    # a professional file it as a "personal document": only holders write their personal area
    theirs = Doc(type_system=PERSONAL[0], type_code=PERSONAL[1], authors=["Practitioner/gp"])
    assert provide(world, GP, provide_bundle("pa", theirs, source="Practitioner/gp")).status_code == 403


def test_content_over_the_size_limit_is_refused(world: TestClient, settings: Settings) -> None:
    app: Any = world.app
    app.state.settings = settings.model_copy(update={"max_content_bytes": 16})
    response = provide(world, LAB, provide_bundle("pa", Doc(data=b"x" * 17)))
    assert response.status_code == 413
    assert provide(world, LAB, provide_bundle("pa", Doc(data=b"x" * 16))).status_code == 200


def test_a_plain_transaction_is_not_taken_for_a_submission(world: TestClient) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Binary", "contentType": "text/plain", "data": "aGk="},
                "request": {"method": "POST", "url": "Binary"},
            }
        ],
    }
    response = world.post("/fhir", json=bundle)
    assert response.status_code == 200
    location = response.json()["entry"][0]["response"]["location"]
    path = "/fhir/" + location.split("/_history")[0]
    assert world.get(path).content == b"hi"  # inline data served too
    assert world.delete(path).status_code == 200  # other methods reach the generic routes
    assert world.get(path).status_code == 410


def test_the_api_guide_example_is_accepted(world: TestClient) -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text(encoding="utf-8")
    block = guide.split("<!-- mhd-example:begin -->", 1)[1].split("<!-- mhd-example:end -->", 1)[0]
    example = json.loads(
        block.strip().removeprefix("```json").removesuffix("```").replace("Patient/ID", "Patient/pa")
    )
    response = provide(world, LAB, example)
    (doc_id,) = created(response, "DocumentReference")
    url = world.get(f"/fhir/DocumentReference/{doc_id}").json()["content"][0]["attachment"]["url"]
    assert world.get(url, headers={"Accept": "text/plain"}).text == "Glucose 5.1 mmol/L (3.9-5.6)"


def test_submission_lists_are_as_closely_held_as_their_documents(world: TestClient) -> None:
    lab = provide(world, LAB, provide_bundle("pa", Doc(data=b"lab")))
    mixed = provide(
        world, LAB, provide_bundle("pa", Doc(data=b"lab 2"), Doc(type_code="18748-4", data=b"ct"))
    )
    lab_set = lab.json()["entry"][0]["response"]["location"].split("/")[1]
    mixed_set = mixed.json()["entry"][0]["response"]["location"].split("/")[1]
    assert category(world, "List", lab_set) == "lab-results"
    assert category(world, "List", mixed_set) == "imaging"  # fewer columns read imaging than lab results
    pharmacist = world.get("/fhir/List?patient=pa", headers=auth(world, PHARMACIST)).json()
    assert {e["resource"]["id"] for e in pharmacist["entry"]} == {lab_set}
