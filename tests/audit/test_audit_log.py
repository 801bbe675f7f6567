"""The audit log on SQLite and PostgreSQL: transactional appends, hash chains, tampering, BALP."""

from __future__ import annotations

import base64
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, func, select, text, update
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit.auditevent import to_audit_event
from sharedcare.audit.log import (
    AuditAction,
    AuditOutcome,
    AuditRecord,
    InvalidAuditRecord,
    Purpose,
    append,
    chain_heads,
    content_hash,
    get,
    query,
    record_for,
    split_by_patient,
    verify,
)
from sharedcare.audit.models import CHAINS, GENESIS_HASH, audit_chain_head, audit_log
from sharedcare.cli import app as cli_app
from sharedcare.fhir.validation import validate_resource
from sharedcare.settings import get_settings
from sharedcare.storage.engine import writer
from support import emptied_engine

GP = Principal(
    kind=PrincipalKind.PROFESSIONAL,
    subject="acct-gp-1",
    display="Dr Zoë Weber",
    practitioner_id="pr-1",
    organization_id="org-1",
    profession="med",
    client_id="portal",
    token_id="jti-1",
)
HOLDER = Principal(kind=PrincipalKind.PATIENT, subject="acct-pat-1", display="Léa Muller", patient_id="p1")
LAB = Principal(
    kind=PrincipalKind.SYSTEM, subject="lab-client", display="Laboratoire", organization_id="org-lab"
)
HELPDESK = Principal(kind=PrincipalKind.HELPDESK, subject="acct-help-1", display="Helpdesk agent")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An emptied database: even the chain heads are gone, so appends create them lazily."""
    yield from emptied_engine(db_url, empty_after=True)


def _read(principal: Principal = GP, patient: str = "p1", n: int = 1, **kw: object) -> AuditRecord:
    return record_for(
        principal,
        AuditAction.READ,
        patient_id=patient,
        resources=(f"Observation/o{n}/_history/1",),
        interaction="read",
        source_ip="192.0.2.10",
        **kw,
    )


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit_log)).scalar_one())


def _one_chain(engine: Engine, n: int = 6) -> tuple[int, list[int]]:
    """``n`` records appended in one transaction (so on one chain); returns (chain, pks by seq)."""
    with writer(engine).begin() as conn:
        pks = [append(conn, _read(n=i)) for i in range(1, n + 1)]
        rows = conn.execute(select(audit_log.c.chain, audit_log.c.seq).where(audit_log.c.pk.in_(pks)))
        chains = {r.chain for r in rows}
    assert len(chains) == 1
    return chains.pop(), pks


@contextmanager
def _tampering(engine: Engine) -> Iterator[Connection]:
    """A transaction in which the append-only trigger is out of the way, as a database owner's."""
    with writer(engine).begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
            yield conn
            conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only"))
        else:
            ddl = conn.execute(
                text(
                    "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'audit_log_append_only'"
                )
            ).scalar_one()
            conn.execute(text("DROP TRIGGER audit_log_append_only"))
            yield conn
            conn.execute(text(ddl))


# --------------------------------------------------------------------------------------------
# Transactions
# --------------------------------------------------------------------------------------------


def test_append_in_a_rolled_back_transaction_leaves_nothing(engine: Engine) -> None:
    with pytest.raises(RuntimeError, match="act failed"), writer(engine).begin() as conn:
        append(conn, _read())
        append(conn, _read(n=2))
        raise RuntimeError("act failed")
    assert _count(engine) == 0
    with engine.connect() as conn:
        assert all(seq == 0 for seq, _ in chain_heads(conn).values())
    result = verify(engine)
    assert result.ok and result.records == 0


def test_committed_appends_verify_and_one_transaction_keeps_one_chain(engine: Engine) -> None:
    _, pks = _one_chain(engine, 3)
    for i in range(5):
        with writer(engine).begin() as conn:
            append(conn, _read(n=10 + i))
    with engine.connect() as conn:
        heads = chain_heads(conn)
        seqs = [get(conn, pk).seq for pk in pks]
    assert len(heads) == CHAINS
    assert seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2]
    assert sum(seq for seq, _ in heads.values()) == 8
    result = verify(engine)
    assert result.ok, result.problems
    assert (result.records, result.chains) == (8, CHAINS)


