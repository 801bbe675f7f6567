"""An uploader reads back its own unclaimed upload (issue 4): ``GET [base]/Binary/[id]`` (ITI-68,
ranges, HEAD, the Binary resource) of a raw upload no document claims yet answers its uploader,
the same principal, while it may still write that content into the record, audited as a read;
everyone else, the holder included (an upload is not an item of the record until a document files
it), gets the same 404
as for an unknown id. On SQLite and PostgreSQL (the ``world`` fixture)."""

from __future__ import annotations

import os
from typing import Any

import httpx
from fastapi.testclient import TestClient
from mhd_world import GP, HOLDER, HOSPITAL, LAB, OTHER_GP, PHARMACIST, STRANGER, auth, sha1_b64
from sqlalchemy import update
from test_streamed_upload import claiming_bundle

from sharedcare.access.models import care_relationship
from sharedcare.access.principals import Principal
from sharedcare.audit import log as audit
from sharedcare.fhir.store import utcnow
from sharedcare.storage.engine import writer


def upload(world: TestClient, who: Principal, data: bytes) -> str:
    headers = {**auth(world, who), "Content-Type": "application/pdf", "X-Security-Context": "Patient/pa"}
    response = world.post("/fhir/Binary", content=data, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def get(world: TestClient, who: Principal, binary_id: str, **headers: str) -> httpx.Response:
    return world.get(f"/fhir/Binary/{binary_id}", headers={**auth(world, who), **headers})


def looks_unknown(world: TestClient, who: Principal, binary_id: str) -> None:
    """``who`` gets exactly what an id that never existed gets: 404, the same words."""
    refused = get(world, who, binary_id)
    unknown = get(world, who, "no-such-binary")
    assert refused.status_code == unknown.status_code == 404, refused.text
    assert refused.text.replace(binary_id, "ID") == unknown.text.replace("no-such-binary", "ID")


def reads(app: Any, who: Principal) -> list[tuple[str | None, tuple[str, ...]]]:
    with app.state.engine.connect() as conn:
        entries = audit.query(conn, principal_subject=who.subject, limit=100)
    return [(e.record.patient_id, tuple(e.record.resources)) for e in entries if e.record.action == "read"]


def test_a_system_reads_back_its_own_unclaimed_upload_audited(world: TestClient) -> None:
    app: Any = world.app
    data = b"%PDF-1.7 " + os.urandom(5000)
    binary_id = upload(world, LAB, data)
    whole = get(world, LAB, binary_id)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["etag"].strip('"') and whole.headers["content-type"] == "application/pdf"
    part = get(world, LAB, binary_id, Range="bytes=10-19")
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
    head = world.head(f"/fhir/Binary/{binary_id}", headers=auth(world, LAB))
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
    resource = get(world, LAB, binary_id, Accept="application/fhir+json")
    assert resource.status_code == 200 and resource.json()["id"] == binary_id
    assert ("pa", (f"Binary/{binary_id}/_history/1",)) in reads(app, LAB)
    assert len([r for r in reads(app, LAB) if r[1] == (f"Binary/{binary_id}/_history/1",)]) >= 3


def test_nobody_else_reads_it(world: TestClient) -> None:
    """Another system client, professionals in care (GPs, a pharmacist), a stranger and the
    holder get the 404 of an unknown id: until a document files it, an upload is not an item of
    the record (the document may hold it back for a consultation d'annonce). The holder reads
    back their own upload."""
    data = b"%PDF-1.7 " + os.urandom(2000)
    lab_upload = upload(world, LAB, data)
    gp_upload = upload(world, GP, data + b"gp")
    for who in (HOSPITAL, GP, OTHER_GP, PHARMACIST, STRANGER):
        looks_unknown(world, who, lab_upload)
        ranged = get(world, who, lab_upload, Range="bytes=0-3")
        assert ranged.status_code == 404
    for who in (LAB, HOSPITAL, OTHER_GP, PHARMACIST, STRANGER):
        looks_unknown(world, who, gp_upload)
    assert get(world, GP, gp_upload).content == data + b"gp"
    looks_unknown(world, HOLDER, lab_upload)
    looks_unknown(world, HOLDER, gp_upload)
    own = upload(world, HOLDER, data + b"mine")
    assert get(world, HOLDER, own).content == data + b"mine"
    for who in (LAB, GP, PHARMACIST, STRANGER):
        looks_unknown(world, who, own)


def test_the_uploader_reads_it_only_while_it_may_replace_it(world: TestClient) -> None:
    """Once its care relationship ends, the GP can no longer replace its upload, nor read it."""
    app: Any = world.app
    data = b"%PDF-1.7 " + os.urandom(2000)
    binary_id = upload(world, GP, data)
    assert get(world, GP, binary_id).content == data
    with writer(app.state.engine).begin() as conn:
        conn.execute(
            update(care_relationship).where(care_relationship.c.id == "r-gp").values(revoked_at=utcnow())
        )
    looks_unknown(world, GP, binary_id)
    replace = {**auth(world, GP), "Content-Type": "application/pdf", "X-Security-Context": "Patient/pa"}
    assert world.put(f"/fhir/Binary/{binary_id}", content=b"%PDF-new", headers=replace).status_code == 403


def test_claimed_it_follows_its_document(world: TestClient) -> None:
    """Filed, the upload is the document's content: read as the document is (the laboratory's
    client writes results, it does not read them; the GP in care does)."""
    data = b"%PDF-1.7 " + os.urandom(2000)
    binary_id = upload(world, LAB, data)
    filed = world.post(
        "/fhir", json=claiming_bundle(binary_id, sha1_b64(data), len(data)), headers=auth(world, LAB)
    )
    assert filed.status_code == 200, filed.text
    looks_unknown(world, LAB, binary_id)
    assert get(world, GP, binary_id).content == data
