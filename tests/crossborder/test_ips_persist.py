"""A GP authors and signs a summary, stored in the record as a document; bad requests change nothing."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from ips_checks import assert_valid_summary, by_url, section_items
from ips_world import GP, HOLDER, NURSE, PHARMACIST, IpsWorld

from sharedcare.crossborder.ips import SummaryCorrupted, read_summary, summary_document

PERSIST = "/fhir/Patient/pa/$summary?persist=true"


def _documents(world: IpsWorld) -> list[dict[str, Any]]:
    """The record's DocumentReferences, as the trusted platform client reads them."""
    found = world.client.get("/fhir/DocumentReference?subject=Patient/pa&_total=accurate").json()
    return [e["resource"] for e in found.get("entry", [])]


def test_a_gp_signs_a_summary_stored_as_a_document(ips_world: IpsWorld) -> None:
    resp = ips_world.client.post(PERSIST, headers=ips_world.headers(GP))
    assert resp.status_code == 201, resp.text
    bundle = resp.json()
    assert_valid_summary(bundle)
    composition = bundle["entry"][0]["resource"]
    urls = by_url(bundle)
    author = urls[composition["author"][0]["reference"]]
    assert author["resourceType"] == "Practitioner" and author["id"] == "gp"
    assert composition["attester"][0]["mode"] == "legal"
    assert composition["attester"][0]["party"]["reference"] == composition["author"][0]["reference"]
    # the stored summary leaves out what waits for disclosure: the holder reads stored summaries
    assert "Observation/lab-pending" not in section_items(bundle)["results"]

    location = resp.headers["location"]
    assert "/DocumentReference/" in location and location.endswith("/_history/1")
    doc_id = location.split("/DocumentReference/")[1].split("/")[0]
    stored = ips_world.client.get(f"/fhir/DocumentReference/{doc_id}", headers=ips_world.headers(GP)).json()
    assert stored["type"]["coding"][0]["code"] == "60591-5"
    assert stored["category"][0]["coding"][0]["code"] == "summaries"
    assert stored["author"][0]["reference"] == "Practitioner/gp"
    assert stored["masterIdentifier"] == bundle["identifier"]
    attachment = stored["content"][0]["attachment"]
    assert attachment["contentType"] == "application/fhir+json"
    assert summary_document(stored) == bundle
    assert attachment["size"] == len(base64.b64decode(attachment["data"]))

    # the holder reads the stored summary in their record
    mine = ips_world.client.get(f"/fhir/DocumentReference/{doc_id}", headers=ips_world.headers(HOLDER))
    assert mine.status_code == 200
    assert read_summary(summary_document(mine.json())).patient_name == "Anne Holder"


def test_signing_again_adds_a_document_and_keeps_the_first(ips_world: IpsWorld) -> None:
    first = ips_world.client.post(PERSIST, headers=ips_world.headers(GP))
    second = ips_world.client.post(PERSIST, headers=ips_world.headers(GP))
    assert first.status_code == second.status_code == 201
    assert first.json()["identifier"] != second.json()["identifier"]
    documents = _documents(ips_world)
    assert len(documents) == 2
    assert all(d["meta"]["versionId"] == "1" for d in documents)
    first_id = first.headers["location"].split("/DocumentReference/")[1].split("/")[0]
    kept = next(d for d in documents if d["id"] == first_id)
    assert summary_document(kept) == first.json()


def test_a_changed_stored_summary_is_detected(ips_world: IpsWorld) -> None:
    resp = ips_world.client.post(PERSIST, headers=ips_world.headers(GP))
    (stored,) = _documents(ips_world)
    forged = resp.json()
    forged["entry"][0]["resource"]["title"] = "Something else"
    stored["content"][0]["attachment"]["data"] = base64.b64encode(orjson.dumps(forged)).decode()
    with pytest.raises(SummaryCorrupted):
        summary_document(stored)
    stored["content"][0]["attachment"]["size"] = len(orjson.dumps(forged))
    with pytest.raises(SummaryCorrupted, match="SHA-1"):
        summary_document(stored)


@pytest.mark.parametrize(
    ("who", "why"),
    [
        (PHARMACIST, "summaries"),  # no right on "Synthèses" at all
        (NURSE, "summaries"),  # reads summaries, does not write them
        (HOLDER, "professional"),  # the holder writes only their personal area
    ],
)
def test_only_those_who_write_summaries_may_sign_one(ips_world: IpsWorld, who: Any, why: str) -> None:
    resp = ips_world.client.post(PERSIST, headers=ips_world.headers(who))
    assert resp.status_code == 403, resp.text
    outcome = resp.json()
    assert outcome["resourceType"] == "OperationOutcome" and why in outcome["issue"][0]["diagnostics"]
    assert _documents(ips_world) == []


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "code"),
    [
        ("GET", PERSIST, None, 400, "invalid"),
        ("POST", "/fhir/Patient/pa/$summary?persist=yes", None, 400, "invalid"),
        ("POST", "/fhir/Patient/pa/$summary?persist=true&language=es", None, 400, "invalid"),
        (
            "POST",
            "/fhir/Patient/pa/$summary?persist=true&profile=http://example.org/other",
            None,
            400,
            "not-supported",
        ),
        ("POST", "/fhir/Patient/pa/$summary?persist=true&persit=true", None, 400, "invalid"),
        ("POST", "/fhir/Patient/pa/$summary", {"resourceType": "Patient"}, 400, "invalid"),
        (
            "POST",
            "/fhir/Patient/pa/$summary",
            {"resourceType": "Parameters", "parameter": [{"name": "persist"}]},
            400,
            "invalid",
        ),
        ("POST", "/fhir/Patient/pa/$summary", {"resourceType": "Parameters", "parameter": 7}, 400, "invalid"),
        ("POST", "/fhir/Patient/nobody/$summary?persist=true", None, 404, "not-found"),
        ("POST", "/fhir/Patient/pa/$summary?identifier=x|y", None, 400, "invalid"),
    ],
)
def test_bad_requests_answer_an_outcome_and_store_nothing(
    ips_world: IpsWorld, method: str, url: str, body: Any, status: int, code: str
) -> None:
    resp = ips_world.client.request(method, url, json=body, headers=ips_world.headers(GP))
    assert resp.status_code == status, resp.text
    assert resp.json()["resourceType"] == "OperationOutcome"
    assert resp.json()["issue"][0]["code"] == code
    assert _documents(ips_world) == []


def test_persist_as_a_posted_parameter(ips_world: IpsWorld) -> None:
    resp = ips_world.client.post(
        "/fhir/Patient/pa/$summary",
        json={"resourceType": "Parameters", "parameter": [{"name": "persist", "valueBoolean": True}]},
        headers=ips_world.headers(GP),
    )
    assert resp.status_code == 201
    assert len(_documents(ips_world)) == 1
