"""Batch and transaction Bundles over HTTP (``POST /fhir``), on SQLite and PostgreSQL.

Batch entries are independent; a transaction is atomic, resolves ``urn:uuid`` and conditional
references, honours ``ifNoneExist``/``ifMatch``, runs DELETE, POST, PUT/PATCH, GET in that order
and answers in request order.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
from fastapi.testclient import TestClient

BASE = "http://testserver/fhir"
SYS = "urn:oid:1.2.3.4"


# -- helpers -------------------------------------------------------------------------------------
def patient(family: str = "Muller", identifier: str | None = None, **extra: Any) -> dict[str, Any]:
    """A valid Patient (with the identifier ``SYS|identifier`` when given)."""
    res: dict[str, Any] = {"resourceType": "Patient", "name": [{"family": family}], "gender": "male"}
    if identifier:
        res["identifier"] = [{"system": SYS, "value": identifier}]
    return {**res, **extra}


def observation(subject: str, **extra: Any) -> dict[str, Any]:
    """A valid Observation about ``subject``."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": subject},
        **extra,
    }


def entry(method: str, url: str, resource: dict[str, Any] | None = None, **request: str) -> dict[str, Any]:
    """A Bundle entry; ``fullUrl`` is taken from ``request`` when given."""
    full_url = request.pop("fullUrl", None)
    out: dict[str, Any] = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        out["resource"] = resource
    if full_url:
        out["fullUrl"] = full_url
    return out


def binary_patch(ops: list[dict[str, Any]]) -> dict[str, Any]:
    """A JSON Patch wrapped in a Binary, as transactions carry it."""
    data = base64.b64encode(json.dumps(ops).encode()).decode()
    return {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data}


def post_bundle(client: TestClient, kind: str, entries: list[dict[str, Any]]) -> httpx.Response:
    """POST a batch or transaction Bundle to the system endpoint."""
    return client.post("/fhir", json={"resourceType": "Bundle", "type": kind, "entry": entries})


def response_bundle(r: httpx.Response, kind: str, n: int) -> list[dict[str, Any]]:
    """Assert ``r`` is a successful ``kind``-response Bundle with ``n`` entries; return them."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert body["resourceType"] == "Bundle"
    assert body["type"] == kind
    entries: list[dict[str, Any]] = body["entry"]
    assert len(entries) == n
    return entries


def status(e: dict[str, Any]) -> str:
    """The three-digit status of a response entry."""
    value: str = e["response"]["status"]
    return value[:3]


def ident(e: dict[str, Any]) -> tuple[str, str, str]:
    """(type, id, version) from a response entry's ``location``."""
    rtype, rid, history, version = e["response"]["location"].split("/")
    assert history == "_history"
    return rtype, rid, version


def outcome(r: httpx.Response, code: int, issue: str | None = None) -> str:
    """Assert an error OperationOutcome with HTTP ``code``; return its diagnostics."""
    assert r.status_code == code, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] in ("error", "fatal")
    if issue:
        assert body["issue"][0]["code"] == issue
    diagnostics: str = body["issue"][0]["diagnostics"]
    return diagnostics


def total(client: TestClient, rtype: str = "Patient", **params: str) -> int:
    """The search total of ``rtype`` for ``params``."""
    r = client.get(f"/fhir/{rtype}", params=params)
    assert r.status_code == 200, r.text
    count: int = r.json()["total"]
    return count


def versions_written(client: TestClient) -> int:
    """Every version in the system."""
    count: int = client.get("/fhir/_history").json()["total"]
    return count


