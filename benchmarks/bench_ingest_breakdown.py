"""Where ingest time goes: the same bundles through the write path with parts switched off.

One process, PostgreSQL, a fresh database per variant. The differences between variants give
the cost per resource of validation, of search-index extraction and of storing index rows. The
variants run in turn ``--repeat`` times and each keeps its fastest run: on a shared machine the
noise only ever adds time. Run: ``python benchmarks/bench_ingest_breakdown.py [--bundles N]
[--repeat R]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report, scratch_database, synthea_bundles


def main() -> None:
    from sharedcare.fhir.bundle import BundleProcessor
    from sharedcare.fhir.indexer import IndexRows, default_indexer
    from sharedcare.fhir.service import FhirService
    from sharedcare.fhir.validation import store_issues
    from sharedcare.storage.engine import make_engine
    from sharedcare.storage.migrate import upgrade

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundles", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each variant (the fastest counts)")
    args = parser.parse_args()
    bundles = [raw for _name, raw in synthea_bundles(args.bundles)]
    indexer = default_indexer()
    full_index = indexer.index
    for entry in orjson.loads(bundles[0])["entry"]:  # warm up definitions and compiled extractors
        res = dict(entry["resource"], id="warm-up")
        store_issues(res)
        full_index(res)

    def computed_not_stored(res: dict[str, Any]) -> IndexRows:
        full_index(res)
        return IndexRows()

    stored_rows: list[float] = []

    def run(validator: Any, index: Callable[[dict[str, Any]], IndexRows]) -> float:
        from sqlalchemy import func, select

        from sharedcare.storage.tables import INDEX_TABLES

        with scratch_database() as url:
            engine = make_engine(url)
            upgrade(engine)
            service = FhirService(engine, validator=validator)
            service.store.indexer.index = index  # type: ignore[method-assign]
            processor = BundleProcessor(service)
            count, start = 0, time.perf_counter()
            for raw in bundles:
                count += len(processor.transaction(orjson.loads(raw))["entry"])
            elapsed = time.perf_counter() - start
            with engine.connect() as conn:
                tables = INDEX_TABLES.values()
                rows = sum(conn.execute(select(func.count()).select_from(t)).scalar_one() for t in tables)
            stored_rows.append(rows / count)
            engine.dispose()
        service.store.indexer.index = full_index  # type: ignore[method-assign]
        return elapsed / count * 1e6

    variants: list[tuple[Any, Callable[[dict[str, Any]], IndexRows]]] = [
        (store_issues, full_index),
        (None, full_index),
        (None, computed_not_stored),
        (None, lambda _res: IndexRows()),
    ]
    best = [float("inf")] * len(variants)
    for _ in range(args.repeat):
        for i, (validator, index) in enumerate(variants):
            best[i] = min(best[i], run(validator, index))
    full, no_validation, not_stored, bare = best
    report(
        f"Ingest breakdown, one process ({args.bundles} bundles, best of {args.repeat}), µs per resource",
        [
            ("index rows per resource", f"{max(stored_rows):6.2f}"),
            ("full write path", f"{full:6.0f}"),
            ("validation", f"{full - no_validation:6.0f}"),
            ("index extraction", f"{not_stored - bare:6.0f}"),
            ("storing index rows", f"{no_validation - not_stored:6.0f}"),
            ("the rest (bundle, resource and version rows, commit)", f"{bare:6.0f}"),
        ],
    )


if __name__ == "__main__":
    main()
