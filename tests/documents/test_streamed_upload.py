"""Large documents, streamed (issue 4): ``POST /fhir/Binary`` with the raw bytes (the caller's
write check before the body is read, 413 beyond the content limit with nothing kept), an ITI-65
submission naming that Binary, its ITI-68 retrieval; and the portal's uploads streamed from the
spooled file."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from mhd_world import (
    GP,
    HOLDER,
    HOSPITAL,
    LAB,
    OTHER_GP,
    SCOPES,
    STRANGER,
    Doc,
    created,
    issues,
    provide_bundle,
)
from sqlalchemy import func, select

from sharedcare.access.principals import Principal
from sharedcare.audit import log as audit
from sharedcare.fhir.store import resource as resources
from support import mint_token

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "portal"))
from portal_http import sign_in, token
from portal_world import build_world

MIB = 1024 * 1024


def headers(app: Any, principal: Principal, base: str = "http://testserver", **extra: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {mint_token(app, principal, SCOPES[principal.kind], base=base)}",
        **extra,
    }


def raw(patient: str = "pa", content_type: str = "application/pdf") -> dict[str, str]:
    return {"Content-Type": content_type, "X-Security-Context": f"Patient/{patient}"}


def count(app: Any, rtype: str) -> int:
    with app.state.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(resources).where(resources.c.type == rtype)
            ).scalar_one()
        )


def stored_files(data_dir: Path, patient: str) -> list[Path]:
    """Every file of the patient's namespace, temporary ones included."""
    root = data_dir / "blobs" / patient
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def claiming_bundle(binary_id: str, data_sha1: str, size: int, patient: str = "pa") -> dict[str, Any]:
    """An ITI-65 submission whose document names ``Binary/[id]`` (uploaded before) as its content."""
    bundle = provide_bundle(patient, Doc(inline=True, data=b"-"))
    attachment = bundle["entry"][1]["resource"]["content"][0]["attachment"]
    attachment.pop("data")
    attachment.update(url=f"Binary/{binary_id}", size=size, hash=data_sha1)
    return bundle


