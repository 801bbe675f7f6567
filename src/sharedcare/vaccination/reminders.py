"""The daily vaccination reminder job: a reminder when a dose comes due, another when it is overdue.

For every open record, the job asks a forecast (``ForecastFn``) which doses are due, and reminds
each (patient, vaccine group, dose number, due kind) once. A person's new reminders of one run go
in ONE ``vaccination-reminder`` message of the notification outbox (parameter ``reminders``: the
list), so a baby due for five vaccines gets one e-mail, not five; ``notify.delivery`` e-mails it
to the holder and their active representatives (a child's parents), each as their preferences say.

Exactly once: each reminder's key (``dedupe_key``: the four above) is a row of
``vaccination_reminder_item``, inserted ``ON CONFLICT DO NOTHING`` in the transaction that queues
the message, so a rerun, or a rerun after a crash, queues only what is missing. Patients are
processed in batches, each in one transaction holding its messages, their items and the forecast
state rows: a crash loses at most the batch in progress, which the next run redoes.

Overdue reminders stop ``reminder_overdue_days`` after the past-due date: a first run over an
existing population must not e-mail gaps decades old (the portal's card still shows them).

Incremental: the state row of a patient (``vaccination.models.forecast_state``) keeps a
fingerprint of the forecast's inputs and the next day something can become due. A run
recomputes a patient only when the fingerprint changed (any write to their Patient,
Immunization or Condition raises a version) or that day has come; the others cost one grouped
query per batch.

This is a system job: it reads the stored resources directly, not through a user's access
decision, but keeps to the record's status rules: a closed record gets no reminder, nor does a
deceased person.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from multiprocessing.pool import Pool
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from sqlalchemy import Connection, Engine, delete, exists, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite

from sharedcare.access.models import record_status
from sharedcare.fhir.store import utcnow
from sharedcare.notify import outbox
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer
from sharedcare.storage.tables import resource, resource_compartment
from sharedcare.vaccination.models import forecast_state, reminder_item

log = logging.getLogger("sharedcare.vaccination.reminders")

NOT_COMPLETE = "Not Complete"
"""The one forecast status that calls for a dose (CDSi's other ones: complete, immune, …)."""
DUE = "due"
"""The recommended date is within the lead time (or has passed, the dose not yet overdue)."""
OVERDUE = "overdue"
"""The past-due date has come."""
INPUT_TYPES = ("Patient", "Immunization", "Condition")
"""What a forecast reads from the record; a write to any of them makes the patient recomputed."""
RECHECK_DAYS = 30
"""Longest wait before a patient is recomputed without any write (ages move the schedule on)."""
POOL_MIN_FORECASTS = 100
"""Forecasts in one batch from which the engine's processes are started (``run``): a daily run
recomputing a few people per batch does not pay for spawning them."""


@dataclass(frozen=True, slots=True)
class Due:
    """One vaccine group's next dose, as the forecast gives it."""

    vaccine_group: str
    status: str
    dose_number: int | None
    recommended: date | None
    past_due: date | None


ForecastFn = Callable[[Connection, str, date], Sequence[Due]]
"""The forecast of one stored patient on a day; empty when the patient gets no reminder. One
with a ``prefetch(conn, patient_ids)`` method is given each batch first, to read its inputs in
one query (``StoredForecast``)."""


@dataclass(slots=True)
class ReminderReport:
    """What one run did."""

    patients: int = 0
    """Open records looked at."""
    recomputed: int = 0
    """Patients whose forecast was computed (inputs changed, their day came, or never done)."""
    unchanged: int = 0
    """Patients skipped: same inputs and nothing due before their next check."""
    queued: int = 0
    """Messages put in the outbox: one per person with new reminders (what gets e-mailed)."""
    reminders: int = 0
    """Reminders in those messages, one per (group, dose, due kind): a rerun queues none twice."""
    batches: int = 0


def due_kind(due: Due, today: date, lead_days: int, overdue_days: int = 0) -> str | None:
    """``OVERDUE``, ``DUE`` or None (nothing to say) for a forecast entry on ``today``. With
    ``overdue_days`` > 0, a gap older than that (past-due date, else recommended date, at least
    that many days ago) is not reminded: it stays on the portal's card, not in anyone's mail."""
    if due.status != NOT_COMPLETE:
        return None
    stale = today - timedelta(days=overdue_days) if overdue_days > 0 else None
    if due.past_due is not None and due.past_due <= today:
        return OVERDUE if stale is None or due.past_due > stale else None
    if due.recommended is not None and due.recommended <= today + timedelta(days=lead_days):
        if stale is not None and due.past_due is None and due.recommended <= stale:
            return None  # no past-due date: a recommendation that old is a gap, not news
        return DUE
    return None


def next_check(dues: Iterable[Due], today: date, lead_days: int) -> date:
    """The first day after ``today`` when a reminder can become due without any write."""
    latest = today + timedelta(days=RECHECK_DAYS)
    days = [latest]
    for due in dues:
        if due.status != NOT_COMPLETE:
            continue
        if due.recommended is not None:
            days.append(due.recommended - timedelta(days=lead_days))
        if due.past_due is not None:
            days.append(due.past_due)
    return min(d for d in days if d > today)


def dedupe_key(patient_id: str, due: Due, kind: str) -> str:
    """The outbox key making a reminder once-only (hashed when it would not fit the column)."""
    key = f"vaccination-reminder:{patient_id}:{due.vaccine_group}:{due.dose_number or 0}:{kind}"
    if len(key) <= 160:
        return key
    return "vaccination-reminder:" + hashlib.sha256(key.encode()).hexdigest()


def reminder_params(due: Due, kind: str) -> dict[str, Any]:
    """One reminder as the portal shows it (group, dose, date); never e-mailed (``notify.texts``)."""
    when = due.past_due if kind == OVERDUE else due.recommended
    return {
        "group": due.vaccine_group,
        "dose": due.dose_number,
        "date": when.isoformat() if when else None,
        "due": kind,
    }


# -- the job ---------------------------------------------------------------------------------------
def _open_patients(conn: Connection, after: str, limit: int) -> list[str]:
    """The next ``limit`` patients (by id) whose record is open: alive Patient resources without a
    closed (or otherwise not open) ``record_status``."""
    r, s = resource, record_status
    stmt = (
        select(r.c.id)
        .where(
            r.c.type == "Patient",
            r.c.deleted.is_(False),
            r.c.id > after,
            ~exists(select(s.c.patient_id).where(s.c.patient_id == r.c.id, s.c.status != "open")),
        )
        .order_by(r.c.id)
        .limit(limit)
    )
    return list(conn.execute(stmt).scalars())


def fingerprints(conn: Connection, patient_ids: Sequence[str]) -> dict[str, str]:
    """Per patient, ``count:sum of versions:newest last_updated`` of their input resources (deleted
    ones included: a deletion raises the version too)."""
    r, c = resource, resource_compartment
    stmt = (
        select(c.c.patient_id, func.count(), func.sum(r.c.version), func.max(r.c.last_updated))
        .select_from(c.join(r, r.c.pk == c.c.res_pk))
        .where(c.c.patient_id.in_(patient_ids), r.c.type.in_(INPUT_TYPES))
        .group_by(c.c.patient_id)
    )
    return {pid: f"{n}:{versions}:{newest.isoformat()}" for pid, n, versions, newest in conn.execute(stmt)}


def _states(conn: Connection, patient_ids: Sequence[str]) -> dict[str, tuple[str, date]]:
    f = forecast_state.c
    rows = conn.execute(select(f.patient_id, f.inputs, f.next_check).where(f.patient_id.in_(patient_ids)))
    return {pid: (inputs, check) for pid, inputs, check in rows}


def _due_json(dues: Sequence[Due]) -> str:
    return orjson.dumps(
        {
            d.vaccine_group: {"dose": d.dose_number, "recommended": d.recommended, "past_due": d.past_due}
            for d in dues
            if d.status == NOT_COMPLETE
        }
    ).decode()


def run_batch(
    conn: Connection,
    patient_ids: Sequence[str],
    forecast: ForecastFn,
    settings: Settings,
    today: date,
    now: datetime,
    report: ReminderReport,
    *,
    full: bool = False,
    pool: Pool | None = None,
) -> None:
    """Recompute the patients of one batch that need it, queue their reminders and save their
    state, in the caller's transaction."""
    prints = fingerprints(conn, patient_ids)
    states = _states(conn, patient_ids)
    todo = [
        pid
        for pid in patient_ids
        if full or pid not in states or states[pid][0] != prints.get(pid, "") or states[pid][1] <= today
    ]
    report.patients += len(patient_ids)
    report.unchanged += len(patient_ids) - len(todo)
    if not todo:
        return
    lead, stale = settings.reminder_lead_days, settings.reminder_overdue_days
    items: dict[str, tuple[str, dict[str, Any]]] = {}  # key -> (patient, reminder), in order
    rows: list[dict[str, Any]] = []
    for pid, dues in zip(todo, _compute(conn, todo, forecast, today, pool), strict=True):
        for due in dues:
            kind = due_kind(due, today, lead, stale)
            if kind is not None:
                items[dedupe_key(pid, due, kind)] = (pid, reminder_params(due, kind))
        rows.append(
            {
                "patient_id": pid,
                "computed_at": now,
                "inputs": prints.get(pid, ""),
                "due": _due_json(dues),
                "next_check": next_check(dues, today, lead),
            }
        )
    fresh = _new_items(conn, {key: pid for key, (pid, _) in items.items()}, now)
    per_patient: dict[str, list[dict[str, Any]]] = {}
    for key, (pid, params) in items.items():
        if key in fresh:
            per_patient.setdefault(pid, []).append(params)
    messages = [
        (pid, outbox.VACCINATION_REMINDER, None, {"reminders": listed}) for pid, listed in per_patient.items()
    ]
    report.queued += outbox.queue_many(conn, messages, now)
    report.reminders += len(fresh)
    conn.execute(delete(forecast_state).where(forecast_state.c.patient_id.in_(todo)))
    conn.execute(insert(forecast_state), rows)
    report.recomputed += len(todo)


def _new_items(conn: Connection, keys: dict[str, str], now: datetime) -> set[str]:
    """Record the reminders ``keys`` (key -> patient) as queued; the keys not recorded before
    (concurrent runs: the second waits for the first's row lock, then skips the key)."""
    if not keys:
        return set()
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(reminder_item)
        .on_conflict_do_nothing(index_elements=["dedupe"])
        .returning(reminder_item.c.dedupe)
    )
    rows = [{"dedupe": key, "patient_id": pid, "queued": now} for key, pid in keys.items()]
    return set(conn.execute(stmt, rows).scalars())


