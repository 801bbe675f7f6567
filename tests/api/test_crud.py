"""Create, read, vread, update, patch, delete and history over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "name": [{"family": "Muller", "given": ["Jean"]}],
    "gender": "male",
    "birthDate": "1980-05-02",
}


def test_create_read_headers(client: TestClient) -> None:
    r = client.post("/fhir/Patient", json=PATIENT)
    assert r.status_code == 201
    body = r.json()
    pid = body["id"]
    assert body["meta"]["versionId"] == "1"
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["location"] == f"http://testserver/fhir/Patient/{pid}/_history/1"
    assert r.headers["content-type"].startswith("application/fhir+json")
    got = client.get(f"/fhir/Patient/{pid}")
    assert got.status_code == 200
    assert got.json() == body
    assert got.headers["etag"] == 'W/"1"'
    assert "last-modified" in got.headers


def test_update_versions_and_if_match(client: TestClient) -> None:
    pid = client.post("/fhir/Patient", json=PATIENT).json()["id"]
    r = client.put(
        f"/fhir/Patient/{pid}", json={**PATIENT, "id": pid, "gender": "female"}, headers={"If-Match": 'W/"1"'}
    )
    assert r.status_code == 200
    assert r.headers["etag"] == 'W/"2"'
    stale = client.put(f"/fhir/Patient/{pid}", json={**PATIENT, "id": pid}, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"
    assert client.get(f"/fhir/Patient/{pid}").json()["gender"] == "female"
    assert client.get(f"/fhir/Patient/{pid}/_history/1").json()["gender"] == "male"
    hist = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert hist["type"] == "history"
    assert hist["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in hist["entry"]] == ["2", "1"]


def test_delete_then_gone_and_vread(client: TestClient) -> None:
    pid = client.post("/fhir/Patient", json=PATIENT).json()["id"]
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 200
    assert client.get(f"/fhir/Patient/{pid}").status_code == 410
    assert client.get(f"/fhir/Patient/{pid}/_history/1").status_code == 200
    assert client.get("/fhir/Patient", params={"_id": pid}).json()["total"] == 0


def test_invalid_resource_rejected_with_expression(client: TestClient) -> None:
    r = client.post("/fhir/Patient", json={**PATIENT, "gender": "mal"})
    assert r.status_code == 422
    issues = r.json()["issue"]
    assert any("Patient.gender" in i.get("expression", []) for i in issues)
    assert client.get("/fhir/Patient").json()["total"] == 0
