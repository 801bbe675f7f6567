"""Unclaimed raw uploads expire (issue 4): ``documents.submission.expire_unclaimed`` deletes the
uploads no document claimed within ``unclaimed_upload_hours``, audited as the platform's act,
with their content unless another Binary of the record names the same bytes."""

from __future__ import annotations

import base64
import hashlib
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from mhd_world import HOLDER, LAB, SCOPES, Doc, provide_bundle
from sqlalchemy import select, update

from sharedcare.access.principals import Principal
from sharedcare.audit import log as audit
from sharedcare.documents.submission import EXPIRY, expire_unclaimed
from sharedcare.fhir.store import resource as resources
from sharedcare.fhir.store import utcnow
from sharedcare.storage.engine import writer
from support import mint_token


def auth(app: Any, principal: Principal) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(app, principal, SCOPES[principal.kind])}"}


def upload(world: TestClient, data: bytes) -> str:
    headers = {**auth(world.app, LAB), "Content-Type": "application/pdf", "X-Security-Context": "Patient/pa"}
    resp = world.post("/fhir/Binary", content=data, headers=headers)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def claim(world: TestClient, binary_id: str, data: bytes) -> None:
    bundle = provide_bundle("pa", Doc(inline=True, data=b"-"))
    attachment = bundle["entry"][1]["resource"]["content"][0]["attachment"]
    attachment.pop("data")
    sha1 = base64.b64encode(hashlib.sha1(data).digest()).decode()
    attachment.update(url=f"Binary/{binary_id}", size=len(data), hash=sha1)
    resp = world.post("/fhir", json=bundle, headers=auth(world.app, LAB))
    assert resp.status_code == 200, resp.text


def blob(app: Any, data: bytes) -> Path:
    digest = hashlib.sha256(data).hexdigest()
    return Path(app.state.settings.data_dir) / "blobs" / "pa" / digest[:2] / digest


def deleted(app: Any, binary_id: str) -> bool:
    with app.state.engine.connect() as conn:
        return bool(
            conn.execute(
                select(resources.c.deleted).where(resources.c.type == "Binary", resources.c.id == binary_id)
            ).scalar_one()
        )


def age(app: Any, binary_ids: list[str], by: timedelta) -> None:
    """Move the uploads' last write back in time (as if uploaded ``by`` ago)."""
    with writer(app.state.engine).begin() as conn:
        rows = conn.execute(
            select(resources.c.pk, resources.c.last_updated).where(
                resources.c.type == "Binary", resources.c.id.in_(binary_ids)
            )
        ).all()
        for row in rows:
            conn.execute(
                update(resources).where(resources.c.pk == row.pk).values(last_updated=row.last_updated - by)
            )


def test_unclaimed_uploads_expire_with_their_content_audited(world: TestClient) -> None:
    app: Any = world.app
    settings = app.state.settings
    shared, alone = b"%PDF-shared " + os.urandom(2000), b"%PDF-alone " + os.urandom(2000)
    forgotten = upload(world, shared)  # never claimed; the same bytes as a filed document's
    filed = upload(world, shared)
    claim(world, filed, shared)
    lonely = upload(world, alone)  # never claimed; its bytes are nobody else's
    assert blob(app, alone).exists() and blob(app, shared).exists()

    hours = settings.unclaimed_upload_hours
    assert expire_unclaimed(app.state.engine, settings, utcnow(), blobs=app.state.blobs) == 0
    age(app, [forgotten, filed, lonely], timedelta(hours=hours, minutes=1))
    fresh = upload(world, b"%PDF-fresh")  # uploaded now: not expired yet
    expired = expire_unclaimed(app.state.engine, settings, utcnow(), blobs=app.state.blobs)
    assert expired == 2  # forgotten and lonely; the filed one is a document's, the fresh one waits
    assert deleted(app, forgotten) and deleted(app, lonely)
    assert not deleted(app, filed) and not deleted(app, fresh)
    assert not blob(app, alone).exists()  # its content is gone
    assert blob(app, shared).exists()  # still the filed document's content
    kept = world.get(f"/fhir/Binary/{filed}", headers=auth(app, HOLDER))
    assert kept.status_code == 200 and kept.content == shared
    # gone: for its uploader as for everyone, since an unclaimed upload was no item of the record
    assert world.get(f"/fhir/Binary/{lonely}", headers=auth(app, LAB)).status_code == 404

    with app.state.engine.connect() as conn:
        entries = audit.query(conn, principal_subject=EXPIRY.subject, limit=10)
    traced = sorted((e.record.action, e.record.patient_id, e.record.resources) for e in entries)
    assert traced == sorted(
        (audit.AuditAction.DELETE, "pa", (f"Binary/{rid}/_history/2",)) for rid in (forgotten, lonely)
    )
    assert all(e.record.interaction == "expire-unclaimed-upload" for e in entries)
    assert expire_unclaimed(app.state.engine, settings, utcnow(), blobs=app.state.blobs) == 0  # once


def test_a_replaced_upload_takes_every_version_content_with_it(world: TestClient) -> None:
    app: Any = world.app
    first, second = b"%PDF-v1 " + os.urandom(500), b"%PDF-v2 " + os.urandom(500)
    binary_id = upload(world, first)
    headers = {**auth(app, LAB), "Content-Type": "application/pdf", "X-Security-Context": "Patient/pa"}
    assert world.put(f"/fhir/Binary/{binary_id}", content=second, headers=headers).status_code == 200
    age(app, [binary_id], timedelta(hours=app.state.settings.unclaimed_upload_hours + 1))
    assert expire_unclaimed(app.state.engine, app.state.settings, utcnow(), blobs=app.state.blobs) == 1
    assert not blob(app, first).exists() and not blob(app, second).exists()
