"""Encryption at rest of document content, under per-record data keys wrapped by master keys.

Each record (blob namespace, the patient id) has its own random 256-bit *data key*, stored in
``content_key`` only wrapped (AES-256-GCM) by a *master key* from the settings. Destroying that
row destroys the record's content at once, wherever its ciphertext lies (crypto-shredding);
re-wrapping the rows under a new master key rotates it without touching the content.

An encrypted blob, kept by the inner back end under the SHA-256 of its *plaintext* (so
addressing and FHIR hashes are about the content)::

    header   "SCE1" | frame size F (u32, big-endian) | salt (16 random bytes)        24 bytes
    frame i  AES-256-GCM(blob key, nonce = i (12 bytes, big-endian), plaintext, aad) + tag (16)
    blob key HKDF-SHA256(data key, salt, info "sharedcare blob v1"): one key per blob, so
             counter nonces never repeat under a key

Every frame but the last holds exactly F bytes of plaintext; the last holds 0..F. The
associated data of a frame is ``header | final flag | len(namespace) | namespace``, and the
last frame's (flag 1) also carries the SHA-256 digest and the size of the plaintext, which are
known only once the stream has passed. So a frame moved, dropped or taken from another blob,
a truncated or extended blob, a blob stored under another name or namespace, a wrong key: all
fail GCM authentication and raise BlobCorrupted. A range read decrypts only the frames it
needs, plus the last one, which binds the blob to its name before any byte is returned.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import os
import re
import secrets
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from sharedcare.settings import Settings
from sharedcare.storage.blobstore import (
    BlobCorrupted,
    BlobInfo,
    BlobStore,
    Hashing,
    RawBlobStore,
    check_names,
)
from sharedcare.storage.engine import writer
from sharedcare.storage.models import content_key

log = logging.getLogger("sharedcare")

FRAME = 64 * 1024
"""Plaintext bytes per frame."""
TAG = 16
MAGIC = b"SCE1"
HEADER = struct.Struct(">4sI16s")
KEY_BYTES = 32
_WRAP_AAD = b"sharedcare content key v1"
_BLOB_INFO = b"sharedcare blob v1"
_MASTER_ID = re.compile(r"^[A-Za-z0-9._-]{1,32}$")


class MasterKeyError(ValueError):
    """The master keys of the settings are missing or malformed."""


class DataKeyMissing(BlobCorrupted):
    """The record has no data key (any more): its content was crypto-shredded."""


class MasterKeyMissing(BlobCorrupted):
    """The record's data key is wrapped by a master key that is not configured."""


@dataclass(frozen=True, slots=True)
class MasterKey:
    """One master key: its id (stored beside each key it wraps) and 32 key bytes."""

    id: str
    key: bytes = field(repr=False)