@pytest.fixture
def live(world: TestClient) -> Iterator[str]:
    """The world's app served by uvicorn in a thread of this process (real HTTP, measurable heap)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(world.app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_200_mb_upload_filed_and_retrieved_in_bounded_memory(world: TestClient, live: str) -> None:
    """200 MB streamed up over HTTP, filed by ITI-65, streamed back by ITI-68: the heap of the
    process (server and client) peaks at a few MiB, never near the content's size."""
    app: Any = world.app
    total, block = 200 * MIB, os.urandom(MIB)

    def generated() -> Iterator[bytes]:
        for i in range(total // MIB):
            yield i.to_bytes(8, "big") + block[8:]

    sha1, sha256 = hashlib.sha1(), hashlib.sha256()
    for chunk in generated():
        sha1.update(chunk)
        sha256.update(chunk)
    auth, reader = headers(app, LAB, base=live), headers(app, GP, base=live)  # the GP reads the report
    with httpx.Client(base_url=live, timeout=120) as http:
        tracemalloc.start()
        try:
            started = time.monotonic()
            resp = http.post("/fhir/Binary", content=generated(), headers={**auth, **raw()})
            _, upload_peak = tracemalloc.get_traced_memory()
            upload_seconds = time.monotonic() - started
            assert resp.status_code == 201, resp.text
            binary = resp.json()
            binary_id = binary["id"]
            assert binary["securityContext"] == {"reference": "Patient/pa"} and "data" not in binary
            assert resp.headers["location"].endswith(f"/Binary/{binary_id}/_history/1")
            bundle = claiming_bundle(binary_id, base64.b64encode(sha1.digest()).decode(), total)
            filed = http.post("/fhir", json=bundle, headers=auth)
            assert filed.status_code == 200, filed.text
            document_id = created(filed, "DocumentReference")[0]
            tracemalloc.reset_peak()
            seen, size = hashlib.sha256(), 0
            with http.stream("GET", f"/fhir/Binary/{binary_id}", headers=reader) as got:
                assert got.status_code == 200
                assert got.headers["content-length"] == str(total)
                assert got.headers["etag"] == f'"{sha256.hexdigest()}"'
                for chunk in got.iter_bytes():
                    seen.update(chunk)
                    size += len(chunk)
            _, retrieve_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert size == total and seen.hexdigest() == sha256.hexdigest()
        document = http.get(f"/fhir/DocumentReference/{document_id}", headers=reader).json()
        claimed = http.get(f"/fhir/Binary/{binary_id}", headers={**reader, "Accept": "application/fhir+json"})
    attachment = document["content"][0]["attachment"]
    assert attachment["url"].endswith(f"/Binary/{binary_id}") and attachment["size"] == total
    assert claimed.json()["securityContext"] == {"reference": f"DocumentReference/{document_id}"}
    assert count(app, "Binary") == 1  # the upload became the document's Binary: no copy
    assert upload_peak < 16 * MIB, f"upload peaked at {upload_peak / MIB:.1f} MiB"
    assert retrieve_peak < 8 * MIB, f"retrieval peaked at {retrieve_peak / MIB:.1f} MiB"
    print(
        f"\n200 MB: upload {upload_seconds:.1f} s (traced), heap peak {upload_peak / MIB:.1f} MiB; "
        f"retrieval heap peak {retrieve_peak / MIB:.1f} MiB"
    )


def test_content_beyond_the_limit_is_refused_and_nothing_kept(world: TestClient, live: str) -> None:
    """413 as soon as the streamed body passes the limit, with or without Content-Length: the
    partial blob is removed and no Binary is written."""
    app: Any = world.app
    app.state.settings = app.state.settings.model_copy(update={"max_content_bytes": MIB})
    data_dir = app.state.settings.data_dir
    auth = headers(app, LAB, base=live)

    def chunked() -> Iterator[bytes]:
        for _ in range(3):
            yield os.urandom(MIB)

    with httpx.Client(base_url=live, timeout=60) as http:
        for body in (os.urandom(MIB + 1), chunked()):
            resp = http.post("/fhir/Binary", content=body, headers={**auth, **raw()})
            assert resp.status_code == 413, resp.text
            assert resp.json()["resourceType"] == "OperationOutcome"
            assert "exceeds the limit of 1048576 bytes" in resp.text
        exact = http.post("/fhir/Binary", content=b"%PDF" + bytes(MIB - 4), headers={**auth, **raw()})
        assert exact.status_code == 201, exact.text  # the limit itself is allowed
    assert count(app, "Binary") == 1
    assert len(stored_files(data_dir, "pa")) == 1  # the accepted one; no partial file left


def test_a_caller_without_rights_is_refused_before_the_body_is_read(world: TestClient) -> None:
    """The access decision answers before a byte of the body is consumed: a professional
    without care of the patient, a holder writing into another record."""
    app: Any = world.app
    pulled: list[int] = []

    def body() -> Iterator[bytes]:
        for i in range(64):
            pulled.append(i)
            yield bytes(64 * 1024)

    for principal, patient in ((STRANGER, "pa"), (HOLDER, "pb")):
        pulled.clear()
        resp = world.post("/fhir/Binary", content=body(), headers=headers(app, principal, **raw(patient)))
        assert resp.status_code == 403, resp.text
        assert len(pulled) <= 1, f"{len(pulled)} chunks were read"
    assert count(app, "Binary") == 0
    assert stored_files(app.state.settings.data_dir, "pa") == []


def test_upload_requests_are_checked(world: TestClient) -> None:
    app: Any = world.app
    auth = headers(app, LAB)
    missing = world.post(
        "/fhir/Binary", content=b"%PDF-1", headers={**auth, "Content-Type": "application/pdf"}
    )
    assert missing.status_code == 400 and "X-Security-Context" in missing.text
    document = world.post(
        "/fhir/Binary",
        content=b"%PDF-1",
        headers={**auth, **raw(), "X-Security-Context": "DocumentReference/x"},
    )
    assert document.status_code == 400 and "Patient/[id]" in document.text
    empty = world.post("/fhir/Binary", content=b"", headers={**auth, **raw()})
    assert empty.status_code == 400 and "no content" in empty.text
    unknown = world.post("/fhir/Binary", content=b"%PDF-1", headers={**auth, **raw("nobody")})
    assert unknown.status_code == 404
    assert count(app, "Binary") == 0
    # a FHIR Binary resource still goes to the generic create (here by the trusted platform client)
    fhir = world.post(
        "/fhir/Binary",
        json={"resourceType": "Binary", "contentType": "text/plain", "data": "aGk="},
        headers={"Content-Type": "application/fhir+json"},
    )
    assert fhir.status_code == 201, fhir.text
    assert fhir.json()["data"] == "aGk="


def upload(world: TestClient, principal: Principal, data: bytes, patient: str = "pa") -> str:
    resp = world.post("/fhir/Binary", content=data, headers=headers(world.app, principal, **raw(patient)))
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def sha1_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data).digest()).decode()


