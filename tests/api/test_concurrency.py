"""Concurrent writers over real HTTP, and the guards on conditional interactions and transactions."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from fastapi.testclient import TestClient

FHIR_JSON = {"Content-Type": "application/fhir+json"}
PATIENT: dict[str, Any] = {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "dup"}]}


def _parallel(count: int, call: Any) -> list[httpx.Response]:
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda _i: call(), range(count)))


def test_concurrent_conditional_creates_make_one_resource(server_url: str, server_token: str) -> None:
    with httpx.Client(
        base_url=server_url, timeout=30, headers={"Authorization": f"Bearer {server_token}"}
    ) as http:
        for _round in range(3):
            statuses = Counter(
                r.status_code
                for r in _parallel(
                    6,
                    lambda: http.post(
                        "/Patient",
                        json=PATIENT,
                        headers={**FHIR_JSON, "If-None-Exist": "identifier=urn:x|dup"},
                    ),
                )
            )
            assert statuses[500] == 0 and statuses[412] == 0, statuses
        assert http.get("/Patient", params={"identifier": "urn:x|dup"}).json()["total"] == 1


def test_concurrent_versioned_updates_conflict_cleanly(server_url: str, server_token: str) -> None:
    with httpx.Client(
        base_url=server_url, timeout=30, headers={"Authorization": f"Bearer {server_token}"}
    ) as http:
        assert http.put("/Patient/p1", json={**PATIENT, "id": "p1"}, headers=FHIR_JSON).status_code == 201
        responses = _parallel(
            6,
            lambda: http.put(
                "/Patient/p1",
                json={**PATIENT, "id": "p1", "gender": "female"},
                headers={**FHIR_JSON, "If-Match": 'W/"1"'},
            ),
        )
        assert sorted(r.status_code for r in responses) == [200] + [412] * 5
        assert http.get("/Patient/p1").json()["meta"]["versionId"] == "2"


def test_concurrent_puts_to_a_new_id_never_fail_with_500(server_url: str, server_token: str) -> None:
    with httpx.Client(
        base_url=server_url, timeout=30, headers={"Authorization": f"Bearer {server_token}"}
    ) as http:
        for n in range(3):
            url, body = f"/Patient/new{n}", {**PATIENT, "id": f"new{n}"}

            def put(url: str = url, body: dict[str, Any] = body) -> httpx.Response:
                return http.put(url, json=body, headers=FHIR_JSON)

            statuses = [r.status_code for r in _parallel(6, put)]
            assert statuses.count(201) == 1 and set(statuses) <= {200, 201}, statuses
            assert http.get(url).json()["meta"]["versionId"] == "1"


def test_conditional_interactions_need_real_criteria(client: TestClient) -> None:
    client.put("/fhir/Patient/p1", json={**PATIENT, "id": "p1"})
    for query in ("_pretty=true", "_count=1", "identifier=urn:x|dup&_summary=count", ""):
        assert client.delete(f"/fhir/Patient?{query}").status_code == 400, query
        put = client.put(f"/fhir/Patient?{query}", json={"resourceType": "Patient", "gender": "male"})
        assert put.status_code == 400, query
    dup = client.post(
        "/fhir/Patient", json=PATIENT, headers={"If-None-Exist": "identifier=urn:x|dup&_count=5"}
    )
    assert dup.status_code == 400
    assert client.get("/fhir/Patient").json()["total"] == 1
    assert client.get("/fhir/Patient/p1").json()["meta"]["versionId"] == "1"


def _transaction(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def test_transaction_put_refuses_invalid_ids(client: TestClient) -> None:
    for rid in ("bad id$", "x" * 65):
        bundle = _transaction(
            {"resource": {"resourceType": "Patient"}, "request": {"method": "PUT", "url": f"Patient/{rid}"}}
        )
        r = client.post("/fhir", json=bundle)
        assert r.status_code == 400, r.text
        assert "invalid resource id" in r.json()["issue"][0]["diagnostics"]
    assert client.get("/fhir/Patient").json()["total"] == 0


def test_identical_conditional_creates_in_one_transaction_make_one_resource(client: TestClient) -> None:
    entry = {
        "resource": PATIENT,
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:x|dup"},
    }
    r = client.post("/fhir", json=_transaction(entry, entry))
    assert r.status_code == 200, r.text
    responses = [e["response"] for e in r.json()["entry"]]
    assert [x["status"] for x in responses] == ["201 Created", "200 OK"]
    assert responses[0]["location"] == responses[1]["location"]
    assert client.get("/fhir/Patient").json()["total"] == 1


def test_malformed_bundles_are_refused(client: TestClient) -> None:
    bad = [
        {"resourceType": "Bundle", "type": "transaction", "entry": 5},
        _transaction({"resource": [1], "request": {"method": "PATCH", "url": "Patient/p1"}}),
        _transaction(
            {
                "resource": {"resourceType": "Binary", "data": 5},
                "request": {"method": "PATCH", "url": "Patient/p1"},
            }
        ),
    ]
    for bundle in bad:
        r = client.post("/fhir", json=bundle)
        assert r.status_code == 400, r.text
        assert r.json()["resourceType"] == "OperationOutcome"


def test_batch_reports_an_unexpected_failure_per_entry(client: TestClient, monkeypatch: Any) -> None:
    from sharedcare.fhir.service import FhirService

    original = FhirService.create_in

    def flaky(self: FhirService, conn: Any, res: dict[str, Any], **kw: Any) -> Any:
        if res.get("gender") == "other":
            raise RuntimeError("boom")
        return original(self, conn, res, **kw)

    monkeypatch.setattr(FhirService, "create_in", flaky)
    entries = [
        {
            "resource": {"resourceType": "Patient", "gender": g},
            "request": {"method": "POST", "url": "Patient"},
        }
        for g in ("male", "other", "female")
    ]
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": entries})
    assert r.status_code == 200
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses == ["201 Created", "500", "201 Created"]
    assert client.get("/fhir/Patient").json()["total"] == 2


def test_search_limits_refuse_unbounded_work(client: TestClient) -> None:
    too_many_values = ",".join(["a"] * 101)
    deep_chain = "Organization?" + ".".join(["partof"] * 5) + ".name=x"
    nested_has = "Patient?" + "_has:Observation:subject:" * 5 + "code=x"
    for url in (f"Patient?name={too_many_values}", deep_chain, nested_has):
        r = client.get(f"/fhir/{url}")
        assert r.status_code == 400, url
        assert r.json()["issue"][0]["code"] == "too-costly"
    assert client.get("/fhir/Patient?name=" + ",".join(["a"] * 100)).status_code == 200


def test_included_resources_are_bounded_per_page(client: TestClient, monkeypatch: Any) -> None:
    from sharedcare.fhir.search import engine

    monkeypatch.setattr(engine, "MAX_INCLUDED", 3)
    patient = {"resourceType": "Patient", "id": "p"}
    observations = [
        {
            "resourceType": "Observation",
            "id": f"o{i}",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": "Patient/p"},
        }
        for i in range(5)
    ]
    for res in (patient, *observations):
        assert client.put(f"/fhir/{res['resourceType']}/{res['id']}", json=res).status_code == 201
    bundle = client.get("/fhir/Patient?_id=p&_revinclude=Observation:subject").json()
    modes = Counter(e["search"]["mode"] for e in bundle["entry"])
    assert modes == {"match": 1, "include": 3, "outcome": 1}
    outcome = next(e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome")
    assert outcome["issue"][0]["code"] == "too-costly"
    full = client.get("/fhir/Observation?subject=Patient/p&_include=Observation:subject").json()
    assert Counter(e["search"]["mode"] for e in full["entry"]) == {"match": 5, "include": 1}
