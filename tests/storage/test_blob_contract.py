"""One contract for every content store: local files, S3 (a real Swift cluster), and both
wrapped in encryption. Put/open/range/size, the size limit, atomicity, deletion by namespace,
corruption detection, and a 200 MB round trip in bounded memory."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from swift_cluster import BUCKET

from sharedcare.storage.blobstore import (
    BlobCorrupted,
    BlobError,
    BlobNotFound,
    BlobStore,
    BlobTooLarge,
    FileBlobStore,
    RawBlobStore,
)
from sharedcare.storage.crypto import EncryptedBlobStore, KeyRing, MasterKey
from sharedcare.storage.engine import make_engine
from sharedcare.storage.migrate import upgrade
from sharedcare.storage.s3 import S3BlobStore

pytestmark = pytest.mark.xdist_group("swift")  # one Swift cluster per session: keep its tests together

MIB = 1024 * 1024


@dataclass
class Subject:
    """A store under test, with direct access to what its back end holds."""

    kind: str
    store: BlobStore
    backend: RawBlobStore
    leftovers: Callable[[str], list[str]]
    """Everything the back end holds for a namespace, temporaries and unfinished uploads included."""
    overwrite: Callable[[str, str, bytes], None]
    """Replace the stored bytes of a blob, behind the store's back."""

    def raw(self, namespace: str, digest: str) -> bytes:
        return b"".join(self.backend.open_raw(namespace, digest))