def read(client: TestClient, ref: str) -> dict[str, Any]:
    """Read ``Type/id``, which must exist."""
    r = client.get(f"/fhir/{ref}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


# -- batch ---------------------------------------------------------------------------------------
def test_batch_entries_are_independent(client: TestClient) -> None:
    client.put("/fhir/Patient/existing", json=patient("Existing", id="existing"))
    r = post_bundle(
        client,
        "batch",
        [
            entry("POST", "Patient", patient("Good")),
            entry("POST", "Patient", patient("Bad", gender="mal")),
            entry("PUT", "Patient/b-1", patient("Put", id="b-1")),
            entry("GET", "Patient/missing"),
            entry("PUT", "Patient/existing", patient("Changed", id="existing")),
            entry("PUT", "Patient/mismatch", patient("X", id="other")),
            entry("DELETE", "Patient/existing"),
            entry("GET", "Patient?family=Good"),
            entry("POST", "NoSuchType", {"resourceType": "NoSuchType"}),
        ],
    )
    entries = response_bundle(r, "batch-response", 9)
    assert [status(e) for e in entries] == ["201", "422", "201", "404", "200", "400", "204", "200", "404"]
    good_type, good_id, good_version = ident(entries[0])
    assert (good_type, good_version) == ("Patient", "1")
    assert entries[0]["response"]["etag"] == 'W/"1"'
    assert "lastModified" in entries[0]["response"]
    assert ident(entries[2]) == ("Patient", "b-1", "1")
    assert ident(entries[4]) == ("Patient", "existing", "2")
    for failed in (entries[1], entries[3], entries[5], entries[8]):
        oo = failed["response"]["outcome"]
        assert oo["resourceType"] == "OperationOutcome"
        assert oo["issue"][0]["severity"] == "error"
        assert "location" not in failed["response"]
    assert any(
        "Patient.gender" in i.get("expression", []) for i in entries[1]["response"]["outcome"]["issue"]
    )
    search = entries[7]["resource"]
    assert search["type"] == "searchset"
    assert search["total"] == 1
    assert search["entry"][0]["resource"]["id"] == good_id
    assert read(client, f"Patient/{good_id}")["name"][0]["family"] == "Good"
    assert read(client, "Patient/b-1")["name"][0]["family"] == "Put"
    assert client.get("/fhir/Patient/existing").status_code == 410
    assert client.get("/fhir/Patient/mismatch").status_code == 404
    assert total(client, family="Bad") == 0


def test_batch_conditional_create_and_type_check(client: TestClient) -> None:
    client.post("/fhir/Patient", json=patient("Known", identifier="k-1"))
    r = post_bundle(
        client,
        "batch",
        [
            entry("POST", "Patient", patient("Again", identifier="k-1"), ifNoneExist=f"identifier={SYS}|k-1"),
            entry("POST", "Patient", patient("New", identifier="k-2"), ifNoneExist=f"identifier={SYS}|k-2"),
            entry("POST", "Observation", patient("WrongType")),
        ],
    )
    entries = response_bundle(r, "batch-response", 3)
    assert [status(e) for e in entries] == ["200", "201", "400"]
    assert total(client, identifier=f"{SYS}|k-1") == 1
    assert total(client, identifier=f"{SYS}|k-2") == 1
    assert total(client, family="WrongType") == 0


# -- transaction: atomicity ----------------------------------------------------------------------
def test_transaction_invalid_entry_writes_nothing(client: TestClient) -> None:
    client.put("/fhir/Patient/keep", json=patient("Keep", id="keep"))
    before = versions_written(client)
    cases: list[tuple[list[dict[str, Any]], int]] = [
        (
            [
                entry(
                    "POST", "Patient", patient("A"), fullUrl="urn:uuid:0c6cbd44-0000-4000-8000-000000000001"
                ),
                entry("POST", "Observation", observation("urn:uuid:0c6cbd44-0000-4000-8000-000000000001")),
                entry("POST", "Observation", observation("Patient/keep", status="finished")),
            ],
            422,
        ),
        (
            [
                entry("DELETE", "Patient/keep"),
                entry("PUT", "Patient/t-1", patient("B", id="t-1")),
                entry("PUT", "Patient/t-2", patient("C", id="t-2", birthDate="not a date")),
            ],
            422,
        ),
        (
            [
                entry("POST", "Patient", patient("D")),
                entry("PUT", "Patient/keep", patient("Keep2", id="keep"), ifMatch='W/"9"'),
            ],
            412,
        ),
        (
            [
                entry("POST", "Patient", patient("E")),
                entry("PATCH", "Patient/keep", binary_patch([{"op": "remove", "path": "/birthDate"}])),
            ],
            422,
        ),
        (
            [
                entry("POST", "Patient", patient("F")),
                entry("POST", "Observation", observation(f"Patient?identifier={SYS}|nobody")),
            ],
            404,
        ),
        (
            [
                entry("POST", "Patient", patient("G")),
                entry("PUT", "Patient/t-3", patient("G", id="not-t-3")),
            ],
            400,
        ),
        (
            [
                entry("DELETE", "Patient/keep"),
                entry("GET", "NoSuchType/1"),
            ],
            404,
        ),
    ]
    for entries, code in cases:
        outcome(post_bundle(client, "transaction", entries), code)
    assert versions_written(client) == before
    assert read(client, "Patient/keep")["meta"]["versionId"] == "1"
    assert total(client) == 1
    assert total(client, "Observation") == 0


# -- transaction: references -----------------------------------------------------------------------
def test_transaction_resolves_urn_uuid_references(client: TestClient) -> None:
    pat_url = "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"
    org_url = "urn:uuid:7b0b8a6f-2a4e-4d0a-9b61-1b1b1b1b1b1b"
    enc_url = "urn:uuid:88888888-2a4e-4d0a-9b61-1b1b1b1b1b1b"
    obs = observation(
        pat_url,
        encounter={"reference": enc_url},
        performer=[{"reference": org_url}, {"reference": pat_url}],
        extension=[{"url": "http://example.org/ext", "valueReference": {"reference": org_url}}],
        component=[
            {
                "code": {"text": "note"},
                "valueString": "x",
                "extension": [{"url": "http://example.org/by", "valueReference": {"reference": pat_url}}],
            }
        ],
    )
    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": pat_url},
        "serviceProvider": {"reference": org_url},
    }
    r = post_bundle(
        client,
        "transaction",
        [
            entry("POST", "Observation", obs),
            entry(
                "POST",
                "Patient",
                patient("Ref", managingOrganization={"reference": org_url}),
                fullUrl=pat_url,
            ),
            entry(
                "POST", "Organization", {"resourceType": "Organization", "name": "Clinic"}, fullUrl=org_url
            ),
            entry("POST", "Encounter", encounter, fullUrl=enc_url),
        ],
    )
    entries = response_bundle(r, "transaction-response", 4)
    assert [status(e) for e in entries] == ["201"] * 4
    assert [ident(e)[0] for e in entries] == ["Observation", "Patient", "Organization", "Encounter"]
    obs_id, pid, org_id, enc_id = (ident(e)[1] for e in entries)
    for e in entries:
        assert e["response"]["etag"] == 'W/"1"'
        assert ident(e)[2] == "1"
    stored = read(client, f"Observation/{obs_id}")
    assert stored["subject"]["reference"] == f"Patient/{pid}"
    assert stored["encounter"]["reference"] == f"Encounter/{enc_id}"
    assert [p["reference"] for p in stored["performer"]] == [f"Organization/{org_id}", f"Patient/{pid}"]
    assert stored["extension"][0]["valueReference"]["reference"] == f"Organization/{org_id}"
    assert stored["component"][0]["extension"][0]["valueReference"]["reference"] == f"Patient/{pid}"
    assert read(client, f"Patient/{pid}")["managingOrganization"]["reference"] == f"Organization/{org_id}"
    assert read(client, f"Encounter/{enc_id}")["subject"]["reference"] == f"Patient/{pid}"
    # The index holds the resolved references.
    assert total(client, "Observation", subject=f"Patient/{pid}") == 1
    assert total(client, "Observation", performer=f"Organization/{org_id}") == 1
    assert total(client, "Encounter", patient=pid) == 1
    assert "urn:uuid" not in json.dumps(client.get("/fhir/_history").json())


