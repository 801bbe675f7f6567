"""The cost of the access decision (issue 3): the FHIR core benchmark's requests as a professional
with care relationships versus as a system client the policy does not restrict.

Both callers send the same requests (``bench_load.py``'s scenarios: read by id, the three searches,
``$everything``) to the same server, one after the other, with 64 connections (wrk) and then over
one connection. The system caller is the trusted ``demo-system`` client: its token comes from the
token endpoint (``client_credentials``) and the policy adds no filter to its queries. The
professional is a GP (profession ``med``) whose token is minted with the server's signing key and
the claims the token endpoint issues (``common.mint_token``: the portal's TOTP sign-in cannot be
scripted under load); the access decision then adds its SQL filter (care relationship, record
status, licence, blocks and masks, matrix categories) to every query, and the first-access
bookkeeping to every audited read.

So that both callers get the same answers and the comparison measures only the decision, the GP has
an active solo-practice care relationship with every patient of the database (1,397 in the shared
Synthea data, about one GP's list), inserted before the run and deleted after it; read by id picks
only resources the GP may read (all categories of the Synthea data are open to the ``med`` column).
A short check fetches sample requests as both callers and counts differing answers.

Target (issue 3): the professional's throughput at least 85 % of the system client's for the
searches (the access decision costs less than 15 %). The machine is shared and noisy: each
scenario runs both callers back to back, alternating which goes first, ``--repeat`` times, and the
ratios are computed within each pair.

Run: ``python benchmarks/bench_access.py --database-url URL [--repeat 2]`` on a database holding the
Synthea data (``sharedcare import`` of the bundle archive and the NDJSON tiers), or without a URL to
fill a scratch database with ``--bundles N`` bundles. Needs ``wrk``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import uuid
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import delete, func, select, text

from sharedcare.access.matrix import load_matrix
from sharedcare.access.models import care_relationship
from sharedcare.access.policy import IDENTITY, REFERENCE
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.fhir.store import utcnow
from sharedcare.storage.engine import make_engine, writer
from sharedcare.storage.migrate import upgrade
from sharedcare.storage.tables import resource

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_load import CpuMeter, _fill, _samples, _serve, _wrk
from common import mint_token, register_demo_client, report, scratch_database, system_token

SCENARIOS = ("read", "obs", "family", "include", "everything")
SEARCHES = ("obs", "family", "include")
CREATED_BY = "bench-access"
PROFESSION = "med"
LABELS = {
    "read": "read by id",
    "obs": "Observation?patient&code&_sort=-date",
    "family": "Patient?family=",
    "include": "Observation?…&_include=Observation:encounter",
    "everything": "$everything, median patient",
}


def _professional(url: str) -> Principal:
    """A GP of the directory (an active Practitioner of the data) in the care of every patient."""
    engine = make_engine(url)
    now = utcnow()
    try:
        with writer(engine).begin() as conn:
            practitioner = conn.execute(
                select(resource.c.id)
                .where(resource.c.type == "Practitioner", resource.c.deleted.is_(False))
                .order_by(resource.c.pk)
                .limit(1)
            ).scalar_one()
            patients = conn.execute(
                select(resource.c.id).where(resource.c.type == "Patient", resource.c.deleted.is_(False))
            ).scalars()
            conn.execute(delete(care_relationship).where(care_relationship.c.created_by == CREATED_BY))
            conn.execute(
                care_relationship.insert(),
                [
                    {
                        "id": uuid.uuid4().hex,
                        "patient_id": patient,
                        "practitioner_id": practitioner,
                        "context": "solo",
                        "starts": now - timedelta(hours=1),
                        "ends": now + timedelta(days=15),
                        "created_by": CREATED_BY,
                    }
                    for patient in patients
                ],
            )
        if engine.dialect.name == "postgresql":
            # as autovacuum soon would: without statistics the planner takes the table for empty and
            # hashes the compartment rows of the whole panel (155k here) for every query, 10x slower
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("ANALYZE care_relationship"))
    finally:
        engine.dispose()
    return Principal(
        PrincipalKind.PROFESSIONAL,
        "bench-professional",
        display="Benchmark GP",
        practitioner_id=practitioner,
        profession=PROFESSION,
    )


def _cleanup(url: str) -> None:
    engine = make_engine(url)
    try:
        with writer(engine).begin() as conn:
            conn.execute(delete(care_relationship).where(care_relationship.c.created_by == CREATED_BY))
    finally:
        engine.dispose()


def _check_database(url: str) -> int:
    """Patients in care; refuses a database whose resources were stored without a category."""
    engine = make_engine(url)
    try:
        upgrade(engine)
        with engine.connect() as conn:
            missing = conn.execute(
                select(func.count()).select_from(resource).where(resource.c.category.is_(None))
            ).scalar_one()
            patients = conn.execute(
                select(func.count()).select_from(resource).where(resource.c.type == "Patient")
            ).scalar_one()
    finally:
        engine.dispose()
    if missing:
        sys.exit(f"{missing} resources have no data category: run `sharedcare reclassify` first")
    return int(patients)


def _readable_reads(url: str, paths: list[str]) -> list[str]:
    """The read-by-id samples the professional may read: reference data, or readable categories
    of a patient's record (the system would otherwise get 200 where the professional gets 404)."""
    matrix = load_matrix()
    column = matrix.column_for_profession(PROFESSION) or PROFESSION
    readable = sorted(matrix.readable_categories(column) | {IDENTITY})
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT type || '/' || id FROM resource r WHERE NOT deleted AND (category = :ref OR "
                    "(category = ANY(:readable) AND EXISTS "
                    "(SELECT 1 FROM resource_compartment c WHERE c.res_pk = r.pk)))"
                ),
                {"ref": REFERENCE, "readable": readable},
            ).scalars()
            allowed = {f"/fhir/{ref}" for ref in rows}
    finally:
        engine.dispose()
    return [p for p in paths if p in allowed]


