"""Forecast throughput: patients per second on the imported Synthea population.

For every patient of the database (Synthea bundles carry immunization histories coded with CVX),
two passes over the same patients in the same run:

- baseline: load the patient's Patient, Immunization and Condition rows from PostgreSQL and parse
  their JSON (what any forecast has to do first);
- forecast: the same loading, then ``vaccination.inputs.forecast_inputs`` (FHIR → engine inputs)
  and ``vaccination.cdsi.forecast`` (evaluation of every dose, best series, forecast per vaccine
  group) on the CDC schedule, and on the Luxembourg one when it is registered.

The ratio forecast/baseline is the price of the forecaster beside the reading it needs.

Run: ``python benchmarks/bench_forecast.py --database-url postgresql+psycopg://…/synthea_full``
(after ``sharedcare import`` of the Synthea data; see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report

_BATCH = 200
_LOAD = text(
    "SELECT c.patient_id, r.type, r.content FROM resource_compartment c "
    "JOIN resource r ON r.pk = c.res_pk "
    "WHERE c.patient_id = ANY(:ids) AND r.type IN ('Patient', 'Immunization', 'Condition') "
    "AND NOT r.deleted"
)


def _patients(url: str, limit: int | None) -> list[str]:
    engine = create_engine(url)
    with engine.connect() as conn:
        ids = list(
            conn.execute(
                text("SELECT id FROM resource WHERE type = 'Patient' AND NOT deleted ORDER BY id")
            ).scalars()
        )
    engine.dispose()
    return ids[:limit] if limit else ids


def _records(url: str, ids: list[str]) -> Iterator[dict[str, dict[str, list[dict[str, Any]]]]]:
    """Batches of patients' records: {patient id: {type: [resources]}}."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            for start in range(0, len(ids), _BATCH):
                chunk = ids[start : start + _BATCH]
                batch: dict[str, dict[str, list[dict[str, Any]]]] = {pid: {} for pid in chunk}
                for pid, rtype, content in conn.execute(_LOAD, {"ids": chunk}):
                    batch[pid].setdefault(rtype, []).append(orjson.loads(content))
                yield batch
    finally:
        engine.dispose()


def _baseline(url: str, ids: list[str]) -> tuple[float, int]:
    started, immunizations = time.perf_counter(), 0
    for batch in _records(url, ids):
        immunizations += sum(len(r.get("Immunization", [])) for r in batch.values())
    return time.perf_counter() - started, immunizations


def _forecast(url: str, ids: list[str], schedule_name: str, today: date) -> tuple[float, dict[str, int]]:
    from sharedcare.vaccination import cdsi
    from sharedcare.vaccination.inputs import InputError, forecast_inputs

    schedule = cdsi.load_schedule(schedule_name)
    counts = {"forecast": 0, "no birth date": 0, "groups": 0}
    started = time.perf_counter()
    for batch in _records(url, ids):
        for record in batch.values():
            patients = record.get("Patient", [])
            if not patients:
                continue
            try:
                inputs = forecast_inputs(
                    patients[0], record.get("Immunization", []), record.get("Condition", []), schedule
                )
            except InputError:
                counts["no birth date"] += 1
                continue
            result = cdsi.forecast(schedule, inputs.patient, inputs.doses, today)
            counts["forecast"] += 1
            counts["groups"] += len(result.groups)
    return time.perf_counter() - started, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True, help="a database with the Synthea data imported")
    parser.add_argument("--patients", type=int, default=None, help="at most this many patients (default all)")
    parser.add_argument("--rounds", type=int, default=3, help="passes of each kind (the median is reported)")
    args = parser.parse_args()
    from sharedcare.vaccination import cdsi

    ids = _patients(args.database_url, args.patients)
    today = date.today()
    cdsi.load_schedule("cdc")  # parse the supporting data before timing
    schedules = ["cdc"]
    try:
        cdsi.load_schedule("lu")
        schedules.append("lu")
    except cdsi.UnknownSchedule:
        pass
    base_times, immunizations = [], 0
    times: dict[str, list[float]] = {name: [] for name in schedules}
    counts: dict[str, dict[str, int]] = {}
    for _ in range(args.rounds):  # interleaved, so that both see the same machine
        seconds, immunizations = _baseline(args.database_url, ids)
        base_times.append(seconds)
        for name in schedules:
            seconds, counts[name] = _forecast(args.database_url, ids, name, today)
            times[name].append(seconds)
    base = statistics.median(base_times)
    rows = [
        (
            "baseline: load Patient + Immunization + Condition",
            f"{len(ids) / base:8.0f} patients/s  ({immunizations} immunizations)",
        )
    ]
    for name in schedules:
        t = statistics.median(times[name])
        c = counts[name]
        rows.append(
            (
                f"load + forecast ({name} schedule)",
                f"{len(ids) / t:8.0f} patients/s  ({base / t:6.1%} of baseline; "
                f"{(t - base) * 1000 / max(c['forecast'], 1):.2f} ms per patient for the forecast; "
                f"{c['forecast']} forecast, {c['groups']} group forecasts, "
                f"{c['no birth date']} without birth date)",
            )
        )
    report(f"Forecast throughput ({len(ids)} patients, median of {args.rounds} rounds)", rows)


if __name__ == "__main__":
    main()
