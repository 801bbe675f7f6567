"""Every non-search FHIR interaction over HTTP, with exact statuses, headers and bodies.

Runs on SQLite and PostgreSQL through the ``client`` fixture. Covers read/vread/update/patch/
delete with their conditional forms, ``Prefer``, history (instance, type, system; ``_since``,
``_at``, ``_count`` paging), error handling, ``$validate`` and the CapabilityStatement.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from sharedcare.app import create_app
from sharedcare.fhir.definitions import definitions
from sharedcare.settings import Settings
from support import signed_in_client

BASE = "http://testserver/fhir"
FHIR_JSON = "application/fhir+json; charset=utf-8"
JSON_PATCH = {"Content-Type": "application/json-patch+json"}
SYS = "urn:oid:1.2.3.4"
PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "name": [{"family": "Muller", "given": ["Jean"]}],
    "gender": "male",
    "birthDate": "1980-05-02",
}


# -- helpers -------------------------------------------------------------------------------------
def patient(**extra: Any) -> dict[str, Any]:
    """A valid Patient with ``extra`` elements merged in."""
    return {**json.loads(json.dumps(PATIENT)), **extra}


def with_identifier(value: str, **extra: Any) -> dict[str, Any]:
    """A valid Patient carrying the identifier ``SYS|value``."""
    return patient(identifier=[{"system": SYS, "value": value}], **extra)


def create(client: TestClient, res: dict[str, Any] | None = None) -> dict[str, Any]:
    """POST a resource (a Patient by default) and return the stored body."""
    res = res or patient()
    r = client.post(f"/fhir/{res['resourceType']}", json=res)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def outcome(r: httpx.Response, status: int, code: str | None = None) -> list[dict[str, Any]]:
    """Assert ``r`` is an OperationOutcome with ``status`` (and an issue ``code``); return the issues."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    issues: list[dict[str, Any]] = body["issue"]
    assert issues
    if code is not None:
        assert code in [i["code"] for i in issues], issues
    if status >= 400:
        assert issues[0]["severity"] in ("error", "fatal")
        assert issues[0]["diagnostics"]
    return issues


def assert_version_headers(r: httpx.Response, rtype: str, rid: str, version: int) -> None:
    """ETag, Content-Location, Last-Modified and Content-Type of a response carrying one version."""
    assert r.headers["etag"] == f'W/"{version}"'
    assert r.headers["content-location"] == f"{BASE}/{rtype}/{rid}/_history/{version}"
    assert r.headers["content-type"] == FHIR_JSON
    if r.content:
        stamp = datetime.fromisoformat(r.json()["meta"]["lastUpdated"].replace("Z", "+00:00"))
        assert parsedate_to_datetime(r.headers["last-modified"]) == stamp.replace(microsecond=0)
    else:
        assert parsedate_to_datetime(r.headers["last-modified"]).tzinfo is not None


def total(client: TestClient, rtype: str = "Patient", **params: str) -> int:
    """The search total of ``rtype`` for ``params``."""
    r = client.get(f"/fhir/{rtype}", params=params)
    assert r.status_code == 200, r.text
    count: int = r.json()["total"]
    return count


def history_total(client: TestClient) -> int:
    """How many versions the whole system holds."""
    r = client.get("/fhir/_history")
    assert r.status_code == 200
    count: int = r.json()["total"]
    return count


@pytest.fixture
def small_client(settings: Settings) -> Iterator[TestClient]:
    """A client on an app that accepts request bodies of at most 1000 bytes."""
    small = settings.model_copy(update={"max_request_bytes": 1000})
    with signed_in_client(create_app(small), small) as c:
        yield c


# -- read / vread --------------------------------------------------------------------------------
def test_read_returns_resource_with_version_headers(client: TestClient) -> None:
    created = create(client)
    pid = created["id"]
    r = client.get(f"/fhir/Patient/{pid}")
    assert r.status_code == 200
    assert r.json() == created
    assert r.json()["meta"]["versionId"] == "1"
    assert_version_headers(r, "Patient", pid, 1)
    assert "location" not in r.headers


def test_create_ignores_client_id_and_meta(client: TestClient) -> None:
    r = client.post(
        "/fhir/Patient", json=patient(id="chosen", meta={"versionId": "7", "profile": ["http://x/p"]})
    )
    assert r.status_code == 201
    body = r.json()
    assert body["id"] != "chosen"
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["profile"] == ["http://x/p"]
    assert r.headers["location"] == f"{BASE}/Patient/{body['id']}/_history/1"
    assert_version_headers(r, "Patient", body["id"], 1)
    assert client.get("/fhir/Patient/chosen").status_code == 404


def test_read_unknown_id_and_type(client: TestClient) -> None:
    outcome(client.get("/fhir/Patient/does-not-exist"), 404, "not-found")
    outcome(client.get("/fhir/NoSuchType/1"), 404, "not-found")
    outcome(client.get("/fhir/Patient/does-not-exist/_history/1"), 404, "not-found")


def test_vread_each_version(client: TestClient) -> None:
    pid = create(client)["id"]
    r2 = client.put(f"/fhir/Patient/{pid}", json=patient(id=pid, gender="female"))
    assert r2.status_code == 200
    v1 = client.get(f"/fhir/Patient/{pid}/_history/1")
    assert v1.status_code == 200
    assert v1.json()["gender"] == "male"
    assert v1.json()["meta"]["versionId"] == "1"
    assert_version_headers(v1, "Patient", pid, 1)
    v2 = client.get(f"/fhir/Patient/{pid}/_history/2")
    assert v2.status_code == 200
    assert v2.json() == r2.json()
    assert_version_headers(v2, "Patient", pid, 2)
    outcome(client.get(f"/fhir/Patient/{pid}/_history/3"), 404, "not-found")
    outcome(client.get(f"/fhir/Patient/{pid}/_history/abc"), 404, "not-found")


