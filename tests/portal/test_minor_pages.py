"""Minors in the portal: the professional admits a minor in their care to act alone; that minor,
signed in to their own account, objects to their parents' access and allows it again."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime

import pytest
from fastapi.testclient import TestClient
from portal_http import post, sign_in
from portal_world import Person, World, enrol

from sharedcare.access import consent, minors
from sharedcare.access.models import minor_objection
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.identity.matricule import MATRICULE_SYSTEM, generate
from sharedcare.storage.engine import writer
from support import add_care

Browser = Callable[[], TestClient]
KID_PAGE = "/portal/pro/patients/kid"
ACT_ALONE = "Record that this minor acts alone"
OBJECT = "Object to my parents' access"
ALLOW = "Allow my parents' access again"


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@pytest.fixture
def kid(world: World) -> Person:
    """Tom Muller, 15, in the GP's care; Jean Muller is his parent; Tom has his own account."""
    born = date(_now().year - 15, 6, 1)
    matricule = generate(born, 21)
    world.app.state.fhir.update(
        "Patient",
        "kid",
        {
            "resourceType": "Patient",
            "id": "kid",
            "identifier": [{"system": MATRICULE_SYSTEM, "value": matricule}],
            "name": [{"family": "Muller", "given": ["Tom"]}],
            "birthDate": born.isoformat(),
        },
    )
    now = _now()
    agency = Principal(PrincipalKind.SYSTEM, "test-seed", trusted=True)
    with writer(world.engine).begin() as conn:
        add_care(conn, "gp-kid", "kid", "gp", now)
        consent.appoint(
            conn, world.app.state.fhir, agency, "kid", world.representative.account_id, "parent", now
        )
    return enrol(
        world.engine,
        world.settings,
        PrincipalKind.PATIENT,
        matricule,
        display_name="Tom Muller",
        matricule=matricule,
        patient_id="kid",
    )


def _autonomous(world: World) -> None:
    gp = Principal(PrincipalKind.PROFESSIONAL, "gp-account", practitioner_id="gp", profession="med")
    with writer(world.engine).begin() as conn:
        minors.record_autonomy(conn, world.app.state.fhir, world.app.state.policy, gp, "kid", _now())


def _decided(world: World) -> bool:
    with world.engine.connect() as conn:
        return minors.autonomy_of(conn, "kid") is not None


def _objecting(world: World) -> bool:
    with world.engine.connect() as conn:
        return (
            conn.execute(minor_objection.select().where(minor_objection.c.removed_at.is_(None))).first()
            is not None
        )


def test_the_professional_in_care_records_that_a_minor_acts_alone(
    world: World, kid: Person, browser: Browser
) -> None:
    gp = browser()
    sign_in(gp, world.gp)
    page = gp.get(KID_PAGE)
    assert page.status_code == 200 and ACT_ALONE in page.text
    assert "Rights of a minor" not in gp.get("/portal/pro/patients/pa").text  # an adult
    refused = post(gp, f"{KID_PAGE}/autonomy", {}, KID_PAGE)  # the assessment not confirmed
    assert refused.status_code == 400 and "discernment" in refused.text
    stranger = browser()
    sign_in(stranger, world.stranger)
    assert stranger.get(KID_PAGE).status_code == 404
    denied = post(stranger, f"{KID_PAGE}/autonomy", {"understood": "yes"}, "/portal/pro")
    assert denied.status_code == 403 and "taking part in the care of this minor" in denied.text
    assert not _decided(world)
    done = post(gp, f"{KID_PAGE}/autonomy", {"understood": "yes"}, KID_PAGE)
    assert done.status_code == 303 and done.headers["location"] == KID_PAGE
    page = gp.get(KID_PAGE).text
    assert "This minor exercises their rights alone since" in page and "Dr Claire Hoffmann" in page
    assert ACT_ALONE not in page and _decided(world)


def test_the_minor_objects_to_the_parents_access_and_allows_it_again(
    world: World, kid: Person, browser: Browser
) -> None:
    tom = browser()
    sign_in(tom, kid)  # the minor activated and uses their own account
    assert "Your parents' access" not in tom.get("/portal/access").text  # not admitted yet
    early = post(tom, "/portal/access/parents/object", {}, "/portal/access")
    assert early.status_code == 403 and not _objecting(world)
    _autonomous(world)
    assert OBJECT in tom.get("/portal/access").text
    jean = browser()
    sign_in(jean, world.representative)
    assert "Tom" in jean.get("/portal/home").text  # his only record: chosen for him
    resp = post(tom, "/portal/access/parents/object", {}, "/portal/access")
    assert resp.status_code == 303 and _objecting(world)
    access = tom.get("/portal/access").text
    assert ALLOW in access and "Your parents no longer have access to your record." in access
    # the parent no longer has the record: no home, no access rights page, no log
    for page in ("/portal/home", "/portal/access", "/portal/log"):
        assert jean.get(page).headers.get("location") == "/portal/records", page
    assert "Tom" not in jean.get("/portal/records").text
    refused = post(jean, "/portal/records", {"record": "kid"}, "/portal/records")
    assert refused.headers["location"] == "/portal/records"
    resp = post(tom, "/portal/access/parents/allow", {}, "/portal/access")
    assert resp.status_code == 303 and not _objecting(world)
    assert "Tom" in jean.get("/portal/home").text
    log = tom.get("/portal/log?act=rights&who=all").text
    assert "Objection to the parents&#39; access" in log and "Parents&#39; access allowed again" in log
