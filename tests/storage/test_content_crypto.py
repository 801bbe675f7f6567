"""Encryption at rest: the frame format's tamper evidence, the data keys on both databases,
master key rotation (``sharedcare keys``) and crypto-shredding of a purged record."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import stat
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from sharedcare.access import care
from sharedcare.access.lifecycle import purge, run
from sharedcare.access.models import record_status
from sharedcare.access.policy import category_of
from sharedcare.app import create_app
from sharedcare.audit.models import audit_log
from sharedcare.cli import app as cli_app
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.store import utcnow
from sharedcare.settings import Settings, get_settings
from sharedcare.storage.blobstore import BlobCorrupted, BlobNotFound, FileBlobStore
from sharedcare.storage.content import StorageConfigError, make_backend, make_blob_store
from sharedcare.storage.crypto import (
    HEADER,
    TAG,
    DataKeyMissing,
    EncryptedBlobStore,
    KeyRing,
    MasterKey,
    MasterKeyError,
    MasterKeyMissing,
    master_keys,
    parse_master_keys,
)
from sharedcare.storage.engine import writer
from sharedcare.storage.models import content_key
from support import emptied_engine

FRAME = 1024  # small frames: many frames in little data
M1 = MasterKey("m1", bytes(range(32)))
M2 = MasterKey("m2", bytes(range(32, 64)))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    yield from emptied_engine(db_url)


def _store(root: Path, engine: Engine, *masters: MasterKey) -> EncryptedBlobStore:
    return EncryptedBlobStore(FileBlobStore(root), KeyRing(engine, masters or (M1,)), frame=FRAME)


def _path(root: Path, namespace: str, digest: str) -> Path:
    return root / namespace / digest[:2] / digest


def _frames(raw: bytes) -> tuple[bytes, list[bytes]]:
    body = raw[HEADER.size :]
    return raw[: HEADER.size], [body[i : i + FRAME + TAG] for i in range(0, len(body), FRAME + TAG)]


# --------------------------------------------------------------------------------------------
# Master keys
# --------------------------------------------------------------------------------------------


def test_master_keys_are_parsed_strictly() -> None:
    k1, k2 = base64.b64encode(os.urandom(32)).decode(), base64.b64encode(os.urandom(32)).decode()
    keys = parse_master_keys(f" new:{k2}, old:{k1} ")
    assert [k.id for k in keys] == ["new", "old"] and keys[1].key == base64.b64decode(k1)
    assert k1 not in repr(keys)  # a key never shows in logs or tracebacks
    short = base64.b64encode(os.urandom(16)).decode()
    for bad in ("", "nokey", f"a:{short}", f"a:{k1},a:{k2}", "a:!!!", f"bad id:{k1}", f":{k1}"):
        with pytest.raises(MasterKeyError):
            parse_master_keys(bad)


def test_the_embedded_master_key_is_generated_once_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, demo_data=False)
    first = master_keys(settings)
    path = tmp_path / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert master_keys(settings) == first and len(first) == 1 and len(first[0].key) == 32
    given = f"prod:{base64.b64encode(os.urandom(32)).decode()}"
    assert [k.id for k in master_keys(Settings(data_dir=tmp_path, master_keys=given))] == ["prod"]


def test_the_application_stores_content_encrypted(settings: Settings) -> None:
    app = create_app(settings)
    try:
        store = app.state.blobs
        assert isinstance(store, EncryptedBlobStore) and isinstance(store.inner, FileBlobStore)
        info = store.put("pa", [b"discharge letter"])
        stored = next((settings.data_dir / "blobs" / "pa").rglob(info.digest)).read_bytes()
        assert b"discharge" not in stored
        assert b"".join(store.open("pa", info.digest)) == b"discharge letter"
        assert (settings.data_dir / "master.key").exists()
    finally:
        app.state.engine.dispose()
    with pytest.raises(StorageConfigError):
        make_backend(settings.model_copy(update={"blob_backend": "s3"}))


# --------------------------------------------------------------------------------------------
# The frame format
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, FRAME - 1, FRAME, FRAME + 1, 3 * FRAME, 5 * FRAME + 17])
def test_every_range_of_every_shape(tmp_path: Path, engine: Engine, size: int) -> None:
    store = _store(tmp_path, engine)
    data = os.urandom(size)
    info = store.put("pa", [data[i : i + 700] for i in range(0, size, 700)])
    assert info.digest == hashlib.sha256(data).hexdigest()
    raw = _path(tmp_path, "pa", info.digest).read_bytes()
    frames = max(1, -(-size // FRAME))
    assert len(raw) == HEADER.size + size + frames * TAG  # framing costs 16 bytes per frame
    assert store.size("pa", info.digest) == size
    assert b"".join(store.open("pa", info.digest)) == data
    points = sorted({0, 1, FRAME - 1, FRAME, FRAME + 1, size // 2, size - 1, size, size + 5})
    for start in points:
        for end in points:
            got = b"".join(store.open("pa", info.digest, start, end))
            assert got == data[start:end], (start, end)


def test_a_range_read_decrypts_only_the_frames_it_needs(tmp_path: Path, engine: Engine) -> None:
    store = _store(tmp_path, engine)
    info = store.put("pa", [os.urandom(10 * FRAME)])
    asked: list[tuple[int, int | None]] = []
    inner = store.inner
    assert isinstance(inner, FileBlobStore)
    original = inner.open_raw

    def spying(namespace: str, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        asked.append((start, end))
        return original(namespace, digest, start, end)

    inner.open_raw = spying  # type: ignore[method-assign]
    b"".join(store.open("pa", info.digest, 4 * FRAME + 10, 5 * FRAME + 10))
    # the header, the last frame (it binds the name), then frames 4 and 5 only
    first = HEADER.size + 4 * (FRAME + TAG)
    assert asked[-1] == (first, first + 2 * (FRAME + TAG))


def test_tampering_is_detected(tmp_path: Path, engine: Engine) -> None:
    store = _store(tmp_path, engine)
    data = os.urandom(4 * FRAME + 100)
    info = store.put("pa", [data])
    other = store.put("pa", [os.urandom(4 * FRAME + 100)])
    path = _path(tmp_path, "pa", info.digest)
    good = path.read_bytes()
    header, frames = _frames(good)

    def attempt(raw: bytes, start: int = 0, end: int | None = None) -> None:
        path.write_bytes(raw)
        with pytest.raises(BlobCorrupted):
            b"".join(store.open("pa", info.digest, start, end))

    flipped = bytearray(good)
    flipped[HEADER.size + FRAME + TAG + 5] ^= 0x80
    attempt(bytes(flipped))  # a bit flipped in frame 1
    attempt(bytes(flipped), FRAME, FRAME + 10)  # a range over it
    attempt(header + frames[1] + frames[0] + b"".join(frames[2:]))  # frames swapped
    attempt(header + b"".join(frames[:-1]))  # last frame dropped: truncated
    attempt(good + frames[-1])  # extended
    attempt(good[:-1])  # cut short inside the last frame
    attempt(header[:8] + os.urandom(16) + b"".join(frames))  # another salt
    attempt(b"XXXX" + good[4:])  # not our format
    attempt(_path(tmp_path, "pa", other.digest).read_bytes(), 0, 10)  # another blob under this name
    path.write_bytes(good)
    assert b"".join(store.open("pa", info.digest)) == data
    # a blob moved into another record's namespace meets another key
    moved = _path(tmp_path, "pb", info.digest)
    store.put("pb", [b"pb has a key"])
    moved.parent.mkdir(parents=True, exist_ok=True)
    moved.write_bytes(good)
    with pytest.raises(BlobCorrupted):
        store.open("pb", info.digest, 0, 10)


def test_wrong_master_keys_do_not_decrypt(tmp_path: Path, engine: Engine) -> None:
    info = _store(tmp_path, engine, M1).put("pa", [b"lab result"])
    with pytest.raises(MasterKeyMissing):
        _store(tmp_path, engine, M2).open("pa", info.digest)
    impostor = MasterKey("m1", os.urandom(32))  # the right id, not the right key
    with pytest.raises(BlobCorrupted):
        _store(tmp_path, engine, impostor).open("pa", info.digest)
    with engine.begin() as conn:  # a wrapped key moved to another record does not unwrap there
        wrapped = conn.execute(select(content_key.c.wrapped).where(content_key.c.namespace == "pa")).scalar()
        conn.execute(
            content_key.insert().values(
                dict(
                    namespace="pz", master_key_id="m1", wrapped=wrapped, created=utcnow(), wrapped_at=utcnow()
                )
            )
        )
    with pytest.raises(BlobCorrupted):
        _store(tmp_path, engine).keys.data_key("pz")


def test_concurrent_first_puts_share_one_data_key(tmp_path: Path, engine: Engine) -> None:
    store = _store(tmp_path, engine)
    infos: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def put(i: int) -> None:
        try:
            barrier.wait()
            infos.append(store.put("fresh", [f"document {i}".encode()]).digest)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(content_key)).scalar() == 1
    assert len(set(infos)) == 4
    for digest in infos:
        assert b"".join(store.open("fresh", digest)).startswith(b"document ")


# --------------------------------------------------------------------------------------------
# Key rotation
# --------------------------------------------------------------------------------------------


def test_rotation_rewraps_every_data_key_and_leaves_content_alone(tmp_path: Path, engine: Engine) -> None:
    old = _store(tmp_path, engine, M1)
    stored = {ns: old.put(ns, [f"content of {ns}".encode()]) for ns in ("pa", "pb", "pc")}
    before = {ns: _path(tmp_path, ns, i.digest).read_bytes() for ns, i in stored.items()}
    ring = KeyRing(engine, [M2, M1])
    assert ring.counts() == {"m1": 3}
    report = ring.rotate(batch=2)  # several batches
    assert (report.rewrapped, report.current, report.unreadable) == (3, 3, {})
    assert ring.counts() == {"m2": 3}
    assert ring.rotate().rewrapped == 0  # nothing left to do
    only_new = _store(tmp_path, engine, M2)  # the old master key can go now
    for ns, info in stored.items():
        assert b"".join(only_new.open(ns, info.digest)) == f"content of {ns}".encode()
        assert _path(tmp_path, ns, info.digest).read_bytes() == before[ns]  # data untouched
    with pytest.raises(MasterKeyMissing):
        _store(tmp_path, engine, M1).open("pa", stored["pa"].digest)


def test_rotation_reports_keys_it_cannot_unwrap(tmp_path: Path, engine: Engine) -> None:
    _store(tmp_path, engine, M1).put("pa", [b"x"])
    _store(tmp_path, engine, M2).put("pb", [b"y"])
    m3 = MasterKey("m3", os.urandom(32))
    report = KeyRing(engine, [m3, M2]).rotate()  # m1 is not configured
    assert (report.rewrapped, report.unreadable) == (1, {"m1": 1})
    assert KeyRing(engine, [m3]).counts() == {"m1": 1, "m3": 1}


def test_keys_commands(tmp_path: Path, engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    info = _store(tmp_path, engine, M1).put("pa", [b"summary"])
    encode = base64.b64encode
    monkeypatch.setenv("SHAREDCARE_DATABASE_URL", db_url)
    monkeypatch.setenv("SHAREDCARE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SHAREDCARE_MASTER_KEYS", f"m2:{encode(M2.key).decode()},m1:{encode(M1.key).decode()}")
    runner = CliRunner()
    get_settings.cache_clear()
    try:
        status = runner.invoke(cli_app, ["keys", "status"])
        assert status.exit_code == 0 and "m1\tconfigured\t1 data keys" in status.output
        rotated = runner.invoke(cli_app, ["keys", "rotate"])
        assert rotated.exit_code == 0, rotated.output
        assert "1 data keys re-wrapped under master key m2" in rotated.output
        status = runner.invoke(cli_app, ["keys", "status"])
        assert "m2\tnewest\t1 data keys" in status.output and "m1\tconfigured\t0 data keys" in status.output
        monkeypatch.setenv("SHAREDCARE_MASTER_KEYS", f"m3:{encode(os.urandom(32)).decode()}")
        get_settings.cache_clear()
        failed = runner.invoke(cli_app, ["keys", "rotate"])
        assert failed.exit_code == 1 and "wrapped by 'm2' left" in failed.output
        generated = runner.invoke(cli_app, ["keys", "generate", "2027-01"])
        assert generated.exit_code == 0 and parse_master_keys(generated.output)[0].id == "2027-01"
        assert runner.invoke(cli_app, ["keys", "generate", "no spaces"]).exit_code == 2
    finally:
        get_settings.cache_clear()
    with engine.connect() as conn:
        rows = conn.execute(
            select(audit_log.c.interaction, audit_log.c.outcome).where(
                audit_log.c.interaction == "keys-rotate"
            )
        ).all()
    assert sorted(r.outcome for r in rows) == [0, 4]  # both runs are in the audit trail
    assert b"".join(_store(tmp_path, engine, M2).open("pa", info.digest)) == b"summary"


# --------------------------------------------------------------------------------------------
# Crypto-shredding
# --------------------------------------------------------------------------------------------


def test_crypto_shredding_makes_every_copy_unreadable(tmp_path: Path, engine: Engine) -> None:
    root = tmp_path / "blobs"
    store = _store(root, engine)
    secret = b"HIV test result: positive. " * 200
    info = store.put("pa", [secret])
    kept = store.put("pb", [b"another record"])
    # a copy of the ciphertext survives the purge (a backup, a replica that missed the delete)
    backup = tmp_path / "backup"
    shutil.copytree(root / "pa", backup)
    assert b"".join(store.open("pa", info.digest)) == secret  # readable until the purge
    with writer(engine).begin() as conn:
        purge(conn, "pa", store)
    assert not (root / "pa").exists()  # the blobs are gone (best effort)
    assert b"".join(store.open("pb", kept.digest)) == b"another record"  # other records unharmed
    shutil.copytree(backup, root / "pa")  # ...and the surviving copy is back in place
    with pytest.raises(DataKeyMissing):
        store.open("pa", info.digest)
    with engine.connect() as conn:
        assert conn.execute(select(content_key.c.namespace)).scalars().all() == ["pb"]
    # a new key for the same record (new content after re-registration) opens nothing old
    store.put("pa", [b"new content"])
    with pytest.raises(BlobCorrupted):
        b"".join(store.open("pa", info.digest))
    # nor does any key material that is left: the master key itself or any stored data key,
    # used directly or through the format's key derivation
    raw = _path(root, "pa", info.digest).read_bytes()
    header, frames = _frames(raw)
    candidates = [M1.key]
    with engine.connect() as conn:
        for row in conn.execute(select(content_key)).all():
            candidates.append(store.keys.unwrap(row.namespace, row.master_key_id, row.wrapped))
    from sharedcare.storage.crypto import _Frames

    for key in candidates:
        with pytest.raises(BlobCorrupted):
            _Frames(key, header, header[8:], "pa").open(0, frames[0])
        with pytest.raises(InvalidTag):
            AESGCM(key).decrypt((0).to_bytes(12, "big"), frames[0], None)
    assert secret[:32] not in raw


def test_the_retention_job_shreds_the_records_it_deletes(settings: Settings, engine: Engine) -> None:
    store = make_blob_store(settings, engine)
    letter = store.put("old", [b"a letter from 2010"])
    recent = store.put("young", [b"a letter from last week"])
    now = utcnow()
    with writer(engine).begin() as conn:
        for pid in ("old", "young"):
            care.ensure_record(conn, pid, letter_sent=now - timedelta(days=9000), activated=now)
        conn.execute(
            record_status.update()
            .where(record_status.c.patient_id == "old")
            .values(status="closed", closed_at=now - timedelta(days=365 * 11), closed_reason="holder")
        )
    with writer(engine).begin() as conn:
        report = run(conn, FhirService(engine, classify=category_of), settings, now)  # store from settings
    assert report.deleted == ["old"]
    with pytest.raises(BlobNotFound):
        store.open("old", letter.digest)
    assert not (settings.data_dir / "blobs" / "old").exists()
    with pytest.raises(DataKeyMissing):
        store.keys.data_key("old")
    assert b"".join(store.open("young", recent.digest)) == b"a letter from last week"