def test_transaction_unresolved_urn_uuid_is_refused(client: TestClient) -> None:
    """A ``urn:uuid`` reference to no entry of the Bundle cannot be resolved: 400, nothing written."""
    pat_url = "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"
    r = post_bundle(
        client,
        "transaction",
        [
            entry("POST", "Patient", patient("Ref"), fullUrl=pat_url),
            entry("POST", "Observation", observation("urn:uuid:00000000-bfdc-4613-8bf2-c5e300945f0a")),
        ],
    )
    assert "urn:uuid:00000000" in outcome(r, 400)
    assert versions_written(client) == 0


def test_transaction_conditional_references(client: TestClient) -> None:
    pid = client.post("/fhir/Patient", json=patient("Cond", identifier="cr-1")).json()["id"]
    r = post_bundle(
        client,
        "transaction",
        [
            entry("POST", "Observation", observation(f"Patient?identifier={SYS}|cr-1")),
            entry(
                "POST",
                "Observation",
                observation("Patient/" + pid, performer=[{"reference": f"Patient?identifier={SYS}|cr-1"}]),
            ),
        ],
    )
    entries = response_bundle(r, "transaction-response", 2)
    first = read(client, "Observation/" + ident(entries[0])[1])
    assert first["subject"]["reference"] == f"Patient/{pid}"
    second = read(client, "Observation/" + ident(entries[1])[1])
    assert second["performer"][0]["reference"] == f"Patient/{pid}"
    client.post("/fhir/Patient", json=patient("Twin", identifier="cr-2"))
    client.post("/fhir/Patient", json=patient("Twin", identifier="cr-2"))
    r = post_bundle(
        client, "transaction", [entry("POST", "Observation", observation(f"Patient?identifier={SYS}|cr-2"))]
    )
    outcome(r, 412, "multiple-matches")
    r = post_bundle(
        client, "transaction", [entry("POST", "Observation", observation(f"Patient?identifier={SYS}|cr-3"))]
    )
    outcome(r, 404)
    assert total(client, "Observation") == 2


