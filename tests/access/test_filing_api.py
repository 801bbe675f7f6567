"""Filing requests over the FHIR API (art. 9(2), §A.9): the holder's ``Patient/[id]/$request-filing``
and the professional's completion through ``Task/[id]/$decide``, with the refusals of the other
request operations (400 / 403 / 404 OperationOutcomes, a refusal that writes nothing, no oracle of
another's record or request), on both databases."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from sharedcare.access import requests as rights
from sharedcare.access.models import delegation, record_request
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit import log as audit
from sharedcare.audit.models import audit_log
from sharedcare.fhir.store import utcnow
from sharedcare.storage.engine import writer
from support import add_care, bearer, professional, put_all

HOLDER = Principal(
    PrincipalKind.PATIENT, "acct-pa", display="Anne", patient_id="pa", scopes=frozenset({"patient/*.cruds"})
)
OTHER_HOLDER = Principal(
    PrincipalKind.PATIENT, "acct-pb", display="Paul", patient_id="pb", scopes=frozenset({"patient/*.cruds"})
)
REPRESENTATIVE = Principal(
    PrincipalKind.REPRESENTATIVE, "acct-rep", display="Jean", scopes=frozenset({"user/*.cruds"})
)
GP = professional("gp")
COLLEAGUE = professional("colleague")
STRANGER = professional("stranger")


def params(*parameters: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(parameters)}


def asking(
    practitioner: str = "Practitioner/gp", description: str = "Discharge report of March"
) -> dict[str, Any]:
    return params(
        {"name": "practitioner", "valueReference": {"reference": practitioner}},
        {"name": "description", "valueString": description},
    )


def decision(status: str, reason: str = "") -> dict[str, Any]:
    found = [{"name": "status", "valueCode": status}]
    if reason:
        found.append({"name": "reason", "valueString": reason})
    return params(*found)


@pytest.fixture
def api(client: TestClient) -> TestClient:
    """pa in the care of the GP and a colleague (solo); pb in nobody's; a representative of pa."""
    put_all(
        client,
        *({"resourceType": "Practitioner", "id": p, "active": True} for p in ("gp", "colleague", "stranger")),
        {"resourceType": "Patient", "id": "pa"},
        {"resourceType": "Patient", "id": "pb"},
    )
    app: Any = client.app
    now = utcnow()
    with writer(app.state.engine).begin() as conn:
        add_care(conn, "gp-solo", "pa", "gp", now)
        add_care(conn, "colleague-solo", "pa", "colleague", now)
        conn.execute(
            delegation.insert().values(
                id="d-rep-pa",
                patient_id="pa",
                account_id="acct-rep",
                kind="parent",
                starts=now - timedelta(days=1),
            )
        )
    return client


def _headers(client: TestClient, who: Principal) -> dict[str, str]:
    scope = "patient/*.cruds" if who.kind is PrincipalKind.PATIENT else "user/*.cruds"
    return {**bearer(client.app, who, scope), "Content-Type": "application/fhir+json"}


def _rows(client: TestClient) -> list[Any]:
    app: Any = client.app
    with app.state.engine.connect() as conn:
        return list(conn.execute(select(record_request).order_by(record_request.c.created)))


def _tasks(client: TestClient) -> int:
    trusted = client.get("/fhir/Task?_summary=count")  # the client fixture's trusted system client
    assert trusted.status_code == 200
    return int(trusted.json()["total"])


def _outcome(resp: Any, status: int) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome"
    return str(body["issue"][0].get("diagnostics") or body["issue"][0].get("details", {}).get("text"))