def parse_master_keys(value: str) -> list[MasterKey]:
    """``id:base64key,…`` (commas or new lines), newest first; raise MasterKeyError."""
    keys: list[MasterKey] = []
    for item in re.split(r"[,\s]+", value.strip()):
        if not item:
            continue
        key_id, sep, encoded = item.partition(":")
        if not sep or not _MASTER_ID.match(key_id):
            raise MasterKeyError("a master key is written id:base64key, the id in [A-Za-z0-9._-]{1,32}")
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise MasterKeyError(f"master key {key_id!r} is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise MasterKeyError(f"master key {key_id!r} must be {KEY_BYTES} bytes, not {len(key)}")
        if any(k.id == key_id for k in keys):
            raise MasterKeyError(f"master key id {key_id!r} appears twice")
        keys.append(MasterKey(key_id, key))
    if not keys:
        raise MasterKeyError("no master key given")
    return keys


def new_master_key(key_id: str) -> str:
    """A fresh master key in the settings' form ``id:base64key``."""
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


def master_keys(settings: Settings) -> list[MasterKey]:
    """The settings' master keys; unset: the embedded mode's key in ``DATA_DIR/master.key``,
    generated on first use (mode 0600, created exclusively so that concurrent workers agree)."""
    if settings.master_keys is not None:
        return parse_master_keys(settings.master_keys.get_secret_value())
    path = Path(settings.data_dir) / "master.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another worker may be writing it right now
            text = path.read_text().strip()
            if text:
                return parse_master_keys(text)
            time.sleep(0.02)
        raise MasterKeyError(f"{path} is empty") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(new_master_key(f"local-{secrets.token_hex(4)}") + "\n")
    log.warning(
        "generated a content master key into %s: back it up, apart from the database backups; set "
        "SHAREDCARE_MASTER_KEYS in production (docs/storage.md)",
        path,
    )
    return parse_master_keys(path.read_text())


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _wrap_aad(namespace: str, master_id: str) -> bytes:
    # binds a wrapped key to its record and master key: rows cannot be swapped or relabelled
    return b"\0".join((_WRAP_AAD, namespace.encode(), master_id.encode()))


def wrap(master: MasterKey, namespace: str, data_key: bytes) -> bytes:
    """``data_key`` wrapped by ``master``: nonce (12) + AES-GCM ciphertext and tag."""
    nonce = os.urandom(12)
    return nonce + AESGCM(master.key).encrypt(nonce, data_key, _wrap_aad(namespace, master.id))


@dataclass(slots=True)
class RotationReport:
    """What ``KeyRing.rotate`` did."""

    master_key_id: str
    rewrapped: int = 0
    current: int = 0
    """Data keys wrapped by the newest master key after the run."""
    unreadable: dict[str, int] = field(default_factory=dict)
    """Data keys left as they were, by master key id: that key is not configured or does not
    unwrap them (their content stays unreadable until it is)."""


class KeyRing:
    """The records' data keys, read from (and created in) ``content_key`` through ``engine``.

    Keys are not cached: a key destroyed by ``crypto_shred`` is gone for every process at once.
    A key is created in a short transaction of its own on the first ``put`` of a record, so on
    SQLite store content *before* opening the write transaction that records it.
    """

    def __init__(self, engine: Engine, masters: Sequence[MasterKey]) -> None:
        if not masters:
            raise MasterKeyError("no master key given")
        self.engine = engine
        self.newest = masters[0]
        self.masters = {m.id: m for m in masters}

    def data_key(self, namespace: str, *, create: bool = False) -> bytes:
        """The record's data key; made on first use if ``create``, else raise DataKeyMissing."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(content_key.c.master_key_id, content_key.c.wrapped).where(
                    content_key.c.namespace == namespace
                )
            ).first()
        if row is not None:
            return self.unwrap(namespace, row.master_key_id, row.wrapped)
        if not create:
            raise DataKeyMissing(f"no data key for {namespace}: its content was destroyed")
        key = secrets.token_bytes(KEY_BYTES)
        now = _now()
        try:
            with writer(self.engine).begin() as conn:
                conn.execute(
                    insert(content_key).values(
                        namespace=namespace,
                        master_key_id=self.newest.id,
                        wrapped=wrap(self.newest, namespace, key),
                        created=now,
                        wrapped_at=now,
                    )
                )
        except IntegrityError:
            return self.data_key(namespace)  # another writer made it first: use theirs
        return key

    def unwrap(self, namespace: str, master_id: str, wrapped: bytes) -> bytes:
        """The data key of ``namespace`` from its stored form; raise BlobCorrupted."""
        master = self.masters.get(master_id)
        if master is None:
            raise MasterKeyMissing(
                f"the data key of {namespace} is wrapped by master key {master_id!r}, not configured"
            )
        try:
            return AESGCM(master.key).decrypt(wrapped[:12], wrapped[12:], _wrap_aad(namespace, master_id))
        except (InvalidTag, ValueError):
            raise BlobCorrupted(
                f"the data key of {namespace} does not unwrap with master key {master_id!r}"
            ) from None

    def rotate(self, *, batch: int = 500) -> RotationReport:
        """Re-wrap every data key under the newest master key, ``batch`` keys per transaction
        (the content is untouched); rerun safely after an interruption."""
        newest = self.newest
        report = RotationReport(newest.id)
        k = content_key.c
        last = ""
        while True:
            with writer(self.engine).begin() as conn:
                rows = conn.execute(
                    select(k.namespace, k.master_key_id, k.wrapped)
                    .where(k.master_key_id != newest.id, k.namespace > last)
                    .order_by(k.namespace)
                    .limit(batch)
                ).all()
                for row in rows:
                    try:
                        key = self.unwrap(row.namespace, row.master_key_id, row.wrapped)
                    except BlobCorrupted:
                        report.unreadable[row.master_key_id] = report.unreadable.get(row.master_key_id, 0) + 1
                        continue
                    conn.execute(
                        update(content_key)
                        .where(k.namespace == row.namespace, k.master_key_id == row.master_key_id)
                        .values(
                            master_key_id=newest.id,
                            wrapped=wrap(newest, row.namespace, key),
                            wrapped_at=_now(),
                        )
                    )
                    report.rewrapped += 1
            if len(rows) < batch:
                break
            last = rows[-1].namespace
        with self.engine.connect() as conn:
            report.current = conn.execute(
                select(func.count()).select_from(content_key).where(k.master_key_id == newest.id)
            ).scalar_one()
        return report

    def counts(self) -> dict[str, int]:
        """How many data keys each master key wraps (an old master key can go at zero)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(content_key.c.master_key_id, func.count()).group_by(content_key.c.master_key_id)
            ).all()
        return {row[0]: row[1] for row in rows}


