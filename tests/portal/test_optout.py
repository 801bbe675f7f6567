"""The holder's objection in the portal (§A.1): warning, explicit confirmation, re-authentication,
CSRF; the record is then gone for everyone. And a facility's registration on the access pages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from portal_http import post, sign_in, token
from portal_world import PASSWORD, World
from sqlalchemy import select

from sharedcare.access.models import care_relationship, record_status
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit import log as audit
from sharedcare.identity import accounts
from sharedcare.identity.models import AccountStatus
from sharedcare.storage.engine import writer
from sharedcare.storage.tables import resource
from support import bearer, professional

PAGE = "/portal/account/opt-out"


def gp_reads(world: World, path: str) -> int:
    """The status a FHIR read of the GP (in Marie Muller's care) gets."""
    client = TestClient(world.app)
    return client.get(f"/fhir/{path}", headers=bearer(world.app, professional("gp"), "user/*.rs")).status_code


def record_left(world: World) -> str | None:
    with world.engine.connect() as conn:
        status = conn.execute(
            select(record_status.c.status).where(record_status.c.patient_id == "pa")
        ).scalar()
    return status


def test_the_account_page_links_to_the_objection_with_its_warning(
    record: World, browser: Callable[[], TestClient]
) -> None:
    c = browser()
    sign_in(c, record.patient)
    account = c.get("/portal/account")
    assert 'href="/portal/account/opt-out"' in account.text
    page = c.get(PAGE)
    assert page.status_code == 200
    assert "This deletes your record for good" in page.text
    assert "also in an emergency" in page.text
    assert 'name="understood"' in page.text and 'name="password"' in page.text and 'name="code"' in page.text


def test_nothing_is_deleted_without_confirmation_reauthentication_or_csrf(
    record: World, browser: Callable[[], TestClient]
) -> None:
    c = browser()
    sign_in(c, record.patient)
    good = {"understood": "yes", "password": PASSWORD, "code": record.patient.code(1)}
    unconfirmed = post(c, PAGE, {**good, "understood": ""}, PAGE)
    assert unconfirmed.status_code == 400 and "deleted for good" in unconfirmed.text
    wrong = post(c, PAGE, {**good, "password": "not my password at all"}, PAGE)
    assert wrong.status_code == 400
    bad_code = post(c, PAGE, {**good, "code": "000000"}, PAGE)
    assert bad_code.status_code == 400
    forged = c.post(PAGE, data={**good, "csrf": "forged"})
    assert forged.status_code == 403
    assert gp_reads(record, "Observation/glucose-a") == 200
    assert record_left(record) != "deleted"
    with record.engine.connect() as conn:
        failures = accounts.get_account(conn, record.patient.account_id).failed_attempts
    assert failures == 2  # the wrong password and code count towards the lockout


def test_the_holders_objection_deletes_the_record_for_everyone(
    record: World, browser: Callable[[], TestClient]
) -> None:
    c = browser()
    sign_in(c, record.patient)
    assert gp_reads(record, "Patient/pa") == 200
    done = post(c, PAGE, {"understood": "yes", "password": PASSWORD, "code": record.patient.code(1)}, PAGE)
    assert done.status_code == 200, done.text[:500]
    assert "Your record is deleted" in done.text and "Marie Muller" in done.text
    for path in ("Patient/pa", "Observation/glucose-a", "Patient/pa/$everything"):
        assert gp_reads(record, path) == 404, path
    assert record_left(record) == "deleted"
    with record.engine.connect() as conn:
        others = conn.execute(select(resource.c.id).where(resource.c.id.in_(["pb", "glucose-b"]))).scalars()
        assert sorted(others) == ["glucose-b", "pb"]  # another record is not touched
        assert (
            conn.execute(select(care_relationship.c.id).where(care_relationship.c.patient_id == "pa")).all()
            == []
        )
        assert accounts.get_account(conn, record.patient.account_id).status is AccountStatus.DISABLED
        (kept,) = [
            e
            for e in audit.query(conn, patient_id="pa", actions=[audit.AuditAction.DELETE])
            if e.record.principal_kind == "patient"
        ]
    assert kept.record.interaction == "opt-out"
    assert audit.verify(record.engine).ok
    # signed out, and the account no longer signs in
    assert c.get("/portal/account").status_code == 303
    again = post(c, "/portal/login", {"login": record.patient.login, "password": PASSWORD}, "/portal/login")
    assert again.status_code == 400


def test_a_representative_cannot_object_for_the_holder(
    world: World, browser: Callable[[], TestClient]
) -> None:
    c = browser()
    sign_in(c, world.representative)
    assert c.get(PAGE).status_code == 403
    resp = c.post(PAGE, data={"csrf": token(c, "/portal/account"), "understood": "yes", "password": PASSWORD})
    assert resp.status_code == 403
    assert "Object to my shared record" not in c.get("/portal/account").text


def test_a_facility_registration_shows_on_the_holders_pages(
    world: World, browser: Callable[[], TestClient]
) -> None:
    system = Principal(PrincipalKind.SYSTEM, "hosp-system", display="Hôpital du Nord", organization_id="hosp")
    api = TestClient(world.app)
    body = {"resourceType": "Parameters", "parameter": [{"name": "context", "valueCode": "emergency"}]}
    resp = api.post(
        "/fhir/Patient/pa/$register", json=body, headers=bearer(world.app, system, "system/*.cruds")
    )
    assert resp.status_code == 200, resp.text
    c = browser()
    sign_in(c, world.patient)
    access = c.get("/portal/access").text
    assert "Hôpital du Nord" in access and "Emergency department" in access
    log = c.get("/portal/log").text
    assert "Registered by a care facility" in log
    with writer(world.engine).begin() as conn:
        rows: Any = conn.execute(
            select(care_relationship.c.context).where(care_relationship.c.organization_id == "hosp")
        )
        assert [r.context for r in rows] == ["emergency"]