def test_stored_entry_round_trips_the_record(engine: Engine) -> None:
    when = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=1)))
    record = record_for(
        GP,
        AuditAction.SEARCH,
        patient_id="p1",
        resources=("Observation/o1", "Observation/o2"),
        interaction="search-type",
        query="Observation?patient=p1&code=http://loinc.org|718-7\x00",
        source_ip="2001:db8::1",
        user_agent="Mozilla/5.0 (X11) — ünïcode",
        request_id="req-42",
        organization_display="Cabinet Weber",
    )
    record = AuditRecord(**{**_fields(record), "recorded": when})
    with writer(engine).begin() as conn:
        pk = append(conn, record)
    with engine.connect() as conn:
        entry = get(conn, pk)
    assert entry is not None
    stored = entry.record
    assert stored.recorded == datetime(2026, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)
    assert stored.query == "Observation?patient=p1&code=http://loinc.org|718-7\ufffd"  # NUL is not storable
    assert _fields(stored) | {"recorded": None, "query": None} == _fields(record) | {
        "recorded": None,
        "query": None,
    }
    assert entry.prev_hash == GENESIS_HASH and entry.seq == 1
    assert verify(engine).ok


def _fields(record: AuditRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in AuditRecord.__dataclass_fields__}


def test_append_only_trigger_refuses_updates(engine: Engine) -> None:
    _, pks = _one_chain(engine, 2)
    with pytest.raises(DBAPIError, match="append-only"), writer(engine).begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.pk == pks[0]).values(principal_display="X"))
    if engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"), writer(engine).begin() as conn:
            conn.execute(audit_log.delete().where(audit_log.c.pk == pks[0]))
    assert verify(engine).ok


# --------------------------------------------------------------------------------------------
# Tampering
# --------------------------------------------------------------------------------------------


def _row(conn: Connection, pk: int) -> dict[str, object]:
    return dict(conn.execute(select(audit_log).where(audit_log.c.pk == pk)).one()._mapping)


@pytest.mark.parametrize(
    ("tamper", "at", "kind", "named"),
    [  # ``at``/``named``: index among the six records (6: one past the last); named None: no row
        ("alter-content", 2, "altered", 2),
        ("alter-hash", 2, "altered", 2),
        ("delete-middle", 2, "missing", None),
        ("delete-last", 5, "missing", None),
        ("reorder", 2, "broken-link", 3),
        ("insert-forged", 6, "head-mismatch", 6),
        ("alter-head", 5, "head-mismatch", 5),
    ],
)
def test_tampering_is_detected_at_the_first_bad_record(
    engine: Engine, tamper: str, at: int, kind: str, named: int | None
) -> None:
    with writer(engine).begin() as conn:  # a record on some chain, maybe the same one: untouched
        append(conn, _read(HOLDER))
    chain, pks = _one_chain(engine, 6)
    with engine.connect() as conn:
        seqs = [conn.execute(select(audit_log.c.seq).where(audit_log.c.pk == pk)).scalar_one() for pk in pks]
    seqs.append(seqs[-1] + 1)
    with _tampering(engine) as conn:
        t = audit_log.c
        if tamper == "alter-content":
            conn.execute(update(audit_log).where(t.pk == pks[2]).values(principal_display="Someone else"))
        elif tamper == "alter-hash":
            conn.execute(update(audit_log).where(t.pk == pks[2]).values(hash="f" * 64))
        elif tamper == "delete-middle":
            conn.execute(audit_log.delete().where(t.pk == pks[2]))
        elif tamper == "delete-last":
            conn.execute(audit_log.delete().where(t.pk == pks[5]))
        elif tamper == "reorder":
            conn.execute(update(audit_log).where(t.pk == pks[2]).values(seq=-1))
            conn.execute(update(audit_log).where(t.pk == pks[3]).values(seq=seqs[2]))
            conn.execute(update(audit_log).where(t.pk == pks[2]).values(seq=seqs[3]))
        elif tamper == "insert-forged":
            values = _row(conn, pks[5])
            values.pop("pk")
            values.update(seq=seqs[6], prev_hash=values["hash"], principal_display="Forger")
            values["hash"] = content_hash(values, str(values["prev_hash"]))
            pks.append(conn.execute(audit_log.insert().values(values).returning(audit_log.c.pk)).scalar_one())
        elif tamper == "alter-head":
            conn.execute(
                update(audit_chain_head).where(audit_chain_head.c.chain == chain).values(hash="0" * 64)
            )
    result = verify(engine)
    assert [p.chain for p in result.problems] == [chain]  # only the tampered chain
    problem = result.first
    assert problem is not None
    assert (problem.chain, problem.seq, problem.kind) == (chain, seqs[at], kind)
    assert problem.pk == (pks[named] if named is not None else None)
    assert f"chain {chain} seq {seqs[at]}" in str(problem)