def test_if_none_match_on_read(client: TestClient) -> None:
    pid = create(client)["id"]
    r = client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"1"'})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == 'W/"1"'
    for same in ('"1"', 'W/"0", W/"1"', "*"):
        hit = client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": same})
        assert hit.status_code == 304, same
        assert hit.content == b""
    other = client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"7"'})
    assert other.status_code == 200
    assert other.json()["id"] == pid
    client.put(f"/fhir/Patient/{pid}", json=patient(id=pid, gender="other"))
    stale = client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"1"'})
    assert stale.status_code == 200
    assert stale.json()["gender"] == "other"
    assert stale.headers["etag"] == 'W/"2"'


# -- update --------------------------------------------------------------------------------------
def test_update_as_create_with_client_id(client: TestClient) -> None:
    r = client.put("/fhir/Patient/pat-1", json=patient(id="pat-1"))
    assert r.status_code == 201
    body = r.json()
    assert body["id"] == "pat-1"
    assert body["meta"]["versionId"] == "1"
    assert r.headers["location"] == f"{BASE}/Patient/pat-1/_history/1"
    assert_version_headers(r, "Patient", "pat-1", 1)
    assert client.get("/fhir/Patient/pat-1").json() == body


def test_update_new_version(client: TestClient) -> None:
    pid = create(client)["id"]
    r = client.put(f"/fhir/Patient/{pid}", json=patient(id=pid, gender="female"))
    assert r.status_code == 200
    assert r.json()["gender"] == "female"
    assert r.json()["meta"]["versionId"] == "2"
    assert_version_headers(r, "Patient", pid, 2)
    assert "location" not in r.headers
    assert client.get(f"/fhir/Patient/{pid}").json() == r.json()


def test_no_change_update_keeps_version(client: TestClient) -> None:
    created = create(client)
    pid = created["id"]
    r = client.put(f"/fhir/Patient/{pid}", json=patient(id=pid))
    assert r.status_code == 200
    assert r.json() == created
    assert_version_headers(r, "Patient", pid, 1)
    # Sending back what was read (meta included) is not a change either.
    again = client.put(f"/fhir/Patient/{pid}", json=created)
    assert again.status_code == 200
    assert again.headers["etag"] == 'W/"1"'
    hist = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert hist["total"] == 1


def test_update_rejections_change_nothing(client: TestClient) -> None:
    created = create(client)
    pid = created["id"]
    issues = outcome(client.put(f"/fhir/Patient/{pid}", json=patient(id="other")), 400, "invalid")
    assert "does not match" in issues[0]["diagnostics"]
    outcome(client.put(f"/fhir/Patient/{pid}", json=patient()), 400, "invalid")
    outcome(
        client.put(
            f"/fhir/Patient/{pid}", json={"resourceType": "Observation", "id": pid, "status": "final"}
        ),
        400,
        "invalid",
    )
    outcome(client.put("/fhir/Patient/bad_id!", json=patient(id="bad_id!")), 400, "invalid")
    invalid = outcome(client.put(f"/fhir/Patient/{pid}", json=patient(id=pid, gender="mal")), 422)
    assert any("Patient.gender" in i.get("expression", []) for i in invalid)
    assert client.get(f"/fhir/Patient/{pid}").json() == created
    assert client.get("/fhir/Patient/bad_id!").status_code == 404
    assert history_total(client) == 1


def test_if_match_on_update(client: TestClient) -> None:
    pid = create(client)["id"]
    ok = client.put(
        f"/fhir/Patient/{pid}", json=patient(id=pid, gender="female"), headers={"If-Match": 'W/"1"'}
    )
    assert ok.status_code == 200
    assert ok.headers["etag"] == 'W/"2"'
    issues = outcome(
        client.put(
            f"/fhir/Patient/{pid}", json=patient(id=pid, gender="other"), headers={"If-Match": 'W/"1"'}
        ),
        412,
        "conflict",
    )
    assert "version" in issues[0]["diagnostics"].lower()
    outcome(
        client.put(f"/fhir/Patient/{pid}", json=patient(id=pid, gender="other"), headers={"If-Match": "abc"}),
        400,
    )
    current = client.get(f"/fhir/Patient/{pid}")
    assert current.json()["gender"] == "female"
    assert current.headers["etag"] == 'W/"2"'


# -- conditional create / update / delete --------------------------------------------------------
def test_conditional_create(client: TestClient) -> None:
    header = {"If-None-Exist": f"identifier={SYS}|cc-1"}
    first = client.post("/fhir/Patient", json=with_identifier("cc-1"), headers=header)
    assert first.status_code == 201
    pid = first.json()["id"]
    assert first.headers["location"] == f"{BASE}/Patient/{pid}/_history/1"
    again = client.post("/fhir/Patient", json=with_identifier("cc-1", gender="female"), headers=header)
    assert again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["etag"] == 'W/"1"'
    assert again.headers["content-location"] == f"{BASE}/Patient/{pid}/_history/1"
    assert "location" not in again.headers
    assert total(client, identifier=f"{SYS}|cc-1") == 1
    create(client, with_identifier("cc-1"))
    outcome(
        client.post("/fhir/Patient", json=with_identifier("cc-1"), headers=header), 412, "multiple-matches"
    )
    assert total(client, identifier=f"{SYS}|cc-1") == 2
    outcome(client.post("/fhir/Patient", json=patient(), headers={"If-None-Exist": "nosuchparam=1"}), 400)
    assert total(client) == 2


