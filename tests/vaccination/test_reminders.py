"""The daily vaccination reminder job: exactly-once reminders, incremental runs, crash safety,
and a child's reminder e-mailed to the parent through a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from datetime import date, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, func, select

from notify.test_delivery import Inbox, inbox, mail_settings, person, represent, text_of
from sharedcare.access.models import record_status
from sharedcare.access.policy import category_of
from sharedcare.access.principals import PrincipalKind
from sharedcare.fhir.service import FhirService
from sharedcare.notify import delivery, outbox
from sharedcare.notify.models import notification
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer
from sharedcare.vaccination import reminders
from sharedcare.vaccination.models import forecast_state, reminder_item
from sharedcare.vaccination.reminders import Due, StoredForecast
from support import emptied_engine

__all__ = ["inbox"]  # the SMTP server fixture, shared with tests/notify

TODAY = date(2026, 6, 1)
NOW = datetime(2026, 6, 1, 4, 0)
CVX = "http://hl7.org/fhir/sid/cvx"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    yield from emptied_engine(db_url)


class ToyForecast(StoredForecast):
    """A one-group schedule for the job's own tests: MMR dose 1 at 365 days, dose 2 at 4 years,
    each past due 60 days later; complete after two doses. Counts the patients it computes and
    can fail once on chosen patients (a crash mid-batch)."""

    def __init__(self, fail_on: Sequence[str] = ()) -> None:
        super().__init__("toy")
        self.calls: list[str] = []
        self.fail_on = set(fail_on)

    def compute(
        self, patient: dict[str, Any], birth: date, stored: Sequence[tuple[str, dict[str, Any]]], today: date
    ) -> Sequence[Due]:
        pid = patient["id"]
        if pid in self.fail_on:
            self.fail_on.discard(pid)
            raise RuntimeError("the engine crashed")
        self.calls.append(pid)
        given = sum(1 for t, res in stored if t == "Immunization" and res["status"] == "completed")
        if given >= 2:
            return [Due("MMR", "Complete", None, None, None)]
        recommended = birth + timedelta(days=365 if given == 0 else 4 * 365)
        return [Due("MMR", reminders.NOT_COMPLETE, given + 1, recommended, recommended + timedelta(days=60))]


def patient(pid: str, birth: date, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "birthDate": birth.isoformat(), "gender": "female", **extra}


def immunization(iid: str, pid: str, cvx: str, when: date, status: str = "completed") -> dict[str, Any]:
    return {
        "resourceType": "Immunization",
        "id": iid,
        "status": status,
        "vaccineCode": {"coding": [{"system": CVX, "code": cvx}]},
        "patient": {"reference": f"Patient/{pid}"},
        "occurrenceDateTime": when.isoformat(),
        "primarySource": True,
        "lotNumber": "LOT-1",
        "expirationDate": (when + timedelta(days=365)).isoformat(),
        "protocolApplied": [{"doseNumberPositiveInt": 1}],
    }


def store(engine: Engine, *resources: dict[str, Any]) -> None:
    svc = FhirService(engine, classify=category_of)
    for res in resources:
        svc.update(res["resourceType"], res["id"], res)


def messages_of(engine: Engine, patient_id: str | None = None) -> list[outbox.Notification]:
    """The reminder messages in the outbox (one per person and run), newest first."""
    with engine.connect() as conn:
        n = notification.c
        stmt = select(n.patient_id).where(n.kind == outbox.VACCINATION_REMINDER).distinct()
        ids = [patient_id] if patient_id else list(conn.execute(stmt).scalars())
        return [
            m for pid in ids for m in outbox.for_patient(conn, pid) if m.kind == outbox.VACCINATION_REMINDER
        ]


def reminders_of(engine: Engine, patient_id: str | None = None) -> list[outbox.Notification]:
    """Each reminder of those messages on its own (``params``: group, dose, date, due)."""
    return [
        dataclasses.replace(m, params=item)
        for m in messages_of(engine, patient_id)
        for item in m.params["reminders"]
    ]


def count_reminders(engine: Engine) -> int:
    return len(reminders_of(engine))


def count_messages(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(notification)
                .where(notification.c.kind == outbox.VACCINATION_REMINDER)
            ).scalar_one()
        )


def test_a_childs_reminder_is_emailed_to_the_parent_without_health_data(
    engine: Engine, settings: Settings, inbox: tuple[Inbox, int]
) -> None:
    server, port = inbox
    child_birth = TODAY - timedelta(days=365 - 10)  # MMR dose 1 in ten days: within the lead time
    store(engine, patient("child", child_birth))
    with writer(engine).begin() as conn:
        parent = person(conn, PrincipalKind.REPRESENTATIVE, 2, email="jean@example.org", language="de")
        represent(conn, parent, "child", NOW)
    report = reminders.run(engine, settings, TODAY, forecast=ToyForecast(), now=NOW)
    assert (report.patients, report.recomputed, report.queued, report.reminders) == (1, 1, 1, 1)
    (message,) = reminders_of(engine, "child")
    due = (child_birth + timedelta(days=365)).isoformat()
    assert message.params == {"group": "MMR", "dose": 1, "date": due, "due": reminders.DUE}
    sent = delivery.deliver_pending(engine, mail_settings(settings, port), now=NOW)
    assert sent.sent == 1
    assert [rcpt for rcpt, _ in server.mails] == [["jean@example.org"]]  # the child has no account
    text = text_of(server.mails[0][1])
    assert "Impferinnerung" in text and "einer Person, die Sie vertreten" in text
    for health in ("MMR", due, "child", "Masern"):
        assert health not in text


def test_one_reminder_per_patient_group_dose_and_kind(engine: Engine, settings: Settings) -> None:
    store(
        engine,
        patient("soon", TODAY - timedelta(days=360)),  # dose 1 due in 5 days
        patient("late", TODAY - timedelta(days=430)),  # dose 1 past due since 5 days
        patient("later", TODAY - timedelta(days=100)),  # dose 1 in 265 days: nothing yet
    )
    toy = ToyForecast()
    first = reminders.run(engine, settings, TODAY, forecast=toy, now=NOW)
    assert (first.patients, first.recomputed, first.unchanged, first.queued) == (3, 3, 0, 2)
    assert {(m.patient_id, m.params["due"]) for m in reminders_of(engine)} == {
        ("soon", reminders.DUE),
        ("late", reminders.OVERDUE),
    }
    again = reminders.run(engine, settings, TODAY, forecast=toy, now=NOW)  # a second run the same day
    assert (again.recomputed, again.unchanged, again.queued) == (0, 3, 0)
    forced = reminders.run(engine, settings, TODAY, forecast=toy, now=NOW, full=True)
    assert (forced.recomputed, forced.queued) == (3, 0)  # recomputed, but nothing twice
    assert count_reminders(engine) == 2 and len(toy.calls) == 6
    quiet = reminders.run(engine, settings, TODAY + timedelta(days=29), forecast=toy, now=NOW)
    assert (quiet.recomputed, quiet.queued) == (0, 0)  # nobody's next check has come
    # 65 days later "soon" is overdue: its day came (and the others' monthly recheck)
    later = reminders.run(engine, settings, TODAY + timedelta(days=65), forecast=toy, now=NOW)
    assert (later.recomputed, later.queued) == (3, 1)
    assert ("soon", reminders.OVERDUE) in {(m.patient_id, m.params["due"]) for m in reminders_of(engine)}


def test_only_changed_patients_are_recomputed(engine: Engine, settings: Settings) -> None:
    births = {f"p{i}": TODAY - timedelta(days=200 + i) for i in range(6)}
    store(engine, *(patient(pid, birth) for pid, birth in births.items()))
    toy = ToyForecast()
    assert reminders.run(engine, settings, TODAY, forecast=toy, now=NOW).recomputed == 6
    toy.calls.clear()
    store(engine, immunization("imm-p3", "p3", "03", TODAY - timedelta(days=1)))  # a dose recorded
    store(engine, patient("p5", births["p5"], gender="male"))  # the Patient itself changed
    report = reminders.run(engine, settings, TODAY, forecast=toy, now=NOW)
    assert (report.recomputed, report.unchanged) == (2, 4)
    assert sorted(toy.calls) == ["p3", "p5"]
    with engine.connect() as conn:
        state = conn.execute(select(forecast_state).where(forecast_state.c.patient_id == "p3")).one()
    assert state.next_check == TODAY + timedelta(days=reminders.RECHECK_DAYS)  # dose 2 is years away
    assert orjson.loads(state.due)["MMR"]["dose"] == 2
    toy.calls.clear()
    FhirService(engine, classify=category_of).delete("Immunization", "imm-p3")  # a deletion counts too
    assert reminders.run(engine, settings, TODAY, forecast=toy, now=NOW).recomputed == 1 and toy.calls == [
        "p3"
    ]


def test_closed_records_and_deceased_people_get_no_reminder(engine: Engine, settings: Settings) -> None:
    overdue = TODAY - timedelta(days=500)
    store(
        engine,
        patient("open", overdue),
        patient("closed", overdue),
        patient("dead", overdue, deceasedDateTime="2026-05-01"),
        immunization("imm-x", "open", "03", TODAY - timedelta(days=90), status="entered-in-error"),
    )
    with writer(engine).begin() as conn:
        conn.execute(record_status.insert().values(patient_id="closed", status="closed", closed_at=NOW))
        # the death closed the record at the write (access.death); the reminders' own rule is tested on
        # a record still open (written before that closure existed)
        conn.execute(record_status.update().where(record_status.c.patient_id == "dead").values(status="open"))
    toy = ToyForecast()
    report = reminders.run(engine, settings, TODAY, forecast=toy, now=NOW)
    assert report.patients == 2  # the closed record is not even looked at
    assert [(m.patient_id, m.params["dose"]) for m in reminders_of(engine)] == [("open", 1)]  # error ignored
    assert toy.calls == ["open"]  # the deceased person's forecast is never asked for


def test_an_exception_mid_batch_loses_and_duplicates_nothing(engine: Engine, settings: Settings) -> None:
    pids = [f"p{i}" for i in range(7)]
    store(engine, *(patient(pid, TODAY - timedelta(days=400)) for pid in pids))  # all overdue
    s = settings.model_copy(update={"reminder_batch_size": 3, "reminder_processes": 1})
    crashing = ToyForecast(fail_on=["p4"])  # in the second batch (p3, p4, p5)
    with pytest.raises(RuntimeError, match="engine crashed"):
        reminders.run(engine, s, TODAY, forecast=crashing, now=NOW)
    assert {m.patient_id for m in reminders_of(engine)} == {"p0", "p1", "p2"}  # batch 2 rolled back
    rerun = reminders.run(engine, s, TODAY, forecast=crashing, now=NOW)
    assert (rerun.unchanged, rerun.recomputed, rerun.queued) == (3, 4, 4)  # exactly the missing ones
    assert sorted(m.patient_id for m in reminders_of(engine)) == pids


def test_a_kill_between_batches_is_resumed_by_the_next_run(engine: Engine, settings: Settings) -> None:
    pids = [f"p{i}" for i in range(5)]
    store(engine, *(patient(pid, TODAY - timedelta(days=400)) for pid in pids))
    s = settings.model_copy(update={"reminder_batch_size": 2, "reminder_processes": 1})

    class Killed(Exception):
        pass

    def die_after_first_commit(report: reminders.ReminderReport) -> None:
        raise Killed  # the process stops right after a batch's commit

    with pytest.raises(Killed):
        reminders.run(engine, s, TODAY, forecast=ToyForecast(), now=NOW, on_batch=die_after_first_commit)
    assert count_reminders(engine) == 2
    toy = ToyForecast()
    rerun = reminders.run(engine, s, TODAY, forecast=toy, now=NOW)
    assert (rerun.batches, rerun.unchanged, rerun.recomputed, rerun.queued) == (3, 2, 3, 3)
    assert sorted(toy.calls) == ["p2", "p3", "p4"] and count_reminders(engine) == 5


def test_due_kinds_and_next_check() -> None:
    lead = 14
    soon = Due("MMR", reminders.NOT_COMPLETE, 1, TODAY + timedelta(days=14), TODAY + timedelta(days=74))
    far = Due("HPV", reminders.NOT_COMPLETE, 1, TODAY + timedelta(days=15), None)
    late = Due("Polio", reminders.NOT_COMPLETE, 3, TODAY - timedelta(days=90), TODAY)
    done = Due("HepB", "Complete", None, None, None)
    assert [reminders.due_kind(d, TODAY, lead) for d in (soon, far, late, done)] == [
        reminders.DUE,
        None,
        reminders.OVERDUE,
        None,
    ]
    assert reminders.next_check([soon, far, late, done], TODAY, lead) == TODAY + timedelta(
        days=1
    )  # far's day
    assert reminders.next_check([done], TODAY, lead) == TODAY + timedelta(days=reminders.RECHECK_DAYS)
    long_group = Due("x" * 200, reminders.NOT_COMPLETE, 1, TODAY, None)
    assert len(reminders.dedupe_key("p" * 64, long_group, reminders.DUE)) <= 160


def test_daily_time_and_next_run(settings: Settings) -> None:
    s = settings.model_copy(update={"reminder_time": "06:00 Europe/Luxembourg"})
    assert reminders.next_run(s, datetime(2026, 6, 1, 3, 59)) == datetime(2026, 6, 1, 4, 0)  # CEST: UTC+2
    assert reminders.next_run(s, datetime(2026, 6, 1, 4, 0)) == datetime(2026, 6, 2, 4, 0)
    assert reminders.next_run(s, datetime(2026, 12, 1, 12, 0)) == datetime(2026, 12, 2, 5, 0)  # CET
    assert reminders.local_today(s, datetime(2026, 6, 1, 22, 30)) == date(2026, 6, 2)
    for bad, reason in (("6h", "HH:MM"), ("06:00 Mars/Olympus", "unknown time zone")):
        with pytest.raises(ValueError, match=reason):
            reminders.daily_time(settings.model_copy(update={"reminder_time": bad}))


class ManyGroups(StoredForecast):
    """Several groups due at once for every patient (a baby's two-month visit): ``groups`` maps a
    group to its days past the recommended date (negative: still to come)."""

    def __init__(self, groups: dict[str, int], fail_on: Sequence[str] = ()) -> None:
        super().__init__("toy")
        self.groups = groups
        self.fail_on = set(fail_on)

    def compute(
        self, patient: dict[str, Any], birth: date, stored: Sequence[tuple[str, dict[str, Any]]], today: date
    ) -> Sequence[Due]:
        if patient["id"] in self.fail_on:
            self.fail_on.discard(patient["id"])
            raise RuntimeError("the engine crashed")
        return [
            Due(g, reminders.NOT_COMPLETE, 1, today - timedelta(days=late), today - timedelta(days=late - 30))
            for g, late in self.groups.items()
        ]


def test_one_message_per_person_per_run_listing_its_reminders(
    engine: Engine, settings: Settings, inbox: tuple[Inbox, int]
) -> None:
    server, port = inbox
    store(engine, patient("baby", TODAY - timedelta(days=50)), patient("twin", TODAY - timedelta(days=50)))
    with writer(engine).begin() as conn:
        parent = person(conn, PrincipalKind.REPRESENTATIVE, 2, email="anne@example.org", language="en")
        represent(conn, parent, "baby", NOW)
    five = ManyGroups({"DTaP": -5, "Polio": -5, "Hib": -5, "PCV": -5, "Rotavirus": 40})
    s = settings.model_copy(update={"reminder_processes": 1})
    report = reminders.run(engine, s, TODAY, forecast=five, now=NOW)
    assert (report.queued, report.reminders) == (2, 10)  # one message each, five reminders in it
    (message,) = messages_of(engine, "baby")
    assert [(r["group"], r["due"]) for r in message.params["reminders"]] == [
        ("DTaP", reminders.DUE),
        ("Polio", reminders.DUE),
        ("Hib", reminders.DUE),
        ("PCV", reminders.DUE),
        ("Rotavirus", reminders.OVERDUE),
    ]
    sent = delivery.deliver_pending(engine, mail_settings(settings, port), now=NOW)
    assert sent.sent == 1 and len(server.to("anne@example.org")) == 1  # one e-mail, not five
    # a rerun, even recomputing everyone, queues nothing again
    again = reminders.run(engine, s, TODAY, forecast=five, now=NOW, full=True)
    assert (again.recomputed, again.queued, again.reminders) == (2, 0, 0)
    # the next day a sixth group comes due: one more message, with that reminder only
    six = ManyGroups({**five.groups, "HepB": -5})
    later = reminders.run(engine, s, TODAY + timedelta(days=1), forecast=six, now=NOW, full=True)
    assert (later.queued, later.reminders) == (2, 2)
    newest = messages_of(engine, "baby")[0]
    assert [r["group"] for r in newest.params["reminders"]] == ["HepB"]
    assert count_messages(engine) == 4 and count_reminders(engine) == 12


def test_a_crash_mid_batch_keeps_grouped_reminders_exactly_once(engine: Engine, settings: Settings) -> None:
    pids = [f"p{i}" for i in range(6)]
    store(engine, *(patient(pid, TODAY - timedelta(days=70)) for pid in pids))
    s = settings.model_copy(update={"reminder_batch_size": 4, "reminder_processes": 1})
    groups = {"DTaP": -3, "Polio": -3, "Hib": 40}
    with pytest.raises(RuntimeError, match="engine crashed"):
        reminders.run(engine, s, TODAY, forecast=ManyGroups(groups, fail_on=["p5"]), now=NOW)
    assert {m.patient_id for m in messages_of(engine)} == {"p0", "p1", "p2", "p3"}  # batch 2 rolled back
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(reminder_item)).scalar_one() == 12
    rerun = reminders.run(engine, s, TODAY, forecast=ManyGroups(groups), now=NOW, full=True)
    assert (rerun.recomputed, rerun.queued, rerun.reminders) == (6, 2, 6)
    assert sorted(m.patient_id for m in messages_of(engine)) == pids
    assert (
        count_reminders(engine)
        == 18
        == len({(m.patient_id, m.params["group"]) for m in reminders_of(engine)})
    )


def test_gaps_older_than_the_overdue_limit_are_not_reminded(engine: Engine, settings: Settings) -> None:
    store(engine, patient("adult", TODAY - timedelta(days=40 * 365)))
    old = ManyGroups({"MMR": 30 * 365, "Tdap": 300, "HPV": 400})  # past due 30 years, 270 and 370 days ago
    s = settings.model_copy(update={"reminder_processes": 1})
    assert s.reminder_overdue_days == 365  # the default
    report = reminders.run(engine, s, TODAY, forecast=old, now=NOW)
    assert (report.queued, report.reminders) == (1, 1)
    assert [(m.params["group"], m.params["due"]) for m in reminders_of(engine)] == [
        ("Tdap", reminders.OVERDUE)
    ]
    with engine.connect() as conn:  # the older gaps stay in the forecast state (the portal's card)
        state = orjson.loads(conn.execute(select(forecast_state.c.due)).scalar_one())
    assert set(state) == {"MMR", "Tdap", "HPV"}
    unlimited = s.model_copy(update={"reminder_overdue_days": 0})
    rerun = reminders.run(engine, unlimited, TODAY, forecast=old, now=NOW, full=True)
    assert rerun.reminders == 2 and {m.params["group"] for m in reminders_of(engine)} == {
        "MMR",
        "Tdap",
        "HPV",
    }


def test_due_kinds_with_an_overdue_limit() -> None:
    recent = Due("Tdap", reminders.NOT_COMPLETE, 1, TODAY - timedelta(days=400), TODAY - timedelta(days=364))
    stale = Due("MMR", reminders.NOT_COMPLETE, 1, TODAY - timedelta(days=900), TODAY - timedelta(days=365))
    old_no_past_due = Due("HPV", reminders.NOT_COMPLETE, 1, TODAY - timedelta(days=365), None)
    new_no_past_due = Due("Flu", reminders.NOT_COMPLETE, 1, TODAY - timedelta(days=364), None)
    late_window = Due(
        "HPV", reminders.NOT_COMPLETE, 2, TODAY - timedelta(days=700), TODAY + timedelta(days=5)
    )
    kinds = [reminders.due_kind(d, TODAY, 14, 365) for d in (recent, stale, old_no_past_due, new_no_past_due)]
    assert kinds == [reminders.OVERDUE, None, None, reminders.DUE]
    assert reminders.due_kind(late_window, TODAY, 14, 365) == reminders.DUE  # not past due yet
    assert reminders.due_kind(stale, TODAY, 14, 0) == reminders.OVERDUE  # 0: no limit


def test_the_default_is_one_forecast_process_per_cpu(settings: Settings) -> None:
    assert settings.reminder_processes == 0
    assert reminders.forecast_processes(settings) == len(os.sched_getaffinity(0)) >= 1
    assert reminders.forecast_processes(settings.model_copy(update={"reminder_processes": 3})) == 3