def crypto_shred(conn: Connection, patient_id: str, blobs: BlobStore | None = None) -> int:
    """Destroy the record's content: delete its data key in ``conn``'s transaction (from its
    commit on, every copy of the ciphertext is unreadable, backups and stray replicas included),
    then delete the blobs themselves from ``blobs``, best effort (a failure is logged: the bytes
    left are noise). Returns how many blobs were deleted."""
    conn.execute(delete(content_key).where(content_key.c.namespace == patient_id))
    if blobs is None:
        return 0
    try:
        return blobs.delete_namespace(patient_id)
    except Exception as exc:  # the key is gone already: leftover ciphertext is unreadable
        log.warning("content of a shredded record not deleted: %s", type(exc).__name__)
        return 0


# --------------------------------------------------------------------------------------------
# The encrypted store
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where the frames of a stored blob lie."""

    header: bytes
    frame: int
    salt: bytes
    frames: int
    size: int

    def offset(self, index: int) -> int:
        return HEADER.size + index * (self.frame + TAG)

    def length(self, index: int) -> int:
        """Plaintext bytes of frame ``index``."""
        return self.frame if index < self.frames - 1 else self.size - index * self.frame


def _layout(header: bytes, stored: int) -> _Layout:
    if len(header) != HEADER.size:
        raise BlobCorrupted("encrypted blob too short")
    magic, frame, salt = HEADER.unpack(header)
    if magic != MAGIC or frame <= 0:
        raise BlobCorrupted("not an encrypted blob (bad header)")
    body = stored - HEADER.size
    frames = max(1, math.ceil(body / (frame + TAG)))
    size = body - frames * TAG
    if size < 0 or size > frames * frame or (frames > 1 and size <= (frames - 1) * frame):
        raise BlobCorrupted("encrypted blob truncated")
    return _Layout(header, frame, salt, frames, size)


class _Frames:
    """Seals and opens the frames of one blob."""

    def __init__(self, data_key: bytes, header: bytes, salt: bytes, namespace: str) -> None:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=_BLOB_INFO)
        self.aead = AESGCM(hkdf.derive(data_key))
        ns = namespace.encode()
        self.aad = header + b"\0" + bytes([len(ns)]) + ns
        self.final_aad = header + b"\1" + bytes([len(ns)]) + ns

    def _aad(self, final: tuple[str, int] | None) -> bytes:
        if final is None:
            return self.aad
        digest, size = final
        return self.final_aad + bytes.fromhex(digest) + size.to_bytes(8, "big")

    def seal(self, index: int, plaintext: bytes, final: tuple[str, int] | None = None) -> bytes:
        return self.aead.encrypt(index.to_bytes(12, "big"), plaintext, self._aad(final))

    def open(self, index: int, sealed: bytes, final: tuple[str, int] | None = None) -> bytes:
        try:
            return self.aead.decrypt(index.to_bytes(12, "big"), sealed, self._aad(final))
        except InvalidTag:
            raise BlobCorrupted(
                f"frame {index} does not authenticate (tampered, moved or wrong key)"
            ) from None


class EncryptedBlobStore:
    """A BlobStore that encrypts into ``inner`` (file or S3) with the records' data keys.

    Names, sizes, ranges and BlobInfo are those of the plaintext; the inner store holds only
    ciphertext. See the module docstring for the format.
    """

    def __init__(self, inner: RawBlobStore, keys: KeyRing, *, frame: int = FRAME) -> None:
        self.inner = inner
        self.keys = keys
        self.frame = frame

    def put(self, namespace: str, chunks: Iterable[bytes], *, max_size: int | None = None) -> BlobInfo:
        check_names(namespace)
        data_key = self.keys.data_key(namespace, create=True)
        hashing = Hashing(max_size)
        header = HEADER.pack(MAGIC, self.frame, secrets.token_bytes(16))
        sealer = _Frames(data_key, header, header[8:], namespace)
        size = self.frame

        def sealed() -> Iterator[bytes]:
            yield header
            index = 0
            pending = bytearray()
            for chunk in chunks:
                hashing.feed(chunk)
                pending += chunk
                if len(pending) > size:  # keep >= 1 byte back: the last frame is sealed as final
                    full = (len(pending) - 1) // size
                    for i in range(full):
                        yield sealer.seal(index, bytes(pending[i * size : (i + 1) * size]))
                        index += 1
                    del pending[: full * size]
            yield sealer.seal(index, bytes(pending), (hashing.digest(), hashing.size))

        self.inner.put_named(namespace, sealed(), hashing.digest)
        return hashing.info(namespace)

    def _read_layout(self, namespace: str, digest: str) -> _Layout:
        stored = self.inner.size(namespace, digest)
        header = b"".join(self.inner.open_raw(namespace, digest, 0, HEADER.size))
        return _layout(header, stored)

    def size(self, namespace: str, digest: str) -> int:
        check_names(namespace, digest)
        return self._read_layout(namespace, digest).size

    def open(self, namespace: str, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        check_names(namespace, digest)
        layout = self._read_layout(namespace, digest)  # BlobNotFound before anything else
        frames = _Frames(self.keys.data_key(namespace), layout.header, layout.salt, namespace)
        last = layout.frames - 1
        # the last frame binds the blob to its name and size: check it before returning a byte
        tail = b"".join(self.inner.open_raw(namespace, digest, layout.offset(last), None))
        frames.open(last, tail, (digest, layout.size))
        whole = start == 0 and end is None
        start, end = max(0, start), layout.size if end is None else min(end, layout.size)
        if start >= end:
            return iter(())
        return self._stream(namespace, digest, layout, frames, start, end, whole)

    def _stream(
        self, namespace: str, digest: str, layout: _Layout, frames: _Frames, start: int, end: int, whole: bool
    ) -> Iterator[bytes]:
        first, last = start // layout.frame, (end - 1) // layout.frame
        final = (digest, layout.size)
        check = Hashing(None) if whole else None
        raw = self.inner.open_raw(namespace, digest, layout.offset(first), layout.offset(last + 1))
        pending = bytearray()
        index = first
        for chunk in raw:
            pending += chunk
            while index <= last and len(pending) >= layout.length(index) + TAG:
                want = layout.length(index) + TAG
                sealed = bytes(pending[:want])
                del pending[:want]
                plain = frames.open(index, sealed, final if index == layout.frames - 1 else None)
                lo = start - index * layout.frame if index == first else 0
                hi = end - index * layout.frame if index == last else len(plain)
                piece = plain[lo:hi]
                if check is not None:
                    check.feed(piece)
                index += 1
                yield piece
        if index <= last:
            raise BlobCorrupted("encrypted blob ended early")
        if check is not None and check.digest() != digest:
            raise BlobCorrupted(f"blob {digest} does not match its digest")

    def delete(self, namespace: str, digest: str) -> bool:
        check_names(namespace, digest)
        return self.inner.delete(namespace, digest)

    def delete_namespace(self, namespace: str) -> int:
        return self.inner.delete_namespace(namespace)