def test_a_submission_claims_only_its_own_unclaimed_upload_with_matching_digests(world: TestClient) -> None:
    app: Any = world.app
    data = b"%PDF-1.7 " + os.urandom(5000)
    ours = upload(world, LAB, data)
    theirs = upload(world, HOSPITAL, data)
    auth = headers(app, LAB)

    def submit(binary_id: str, digest: str = sha1_b64(data), size: int = len(data)) -> httpx.Response:
        return world.post("/fhir", json=claiming_bundle(binary_id, digest, size), headers=auth)

    wrong = submit(ours, sha1_b64(b"other"), len(data) + 1)
    assert wrong.status_code == 422
    found = dict(issues(wrong))
    assert "does not match the content" in found["Bundle.entry[1].resource.content[0].attachment.hash"]
    assert "but the content has" in found["Bundle.entry[1].resource.content[0].attachment.size"]
    other = submit(theirs)
    assert other.status_code == 422 and "no document claims yet" in other.text
    unknown = submit("no-such-binary")
    assert unknown.status_code == 422
    filed = submit(ours)
    document_id = created(filed, "DocumentReference")[0]
    again = submit(ours)  # claimed: it is a document's Binary now
    assert again.status_code == 422 and "no document claims yet" in again.text
    reader = headers(app, GP)
    got = world.get(f"/fhir/Binary/{ours}", headers=reader)
    assert got.status_code == 200 and got.content == data
    assert world.get(f"/fhir/Binary/{ours}", headers=auth).status_code == 404  # a lab reads no Binary
    # the claimed content no longer changes by PUT
    put = world.put(f"/fhir/Binary/{ours}", content=b"%PDF-new", headers={**auth, **raw()})
    assert put.status_code == 409, put.text
    assert world.get(f"/fhir/Binary/{ours}", headers=reader).content == data
    document = world.get(f"/fhir/DocumentReference/{document_id}", headers=reader).json()
    assert document["content"][0]["attachment"]["url"].endswith(f"/Binary/{ours}")


def test_put_replaces_an_unclaimed_upload_of_its_uploader(world: TestClient) -> None:
    app: Any = world.app
    auth = {**headers(app, GP), **raw()}
    first = upload(world, GP, b"%PDF-first")
    second = world.put(f"/fhir/Binary/{first}", content=b"%PDF-second", headers=auth)
    assert second.status_code == 200, second.text
    assert second.json()["meta"]["versionId"] == "2"
    assert world.get(f"/fhir/Binary/{first}", headers=headers(app, HOLDER)).status_code == 404
    # unfiled: nobody reads it but its uploader, who may replace it (test_own_upload_read)
    assert world.get(f"/fhir/Binary/{first}", headers=headers(app, GP)).content == b"%PDF-second"
    assert world.get(f"/fhir/Binary/{first}", headers=headers(app, OTHER_GP)).status_code == 404
    other = world.put(f"/fhir/Binary/{first}", content=b"%PDF-x", headers={**headers(app, LAB), **raw()})
    assert other.status_code == 409  # another client's upload
    new = world.put("/fhir/Binary/scan-1", content=b"%PDF-x", headers=auth)
    assert new.status_code == 404  # no update-as-create with a client's id (as for any resource)
    assert count(app, "Binary") == 1


# -- the portal -------------------------------------------------------------------------------------------


