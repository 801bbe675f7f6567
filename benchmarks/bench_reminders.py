"""The daily vaccination reminder job (issue 5): a whole population, cold and incremental.

``--patients`` people (default 100,000), aged 0 to 80 years, each with the immunization history
the childhood and adolescent schedule would have given them, 90 % of the doses given, each a few
weeks late at most (CVX-coded ``Immunization`` resources), are written into a PostgreSQL database
(a scratch one, or ``--database-url``) by ``COPY`` of the ``resource`` and
``resource_compartment`` rows, the only ones the job reads (no index rows nor versions: the
load's own speed is not measured here), then ``ANALYZE``.

Then, in the same process:
1. **Baseline**: only loading every patient's Patient and Immunization resources, by the job's
   batches and query (``StoredForecast.prefetch``: one query per batch, JSON parsed); timed on
   its second pass, the first one warming the database's cache for both.
2. **Cold run**: ``vaccination.reminders.run`` with the real CDSi engine (schedule ``cdc``) on an
   empty forecast state: every patient forecast, reminders queued, state rows written.
3. **Incremental run** the next day, after a dose was recorded for 1 % of the patients: only those
   and the patients whose next check came are recomputed.

Target: the cold run for 100,000 patients in under 5 minutes.

Run: ``python benchmarks/bench_reminders.py [--patients N] [--database-url URL] [--batch-size B]
[--processes P]``. Without ``--batch-size``/``--processes`` the job runs with the settings' defaults
(``SHAREDCARE_REMINDER_BATCH_SIZE``, ``SHAREDCARE_REMINDER_PROCESSES``: one forecast process per
CPU), as ``sharedcare worker`` does; the other settings (overdue limit, lead time) are the defaults.
"""

from __future__ import annotations

import argparse
import random
import resource as rusage
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report, scratch_database
from sharedcare.access.policy import category_of
from sharedcare.fhir.store import instant
from sharedcare.notify.models import notification
from sharedcare.settings import Settings
from sharedcare.storage.engine import make_engine, refresh_statistics
from sharedcare.storage.migrate import upgrade
from sharedcare.storage.tables import resource
from sharedcare.vaccination import reminders

CVX = "http://hl7.org/fhir/sid/cvx"
SCHEDULE: list[tuple[str, tuple[int, ...]]] = [
    ("08", (0, 30, 180)),  # HepB
    ("20", (61, 122, 183, 457, 1461)),  # DTaP
    ("10", (61, 122, 183, 1461)),  # IPV
    ("49", (61, 122, 366)),  # Hib
    ("133", (61, 122, 183, 366)),  # PCV13
    ("119", (61, 122)),  # rotavirus
    ("03", (366, 1461)),  # MMR
    ("21", (366, 1461)),  # varicella
    ("83", (366, 548)),  # HepA
    ("115", (4018,)),  # Tdap at 11
    ("165", (4018, 4200)),  # HPV
    ("114", (4018, 5844)),  # MenACWY at 11 and 16
]
"""(CVX, ages in days) of the childhood schedule the generated histories follow."""
PREFIX = "rb-"


def population(n: int, today: date, seed: int = 5) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """``n`` (Patient, Immunizations) pairs, reproducible."""
    rng = random.Random(seed)
    for i in range(n):
        pid = f"{PREFIX}{i:07d}"
        birth = today - timedelta(days=rng.randrange(0, 80 * 365))
        patient = {
            "resourceType": "Patient",
            "id": pid,
            "birthDate": birth.isoformat(),
            "gender": rng.choice(("male", "female")),
        }
        doses: list[dict[str, Any]] = []
        for cvx, ages in SCHEDULE:
            for age in ages:
                when = birth + timedelta(days=age + rng.randrange(0, 21))
                if when >= today or rng.random() > 0.9:
                    continue
                doses.append(
                    {
                        "resourceType": "Immunization",
                        "id": f"{pid}-{len(doses)}",
                        "status": "completed",
                        "vaccineCode": {"coding": [{"system": CVX, "code": cvx}]},
                        "patient": {"reference": f"Patient/{pid}"},
                        "occurrenceDateTime": when.isoformat(),
                        "primarySource": True,
                        "lotNumber": f"L{rng.randrange(10**6)}",
                    }
                )
        yield patient, doses