def _compute(
    conn: Connection, todo: Sequence[str], forecast: ForecastFn, today: date, pool: Pool | None
) -> list[Sequence[Due]]:
    """The forecasts of ``todo``, in order: in this process, or spread over ``pool``'s processes
    (the inputs read here, in the batch's transaction; only the engine runs there)."""
    prefetch = getattr(forecast, "prefetch", None)
    if prefetch is not None:
        prefetch(conn, todo)
    if pool is not None and isinstance(forecast, StoredForecast):
        items = [(pid, forecast.take(conn, pid), today) for pid in todo]
        return pool.map(_forecast_item, items, chunksize=max(len(items) // 16, 1))
    return [forecast(conn, pid, today) for pid in todo]


def forecast_processes(settings: Settings) -> int:
    """How many processes run the engine: ``reminder_processes``, or with 0 one per CPU this
    process may use (its affinity, not the machine's count: containers and taskset)."""
    if settings.reminder_processes > 0:
        return settings.reminder_processes
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def _to_recompute(conn: Connection, batch: Sequence[str], today: date, full: bool) -> int:
    """How many of ``batch`` ``run_batch`` will forecast (approximately: the state rows that
    are missing or due; a changed fingerprint is not counted), to decide on the pool."""
    if full:
        return len(batch)
    f = forecast_state.c
    fresh = conn.execute(
        select(func.count()).where(f.patient_id.in_(batch), f.next_check > today)
    ).scalar_one()
    return len(batch) - int(fresh)


def _start_pool(forecast: StoredForecast, processes: int) -> Pool:
    """The engine's processes: spawned, never forked (the worker has threads, the parent
    holds database connections); each gets the forecast once."""
    forecast.schedule_name = forecast.schedule()  # resolved here, not in each process
    context = multiprocessing.get_context("spawn")
    return context.Pool(processes, _pool_start, (forecast,))


_pool_forecast: StoredForecast | None = None
"""The forecast of a pool process (``_pool_start``)."""


def _pool_start(forecast: StoredForecast) -> None:
    global _pool_forecast
    _pool_forecast = forecast


def _forecast_item(item: tuple[str, list[tuple[str, dict[str, Any]]], date]) -> Sequence[Due]:
    assert _pool_forecast is not None
    return list(_pool_forecast.forecast(*item))


def run(
    engine: Engine,
    settings: Settings,
    today: date,
    *,
    forecast: ForecastFn | None = None,
    now: datetime | None = None,
    full: bool = False,
    on_batch: Callable[[ReminderReport], None] | None = None,
) -> ReminderReport:
    """One run of the daily job over every open record, one transaction per batch of
    ``reminder_batch_size`` patients (``on_batch`` is called after each commit). ``full``
    recomputes every patient (after a schedule or engine change). With more than one forecast
    process (``forecast_processes``: by default one per CPU) the engine runs in spawned
    processes, started at the first batch with many forecasts to compute: a script calling this
    needs the usual ``if __name__ == "__main__":`` guard (the ``sharedcare`` command has it)."""
    forecast = forecast or StoredForecast(settings.forecast_schedule)
    report = ReminderReport()
    after = ""
    size = max(settings.reminder_batch_size, 1)
    processes = forecast_processes(settings)
    with ExitStack() as stack:
        pool: Pool | None = None
        while True:
            with writer(engine).begin() as conn:
                batch = _open_patients(conn, after, size)
                if not batch:
                    break
                if (
                    pool is None
                    and processes > 1
                    and isinstance(forecast, StoredForecast)
                    and _to_recompute(conn, batch, today, full) >= min(POOL_MIN_FORECASTS, size)
                ):
                    pool = stack.enter_context(_start_pool(forecast, processes))
                moment = now or utcnow()
                run_batch(conn, batch, forecast, settings, today, moment, report, full=full, pool=pool)
            report.batches += 1
            after = batch[-1]
            if on_batch is not None:
                on_batch(report)
    log.info(
        "vaccination reminder run",
        extra={
            "patients": report.patients,
            "recomputed": report.recomputed,
            "unchanged": report.unchanged,
            "queued": report.queued,
        },
    )
    return report


# -- the default forecast: stored resources through the CDSi engine -------------------------------
class StoredForecast:
    """The ``ForecastFn`` of the job: the patient's current Patient, Immunization and Condition
    resources, read from the store (batch-prefetched), through the CDSi engine
    (``vaccination.cdsi``) and the schedule ``schedule`` (default: ``SHAREDCARE_FORECAST_SCHEDULE``)."""

    def __init__(self, schedule: str | None = None) -> None:
        self.schedule_name = schedule
        self._cache: dict[str, list[tuple[str, dict[str, Any]]]] = {}

    def prefetch(self, conn: Connection, patient_ids: Sequence[str]) -> None:
        """Read every input resource of ``patient_ids`` in one query (the job's batches)."""
        self._cache = {pid: [] for pid in patient_ids}
        for pid, rtype, content in conn.execute(_inputs_query(patient_ids)):
            self._cache[pid].append((rtype, orjson.loads(content)))

    def take(self, conn: Connection, patient_id: str) -> list[tuple[str, dict[str, Any]]]:
        """The patient's input resources: prefetched, else read now."""
        stored = self._cache.pop(patient_id, None)
        if stored is None:
            stored = [(t, orjson.loads(c)) for _, t, c in conn.execute(_inputs_query([patient_id]))]
        return stored

    def __call__(self, conn: Connection, patient_id: str, today: date) -> Sequence[Due]:
        return self.forecast(patient_id, self.take(conn, patient_id), today)

    def forecast(
        self, patient_id: str, stored: Sequence[tuple[str, dict[str, Any]]], today: date
    ) -> Sequence[Due]:
        """The forecast of one patient's resources (no I/O); none for a deceased person or a
        Patient without a birth date."""
        patient = next((res for t, res in stored if t == "Patient" and res.get("id") == patient_id), None)
        if patient is None or _deceased(patient):
            return []
        birth = _date(str(patient.get("birthDate") or ""))
        if birth is None:
            return []
        return self.compute(patient, birth, stored, today)

    def compute(
        self, patient: dict[str, Any], birth: date, stored: Sequence[tuple[str, dict[str, Any]]], today: date
    ) -> Sequence[Due]:
        """The CDSi engine's forecast per vaccine group, from the same inputs as the
        ``$immds-forecast`` operation (``vaccination.inputs``: CVX or catalogue products)."""
        from sharedcare.vaccination import cdsi
        from sharedcare.vaccination.inputs import InputError, forecast_inputs

        schedule = cdsi.load_schedule(self.schedule())
        immunizations = [res for t, res in stored if t == "Immunization"]
        conditions = [res for t, res in stored if t == "Condition"]
        try:
            inputs = forecast_inputs(patient, immunizations, conditions, schedule)
        except InputError:
            return []
        result = cdsi.forecast(schedule, inputs.patient, inputs.doses, today)
        return [
            Due(g.vaccine_group, g.status, g.dose_number, g.recommended, g.past_due) for g in result.groups
        ]

    def schedule(self) -> str:
        """The schedule's name (the setting's when none was given)."""
        if self.schedule_name is None:
            from sharedcare.settings import get_settings

            self.schedule_name = get_settings().forecast_schedule
        return self.schedule_name


def _inputs_query(patient_ids: Sequence[str]) -> Any:
    r, c = resource, resource_compartment
    return (
        select(c.c.patient_id, r.c.type, r.c.content)
        .select_from(c.join(r, r.c.pk == c.c.res_pk))
        .where(c.c.patient_id.in_(patient_ids), r.c.type.in_(INPUT_TYPES), r.c.deleted.is_(False))
    )


def _date(value: str) -> date | None:
    """A FHIR date or dateTime's day (partial dates: the first day they allow)."""
    try:
        if len(value) == 4:
            return date(int(value), 1, 1)
        if len(value) == 7:
            return date(int(value[:4]), int(value[5:7]), 1)
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _deceased(patient: dict[str, Any]) -> bool:
    return bool(patient.get("deceasedBoolean")) or "deceasedDateTime" in patient


# -- when the worker runs the job ------------------------------------------------------------------
def daily_time(settings: Settings) -> tuple[time, ZoneInfo]:
    """``SHAREDCARE_REMINDER_TIME`` (``HH:MM Area/City``); ValueError naming the problem."""
    text = settings.reminder_time.strip()
    clock, _, zone = text.partition(" ")
    try:
        at = time.fromisoformat(clock)
    except ValueError:
        raise ValueError(f"SHAREDCARE_REMINDER_TIME {text!r}: the time must be HH:MM") from None
    try:
        tz = ZoneInfo(zone.strip() or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"SHAREDCARE_REMINDER_TIME {text!r}: unknown time zone {zone.strip()!r}") from None
    return at, tz


def local_today(settings: Settings, now: datetime | None = None) -> date:
    """The day of the job in its time zone (``now``: naive UTC)."""
    _, tz = daily_time(settings)
    moment = (now or utcnow()).replace(tzinfo=ZoneInfo("UTC"))
    return moment.astimezone(tz).date()


def next_run(settings: Settings, now: datetime) -> datetime:
    """The next time (naive UTC, after ``now``) the daily job is due."""
    at, tz = daily_time(settings)
    local = now.replace(tzinfo=ZoneInfo("UTC")).astimezone(tz)
    candidate = datetime.combine(local.date(), at, tzinfo=tz)
    if candidate <= local:
        candidate = datetime.combine(local.date() + timedelta(days=1), at, tzinfo=tz)
    return candidate.astimezone(ZoneInfo("UTC")).replace(tzinfo=None)


def run_daily(
    engine: Engine,
    settings: Settings,
    stop: threading.Event,
    *,
    forecast: ForecastFn | None = None,
    on_run: Callable[[ReminderReport], None] | None = None,
) -> None:
    """Run the job now (a restarted worker catches up: the job is idempotent and cheap when
    nothing changed), then every day at ``SHAREDCARE_REMINDER_TIME``, until ``stop`` is set.
    A failed run is logged and retried at the next time: the batches it committed stay done."""
    daily_time(settings)  # a bad setting stops the worker at once, not at the first run
    forecast = forecast or StoredForecast(settings.forecast_schedule)
    while not stop.is_set():
        try:
            report = run(engine, settings, local_today(settings), forecast=forecast)
        except Exception:
            log.exception("vaccination reminder run failed")
        else:
            if on_run is not None:
                on_run(report)
        now = utcnow()
        stop.wait(max((next_run(settings, now) - now).total_seconds(), 0.0))
