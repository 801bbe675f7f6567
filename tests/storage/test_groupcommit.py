"""Group commit: concurrent works share transactions, each caller returns once its work
committed, and one failing work fails only its own caller."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Column, Connection, Engine, Integer, MetaData, Table, event, func, insert, select

from sharedcare.audit.models import audit_log
from sharedcare.storage.engine import make_engine
from sharedcare.storage.groupcommit import GroupCommit

probe_metadata = MetaData()
probe = Table("groupcommit_probe", probe_metadata, Column("n", Integer, primary_key=True))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    probe_metadata.create_all(eng)
    try:
        yield eng
    finally:
        probe_metadata.drop_all(eng)
        eng.dispose()


def _count_commits(engine: Engine) -> list[int]:
    commits: list[int] = []
    event.listen(engine, "commit", lambda _conn: commits.append(1))
    return commits


def _rows(engine: Engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(select(probe.c.n)).scalars())


def test_a_lone_work_commits_before_run_returns(engine: Engine) -> None:
    gc = GroupCommit(engine)
    gc.run(lambda conn: conn.execute(insert(probe).values(n=1)) and None)
    assert _rows(engine) == {1}


def test_concurrent_works_share_commits_and_all_land(engine: Engine) -> None:
    gc = GroupCommit(engine)
    commits = _count_commits(engine)
    gate = threading.Barrier(40)
    slow = threading.Event()

    def work(n: int) -> None:
        def write(conn: Connection) -> None:
            conn.execute(insert(probe).values(n=n))
            if n == 0:
                slow.wait(0.3)  # the first batch holds the leader while the others queue

        gate.wait()
        gc.run(write)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _rows(engine) == set(range(40))
    assert commits and len(commits) < 20  # grouped: far fewer commits than the 40 works


def test_a_failing_work_fails_alone_and_writes_nothing(engine: Engine) -> None:
    gc = GroupCommit(engine)
    outcomes: dict[int, BaseException | None] = {}
    release = threading.Event()
    runs: dict[int, int] = {}
    lock = threading.Lock()

    def write(n: int):
        def run(conn: Connection) -> None:
            with lock:
                runs[n] = runs.get(n, 0) + 1
            conn.execute(insert(probe).values(n=n))
            if n == 0:
                release.wait(2)  # hold the leader so the others queue into one batch
            if n == 5:
                raise ValueError("refused")

        return run

    def caller(n: int) -> None:
        try:
            gc.run(write(n))
            outcomes[n] = None
        except ValueError as err:
            outcomes[n] = err

    first = threading.Thread(target=caller, args=(0,))
    first.start()
    while not runs:  # the leader is inside its batch
        threading.Event().wait(0.005)
    others = [threading.Thread(target=caller, args=(n,)) for n in range(1, 10)]
    for t in others:
        t.start()
    threading.Event().wait(0.2)
    release.set()
    first.join()
    for t in others:
        t.join()
    assert isinstance(outcomes[5], ValueError)
    assert all(outcomes[n] is None for n in range(10) if n != 5)
    assert _rows(engine) == set(range(10)) - {5}
    # the batch holding the failure rolled back and its works ran again one by one
    assert runs[5] >= 2 and max(runs[n] for n in range(1, 10) if n != 5) == 2


def test_concurrent_audited_reads_each_leave_a_committed_record(
    server_url: str, server_token: str, db_url: str
) -> None:
    """Through the API over real HTTP: each of concurrent reads answers with its audit record in
    the log (the records of grouped reads are written together, but every one is written)."""
    headers = {"Authorization": f"Bearer {server_token}"}
    with httpx.Client(timeout=30) as http:
        created = http.post(f"{server_url}/Patient", json={"resourceType": "Patient"}, headers=headers)
    assert created.status_code == 201
    pid = created.json()["id"]
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            before = conn.execute(select(func.max(audit_log.c.pk))).scalar_one()
        statuses: list[int] = []

        def read() -> None:
            with httpx.Client(timeout=30) as http:
                statuses.append(http.get(f"{server_url}/Patient/{pid}", headers=headers).status_code)

        threads = [threading.Thread(target=read) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [200] * 12
        with engine.connect() as conn:
            rows = conn.execute(
                select(audit_log.c.patient_id).where(audit_log.c.pk > before, audit_log.c.action == "read")
            ).all()
    finally:
        engine.dispose()
    assert len(rows) == 12 and {r.patient_id for r in rows} == {pid}
