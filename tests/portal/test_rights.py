"""The holder's pages: home, access rights and every change they make (or refuse to make)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from portal_http import post, sign_in, token
from portal_world import World

from sharedcare.access import care, consent
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit import log as audit
from sharedcare.storage.engine import writer

Browser = Callable[[], TestClient]
GP_PAGE = "/portal/access/professional/gp"


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _choices(world: World, kind: str) -> list[consent.Choice]:
    with world.engine.connect() as conn:
        return [c for c in consent.choices(conn, "pa", _now()) if c.kind == kind]


def _status(world: World) -> str:
    with world.engine.connect() as conn:
        return consent.status(conn, "pa")


@pytest.fixture
def holder(world: World, browser: Browser) -> TestClient:
    c = browser()
    sign_in(c, world.patient)
    return c


def test_every_holder_page_renders(world: World, holder: TestClient) -> None:
    for page in ("/portal/home", "/portal/access", GP_PAGE, "/portal/log", "/portal/records"):
        resp = holder.get(page)
        assert resp.status_code == 200, page
        assert '<html lang="' in resp.text and '<main id="main"' in resp.text
    home = holder.get("/portal/home").text
    assert "Discharge letter" in home and "Asthma" in home
    access = holder.get("/portal/access").text
    assert "Dr Claire Hoffmann" in access  # the GP's solo relationship, named from the directory
    professional = holder.get(GP_PAGE).text
    assert "Haemoglobin" in professional  # the record's items to choose from for hiding


def test_home_reads_through_the_access_decision_and_is_audited(world: World, holder: TestClient) -> None:
    holder.get("/portal/home")
    with world.engine.connect() as conn:
        reads = audit.query(conn, patient_id="pa", principal_subject=world.patient.account_id)
    assert reads and reads[0].record.action is audit.AuditAction.OPERATION
    assert "Observation/hb-a/_history/1" in reads[0].record.resources


def test_grant_and_revoke_permanent_access(world: World, holder: TestClient) -> None:
    resp = post(holder, "/portal/access/grant", {"practitioner": "gp", "back": GP_PAGE}, GP_PAGE)
    assert resp.status_code == 303 and resp.headers["location"] == GP_PAGE
    assert [c.practitioner_id for c in _choices(world, "permanent")] == ["gp"]
    assert "Permanent access granted." in holder.get(GP_PAGE).text
    # revoking restricts access: refused until the health-risk warning is confirmed
    refused = post(holder, "/portal/access/revoke", {"practitioner": "gp", "back": GP_PAGE}, GP_PAGE)
    assert refused.status_code == 400 and "health risks" in refused.text
    assert len(_choices(world, "permanent")) == 1
    done = post(
        holder, "/portal/access/revoke", {"practitioner": "gp", "understood": "yes", "back": GP_PAGE}, GP_PAGE
    )
    assert done.status_code == 303
    assert _choices(world, "permanent") == []
    again = post(
        holder, "/portal/access/revoke", {"practitioner": "gp", "understood": "yes", "back": GP_PAGE}, GP_PAGE
    )
    assert again.status_code == 409


def test_grant_refuses_a_professional_outside_the_directory(world: World, holder: TestClient) -> None:
    resp = post(holder, "/portal/access/grant", {"practitioner": "nobody"}, "/portal/access")
    assert resp.status_code == 404
    assert _choices(world, "permanent") == []


def test_block_and_unblock(world: World, holder: TestClient) -> None:
    refused = post(holder, "/portal/access/block", {"practitioner": "gp", "back": GP_PAGE}, GP_PAGE)
    assert refused.status_code == 400
    assert _choices(world, "block") == []
    page = holder.get(GP_PAGE).text
    assert "Restricting access can put your health at risk" in page
    done = post(
        holder, "/portal/access/block", {"practitioner": "gp", "understood": "yes", "back": GP_PAGE}, GP_PAGE
    )
    assert done.status_code == 303
    assert [c.practitioner_id for c in _choices(world, "block")] == ["gp"]
    twice = post(
        holder, "/portal/access/block", {"practitioner": "gp", "understood": "yes", "back": GP_PAGE}, GP_PAGE
    )
    assert twice.status_code == 409 and "already blocked" in twice.text
    assert "Blocked professionals" in holder.get("/portal/access").text
    post(holder, "/portal/access/unblock", {"practitioner": "gp"}, "/portal/access")
    assert _choices(world, "block") == []


def test_hide_and_show_an_item(world: World, holder: TestClient) -> None:
    data = {"practitioner": "gp", "reference": "Observation/hb-a", "back": GP_PAGE}
    assert post(holder, "/portal/access/hide", data, GP_PAGE).status_code == 400  # no confirmation
    foreign = {**data, "reference": "Observation/glucose-b", "understood": "yes"}
    resp = post(holder, "/portal/access/hide", foreign, GP_PAGE)  # another patient's item
    assert resp.status_code == 400 and "Choose an item of your record" in resp.text
    assert _choices(world, "mask") == []
    done = post(holder, "/portal/access/hide", {**data, "understood": "yes"}, GP_PAGE)
    assert done.status_code == 303
    assert [(c.practitioner_id, c.resource) for c in _choices(world, "mask")] == [("gp", "Observation/hb-a")]
    assert "Hidden items" in holder.get("/portal/access").text
    post(holder, "/portal/access/unhide", {"practitioner": "gp", "reference": "Observation/hb-a"}, GP_PAGE)
    assert _choices(world, "mask") == []


def test_connection_code_is_shown_once_and_opens_access(
    world: World, holder: TestClient, browser: Browser
) -> None:
    page = post(holder, "/portal/access/code", {}, "/portal/access")
    assert page.status_code == 200
    code = page.text.split('id="connection-code">', 1)[1].split("<", 1)[0]
    assert len(code) == 11 and "Valid until" in page.text
    pharmacist = Principal(PrincipalKind.PROFESSIONAL, world.pharmacist.account_id, practitioner_id="pharm")
    with writer(world.engine).begin() as conn:
        rel = care.open_with_code(conn, world.settings, pharmacist, code, _now())
    assert rel.patient_id == "pa" and rel.context == "solo"
    with world.engine.connect() as conn:
        changes = audit.query(conn, patient_id="pa", actions=[audit.AuditAction.CONSENT_CHANGE])
    assert {e.record.interaction for e in changes} >= {"issue-connection-code"}


def test_appoint_and_remove_a_representative(world: World, holder: TestClient) -> None:
    unknown = post(
        holder,
        "/portal/access/representatives",
        {"login": "no.such.person", "kind": "assistant"},
        "/portal/access",
    )
    assert unknown.status_code == 404
    assert 'value="no.such.person"' in unknown.text and "<details open>" in unknown.text  # kept, shown
    professional = {"login": world.gp.login, "kind": "trusted"}
    assert post(holder, "/portal/access/representatives", professional, "/portal/access").status_code == 400
    bad_kind = {"login": world.representative.login, "kind": "boss"}
    assert post(holder, "/portal/access/representatives", bad_kind, "/portal/access").status_code == 400
    assert _choices(world, "delegation") == []
    data = {
        "login": world.representative.login,
        "kind": "assistant",
        "ends": "2099-12-31",
        "legal_basis": "holder's letter",
    }
    done = post(holder, "/portal/access/representatives", data, "/portal/access")
    assert done.status_code == 303
    [delegation] = _choices(world, "delegation")
    assert delegation.account_id == world.representative.account_id and delegation.ends is not None
    page = holder.get("/portal/access").text
    assert "Jean Muller" in page and "holder&#39;s letter" in page
    post(holder, "/portal/access/representatives/remove", {"delegation_id": delegation.id}, "/portal/access")
    assert _choices(world, "delegation") == []


def test_close_and_reopen_the_record(world: World, holder: TestClient) -> None:
    refused = post(holder, "/portal/access/close", {}, "/portal/access")
    assert refused.status_code == 400 and _status(world) == "open"
    assert post(holder, "/portal/access/close", {"understood": "yes"}, "/portal/access").status_code == 303
    assert _status(world) == "closed"
    home = holder.get("/portal/home").text
    assert "Closed" in home and "Asthma" not in home  # closed to everyone, the holder included
    assert post(holder, "/portal/access/close", {"understood": "yes"}, "/portal/access").status_code == 409
    assert post(holder, "/portal/access/reopen", {}, "/portal/access").status_code == 303
    assert _status(world) == "open"


def test_refused_without_csrf_token(world: World, holder: TestClient) -> None:
    resp = holder.post("/portal/access/grant", data={"practitioner": "gp"})
    assert resp.status_code == 403
    resp = holder.post("/portal/access/close", data={"understood": "yes", "csrf": "x" * 43})
    assert resp.status_code == 403
    assert _choices(world, "permanent") == [] and _status(world) == "open"


def test_professionals_cannot_use_the_holder_pages(world: World, browser: Browser) -> None:
    c = browser()
    sign_in(c, world.gp)
    assert c.get("/portal/access").status_code == 403
    resp = c.post("/portal/access/grant", data={"csrf": token(c, "/portal/pro"), "practitioner": "gp"})
    assert resp.status_code == 403
    assert _choices(world, "permanent") == []


def test_signed_out_users_are_sent_to_the_login_page(browser: Browser) -> None:
    c = browser()
    for page in ("/portal/home", "/portal/access", "/portal/log", "/portal/pro"):
        resp = c.get(page)
        assert resp.status_code == 303 and resp.headers["location"].startswith("/portal/login?next=")


def test_representative_chooses_the_holder_and_acts_for_them(world: World, browser: Browser) -> None:
    assistant = Principal(PrincipalKind.PATIENT, world.patient.account_id, patient_id="pa")
    with writer(world.engine).begin() as conn:
        consent.appoint(
            conn,
            world.app.state.fhir,
            assistant,
            "pa",
            world.representative.account_id,
            "assistant",
            _now(),
            ends=_now() + timedelta(days=30),
            legal_basis="signed appointment",
        )
        consent.appoint(
            conn,
            world.app.state.fhir,
            Principal(PrincipalKind.SYSTEM, "agency", trusted=True),
            "pb",
            world.representative.account_id,
            "guardian",
            _now(),
        )
    c = browser()
    sign_in(c, world.representative)
    assert c.get("/portal/").headers["location"] == "/portal/records"
    assert c.get("/portal/home").headers["location"] == "/portal/records"  # two holders: choose first
    page = c.get("/portal/records").text
    assert "Marie Muller" in page and "Paul Schmit" in page
    assert (
        post(c, "/portal/records", {"record": "not-mine"}, "/portal/records").headers["location"]
        == "/portal/records"
    )
    assert (
        post(c, "/portal/records", {"record": "pb"}, "/portal/records").headers["location"] == "/portal/home"
    )
    home = c.get("/portal/home").text
    assert "Paul Schmit" in home and "Glucose B" in home and "Asthma" not in home
    post(c, "/portal/access/block", {"practitioner": "stranger", "understood": "yes"}, "/portal/access")
    with world.engine.connect() as conn:
        blocks = [ch for ch in consent.choices(conn, "pb", _now()) if ch.kind == "block"]
        log = audit.query(conn, patient_id="pb", principal_subject=world.representative.account_id)
    assert [b.practitioner_id for b in blocks] == ["stranger"]
    assert all(e.record.purpose == "PWATRNY" for e in log)


def test_home_tells_the_holder_of_the_first_professional_access(world: World, holder: TestClient) -> None:
    from sharedcare.access.policy import category_of
    from sharedcare.access.session import PolicySession
    from sharedcare.notify import outbox

    app = holder.app
    gp = Principal(
        PrincipalKind.PROFESSIONAL,
        "acct-gp",
        display="Dr Claire Hoffmann",
        practitioner_id="gp",
        profession="med",
    )
    with writer(world.engine).begin() as conn:
        care.ensure_record(conn, "pa", letter_sent=None, activated=_now())
    session = PolicySession(gp, app.state.policy, category_of, enforce_scopes=False)  # type: ignore[attr-defined]
    app.state.fhir.for_session(session).read("Patient", "pa")  # type: ignore[attr-defined]
    home = holder.get("/portal/home").text
    assert "A professional used your record for the first time: Dr Claire Hoffmann." in home
    with world.engine.connect() as conn:
        assert len(outbox.for_patient(conn, "pa")) == 1
