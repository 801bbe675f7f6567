"""ITI-68 Retrieve Document over HTTP: bytes, ranges, validators, integrity, access per category, audit."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from mhd_world import (
    GP,
    HOLDER,
    LAB,
    OTHER_GP,
    PHARMACIST,
    STRANGER,
    Doc,
    auth,
    blob_files,
    created,
    provide,
    provide_bundle,
)

from sharedcare.access import consent
from sharedcare.access.requests import DISCLOSURE_SYSTEM, PENDING_DISCLOSURE
from sharedcare.documents.retrieve import BUFFERED_BYTES
from sharedcare.fhir.store import utcnow
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer
from support import put_all

REPORT = b"%PDF-1.7 haemoglobin 13.5 g/dL, ferritin 40 ug/L"


def filed(client: TestClient, *docs: Doc) -> list[tuple[str, str]]:
    """(DocumentReference id, Binary url) of each document the laboratory files for Anne."""
    response = provide(client, LAB, provide_bundle("pa", *docs))
    out = []
    for doc_id in created(response, "DocumentReference"):
        doc = client.get(f"/fhir/DocumentReference/{doc_id}").json()
        out.append((doc_id, doc["content"][0]["attachment"]["url"]))
    return out


def corrupt(data_dir: Path, position: float = 0.5) -> None:
    """Flip one byte of every content file, at ``position`` of its length."""
    for path in blob_files(data_dir):
        raw = bytearray(path.read_bytes())
        raw[int(len(raw) * position)] ^= 0xFF
        path.write_bytes(bytes(raw))


def test_the_whole_content_with_its_headers(world: TestClient) -> None:
    ((_, url),) = filed(world, Doc(data=REPORT))
    response = world.get(url, headers=auth(world, GP))
    assert response.status_code == 200
    assert response.content == REPORT
    assert response.headers["content-type"] == "application/pdf"
    assert response.headers["content-length"] == str(len(REPORT))
    assert response.headers["etag"] == f'"{hashlib.sha256(REPORT).hexdigest()}"'
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    head = world.head(url, headers=auth(world, GP))
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(REPORT))
    assert head.headers["etag"] == response.headers["etag"]
    again = world.get(url, headers={**auth(world, GP), "If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_active_content_is_sandboxed(world: TestClient) -> None:
    ((_, url),) = filed(world, Doc(content_type="text/html", data=b"<script>alert(1)</script>"))
    response = world.get(url, headers=auth(world, GP))
    assert response.headers["content-type"] == "text/html"
    assert response.headers["content-security-policy"] == "sandbox"
    assert response.headers["content-disposition"] == "attachment"


@pytest.mark.parametrize(
    ("header", "status", "expected", "content_range"),
    [
        ("bytes=0-8", 206, REPORT[:9], f"bytes 0-8/{len(REPORT)}"),
        ("bytes=9-", 206, REPORT[9:], f"bytes 9-{len(REPORT) - 1}/{len(REPORT)}"),
        ("bytes=-7", 206, REPORT[-7:], f"bytes {len(REPORT) - 7}-{len(REPORT) - 1}/{len(REPORT)}"),
        ("bytes=40-10000", 206, REPORT[40:], f"bytes 40-{len(REPORT) - 1}/{len(REPORT)}"),
        ("bytes=0-1,4-5", 200, REPORT, None),  # several ranges: the whole content
        ("lines=1-2", 200, REPORT, None),
        ("bytes=5-2", 200, REPORT, None),
    ],
)
def test_byte_ranges(
    world: TestClient, header: str, status: int, expected: bytes, content_range: str | None
) -> None:
    ((_, url),) = filed(world, Doc(data=REPORT))
    response = world.get(url, headers={**auth(world, GP), "Range": header})
    assert response.status_code == status
    assert response.content == expected
    assert response.headers["content-length"] == str(len(expected))
    assert response.headers.get("content-range") == content_range


def test_a_range_outside_the_content_is_416(world: TestClient) -> None:
    ((_, url),) = filed(world, Doc(data=REPORT))
    for header in (f"bytes={len(REPORT)}-", "bytes=-0"):
        response = world.get(url, headers={**auth(world, GP), "Range": header})
        assert response.status_code == 416
        assert response.headers["content-range"] == f"bytes */{len(REPORT)}"
        assert response.json()["resourceType"] == "OperationOutcome"


def test_if_range_sends_the_whole_when_the_content_changed(world: TestClient) -> None:
    ((_, url),) = filed(world, Doc(data=REPORT))
    etag = f'"{hashlib.sha256(REPORT).hexdigest()}"'
    same = world.get(url, headers={**auth(world, GP), "Range": "bytes=0-3", "If-Range": etag})
    assert same.status_code == 206 and same.content == REPORT[:4]
    other = world.get(url, headers={**auth(world, GP), "Range": "bytes=0-3", "If-Range": '"other"'})
    assert other.status_code == 200 and other.content == REPORT


def test_the_binary_resource_on_request(world: TestClient) -> None:
    small, large = Doc(data=REPORT), Doc(data=b"L" * (BUFFERED_BYTES + 1), type_code="11526-1")
    ((small_doc, small_url), (_, large_url)) = filed(world, small, large)
    fhir_json = {**auth(world, GP), "Accept": "application/fhir+json"}
    response = world.get(small_url, headers=fhir_json)
    assert response.headers["content-type"].startswith("application/fhir+json")
    binary = response.json()
    assert binary["resourceType"] == "Binary" and binary["contentType"] == "application/pdf"
    assert base64.b64decode(binary["data"]) == REPORT
    assert binary["securityContext"]["reference"] == f"DocumentReference/{small_doc}"
    assert response.headers["etag"] == 'W/"1"'
    assert world.get(small_url + "?_format=json", headers=auth(world, GP)).json()["data"] == binary["data"]
    assert world.get(small_url + "?_format=xml", headers=auth(world, GP)).status_code == 406
    big = world.get(large_url, headers=fhir_json).json()
    assert big["resourceType"] == "Binary" and "data" not in big  # large content only as bytes


def test_large_content_is_streamed_whole_and_in_ranges(world: TestClient) -> None:
    data = bytes(range(256)) * ((BUFFERED_BYTES // 256) + 1000)
    ((_, url),) = filed(world, Doc(data=data))
    with world.stream("GET", url, headers=auth(world, GP)) as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == str(len(data))
        received = b"".join(response.iter_bytes())
    assert received == data
    part = world.get(url, headers={**auth(world, GP), "Range": f"bytes=100-{len(data) - 100}"})
    assert part.status_code == 206 and part.content == data[100 : len(data) - 99]


def test_a_corrupted_blob_fails_its_integrity_check(world: TestClient, settings: Settings) -> None:
    ((doc_id, url),) = filed(world, Doc(data=REPORT))
    corrupt(settings.data_dir)
    response = world.get(url, headers=auth(world, GP))
    assert response.status_code == 500
    assert "integrity" in response.json()["issue"][0]["diagnostics"]
    as_json = world.get(url, headers={**auth(world, GP), "Accept": "application/fhir+json"})
    assert as_json.status_code == 500
    assert world.get(f"/fhir/DocumentReference/{doc_id}", headers=auth(world, GP)).status_code == 200


def test_a_corrupted_large_blob_never_arrives_whole(
    settings: Settings, server_url: str, server_token: str
) -> None:
    """Over a real server: the stream stops short of Content-Length, so no client takes it for whole."""
    base = server_url.removesuffix("/fhir")
    data = bytes(range(256)) * ((BUFFERED_BYTES // 256) + 4000)
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {server_token}"}) as http:
        put_all(http, {"resourceType": "Patient", "id": "pa"})  # type: ignore[arg-type]
        response = http.post("/fhir", json=provide_bundle("pa", Doc(data=data)))
        (doc_id,) = created(response, "DocumentReference")
        url = http.get(f"/fhir/DocumentReference/{doc_id}").json()["content"][0]["attachment"]["url"]
        assert http.get(url).content == data
        corrupt(settings.data_dir, 0.8)
        with pytest.raises(httpx.HTTPError):  # RemoteProtocolError: incomplete body
            http.get(url)


def _ids(bundle: dict[str, Any]) -> set[str]:
    return {
        e["resource"]["id"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == "match"
    }


def test_access_follows_the_documents_category(world: TestClient) -> None:
    lab, imaging, summary = filed(
        world,
        Doc(data=b"lab"),
        Doc(type_code="18748-4", data=b"imaging", authors=["Organization/lab1"]),
        Doc(type_code="60591-5", data=b"summary", authors=["Organization/lab1"]),
    )
    # the pharmacist's column reads laboratory results, not imaging or summaries (Annex 1)
    assert world.get(lab[1], headers=auth(world, PHARMACIST)).content == b"lab"
    for doc_id, url in (imaging, summary):
        assert (
            world.get(f"/fhir/DocumentReference/{doc_id}", headers=auth(world, PHARMACIST)).status_code == 404
        )
        assert world.get(url, headers=auth(world, PHARMACIST)).status_code == 404
    found = world.get("/fhir/Binary?patient=pa", headers=auth(world, PHARMACIST)).json()
    assert _ids(found) == {lab[1].rsplit("/", 1)[1]}
    # the GP and the holder read everything; a stranger and the filing laboratory's system nothing
    for _, url in (lab, imaging, summary):
        assert world.get(url, headers=auth(world, GP)).status_code == 200
        assert world.get(url, headers=auth(world, HOLDER)).status_code == 200
        assert world.get(url, headers=auth(world, STRANGER)).status_code == 404
        assert world.get(url, headers=auth(world, LAB)).status_code == 404


def test_the_holder_reads_everything_but_what_waits_for_its_announcement(world: TestClient) -> None:
    pending = {"meta": {"security": [{"system": DISCLOSURE_SYSTEM, "code": PENDING_DISCLOSURE}]}}
    (normal, held) = filed(
        world, Doc(data=b"normal"), Doc(data=b"held back", type_code="11526-1", extra=pending)
    )
    assert world.get(normal[1], headers=auth(world, HOLDER)).content == b"normal"
    assert world.get(f"/fhir/DocumentReference/{held[0]}", headers=auth(world, HOLDER)).status_code == 404
    assert world.get(held[1], headers=auth(world, HOLDER)).status_code == 404
    assert world.get(held[1], headers=auth(world, GP)).content == b"held back"


def test_a_masked_document_hides_its_content_too(world: TestClient) -> None:
    ((doc_id, url),) = filed(world, Doc(data=b"private"))
    app: Any = world.app
    with writer(app.state.engine).begin() as conn:
        consent.mask(conn, app.state.fhir, HOLDER, "pa", "gp", f"DocumentReference/{doc_id}", utcnow())
    assert world.get(url, headers=auth(world, GP)).status_code == 404
    assert world.get(url, headers=auth(world, OTHER_GP)).status_code == 200


def _binaries(world: TestClient, who: Any, query: str) -> set[str]:
    bundle = world.get(f"/fhir/{query}", headers={**auth(world, who), "Accept": "application/fhir+json"})
    assert bundle.status_code == 200, bundle.text
    return {
        e["resource"]["id"]
        for e in bundle.json().get("entry", [])
        if e["resource"]["resourceType"] == "Binary"
    }


def test_a_hidden_documents_content_is_not_found_by_searches_either(world: TestClient) -> None:
    pending = {"meta": {"security": [{"system": DISCLOSURE_SYSTEM, "code": PENDING_DISCLOSURE}]}}
    (masked, held) = filed(world, Doc(data=b"private"), Doc(data=b"held", type_code="11526-1", extra=pending))
    masked_bin, held_bin = masked[1].rsplit("/", 1)[1], held[1].rsplit("/", 1)[1]
    assert _binaries(world, GP, "Binary?patient=Patient/pa") >= {masked_bin, held_bin}
    assert _binaries(world, HOLDER, "Binary?patient=Patient/pa") >= {masked_bin}
    assert held_bin not in _binaries(world, HOLDER, "Binary?patient=Patient/pa")  # waits for its announcement
    app: Any = world.app
    with writer(app.state.engine).begin() as conn:
        consent.mask(conn, app.state.fhir, HOLDER, "pa", "gp", f"DocumentReference/{masked[0]}", utcnow())
    assert masked_bin not in _binaries(world, GP, "Binary?patient=Patient/pa")  # not even its metadata
    assert masked_bin not in _binaries(
        world, GP, f"DocumentReference?_id={masked[0]},{held[0]}&_revinclude=Binary:security-context"
    )
    assert _binaries(world, OTHER_GP, "Binary?patient=Patient/pa") >= {masked_bin, held_bin}
    assert held_bin in _binaries(
        world, GP, f"DocumentReference?_id={held[0]}&_revinclude=Binary:security-context"
    )


def test_every_retrieval_is_in_the_holders_access_log(world: TestClient) -> None:
    ((_, url),) = filed(world, Doc(data=REPORT))
    binary_id = url.rsplit("/", 1)[1]
    assert world.get(url, headers=auth(world, GP)).status_code == 200
    assert world.get(url, headers={**auth(world, GP), "Range": "bytes=0-1"}).status_code == 206
    log = world.get("/fhir/AuditEvent?patient=pa&_count=200", headers=auth(world, HOLDER)).json()
    reads = [
        e["resource"]
        for e in log["entry"]
        if any(s.get("code") == "read" for s in e["resource"].get("subtype", []))
        and any(
            ent.get("what", {}).get("reference", "").startswith(f"Binary/{binary_id}")
            for ent in e["resource"]["entity"]
        )
    ]
    assert len(reads) == 2
    assert all(any(a.get("who", {}).get("reference") == "Practitioner/gp" for a in r["agent"]) for r in reads)
