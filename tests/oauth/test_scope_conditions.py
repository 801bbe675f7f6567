"""SMART v2 scopes with a query (``patient/Observation.rs?category=…``) applied as search filters.

Over HTTP, on both databases: a resource of the scope's type is readable, searchable, included,
in ``$everything`` and in history only when it matches the query; several scopes on a type are
OR-ed; an unconditional scope lifts the condition; writes touch only matching resources; a query
the server cannot run is never granted.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.access.scopes import ResourceScope, ScopeSet
from sharedcare.fhir.store import utcnow
from sharedcare.storage.engine import writer
from support import DEMO_SECRET, add_care, bearer, put_all

CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
LAB = f"user/Observation.rs?category={CAT}|laboratory"
VITALS = f"user/Observation.rs?category={CAT}|vital-signs"
GP = Principal(PrincipalKind.PROFESSIONAL, "acct-gp", display="Dr Gp", practitioner_id="gp", profession="med")


def obs(rid: str | None, category: str, code: str = "2345-7") -> dict[str, Any]:
    """An Observation of Anne's (``rid`` None: without id, for a create)."""
    res: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": CAT, "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": "Patient/pa"},
    }
    if rid is not None:
        res["id"] = rid
    return res


@pytest.fixture
def world(client: TestClient) -> TestClient:
    """Anne's record (a lab result, a heart rate, an exam finding) and her GP, in her care."""
    put_all(
        client,
        {"resourceType": "Practitioner", "id": "gp", "active": True},
        {"resourceType": "Patient", "id": "pa", "gender": "female"},
        obs("lab-1", "laboratory"),
        obs("vital-1", "vital-signs", "8867-4"),
        obs("exam-1", "exam", "29545-1"),
    )
    now = utcnow()
    with writer(client.app.state.engine).begin() as conn:  # type: ignore[attr-defined]
        add_care(conn, "gp-solo", "pa", "gp", now)
    return client


def as_gp(client: TestClient, scope: str) -> dict[str, str]:
    return bearer(client.app, GP, scope)


def refs(bundle: dict[str, Any]) -> set[str]:
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])}


def observations(bundle: dict[str, Any]) -> set[str]:
    return {r for r in refs(bundle) if r.startswith("Observation/")}


def test_read_search_include_everything_and_history_show_only_matches(world: TestClient) -> None:
    h = as_gp(world, f"{LAB} user/Patient.rs")
    assert world.get("/fhir/Observation/lab-1", headers=h).status_code == 200
    hidden = world.get("/fhir/Observation/vital-1", headers=h)
    assert hidden.status_code == 404 and hidden.json()["resourceType"] == "OperationOutcome"
    assert world.get("/fhir/Observation/vital-1/_history/1", headers=h).status_code == 404
    found = world.get("/fhir/Observation?_total=accurate", headers=h).json()
    assert refs(found) == {"Observation/lab-1"} and found["total"] == 1
    # the search's own criteria and the scope's are both applied
    assert refs(world.get("/fhir/Observation?code=8867-4", headers=h).json()) == set()
    included = world.get("/fhir/Patient?_id=pa&_revinclude=Observation:subject", headers=h).json()
    assert refs(included) == {"Patient/pa", "Observation/lab-1"}
    everything = world.get("/fhir/Patient/pa/$everything", headers=h).json()
    assert refs(everything) == {"Patient/pa", "Observation/lab-1"}
    history = world.get("/fhir/Observation/_history", headers=h).json()
    assert observations(history) == {"Observation/lab-1"}
    # a criterion reaching a hidden Observation through _has does not match either
    has = world.get("/fhir/Patient?_has:Observation:subject:code=8867-4", headers=h).json()
    assert refs(has) == set()
    assert refs(world.get("/fhir/Patient?_has:Observation:subject:code=2345-7", headers=h).json()) == {
        "Patient/pa"
    }