def test_the_holder_asks_for_a_filing_and_gets_the_task(api: TestClient) -> None:
    before = utcnow()
    created = api.post("/fhir/Patient/pa/$request-filing", json=asking(), headers=_headers(api, HOLDER))
    assert created.status_code == 201, created.text
    task = created.json()
    assert created.headers["Location"].endswith(f"/Task/{task['id']}/_history/1")
    assert "ETag" in created.headers
    assert (task["resourceType"], task["status"], task["intent"]) == ("Task", "requested", "order")
    assert task["code"]["coding"][0]["code"] == rights.FILE
    assert task["owner"] == {"reference": "Practitioner/gp"} and task["for"] == {"reference": "Patient/pa"}
    assert task["note"][0]["text"] == "Discharge report of March" and "focus" not in task
    due = rights._due_of(task)
    assert due is not None and before + timedelta(days=15) <= due <= utcnow() + timedelta(days=15)
    (row,) = _rows(api)
    assert (row.id, row.kind, row.patient_id, row.author_practitioner_id, row.status) == (
        task["id"],
        "file",
        "pa",
        "gp",
        "requested",
    )
    app: Any = api.app
    with app.state.engine.connect() as conn:
        log = audit.query(conn, patient_id="pa", actions=[audit.AuditAction.CREATE])
    assert "request-file Practitioner/gp" in [e.record.interaction for e in log]
    # the GP sees it in their Task list, the colleague in the same care does not
    gp_tasks = api.get("/fhir/Task?owner=Practitioner/gp", headers=_headers(api, GP)).json()
    assert [e["resource"]["id"] for e in gp_tasks.get("entry", [])] == [task["id"]]
    colleague = api.get(f"/fhir/Task/{task['id']}", headers=_headers(api, COLLEAGUE))
    assert colleague.status_code == 404


def test_a_representative_asks_for_the_holder(api: TestClient) -> None:
    created = api.post(
        "/fhir/Patient/pa/$request-filing",
        json=asking("Practitioner/colleague", "Prescription"),
        headers=_headers(api, REPRESENTATIVE),
    )
    assert created.status_code == 201, created.text
    task = created.json()
    assert task["requester"] == {"display": "Jean"} and task["owner"] == {
        "reference": "Practitioner/colleague"
    }
    assert [(r.patient_id, r.author_practitioner_id, r.created_by) for r in _rows(api)] == [
        ("pa", "colleague", "acct-rep")
    ]


def test_refusals_write_nothing(api: TestClient) -> None:
    holder = _headers(api, HOLDER)
    tasks = _tasks(api)
    # a professional who never took part in the holder's care
    text = _outcome(
        api.post("/fhir/Patient/pa/$request-filing", json=asking("Practitioner/stranger"), headers=holder),
        400,
    )
    assert "took part in your care" in text
    unknown = api.post("/fhir/Patient/pa/$request-filing", json=asking("Practitioner/nobody"), headers=holder)
    assert _outcome(unknown, 400) == text  # an unknown professional: the same answer
    # wrong parameters
    for body in (
        params({"name": "description", "valueString": "Lab result"}),  # no practitioner
        params(
            {"name": "practitioner", "valueString": "Practitioner/gp"},  # not a reference
            {"name": "description", "valueString": "Lab result"},
        ),
        asking("Organization/hosp"),
        asking("https://elsewhere.example/fhir/Practitioner/gp"),
        asking("Practitioner/"),
        params(
            {"name": "practitioner", "valueReference": {"reference": "Practitioner/gp"}}
        ),  # no description
        asking(description="   "),
        asking(description="x" * (rights.REASON_MAX + 1)),
        params(
            {"name": "practitioner", "valueReference": {"reference": "Practitioner/gp"}},
            {"name": "description", "valueInteger": 3},
        ),
        {"resourceType": "Patient"},
    ):
        _outcome(api.post("/fhir/Patient/pa/$request-filing", json=body, headers=holder), 400)
    _outcome(api.post("/fhir/Patient/pa/$request-filing", content=b"{", headers=holder), 400)
    # only the holder's side asks: a professional of the care gets 403
    _outcome(api.post("/fhir/Patient/pa/$request-filing", json=asking(), headers=_headers(api, GP)), 403)
    # on Patient only
    _outcome(api.post("/fhir/Observation/pa/$request-filing", json=asking(), headers=holder), 404)
    assert _rows(api) == [] and _tasks(api) == tasks


def test_another_record_answers_like_an_unknown_one(api: TestClient) -> None:
    """The holder of pb asking on pa's record, and on a record that does not exist: the same 404."""
    other = _headers(api, OTHER_HOLDER)
    theirs = api.post("/fhir/Patient/pa/$request-filing", json=asking(), headers=other)
    nobody = api.post("/fhir/Patient/no-such-record/$request-filing", json=asking(), headers=other)
    assert _outcome(theirs, 404) == _outcome(nobody, 404)
    assert theirs.json() == nobody.json()
    assert _rows(api) == []


