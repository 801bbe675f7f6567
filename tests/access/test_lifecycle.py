"""The record life cycle: closure at death and after inactivity, deletion after retention, opt-out."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update

from sharedcare.access import care, consent, death
from sharedcare.access.consent import ChoiceError
from sharedcare.access.lifecycle import opt_out, run
from sharedcare.access.models import record_status
from sharedcare.access.policy import category_of
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit import log as audit
from sharedcare.fhir.errors import NotFound
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.store import utcnow
from sharedcare.notify import outbox
from sharedcare.notify.models import notification
from sharedcare.settings import Settings
from sharedcare.storage.engine import make_engine, writer
from sharedcare.storage.tables import resource, resource_version
from support import truncate


def _obs(patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"obs-{patient}",
        "status": "final",
        "code": {"text": "weight"},
        "subject": {"reference": f"Patient/{patient}"},
    }


def _status(engine: Engine) -> dict[str, tuple[str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(record_status.c.patient_id, record_status.c.status, record_status.c.closed_reason)
        ).all()
    return {pid: (status, reason) for pid, status, reason in rows}


def test_lifecycle_rules(db_url: str, tmp_path: Path) -> None:
    engine = make_engine(db_url)
    truncate(engine)
    settings = Settings(database_url=db_url, data_dir=tmp_path)  # its blob store, not ./var
    svc = FhirService(engine, classify=category_of)
    now = utcnow()
    svc.update("Patient", "dead", {"resourceType": "Patient", "id": "dead", "deceasedBoolean": True})
    assert _status(engine) == {"dead": ("closed", "death")}  # at the write, not at the next run
    for pid in ("idle", "old", "alive", "objector"):
        svc.update("Patient", pid, {"resourceType": "Patient", "id": pid})
        svc.update("Observation", f"obs-{pid}", _obs(pid))
    eleven_years = timedelta(days=365 * 11)
    with writer(engine).begin() as conn:
        for pid in ("idle", "old", "alive"):
            care.ensure_record(
                conn, pid, letter_sent=now - eleven_years * 2, activated=now - eleven_years * 2
            )
        conn.execute(
            record_status.update()
            .where(record_status.c.patient_id == "idle")
            .values(last_access=now - eleven_years)
        )
        conn.execute(
            record_status.update().where(record_status.c.patient_id == "alive").values(last_access=now)
        )
        conn.execute(
            record_status.update()
            .where(record_status.c.patient_id == "old")
            .values(status="closed", closed_at=now - eleven_years, closed_reason="holder")
        )
        # a death written before closure at the write existed: the run still closes it
        conn.execute(
            record_status.update()
            .where(record_status.c.patient_id == "dead")
            .values(status="open", closed_at=None, closed_reason=None)
        )
    with writer(engine).begin() as conn:
        report = run(conn, svc, settings, now)
    assert report.closed_at_death == ["dead"]
    assert report.closed_inactive == ["idle"]
    assert report.deleted == ["old"]
    with pytest.raises(NotFound):
        svc.read("Observation", "obs-old")
    with pytest.raises(NotFound):
        svc.read("Patient", "old")
    assert svc.read("Observation", "obs-idle").id == "obs-idle"  # closed is archived, not deleted
    with engine.connect() as conn:
        status = dict(conn.execute(select(record_status.c.patient_id, record_status.c.status)).all())
    assert status == {"dead": "closed", "idle": "closed", "old": "deleted", "alive": "open"}
    with writer(engine).begin() as conn:
        again = run(conn, svc, settings, now)
    assert (again.closed_at_death, again.closed_inactive, again.deleted) == ([], [], [])
    with writer(engine).begin() as conn:  # messages about the record go with it
        outbox.queue(conn, "objector", outbox.NEW_DOCUMENT, now)
        outbox.queue(conn, "alive", outbox.NEW_DOCUMENT, now)
        assert opt_out(conn, "objector", now) == 2
    with pytest.raises(NotFound):
        svc.read("Observation", "obs-objector")
    with engine.connect() as conn:
        left = set(conn.execute(select(notification.c.patient_id)).scalars())
    assert "objector" not in left and "alive" in left
    assert audit.verify(engine).ok
    engine.dispose()


def test_inactivity_counts_from_creation_when_nobody_ever_opened_the_record(
    db_url: str, tmp_path: Path
) -> None:
    """Art. 4(4): ten years without access. A record never accessed is idle since its most
    recent sign of life: activation, else the creation letter, else its Patient's creation."""
    engine = make_engine(db_url)
    truncate(engine)
    settings = Settings(database_url=db_url, data_dir=tmp_path)
    svc = FhirService(engine, classify=category_of)
    now = utcnow()
    eleven, one = timedelta(days=365 * 11), timedelta(days=365)
    pids = ("never-letter", "never-created", "fresh", "late-activation", "no-patient")
    for pid in pids[:-1]:
        svc.update("Patient", pid, {"resourceType": "Patient", "id": pid})
    with writer(engine).begin() as conn:
        care.ensure_record(conn, "never-letter", letter_sent=now - eleven, activated=None)
        care.ensure_record(conn, "never-created", letter_sent=None, activated=None)
        care.ensure_record(conn, "fresh", letter_sent=None, activated=None)
        care.ensure_record(conn, "late-activation", letter_sent=now - eleven * 2, activated=now - one)
        care.ensure_record(conn, "no-patient", letter_sent=None, activated=None)
        conn.execute(  # an old access, but the holder activated the record last year
            update(record_status)
            .where(record_status.c.patient_id == "late-activation")
            .values(last_access=now - eleven)
        )
        pk = conn.execute(
            select(resource.c.pk).where(resource.c.type == "Patient", resource.c.id == "never-created")
        ).scalar_one()
        conn.execute(
            update(resource_version).where(resource_version.c.res_pk == pk).values(last_updated=now - eleven)
        )
    with writer(engine).begin() as conn:
        report = run(conn, svc, settings, now)
    assert sorted(report.closed_inactive) == ["never-created", "never-letter"]
    status = _status(engine)
    assert status["never-letter"] == status["never-created"] == ("closed", "inactivity")
    assert status["fresh"] == status["late-activation"] == status["no-patient"] == ("open", None)
    assert audit.verify(engine).ok
    engine.dispose()