@pytest.fixture(scope="module")
def key_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The data keys' database of the encrypted stores (its behaviour on both databases is
    tested in test_content_crypto.py)."""
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('keys') / 'keys.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def _file_subject(
    root: Path,
) -> tuple[FileBlobStore, Callable[[str], list[str]], Callable[[str, str, bytes], None]]:
    store = FileBlobStore(root)

    def leftovers(namespace: str) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in (root / namespace).rglob("*") if p.is_file())

    def overwrite(namespace: str, digest: str, data: bytes) -> None:
        (root / namespace / digest[:2] / digest).write_bytes(data)

    return store, leftovers, overwrite


def _s3_subject(
    client: Any,
) -> tuple[S3BlobStore, Callable[[str], list[str]], Callable[[str, str, bytes], None]]:
    store = S3BlobStore(client, BUCKET)

    def leftovers(namespace: str) -> list[str]:
        listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{namespace}/")
        uploads = client.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{namespace}/")
        return sorted(
            [o["Key"] for o in listed.get("Contents", [])]
            + [f"upload:{u['Key']}" for u in uploads.get("Uploads", [])]
        )

    def overwrite(namespace: str, digest: str, data: bytes) -> None:
        client.put_object(Bucket=BUCKET, Key=f"{namespace}/{digest}", Body=data)

    return store, leftovers, overwrite


@pytest.fixture(params=["file", "s3", "encrypted-file", "encrypted-s3"])
def subject(request: pytest.FixtureRequest, tmp_path: Path, key_engine: Any) -> Subject:
    kind: str = request.param
    backend: Any
    if kind.endswith("s3"):
        backend, leftovers, overwrite = _s3_subject(request.getfixturevalue("s3_client"))
    else:
        backend, leftovers, overwrite = _file_subject(tmp_path / "blobs")
    store: BlobStore = backend
    if kind.startswith("encrypted"):
        store = EncryptedBlobStore(backend, KeyRing(key_engine, [MasterKey("m1", os.urandom(32))]))
    return Subject(kind, store, backend, leftovers, overwrite)


@pytest.fixture
def ns() -> str:
    """A namespace of its own for each test (the Swift bucket is shared by the session)."""
    return f"p{uuid.uuid4().hex[:12]}"


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def test_put_open_range_and_size(subject: Subject, ns: str) -> None:
    store = subject.store
    data = os.urandom(300_000)
    info = store.put(ns, _chunks(data, 7_000))
    assert info.namespace == ns and info.size == len(data)
    assert info.digest == hashlib.sha256(data).hexdigest()
    assert info.sha1 == hashlib.sha1(data).digest()
    assert b"".join(store.open(ns, info.digest)) == data
    assert store.size(ns, info.digest) == len(data)
    for start, end in [
        (0, 1),
        (100, 70_000),
        (65_535, 65_537),
        (131_071, 196_609),
        (299_999, None),
        (0, 300_000),
        (250_000, 400_000),
        (300_000, None),
        (400_000, 500_000),
        (10, 10),
    ]:
        assert b"".join(store.open(ns, info.digest, start, end)) == data[start:end], (start, end)
    assert store.put(ns, [data]).digest == info.digest  # same content, same blob
    assert b"".join(store.open(ns, info.digest)) == data
    other = f"q{ns[1:]}"
    with pytest.raises(BlobNotFound):
        store.size(other, info.digest)
    with pytest.raises(BlobNotFound):
        store.open(other, info.digest)  # at once, before a byte is read
    if subject.kind.startswith("encrypted"):
        stored = subject.raw(ns, info.digest)
        assert data[:64] not in stored and len(stored) > len(data)


def test_empty_content(subject: Subject, ns: str) -> None:
    info = subject.store.put(ns, [])
    assert info.size == 0 and info.digest == hashlib.sha256(b"").hexdigest()
    assert b"".join(subject.store.open(ns, info.digest)) == b""
    assert b"".join(subject.store.open(ns, info.digest, 0, 10)) == b""
    assert subject.store.size(ns, info.digest) == 0


def test_too_large_leaves_nothing(subject: Subject, ns: str) -> None:
    with pytest.raises(BlobTooLarge):
        subject.store.put(ns, [b"x" * 600, b"y" * 600], max_size=1000)
    assert subject.leftovers(ns) == []
    # past the first S3 part: the multipart upload is aborted
    with pytest.raises(BlobTooLarge):
        subject.store.put(ns, (os.urandom(MIB) for _ in range(12)), max_size=10 * MIB)
    assert subject.leftovers(ns) == []
    exact = subject.store.put(ns, [b"z" * 1000], max_size=1000)
    assert subject.store.size(ns, exact.digest) == 1000


def test_a_failing_upload_leaves_nothing(subject: Subject, ns: str) -> None:
    def failing() -> Iterator[bytes]:
        for _ in range(9):
            yield os.urandom(MIB)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        subject.store.put(ns, failing())
    assert subject.leftovers(ns) == []


def test_a_namespace_is_deleted_whole(subject: Subject, ns: str) -> None:
    other = f"q{ns[1:]}"
    one = subject.store.put(ns, [b"one"])
    subject.store.put(ns, [b"two"])
    keep = subject.store.put(other, [b"three"])
    assert subject.store.delete_namespace(ns) == 2
    assert subject.leftovers(ns) == []
    with pytest.raises(BlobNotFound):
        subject.store.open(ns, one.digest)
    assert b"".join(subject.store.open(other, keep.digest)) == b"three"
    assert subject.store.delete_namespace(ns) == 0
    subject.store.delete_namespace(other)


def test_names_cannot_escape(subject: Subject, ns: str) -> None:
    for bad in ("../x", "a/b", "..", "", "x" * 65):
        with pytest.raises(BlobError):
            subject.store.put(bad, [b"x"])
    with pytest.raises(BlobError):
        subject.store.open(ns, "../../etc/passwd")
    with pytest.raises(BlobError):
        subject.store.size(ns, "A" * 64)


def test_corruption_is_detected(subject: Subject, ns: str) -> None:
    data = os.urandom(200_000)
    info = subject.store.put(ns, _chunks(data, 50_000))
    stored = bytearray(subject.raw(ns, info.digest))
    stored[100_000] ^= 0x01
    subject.overwrite(ns, info.digest, bytes(stored))
    with pytest.raises(BlobCorrupted):
        b"".join(subject.store.open(ns, info.digest))
    if subject.kind.startswith("encrypted"):  # every frame is authenticated: ranges too
        with pytest.raises(BlobCorrupted):
            b"".join(subject.store.open(ns, info.digest, 99_000, 101_000))
        assert b"".join(subject.store.open(ns, info.digest, 0, 1000)) == data[:1000]  # other frames
        subject.overwrite(ns, info.digest, bytes(stored[:-100]))  # truncated
        with pytest.raises(BlobCorrupted):
            subject.store.open(ns, info.digest, 0, 10)


def test_200_mb_stream_in_bounded_memory(subject: Subject, ns: str) -> None:
    """200 MB in and out, generated on the fly: the Python heap's peak stays a few parts' worth
    (S3 buffers one 8 MiB part), never near the content's size."""
    total = 200 * MIB
    block = os.urandom(MIB)

    def generated() -> Iterator[bytes]:
        for i in range(total // MIB):
            yield i.to_bytes(8, "big") + block[8:]

    expected = hashlib.sha256()
    for chunk in generated():
        expected.update(chunk)
    tracemalloc.start()
    try:
        info = subject.store.put(ns, generated(), max_size=256 * MIB)
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        seen = hashlib.sha256()
        size = 0
        for chunk in subject.store.open(ns, info.digest):
            seen.update(chunk)
            size += len(chunk)
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size == total and info.digest == expected.hexdigest()
    assert size == total and seen.hexdigest() == expected.hexdigest()
    assert put_peak < 40 * MIB, f"put peaked at {put_peak / MIB:.1f} MiB"
    assert get_peak < 8 * MIB, f"read peaked at {get_peak / MIB:.1f} MiB"
    tail = b"".join(subject.store.open(ns, info.digest, total - 100_000, None))
    assert tail == block[-100_000:]
    assert subject.store.delete_namespace(ns) == 1
    assert subject.leftovers(ns) == []


def test_s3_namespace_deletion_aborts_unfinished_uploads(s3_client: Any, ns: str) -> None:
    """A put interrupted before it could abort (a killed worker) leaves a multipart upload
    holding content: purging the record aborts it too."""
    store = S3BlobStore(s3_client, BUCKET)
    store.put(ns, [b"kept until the purge"])
    key = f"{ns}/.incoming/interrupted"
    upload = s3_client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    s3_client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=1, Body=b"half a letter")
    _, leftovers, _ = _s3_subject(s3_client)
    assert leftovers(ns) == sorted(
        [f"upload:{key}", f"{ns}/{hashlib.sha256(b'kept until the purge').hexdigest()}"]
    )
    assert store.delete_namespace(ns) == 1
    assert leftovers(ns) == []