def test_rehashing_a_whole_chain_is_caught_only_by_published_anchors(engine: Engine) -> None:
    chain, pks = _one_chain(engine, 5)
    with engine.connect() as conn:
        anchors = chain_heads(conn)  # e.g. published daily to a write-once store
    with _tampering(engine) as conn:
        conn.execute(update(audit_log).where(audit_log.c.pk == pks[1]).values(principal_display="Nobody"))
        prev = _row(conn, pks[0])["hash"]
        for pk in pks[1:]:
            values = _row(conn, pk)
            digest = content_hash(values, str(prev))
            conn.execute(update(audit_log).where(audit_log.c.pk == pk).values(prev_hash=prev, hash=digest))
            prev = digest
        conn.execute(update(audit_chain_head).where(audit_chain_head.c.chain == chain).values(hash=prev))
    assert verify(engine).ok  # a database owner can rewrite an unanchored chain consistently
    result = verify(engine, anchors=anchors)
    assert result.first is not None
    assert (result.first.chain, result.first.seq, result.first.kind) == (chain, 5, "anchor-mismatch")


# --------------------------------------------------------------------------------------------
# Concurrency
# --------------------------------------------------------------------------------------------


def test_concurrent_appends_make_valid_chains_without_gaps(engine: Engine) -> None:
    threads, per_thread = 8, 20
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []
    committed = [0] * threads  # records of committed transactions, per thread

    def work(t: int) -> None:
        rng = random.Random(t)
        try:
            barrier.wait()  # first appends race on the (absent) chain heads too
            for i in range(per_thread):
                try:
                    with writer(engine).begin() as conn:
                        k = rng.randint(1, 3)
                        for _ in range(k):
                            append(conn, _read(patient=f"p{t}", n=i))
                        if i % 5 == 4:
                            raise _Rollback
                    committed[t] += k
                except _Rollback:
                    pass
        except BaseException as exc:  # reported below
            errors.append(exc)

    snapshots: list[bool] = []

    def verifier() -> None:
        # verify reads one snapshot: appends committing meanwhile never look like tampering
        while any(w.is_alive() for w in workers):
            snapshots.append(verify(engine).ok)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    checker = threading.Thread(target=verifier)
    checker.start()
    for w in workers:
        w.join()
    checker.join()
    assert not errors, errors
    assert snapshots and all(snapshots)
    result = verify(engine)
    assert result.ok, result.problems
    with engine.connect() as conn:
        rows = conn.execute(
            select(audit_log.c.chain, func.count(), func.max(audit_log.c.seq)).group_by(audit_log.c.chain)
        )
        per_chain = {r[0]: (r[1], r[2]) for r in rows}
        heads = chain_heads(conn)
    assert all(count == top == heads[chain][0] for chain, (count, top) in per_chain.items())
    assert sum(count for count, _ in per_chain.values()) == result.records == sum(committed)
    assert len(per_chain) > 1


class _Rollback(Exception):
    pass


def test_appends_wait_when_every_chain_is_busy(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers, so a chain is always free")
    holders = CHAINS + 6
    barrier = threading.Barrier(holders)
    errors: list[BaseException] = []

    def hold(t: int) -> None:
        try:
            barrier.wait()
            with writer(engine).begin() as conn:
                append(conn, _read(patient=f"p{t}"))
                time.sleep(0.3)  # keep the chain locked while the others arrive
        except BaseException as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=hold, args=(t,)) for t in range(holders)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    result = verify(engine)
    assert result.ok and result.records == holders, result.problems


# --------------------------------------------------------------------------------------------
# Query
# --------------------------------------------------------------------------------------------


