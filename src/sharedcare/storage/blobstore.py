"""The blob store: document content (MHD attachments, Binary) kept outside the database.

One interface, several back ends: local files (the embedded default) and an S3-compatible object
store (production). Content is addressed by the SHA-256 of its bytes inside a *namespace* (the
patient whose record holds it), so a blob is written once however often it is submitted, a
corrupted blob is detected on read, and a record's content can be found, and destroyed, as a
whole. Bytes move as iterators of chunks in both directions: a large file never sits whole in
memory.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

CHUNK = 64 * 1024
"""Bytes per chunk when streaming from a back end."""

_NAMESPACE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class BlobError(Exception):
    """The blob store could not do what was asked."""


class BlobNotFound(BlobError):
    """No blob of that namespace and digest."""


class BlobCorrupted(BlobError):
    """The stored bytes no longer match their digest (or do not decrypt)."""


class BlobTooLarge(BlobError):
    """The content exceeds the configured size limit; nothing was stored."""


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """What was stored: the SHA-256 (hex) and the size of the content, and also its SHA-1 (which
    FHIR R4's ``Attachment.hash`` carries, base64) computed on the same pass."""

    namespace: str
    digest: str
    size: int
    sha1: bytes


class BlobStore(Protocol):
    """Content storage. ``namespace`` is the record (patient id) the content belongs to."""

    def put(self, namespace: str, chunks: Iterable[bytes], *, max_size: int | None = None) -> BlobInfo:
        """Store the bytes of ``chunks`` atomically (all or nothing); raise BlobTooLarge past
        ``max_size`` bytes, leaving nothing behind."""
        ...

    def open(self, namespace: str, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes ``[start, end)`` of a blob, in chunks; raise BlobNotFound. A read of the
        whole blob checks its digest at the end and raises BlobCorrupted on mismatch."""
        ...

    def size(self, namespace: str, digest: str) -> int:
        """The blob's size in bytes; raise BlobNotFound."""
        ...

    def delete_namespace(self, namespace: str) -> int:
        """Delete every blob of a namespace (a purged record); return how many."""
        ...

    def delete(self, namespace: str, digest: str) -> bool:
        """Delete one blob (an expired upload's content); False when there was none."""
        ...


class RawBlobStore(BlobStore, Protocol):
    """A back end that also stores bytes it does not address itself: the encryption layer
    (``storage.crypto``) keeps ciphertext under the digest of the *plaintext*, which is known
    only once the stream is consumed. ``size`` of a raw store is the stored size."""

    def put_named(self, namespace: str, chunks: Iterable[bytes], name: Callable[[], str]) -> int:
        """Store the bytes of ``chunks`` atomically under the digest ``name()`` returns once they
        are all consumed; return how many bytes were stored. An exception raised by ``chunks``
        (BlobTooLarge…) leaves nothing behind."""
        ...

    def open_raw(
        self, namespace: str, digest: str, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        """The stored bytes ``[start, end)``, unchecked; raise BlobNotFound."""
        ...


def check_names(namespace: str, digest: str | None = None) -> None:
    """Refuse names that could escape the store's layout (paths, keys)."""
    if not _NAMESPACE.match(namespace) or namespace in (".", ".."):
        raise BlobError(f"invalid blob namespace {namespace!r}")
    if digest is not None and not _DIGEST.match(digest):
        raise BlobError(f"invalid blob digest {digest!r}")


class Hashing:
    """Hashes and counts bytes as they pass, enforcing a size limit."""

    def __init__(self, max_size: int | None) -> None:
        self.sha256 = hashlib.sha256()
        self.sha1 = hashlib.sha1()  # FHIR R4 Attachment.hash is SHA-1 by definition
        self.size = 0
        self.max_size = max_size

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.max_size is not None and self.size > self.max_size:
            raise BlobTooLarge(f"the content exceeds {self.max_size} bytes")
        self.sha256.update(chunk)
        self.sha1.update(chunk)

    def passing(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """``chunks`` unchanged, fed to the hashes as they pass."""
        for chunk in chunks:
            self.feed(chunk)
            yield chunk

    def digest(self) -> str:
        """The SHA-256 (hex) of what passed: the blob's name."""
        return self.sha256.hexdigest()

    def info(self, namespace: str) -> BlobInfo:
        return BlobInfo(namespace, self.sha256.hexdigest(), self.size, self.sha1.digest())


class FileBlobStore:
    """Blobs as files under ``root/<namespace>/<digest[:2]>/<digest>``, written to a temporary
    file in the same folder, flushed to disk, then renamed into place (atomic on POSIX)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, namespace: str, digest: str) -> Path:
        check_names(namespace, digest)
        return self.root / namespace / digest[:2] / digest

    def put(self, namespace: str, chunks: Iterable[bytes], *, max_size: int | None = None) -> BlobInfo:
        hashing = Hashing(max_size)
        self.put_named(namespace, hashing.passing(chunks), hashing.digest)
        return hashing.info(namespace)

    def put_named(self, namespace: str, chunks: Iterable[bytes], name: Callable[[], str]) -> int:
        check_names(namespace)
        folder = self.root / namespace
        folder.mkdir(parents=True, exist_ok=True)
        size = 0
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            final = self._path(namespace, name())
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)  # same content, same name: a second put changes nothing
            _fsync_dir(final.parent)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size

    def open(self, namespace: str, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        path = self._path(namespace, digest)
        try:
            f = path.open("rb")
        except FileNotFoundError as err:
            raise BlobNotFound(f"{namespace}/{digest}") from err
        return _read_file(f, digest, start, end)

    def open_raw(
        self, namespace: str, digest: str, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        path = self._path(namespace, digest)
        try:
            f = path.open("rb")
        except FileNotFoundError as err:
            raise BlobNotFound(f"{namespace}/{digest}") from err
        return _read_file(f, None, start, end)

    def size(self, namespace: str, digest: str) -> int:
        try:
            return self._path(namespace, digest).stat().st_size
        except FileNotFoundError as err:
            raise BlobNotFound(f"{namespace}/{digest}") from err

    def delete(self, namespace: str, digest: str) -> bool:
        path = self._path(namespace, digest)
        if not path.exists():
            return False
        path.unlink(missing_ok=True)
        return True

    def delete_namespace(self, namespace: str) -> int:
        check_names(namespace)
        folder = self.root / namespace
        if not folder.exists():
            return 0
        count = sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        shutil.rmtree(folder)
        return count


def _read_file(f: object, digest: str | None, start: int, end: int | None) -> Iterator[bytes]:
    """Bytes ``[start, end)`` of ``f``; a whole read is checked against ``digest`` if given."""
    import io

    assert isinstance(f, io.BufferedReader)
    whole = start == 0 and end is None
    check = hashlib.sha256() if whole and digest is not None else None
    with f:
        f.seek(start)
        left = None if end is None else max(0, end - start)
        while left is None or left > 0:
            chunk = f.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                break
            if check is not None:
                check.update(chunk)
            if left is not None:
                left -= len(chunk)
            yield chunk
    if check is not None and check.hexdigest() != digest:
        raise BlobCorrupted(f"blob {digest} does not match its digest")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