def test_conditional_update(client: TestClient) -> None:
    url = f"/fhir/Patient?identifier={SYS}|cu-1"
    created = client.put(url, json=with_identifier("cu-1"))
    assert created.status_code == 201
    pid = created.json()["id"]
    assert created.headers["location"] == f"{BASE}/Patient/{pid}/_history/1"
    assert_version_headers(created, "Patient", pid, 1)
    updated = client.put(url, json=with_identifier("cu-1", gender="female"))
    assert updated.status_code == 200
    assert updated.json()["id"] == pid
    assert updated.json()["gender"] == "female"
    assert_version_headers(updated, "Patient", pid, 2)
    outcome(client.put(url, json=with_identifier("cu-1", id="someone-else")), 400)
    # No match with an id in the body: update-as-create with that id.
    made = client.put(f"/fhir/Patient?identifier={SYS}|cu-2", json=with_identifier("cu-2", id="cu-2"))
    assert made.status_code == 201
    assert made.json()["id"] == "cu-2"
    create(client, with_identifier("cu-1"))
    outcome(client.put(url, json=with_identifier("cu-1", gender="other")), 412, "multiple-matches")
    outcome(client.put("/fhir/Patient", json=with_identifier("cu-1")), 400)
    assert client.get(f"/fhir/Patient/{pid}").json()["gender"] == "female"
    assert total(client, identifier=f"{SYS}|cu-1") == 2


def test_conditional_delete(client: TestClient) -> None:
    pid = create(client, with_identifier("cd-1"))["id"]
    keep = create(client, with_identifier("cd-keep"))["id"]
    r = client.delete(f"/fhir/Patient?identifier={SYS}|cd-1")
    outcome(r, 200)
    outcome(client.get(f"/fhir/Patient/{pid}"), 410)
    # No match: nothing to do, still a success.
    outcome(client.delete(f"/fhir/Patient?identifier={SYS}|cd-none"), 200)
    create(client, with_identifier("cd-2"))
    create(client, with_identifier("cd-2"))
    outcome(client.delete(f"/fhir/Patient?identifier={SYS}|cd-2"), 412, "multiple-matches")
    assert total(client, identifier=f"{SYS}|cd-2") == 2
    outcome(client.delete("/fhir/Patient"), 400)
    assert client.get(f"/fhir/Patient/{keep}").status_code == 200
    assert total(client) == 3


# -- patch ---------------------------------------------------------------------------------------
def test_json_patch(client: TestClient) -> None:
    pid = create(client)["id"]
    ops = [
        {"op": "replace", "path": "/gender", "value": "female"},
        {"op": "add", "path": "/name/0/given/-", "value": "Marie"},
    ]
    r = client.patch(f"/fhir/Patient/{pid}", content=json.dumps(ops), headers=JSON_PATCH)
    assert r.status_code == 200
    body = r.json()
    assert body["gender"] == "female"
    assert body["name"][0]["given"] == ["Jean", "Marie"]
    assert body["meta"]["versionId"] == "2"
    assert_version_headers(r, "Patient", pid, 2)
    assert client.get(f"/fhir/Patient/{pid}").json() == body
    hist = client.get(f"/fhir/Patient/{pid}/_history").json()
    # As HAPI does, a history entry of a patch shows the resulting update (PUT).
    assert [e["request"]["method"] for e in hist["entry"]] == ["PUT", "POST"]


def test_json_patch_if_match(client: TestClient) -> None:
    pid = create(client)["id"]
    ops = json.dumps([{"op": "replace", "path": "/gender", "value": "female"}])
    ok = client.patch(f"/fhir/Patient/{pid}", content=ops, headers={**JSON_PATCH, "If-Match": 'W/"1"'})
    assert ok.status_code == 200
    assert ok.headers["etag"] == 'W/"2"'
    other = json.dumps([{"op": "replace", "path": "/gender", "value": "other"}])
    stale = client.patch(f"/fhir/Patient/{pid}", content=other, headers={**JSON_PATCH, "If-Match": 'W/"1"'})
    outcome(stale, 412, "conflict")
    assert client.get(f"/fhir/Patient/{pid}").json()["gender"] == "female"


def test_json_patch_rejections_change_nothing(client: TestClient) -> None:
    created = create(client)
    pid = created["id"]
    url = f"/fhir/Patient/{pid}"

    def send(ops: Any, headers: dict[str, str] = JSON_PATCH) -> httpx.Response:
        return client.patch(url, content=json.dumps(ops), headers=headers)

    outcome(send([{"op": "remove", "path": "/deceasedBoolean"}]), 422)
    outcome(send([{"op": "test", "path": "/gender", "value": "female"}]), 422)
    outcome(send([{"op": "frobnicate", "path": "/gender"}]), 422)
    outcome(send([{"op": "replace", "path": "/gender", "value": "xx"}]), 422)
    outcome(send({"op": "replace", "path": "/gender", "value": "female"}), 400)
    assert (
        "id" in outcome(send([{"op": "replace", "path": "/id", "value": "another"}]), 422)[0]["diagnostics"]
    )
    outcome(send([{"op": "replace", "path": "/resourceType", "value": "Group"}]), 422)
    wrong = [{"op": "replace", "path": "/gender", "value": "female"}]
    outcome(send(wrong, {"Content-Type": "application/json"}), 415, "not-supported")
    outcome(send(wrong, {"Content-Type": "application/fhir+json"}), 415, "not-supported")
    outcome(client.patch(url, content=b"not json", headers=JSON_PATCH), 400)
    outcome(client.patch("/fhir/Patient/unknown", content=json.dumps(wrong), headers=JSON_PATCH), 404)
    outcome(client.patch("/fhir/NoSuchType/1", content=json.dumps(wrong), headers=JSON_PATCH), 404)
    assert client.get(url).json() == created
    assert client.get("/fhir/Patient/another").status_code == 404
    assert history_total(client) == 1


