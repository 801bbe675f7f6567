"""An audited act's records on PostgreSQL: the patients owning its resources, the dating of
their records and the audit chain head are read in one statement (``access.session``'s
``_owners_and_note`` with ``audit.log.PICK_HEAD_PG``), and the records appended on that head; a
second act in the same transaction (a group commit's batch) appends on the chain the first one
locked. SQLite takes the database's write lock at BEGIN and has no head to pick with the owners."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from sharedcare.access.policy import AccessPolicy, category_of
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.access.session import PolicySession
from sharedcare.audit.log import verify
from sharedcare.audit.models import audit_log
from sharedcare.fhir.service import FhirService
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer
from support import statements

PLATFORM = Principal(
    PrincipalKind.SYSTEM, "demo-system", display="Platform", scopes=frozenset({"system/*.*"}), trusted=True
)


@pytest.fixture
def postgres(settings: Settings) -> None:
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL: SQLite locks the database at BEGIN, there is no chain head to pick")


def test_a_read_picks_its_chain_head_with_the_owners_of_what_it_read(
    client: TestClient, postgres: None
) -> None:
    patient = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Muller"}]}
    assert client.put("/fhir/Patient/p1", json=patient).status_code in (200, 201)
    engine: Engine = client.app.state.engine  # type: ignore[attr-defined]
    with statements(engine) as seen:
        assert client.get("/fhir/Patient?family=muller").json()["total"] == 1
    picks = [s for s in seen if "FOR UPDATE SKIP LOCKED" in s]
    assert len(picks) == 1 and "resource_compartment" in picks[0] and "record_status" in picks[0]
    assert not any("FOR UPDATE" in s and "chain = " in s for s in seen)  # no second lock of a head
    with engine.connect() as conn:
        last = conn.execute(select(audit_log).order_by(audit_log.c.pk.desc()).limit(1)).one()
    assert (last.action, last.patient_id) == ("search", "p1")
    assert verify(engine).ok


def test_acts_flushed_in_one_transaction_append_consecutively_on_one_chain(
    client: TestClient, settings: Settings, postgres: None
) -> None:
    app: Any = client.app
    engine: Engine = app.state.engine
    for pid in ("p1", "p2"):
        body = {"resourceType": "Patient", "id": pid, "name": [{"family": "Weber"}]}
        assert client.put(f"/fhir/Patient/{pid}", json=body).status_code in (200, 201)
    svc = FhirService(engine, classify=category_of)
    sessions = [
        PolicySession(PLATFORM, AccessPolicy(settings), category_of, enforce_scopes=False) for _ in range(3)
    ]
    for session, pid in zip(sessions, ("p1", "p2", "p1"), strict=True):
        bound = svc.for_session(session)
        with bound.engine.connect() as conn:
            bound.read_in(conn, "Patient", pid)
    with writer(engine).begin() as conn:  # as a group commit runs its batch's works
        for session in sessions:
            session.flush(conn)
    with engine.connect() as conn:
        rows = conn.execute(select(audit_log).order_by(audit_log.c.pk.desc()).limit(3)).all()[::-1]
    assert [r.patient_id for r in rows] == ["p1", "p2", "p1"]
    assert len({r.chain for r in rows}) == 1
    assert [r.seq for r in rows] == [rows[0].seq, rows[0].seq + 1, rows[0].seq + 2]
    assert [r.prev_hash for r in rows[1:]] == [r.hash for r in rows[:-1]]
    assert verify(engine).ok
