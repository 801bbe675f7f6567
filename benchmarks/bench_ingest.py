"""Ingest benchmark: Synthea transaction bundles into PostgreSQL, resources per second.

Baseline, measured in the same run on the same database: a plain ``COPY`` of the same
resources' JSON into a one-column table. Target: at least 5,000 resources/s on 2 cores
(about 8 % of the COPY baseline here). Run: ``python benchmarks/bench_ingest.py [--bundles N]
[--workers W]`` or ``sharedcare bench ingest``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report, scratch_database, synthea_bundles


def _copy_baseline(url: str, docs: list[bytes]) -> float:
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE bench_copy (doc text)")
        conn.commit()
        start = time.perf_counter()
        with conn.cursor() as cur, cur.copy("COPY bench_copy (doc) FROM STDIN") as copy:
            for doc in docs:
                copy.write_row((doc.decode(),))
        conn.commit()
        elapsed = time.perf_counter() - start
        conn.execute("DROP TABLE bench_copy")
        conn.commit()
    return elapsed


def _index_rows(url: str) -> int:
    """Search index rows written (counted after the timed part): the main cost of a write."""
    from sqlalchemy import func, select

    from sharedcare.storage.engine import make_engine
    from sharedcare.storage.tables import INDEX_TABLES

    engine = make_engine(url)
    with engine.connect() as conn:
        total = sum(
            conn.execute(select(func.count()).select_from(t)).scalar_one() for t in INDEX_TABLES.values()
        )
    engine.dispose()
    return int(total)


def _worker(url: str, bundles: list[bytes], ready: mp.Barrier, out: mp.Queue) -> None:  # type: ignore[type-arg]
    from sharedcare.fhir.bundle import BundleProcessor
    from sharedcare.fhir.indexer import default_indexer
    from sharedcare.fhir.service import FhirService
    from sharedcare.fhir.validation import store_issues
    from sharedcare.storage.engine import make_engine

    engine = make_engine(url, pool_size=1, max_overflow=0)
    service = FhirService(engine, validator=store_issues)
    processor = BundleProcessor(service)
    # warm up: load definitions and compile every extractor/validator the data will use
    for raw in bundles[:1]:
        for entry in orjson.loads(raw)["entry"]:
            res = dict(entry["resource"], id="warmup")
            service.check_resource(res)
            default_indexer().index(res)
    ready.wait()
    start = time.perf_counter()
    count = 0
    for raw in bundles:
        bundle = orjson.loads(raw)
        count += len(processor.transaction(bundle)["entry"])
    out.put((count, time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundles", type=int, default=120, help="patient bundles to load (of 479)")
    parser.add_argument("--workers", type=int, default=2, help="importing processes")
    args = parser.parse_args()

    bundles = [raw for _name, raw in synthea_bundles(args.bundles)]
    docs = [orjson.dumps(e["resource"]) for raw in bundles for e in orjson.loads(raw)["entry"]]

    with scratch_database() as url:
        from sharedcare.storage.engine import make_engine
        from sharedcare.storage.migrate import upgrade

        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()

        baseline_s = _copy_baseline(url, docs)

        ctx = mp.get_context("spawn")
        ready = ctx.Barrier(args.workers)
        queue: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
        shares = [bundles[i :: args.workers] for i in range(args.workers)]
        procs = [ctx.Process(target=_worker, args=(url, share, ready, queue)) for share in shares]
        for p in procs:
            p.start()
        results = [queue.get() for _ in procs]
        for p in procs:
            p.join()
        index_rows = _index_rows(url)
    resources = sum(c for c, _ in results)
    wall = max(t for _, t in results)
    rate = resources / wall
    baseline = len(docs) / baseline_s
    report(
        "Ingest: Synthea transaction bundles into PostgreSQL",
        [
            ("bundles / resources", f"{len(bundles)} / {resources}"),
            ("workers", str(args.workers)),
            ("SharedCare ingest", f"{rate:,.0f} resources/s ({wall:.1f} s)"),
            ("baseline COPY", f"{baseline:,.0f} resources/s ({baseline_s:.2f} s)"),
            ("ratio to baseline", f"{rate / baseline:.1%}"),
            ("index rows / resource", f"{index_rows / resources:.2f} ({index_rows:,} rows)"),
            ("target", "5,000 resources/s (about 8 % of COPY)"),
        ],
    )


if __name__ == "__main__":
    main()