def test_transaction_conditional_reference_to_conditional_create(client: TestClient) -> None:
    """A conditional reference may name a resource created by the same transaction (as HAPI allows)."""
    r = post_bundle(
        client,
        "transaction",
        [
            entry("POST", "Observation", observation(f"Patient?identifier={SYS}|same-tx")),
            entry(
                "POST",
                "Patient",
                patient("Same", identifier="same-tx"),
                ifNoneExist=f"identifier={SYS}|same-tx",
            ),
        ],
    )
    entries = response_bundle(r, "transaction-response", 2)
    assert [status(e) for e in entries] == ["201", "201"]
    pid = ident(entries[1])[1]
    assert read(client, "Observation/" + ident(entries[0])[1])["subject"]["reference"] == f"Patient/{pid}"
    assert total(client, identifier=f"{SYS}|same-tx") == 1


def test_transaction_if_none_exist(client: TestClient) -> None:
    existing = client.post("/fhir/Patient", json=patient("Old", identifier="ine-1")).json()["id"]
    pat_url = "urn:uuid:2a4e9b61-0000-4000-8000-0000000000aa"
    r = post_bundle(
        client,
        "transaction",
        [
            entry(
                "POST",
                "Patient",
                patient("New", identifier="ine-1"),
                fullUrl=pat_url,
                ifNoneExist=f"identifier={SYS}|ine-1",
            ),
            entry(
                "POST", "Patient", patient("Fresh", identifier="ine-2"), ifNoneExist=f"identifier={SYS}|ine-2"
            ),
            entry("POST", "Observation", observation(pat_url)),
        ],
    )
    entries = response_bundle(r, "transaction-response", 3)
    assert [status(e) for e in entries] == ["200", "201", "201"]
    assert ident(entries[0]) == ("Patient", existing, "1")
    assert read(client, f"Patient/{existing}")["name"][0]["family"] == "Old"
    assert (
        read(client, "Observation/" + ident(entries[2])[1])["subject"]["reference"] == f"Patient/{existing}"
    )
    assert total(client, identifier=f"{SYS}|ine-2") == 1
    client.post("/fhir/Patient", json=patient("Dup", identifier="ine-1"))
    r = post_bundle(
        client,
        "transaction",
        [
            entry("POST", "Organization", {"resourceType": "Organization", "name": "X"}),
            entry(
                "POST", "Patient", patient("New", identifier="ine-1"), ifNoneExist=f"identifier={SYS}|ine-1"
            ),
        ],
    )
    outcome(r, 412, "multiple-matches")
    assert total(client, "Organization") == 0


