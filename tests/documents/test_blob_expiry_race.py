"""The expiry of an unclaimed upload and a write of the same bytes (issue 4): the expiry deletes a
blob that no other Binary of the record names, a write of the same content (an upload, an ITI-65
submission) names it; whatever the interleaving, no accepted write names a missing blob
(``documents.submission.hold_blobs``, ``_remove_blobs``). Each interleaving is forced with the
application's own content store paused at one step (the bytes go where they always go), on
SQLite and PostgreSQL (the ``world`` fixture)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from mhd_world import HOLDER, LAB, Doc, auth, provide_bundle
from sqlalchemy import func, select

from sharedcare.documents.submission import expire_unclaimed
from sharedcare.fhir.store import resource as resources
from sharedcare.fhir.store import utcnow
from sharedcare.storage.blobstore import BlobInfo, BlobNotFound, BlobStore
from sharedcare.storage.engine import writer

WAIT = 30.0
"""How long a side waits for the other at most (a failure, never reached when all goes well)."""


class PausedStore:
    """A real content store that stops at one step (``put``: after storing; ``delete``: before
    deleting) until ``go`` is set, telling ``reached`` when it gets there."""

    def __init__(self, inner: BlobStore, step: str, hold: float = WAIT) -> None:
        self.inner, self.step, self.hold = inner, step, hold
        self.reached, self.go = threading.Event(), threading.Event()

    def put(self, namespace: str, chunks: Iterable[bytes], *, max_size: int | None = None) -> BlobInfo:
        info = self.inner.put(namespace, chunks, max_size=max_size)
        if self.step == "put":
            self.reached.set()
            self.go.wait(self.hold)
        return info

    def delete(self, namespace: str, digest: str) -> bool:
        if self.step == "delete":
            self.reached.set()
            self.go.wait(self.hold)
        return self.inner.delete(namespace, digest)

    def open(self, namespace: str, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        return self.inner.open(namespace, digest, start, end)

    def size(self, namespace: str, digest: str) -> int:
        return self.inner.size(namespace, digest)

    def delete_namespace(self, namespace: str) -> int:
        return self.inner.delete_namespace(namespace)


def upload(world: TestClient, data: bytes) -> httpx.Response:
    headers = {**auth(world, LAB), "Content-Type": "application/pdf", "X-Security-Context": "Patient/pa"}
    return world.post("/fhir/Binary", content=data, headers=headers)


def submit(world: TestClient, data: bytes) -> httpx.Response:
    return world.post(
        "/fhir", json=provide_bundle("pa", Doc(inline=True, data=data)), headers=auth(world, LAB)
    )


WRITERS: dict[str, Callable[[TestClient, bytes], httpx.Response]] = {"upload": upload, "submission": submit}


def binaries(app: Any) -> int:
    with app.state.engine.connect() as conn:
        query = select(func.count()).select_from(resources).where(resources.c.type == "Binary")
        return int(conn.execute(query).scalar_one())


def has_blob(store: BlobStore, data: bytes) -> bool:
    """Whether the record's content store holds ``data`` (whatever its back end)."""
    try:
        store.size("pa", hashlib.sha256(data).hexdigest())
    except BlobNotFound:
        return False
    return True


def forgotten_upload(world: TestClient, data: bytes) -> str:
    """An upload of ``data`` that no document claimed, past its expiry."""
    app: Any = world.app
    response = upload(world, data)
    assert response.status_code == 201, response.text
    binary_id = str(response.json()["id"])
    hours = app.state.settings.unclaimed_upload_hours
    with writer(app.state.engine).begin() as conn:
        row = conn.execute(
            select(resources.c.pk, resources.c.last_updated).where(resources.c.id == binary_id)
        ).one()
        conn.execute(
            resources.update()
            .where(resources.c.pk == row.pk)
            .values(last_updated=row.last_updated - timedelta(hours=hours, minutes=1))
        )
    return binary_id


def expire(app: Any, blobs: BlobStore) -> int:
    return expire_unclaimed(app.state.engine, app.state.settings, utcnow(), blobs=blobs)


def readable_or_refused(world: TestClient, response: httpx.Response, data: bytes, before: int) -> None:
    """An accepted write's content is there; a refused one stored no Binary and says why."""
    app: Any = world.app
    if response.status_code in (200, 201):
        for binary_id in written_binaries(world, response):
            got = world.get(f"/fhir/Binary/{binary_id}", headers=auth(world, HOLDER))
            if got.status_code == 404:  # an unclaimed upload: only its uploader reads it back
                got = world.get(f"/fhir/Binary/{binary_id}", headers=auth(world, LAB))
            assert got.status_code == 200 and got.content == data, "an accepted write lost its content"
        return
    assert response.status_code == 409, response.text
    assert "send it again" in response.json()["issue"][0]["diagnostics"]
    assert binaries(app) == before


