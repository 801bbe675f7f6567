"""The access decision over HTTP: tokens, scopes, the FHIR API and the AuditEvent endpoint."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, select

from sharedcare.access import consent
from sharedcare.access.policy import PROFESSION, AccessPolicy
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.fhir.store import utcnow
from sharedcare.storage.engine import writer
from sharedcare.storage.tables import resource
from support import add_care, bearer, lab_result, put_all

GP = Principal(PrincipalKind.PROFESSIONAL, "acct-gp", display="Dr Gp", practitioner_id="gp", profession="med")
STRANGER = Principal(PrincipalKind.PROFESSIONAL, "acct-x", practitioner_id="stranger", profession="med")
HOLDER = Principal(PrincipalKind.PATIENT, "acct-pa", display="Anne", patient_id="pa")
HELPDESK = Principal(PrincipalKind.HELPDESK, "acct-help")


@pytest.fixture
def world(client: TestClient) -> TestClient:
    put_all(
        client,
        {"resourceType": "Practitioner", "id": "gp", "active": True},
        {"resourceType": "Practitioner", "id": "stranger", "active": True},
        {"resourceType": "Patient", "id": "pa", "gender": "female"},
        {"resourceType": "Patient", "id": "pb", "gender": "male"},
        lab_result("lab-a", "pa"),
        lab_result("lab-hidden", "pa"),
        lab_result("lab-b", "pb"),
    )
    app: Any = client.app
    now = utcnow()
    with writer(app.state.engine).begin() as conn:
        add_care(conn, "gp-solo", "pa", "gp", now)
        consent.mask(conn, app.state.fhir, HOLDER, "pa", "gp", "Observation/lab-hidden", now)
    return client


def ids(bundle: dict[str, Any]) -> set[str]:
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])}


def test_no_token_no_data_but_capabilities_stay_public(world: TestClient) -> None:
    anonymous = TestClient(world.app)
    resp = anonymous.get("/fhir/Observation")
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert resp.json()["resourceType"] == "OperationOutcome"
    assert anonymous.get("/fhir/Observation/lab-a").status_code == 401
    assert anonymous.post("/fhir/Observation", json=lab_result("x", "pa")).status_code == 401
    assert anonymous.get("/fhir/metadata").status_code == 200
    assert anonymous.get("/fhir/.well-known/smart-configuration").status_code == 200
    forged = anonymous.get("/fhir/Observation", headers={"Authorization": "Bearer abc.def.ghi"})
    assert forged.status_code == 401 and 'error="invalid_token"' in forged.headers["www-authenticate"]


def test_professional_sees_only_the_records_in_their_care(world: TestClient) -> None:
    headers = bearer(world.app, GP, "user/*.rs")
    found = world.get("/fhir/Observation", headers=headers).json()
    assert ids(found) == {"Observation/lab-a"}
    assert found["total"] == 1
    assert world.get("/fhir/Observation/lab-hidden", headers=headers).status_code == 404
    assert world.get("/fhir/Observation/lab-b", headers=headers).status_code == 404
    assert world.get("/fhir/Observation/does-not-exist", headers=headers).status_code == 404
    everything = world.get("/fhir/Patient/pa/$everything", headers=headers).json()
    assert ids(everything) == {"Patient/pa", "Observation/lab-a"}
    assert world.get("/fhir/Patient/pb/$everything", headers=headers).status_code == 404
    history = world.get("/fhir/_history", headers=headers).json()
    assert ids(history) <= {"Patient/pa", "Observation/lab-a", "Practitioner/gp", "Practitioner/stranger"}
    stranger = world.get("/fhir/Observation", headers=bearer(world.app, STRANGER, "user/*.rs")).json()
    assert ids(stranger) == set() and stranger["total"] == 0


def test_scopes_narrow_but_never_widen(world: TestClient) -> None:
    only_patients = bearer(world.app, GP, "user/Patient.rs")
    assert world.get("/fhir/Observation/lab-a", headers=only_patients).status_code == 403
    assert world.get("/fhir/Observation", headers=only_patients).status_code == 403
    assert ids(world.get("/fhir/Patient", headers=only_patients).json()) == {"Patient/pa"}
    everything = world.get("/fhir/Patient/pa/$everything", headers=only_patients).json()
    assert ids(everything) == {"Patient/pa"}  # types no scope lets the caller read are left out
    read_only = bearer(world.app, GP, "user/*.rs")
    assert world.post("/fhir/Observation", json=lab_result("n", "pa"), headers=read_only).status_code == 403
    # system/*.* on a professional's token gives nothing the policy does not
    wide = bearer(world.app, GP, "user/*.cruds system/*.*")
    assert world.get("/fhir/Observation/lab-b", headers=wide).status_code == 404


def test_patient_in_context_token_sees_only_that_record(world: TestClient) -> None:
    rep = Principal(PrincipalKind.PATIENT, "acct-pa", patient_id="pa", launch_patient="pa")
    headers = bearer(world.app, rep, "patient/*.rs launch/patient")
    assert ids(world.get("/fhir/Observation", headers=headers).json()) == {
        "Observation/lab-a",
        "Observation/lab-hidden",
    }
    assert world.get("/fhir/Patient/pb", headers=headers).status_code == 404


def test_rejected_transaction_writes_nothing(world: TestClient) -> None:
    headers = bearer(world.app, GP, "user/*.cruds")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {**lab_result("t1", "pa"), "id": None},
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": {**lab_result("t2", "pb"), "id": None},
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    for entry in bundle["entry"]:
        del entry["resource"]["id"]  # type: ignore[index]
    resp = world.post("/fhir", json=bundle, headers=headers)
    assert resp.status_code == 403
    assert world.get("/fhir/Observation?_total=accurate").json()["total"] == 3  # as the trusted client
    ok = world.post("/fhir", json={**bundle, "entry": bundle["entry"][:1]}, headers=headers)
    assert ok.status_code == 200
    assert world.get("/fhir/Observation?_total=accurate").json()["total"] == 4


def test_access_log_as_audit_events(world: TestClient) -> None:
    gp = bearer(world.app, GP, "user/*.rs")
    assert world.get("/fhir/Observation/lab-a", headers=gp).status_code == 200
    holder = bearer(world.app, HOLDER, "patient/*.rs")
    log = world.get("/fhir/AuditEvent", headers=holder).json()
    assert log["resourceType"] == "Bundle"
    events = [e["resource"] for e in log["entry"]]
    reads = [e for e in events if any(s.get("code") == "read" for s in e.get("subtype", []))]
    assert reads and any(a.get("who", {}).get("reference") == "Practitioner/gp" for a in reads[0]["agent"])
    assert any(
        ent.get("what", {}).get("reference", "").startswith("Observation/lab-a") for ent in reads[0]["entity"]
    )
    # the holder cannot read another record's log, by search or by id
    assert world.get("/fhir/AuditEvent?patient=pb", headers=holder).json().get("entry", []) == []
    trusted_log = world.get("/fhir/AuditEvent?patient=pb").json()
    other = [e["resource"]["id"] for e in trusted_log.get("entry", [])]
    assert other, "the trusted client reads every log"
    assert world.get(f"/fhir/AuditEvent/{other[0]}", headers=holder).status_code == 404
    # a professional without the traces right reads no log; helpdesk reads traces for support
    assert world.get("/fhir/AuditEvent?patient=pa", headers=gp).json().get("entry", []) == []
    assert world.get("/fhir/AuditEvent?patient=pa", headers=bearer(world.app, HELPDESK, "user/*.rs")).json()[
        "entry"
    ]
    assert (
        world.post("/fhir/AuditEvent", json={"resourceType": "AuditEvent"}, headers=holder).status_code == 405
    )


def test_first_professional_access_is_notified_once_and_activation_opens_the_window(
    world: TestClient,
) -> None:
    from sharedcare.access import care
    from sharedcare.notify import outbox

    app: Any = world.app
    now = utcnow()
    with writer(app.state.engine).begin() as conn:
        care.ensure_record(conn, "pa", letter_sent=now - timedelta(days=5), activated=None)
    gp = bearer(world.app, GP, "user/*.rs")
    assert world.get("/fhir/Observation/lab-a", headers=gp).status_code == 404  # activation window
    with writer(app.state.engine).begin() as conn:
        care.mark_activated(conn, "pa", now)
    assert world.get("/fhir/Observation/lab-a", headers=gp).status_code == 200
    assert world.get("/fhir/Patient/pa", headers=gp).status_code == 200
    with app.state.engine.connect() as conn:
        messages = outbox.for_patient(conn, "pa")
        assert outbox.for_patient(conn, "pb") == []
    assert [(m.kind, m.params["practitioner_id"]) for m in messages] == [
        (outbox.FIRST_PROFESSIONAL_ACCESS, "gp")
    ]


def test_refused_acts_are_logged_without_revealing_the_patient(world: TestClient) -> None:
    from sharedcare.audit import log as audit

    gp = bearer(world.app, GP, "user/*.rs")
    assert world.get("/fhir/Observation/lab-b", headers=gp).status_code == 404
    assert world.post("/fhir/Observation", json=lab_result("n", "pb"), headers=gp).status_code == 403
    app: Any = world.app
    with app.state.engine.connect() as conn:
        entries = audit.query(conn, principal_subject="acct-gp")
    refused = [
        (e.record.action, e.record.outcome, e.record.patient_id, e.record.outcome_desc) for e in entries
    ]
    assert refused == [
        (audit.AuditAction.CREATE, audit.AuditOutcome.MINOR_FAILURE, None, "403 forbidden"),
        (audit.AuditAction.READ, audit.AuditOutcome.MINOR_FAILURE, None, "404 not-found"),
    ]


def test_a_search_naming_the_patient_decides_their_care_once(world: TestClient) -> None:
    """The token check reads the professional's care of the patient a request names; the
    search and ``$everything`` statements then leave the relationships out, with the same
    answer, and a block the holder sets is seen by the next request."""
    headers = bearer(world.app, GP, "user/*.rs")

    def statements_of(path: str) -> tuple[dict[str, Any], list[str]]:
        seen: list[str] = []

        def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            seen.append(statement)

        event.listen(Engine, "before_cursor_execute", note)
        try:
            return world.get(path, headers=headers).json(), seen
        finally:
            event.remove(Engine, "before_cursor_execute", note)

    def pages_of(statements: list[str]) -> list[str]:
        pages = [s for s in statements if "count(*) OVER ()" in s]
        assert pages
        return pages

    found, searched = statements_of("/fhir/Observation?patient=Patient/pa")
    assert ids(found) == {"Observation/lab-a"} and found["total"] == 1  # the masked one absent
    everything, read = statements_of("/fhir/Patient/pa/$everything")
    assert ids(everything) == {"Patient/pa", "Observation/lab-a"}
    listed, in_compartment = statements_of("/fhir/Patient/pa/Observation")
    assert ids(listed) == {"Observation/lab-a"} and listed["total"] == 1
    for statements in (searched, read, in_compartment):
        # the facts are read with the token; the page's own statement decides at once
        assert any("care_relationship" in s and "oauth_revoked" in s for s in statements)
        assert all("care_relationship" not in s for s in pages_of(statements))
    # where a criterion names the patient, each row's record is checked, planned on its own
    # (OFFSET 0: no hashed alternative to plan)...
    assert all("resource_compartment AS ac" in s and "OFFSET 0" in s for s in pages_of(searched))
    # ... where the statement selects the compartment's rows itself, not a second time
    for statements in (read, in_compartment):
        assert all(s.count("FROM resource_compartment") == 1 for s in pages_of(statements))
    assert ids(world.get("/fhir/Patient/pb/Observation", headers=headers).json()) == set()
    assert world.get("/fhir/Patient/pb/$everything", headers=headers).status_code == 404
    # none named: each row is decided (and what the GP may not see stays out)
    _, unnamed = statements_of("/fhir/Observation?code=http://loinc.org|2345-7")
    page = next(s for s in unnamed if "count(*) OVER ()" in s)
    assert "FROM care_relationship AS acr" in page
    # the record's rows and the relationships in sub-queries of their own, not a join:
    # PostgreSQL plans them as two small sub-plans (planning the join cost more than running it)
    assert "resource_compartment AS ac, care_relationship AS acr" not in page
    assert ids(world.get("/fhir/Observation?patient=Patient/pb", headers=headers).json()) == set()
    assert ids(world.get("/fhir/Observation?patient=pa", headers=headers).json()) == {"Observation/lab-a"}
    app: Any = world.app
    with writer(app.state.engine).begin() as conn:
        consent.block(conn, app.state.fhir, HOLDER, "pa", "gp", utcnow())
    blocked = world.get("/fhir/Observation?patient=Patient/pa", headers=headers).json()
    assert ids(blocked) == set() and blocked["total"] == 0
    assert world.get("/fhir/Patient/pa/$everything", headers=headers).status_code == 404


def test_under_emergency_overrides_every_statement_reads_the_relationships(world: TestClient) -> None:
    """An override lifts the holder's blocks for its time: the facts about the named patient's
    care are then not read, and each statement decides with every relationship."""
    app: Any = world.app
    policy = AccessPolicy(app.state.settings.model_copy(update={"emergency_override": True}))
    facts = policy.caller_facts(_select_facts(app, policy.caller_facts_columns(GP, "pa")), "pa")
    assert facts is not None and facts.licensed and facts.cares == frozenset()
    assert facts.kinds_for("pa") is None
    plain = AccessPolicy(app.state.settings)
    facts = plain.caller_facts(_select_facts(app, plain.caller_facts_columns(GP, "pa")), "pa")
    assert facts is not None and facts.kinds_for("pa") == {PROFESSION}


def _select_facts(app: Any, columns: Any) -> Any:
    with app.state.engine.connect() as conn:
        return conn.execute(select(*columns)).one()


def test_the_decision_and_the_facts_are_compiled_once_per_shape(world: TestClient) -> None:
    """The professional's filter and facts are elements SQLAlchemy caches by their shape: a
    statement holding them must have a cache key (without one it is compiled at every request,
    a few milliseconds each), the same for two patients and two professionals of one shape."""
    app: Any = world.app
    policy: AccessPolicy = app.state.policy
    other = Principal(PrincipalKind.PROFESSIONAL, "acct-x", practitioner_id="stranger", profession="med")
    keys = set()
    for p, patient in ((GP, "pa"), (GP, "pb"), (other, "pa")):
        facts = policy.caller_facts(_select_facts(app, policy.caller_facts_columns(p, patient)), patient)
        flt = policy.read_filter(p, utcnow(), facts)
        assert flt is not None
        for statement in (
            select(*policy.caller_facts_columns(p, patient)),
            select(resource.c.pk).where(flt(resource, ("Observation",), patient=patient)),
            select(resource.c.pk).where(flt(resource, ("Observation",))),
        ):
            key = statement._generate_cache_key()
            assert key is not None
            keys.add(key.key)
    assert len(keys) <= 4  # facts; filter deciding at once; filter reading the relationships; the stranger's
