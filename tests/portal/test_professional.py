"""Professionals' pages: only accessible patients are found, codes open access (and are rate
limited), masked items stay absent, and the emergency override only when enabled."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from portal_http import post, sign_in
from portal_world import MATRICULE_A, MATRICULE_B, World

from sharedcare.access import care, consent
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit import log as audit
from sharedcare.storage.engine import writer

Browser = Callable[[], TestClient]
HOLDER = Principal(PrincipalKind.PATIENT, "holder", patient_id="pa")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _code(world: World) -> str:
    with writer(world.engine).begin() as conn:
        return care.issue_connection_code(conn, world.settings, "pa", _now())


@pytest.fixture
def gp(world: World, browser: Browser) -> TestClient:
    c = browser()
    sign_in(c, world.gp)
    return c


def _search(client: TestClient, query: str) -> str:
    resp = post(client, "/portal/pro/search", {"query": query}, "/portal/pro")
    assert resp.status_code in (200, 400)
    return re.sub(r'value="[^"]*"', "", resp.text)  # the query typed is echoed in its field


def test_search_shows_only_accessible_patients(world: World, gp: TestClient, browser: Browser) -> None:
    found = _search(gp, "Muller")
    assert "Marie Muller" in found and "/portal/pro/patients/pa" in found
    assert "Marie Muller" in _search(gp, MATRICULE_A)
    for query in ("Schmit", "Paul", MATRICULE_B, "Neumann", "a"):
        page = _search(gp, query)
        assert "Schmit" not in page and "/portal/pro/patients/pb" not in page and "Neumann" not in page
    stranger = browser()
    sign_in(stranger, world.stranger)
    for query in ("Muller", MATRICULE_A, "M"):
        assert "Muller" not in _search(stranger, query)


def test_a_record_without_access_looks_unknown(world: World, gp: TestClient) -> None:
    denied, unknown = gp.get("/portal/pro/patients/pb"), gp.get("/portal/pro/patients/does-not-exist")
    assert denied.status_code == unknown.status_code == 404
    assert "Schmit" not in denied.text and "Glucose B" not in denied.text
    # the same page but for the path it names (replacing the bare id also hit a CSRF token holding "pb")
    assert denied.text.replace("/patients/pb", "/patients/") == unknown.text.replace(
        "/patients/does-not-exist", "/patients/"
    )


def test_record_summary_through_the_decision_without_masked_items(world: World, gp: TestClient) -> None:
    with writer(world.engine).begin() as conn:
        consent.mask(conn, world.app.state.fhir, HOLDER, "pa", "gp", "Observation/hb-a", _now())
    page = gp.get("/portal/pro/patients/pa")
    assert page.status_code == 200
    assert "Glucose" in page.text and "Asthma" in page.text
    assert "Haemoglobin" not in page.text  # hidden: simply absent, and nothing says so
    assert "hidden from" not in page.text.lower() and "hb-a" not in page.text
    with world.engine.connect() as conn:
        reads = audit.query(conn, patient_id="pa", principal_subject=world.gp.account_id)
    assert reads and all("Observation/hb-a" not in ref for e in reads for ref in e.record.resources)


def test_blocked_professional_finds_nothing(world: World, gp: TestClient) -> None:
    with writer(world.engine).begin() as conn:
        consent.block(conn, world.app.state.fhir, HOLDER, "pa", "gp", _now())
    assert "Marie Muller" not in _search(gp, "Muller")
    assert gp.get("/portal/pro/patients/pa").status_code == 404


def test_open_a_relationship_with_the_patients_code(world: World, browser: Browser) -> None:
    pharmacist = browser()
    sign_in(pharmacist, world.pharmacist)
    assert pharmacist.get("/portal/pro/patients/pa").status_code == 404
    resp = post(pharmacist, "/portal/pro/code", {"code": _code(world).lower()}, "/portal/pro")
    assert resp.status_code == 303 and resp.headers["location"] == "/portal/pro/patients/pa"
    page = pharmacist.get("/portal/pro/patients/pa")
    assert page.status_code == 200 and "Marie Muller" in page.text
    with world.engine.connect() as conn:
        rels = [r for r in care.of_patient(conn, "pa", _now()) if r.practitioner_id == "pharm"]
    assert [r.context for r in rels] == ["solo"]


def test_wrong_codes_are_limited(world: World, gp: TestClient) -> None:
    limit = world.settings.max_failed_attempts
    for attempt in range(limit):
        resp = post(gp, "/portal/pro/code", {"code": "AAA-BBB-CCC"}, "/portal/pro")
        assert resp.status_code == (429 if attempt == limit - 1 else 400)
    assert "Try again in" in resp.text
    right = post(gp, "/portal/pro/code", {"code": _code(world)}, "/portal/pro")
    assert right.status_code == 429  # locked: even a right code waits, and is not used up
    with world.engine.connect() as conn:
        assert [r.context for r in care.of_patient(conn, "pa", _now()) if r.practitioner_id == "gp"] == [
            "solo"
        ]


def test_patients_cannot_use_professional_pages(world: World, browser: Browser) -> None:
    c = browser()
    sign_in(c, world.patient)
    assert c.get("/portal/pro").status_code == 403
    assert post(c, "/portal/pro/code", {"code": _code(world)}, "/portal/home").status_code == 403


def test_emergency_override_is_off_by_default(world: World, gp: TestClient) -> None:
    assert "Emergency override" not in gp.get("/portal/pro").text
    data = {"matricule": MATRICULE_B, "reason": "unconscious", "understood": "yes"}
    assert post(gp, "/portal/pro/emergency", data, "/portal/pro").status_code == 404
    assert gp.get("/portal/pro/patients/pb").status_code == 404


def test_emergency_override_when_enabled(emergency_world: World) -> None:
    world = emergency_world
    c = TestClient(world.app, follow_redirects=False)
    sign_in(c, world.stranger)
    assert "Emergency override" in c.get("/portal/pro").text
    no_reason = post(
        c, "/portal/pro/emergency", {"matricule": MATRICULE_B, "understood": "yes"}, "/portal/pro"
    )
    assert no_reason.status_code == 400
    unconfirmed = post(
        c, "/portal/pro/emergency", {"matricule": MATRICULE_B, "reason": "coma"}, "/portal/pro"
    )
    assert unconfirmed.status_code == 400
    assert c.get("/portal/pro/patients/pb").status_code == 404
    data = {"matricule": MATRICULE_B, "reason": "unconscious after a fall", "understood": "yes"}
    resp = post(c, "/portal/pro/emergency", data, "/portal/pro")
    assert resp.status_code == 303 and resp.headers["location"] == "/portal/pro/patients/pb"
    assert "Glucose B" in c.get("/portal/pro/patients/pb").text
    with world.engine.connect() as conn:
        entries = audit.query(conn, patient_id="pb", emergency=True)
    assert entries and {e.record.emergency_reason for e in entries} == {"unconscious after a fall"}
    assert audit.AuditAction.EMERGENCY_ACCESS in {e.record.action for e in entries}


def test_odd_search_text_finds_nothing_instead_of_failing(world: World, gp: TestClient) -> None:
    for query in ("Muller\\", "a,b,c$x|y", "%", "' OR 1=1 --", "x" * 300):
        resp = post(gp, "/portal/pro/search", {"query": query}, "/portal/pro")
        assert (
            resp.status_code in (200, 400) and "text/html" in resp.headers["content-type"]
        )  # 400: no matricule
