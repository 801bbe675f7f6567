"""The local file blob store: content-addressed, atomic, streamed, verified on read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sharedcare.storage.blobstore import BlobCorrupted, BlobError, BlobNotFound, BlobTooLarge, FileBlobStore


def test_put_open_range_and_size(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    data = bytes(range(256)) * 1000
    info = store.put("pa", (data[i : i + 1000] for i in range(0, len(data), 1000)))
    assert info.digest == hashlib.sha256(data).hexdigest() and info.size == len(data)
    assert info.sha1 == hashlib.sha1(data).digest()
    assert b"".join(store.open("pa", info.digest)) == data
    assert b"".join(store.open("pa", info.digest, 100, 70_000)) == data[100:70_000]
    assert store.size("pa", info.digest) == len(data)
    assert store.put("pa", [data]).digest == info.digest  # same content, same blob
    with pytest.raises(BlobNotFound):
        store.size("pb", info.digest)


def test_too_large_leaves_nothing(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    with pytest.raises(BlobTooLarge):
        store.put("pa", [b"x" * 600, b"y" * 600], max_size=1000)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_corruption_is_detected_on_a_whole_read(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    info = store.put("pa", [b"hello world"])
    path = next(p for p in tmp_path.rglob(info.digest))
    path.write_bytes(b"hello w0rld")
    with pytest.raises(BlobCorrupted):
        b"".join(store.open("pa", info.digest))


def test_names_cannot_escape_and_namespaces_are_deleted_whole(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    for bad in ("../x", "a/b", "..", ""):
        with pytest.raises(BlobError):
            store.put(bad, [b"x"])
    with pytest.raises(BlobError):
        list(store.open("pa", "../../etc/passwd"))
    store.put("pa", [b"one"])
    store.put("pa", [b"two"])
    keep = store.put("pb", [b"three"])
    assert store.delete_namespace("pa") == 2
    assert b"".join(store.open("pb", keep.digest)) == b"three"