def test_only_the_professional_asked_marks_it_filed(api: TestClient) -> None:
    created = api.post("/fhir/Patient/pa/$request-filing", json=asking(), headers=_headers(api, HOLDER))
    task_id = created.json()["id"]
    done = decision("completed", "Filed the discharge report")
    # a stranger professional, and a colleague in the same care: the answer of an unknown Task
    unknown = api.post("/fhir/Task/no-such-task/$decide", json=done, headers=_headers(api, STRANGER))
    for who in (STRANGER, COLLEAGUE):
        refused = api.post(f"/fhir/Task/{task_id}/$decide", json=done, headers=_headers(api, who))
        assert _outcome(refused, 404) == _outcome(unknown, 404)
    # the holder sees it but does not complete it (they may cancel it)
    _outcome(api.post(f"/fhir/Task/{task_id}/$decide", json=done, headers=_headers(api, HOLDER)), 403)
    _outcome(api.post(f"/fhir/Task/{task_id}/$decide", json=params(), headers=_headers(api, GP)), 400)
    _outcome(
        api.post(f"/fhir/Task/{task_id}/$decide", json=decision("filed"), headers=_headers(api, GP)), 400
    )
    (row,) = _rows(api)
    assert (row.status, row.decided_at) == ("requested", None)  # the refusals changed nothing
    assert api.get(f"/fhir/Task/{task_id}").json()["meta"]["versionId"] == "1"

    marked = api.post(f"/fhir/Task/{task_id}/$decide", json=done, headers=_headers(api, GP))
    assert marked.status_code == 200, marked.text
    assert marked.json()["status"] == "completed"
    assert marked.json()["note"][-1]["text"] == "Filed the discharge report"
    (row,) = _rows(api)
    assert (row.status, row.decided_by) == ("completed", "acct-gp")
    again = api.post(f"/fhir/Task/{task_id}/$decide", json=done, headers=_headers(api, GP))
    assert "already decided" in _outcome(again, 409)
    holder_view = api.get(f"/fhir/Task/{task_id}", headers=_headers(api, HOLDER))
    assert holder_view.status_code == 200 and holder_view.json()["status"] == "completed"


def test_the_audit_names_the_act_of_each_side(api: TestClient) -> None:
    created = api.post("/fhir/Patient/pa/$request-filing", json=asking(), headers=_headers(api, HOLDER))
    task_id = created.json()["id"]
    api.post(f"/fhir/Task/{task_id}/$decide", json=decision("completed"), headers=_headers(api, GP))
    app: Any = api.app
    with app.state.engine.connect() as conn:
        acts = conn.execute(
            select(audit_log.c.principal_ref, audit_log.c.interaction)
            .where(audit_log.c.patient_id == "pa", audit_log.c.resources.like(f'%"Task/{task_id}"%'))
            .order_by(audit_log.c.pk)
        ).all()
    assert [
        tuple(a) for a in acts if a.interaction in ("request-file Practitioner/gp", "file-request completed")
    ] == [
        ("Patient/pa", "request-file Practitioner/gp"),
        ("Practitioner/gp", "file-request completed"),
    ]


def test_the_capability_statement_lists_request_filing(api: TestClient) -> None:
    statement = api.get("/fhir/metadata").json()
    (patient,) = [r for r in statement["rest"][0]["resource"] if r["type"] == "Patient"]
    (task,) = [r for r in statement["rest"][0]["resource"] if r["type"] == "Task"]
    ops = {o["name"]: o["definition"] for o in patient["operation"]}
    assert ops["request-filing"] == "https://sharedcare.lu/fhir/OperationDefinition/request-filing"
    assert "decide" in {o["name"] for o in task["operation"]}
    (observation,) = [r for r in statement["rest"][0]["resource"] if r["type"] == "Observation"]
    assert "request-filing" not in {o["name"] for o in observation["operation"]}
    # served: the operation itself refuses (a trusted client is no holder), not the generic answer
    generic = api.post("/fhir/Patient/pa/$no-such-operation", json=params()).json()
    served = api.post("/fhir/Patient/pa/$request-filing", json=asking())
    assert served.status_code == 403 and served.json() != generic
