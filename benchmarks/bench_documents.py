"""Documents (issue 4): content throughput through IHE MHD, and ITI-67 search among a million
DocumentReferences.

1. **Throughput.** ITI-65 Provide Document Bundles each carrying one document of 100 KB, 1 MB and
   20 MB (random bytes, distinct every round: the content store is addressed by hash), POSTed one
   at a time to the real HTTP API (uvicorn), then ITI-68 retrievals of the same documents: the
   whole content, and a ``Range`` request for its second half. The content goes to the file blob
   store with encryption (AES-GCM under the patient's data key: the default). Baseline, measured in
   the same run, in the same folder (so on the same disk): writing the same bytes to a file with
   ``fsync`` (upload), reading them back (retrieval; from the page cache, as the server's reads
   are). The caller is the trusted ``demo-system`` client (``system/*.*``): the submission goes
   through the write check and the audit as any caller's, but needs no care relationship, so the
   figures measure the content path. The MB/s of an upload count the document's bytes, not the
   base64 of the JSON Bundle that carries them (a third more).
2. **ITI-67 search.** ``DocumentReference?patient=…&_sort=-date``, ``…&type=…`` and
   ``…&category=…&date=ge…`` for patients with 500 documents each, in a scratch PostgreSQL
   database (``docs_bench`` by default) filled with ``--patients`` x 500 DocumentReferences
   (2,000 x 500 = one million) through the store's bulk write path (``ResourceStore.apply``: the
   index rows and compartment links of each resource, written by ``COPY``; no FHIR validation, as
   ``sharedcare import --no-validate``), by two processes, then ``VACUUM (ANALYZE)``
   (``storage.engine.refresh_statistics``). The build stops at ``--build-minutes`` (whole patients
   only) and the size reached is reported; ``--reuse`` keeps a filled database for the next run.
   The Binary rows the attachments point at are not written (the search does not read them).
   wrk with 64 connections, then one connection, as the trusted system client and as a GP (profession
   ``med``) with an active care relationship with every patient (``common.mint_token``), whose
   searches carry the access decision's SQL filter. Target: p99 < 20 ms. Baseline, same run: the
   load benchmark's trivial endpoint (``baseline_app.py``: one JSON row by key) on the same
   database, served and loaded the same way, before and after the searches: the latency the
   machine itself gave around them.

Run: ``python benchmarks/bench_documents.py [--database-url URL] [--reuse] [--patients N]`` or
``sharedcare bench documents`` (defaults). Needs PostgreSQL and ``wrk``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import multiprocessing as mp
import os
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_load import _serve, _wrk
from common import mint_token, register_demo_client, report, system_token

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/docs_bench"
MB = 1_000_000
SIZES = {"100 KB": 100_000, "1 MB": 1_000_000, "20 MB": 20_000_000}
ROUNDS = {"100 KB": 40, "1 MB": 15, "20 MB": 4}
PER_PATIENT = 500
CHUNK = 5_000
CREATED_BY = "bench-documents"
PRACTITIONER = "bench-gp"

LOINC = "http://loinc.org"
CLASS = "urn:oid:1.3.6.1.4.1.19376.1.2.6.1"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
FORMAT = "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode"
PRACTICE = "http://snomed.info/sct"
LIST_TYPES = "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes"
PROFILE = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.Comprehensive.ProvideBundle"

# (LOINC type, its XDS class code, relative frequency): a record is mostly lab reports
TYPES = (
    ("11502-2", "LABORATORY", 40),
    ("11526-1", "LABORATORY", 5),
    ("18842-5", "REPORTS", 8),
    ("34105-7", "REPORTS", 4),
    ("11490-0", "REPORTS", 3),
    ("28570-0", "REPORTS", 2),
    ("18748-4", "IMAGES", 8),
    ("68604-8", "IMAGES", 2),
    ("57833-6", "PRESCRIPTIONS", 12),
    ("60593-1", "PRESCRIPTIONS", 8),
    ("11488-4", "NOTES", 6),
    ("11369-6", "IMMUNIZATIONS", 1),
    ("60591-5", "SUMMARY", 1),
)
SETTINGS = (
    ("394802001", "General medicine"),
    ("108252007", "Laboratory medicine"),
    ("394914008", "Radiology"),
)
AUTHORS = (*(f"Organization/bench-org-{i}" for i in range(20)), f"Practitioner/{PRACTITIONER}")
START = datetime(2016, 1, 1, tzinfo=UTC)


# -- 1. throughput -------------------------------------------------------------------------------


def _sha1(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data).digest()).decode()


def _provide_bundle(patient: str, data: bytes) -> bytes:
    """A Provide Document Bundle filing ``data`` as a laboratory report (PDF) of ``patient``."""
    key = uuid.uuid4().hex
    doc = {
        "resourceType": "DocumentReference",
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{key}"},
        "status": "current",
        "type": {"coding": [{"system": LOINC, "code": "11502-2"}]},
        "category": [{"coding": [{"system": CLASS, "code": "LABORATORY"}]}],
        "subject": {"reference": f"Patient/{patient}"},
        "date": "2026-11-26T08:00:00Z",
        "author": [{"reference": "Organization/bench-org-0"}],
        "securityLabel": [{"coding": [{"system": CONFIDENTIALITY, "code": "N"}]}],
        "content": [
            {
                "attachment": {
                    "contentType": "application/pdf",
                    "language": "fr",
                    "size": len(data),
                    "hash": _sha1(data),
                    "url": f"urn:uuid:{key}-bin",
                    "title": "Laboratory report",
                },
                "format": {"system": FORMAT, "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient"},
            }
        ],
    }
    submission_set = {
        "resourceType": "List",
        "extension": [
            {
                "url": "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-sourceId",
                "valueIdentifier": {"value": "urn:oid:1.2.3.4"},
            }
        ],
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"}],
        "status": "current",
        "mode": "working",
        "code": {"coding": [{"system": LIST_TYPES, "code": "submissionset"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "date": "2026-11-26T08:00:00Z",
        "source": {"reference": "Organization/bench-org-0"},
        "entry": [{"item": {"reference": f"urn:uuid:{key}"}}],
    }
    bundle = {
        "resourceType": "Bundle",
        "meta": {"profile": [PROFILE]},
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:ss",
                "resource": submission_set,
                "request": {"method": "POST", "url": "List"},
            },
            {
                "fullUrl": f"urn:uuid:{key}",
                "resource": doc,
                "request": {"method": "POST", "url": "DocumentReference"},
            },
            {
                "fullUrl": f"urn:uuid:{key}-bin",
                "resource": {
                    "resourceType": "Binary",
                    "contentType": "application/pdf",
                    "data": base64.b64encode(data).decode(),
                },
                "request": {"method": "POST", "url": "Binary"},
            },
        ],
    }
    return orjson.dumps(bundle)


def _file_baseline(folder: Path, data: bytes) -> tuple[float, float]:
    """Seconds to write ``data`` to a new file with fsync, and to read it back."""
    path = folder / f"baseline-{uuid.uuid4().hex}"
    start = time.perf_counter()
    with path.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    wrote = time.perf_counter() - start
    start = time.perf_counter()
    with path.open("rb") as src:
        while src.read(1 << 20):
            pass
    read = time.perf_counter() - start
    path.unlink()
    return wrote, read


def _throughput(url: str, workers: int, data_dir: Path) -> dict[str, dict[str, float]]:
    """MB/s of upload, retrieval and Range retrieval per size, and of the file baseline."""
    patient = "bench-doc-patient"
    register_demo_client(url)
    proc, port = _serve("sharedcare.app:create_app", url, workers, factory=True)
    results: dict[str, dict[str, float]] = {}
    try:
        token = system_token(port)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=300) as http:
            for res in (
                {"resourceType": "Patient", "id": patient, "name": [{"family": "Bench"}]},
                {"resourceType": "Organization", "id": "bench-org-0", "name": "Laboratoire Bench"},
            ):
                http.put(
                    f"/fhir/{res['resourceType']}/{res['id']}", content=orjson.dumps(res)
                ).raise_for_status()
            http.post(
                "/fhir", content=_provide_bundle(patient, os.urandom(1000))
            ).raise_for_status()  # warm up
            for label, size in SIZES.items():
                times: dict[str, list[float]] = {k: [] for k in ("up", "get", "range", "fwrite", "fread")}
                for _ in range(ROUNDS[label]):
                    data = os.urandom(size)
                    body = _provide_bundle(patient, data)
                    start = time.perf_counter()
                    resp = http.post("/fhir", content=body)
                    times["up"].append(time.perf_counter() - start)
                    resp.raise_for_status()
                    binary = next(
                        e["response"]["location"].split("/")[1]
                        for e in resp.json()["entry"]
                        if e["response"]["location"].startswith("Binary/")
                    )
                    start = time.perf_counter()
                    got = bytearray()
                    with http.stream("GET", f"/fhir/Binary/{binary}", headers={"Accept": "*/*"}) as r:
                        r.raise_for_status()
                        for chunk in r.iter_bytes():
                            got += chunk
                    times["get"].append(time.perf_counter() - start)
                    if bytes(got) != data:
                        raise RuntimeError(f"Binary/{binary}: retrieved bytes differ from the uploaded ones")
                    half = size // 2
                    start = time.perf_counter()
                    with http.stream(
                        "GET", f"/fhir/Binary/{binary}", headers={"Accept": "*/*", "Range": f"bytes={half}-"}
                    ) as r:
                        if r.status_code != 206:
                            raise RuntimeError(f"Range request answered {r.status_code}")
                        part = b"".join(r.iter_bytes())
                    times["range"].append(time.perf_counter() - start)
                    if part != data[half:]:
                        raise RuntimeError(f"Binary/{binary}: the Range answer differs")
                    wrote, read = _file_baseline(data_dir, data)
                    times["fwrite"].append(wrote)
                    times["fread"].append(read)
                med = {k: statistics.median(v) for k, v in times.items()}
                results[label] = {
                    "up": size / med["up"] / MB,
                    "get": size / med["get"] / MB,
                    "range": (size - size // 2) / med["range"] / MB,
                    "fwrite": size / med["fwrite"] / MB,
                    "fread": size / med["fread"] / MB,
                    "up_ms": med["up"] * 1000,
                    "get_ms": med["get"] * 1000,
                    "range_ms": med["range"] * 1000,
                    "rounds": float(ROUNDS[label]),
                }
    finally:
        proc.terminate()
        proc.wait()
    return results


# -- 2. the million-document database -------------------------------------------------------------


def _document(rng: random.Random, patient: str, number: int) -> dict[str, Any]:
    code, klass = rng.choices([t[:2] for t in TYPES], weights=[t[2] for t in TYPES])[0]
    when = START + timedelta(seconds=rng.randrange(10 * 365 * 86_400))
    rid = f"{patient}-d{number:03d}"
    size = rng.randrange(20_000, 2_000_000)
    setting = rng.choice(SETTINGS)
    return {
        "resourceType": "DocumentReference",
        "id": rid,
        "masterIdentifier": {
            "system": "urn:ietf:rfc:3986",
            "value": f"urn:oid:2.16.442.9.{patient[1:]}.{number}",
        },
        "status": "current" if rng.random() < 0.95 else "superseded",
        "type": {"coding": [{"system": LOINC, "code": code}]},
        "category": [{"coding": [{"system": CLASS, "code": klass}]}],
        "subject": {"reference": f"Patient/{patient}"},
        "date": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "author": [{"reference": rng.choice(AUTHORS)}],
        "securityLabel": [
            {"coding": [{"system": CONFIDENTIALITY, "code": "N" if rng.random() < 0.9 else "R"}]}
        ],
        "content": [
            {
                "attachment": {
                    "contentType": "application/pdf",
                    "language": "fr",
                    "url": f"Binary/{rid}-bin",
                    "size": size,
                    "hash": base64.b64encode(hashlib.sha1(rid.encode()).digest()).decode(),
                    "title": f"Document {code}",
                    "creation": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
                "format": {"system": FORMAT, "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient"},
            }
        ],
        "context": {
            "practiceSetting": {"coding": [{"system": PRACTICE, "code": setting[0], "display": setting[1]}]}
        },
    }


def _write(url: str, resources: list[dict[str, Any]]) -> None:
    from sharedcare.access.policy import category_of
    from sharedcare.fhir.store import ResourceStore, Write
    from sharedcare.storage.engine import make_engine, writer

    engine = make_engine(url, pool_size=1, max_overflow=0)
    store = ResourceStore(classify=category_of)
    try:
        with writer(engine).begin() as conn:
            store.apply(conn, [Write("PUT", r["resourceType"], r["id"], r, None) for r in resources])
    finally:
        engine.dispose()


def _builder(url: str, patients: list[str], deadline: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """Write the documents of ``patients`` in chunks until done or the deadline; patients done."""
    from sharedcare.access.policy import category_of
    from sharedcare.fhir.store import ResourceStore, Write
    from sharedcare.storage.engine import make_engine, writer

    engine = make_engine(url, pool_size=1, max_overflow=0)
    store = ResourceStore(classify=category_of)
    per_chunk = max(1, CHUNK // PER_PATIENT)
    done = 0
    for start in range(0, len(patients), per_chunk):
        if time.monotonic() > deadline:
            break
        group = patients[start : start + per_chunk]
        docs = []
        for patient in group:
            rng = random.Random(patient)
            docs.extend(_document(rng, patient, n) for n in range(PER_PATIENT))
        with writer(engine).begin() as conn:
            store.apply(conn, [Write("PUT", "DocumentReference", d["id"], d, None) for d in docs])
        done += len(group)
    engine.dispose()
    out.put(done)


def _admin_url(url: str) -> str:
    return make_url(url).set(database="postgres").render_as_string(hide_password=False)


def _recreate(url: str) -> None:
    name = make_url(url).database
    admin = create_engine(_admin_url(url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


def _exists(url: str) -> bool:
    admin = create_engine(_admin_url(url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        found = conn.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": make_url(url).database}
        )
        exists = found.first() is not None
    admin.dispose()
    return exists


def _counts(url: str) -> tuple[int, list[str]]:
    """DocumentReferences stored, and the patients holding exactly 500 of them."""
    from sharedcare.storage.tables import resource, resource_compartment

    engine = create_engine(url)
    with engine.connect() as conn:
        total = conn.execute(
            select(func.count()).select_from(resource).where(resource.c.type == "DocumentReference")
        ).scalar_one()
        full = conn.execute(
            select(resource_compartment.c.patient_id)
            .join(resource, resource.c.pk == resource_compartment.c.res_pk)
            .where(resource.c.type == "DocumentReference")
            .group_by(resource_compartment.c.patient_id)
            .having(func.count() == PER_PATIENT)
        ).scalars()
        patients = sorted(full)
    engine.dispose()
    return int(total), patients


def _build(url: str, patients: int, minutes: float, workers: int) -> float:
    """Fill the scratch database; seconds taken."""
    from sharedcare.storage.engine import make_engine, refresh_statistics
    from sharedcare.storage.migrate import upgrade

    _recreate(url)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    names = [f"p{i:05d}" for i in range(patients)]
    _write(
        url,
        [
            {"resourceType": "Patient", "id": p, "name": [{"family": f"Bench{p}"}], "gender": "female"}
            for p in names
        ]
        + [{"resourceType": "Organization", "id": a.split("/")[1], "name": a} for a in AUTHORS[:-1]]
        + [
            {
                "resourceType": "Practitioner",
                "id": PRACTITIONER,
                "name": [{"family": "Bench", "given": ["Gp"]}],
            }
        ],
    )
    start = time.monotonic()
    deadline = start + minutes * 60
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    shares = [names[i::workers] for i in range(workers)]
    procs = [ctx.Process(target=_builder, args=(url, share, deadline, queue)) for share in shares]
    for p in procs:
        p.start()
    done = sum(queue.get() for _ in procs)
    for p in procs:
        p.join()
    engine = make_engine(url)
    refresh_statistics(engine)
    engine.dispose()
    elapsed = time.monotonic() - start
    print(f"built {done} patients x {PER_PATIENT} documents in {elapsed:.0f} s (VACUUM ANALYZE included)")
    return elapsed


def _care(url: str, patients: list[str]) -> None:
    """An active solo care relationship of the GP with every patient (replacing earlier ones)."""
    from sqlalchemy import delete

    from sharedcare.access.models import care_relationship
    from sharedcare.fhir.store import utcnow
    from sharedcare.storage.engine import make_engine, writer

    engine = make_engine(url)
    now = utcnow()
    with writer(engine).begin() as conn:
        conn.execute(delete(care_relationship).where(care_relationship.c.created_by == CREATED_BY))
        conn.execute(
            care_relationship.insert(),
            [
                {
                    "id": uuid.uuid4().hex,
                    "patient_id": p,
                    "practitioner_id": PRACTITIONER,
                    "context": "solo",
                    "starts": now - timedelta(hours=1),
                    "ends": now + timedelta(days=15),
                    "created_by": CREATED_BY,
                }
                for p in patients
            ],
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE care_relationship"))
    engine.dispose()


def _queries(patients: list[str], count: int = 300) -> dict[str, list[str]]:
    rng = random.Random(11)
    chosen = rng.sample(patients, min(count, len(patients)))
    base = "/fhir/DocumentReference?patient=Patient/"
    out: dict[str, list[str]] = {"sorted": [], "type": [], "category": []}
    for p in chosen:
        out["sorted"].append(f"{base}{p}&_sort=-date")
        code, klass = rng.choice([t[:2] for t in TYPES[:11]])
        out["type"].append(f"{base}{p}&type={LOINC}|{code}")
        since = (START + timedelta(days=rng.randrange(365, 9 * 365))).date().isoformat()
        out["category"].append(f"{base}{p}&category={CLASS}|{klass}&date=ge{since}")
    return out


def _answers(port: int, paths: list[str], token: str) -> list[tuple[int, int | None]]:
    out = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
        for path in paths:
            resp = http.get(path, headers={"Authorization": f"Bearer {token}"})
            out.append((resp.status_code, resp.json().get("total")))
    return out


def _search(url: str, workers: int, duration: str, single: str) -> tuple[dict[str, Any], list[str]]:
    from sharedcare.access.principals import Principal, PrincipalKind

    total, patients = _counts(url)
    if not patients:
        sys.exit("no patient with 500 documents in the database")
    _care(url, patients)
    register_demo_client(url)
    queries = _queries(patients)
    results: dict[Any, Any] = {"documents": total, "patients": len(patients)}
    results.update(_baseline(url, workers, duration, single, "before"))
    notes: list[str] = []
    gp = Principal(
        PrincipalKind.PROFESSIONAL,
        "bench-gp-account",
        display="Bench GP",
        practitioner_id=PRACTITIONER,
        profession="med",
    )
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        proc, port = _serve("sharedcare.app:create_app", url, workers, factory=True)
        stack.callback(proc.wait)
        stack.callback(proc.terminate)
        tokens = {"system": system_token(port), "GP": mint_token(url, port, gp, "user/*.cruds")}
        for name, paths in queries.items():
            a = _answers(port, paths[:20], tokens["system"])
            b = _answers(port, paths[:20], tokens["GP"])
            notes.append(f"{name}: totals of 20 sample searches (system) {[t for _, t in a][:8]}…")
            if a != b:
                notes.append(f"{name}: system and GP answers differ: {a} / {b}")
        for name, paths in queries.items():
            for who, token in tokens.items():
                results[(name, who, 64)] = _wrk(port, paths, workdir, name, duration=duration, token=token)
                results[(name, who, 1)] = _wrk(
                    port, paths, workdir, name, connections=1, duration=single, token=token
                )
    results.update(_baseline(url, workers, duration, single, "after"))
    return results, notes


def _baseline(url: str, workers: int, duration: str, single: str, when: str) -> dict[Any, dict[str, float]]:
    """The machine's own latency in the same run: ``bench_load``'s trivial endpoint (one JSON row
    by key, no token, no audit) on the same database, served the same way. A search's p99 above
    this baseline's is the platform's; a baseline p99 far above its p50 says the machine was busy."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            sample = text("SELECT pk FROM resource TABLESAMPLE SYSTEM (0.1) LIMIT 2000")
            pks = [row[0] for row in conn.execute(sample)]
    finally:
        engine.dispose()
    paths = [f"/row/{pk}" for pk in pks]
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        proc, port = _serve("baseline_app:app", url, workers, factory=False)
        stack.callback(proc.wait)
        stack.callback(proc.terminate)
        return {
            ("baseline", when, 64): _wrk(port, paths, workdir, "baseline", duration=duration),
            ("baseline", when, 1): _wrk(port, paths, workdir, "baseline", connections=1, duration=single),
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default=DEFAULT_URL, help="the scratch database of the search part")
    parser.add_argument("--reuse", action="store_true", help="search an already filled database (no build)")
    parser.add_argument("--patients", type=int, default=2000, help="patients of 500 documents to build")
    parser.add_argument("--build-minutes", type=float, default=15.0, help="stop building after this long")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers and building processes")
    parser.add_argument("--duration", default="10s", help="duration of a 64-connection wrk run")
    parser.add_argument("--single", default="5s", help="duration of a one-connection wrk run")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    args = parser.parse_args()
    if not shutil.which("wrk") and not args.skip_search:
        sys.exit("wrk is needed: apt-get install wrk")
    os.environ["SHAREDCARE_MASTER_KEYS"] = f"bench:{base64.b64encode(secrets.token_bytes(32)).decode()}"

    if not args.skip_throughput:
        scratch = make_url(args.database_url).set(database=f"docs_bench_tp_{uuid.uuid4().hex[:8]}")
        scratch_url = scratch.render_as_string(hide_password=False)
        with tempfile.TemporaryDirectory(prefix="bench-documents-") as tmp:
            data_dir = Path(tmp)
            os.environ["SHAREDCARE_DATA_DIR"] = str(data_dir)
            _recreate(scratch_url)
            try:
                from sharedcare.storage.engine import make_engine
                from sharedcare.storage.migrate import upgrade

                engine = make_engine(scratch_url)
                upgrade(engine)
                engine.dispose()
                tp = _throughput(scratch_url, args.workers, data_dir)
            finally:
                admin = create_engine(_admin_url(scratch_url), isolation_level="AUTOCOMMIT")
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{scratch.database}" WITH (FORCE)'))
                admin.dispose()
        rows = []
        for label, r in tp.items():
            n = int(r["rounds"])
            rows.append(
                (
                    f"{label} upload (ITI-65), median of {n}",
                    f"{r['up']:7.1f} MB/s ({r['up_ms']:7.1f} ms) | file write+fsync {r['fwrite']:7.1f} MB/s "
                    "| "
                    f"ratio {r['up'] / r['fwrite']:6.1%}",
                )
            )
            rows.append(
                (
                    f"{label} retrieve (ITI-68), whole",
                    f"{r['get']:7.1f} MB/s ({r['get_ms']:7.1f} ms) | file read {r['fread']:7.1f} MB/s | "
                    f"ratio {r['get'] / r['fread']:6.1%}",
                )
            )
            rows.append(
                (
                    f"{label} retrieve (ITI-68), Range 2nd half",
                    f"{r['range']:7.1f} MB/s ({r['range_ms']:7.1f} ms) | ratio to file read "
                    f"{r['range'] / r['fread']:6.1%}",
                )
            )
        report(f"Document content throughput, file store + AES-GCM, {args.workers} workers, one client", rows)

    if not args.skip_search:
        os.environ["SHAREDCARE_DATA_DIR"] = tempfile.mkdtemp(prefix="bench-documents-search-")
        build_s = None
        if not (args.reuse and _exists(args.database_url) and _counts(args.database_url)[1]):
            build_s = _build(args.database_url, args.patients, args.build_minutes, args.workers)
        results, notes = _search(args.database_url, args.workers, args.duration, args.single)
        for line in notes:
            print(line)
        labels = {
            "sorted": "DocumentReference?patient&_sort=-date",
            "type": "DocumentReference?patient&type",
            "category": "DocumentReference?patient&category&date=ge",
        }
        rows = [
            ("DocumentReferences in the database", f"{results['documents']:,}"),
            ("patients with 500 documents", f"{results['patients']:,}"),
        ]
        if build_s is not None:
            rows.append(("build (bulk write + VACUUM ANALYZE)", f"{build_s:.0f} s"))
        for conns in (64, 1):
            for name, label in labels.items():
                for who in ("system", "GP"):
                    r = results[(name, who, conns)]
                    rows.append(
                        (
                            f"{label}, {who}, {conns} conn.",
                            f"{r['rps']:6.0f} req/s  p50 {r['p50']:6.1f} ms  p99 {r['p99']:6.1f} ms",
                        )
                    )
        for when in ("before", "after"):
            for conns in (64, 1):
                r = results[("baseline", when, conns)]
                rows.append(
                    (
                        f"baseline (one row by key), {when} the searches, {conns} conn.",
                        f"{r['rps']:6.0f} req/s  p50 {r['p50']:6.1f} ms  p99 {r['p99']:6.1f} ms",
                    )
                )
        rows.append(("target", "p99 < 20 ms"))
        report(f"ITI-67 search, {args.workers} workers", rows)


if __name__ == "__main__":
    main()