# -- transaction: methods ------------------------------------------------------------------------
def test_transaction_put_delete_patch_get(client: TestClient) -> None:
    client.put("/fhir/Patient/upd", json=patient("Before", id="upd"))
    client.put("/fhir/Patient/del", json=patient("Doomed", id="del"))
    client.put("/fhir/Patient/pat", json=patient("Patchme", id="pat"))
    client.put("/fhir/Patient/same", json=patient("Same", id="same"))
    client.put("/fhir/Patient/cond", json=patient("Cond", id="cond", identifier="c-1"))
    ops = [{"op": "replace", "path": "/gender", "value": "female"}]
    r = post_bundle(
        client,
        "transaction",
        [
            entry("PUT", "Patient/new", patient("Created", id="new")),
            entry("PUT", "Patient/upd", patient("After", id="upd"), ifMatch='W/"1"'),
            entry("DELETE", "Patient/del"),
            entry("PATCH", "Patient/pat", binary_patch(ops)),
            entry("PUT", "Patient/same", patient("Same", id="same")),
            entry("PUT", f"Patient?identifier={SYS}|c-1", patient("Cond2", identifier="c-1")),
            entry("GET", "Patient/upd"),
            entry("GET", "Patient/pat/_history/1"),
            entry("DELETE", f"Patient?identifier={SYS}|nobody"),
        ],
    )
    entries = response_bundle(r, "transaction-response", 9)
    assert [status(e) for e in entries] == ["201", "200", "204", "200", "200", "200", "200", "200", "204"]
    assert ident(entries[0]) == ("Patient", "new", "1")
    assert ident(entries[1]) == ("Patient", "upd", "2")
    assert ident(entries[3]) == ("Patient", "pat", "2")
    assert ident(entries[4]) == ("Patient", "same", "1")
    assert ident(entries[5]) == ("Patient", "cond", "2")
    for e, version in zip([entries[i] for i in (0, 1, 3, 4, 5)], "12212", strict=True):
        assert e["response"]["etag"] == f'W/"{version}"'
    assert entries[6]["resource"]["name"][0]["family"] == "After"
    assert entries[6]["resource"]["meta"]["versionId"] == "2"
    assert entries[7]["resource"]["gender"] == "male"
    assert read(client, "Patient/new")["name"][0]["family"] == "Created"
    assert read(client, "Patient/pat")["gender"] == "female"
    assert read(client, "Patient/cond")["name"][0]["family"] == "Cond2"
    assert client.get("/fhir/Patient/del").status_code == 410
    assert read(client, "Patient/same")["meta"]["versionId"] == "1"
    # Conditional delete and conditional patch entries.
    r = post_bundle(
        client,
        "transaction",
        [
            entry("DELETE", f"Patient?identifier={SYS}|c-1"),
            entry(
                "PATCH",
                "Patient/new",
                binary_patch([{"op": "add", "path": "/birthDate", "value": "2001-02-03"}]),
            ),
        ],
    )
    entries = response_bundle(r, "transaction-response", 2)
    assert [status(e) for e in entries] == ["204", "200"]
    assert client.get("/fhir/Patient/cond").status_code == 410
    assert read(client, "Patient/new")["birthDate"] == "2001-02-03"


def test_transaction_processing_order(client: TestClient) -> None:
    client.put("/fhir/Patient/gone", json=patient("Gone", id="gone", identifier="ord-1"))
    r = post_bundle(
        client,
        "transaction",
        [
            entry("GET", "Patient?family=Posted"),
            entry("GET", "Patient/put-1"),
            entry("PUT", "Patient/put-1", patient("Put", id="put-1")),
            entry(
                "POST",
                "Patient",
                patient("Posted", identifier="ord-1"),
                ifNoneExist=f"identifier={SYS}|ord-1",
            ),
            entry("GET", "Patient?identifier=" + f"{SYS}|ord-1"),
            entry("DELETE", "Patient/gone"),
        ],
    )
    entries = response_bundle(r, "transaction-response", 6)
    assert [status(e) for e in entries] == ["200", "200", "201", "201", "200", "204"]
    # GETs run last: they see what the transaction wrote.
    posted = ident(entries[3])[1]
    assert posted != "gone"
    assert [e["resource"]["id"] for e in entries[0]["resource"]["entry"]] == [posted]
    assert entries[1]["resource"]["id"] == "put-1"
    assert entries[1]["resource"]["meta"]["versionId"] == "1"
    # The DELETE ran before the POST: its ifNoneExist no longer matches the deleted resource.
    assert [e["resource"]["id"] for e in entries[4]["resource"]["entry"]] == [posted]
    assert client.get("/fhir/Patient/gone").status_code == 410