def test_death_closes_the_record_in_the_writing_transaction(client: TestClient) -> None:
    """A Patient written deceased (date or flag) closes the record at once: nothing more is filed
    into it; a write that is rolled back closes nothing."""
    app: Any = client.app
    engine = app.state.engine
    for pid in ("pa", "pb", "pc"):
        created = client.put(f"/fhir/Patient/{pid}", json={"resourceType": "Patient", "id": pid})
        assert created.status_code == 201, created.text
    died = {"resourceType": "Patient", "id": "pa", "deceasedDateTime": "2026-11-20T10:00:00Z"}
    assert client.put("/fhir/Patient/pa", json=died).status_code == 200
    assert _status(engine)["pa"] == ("closed", "death")
    refused = client.put("/fhir/Observation/obs-pa", json=_obs("pa"))
    assert refused.status_code == 422, refused.text
    assert refused.json()["resourceType"] == "OperationOutcome"
    alive = {"resourceType": "Patient", "id": "pc", "deceasedBoolean": False}
    assert client.put("/fhir/Patient/pc", json=alive).status_code == 200
    assert "pc" not in _status(engine)
    bundle = {  # the deceased flag and a bad entry: the whole transaction fails
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "id": "pb", "deceasedBoolean": True},
                "request": {"method": "PUT", "url": "Patient/pb"},
            },
            {
                "resource": {"resourceType": "Observation", "id": "bad", "status": "no-such-status"},
                "request": {"method": "PUT", "url": "Observation/bad"},
            },
        ],
    }
    assert client.post("/fhir", json=bundle).status_code >= 400
    assert "pb" not in _status(engine)
    assert client.put("/fhir/Observation/obs-pb", json=_obs("pb")).status_code == 201
    assert death.is_deceased({"deceasedDateTime": "2020"}) and not death.is_deceased(
        {"deceasedBoolean": False}
    )
    # one transaction creating a deceased holder with their record's data: whatever the order in
    # which the Bundle's entries are applied, the record closes at its end with its data in it
    history = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:0b5f3c52-6a2b-4f7e-9e0a-1a2b3c4d5e6f",
                "resource": {"resourceType": "Patient", "deceasedDateTime": "2026-11-01T08:00:00Z"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    **_obs("late"),
                    "subject": {"reference": "urn:uuid:0b5f3c52-6a2b-4f7e-9e0a-1a2b3c4d5e6f"},
                },
                "request": {"method": "PUT", "url": "Observation/obs-late"},
            },
        ],
    }
    filed = client.post("/fhir", json=history)
    assert filed.status_code == 200, filed.text
    new_pid = filed.json()["entry"][0]["response"]["location"].split("/")[1]
    assert _status(engine)[new_pid] == ("closed", "death")
    assert (
        client.put(
            "/fhir/Observation/obs-late",
            json={**_obs("late"), "subject": {"reference": f"Patient/{new_pid}"}, "status": "amended"},
        ).status_code
        == 422
    )