def test_query_filters_and_pages_newest_first(engine: Engine) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    specs = [
        (GP, AuditAction.READ, "p1", 0, False),
        (GP, AuditAction.SEARCH, "p1", 1, False),
        (HOLDER, AuditAction.READ, "p1", 2, False),
        (GP, AuditAction.READ, "p2", 3, False),
        (GP, AuditAction.READ, "p1", 4, True),
        (LAB, AuditAction.CREATE, "p1", 5, False),
        (HELPDESK, AuditAction.LOGIN, None, 6, False),
    ]
    pks = []
    with writer(engine).begin() as conn:
        for principal, action, patient, day, emergency in specs:
            record = record_for(
                principal,
                action,
                patient_id=patient,
                emergency=emergency,
                emergency_reason="unconscious patient" if emergency else None,
            )
            pks.append(append(conn, AuditRecord(**{**_fields(record), "recorded": t0 + timedelta(days=day)})))
    with engine.connect() as conn:

        def pks_of(**kw: object) -> list[int]:
            return [e.pk for e in query(conn, **kw)]

        assert pks_of() == pks[::-1]
        assert pks_of(patient_id="p1") == [pks[5], pks[4], pks[2], pks[1], pks[0]]
        assert pks_of(patient_id="p1", principal_subject=GP.subject) == [pks[4], pks[1], pks[0]]
        assert pks_of(patient_id="p1", actions=[AuditAction.READ]) == [pks[4], pks[2], pks[0]]
        assert pks_of(actions=[AuditAction.LOGIN, AuditAction.CREATE]) == [pks[6], pks[5]]
        assert pks_of(since=t0 + timedelta(days=2), until=t0 + timedelta(days=5)) == [pks[4], pks[3], pks[2]]
        assert pks_of(emergency=True) == [pks[4]]
        first = pks_of(patient_id="p1", limit=2)
        second = pks_of(patient_id="p1", limit=2, before=first[-1])
        third = pks_of(patient_id="p1", limit=2, before=second[-1])
        assert first + second + third == pks_of(patient_id="p1")
        entry = query(conn, emergency=True)[0]
    assert entry.record.purpose == Purpose.ETREAT
    assert entry.record.emergency_reason == "unconscious patient"
    assert entry.record.principal_display == "Dr Zoë Weber"


# --------------------------------------------------------------------------------------------
# Records from principals
# --------------------------------------------------------------------------------------------


def test_record_for_fills_reference_and_purpose_by_principal_kind() -> None:
    assert _read(GP).principal_ref == "Practitioner/pr-1"
    assert _read(GP).purpose == Purpose.TREAT
    assert _read(HOLDER).principal_ref == "Patient/p1"
    assert _read(HOLDER).purpose == Purpose.PATRQT
    assert _read(HELPDESK).purpose == Purpose.HSYSADMIN
    assert _read(LAB).client_id == "lab-client" and _read(LAB).principal_ref is None
    assert record_for(GP, AuditAction.LOGIN).purpose is None
    emergency = _read(GP, emergency=True, emergency_reason="unconscious, no relative")
    assert emergency.purpose == Purpose.ETREAT
    with pytest.raises(InvalidAuditRecord):
        _read(GP, emergency=True)


def test_split_by_patient_gives_each_patient_only_their_resources() -> None:
    record = record_for(GP, AuditAction.SEARCH, query="Observation?code=718-7")
    parts = split_by_patient(record, {"p1": ["Observation/a"], "p2": ["Observation/b", "Observation/c"]})
    assert [(r.patient_id, r.resources) for r in parts] == [
        ("p1", ("Observation/a",)),
        ("p2", ("Observation/b", "Observation/c")),
    ]
    assert all(r.query == "Observation?code=718-7" for r in parts)


# --------------------------------------------------------------------------------------------
# AuditEvent (BALP)
# --------------------------------------------------------------------------------------------


def _event(engine: Engine, record: AuditRecord) -> dict[str, Any]:
    with writer(engine).begin() as conn:
        pk = append(conn, record)
    with engine.connect() as conn:
        entry = get(conn, pk)
    assert entry is not None
    event = to_audit_event(entry, server_url="https://dsp.example.lu/fhir")
    errors = [i for i in validate_resource(event) if i.severity == "error"]
    assert errors == [], errors
    return event


