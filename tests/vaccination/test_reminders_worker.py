"""``sharedcare worker``: the reminder job on the real CDSi engine and the e-mail delivery, end to end
(a real SMTP server, aiosmtpd), and the daily loop."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import date, timedelta

import pytest
from sqlalchemy import Engine, delete
from test_reminders import (
    ToyForecast,
    count_messages,
    count_reminders,
    immunization,
    patient,
    reminders_of,
    store,
)
from typer.testing import CliRunner

from notify.test_delivery import SENDER, Inbox, inbox, person, represent, text_of
from sharedcare import settings as settings_module
from sharedcare.access.principals import PrincipalKind
from sharedcare.cli import app as cli
from sharedcare.fhir.store import utcnow
from sharedcare.notify.models import notification
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer
from sharedcare.vaccination import reminders
from sharedcare.vaccination.models import forecast_state, reminder_item
from support import emptied_engine

__all__ = ["inbox"]


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    yield from emptied_engine(db_url)


def test_worker_once_reminds_the_parent_of_a_babys_first_doses(
    engine: Engine, db_url: str, inbox: tuple[Inbox, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, port = inbox
    for name, value in {
        "DATABASE_URL": db_url,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(port),
        "SMTP_FROM": SENDER,
        "SMTP_STARTTLS": "false",
        "REMINDER_TIME": "06:00 Europe/Luxembourg",
    }.items():
        monkeypatch.setenv(f"SHAREDCARE_{name}", value)
    settings_module.get_settings.cache_clear()
    try:
        today = reminders.local_today(settings_module.get_settings())
        birth = today - timedelta(days=50)  # the two-month doses are ten days or so away
        store(engine, patient("baby", birth), immunization("hepb-1", "baby", "08", birth))  # HepB at birth
        with writer(engine).begin() as conn:
            parent = person(conn, PrincipalKind.REPRESENTATIVE, 2, email="anne@example.org", language="en")
            represent(conn, parent, "baby", utcnow())
        first = CliRunner().invoke(cli, ["worker", "--once"])
        again = CliRunner().invoke(cli, ["worker", "--once"])
    finally:
        settings_module.get_settings.cache_clear()
    assert first.exit_code == 0, first.output
    queued = count_reminders(engine)
    assert queued > 1 and count_messages(engine) == 1  # the two-month doses, in one message
    assert f"reminders: {queued} in 1 messages queued; patients: 1, recomputed: 1" in first.output
    assert "sent: 1," in first.output
    due = {(m.params["group"], m.params["dose"], m.params["due"]) for m in reminders_of(engine, "baby")}
    assert ("DTaP/Tdap/Td", 1, reminders.DUE) in due and ("Polio", 1, reminders.DUE) in due
    assert not {d for d in due if d[0] == "HepB" and d[1] == 1}  # given at birth: nothing to remind
    (polio,) = [m for m in reminders_of(engine, "baby") if m.params["group"] == "Polio"]
    if birth.day <= 28:  # two months of age in calendar months (the end-of-month rule aside)
        months = birth.month + 1
        two_months = birth.replace(year=birth.year + months // 12, month=months % 12 + 1)
        assert polio.params["date"] == two_months.isoformat()
    mails = server.to("anne@example.org")
    assert len(mails) == 1 and all("vaccination reminder" in text_of(m) for m in mails)
    assert all("Polio" not in text_of(m) and "DTaP" not in text_of(m) for m in mails)
    assert again.exit_code == 0, again.output
    assert "reminders: 0 in 0 messages queued; patients: 1, recomputed: 0, unchanged: 1" in again.output
    assert len(server.mails) == 1  # nothing sent twice


def test_worker_refuses_a_bad_reminder_time(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHAREDCARE_DATABASE_URL", db_url)
    monkeypatch.setenv("SHAREDCARE_REMINDER_TIME", "6 o'clock")
    settings_module.get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["worker", "--once"])
    finally:
        settings_module.get_settings.cache_clear()
    assert result.exit_code == 2 and "HH:MM" in result.output


def test_daily_loop_runs_at_start_then_waits_for_its_time(engine: Engine, settings: Settings) -> None:
    store(engine, patient("pa", utcnow().date() - timedelta(days=400)))  # overdue on any day
    stop = threading.Event()
    runs: list[reminders.ReminderReport] = []

    def on_run(report: reminders.ReminderReport) -> None:
        runs.append(report)
        stop.set()

    thread = threading.Thread(
        target=reminders.run_daily,
        args=(engine, settings, stop),
        kwargs={"forecast": ToyForecast(), "on_run": on_run},
    )
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert [(r.recomputed, r.queued, r.reminders) for r in runs] == [(1, 1, 1)]


def test_forecasts_spread_over_processes_queue_the_same_reminders(engine: Engine, settings: Settings) -> None:
    today = date(2026, 6, 1)
    births = [today - timedelta(days=days) for days in (20, 50, 200, 400, 1500, 4100, 9000)]
    store(
        engine,
        *(patient(f"p{i}", birth) for i, birth in enumerate(births)),
        immunization("hepb-1", "p1", "08", births[1]),
    )

    def queued() -> set[tuple[str, str, int, str, str]]:
        return {
            (m.patient_id, m.params["group"], m.params["dose"], m.params["date"], m.params["due"])
            for m in reminders_of(engine)
        }

    alone = reminders.run(
        engine,
        settings.model_copy(update={"reminder_processes": 1}),
        today,
        forecast=reminders.StoredForecast("cdc"),
    )
    in_this_process = queued()
    with writer(engine).begin() as conn:
        conn.execute(delete(notification))
        conn.execute(delete(forecast_state))
        conn.execute(delete(reminder_item))
    spread = settings.model_copy(update={"reminder_processes": 2, "reminder_batch_size": 3})
    pooled = reminders.run(engine, spread, today, forecast=reminders.StoredForecast("cdc"))
    assert (pooled.recomputed, pooled.queued, pooled.reminders, pooled.batches) == (
        7,
        alone.queued,
        alone.reminders,
        3,
    )
    assert queued() == in_this_process and len(in_this_process) == alone.reminders > 7