HOLDER = Principal(PrincipalKind.PATIENT, "acct-pr", display="Rita", patient_id="pr")


def test_reopening_refused_after_the_window_and_after_death(db_url: str, tmp_path: Path) -> None:
    """Art. 4(2): the holder reopens within ten years of closure, never a record closed at death;
    a refusal changes nothing."""
    engine = make_engine(db_url)
    truncate(engine)
    settings = Settings(database_url=db_url, data_dir=tmp_path)
    now = utcnow()
    window = timedelta(days=365 * settings.reopen_window_years)

    def close_then_reopen(closed_at: timedelta, reason: str) -> None:
        with writer(engine).begin() as conn:
            consent.close_record(conn, HOLDER, "pr", now - closed_at, reason=reason)
        with writer(engine).begin() as conn:
            consent.reopen_record(conn, settings, HOLDER, "pr", now)

    with pytest.raises(ChoiceError, match="within 10 years"):
        close_then_reopen(window + timedelta(days=1), "holder")
    assert _status(engine)["pr"] == ("closed", "holder")
    with pytest.raises(ChoiceError, match="closed at death"):
        close_then_reopen(timedelta(days=1), "death")
    assert _status(engine)["pr"] == ("closed", "death")
    close_then_reopen(window - timedelta(days=1), "holder")  # just inside the window
    assert _status(engine)["pr"] == ("open", None)
    with engine.connect() as conn:
        s = record_status
        closed_at = conn.execute(select(s.c.closed_at).where(s.c.patient_id == "pr")).scalar_one()
    assert closed_at is None
    engine.dispose()


# -- retention extension (art. 9(5)) and the worker ----------------------------------------------------
HOLDER_KEPT = Principal(PrincipalKind.PATIENT, "acct-kept", patient_id="kept")


def _closed_records(engine: Engine, svc: FhirService, closed: dict[str, timedelta]) -> None:
    """Records with one item each, closed by their holder ``closed[pid]`` ago."""
    now = utcnow()
    for pid, ago in closed.items():
        svc.update("Patient", pid, {"resourceType": "Patient", "id": pid})
        svc.update("Observation", f"obs-{pid}", _obs(pid))
        with writer(engine).begin() as conn:
            care.ensure_record(conn, pid, letter_sent=now - ago * 2, activated=now - ago * 2)
            conn.execute(
                update(record_status)
                .where(record_status.c.patient_id == pid)
                .values(status="closed", closed_at=now - ago, closed_reason="holder")
            )