def fill(engine: Engine, n: int, today: date, now: datetime) -> int:
    """Write the population by COPY (``resource`` and ``resource_compartment``); the resources written."""
    written = 0
    stamp = instant(now)
    batch: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []

    def flush() -> None:
        nonlocal written
        rows = [res for patient, doses in batch for res in (patient, *doses)]
        with engine.begin() as conn:
            pks = list(
                conn.execute(
                    text("SELECT nextval('resource_pk_seq') FROM generate_series(1, :n)"), {"n": len(rows)}
                ).scalars()
            )
            raw = conn.connection.driver_connection
            assert raw is not None
            with raw.cursor() as cur:
                columns = "pk, type, id, version, last_updated, deleted, content, category"
                with cur.copy(f"COPY resource ({columns}) FROM STDIN") as copy:
                    for pk, res in zip(pks, rows, strict=True):
                        res["meta"] = {"versionId": "1", "lastUpdated": stamp}
                        content = orjson.dumps(res).decode()
                        copy.write_row(
                            (pk, res["resourceType"], res["id"], 1, now, False, content, category_of(res))
                        )
                with cur.copy("COPY resource_compartment (res_pk, patient_id) FROM STDIN") as copy:
                    for pk, res in zip(pks, rows, strict=True):
                        copy.write_row(
                            (
                                pk,
                                res["id"]
                                if res["resourceType"] == "Patient"
                                else res["patient"]["reference"][8:],
                            )
                        )
        written += len(rows)
        batch.clear()

    for pair in population(n, today):
        batch.append(pair)
        if len(batch) == 2000:
            flush()
    if batch:
        flush()
    refresh_statistics(engine)
    return written


def record_doses(engine: Engine, share: float, today: date, now: datetime) -> int:
    """A new dose for ``share`` of the patients (the day's vaccinations); how many."""
    with engine.begin() as conn:
        ids = list(
            conn.execute(
                select(resource.c.id).where(resource.c.type == "Patient").order_by(resource.c.id)
            ).scalars()
        )
    chosen = ids[:: max(int(1 / share), 1)]
    with engine.begin() as conn:
        pks = list(
            conn.execute(
                text("SELECT nextval('resource_pk_seq') FROM generate_series(1, :n)"), {"n": len(chosen)}
            ).scalars()
        )
        raw = conn.connection.driver_connection
        assert raw is not None
        with raw.cursor() as cur:
            with cur.copy(
                "COPY resource (pk, type, id, version, last_updated, deleted, content) FROM STDIN"
            ) as copy:
                for pk, pid in zip(pks, chosen, strict=True):
                    dose = {
                        "resourceType": "Immunization",
                        "id": f"{pid}-new",
                        "status": "completed",
                        "vaccineCode": {"coding": [{"system": CVX, "code": "141"}]},  # influenza
                        "patient": {"reference": f"Patient/{pid}"},
                        "occurrenceDateTime": today.isoformat(),
                    }
                    copy.write_row(
                        (pk, "Immunization", dose["id"], 1, now, False, orjson.dumps(dose).decode())
                    )
            with cur.copy("COPY resource_compartment (res_pk, patient_id) FROM STDIN") as copy:
                for pk, pid in zip(pks, chosen, strict=True):
                    copy.write_row((pk, pid))
    return len(chosen)