def test_conditional_patch(client: TestClient) -> None:
    pid = create(client, with_identifier("cp-1"))["id"]
    ops = json.dumps([{"op": "replace", "path": "/gender", "value": "female"}])
    r = client.patch(f"/fhir/Patient?identifier={SYS}|cp-1", content=ops, headers=JSON_PATCH)
    assert r.status_code == 200
    assert r.json()["id"] == pid
    assert r.json()["gender"] == "female"
    assert_version_headers(r, "Patient", pid, 2)
    outcome(client.patch(f"/fhir/Patient?identifier={SYS}|cp-none", content=ops, headers=JSON_PATCH), 404)
    create(client, with_identifier("cp-2"))
    create(client, with_identifier("cp-2"))
    outcome(
        client.patch(f"/fhir/Patient?identifier={SYS}|cp-2", content=ops, headers=JSON_PATCH),
        412,
        "multiple-matches",
    )
    assert total(client, gender="female") == 1


# -- delete --------------------------------------------------------------------------------------
def test_delete_lifecycle(client: TestClient) -> None:
    created = create(client)
    pid = created["id"]
    r = client.delete(f"/fhir/Patient/{pid}")
    outcome(r, 200)
    assert r.headers["etag"] == 'W/"2"'
    gone = outcome(client.get(f"/fhir/Patient/{pid}"), 410, "deleted")
    assert pid in gone[0]["diagnostics"]
    v1 = client.get(f"/fhir/Patient/{pid}/_history/1")
    assert v1.status_code == 200
    assert v1.json() == created
    outcome(client.get(f"/fhir/Patient/{pid}/_history/2"), 410)
    assert total(client, _id=pid) == 0
    hist = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert hist["total"] == 2
    deletion = hist["entry"][0]
    assert "resource" not in deletion
    assert deletion["request"] == {"method": "DELETE", "url": f"Patient/{pid}"}
    assert deletion["response"]["status"].startswith("204")
    assert deletion["response"]["etag"] == 'W/"2"'
    # Deleting again changes nothing.
    outcome(client.delete(f"/fhir/Patient/{pid}"), 200)
    assert client.get(f"/fhir/Patient/{pid}/_history").json()["total"] == 2
    # A PUT brings it back as a new version.
    back = client.put(f"/fhir/Patient/{pid}", json=patient(id=pid, gender="female"))
    assert back.status_code == 201
    assert back.json()["meta"]["versionId"] == "3"
    assert back.headers["location"] == f"{BASE}/Patient/{pid}/_history/3"
    assert_version_headers(back, "Patient", pid, 3)
    read = client.get(f"/fhir/Patient/{pid}")
    assert read.status_code == 200
    assert read.json() == back.json()
    hist = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert [e["request"]["method"] for e in hist["entry"]] == ["PUT", "DELETE", "POST"]
    assert total(client, _id=pid) == 1


def test_patch_and_if_match_on_deleted(client: TestClient) -> None:
    pid = create(client)["id"]
    client.delete(f"/fhir/Patient/{pid}")
    ops = json.dumps([{"op": "replace", "path": "/gender", "value": "female"}])
    outcome(client.patch(f"/fhir/Patient/{pid}", content=ops, headers=JSON_PATCH), 410)
    outcome(
        client.put(f"/fhir/Patient/{pid}", json=patient(id=pid), headers={"If-Match": 'W/"2"'}),
        412,
        "conflict",
    )
    outcome(client.get(f"/fhir/Patient/{pid}"), 410)