def test_a_retention_agreement_postpones_deletion_until_withdrawn(db_url: str, tmp_path: Path) -> None:
    from sharedcare.access import lifecycle

    engine = make_engine(db_url)
    truncate(engine)
    settings = Settings(database_url=db_url, data_dir=tmp_path, retention_extension_max_years=5)
    svc = FhirService(engine, classify=category_of)
    eleven_years = timedelta(days=round(365.25 * 11))
    _closed_records(engine, svc, {"kept": eleven_years, "plain": eleven_years})
    now = utcnow()
    with writer(engine).begin() as conn:
        with pytest.raises(lifecycle.RetentionError):  # beyond the setting
            lifecycle.agree_retention_extension(conn, svc, settings, HOLDER_KEPT, "kept", 6, now)
        with pytest.raises(lifecycle.RetentionError):  # someone else's record
            lifecycle.agree_retention_extension(conn, svc, settings, HOLDER_KEPT, "plain", 2, now)
        lifecycle.agree_retention_extension(conn, svc, settings, HOLDER_KEPT, "kept", 1, now)
        agreed = lifecycle.agree_retention_extension(conn, svc, settings, HOLDER_KEPT, "kept", 2, now)
    current = lifecycle.retention_agreement(svc, "kept")
    assert current is not None and (current.consent_id, current.years) == (agreed.consent_id, 2)
    consents = svc.search(svc.parse_search("Consent", [("patient", "Patient/kept")], strict=True)).matches
    assert sorted(c.resource()["status"] for c in consents) == ["active", "inactive"]  # the first replaced
    assert category_of(svc.read("Consent", agreed.consent_id).resource()) == "holder-choices"
    with engine.connect() as conn:
        changes = audit.query(conn, patient_id="kept", actions=[audit.AuditAction.CONSENT_CHANGE])
    assert "retention-extension 2 years" in [e.record.interaction for e in changes]
    with writer(engine).begin() as conn:
        report = run(conn, svc, settings, now)
    assert report.deleted == ["plain"]  # closure + 10 y has passed; "kept" waits for + 2 more
    assert _status(engine)["kept"] == ("closed", "holder")
    assert svc.read("Observation", "obs-kept").resource()["status"] == "final"
    later = now + timedelta(days=180)
    with writer(engine).begin() as conn:
        assert run(conn, svc, settings, later).deleted == []  # closed 11.5 years ago: deletion due at 12
        assert lifecycle.withdraw_retention_extension(conn, svc, HOLDER_KEPT, "kept", later)
        assert not lifecycle.withdraw_retention_extension(conn, svc, HOLDER_KEPT, "kept", later)
    assert lifecycle.retention_agreement(svc, "kept") is None
    with writer(engine).begin() as conn:
        assert run(conn, svc, settings, later).deleted == ["kept"]  # the default applies again
    engine.dispose()


def _active_agreements(svc: FhirService, patient_id: str) -> list[str]:
    """Ids of the record's active retention agreements, as the platform reads them."""
    from sharedcare.access import lifecycle

    query = svc.parse_search(
        "Consent",
        [
            ("patient", f"Patient/{patient_id}"),
            ("category", f"{consent.CHOICE_SYSTEM}|{lifecycle.RETENTION_EXTENSION}"),
            ("status", "active"),
        ],
        strict=True,
    )
    return sorted(m.id for m in svc.search(query).matches)


def _withdrawals(engine: Engine, patient_id: str) -> list[str]:
    with engine.connect() as conn:
        changes = audit.query(conn, patient_id=patient_id, actions=[audit.AuditAction.CONSENT_CHANGE])
        return [e.record.interaction for e in changes if e.record.interaction.startswith("withdraw-")]


def test_agreements_replace_each_other_and_a_withdrawal_ends_every_active_one(
    db_url: str, tmp_path: Path
) -> None:
    """Two agreements in a row leave one active, and a withdrawal ends even the several a record
    may hold from before agreements were serialised."""
    from sharedcare.access import lifecycle

    engine = make_engine(db_url)
    truncate(engine)
    settings = Settings(database_url=db_url, data_dir=tmp_path)
    svc = FhirService(engine, classify=category_of)
    svc.update("Patient", "kept", {"resourceType": "Patient", "id": "kept"})
    now = utcnow()
    for years in (1, 3):
        with writer(engine).begin() as conn:
            last = lifecycle.agree_retention_extension(conn, svc, settings, HOLDER_KEPT, "kept", years, now)
    assert _active_agreements(svc, "kept") == [last.consent_id]
    with writer(engine).begin() as conn:
        assert lifecycle.withdraw_retention_extension(conn, svc, HOLDER_KEPT, "kept", now)
    assert _active_agreements(svc, "kept") == []

    # the state the race left: two active agreements (written as agree wrote them)
    with writer(engine).begin() as conn:
        for years in (2, 4):
            agreement = consent.fhir_consent(
                "kept", lifecycle.RETENTION_EXTENSION, "permit", now, performer="Patient/kept"
            )
            agreement["category"] = [
                *agreement["category"],
                {"coding": [{"system": consent.CHOICE_SYSTEM, "code": lifecycle.RETENTION_EXTENSION}]},
            ]
            agreement["extension"] = [{"url": lifecycle.RETENTION_YEARS_URL, "valueInteger": years}]
            consent.write_consent(conn, svc, agreement)
    assert len(_active_agreements(svc, "kept")) == 2
    before = len(_withdrawals(engine, "kept"))
    with writer(engine).begin() as conn:
        assert lifecycle.withdraw_retention_extension(conn, svc, HOLDER_KEPT, "kept", now)
    assert _active_agreements(svc, "kept") == []
    assert lifecycle.retention_agreement(svc, "kept") is None
    assert len(_withdrawals(engine, "kept")) == before + 2  # each one audited
    with writer(engine).begin() as conn:
        assert not lifecycle.withdraw_retention_extension(conn, svc, HOLDER_KEPT, "kept", now)
    engine.dispose()