def test_scopes_on_one_type_are_or_ed_and_an_unconditional_one_lifts_the_condition(world: TestClient) -> None:
    both = as_gp(world, f"{LAB} {VITALS}")
    assert observations(world.get("/fhir/Observation", headers=both).json()) == {
        "Observation/lab-1",
        "Observation/vital-1",
    }
    plain = as_gp(world, f"{LAB} user/Observation.rs")
    assert observations(world.get("/fhir/Observation", headers=plain).json()) == {
        "Observation/lab-1",
        "Observation/vital-1",
        "Observation/exam-1",
    }
    wildcard = as_gp(world, f"{LAB} user/*.rs")
    assert world.get("/fhir/Observation/exam-1", headers=wildcard).status_code == 200
    # two criteria in one scope are AND-ed: the lab result is not a heart rate
    both_criteria = as_gp(world, f"{LAB}&code=8867-4")
    assert observations(world.get("/fhir/Observation", headers=both_criteria).json()) == set()
    # percent-encoded, as some clients send the query
    encoded = as_gp(world, "user/Observation.rs?category=" + quote(f"{CAT}|vital-signs", safe=""))
    assert observations(world.get("/fhir/Observation", headers=encoded).json()) == {"Observation/vital-1"}


def test_writes_under_a_conditional_scope_touch_only_matching_resources(world: TestClient) -> None:
    scope = f"user/Observation.cruds?category={CAT}|laboratory user/Observation.rs"
    h = as_gp(world, scope)
    created = world.post("/fhir/Observation", json=obs(None, "laboratory"), headers=h)
    assert created.status_code == 201, created.text
    refused = world.post("/fhir/Observation", json=obs(None, "vital-signs", "8867-4"), headers=h)
    assert refused.status_code == 403 and refused.json()["resourceType"] == "OperationOutcome"
    total = world.get("/fhir/Observation?_total=accurate&_summary=count").json()["total"]
    assert total == 4  # the trusted client's count: the refused create left nothing
    # turning the lab result into a heart rate is refused, and changes nothing
    turned = world.put("/fhir/Observation/lab-1", json=obs("lab-1", "vital-signs", "8867-4"), headers=h)
    assert turned.status_code == 403
    assert world.get("/fhir/Observation/lab-1").json()["meta"]["versionId"] == "1"
    # a stored resource outside the query can be neither updated nor deleted
    assert (
        world.put("/fhir/Observation/vital-1", json=obs("vital-1", "laboratory"), headers=h).status_code
        == 403
    )
    assert world.delete("/fhir/Observation/vital-1", headers=h).status_code == 403
    assert world.get("/fhir/Observation/vital-1").status_code == 200
    updated = world.put(
        "/fhir/Observation/lab-1", json={**obs("lab-1", "laboratory"), "status": "amended"}, headers=h
    )
    assert updated.status_code == 200, updated.text
    assert world.delete("/fhir/Observation/lab-1", headers=h).status_code in (200, 204)
    # the same writes pass with an unconditional scope: the refusals above were the scope's
    wide = as_gp(world, "user/Observation.cruds")
    assert (
        world.post("/fhir/Observation", json=obs(None, "vital-signs", "8867-4"), headers=wide).status_code
        == 201
    )


def test_a_transaction_with_one_write_outside_the_query_writes_nothing(world: TestClient) -> None:
    h = as_gp(world, f"user/Observation.cruds?category={CAT}|laboratory")
    entries = [
        {"resource": obs(None, cat), "request": {"method": "POST", "url": "Observation"}}
        for cat in ("laboratory", "exam")
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    assert world.post("/fhir", json=bundle, headers=h).status_code == 403
    assert world.get("/fhir/Observation?_summary=count").json()["total"] == 3
    assert world.post("/fhir", json={**bundle, "entry": entries[:1]}, headers=h).status_code == 200


UNSUPPORTED = [
    "patient/Observation.rs?unknown-parameter=1",
    "patient/Observation.rs?_count=10",  # a result parameter is no condition
    "patient/Observation.rs?date=yesterday",  # a value the search refuses
    "patient/*.rs?_tag=x",  # a query on every type
    "patient/Unknown.rs?code=x",
]


@pytest.mark.parametrize("text", UNSUPPORTED)
def test_queries_the_server_cannot_run_make_the_scope_malformed(text: str) -> None:
    assert ResourceScope.parse(text) is None
    scopes = ScopeSet.parse(f"{text} patient/Patient.rs")
    assert scopes.invalid == (text,) and [s.raw for s in scopes.resources] == ["patient/Patient.rs"]


def test_token_endpoint_grants_supported_queries_and_ignores_the_others(world: TestClient) -> None:
    wanted = f"system/Observation.rs?category={CAT}|laboratory system/Observation.rs?unknown-parameter=1"
    resp = world.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "scope": wanted},
        auth=("demo-system", DEMO_SECRET),
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["scope"] == f"system/Observation.rs?category={CAT}|laboratory"