# -- Prefer --------------------------------------------------------------------------------------
def test_prefer_return_on_create(client: TestClient) -> None:
    minimal = client.post("/fhir/Patient", json=patient(), headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201
    assert minimal.content == b""
    pid = minimal.headers["location"].split("/")[-3]
    assert minimal.headers["location"] == f"{BASE}/Patient/{pid}/_history/1"
    assert minimal.headers["etag"] == 'W/"1"'
    assert client.get(f"/fhir/Patient/{pid}").status_code == 200
    oo = client.post("/fhir/Patient", json=patient(), headers={"Prefer": "return=OperationOutcome"})
    issues = outcome(oo, 201)
    assert issues[0]["severity"] == "information"
    assert oo.headers["location"].startswith(f"{BASE}/Patient/")
    rep = client.post("/fhir/Patient", json=patient(), headers={"Prefer": "return=representation"})
    assert rep.status_code == 201
    assert rep.json()["resourceType"] == "Patient"
    assert rep.headers["location"] == f"{BASE}/Patient/{rep.json()['id']}/_history/1"
    assert total(client) == 3


def test_prefer_return_on_update_and_patch(client: TestClient) -> None:
    pid = create(client)["id"]
    r = client.put(
        f"/fhir/Patient/{pid}", json=patient(id=pid, gender="female"), headers={"Prefer": "return=minimal"}
    )
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["etag"] == 'W/"2"'
    assert r.headers["content-location"] == f"{BASE}/Patient/{pid}/_history/2"
    ops = json.dumps([{"op": "replace", "path": "/gender", "value": "other"}])
    p = client.patch(
        f"/fhir/Patient/{pid}", content=ops, headers={**JSON_PATCH, "Prefer": "return=OperationOutcome"}
    )
    assert outcome(p, 200)[0]["severity"] == "information"
    assert p.headers["etag"] == 'W/"3"'
    rep = client.put(
        f"/fhir/Patient/{pid}", json=patient(id=pid), headers={"Prefer": "return=representation"}
    )
    assert rep.status_code == 200
    assert rep.json()["meta"]["versionId"] == "4"
    assert rep.json()["gender"] == "male"


# -- history -------------------------------------------------------------------------------------
def test_instance_type_and_system_history(client: TestClient) -> None:
    pid = create(client)["id"]
    client.put(f"/fhir/Patient/{pid}", json=patient(id=pid, gender="female"))
    other = create(client)["id"]
    obs = create(
        client,
        {"resourceType": "Observation", "status": "final", "code": {"text": "weight"}},
    )["id"]
    client.delete(f"/fhir/Patient/{other}")

    inst = client.get(f"/fhir/Patient/{pid}/_history")
    assert inst.status_code == 200
    assert inst.headers["content-type"] == FHIR_JSON
    bundle = inst.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "history"
    assert bundle["total"] == 2
    assert bundle["link"][0] == {"relation": "self", "url": f"{BASE}/Patient/{pid}/_history"}
    first, second = bundle["entry"]
    assert first["fullUrl"] == f"{BASE}/Patient/{pid}"
    assert first["resource"]["meta"]["versionId"] == "2"
    assert first["request"] == {"method": "PUT", "url": f"Patient/{pid}"}
    assert first["response"]["status"].startswith("200")
    assert first["response"]["etag"] == 'W/"2"'
    assert first["response"]["lastModified"] == first["resource"]["meta"]["lastUpdated"]
    assert second["request"] == {"method": "POST", "url": "Patient"}
    assert second["response"]["status"].startswith("201")
    assert second["response"]["etag"] == 'W/"1"'

    typed = client.get("/fhir/Patient/_history").json()
    assert typed["total"] == 4
    assert [(e["fullUrl"].split("/")[-1], e["request"]["method"]) for e in typed["entry"]] == [
        (other, "DELETE"),
        (other, "POST"),
        (pid, "PUT"),
        (pid, "POST"),
    ]
    system = client.get("/fhir/_history").json()
    assert system["total"] == 5
    assert [e["fullUrl"] for e in system["entry"]] == [
        f"{BASE}/Patient/{other}",
        f"{BASE}/Observation/{obs}",
        f"{BASE}/Patient/{other}",
        f"{BASE}/Patient/{pid}",
        f"{BASE}/Patient/{pid}",
    ]
    for entry in system["entry"]:
        assert entry["request"]["method"] in ("POST", "PUT", "DELETE")
        assert entry["response"]["status"][:3] in ("200", "201", "204")
    assert client.get("/fhir/Observation/_history").json()["total"] == 1
    outcome(client.get("/fhir/Patient/unknown/_history"), 404)
    outcome(client.get("/fhir/NoSuchType/_history"), 404)


def test_history_count_paging(client: TestClient) -> None:
    pid = create(client)["id"]
    for i in range(1, 7):
        r = client.put(f"/fhir/Patient/{pid}", json=patient(id=pid, birthDate=f"19{80 + i}-01-01"))
        assert r.status_code == 200
    for path in (f"/fhir/Patient/{pid}/_history", "/fhir/Patient/_history", "/fhir/_history"):
        page = client.get(path, params={"_count": "3"})
        assert page.status_code == 200
        bundle = page.json()
        assert bundle["total"] == 7
        seen: list[str] = []
        pages = 0
        while True:
            pages += 1
            assert len(bundle["entry"]) <= 3
            seen += [e["resource"]["meta"]["versionId"] for e in bundle["entry"]]
            nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
            if not nxt:
                break
            assert nxt[0].startswith(f"{BASE}/")
            assert "_count=3" in nxt[0]
            page = client.get(nxt[0])
            assert page.status_code == 200
            bundle = page.json()
        assert seen == ["7", "6", "5", "4", "3", "2", "1"]
        assert pages == 3
    one = client.get(f"/fhir/Patient/{pid}/_history", params={"_count": "1"}).json()
    assert len(one["entry"]) == 1
    outcome(client.get(f"/fhir/Patient/{pid}/_history", params={"_count": "x"}), 400)


def test_history_since_and_at(client: TestClient) -> None:
    pid = create(client)["id"]
    stamps = [client.get(f"/fhir/Patient/{pid}").json()["meta"]["lastUpdated"]]
    for gender in ("female", "other"):
        time.sleep(0.01)
        r = client.put(f"/fhir/Patient/{pid}", json=patient(id=pid, gender=gender))
        stamps.append(r.json()["meta"]["lastUpdated"])
    time.sleep(0.01)
    obs = create(client, {"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
    stamps.append(obs["meta"]["lastUpdated"])

    def versions(path: str, **params: str) -> list[str]:
        r = client.get(path, params=params)
        assert r.status_code == 200, r.text
        return [
            f"{e['fullUrl'].split('/')[-2]}/{e['resource']['meta']['versionId']}"
            for e in r.json().get("entry", [])
        ]

    inst = f"/fhir/Patient/{pid}/_history"
    assert versions(inst, _since=stamps[1]) == ["Patient/3", "Patient/2"]
    assert versions(inst, _since=stamps[2]) == ["Patient/3"]
    assert versions("/fhir/Patient/_history", _since=stamps[2]) == ["Patient/3"]
    assert versions("/fhir/_history", _since=stamps[2]) == ["Observation/1", "Patient/3"]
    assert versions("/fhir/_history", _since="2999-01-01T00:00:00Z") == []
    assert versions(inst, _since="2000-01-01") == ["Patient/3", "Patient/2", "Patient/1"]
    # _at: the versions current at that moment.
    assert versions(inst, _at=stamps[1]) == ["Patient/2"]
    assert versions(inst, _at=stamps[0]) == ["Patient/1"]
    assert versions(inst, _at=stamps[3]) == ["Patient/3"]
    assert versions("/fhir/_history", _at=stamps[3]) == ["Observation/1", "Patient/3"]
    assert versions(inst, _at="1999") == []
    year = stamps[0][:4]
    assert versions(inst, _at=year) == ["Patient/3", "Patient/2", "Patient/1"]
    outcome(client.get(inst, params={"_since": "yesterday"}), 400)
    outcome(client.get("/fhir/_history", params={"_at": "not-a-date"}), 400)


# -- errors --------------------------------------------------------------------------------------
def test_unknown_resource_type(client: TestClient) -> None:
    for r in (
        client.get("/fhir/NoSuchType"),
        client.post("/fhir/NoSuchType", json={"resourceType": "NoSuchType"}),
        client.put("/fhir/NoSuchType/1", json={"resourceType": "NoSuchType", "id": "1"}),
        client.delete("/fhir/NoSuchType/1"),
    ):
        issues = outcome(r, 404, "not-found")
        assert "NoSuchType" in issues[0]["diagnostics"]


def test_malformed_and_non_fhir_bodies(client: TestClient) -> None:
    headers = {"Content-Type": "application/fhir+json"}
    outcome(
        client.post("/fhir/Patient", content=b'{"resourceType": "Patient",', headers=headers), 400, "invalid"
    )
    outcome(client.post("/fhir/Patient", content=b"", headers=headers), 400)
    outcome(client.post("/fhir/Patient", json={"name": "no resourceType"}), 400, "invalid")
    outcome(client.post("/fhir/Patient", json=[PATIENT]), 400, "invalid")
    outcome(client.post("/fhir/Patient", json="Patient"), 400, "invalid")
    outcome(client.post("/fhir/Patient", json={"resourceType": "Observation", "status": "final"}), 400)
    outcome(client.put("/fhir/Patient/x", content=b"{oops", headers=headers), 400)
    invalid = outcome(client.post("/fhir/Patient", json=patient(birthDate="02/05/1980")), 422)
    assert any("Patient.birthDate" in i.get("expression", []) for i in invalid)
    unknown_element = outcome(client.post("/fhir/Patient", json=patient(colour="blue")), 422)
    assert unknown_element
    assert total(client) == 0
    assert history_total(client) == 0


def test_xml_is_unsupported(client: TestClient) -> None:
    xml = b'<Patient xmlns="http://hl7.org/fhir"><gender value="male"/></Patient>'
    outcome(
        client.post("/fhir/Patient", content=xml, headers={"Content-Type": "application/fhir+xml"}),
        415,
        "not-supported",
    )
    outcome(
        client.put("/fhir/Patient/x", content=xml, headers={"Content-Type": "application/xml"}),
        415,
        "not-supported",
    )
    outcome(client.post("/fhir", content=b"<Bundle/>", headers={"Content-Type": "application/fhir+xml"}), 415)
    assert total(client) == 0


def test_format_xml_is_not_acceptable(client: TestClient) -> None:
    pid = create(client)["id"]
    for fmt in ("xml", "application/fhir+xml"):
        outcome(client.get(f"/fhir/Patient/{pid}", params={"_format": fmt}), 406, "not-supported")
        outcome(client.get("/fhir/Patient", params={"_format": fmt}), 406, "not-supported")
    ok = client.get(f"/fhir/Patient/{pid}", params={"_format": "json"})
    assert ok.status_code == 200
    assert client.get(f"/fhir/Patient/{pid}", params={"_format": "application/fhir+json"}).status_code == 200
    # A refused request writes nothing.
    outcome(client.post("/fhir/Patient", params={"_format": "xml"}, json=patient()), 406)
    outcome(client.put("/fhir/Patient/fmt", params={"_format": "xml"}, json=patient(id="fmt")), 406)
    outcome(client.delete(f"/fhir/Patient/{pid}", params={"_format": "xml"}), 406)
    assert total(client) == 1
    assert history_total(client) == 1


def test_pretty_output(client: TestClient) -> None:
    created = create(client)
    pid = created["id"]
    pretty = client.get(f"/fhir/Patient/{pid}", params={"_pretty": "true"})
    assert pretty.status_code == 200
    assert pretty.text.startswith('{\n  "resourceType": "Patient"')
    assert "\n    " in pretty.text
    assert pretty.json() == created
    plain = client.get(f"/fhir/Patient/{pid}")
    assert "\n" not in plain.text
    bundle = client.get("/fhir/Patient", params={"_pretty": "true"})
    assert bundle.text.startswith('{\n  "resourceType": "Bundle"')
    created_pretty = client.post("/fhir/Patient", params={"_pretty": "true"}, json=patient())
    assert created_pretty.status_code == 201
    assert created_pretty.text.startswith("{\n  ")


def test_body_over_limit_with_content_length(small_client: TestClient) -> None:
    big = patient(
        text={
            "status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml">' + "x" * 2000 + "</div>",
        }
    )
    body = json.dumps(big).encode()
    r = small_client.post("/fhir/Patient", content=body, headers={"Content-Type": "application/fhir+json"})
    issues = outcome(r, 413, "too-costly")
    assert "1000" in issues[0]["diagnostics"]
    outcome(
        small_client.put(
            "/fhir/Patient/big", content=body, headers={"Content-Type": "application/fhir+json"}
        ),
        413,
    )
    small = small_client.post("/fhir/Patient", json=patient())
    assert small.status_code == 201
    assert total(small_client) == 1
    assert small_client.get("/fhir/Patient/big").status_code == 404


def test_body_over_limit_streamed(small_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"resourceType": "Patient", "gender": "male", "name": [{"family": "'
        for _ in range(30):
            yield b"x" * 100
        yield b'"}]}'

    r = small_client.post(
        "/fhir/Patient", content=chunks(), headers={"Content-Type": "application/fhir+json"}
    )
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in r.request.headers
    outcome(r, 413, "too-costly")

    def small_chunks() -> Iterator[bytes]:
        yield b'{"resourceType": "Patient", '
        yield b'"gender": "female"}'

    ok = small_client.post(
        "/fhir/Patient", content=small_chunks(), headers={"Content-Type": "application/fhir+json"}
    )
    assert ok.status_code == 201
    assert ok.json()["gender"] == "female"
    assert total(small_client) == 1


# -- $validate -----------------------------------------------------------------------------------
def test_validate_type_level(client: TestClient) -> None:
    ok = client.post("/fhir/Patient/$validate", json=patient())
    issues = outcome(ok, 200)
    assert [i["severity"] for i in issues] == ["information"]
    bad = client.post("/fhir/Patient/$validate", json=patient(gender="mal", birthDate="yesterday"))
    issues = outcome(bad, 200)
    errors = [i for i in issues if i["severity"] == "error"]
    expressions = {x for i in errors for x in i.get("expression", [])}
    assert {"Patient.gender", "Patient.birthDate"} <= expressions
    wrapped = client.post(
        "/fhir/Patient/$validate",
        json={
            "resourceType": "Parameters",
            "parameter": [{"name": "resource", "resource": patient(gender="mal")}],
        },
    )
    assert any("Patient.gender" in i.get("expression", []) for i in outcome(wrapped, 200))
    good_wrapped = client.post(
        "/fhir/Patient/$validate",
        json={"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": patient()}]},
    )
    assert [i["severity"] for i in outcome(good_wrapped, 200)] == ["information"]
    outcome(client.post("/fhir/NoSuchType/$validate", json={"resourceType": "NoSuchType"}), 404)
    assert total(client) == 0


def test_validate_instance_level(client: TestClient) -> None:
    created = create(client)
    pid = created["id"]
    ok = client.post(f"/fhir/Patient/{pid}/$validate", json={**created, "gender": "female"})
    assert [i["severity"] for i in outcome(ok, 200)] == ["information"]
    bad = client.post(f"/fhir/Patient/{pid}/$validate", json={**created, "gender": "mal"})
    assert any(
        i["severity"] == "error" and "Patient.gender" in i.get("expression", []) for i in outcome(bad, 200)
    )
    # Validation never writes.
    assert client.get(f"/fhir/Patient/{pid}").json() == created


# -- CapabilityStatement -------------------------------------------------------------------------
def test_capability_statement(client: TestClient) -> None:
    r = client.get("/fhir/metadata")
    assert r.status_code == 200
    assert r.headers["content-type"] == FHIR_JSON
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1"
    assert cs["kind"] == "instance"
    assert cs["status"] == "active"
    assert "application/fhir+json" in cs["format"]
    assert cs["patchFormat"] == ["application/json-patch+json"]
    rest = cs["rest"][0]
    assert rest["mode"] == "server"
    assert {i["code"] for i in rest["interaction"]} >= {"transaction", "batch", "history-system"}
    resources = {res["type"]: res for res in rest["resource"]}
    assert set(resources) == set(definitions().resource_types)
    assert len(rest["resource"]) == len(resources)
    expected = {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "create",
        "search-type",
    }
    for rtype, res in resources.items():
        assert {i["code"] for i in res["interaction"]} == expected, rtype
        names = [p["name"] for p in res["searchParam"]]
        assert {"_id", "_lastUpdated"} <= set(names), rtype
        assert len(names) == len(set(names)), rtype
        assert res["versioning"] == "versioned-update"
        assert res["updateCreate"] is True
        assert res["conditionalCreate"] is True
        assert res["conditionalUpdate"] is True
        assert res["conditionalDelete"] == "single"
        assert res["conditionalRead"] == "not-match"
    patient_params = {p["name"]: p for p in resources["Patient"]["searchParam"]}
    assert patient_params["family"]["type"] == "string"
    assert patient_params["identifier"]["type"] == "token"
    assert patient_params["birthdate"]["type"] == "date"
    assert patient_params["general-practitioner"]["type"] == "reference"
    observation = {p["name"] for p in resources["Observation"]["searchParam"]}
    assert {"code", "subject", "patient", "date", "value-quantity", "code-value-quantity"} <= observation
    assert any(op["name"] == "everything" for op in resources["Patient"]["operation"])
    assert client.get("/fhir/metadata", params={"_format": "xml"}).status_code == 406


VALUES = {
    "string": "abc",
    "token": "http://example.org|abc",
    "date": "ge2020-01-01",
    "number": "5",
    "quantity": "5.4|http://unitsofmeasure.org|mg",
    "reference": "Patient/abc",
    "uri": "http://example.org/abc",
}


@pytest.mark.parametrize(
    "rtype", ["Patient", "Observation", "Encounter", "Condition", "MedicationRequest", "Organization"]
)
def test_advertised_search_params_work_in_strict_mode(client: TestClient, rtype: str) -> None:
    cs = client.get("/fhir/metadata").json()
    res = next(r for r in cs["rest"][0]["resource"] if r["type"] == rtype)
    checked = 0
    defs = definitions()
    for param in res["searchParam"]:
        if param["type"] == "composite":
            parts = defs.by_url[param["definition"]].components
            value = "$".join(VALUES[defs.by_url[c.definition].type].removeprefix("ge") for c in parts)
        else:
            value = "abc" if param["name"] == "_id" else VALUES[param["type"]]
        r = client.get(f"/fhir/{rtype}", params={param["name"]: value}, headers={"Prefer": "handling=strict"})
        assert r.status_code == 200, (rtype, param["name"], r.text)
        bundle = r.json()
        assert bundle["type"] == "searchset"
        assert bundle["total"] == 0
        checked += 1
        if param["type"] == "composite":
            continue
        missing = client.get(
            f"/fhir/{rtype}",
            params={f"{param['name']}:missing": "true"},
            headers={"Prefer": "handling=strict"},
        )
        assert missing.status_code == 200, (rtype, param["name"], missing.text)
    assert checked >= 10
    refused = client.get(
        f"/fhir/{rtype}", params={"no-such-param": "x"}, headers={"Prefer": "handling=strict"}
    )
    outcome(refused, 400)


def test_capability_statement_lists_the_record_item_operations_it_serves(client: TestClient) -> None:
    from sharedcare.api.capability import ITEM_OPERATIONS

    resources = {res["type"]: res for res in client.get("/fhir/metadata").json()["rest"][0]["resource"]}
    assert {op["name"] for op in resources["Observation"]["operation"]} == {"validate", *ITEM_OPERATIONS}
    assert "decide" in {op["name"] for op in resources["Task"]["operation"]}
    assert {"series", "preview"} <= {op["name"] for op in resources["ImagingStudy"]["operation"]}
    for name in ("series", "preview"):  # served: an unknown study is refused by the operation itself
        r = client.get(f"/fhir/ImagingStudy/nothing/${name}", params={"series": "1.2.3"})
        assert r.status_code == 404 and "ImagingStudy/nothing" in r.text, (name, r.text)
    missing = client.post("/fhir/Observation/nothing/$no-such-operation", json={"resourceType": "Parameters"})
    for name in ITEM_OPERATIONS:  # each is served: the operation itself refuses this caller or item
        r = client.post(f"/fhir/Observation/nothing/${name}", json={"resourceType": "Parameters"})
        assert r.status_code in (403, 404) and r.json()["resourceType"] == "OperationOutcome", name
        assert r.json()["issue"][0]["diagnostics"] != missing.json()["issue"][0]["diagnostics"], name


def test_capability_statement_lists_the_patient_and_vaccination_operations_it_serves(
    client: TestClient,
) -> None:
    """Each advertised operation is served: the operation itself answers (its own refusal or
    result), not the generic answer to an unknown operation."""
    statement = client.get("/fhir/metadata").json()
    rest = statement["rest"][0]
    resources = {res["type"]: res for res in rest["resource"]}
    assert {op["name"] for op in rest["operation"]} == {"immds-forecast"}
    patient_ops = {op["name"] for op in resources["Patient"]["operation"]}
    assert {
        "immds-forecast",
        "vaccination-certificate",
        "register",
        "renew-registration",
        "opt-out",
    } <= patient_ops
    assert {"parse-datamatrix", "validate-reported"} <= {
        op["name"] for op in resources["Immunization"]["operation"]
    }
    unknown = client.post("/fhir/Patient/nobody/$no-such-operation", json={"resourceType": "Parameters"})
    generic = unknown.json()["issue"][0]["diagnostics"]
    params = {"resourceType": "Parameters", "parameter": []}
    answers = {
        "immds-forecast (system)": client.post("/fhir/$immds-forecast", json=params),
        "immds-forecast": client.get("/fhir/Patient/nobody/$immds-forecast"),
        "vaccination-certificate": client.get("/fhir/Patient/nobody/$vaccination-certificate"),
        "register": client.post("/fhir/Patient/nobody/$register", json=params),
        "renew-registration": client.post("/fhir/Patient/nobody/$renew-registration", json=params),
        "opt-out": client.post("/fhir/Patient/nobody/$opt-out", json=params),
        "parse-datamatrix": client.post("/fhir/Immunization/$parse-datamatrix", json=params),
        "validate-reported": client.post("/fhir/Immunization/nothing/$validate-reported", json=params),
    }
    for name, r in answers.items():
        assert r.headers["content-type"].startswith("application/fhir+json"), (name, r.text)
        body = r.json()
        if body["resourceType"] == "OperationOutcome":
            assert body["issue"][0].get("diagnostics") != generic, (name, r.text)
