"""The agency's pages (§A.7, §A.8): an administrator registers a minor's parent, who then acts for
the child, and ends the delegation; the helpdesk sees an account's status, unlocks it and issues
a new activation letter; staff read no clinical data on any path; refusals change nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime

import pytest
from fastapi.testclient import TestClient
from portal_http import post, sign_in
from portal_world import MATRICULE_NEW, Person, World, enrol

from sharedcare.access import consent
from sharedcare.access.principals import PrincipalKind
from sharedcare.audit import log as audit
from sharedcare.identity import accounts
from sharedcare.identity.errors import InvalidActivationCode
from sharedcare.identity.matricule import MATRICULE_SYSTEM, generate
from sharedcare.identity.models import AccountStatus
from support import bearer

Browser = Callable[[], TestClient]
ACCOUNTS = "/portal/staff/accounts"
DELEGATIONS = "/portal/staff/delegations"
KID_MATRICULE = generate(date(datetime.now(UTC).year - 9, 3, 14), 33)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@pytest.fixture
def staff(world: World) -> dict[str, Person]:
    """An administrator and a helpdesk agent; Tom Muller (9) with a pending account of his own."""
    world.app.state.fhir.update(
        "Patient",
        "kid",
        {
            "resourceType": "Patient",
            "id": "kid",
            "identifier": [{"system": MATRICULE_SYSTEM, "value": KID_MATRICULE}],
            "name": [{"family": "Muller", "given": ["Tom"]}],
            "birthDate": date(datetime.now(UTC).year - 9, 3, 14).isoformat(),
        },
    )
    world.app.state.fhir.update(
        "Condition",
        "kid-asthma",
        {
            "resourceType": "Condition",
            "id": "kid-asthma",
            "subject": {"reference": "Patient/kid"},
            "code": {"text": "Childhood asthma"},
        },
    )
    with accounts.transaction(world.engine) as conn:
        accounts.create_account(
            conn, PrincipalKind.PATIENT, display_name="Tom Muller", matricule=KID_MATRICULE, patient_id="kid"
        )
    people = {}
    for kind, login, name in (
        (PrincipalKind.ADMIN, "agency.admin", "Agency Admin"),
        (PrincipalKind.HELPDESK, "help.desk", "Help Desk"),
    ):
        people[login] = enrol(world.engine, world.settings, kind, login, display_name=name, username=login)
    return people


def _signed_in(browser: Browser, person: Person, offset_steps: int = 0) -> TestClient:
    """A new browser signed in as ``person`` (a second sign-in needs the next TOTP step)."""
    c = browser()
    sign_in(c, person, offset_steps)
    return c


def _delegations(world: World, patient: str = "kid") -> list[consent.Representation]:
    with world.engine.connect() as conn:
        return consent.representations(conn, patient_id=patient, now=_now())


def test_admin_registers_a_parent_who_then_acts_for_the_child(
    world: World, staff: dict[str, Person], browser: Browser
) -> None:
    admin = _signed_in(browser, staff["agency.admin"])
    hub = admin.get("/portal/").text
    assert DELEGATIONS in hub and ACCOUNTS in hub and "not built yet" not in hub
    unknown = post(admin, f"{DELEGATIONS}/find", {"holder": "1234"}, DELEGATIONS)
    assert unknown.status_code == 404 and "No record holder has this matricule." in unknown.text
    found = post(admin, f"{DELEGATIONS}/find", {"holder": KID_MATRICULE}, DELEGATIONS)
    assert found.status_code == 303 and KID_MATRICULE not in found.headers["location"]
    page = admin.get(DELEGATIONS).text
    assert "Representatives of Tom Muller" in page and "No one represents this holder." in page
    assert "Childhood asthma" not in page
    form = {"login": world.representative.login, "kind": "parent", "ends": "", "legal_basis": ""}
    refused = [
        (form, 400, "Give the legal basis"),
        ({**form, "legal_basis": "x", "kind": "assistant"}, 400, "Choose the kind of representative."),
        ({**form, "legal_basis": "x", "login": "no.such.person"}, 404, "No account uses this"),
        ({**form, "legal_basis": "x", "login": KID_MATRICULE}, 400, "cannot represent themselves"),
        ({**form, "legal_basis": "x", "ends": "2999-01-01"}, 409, "18th birthday"),
        ({**form, "legal_basis": "x", "ends": "soon"}, 400, "as a date"),
    ]
    for data, status, message in refused:
        resp = post(admin, DELEGATIONS, data, DELEGATIONS)
        assert resp.status_code == status and message in resp.text, (data, resp.text[:300])
    assert _delegations(world) == []
    done = post(admin, DELEGATIONS, {**form, "legal_basis": "Birth certificate 2017/123"}, DELEGATIONS)
    assert done.status_code == 303
    [registered] = _delegations(world)
    assert registered.kind == "parent" and registered.account_id == world.representative.account_id
    page = admin.get(DELEGATIONS).text
    assert (
        "Jean Muller" in page
        and "Birth certificate 2017/123" in page
        and "The representative is registered." in page
    )
    # the parent now acts for the child
    parent = _signed_in(browser, world.representative)
    assert "Tom Muller" in parent.get("/portal/records").text
    post(parent, "/portal/records", {"record": "kid"}, "/portal/records")
    assert "Childhood asthma" in parent.get("/portal/home").text
    assert parent.get("/portal/log").status_code == 200  # the agency's acts are in the child's log
    # the admin ends the delegation: the parent's access goes at once
    assert post(admin, f"{DELEGATIONS}/end", {"delegation_id": "nope"}, DELEGATIONS).status_code == 404
    ended = post(admin, f"{DELEGATIONS}/end", {"delegation_id": registered.id}, DELEGATIONS)
    assert ended.status_code == 303 and _delegations(world) == []
    assert parent.get("/portal/home").status_code in (303, 403)
    with world.engine.connect() as conn:
        log = audit.query(conn, patient_id="kid", principal_subject=staff["agency.admin"].account_id)
    assert {e.record.interaction for e in log} >= {
        "staff-list-delegations",
        f"appoint parent account {world.representative.account_id}",
        f"remove parent account {world.representative.account_id}",
    }


def test_admin_cannot_make_an_adult_a_parents_child(
    world: World, staff: dict[str, Person], browser: Browser
) -> None:
    admin = _signed_in(browser, staff["agency.admin"])
    post(admin, f"{DELEGATIONS}/find", {"holder": world.patient.login}, DELEGATIONS)
    form = {"login": world.representative.login, "kind": "parent", "legal_basis": "x"}
    resp = post(admin, DELEGATIONS, form, DELEGATIONS)
    assert resp.status_code == 409 and "only a minor" in resp.text
    guardian = post(
        admin, DELEGATIONS, {**form, "kind": "guardian", "legal_basis": "Court 2026/7"}, DELEGATIONS
    )
    assert guardian.status_code == 303  # a protected adult's tutor
    assert [d.kind for d in _delegations(world, "pa")] == ["guardian"]


def test_helpdesk_sees_the_status_unlocks_and_sends_a_new_letter(
    world: World, staff: dict[str, Person], browser: Browser
) -> None:
    _signed_in(browser, world.patient)  # a last sign-in to show
    with accounts.transaction(world.engine) as conn:
        accounts.set_status(conn, world.patient.account_id, AccountStatus.LOCKED)
    desk = _signed_in(browser, staff["help.desk"])
    assert ACCOUNTS in desk.get("/portal/").text and DELEGATIONS not in desk.get("/portal/").text
    found = post(desk, f"{ACCOUNTS}/find", {"login": world.patient.login}, ACCOUNTS)
    assert found.status_code == 303 and world.patient.login not in found.headers["location"]
    page = desk.get(ACCOUNTS).text
    assert "Marie Muller" in page and 'id="account-state">Locked' in page
    assert "Second factor set</dt><dd>Yes" in page and "Last sign-in</dt><dd>Never" not in page
    for clinical in ("Asthma", "Glucose", "Discharge", "Haemoglobin"):
        assert clinical not in page
    other = post(desk, f"{ACCOUNTS}/unlock", {"account_id": world.gp.account_id}, ACCOUNTS)
    assert other.status_code == 404  # only the account looked up
    assert (
        post(desk, f"{ACCOUNTS}/unlock", {"account_id": world.patient.account_id}, ACCOUNTS).status_code
        == 303
    )
    with world.engine.connect() as conn:
        assert accounts.get_account(conn, world.patient.account_id).status is AccountStatus.ACTIVE
    again = post(desk, f"{ACCOUNTS}/unlock", {"account_id": world.patient.account_id}, ACCOUNTS)
    assert again.status_code == 409 and "not locked" in again.text
    # a new activation letter for Nora's pending account withdraws the old code
    post(desk, f"{ACCOUNTS}/find", {"login": MATRICULE_NEW}, ACCOUNTS)
    with world.engine.connect() as conn:
        nora = accounts.find_by_login(conn, MATRICULE_NEW)
    assert nora is not None and "Enrolment not finished" in desk.get(ACCOUNTS).text
    letter = post(desk, f"{ACCOUNTS}/activation", {"account_id": nora.id}, ACCOUNTS)
    assert letter.status_code == 200
    code = letter.text.split('id="activation-code">', 1)[1].split("<", 1)[0]
    with accounts.transaction(world.engine) as conn, pytest.raises(InvalidActivationCode):
        accounts.activate(
            conn,
            world.settings,
            code=world.pending_code,
            matricule_or_login=MATRICULE_NEW,
            contact="n@example.org",
        )
    with accounts.transaction(world.engine) as conn:
        accounts.activate(
            conn, world.settings, code=code, matricule_or_login=MATRICULE_NEW, contact="n@example.org"
        )
    with world.engine.connect() as conn:
        log = audit.query(conn, principal_subject=staff["help.desk"].account_id)
    assert {e.record.interaction for e in log} >= {
        f"account-status account {world.patient.account_id}",
        f"account-unlock account {world.patient.account_id}",
        f"activation-letter account {nora.id}",
    }


def test_staff_read_no_clinical_data_and_pages_are_for_their_role(
    world: World, staff: dict[str, Person], browser: Browser
) -> None:
    for login in ("agency.admin", "help.desk"):
        c = _signed_in(browser, staff[login])
        for page in ("/portal/home", "/portal/access", "/portal/log", "/portal/pro"):
            assert c.get(page).status_code == 403, (login, page)
        with world.engine.connect() as conn:
            principal = accounts.principal_for(accounts.get_account(conn, staff[login].account_id))
        h = bearer(world.app, principal, "user/*.cruds")
        client = TestClient(world.app)
        assert client.get("/fhir/Observation/hb-a", headers=h).status_code == 404
        assert client.get("/fhir/Condition/asthma-a", headers=h).status_code == 404
        assert client.get("/fhir/Observation?subject=Patient/pa", headers=h).json().get("entry", []) == []
        assert client.get("/fhir/Patient/pa/$everything", headers=h).status_code == 404
    desk = _signed_in(browser, staff["help.desk"], offset_steps=1)
    assert desk.get(DELEGATIONS).status_code == 403
    patient = _signed_in(browser, world.patient)
    assert patient.get(ACCOUNTS).status_code == 403 and patient.get(DELEGATIONS).status_code == 403


def test_forms_without_the_csrf_token_are_refused(
    world: World, staff: dict[str, Person], browser: Browser
) -> None:
    with accounts.transaction(world.engine) as conn:
        accounts.set_status(conn, world.patient.account_id, AccountStatus.LOCKED)
    desk = _signed_in(browser, staff["help.desk"])
    post(desk, f"{ACCOUNTS}/find", {"login": world.patient.login}, ACCOUNTS)
    resp = desk.post(f"{ACCOUNTS}/unlock", data={"account_id": world.patient.account_id})
    assert resp.status_code == 403
    with world.engine.connect() as conn:
        assert accounts.get_account(conn, world.patient.account_id).status is AccountStatus.LOCKED
    admin = _signed_in(browser, staff["agency.admin"])
    post(admin, f"{DELEGATIONS}/find", {"holder": KID_MATRICULE}, DELEGATIONS)
    form = {"login": world.representative.login, "kind": "parent", "legal_basis": "x", "csrf": "x" * 43}
    assert admin.post(DELEGATIONS, data=form).status_code == 403
    assert _delegations(world) == []


@pytest.mark.parametrize(
    ("lang", "accounts_title", "delegations_title"),
    [("fr", "Assistance aux comptes", "Parents et tuteurs"), ("de", "Konto-Support", "Eltern und Vormünder")],
)
def test_staff_pages_render_in_french_and_german(
    world: World,
    staff: dict[str, Person],
    browser: Browser,
    lang: str,
    accounts_title: str,
    delegations_title: str,
) -> None:
    with accounts.transaction(world.engine) as conn:
        accounts.set_language(conn, staff["agency.admin"].account_id, lang)
    admin = _signed_in(browser, staff["agency.admin"])
    post(admin, f"{ACCOUNTS}/find", {"login": world.patient.login}, ACCOUNTS)
    page = admin.get(ACCOUNTS).text
    assert f'<html lang="{lang}">' in page and accounts_title in page
    post(admin, f"{DELEGATIONS}/find", {"holder": KID_MATRICULE}, DELEGATIONS)
    page = admin.get(DELEGATIONS).text
    assert f'<html lang="{lang}">' in page and delegations_title in page
    assert delegations_title in admin.get("/portal/").text


def test_the_holder_appoints_an_assistant_only_with_an_end_and_a_legal_basis(
    world: World, browser: Browser
) -> None:
    holder = _signed_in(browser, world.patient)
    form = {"login": world.representative.login, "kind": "assistant", "ends": "", "legal_basis": "letter"}
    for data in (form, {**form, "ends": "2099-12-31", "legal_basis": " "}):
        refused = post(holder, "/portal/access/representatives", data, "/portal/access")
        assert refused.status_code == 400 and "give the end date and the legal basis" in refused.text
    assert _delegations(world, "pa") == []
    done = post(holder, "/portal/access/representatives", {**form, "ends": "2099-12-31"}, "/portal/access")
    assert done.status_code == 303
    [assistant] = _delegations(world, "pa")
    assert assistant.kind == "assistant" and assistant.legal_basis == "letter" and assistant.related_person_id