def test_transaction_duplicate_entries_are_refused(client: TestClient) -> None:
    client.put("/fhir/Patient/dup", json=patient("Dup", id="dup", identifier="dup-1"))
    urn = "urn:uuid:9d0c4d4e-0000-4000-8000-000000000001"
    cases = [
        [
            entry("PUT", "Patient/dup", patient("A", id="dup")),
            entry("PUT", "Patient/dup", patient("B", id="dup")),
        ],
        [entry("PUT", "Patient/dup", patient("A", id="dup")), entry("DELETE", "Patient/dup")],
        [
            entry(
                "PATCH",
                "Patient/dup",
                binary_patch([{"op": "replace", "path": "/gender", "value": "female"}]),
            ),
            entry("PUT", "Patient/dup", patient("B", id="dup")),
        ],
        [
            entry("PUT", "Patient/dup", patient("A", id="dup")),
            entry("DELETE", f"Patient?identifier={SYS}|dup-1"),
        ],
        [
            entry("PUT", f"Patient?identifier={SYS}|dup-1", patient("A", identifier="dup-1")),
            entry(
                "PATCH",
                "Patient/dup",
                binary_patch([{"op": "replace", "path": "/gender", "value": "female"}]),
            ),
        ],
        [
            entry("POST", "Patient", patient("A"), fullUrl=urn),
            entry("POST", "Patient", patient("B"), fullUrl=urn),
        ],
    ]
    for entries in cases:
        outcome(post_bundle(client, "transaction", entries), 400)
    assert versions_written(client) == 1
    assert read(client, "Patient/dup")["name"][0]["family"] == "Dup"


def test_transaction_response_in_request_order(client: TestClient) -> None:
    client.put("/fhir/Patient/x1", json=patient("X1", id="x1"))
    client.put("/fhir/Patient/x0", json=patient("X0", id="x0"))
    r = post_bundle(
        client,
        "transaction",
        [
            entry("GET", "Patient/x1"),
            entry("PUT", "Patient/x2", patient("X2", id="x2")),
            entry("POST", "Organization", {"resourceType": "Organization", "name": "O"}),
            entry("DELETE", "Patient/x0"),
            entry("POST", "Patient", patient("X3")),
        ],
    )
    entries = response_bundle(r, "transaction-response", 5)
    assert [status(e) for e in entries] == ["200", "201", "201", "204", "201"]
    assert entries[0]["resource"]["id"] == "x1"
    assert ident(entries[1])[:2] == ("Patient", "x2")
    assert ident(entries[2])[0] == "Organization"
    assert ident(entries[4])[0] == "Patient"
    for e in (entries[1], entries[2], entries[4]):
        assert e["response"]["etag"] == 'W/"1"'
        assert e["response"]["lastModified"].endswith("Z")


def test_bundle_shape_errors(client: TestClient) -> None:
    outcome(client.post("/fhir", json={"resourceType": "Patient"}), 400)
    outcome(client.post("/fhir", json={"resourceType": "Bundle", "type": "collection", "entry": []}), 400)
    outcome(post_bundle(client, "transaction", [{"resource": patient()}]), 400)
    outcome(post_bundle(client, "transaction", [entry("FETCH", "Patient")]), 400)
    outcome(post_bundle(client, "transaction", [entry("POST", "Patient")]), 400)
    empty = post_bundle(client, "transaction", [])
    assert empty.status_code == 200
    assert empty.json()["type"] == "transaction-response"
    assert versions_written(client) == 0