def _same_answers(
    port: int, samples: dict[str, list[str]], tokens: dict[str, str], per: int = 10
) -> list[str]:
    """Requests whose answers differ between the two callers (status or number of entries)."""
    differ = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
        for name in SCENARIOS:
            for path in samples[name][:per]:
                answers = []
                for token in tokens.values():
                    resp = http.get(path, headers={"Authorization": f"Bearer {token}"})
                    body = resp.json()
                    answers.append((resp.status_code, len(body.get("entry", [])), body.get("total")))
                if answers[0] != answers[1]:
                    differ.append(f"{path}: {answers}")
    return differ


def _figures(r: dict[str, float]) -> str:
    text = (
        f"{r['rps']:6.0f} req/s p50 {r['p50']:6.1f} p99 {r['p99']:6.1f} ms, "
        f"CPU/req app {r['cpu_app_ms']:5.2f} db {r['cpu_db_ms']:5.2f} ms"
    )
    return text + (f" ({r['timeouts']:.0f} timeouts)" if r.get("timeouts") else "")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", help="an already imported database (skips the import)")
    parser.add_argument("--bundles", type=int, default=None, help="Synthea bundles to import (default all)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--repeat", type=int, default=2, help="pairs of runs per scenario")
    parser.add_argument("--single", default="5s", help="duration of the one-connection runs ('0': none)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    with ExitStack() as stack:
        url = args.database_url
        if url is None:
            url = stack.enter_context(scratch_database())
            _fill(url, args.bundles)
        in_care = _check_database(url)
        samples = _samples(url)
        samples["read"] = _readable_reads(url, samples["read"])
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        professional = _professional(url)
        stack.callback(_cleanup, url)
        register_demo_client(url)
        proc, port = _serve("sharedcare.app:create_app", url, args.workers, factory=True)
        stack.callback(proc.wait)
        stack.callback(proc.terminate)
        tokens = {
            "system": system_token(port),
            "professional": mint_token(url, port, professional, "user/*.cruds"),
        }
        differ = _same_answers(port, samples, tokens)
        meter = CpuMeter(proc, url)
        runs: dict[str, dict[str, list[dict[str, float]]]] = {n: {w: [] for w in tokens} for n in SCENARIOS}
        single: dict[str, dict[str, list[dict[str, float]]]] = {n: {w: [] for w in tokens} for n in SCENARIOS}
        for rep in range(args.repeat):
            for name in SCENARIOS:
                order = list(tokens) if rep % 2 == 0 else list(reversed(tokens))
                for who in order:
                    runs[name][who].append(
                        _wrk(port, samples[name], workdir, name, token=tokens[who], cpu=meter)
                    )
                if args.single != "0":
                    for who in order:
                        single[name][who].append(
                            _wrk(
                                port,
                                samples[name],
                                workdir,
                                name,
                                connections=1,
                                duration=args.single,
                                token=tokens[who],
                                cpu=meter,
                            )
                        )
    print(
        f"\nprofessional: Practitioner/{professional.practitioner_id} ({PROFESSION}), "
        f"solo care of {in_care} patients"
    )
    print(f"sample requests answered differently by the two callers: {len(differ)}")
    for line in differ[:10]:
        print(f"  {line}")
    for title, table in (("64 connections", runs), ("1 connection (service time)", single)):
        if not any(table[n]["system"] for n in SCENARIOS):
            continue
        rows = []
        for name in SCENARIOS:
            pairs = list(zip(table[name]["system"], table[name]["professional"], strict=True))
            ratios = [p["rps"] / s["rps"] if s["rps"] else float("nan") for s, p in pairs]
            for i, (s, p) in enumerate(pairs, start=1):
                rows.append(
                    (
                        f"{LABELS[name]} #{i}",
                        f"system {_figures(s)} | professional {_figures(p)} | "
                        f"ratio {p['rps'] / s['rps'] if s['rps'] else float('nan'):6.1%}",
                    )
                )
            cpu = [s["cpu_ms"] / p["cpu_ms"] if p["cpu_ms"] else float("nan") for s, p in pairs]
            rows.append(
                (
                    f"{LABELS[name]}: median ratio",
                    f"{statistics.median(ratios):6.1%} (CPU per request, system/professional: "
                    f"{statistics.median(cpu):6.1%})",
                )
            )
        searches = [
            p["rps"] / s["rps"] if s["rps"] else float("nan")
            for n in SEARCHES
            for s, p in zip(table[n]["system"], table[n]["professional"], strict=True)
        ]
        rows.append(("searches: median ratio (target ≥ 85 %)", f"{statistics.median(searches):6.1%}"))
        report(f"Access decision cost, {title}, {args.workers} workers", rows)


if __name__ == "__main__":
    main()
