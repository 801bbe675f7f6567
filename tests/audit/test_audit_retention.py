"""Access traces follow their record (art. 8): archived at closure, deleted with the record."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, func, select, text, update
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from sharedcare.access import consent
from sharedcare.access.lifecycle import AGENCY, opt_out, run
from sharedcare.access.models import record_status
from sharedcare.access.policy import category_of
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit import log as audit
from sharedcare.audit import retention
from sharedcare.audit.models import audit_log, audit_tombstone
from sharedcare.cli import app as cli_app
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.store import utcnow
from sharedcare.settings import Settings, get_settings
from sharedcare.storage.engine import writer
from support import add_care, bearer, emptied_engine, get_bundle, put_all

GP = Principal(PrincipalKind.PROFESSIONAL, "acct-gp", display="Dr Gp", practitioner_id="gp", profession="med")
HOLDER = Principal(PrincipalKind.PATIENT, "acct-pa", display="Anne", patient_id="pa")
HELPDESK = Principal(PrincipalKind.HELPDESK, "acct-help")
LAB = Principal(PrincipalKind.SYSTEM, "lab-client", organization_id="org-lab")
OPERATOR = Principal(PrincipalKind.SYSTEM, "operator", trusted=True)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    yield from emptied_engine(db_url, empty_after=True)


def _read(patient: str | None, n: int = 1, who: Principal = GP) -> audit.AuditRecord:
    return audit.record_for(
        who,
        audit.AuditAction.READ,
        patient_id=patient,
        resources=(f"Observation/secret-{patient}-{n}/_history/1",),
        interaction="read",
        query="code=http://loinc.org|2345-7",
        source_ip="192.0.2.7",
    )


def _rows(conn: Connection, table: Any = audit_log) -> dict[int, dict[str, Any]]:
    return {int(r.pk): dict(r._mapping) for r in conn.execute(select(table))}


def _close(engine: Engine, patient: str) -> None:
    with writer(engine).begin() as conn:
        conn.execute(
            record_status.insert().values(
                patient_id=patient, status="closed", closed_at=utcnow(), closed_reason="holder"
            )
        )


@contextmanager
def _owner(engine: Engine) -> Iterator[Connection]:
    """A transaction with the audit triggers out of the way, as the database owner could."""
    triggers = (("audit_log", "audit_log_append_only"), ("audit_tombstone", "audit_tombstone_guard"))
    with writer(engine).begin() as conn:
        if engine.dialect.name == "postgresql":
            for table, name in triggers:
                conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER {name}"))
            yield conn
            for table, name in triggers:
                conn.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER {name}"))
        else:
            saved = []
            for _, name in triggers:
                saved.append(
                    conn.execute(
                        text("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = :n"),
                        {"n": name},
                    ).scalar_one()
                )
                conn.execute(text(f"DROP TRIGGER {name}"))
            yield conn
            for ddl in saved:
                conn.execute(text(ddl))


# --------------------------------------------------------------------------------------------
# Archive
# --------------------------------------------------------------------------------------------


def test_archived_traces_are_hidden_from_professionals_only(engine: Engine) -> None:
    with writer(engine).begin() as conn:
        audit.append_all(conn, [_read("p1"), _read("p2"), _read(None, who=HELPDESK)])
    _close(engine, "p1")
    with engine.connect() as conn:
        entries = audit.query(conn)

        def patients(reader: Principal) -> list[str]:
            return sorted(str(e.record.patient_id) for e in retention.readable(conn, reader, entries))

        assert patients(GP) == ["None", "p2"]
        assert patients(LAB) == ["None", "p2"]
        for reader in (HOLDER, HELPDESK, OPERATOR, Principal(PrincipalKind.REPRESENTATIVE, "acct-rep")):
            assert patients(reader) == ["None", "p1", "p2"]
    with writer(engine).begin() as conn:  # reopened: nothing to restore, the archive is lifted
        conn.execute(update(record_status).values(status="open", closed_at=None))
    with engine.connect() as conn:
        assert len(retention.readable(conn, GP, audit.query(conn))) == 3


def test_closure_archives_the_log_over_the_api_and_reopening_restores_it(client: TestClient) -> None:
    app: Any = client.app
    put_all(
        client,
        {"resourceType": "Practitioner", "id": "gp", "active": True},
        {"resourceType": "Patient", "id": "pa"},
        {"resourceType": "Patient", "id": "pb"},
        *(
            {
                "resourceType": "Observation",
                "id": f"obs-{p}",
                "status": "final",
                "code": {"text": "weight"},
                "subject": {"reference": f"Patient/{p}"},
            }
            for p in ("pa", "pb")
        ),
    )
    now = utcnow()
    with writer(app.state.engine).begin() as conn:
        for p in ("pa", "pb"):  # the referring physician's column reads the traces
            add_care(conn, f"ref-{p}", p, "gp", now, context="referent", ends=None)
    gp = bearer(app, GP, "user/*.rs")
    holder = bearer(app, HOLDER, "patient/*.rs")
    helpdesk = bearer(app, HELPDESK, "user/*.rs")
    for p in ("pa", "pb"):
        assert client.get(f"/fhir/Observation/obs-{p}", headers=gp).status_code == 200

    def log(headers: dict[str, str], patient: str = "pa") -> list[str]:
        return [
            e["resource"]["id"]
            for e in get_bundle(client, f"AuditEvent?patient={patient}", headers).get("entry", [])
        ]

    before = log(gp)
    assert before
    with writer(app.state.engine).begin() as conn:
        consent.close_record(conn, HOLDER, "pa", now)
    assert log(gp) == []
    assert client.get(f"/fhir/AuditEvent/{before[0]}", headers=gp).status_code == 404
    assert log(gp, "pb"), "another record's log is not archived"
    held = log(holder)
    assert set(before) < set(held), "the holder still reads their log, with the closure in it"
    assert client.get(f"/fhir/AuditEvent/{before[0]}", headers=holder).status_code == 200
    assert set(held) <= set(log(helpdesk))
    with writer(app.state.engine).begin() as conn:
        consent.reopen_record(conn, app.state.settings, HOLDER, "pa", now)
    assert set(held) <= set(log(gp))
    assert client.get(f"/fhir/AuditEvent/{before[0]}", headers=gp).status_code == 200


# --------------------------------------------------------------------------------------------
# Deletion
# --------------------------------------------------------------------------------------------


def test_deleting_traces_redacts_exactly_that_patients_records(engine: Engine) -> None:
    with writer(engine).begin() as conn:  # a search spanning two patients: one record each
        search = audit.record_for(GP, audit.AuditAction.SEARCH, interaction="search-type", query="code=x")
        audit.append_all(
            conn, audit.split_by_patient(search, {"p1": ["Observation/a"], "p2": ["Observation/b"]})
        )
    for n in range(3):  # separate transactions: most likely on several chains
        with writer(engine).begin() as conn:
            audit.append_all(conn, [_read("p1", n), _read("p2", n), _read(None, n, who=HELPDESK)])
    with writer(engine).begin() as conn:  # named like a deletion, but the holder's choice: goes too
        choice = audit.record_for(
            HOLDER, audit.AuditAction.CONSENT_CHANGE, patient_id="p1", interaction="opt-out"
        )
        audit.append(conn, choice)
    with engine.connect() as conn:
        before = _rows(conn)
    mine = {pk: row for pk, row in before.items() if row["patient_id"] == "p1"}
    assert len(mine) == 5
    with writer(engine).begin() as conn:
        done = retention.delete_traces(conn, "p1", AGENCY)
    assert (done.patient_id, done.records) == ("p1", 5)
    with engine.connect() as conn:
        after, tombstones = _rows(conn), _rows(conn, audit_tombstone)
    assert set(tombstones) == set(mine)
    for pk, tomb in tombstones.items():
        kept = {k: mine[pk][k] for k in ("chain", "seq", "prev_hash", "hash")}
        assert tomb == {"pk": pk, **kept, "redacted_by": done.announced_by}
    others = {pk: row for pk, row in before.items() if pk not in mine}
    assert {pk: after[pk] for pk in others} == others, "other patients' and patient-less records untouched"
    assert set(after) - set(others) == {done.announced_by}
    notice = after[done.announced_by]
    assert (notice["action"], notice["patient_id"], notice["interaction"]) == (
        "delete",
        "p1",
        "delete-traces",
    )
    assert notice["outcome_desc"] == "traces of Patient/p1 deleted under art. 8: 5 records"
    assert (notice["resources"], notice["query"]) == ("[]", "records=5")
    assert "secret" not in json.dumps(notice, default=str)
    result = audit.verify(engine)
    assert result.ok, result.problems
    assert (result.records, result.tombstones) == (len(others) + 1, 5)
    with writer(engine).begin() as conn:  # again: only the record of the deletion is left, and stays
        assert retention.delete_traces(conn, "p1", AGENCY).records == 0
    assert audit.verify(engine).ok


def test_tombstones_refuse_updates_and_plain_deletes_stay_refused(engine: Engine) -> None:
    with writer(engine).begin() as conn:
        _, p2 = audit.append_all(conn, [_read("p1"), _read("p2")])
    with writer(engine).begin() as conn:
        retention.delete_traces(conn, "p1", AGENCY)
    with pytest.raises(DBAPIError, match="only by a redaction"), writer(engine).begin() as conn:
        conn.execute(update(audit_tombstone).values(hash="f" * 64))
    with pytest.raises(DBAPIError, match="append-only"), writer(engine).begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.pk == p2).values(principal_display="X"))
    assert audit.verify(engine).ok


def test_postgresql_allows_a_deletion_only_through_the_redaction(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no DELETE trigger on audit_log (test databases are emptied with DELETE)")
    with writer(engine).begin() as conn:
        _, p2 = audit.append_all(conn, [_read("p1"), _read("p2")])
    on = text("SELECT set_config('sharedcare.audit_redaction', 'on', true)")

    def tombstone_of(conn: Connection, pk: int, **changes: Any) -> dict[str, Any]:
        row = conn.execute(
            select(
                audit_log.c.pk, audit_log.c.chain, audit_log.c.seq, audit_log.c.prev_hash, audit_log.c.hash
            ).where(audit_log.c.pk == pk)
        ).one()
        return {**row._mapping, "redacted_by": redaction, **changes}

    with writer(engine).begin() as conn:
        redaction = retention.delete_traces(conn, "p1", AGENCY).announced_by
        with pytest.raises(DBAPIError, match="only by a redaction"), conn.begin_nested():
            conn.execute(audit_tombstone.insert().values(tombstone_of(conn, p2)))  # switched off at once
    refused: list[Any] = [
        lambda c: c.execute(audit_log.delete().where(audit_log.c.pk == p2)),
        lambda c: (c.execute(on), c.execute(audit_log.delete().where(audit_log.c.pk == p2))),  # no tombstone
        lambda c: c.execute(audit_tombstone.insert().values(tombstone_of(c, p2))),  # no setting
        lambda c: (
            c.execute(on),
            c.execute(audit_tombstone.insert().values(tombstone_of(c, p2, hash="0" * 64))),
        ),
        lambda c: (
            c.execute(on),
            c.execute(audit_tombstone.insert().values(tombstone_of(c, p2, redacted_by=p2))),
        ),
        lambda c: (
            c.execute(on),
            c.execute(audit_log.update().where(audit_log.c.pk == p2).values(query=None)),
        ),
        lambda c: (c.execute(on), c.execute(audit_tombstone.update().values(hash="0" * 64))),
        lambda c: (c.execute(on), c.execute(audit_tombstone.delete())),
    ]
    for attempt in refused:
        with (
            pytest.raises(DBAPIError, match=r"append-only|only by a redaction"),
            writer(engine).begin() as conn,
        ):
            attempt(conn)
    with engine.connect() as conn:
        assert conn.execute(select(audit_log.c.pk).where(audit_log.c.pk == p2)).scalar_one() == p2
        assert conn.execute(select(func.count()).select_from(audit_tombstone)).scalar_one() == 1
    assert audit.verify(engine).ok


# --------------------------------------------------------------------------------------------
# Verification across tombstones
# --------------------------------------------------------------------------------------------


def _redacted_chain(engine: Engine) -> tuple[list[dict[str, Any]], int]:
    """Records p2, p1, p1, p2 in one chain, the two p1 deleted: their rows, and the redaction key."""
    with writer(engine).begin() as conn:
        pks = audit.append_all(conn, [_read("p2", 1), _read("p1", 1), _read("p1", 2), _read("p2", 2)])
        rows = [
            dict(conn.execute(select(audit_log).where(audit_log.c.pk == pk)).one()._mapping) for pk in pks
        ]
    with writer(engine).begin() as conn:
        done = retention.delete_traces(conn, "p1", AGENCY)
    assert done.announced_by is not None
    assert audit.verify(engine).ok
    return rows, done.announced_by


@pytest.mark.parametrize(
    ("tamper", "at", "kind"),
    [  # ``at``: index among the four records; -1: the redaction record
        ("tombstone-hash", 2, "altered"),
        ("tombstone-prev-hash", 1, "broken-link"),
        ("tombstone-removed", 1, "missing"),
        ("neighbour-altered", 3, "altered"),
        ("record-made-tombstone", -1, "redaction-mismatch"),
        ("tombstone-of-nothing", 3, "unannounced-tombstone"),
        ("deleted-record-put-back", -1, "redaction-mismatch"),
        ("tombstone-and-record", 3, "duplicate"),
    ],
)
def test_tampering_around_tombstones_is_detected_and_named(
    engine: Engine, tamper: str, at: int, kind: str
) -> None:
    rows, redaction = _redacted_chain(engine)
    t, d = audit_tombstone.c, audit_log.c
    with _owner(engine) as conn:
        if tamper == "tombstone-hash":  # the last tombstone: an intact record follows it
            conn.execute(update(audit_tombstone).where(t.pk == rows[2]["pk"]).values(hash="e" * 64))
        elif tamper == "tombstone-prev-hash":
            conn.execute(update(audit_tombstone).where(t.pk == rows[1]["pk"]).values(prev_hash="e" * 64))
        elif tamper == "tombstone-removed":
            conn.execute(audit_tombstone.delete().where(t.pk == rows[1]["pk"]))
        elif tamper == "neighbour-altered":
            conn.execute(update(audit_log).where(d.pk == rows[3]["pk"]).values(principal_display="Someone"))
        elif tamper in ("record-made-tombstone", "tombstone-of-nothing"):
            by = redaction if tamper == "record-made-tombstone" else rows[0]["pk"]
            keep = {k: rows[3][k] for k in ("pk", "chain", "seq", "prev_hash", "hash")}
            conn.execute(audit_tombstone.insert().values(**keep, redacted_by=by))
            conn.execute(audit_log.delete().where(d.pk == rows[3]["pk"]))
        elif tamper == "deleted-record-put-back":
            conn.execute(audit_tombstone.delete().where(t.pk == rows[1]["pk"]))
            conn.execute(audit_log.insert().values(rows[1]))
        elif tamper == "tombstone-and-record":
            keep = {k: rows[3][k] for k in ("pk", "chain", "seq", "prev_hash", "hash")}
            conn.execute(audit_tombstone.insert().values(**keep, redacted_by=rows[0]["pk"]))
    with engine.connect() as conn:
        announced = conn.execute(select(d.chain, d.seq).where(d.pk == redaction)).one()
    expected = (
        (announced.chain, announced.seq, redaction)
        if at == -1
        else (rows[at]["chain"], rows[at]["seq"], None if kind == "missing" else rows[at]["pk"])
    )
    result = audit.verify(engine)
    problem = next((p for p in result.problems if p.chain == expected[0]), None)
    assert problem is not None and problem.kind == kind, result.problems
    assert (problem.chain, problem.seq, problem.pk) == expected
    # a tombstone gone also leaves its deletion announcing one more than there are
    others = [p for p in result.problems if p is not problem]
    assert all((p.kind, p.pk) == ("redaction-mismatch", redaction) for p in others), others
    assert len(others) == (1 if tamper == "tombstone-removed" and announced.chain != expected[0] else 0)


# --------------------------------------------------------------------------------------------
# The life-cycle job, end to end
# --------------------------------------------------------------------------------------------


def test_lifecycle_deletes_the_traces_with_the_record(
    engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = Settings(database_url=db_url, data_dir=tmp_path)
    svc = FhirService(engine, classify=category_of)
    now = utcnow()
    for pid in ("old", "alive", "objector"):
        svc.update("Patient", pid, {"resourceType": "Patient", "id": pid})
    with writer(engine).begin() as conn:
        for pid in ("old", "alive", "objector"):
            audit.append_all(conn, [_read(pid, n) for n in range(3)])
        audit.append(conn, _read(None, who=HELPDESK))
        conn.execute(
            record_status.insert().values(
                patient_id="old",
                status="closed",
                closed_at=now - timedelta(days=365 * 11),
                closed_reason="holder",
            )
        )
    with engine.connect() as conn:
        kept = {pk: row for pk, row in _rows(conn).items() if row["patient_id"] != "old"}
    monkeypatch.setenv("SHAREDCARE_DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        ran = runner.invoke(cli_app, ["lifecycle"])
        assert ran.exit_code == 0, ran.output
        assert "deleted after retention: 1 (with 3 audit records, art. 8)" in ran.output
        with engine.connect() as conn:
            rows = _rows(conn)
        assert {pk: rows[pk] for pk in kept} == kept
        left = sorted(r["interaction"] for r in rows.values() if r["patient_id"] == "old")
        assert left == ["delete-after-retention", "delete-traces"]
        verified = runner.invoke(cli_app, ["audit", "verify"])
        assert verified.exit_code == 0, verified.output
        assert "(3 deleted under art. 8, as tombstones)" in verified.output
        with writer(engine).begin() as conn:
            assert opt_out(conn, "objector", now) == 1
            again = run(conn, svc, settings, now)
        assert (again.deleted, again.traces_deleted) == ([], 0)
        with engine.connect() as conn:
            rows = _rows(conn)
            assert conn.execute(select(func.count()).select_from(audit_tombstone)).scalar_one() == 6
        left = sorted(r["interaction"] for r in rows.values() if r["patient_id"] == "objector")
        assert left == ["delete-traces", "opt-out"]
        assert sum(r["patient_id"] == "alive" for r in rows.values()) == 3
        assert audit.verify(engine).ok
        with _owner(engine) as conn:  # a tombstone's hash changed: named by the CLI
            last = conn.execute(select(audit_tombstone.c.pk).order_by(audit_tombstone.c.pk.desc())).first()
            assert last is not None
            conn.execute(
                update(audit_tombstone).where(audit_tombstone.c.pk == last.pk).values(prev_hash="1" * 64)
            )
        bad = runner.invoke(cli_app, ["audit", "verify"])
        assert bad.exit_code == 1
        assert f"(pk {last.pk}): broken-link: the tombstone's prev_hash" in bad.output
    finally:
        get_settings.cache_clear()