def test_parallel_agreements_are_serialised(db_url: str, tmp_path: Path) -> None:
    """A second agreement waits for the first to commit, then replaces it: one stays active."""
    from sharedcare.access import lifecycle

    engine = make_engine(db_url)
    truncate(engine)
    settings = Settings(database_url=db_url, data_dir=tmp_path)
    svc = FhirService(engine, classify=category_of)
    svc.update("Patient", "kept", {"resourceType": "Patient", "id": "kept"})
    now = utcnow()
    second: list[str] = []
    errors: list[BaseException] = []

    def agree_again() -> None:
        try:
            with writer(engine).begin() as conn:
                done = lifecycle.agree_retention_extension(conn, svc, settings, HOLDER_KEPT, "kept", 2, now)
                second.append(done.consent_id)
        except BaseException as exc:  # reported to the test's thread
            errors.append(exc)

    with writer(engine).begin() as conn:
        lifecycle.agree_retention_extension(conn, svc, settings, HOLDER_KEPT, "kept", 1, now)
        other = threading.Thread(target=agree_again)
        other.start()
        time.sleep(0.5)
        assert other.is_alive()  # waiting for this transaction
    other.join(timeout=30)
    assert not other.is_alive() and errors == []
    assert _active_agreements(svc, "kept") == second
    with writer(engine).begin() as conn:
        assert lifecycle.withdraw_retention_extension(conn, svc, HOLDER_KEPT, "kept", now)
    assert _active_agreements(svc, "kept") == []
    engine.dispose()


def test_the_worker_runs_the_record_life_cycle_once_a_day(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from sharedcare import cli
    from sharedcare import settings as settings_module

    engine = make_engine(db_url)
    truncate(engine)
    svc = FhirService(engine, classify=category_of)
    _closed_records(engine, svc, {"due": timedelta(days=365 * 11), "recent": timedelta(days=365)})
    assert [name for name, _job in cli.DAILY_JOBS] == [
        "vaccination reminders",
        "record life cycle",
        "unclaimed uploads",
        "overdue filing requests",
    ]
    monkeypatch.setenv("SHAREDCARE_DATABASE_URL", db_url)
    monkeypatch.setenv("SHAREDCARE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SHAREDCARE_SMTP_HOST", raising=False)
    settings_module.get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli.app, ["worker", "--once"])
    finally:
        settings_module.get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "reminders: " in result.output
    assert "deleted after retention: 1 " in result.output
    assert "0 unclaimed uploads expired (older than 24 hours)." in result.output
    assert "overdue filing requests: 0 holders told" in result.output
    assert _status(engine) == {"due": ("deleted", "holder"), "recent": ("closed", "holder")}
    with pytest.raises(NotFound):
        svc.read("Observation", "obs-due")
    engine.dispose()


def test_a_failing_daily_job_does_not_stop_the_others(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from sharedcare import cli
    from sharedcare import settings as settings_module

    engine = make_engine(db_url)
    truncate(engine)
    svc = FhirService(engine, classify=category_of)
    _closed_records(engine, svc, {"due": timedelta(days=365 * 11)})

    def broken(engine: Engine, settings: Settings, *, full: bool = False) -> str:
        raise RuntimeError("reminders down")

    monkeypatch.setattr(cli, "DAILY_JOBS", (("vaccination reminders", broken), *cli.DAILY_JOBS[1:]))
    monkeypatch.setenv("SHAREDCARE_DATABASE_URL", db_url)
    monkeypatch.setenv("SHAREDCARE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SHAREDCARE_SMTP_HOST", raising=False)
    settings_module.get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli.app, ["worker", "--once"])
    finally:
        settings_module.get_settings.cache_clear()
    assert result.exit_code == 1  # cron sees the failure ...
    assert "vaccination reminders: failed" in result.output
    assert _status(engine) == {"due": ("deleted", "holder")}  # ... and the life cycle still ran
    engine.dispose()