def baseline(engine: Engine, batch_size: int) -> tuple[float, int]:
    """Seconds to load (and parse) every patient's inputs by the job's batches; resources read."""
    loader = reminders.StoredForecast("cdc")
    read = 0
    start = time.perf_counter()
    after = ""
    while True:
        with engine.connect() as conn:
            ids = list(
                conn.execute(
                    select(resource.c.id)
                    .where(resource.c.type == "Patient", resource.c.id > after)
                    .order_by(resource.c.id)
                    .limit(batch_size)
                ).scalars()
            )
            if not ids:
                break
            loader.prefetch(conn, ids)
        read += sum(len(v) for v in loader._cache.values())
        after = ids[-1]
    return time.perf_counter() - start, read


def cpu_seconds() -> float:
    """User and system CPU time of this process and its ended children (the forecast processes,
    reaped when a run ends): a cost the other load on a shared machine does not inflate."""
    own, children = rusage.getrusage(rusage.RUSAGE_SELF), rusage.getrusage(rusage.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--database-url", help="a PostgreSQL database to fill (default: a scratch one)")
    parser.add_argument("--batch-size", type=int, help="patients per transaction (default: the setting's)")
    parser.add_argument(
        "--processes", type=int, help="forecast processes (default: the setting's, 0: per CPU)"
    )
    args = parser.parse_args()
    today = date.today()
    now = datetime.now().replace(microsecond=0)
    with ExitStack() as stack:
        url = args.database_url or stack.enter_context(scratch_database("reminders_bench"))
        engine = make_engine(url)
        stack.callback(engine.dispose)
        upgrade(engine)
        with engine.connect() as conn:
            have = conn.execute(select(func.count()).where(resource.c.type == "Patient")).scalar_one()
        t0 = time.perf_counter()
        written = fill(engine, args.patients, today, now) if have == 0 else 0
        fill_s = time.perf_counter() - t0
        n = args.patients if have == 0 else have
        chosen = {"reminder_batch_size": args.batch_size, "reminder_processes": args.processes}
        settings = Settings(database_url=url, **{k: v for k, v in chosen.items() if v is not None})
        processes = reminders.forecast_processes(settings)
        baseline(engine, settings.reminder_batch_size)  # warms the database's cache for the runs below
        base_s, read = baseline(engine, settings.reminder_batch_size)
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        cold = reminders.run(engine, settings, today, forecast=reminders.StoredForecast("cdc"))
        cold_s, cold_cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        changed = record_doses(engine, 0.01, today + timedelta(days=1), now + timedelta(days=1))
        t0 = time.perf_counter()
        warm = reminders.run(
            engine, settings, today + timedelta(days=1), forecast=reminders.StoredForecast("cdc")
        )
        warm_s = time.perf_counter() - t0
        with engine.connect() as conn:
            queued = conn.execute(select(func.count()).select_from(notification)).scalar_one()
    report(
        f"vaccination reminder job, {n:,} patients, {processes} forecast process(es)",
        [
            ("population written", f"{written:,} resources in {fill_s:.1f} s" if written else "reused"),
            ("baseline: load inputs", f"{base_s:.1f} s ({read:,} resources, {n / base_s:,.0f} patients/s)"),
            (
                "cold run",
                f"{cold_s:.1f} s ({cold.recomputed / cold_s:,.0f} patients/s, {cold.reminders:,} reminders "
                f"in {cold.queued:,} messages)",
            ),
            ("cold run / baseline", f"{cold_s / base_s:.1f}x"),
            (
                "cold run, CPU",
                f"{cold_cpu:.1f} s in the job's and forecast processes (PostgreSQL's not counted); "
                f"/ {processes} = {cold_cpu / processes:.1f} s",
            ),
            (
                "incremental run (next day)",
                f"{warm_s:.1f} s ({warm.recomputed:,} recomputed, {changed:,} had a new dose; "
                f"{warm.unchanged:,} unchanged; {warm.reminders:,} reminders in {warm.queued:,} messages)",
            ),
            ("messages in the outbox", f"{queued:,}"),
            ("target (100,000 in < 300 s)", f"{cold_s * 100_000 / n:.0f} s projected"),
        ],
    )


if __name__ == "__main__":
    main()
