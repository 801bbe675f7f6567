"""The record life cycle: closure at death and after inactivity, deletion after retention, opt-out."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from sharedcare.access import care
from sharedcare.access.lifecycle import opt_out, run
from sharedcare.access.models import record_status
from sharedcare.access.policy import category_of
from sharedcare.audit import log as audit
from sharedcare.fhir.errors import NotFound
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.store import utcnow
from sharedcare.notify import outbox
from sharedcare.notify.models import notification
from sharedcare.settings import Settings
from sharedcare.storage.engine import make_engine, writer
from support import truncate


def _obs(patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"obs-{patient}",
        "status": "final",
        "code": {"text": "weight"},
        "subject": {"reference": f"Patient/{patient}"},
    }


def test_lifecycle_rules(db_url: str, tmp_path: Path) -> None:
    engine = make_engine(db_url)
    truncate(engine)
    settings = Settings(database_url=db_url, data_dir=tmp_path)  # its blob store, not ./var
    svc = FhirService(engine, classify=category_of)
    now = utcnow()
    svc.update("Patient", "dead", {"resourceType": "Patient", "id": "dead", "deceasedBoolean": True})
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