def _codes(concepts: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for c in concepts:
        out.extend(x["code"] for x in (c.get("coding") or [c]))
    return out


def test_patient_read_follows_balp(engine: Engine) -> None:
    ev = _event(engine, _read(GP, request_id="req-1"))
    assert ev["meta"] == {
        "profile": ["https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead"]
    }
    assert ev["type"]["code"] == "rest"
    assert ev["subtype"] == [
        {"system": "http://hl7.org/fhir/restful-interaction", "code": "read", "display": "read"}
    ]
    assert (ev["action"], ev["outcome"]) == ("R", "0")
    user, client, server, org = ev["agent"]
    assert user["who"] == {"reference": "Practitioner/pr-1", "display": "Dr Zoë Weber"}
    assert user["requestor"] is True and _codes([user["type"]]) == ["IRCP"]
    assert _codes(user["purposeOfUse"]) == ["TREAT"]
    assert _codes(user["role"]) == ["professional", "med"]
    assert _codes([client["type"]]) == ["110152"] and client["network"] == {
        "address": "192.0.2.10",
        "type": "2",
    }
    assert client["who"]["identifier"]["value"] == "portal"
    assert _codes([server["type"]]) == ["110153"] and server["network"]["type"] == "5"
    assert org["who"] == {"reference": "Organization/org-1"}
    entities = {e["role"]["code"] if "role" in e else "tx": e for e in ev["entity"]}
    assert entities["1"]["what"] == {"reference": "Patient/p1"}
    assert entities["1"]["type"]["code"] == "1"
    assert entities["4"]["what"] == {"reference": "Observation/o1/_history/1"}
    assert entities["tx"]["what"]["identifier"]["value"] == "req-1"
    assert ev["source"]["observer"]["display"] == "SharedCare"


def test_patient_query_carries_the_query_in_base64(engine: Engine) -> None:
    q = "Observation?patient=p1&category=laboratory&_count=50"
    record = record_for(
        GP, AuditAction.SEARCH, patient_id="p1", interaction="search-type", query=q, source_ip="192.0.2.10"
    )
    ev = _event(engine, record)
    assert ev["meta"]["profile"][0].endswith("IHE.BasicAudit.PatientQuery")
    assert ev["action"] == "E"
    assert _codes(ev["subtype"]) == ["search-type"]
    query_entity = next(e for e in ev["entity"] if e["role"]["code"] == "24")
    assert base64.b64decode(query_entity["query"]).decode() == q
    assert _codes([ev["agent"][1]["type"]]) == ["110153"]


def test_emergency_access_is_flagged(engine: Engine) -> None:
    reason = "unconscious patient brought in by ambulance"
    start = _event(
        engine,
        record_for(
            GP, AuditAction.EMERGENCY_ACCESS, patient_id="p1", emergency=True, emergency_reason=reason
        ),
    )
    assert _codes([start["type"]]) == ["110113"] and _codes(start["subtype"]) == ["110127"]
    read = _event(engine, _read(GP, emergency=True, emergency_reason=reason))
    for ev in (start, read):
        assert ev["purposeOfEvent"] == [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "code": "ETREAT",
                        "display": "Emergency Treatment",
                    }
                ],
                "text": reason,
            }
        ]


def test_writes_logins_and_failures_render(engine: Engine) -> None:
    create = _event(
        engine,
        record_for(
            LAB,
            AuditAction.CREATE,
            patient_id="p1",
            resources=("Observation/new/_history/1",),
            interaction="create",
            source_ip="198.51.100.7",
        ),
    )
    assert create["action"] == "C" and create["meta"]["profile"][0].endswith("PatientCreate")
    client = create["agent"][0]
    assert client["requestor"] is True and client["who"]["identifier"]["value"] == "lab-client"
    delete = _event(engine, record_for(GP, AuditAction.DELETE, patient_id="p1", resources=("Observation/x",)))
    assert delete["action"] == "D" and "meta" not in delete  # no client address: no BALP claim
    consent = _event(
        engine, record_for(HOLDER, AuditAction.CONSENT_CHANGE, patient_id="p1", resources=("Consent/c1",))
    )
    assert consent["action"] == "U" and _codes([consent["type"]]) == ["110110"]
    login = _event(
        engine,
        record_for(
            HOLDER, AuditAction.LOGIN, outcome=AuditOutcome.MINOR_FAILURE, outcome_desc="wrong TOTP code"
        ),
    )
    assert _codes([login["type"]]) == ["110114"] and _codes(login["subtype"]) == ["110122"]
    assert (login["outcome"], login["outcomeDesc"], login["action"]) == ("4", "wrong TOTP code", "E")
    everything = _event(
        engine,
        record_for(
            GP,
            AuditAction.OPERATION,
            patient_id="p1",
            interaction="$everything",
            query="Patient/p1/$everything",
        ),
    )
    assert _codes(everything["subtype"]) == ["operation"] and everything["action"] == "E"


@pytest.mark.parametrize("action", list(AuditAction))
def test_every_action_renders_a_valid_audit_event(engine: Engine, action: AuditAction) -> None:
    for principal in (GP, HOLDER, LAB, HELPDESK):
        _event(engine, record_for(principal, action, patient_id="p1", resources=("Patient/p1",)))


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def test_cli_verify_exit_codes(engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHAREDCARE_DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        chain, pks = _one_chain(engine, 4)
        runner = CliRunner()
        ok = runner.invoke(cli_app, ["audit", "verify"])
        assert ok.exit_code == 0, ok.output
        assert f"4 records in {CHAINS} chains verified" in ok.output
        with _tampering(engine) as conn:
            conn.execute(update(audit_log).where(audit_log.c.pk == pks[1]).values(query="nothing to see"))
        bad = runner.invoke(cli_app, ["audit", "verify"])
        assert bad.exit_code == 1
        assert f"chain {chain} seq 2 (pk {pks[1]}): altered" in bad.output
    finally:
        get_settings.cache_clear()