@pytest.fixture
def portal(settings: Any) -> Iterator[Any]:
    """The portal tests' world (``tests/portal/portal_world.py``) on a fresh app."""
    from sharedcare.app import create_app
    from support import cheap_passwords, truncate

    with contextmanager(cheap_passwords)():
        app = create_app(settings)
        truncate(app.state.engine)
        world = build_world(app, settings)
        yield world
        world.engine.dispose()


def signed_in(world: Any, person: Any) -> TestClient:
    client = TestClient(world.app, follow_redirects=False)
    client.cookies.set("sharedcare_lang", "en")
    sign_in(client, person)
    return client


PDF_MB = b"%PDF-1.7\n" + os.urandom(6 * MIB)


def portal_post(client: TestClient, page: str, fields: dict[str, str], data: bytes) -> httpx.Response:
    return client.post(
        page,
        data={"csrf": token(client, page), **fields},
        files={"file": ("big.pdf", data, "application/pdf")},
    )


def test_portal_uploads_stream_multi_mb_files(portal: Any) -> None:
    """The holder's and the professional's uploads of a 6 MB PDF are filed and read back whole."""
    holder, gp = signed_in(portal, portal.patient), signed_in(portal, portal.gp)
    resp = portal_post(holder, "/portal/documents/upload/new", {"title": "Scan of my records"}, PDF_MB)
    assert resp.status_code == 303, resp.text[:500]
    document_url = resp.headers["location"]
    content = holder.get(f"{document_url}/content")
    assert content.status_code == 200 and content.content == PDF_MB
    page = "/portal/pro/patients/pa/documents/new"
    fields = {"title": "Discharge letter", "type": "http://loinc.org|18842-5", "confidentiality": "N"}
    resp = portal_post(gp, page, fields, PDF_MB[:-1] + b"!")
    assert resp.status_code == 303, resp.text[:500]
    assert gp.get(f"{resp.headers['location']}/content").content == PDF_MB[:-1] + b"!"


def test_portal_upload_beyond_the_limit_is_refused_readably(portal: Any) -> None:
    portal.app.state.settings = portal.app.state.settings.model_copy(update={"max_content_bytes": 2 * MIB})
    before = count(portal.app, "Binary")
    holder = signed_in(portal, portal.patient)
    resp = portal_post(holder, "/portal/documents/upload/new", {"title": "Too big"}, PDF_MB)
    assert resp.status_code == 400
    assert "The file is too large: the limit is" in resp.text
    assert count(portal.app, "Binary") == before


def test_streamed_paths_are_bounded_by_the_content_limit(world: TestClient) -> None:
    """A declared body beyond the content limit is refused unread (the request limit, smaller,
    does not apply to streamed uploads)."""
    app: Any = world.app
    limit = app.state.settings.max_content_bytes
    assert limit > app.state.settings.max_request_bytes
    resp = world.post(
        "/fhir/Binary",
        content=b"x",
        headers={**headers(app, LAB), **raw(), "Content-Length": str(limit + 2 * MIB)},
    )
    assert resp.status_code == 413


# -- unclaimed uploads: who reads them, refusals in the access log, the CapabilityStatement ---------------


def category_of_row(app: Any, binary_id: str) -> str:
    with app.state.engine.connect() as conn:
        return str(
            conn.execute(
                select(resources.c.category).where(resources.c.type == "Binary", resources.c.id == binary_id)
            ).scalar_one()
        )


def test_an_unclaimed_upload_is_read_by_no_professional_until_a_document_claims_it(world: TestClient) -> None:
    """The GP in care of the patient reads care reports, but not content no document filed yet;
    nor does the holder (not an item of the record yet). Claimed, it takes its document's category."""
    app: Any = world.app
    data = b"%PDF-1.7 " + os.urandom(3000)
    binary_id = upload(world, LAB, data)
    assert category_of_row(app, binary_id) == "unfiled"
    gp = headers(app, GP)
    assert world.get(f"/fhir/Binary/{binary_id}", headers=gp).status_code == 404
    found = world.get("/fhir/Binary", params={"_id": binary_id}, headers=gp).json()
    assert found.get("total", 0) == 0 and not found.get("entry")
    everything = world.get("/fhir/Patient/pa/$everything", headers=gp).json()
    assert binary_id not in {e["resource"]["id"] for e in everything.get("entry", [])}
    assert world.get(f"/fhir/Binary/{binary_id}", headers=headers(app, HOLDER)).status_code == 404
    filed = world.post(
        "/fhir", json=claiming_bundle(binary_id, sha1_b64(data), len(data)), headers=headers(app, LAB)
    )
    assert filed.status_code == 200, filed.text
    assert category_of_row(app, binary_id) == "lab-results"  # the document's (a laboratory report)
    assert world.get(f"/fhir/Binary/{binary_id}", headers=gp).content == data


