"""Migration 0017 on a database written before it: immunization rows get the store's current
category, other rows are left alone, and reminders queued one per message become items."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from sharedcare.access.policy import category_of
from sharedcare.storage.engine import make_engine
from sharedcare.storage.migrate import upgrade

PG_ADMIN_URL = os.environ.get(
    "SHAREDCARE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
NOW = datetime(2026, 5, 1, 8, 0)


@pytest.fixture(params=["sqlite", "postgres"])
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on a new, empty database (the session's one is already at head)."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
        yield engine
        engine.dispose()
        return
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"sharedcare_m17_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # same rule as conftest: skipped unless PostgreSQL is required
        admin.dispose()
        if os.environ.get("SHAREDCARE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required but unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {type(exc).__name__}")
    engine = make_engine(make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False))
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _insert(
    engine: Engine, pk: int, rtype: str, rid: str, content: dict[str, object] | None, category: str
) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO resource (pk, type, id, version, last_updated, deleted, content, category) "
                "VALUES (:pk, :type, :id, 1, :now, :deleted, :content, :category)"
            ),
            {
                "pk": pk,
                "type": rtype,
                "id": rid,
                "now": NOW,
                "deleted": content is None,
                "content": orjson.dumps(content).decode() if content else None,
                "category": category,
            },
        )


def test_0017_reclassifies_immunization_rows_and_keeps_reminders_once(fresh: Engine) -> None:
    upgrade(fresh, "0016")
    immunization = {
        "resourceType": "Immunization",
        "id": "imm-1",
        "status": "completed",
        "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "03"}]},
        "patient": {"reference": "Patient/pa"},
        "occurrenceDateTime": "2020-01-01",
    }
    recommendation = {
        "resourceType": "ImmunizationRecommendation",
        "id": "rec-1",
        "patient": {"reference": "Patient/pa"},
        "date": "2026-01-01",
        "recommendation": [],
    }
    deleted = {**immunization, "id": "imm-gone"}
    observation = {"resourceType": "Observation", "id": "obs-1", "status": "final", "code": {"text": "x"}}
    assert category_of(immunization) == "vaccination" != "care-reports"
    _insert(fresh, 1, "Immunization", "imm-1", immunization, "care-reports")
    _insert(fresh, 2, "ImmunizationRecommendation", "rec-1", recommendation, "care-reports")
    _insert(fresh, 3, "Immunization", "imm-gone", None, "care-reports")  # deleted: its last version counts
    _insert(fresh, 4, "Observation", "obs-1", observation, "stale-on-purpose")  # not this migration's
    with fresh.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO resource_version (res_pk, type, id, version, last_updated, method, deleted, "
                "content) VALUES (3, 'Immunization', 'imm-gone', 1, :now, 'PUT', false, :content)"
            ),
            {"now": NOW, "content": orjson.dumps(deleted).decode()},
        )
        conn.execute(
            text(
                "INSERT INTO notification (patient_id, kind, params, dedupe, created, attempts) "
                "VALUES ('pa', 'vaccination-reminder', '{}', 'vaccination-reminder:pa:MMR:1:due', :now, 0)"
            ),
            {"now": NOW},
        )
    upgrade(fresh)
    with fresh.connect() as conn:
        categories = {rid: cat for rid, cat in conn.execute(text("SELECT id, category FROM resource"))}
        items = [
            tuple(row)
            for row in conn.execute(text("SELECT dedupe, patient_id FROM vaccination_reminder_item"))
        ]
    assert categories == {
        "imm-1": "vaccination",
        "rec-1": "vaccination",
        "imm-gone": "vaccination",
        "obs-1": "stale-on-purpose",
    }
    assert items == [("vaccination-reminder:pa:MMR:1:due", "pa")]