def written_binaries(world: TestClient, response: httpx.Response) -> list[str]:
    body = response.json()
    if body["resourceType"] == "Binary":
        return [str(body["id"])]
    found = []
    for entry in body["entry"]:
        location = entry["response"].get("location", "")
        if location.startswith("DocumentReference/"):
            doc = world.get(f"/fhir/{location.split('/_history')[0]}", headers=auth(world, HOLDER)).json()
            found.append(doc["content"][0]["attachment"]["url"].rsplit("/Binary/", 1)[1])
    return found


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_a_write_whose_blob_the_expiry_removed_after_its_put_is_refused(world: TestClient, kind: str) -> None:
    """The writer stores the bytes (the blob exists already: the expiring upload's), the expiry
    then finds no other Binary naming them and deletes the blob, then the writer's transaction
    runs: it finds the blob gone and is refused (409), storing nothing; sent again, it is kept."""
    app: Any = world.app
    data = b"%PDF-1.7 same bytes " + os.urandom(3000)
    forgotten_upload(world, data)
    real = app.state.blobs
    paused = PausedStore(real, "put")
    app.state.blobs = paused  # the writer's requests use it
    before = binaries(app)
    answers: list[httpx.Response] = []
    writer_side = threading.Thread(target=lambda: answers.append(WRITERS[kind](world, data)))
    writer_side.start()
    try:
        assert paused.reached.wait(WAIT), "the writer never stored its bytes"
        assert expire(app, real) == 1
        assert not has_blob(real, data)  # the expiry saw no other Binary: the blob is gone
    finally:
        paused.go.set()
        writer_side.join(WAIT)
        app.state.blobs = real
    [answer] = answers
    assert answer.status_code == 409, answer.text
    readable_or_refused(world, answer, data, before)
    again = WRITERS[kind](world, data)
    assert again.status_code in (200, 201), again.text
    readable_or_refused(world, again, data, before)


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_a_write_cannot_commit_between_the_expirys_check_and_its_delete(world: TestClient, kind: str) -> None:
    """The expiry has checked that no other Binary names the bytes and is about to delete the
    blob; a write of the same bytes then stores them (the blob is rewritten) and waits for the
    expiry's lock: it may not commit before the delete (it would name a blob about to go). Once
    the expiry is done the writer finds the blob gone and is refused; nothing names a lost blob."""
    app: Any = world.app
    data = b"%PDF-1.7 same bytes " + os.urandom(3000)
    forgotten_upload(world, data)
    paused = PausedStore(app.state.blobs, "delete", hold=WAIT)
    before = binaries(app)
    expired: list[int] = []
    expiry_side = threading.Thread(target=lambda: expired.append(expire(app, paused)))
    expiry_side.start()
    answers: list[httpx.Response] = []
    writer_side = threading.Thread(target=lambda: answers.append(WRITERS[kind](world, data)))
    blocked = False
    try:
        assert paused.reached.wait(WAIT), "the expiry never came to the delete"
        writer_side.start()
        writer_side.join(2.0)
        blocked = writer_side.is_alive()  # waiting for the expiry's lock, its bytes stored
    finally:
        paused.go.set()
        expiry_side.join(WAIT)
        if writer_side.ident is not None:
            writer_side.join(WAIT)
    assert expired == [1]
    assert not has_blob(app.state.blobs, data)
    [answer] = answers
    readable_or_refused(world, answer, data, before)
    assert blocked, f"the write committed while the expiry was deleting its blob ({answer.status_code})"
    assert answer.status_code == 409


def test_a_write_committed_before_the_expiry_keeps_the_blob(world: TestClient) -> None:
    """The other order: the same bytes uploaded again before the expiry runs; the expiry sees that
    Binary and keeps the blob (a shared content-addressed blob goes only with its last Binary)."""
    app: Any = world.app
    data = b"%PDF-1.7 same bytes " + os.urandom(3000)
    forgotten = forgotten_upload(world, data)
    kept = upload(world, data)
    assert kept.status_code == 201, kept.text
    assert expire(app, app.state.blobs) == 1
    assert world.get(f"/fhir/Binary/{forgotten}", headers=auth(world, LAB)).status_code == 404
    assert has_blob(app.state.blobs, data)
    got = world.get(f"/fhir/Binary/{kept.json()['id']}", headers=auth(world, LAB))
    assert got.status_code == 200 and got.content == data