def test_a_professional_uploads_and_files_its_content(world: TestClient) -> None:
    """The write check decides on the content as it will be filed: a GP (who writes care reports,
    not "unfiled") uploads, replaces and claims its upload; the claim is audited as the GP's."""
    app: Any = world.app
    first = upload(world, GP, b"%PDF-draft")
    data = b"%PDF-1.7 final " + os.urandom(1000)
    put = world.put(f"/fhir/Binary/{first}", content=data, headers={**headers(app, GP), **raw()})
    assert put.status_code == 200, put.text
    filed = world.post(
        "/fhir", json=claiming_bundle(first, sha1_b64(data), len(data)), headers=headers(app, GP)
    )
    assert filed.status_code == 200, filed.text
    assert world.get(f"/fhir/Binary/{first}", headers=headers(app, GP)).content == data
    with app.state.engine.connect() as conn:
        entries = audit.query(conn, principal_subject=GP.subject, limit=100)
    acts = [(e.record.action, e.record.resources) for e in entries]
    for action, version in (("create", 1), ("update", 2), ("update", 3)):
        assert any(a == action and f"Binary/{first}/_history/{version}" in r for a, r in acts), acts


def refusals(app: Any, subject: str) -> list[tuple[str | None, str | None]]:
    with app.state.engine.connect() as conn:
        entries = audit.query(conn, principal_subject=subject, limit=100)
    return [
        (e.record.interaction, e.record.outcome_desc)
        for e in entries
        if e.record.outcome == audit.AuditOutcome.MINOR_FAILURE
    ]


def test_upload_refusals_are_in_the_access_log(world: TestClient) -> None:
    """413 (streamed past the limit, or declared beyond it), 400 and 409 are refused attempts of
    the caller in the access log, as 403, 404 and 422 are."""
    app: Any = world.app
    limit = 64 * 1024
    app.state.settings = app.state.settings.model_copy(update={"max_content_bytes": limit})
    auth = headers(app, LAB)

    def chunked() -> Iterator[bytes]:
        yield bytes(limit)
        yield b"x"

    assert world.post("/fhir/Binary", content=chunked(), headers={**auth, **raw()}).status_code == 413
    declared = world.post(
        "/fhir/Binary", content=b"x", headers={**auth, **raw(), "Content-Length": str(limit + 10)}
    )
    assert declared.status_code == 413, declared.text
    missing = world.post("/fhir/Binary", content=b"%PDF", headers={**auth, "Content-Type": "application/pdf"})
    assert missing.status_code == 400
    theirs = upload(world, HOSPITAL, b"%PDF-h")
    assert world.put(f"/fhir/Binary/{theirs}", content=b"%PDF", headers={**auth, **raw()}).status_code == 409
    closed = world.post("/fhir/Binary", content=b"%PDF", headers={**auth, **raw("pc")})
    assert closed.status_code == 422, closed.text  # a closed record
    found = refusals(app, LAB.subject)
    assert found.count(("POST /fhir/Binary", "413 too-costly")) == 2, found
    assert ("POST /fhir/Binary", "400 invalid") in found
    assert (f"PUT /fhir/Binary/{theirs}", "409 conflict") in found
    assert len(found) == 5, found  # the 422 once, by the application's handler
    assert count(app, "Binary") == 1


def test_the_capability_statement_documents_raw_binary_create(world: TestClient) -> None:
    app: Any = world.app
    statement = world.get("/fhir/metadata").json()
    binary = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Binary")
    create = next(i for i in binary["interaction"] if i["code"] == "create")
    limit = str(app.state.settings.max_content_bytes)
    assert "X-Security-Context: Patient/[id]" in create["documentation"] and limit in create["documentation"]
    other = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Observation")
    assert all("documentation" not in i for i in other["interaction"])
