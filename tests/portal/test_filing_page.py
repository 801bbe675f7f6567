"""The professional's page "Filing after end of care" (art. 9(3), ``access.filing``): their own
ended cares only, and only while the record is open to them (name, due date, the key documents
filed that they may read); a record their access decision closes leaves no trace on the page."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from portal_http import sign_in
from portal_world import Person, World, enrol

from sharedcare.access import consent
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.identity import accounts
from sharedcare.storage.engine import writer
from support import add_care, bearer, professional

HOLDER_B = Principal(PrincipalKind.PATIENT, "acct-pb", patient_id="pb")

Browser = Callable[[], TestClient]
LOINC = "http://loinc.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _rows(page: str) -> list[str]:
    """The table rows of the page, tags stripped, whitespace folded."""
    rows = re.findall(r"<tr>(.*?)</tr>", page, flags=re.S)[1:]  # past the header
    return [" ".join(re.sub(r"<[^>]+>", " ", row).split()) for row in rows]


def test_the_professional_sees_their_own_ended_cares(world: World, browser: Browser) -> None:
    now = _now()
    with writer(world.engine).begin() as conn:  # a consultation with Paul Schmit 26 days ago
        add_care(conn, "gp-old", "pb", "gp", now - timedelta(days=25), ends=timedelta(days=14))
        add_care(conn, "stranger-old", "pa", "stranger", now - timedelta(days=3), ends=timedelta(days=9))
    # the GP files a lab report in Marie Muller's record (her code was used yesterday: world)
    api = TestClient(world.app)
    lab = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "11502-2"}]},
        "subject": {"reference": "Patient/pa"},
        "result": [{"reference": "Observation/glucose-a"}],
    }
    filed = api.post(
        "/fhir/DiagnosticReport", json=lab, headers=bearer(world.app, professional("gp"), "user/*.cruds")
    )
    assert filed.status_code == 201, filed.text
    gp = browser()
    sign_in(gp, world.gp)
    home = gp.get("/portal/pro")
    assert 'href="/portal/pro/filing"' in home.text and "Filing after end of care" in home.text
    page = gp.get("/portal/pro/filing")
    assert page.status_code == 200
    (current,) = _rows(page.text)
    assert current.startswith("Marie Muller Consultation with a connection code")
    assert "Filed: Lab results" in current and "Overdue" not in current
    assert "Not filed: Clinical summary or discharge report, Imaging report, Patient summary" in current
    assert 'href="/portal/pro/patients/pa"' in page.text
    # past its due date the record is closed to the GP: no line, no id, no count
    assert "Schmit" not in page.text and "pb" not in page.text
    # another professional sees only their own; a holder has no such page
    stranger = browser()
    sign_in(stranger, world.stranger)
    theirs = _rows(stranger.get("/portal/pro/filing").text)
    assert len(theirs) == 1 and theirs[0].startswith("Marie Muller") and "Filed:" not in theirs[0]
    pharmacist = browser()
    sign_in(pharmacist, world.pharmacist)
    empty = pharmacist.get("/portal/pro/filing")
    assert empty.status_code == 200 and "No ended care has documents due." in empty.text
    assert "Muller" not in empty.text and "Patient/pb" not in empty.text
    holder = browser()
    sign_in(holder, world.patient)
    assert holder.get("/portal/pro/filing").status_code == 403


def test_the_page_in_french(world: World, browser: Browser) -> None:
    gp = browser()
    sign_in(gp, world.gp)
    with accounts.transaction(world.engine) as conn:
        accounts.set_language(conn, world.gp.account_id, "fr")
    page = gp.get("/portal/pro/filing")
    assert page.status_code == 200
    assert "Dépôt après la fin de la prise en charge" in page.text
    assert "Non déposé : Résultats de laboratoire" in page.text


def _main(page: str) -> str:
    """The page's own content (the header names the person signed in)."""
    return page[page.index('<main id="main"') : page.index("</main>")]


def _hospital_stay(world: World) -> dict[str, str]:
    """An emergency stay of Paul Schmit at the Hôpital du Nord, ended 3 days ago (due in 12), a
    lab report and an imaging report its doctor filed; returns the reports' references."""
    now = _now()
    with writer(world.engine).begin() as conn:
        add_care(
            conn, "stay", "pb", None, now - timedelta(days=2), organization_id="hosp", context="emergency"
        )
    api = TestClient(world.app)
    doctor = bearer(world.app, professional("hdoc", organization="hosp"), "user/*.cruds")
    refs = {}
    for name, code, section in (("lab", "11502-2", "HM"), ("imaging", "18748-4", "RAD")):
        body = {
            "resourceType": "DiagnosticReport",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "category": [{"coding": [{"system": V2_0074, "code": section}]}],
            "subject": {"reference": "Patient/pb"},
            "result": [{"reference": "Observation/glucose-b"}],
        }
        created = api.post("/fhir/DiagnosticReport", json=body, headers=doctor)
        assert created.status_code == 201, created.text
        refs[name] = f"DiagnosticReport/{created.json()['id']}"
    return refs


def _staff(world: World, login: str, practitioner: str, profession: str) -> Person:
    return enrol(
        world.engine,
        world.settings,
        PrincipalKind.PROFESSIONAL,
        login,
        display_name=login,
        username=login,
        practitioner_id=practitioner,
        profession=profession,
        organization_id="hosp",
    )


def test_the_facilitys_staff_see_what_their_own_access_decision_shows(world: World, browser: Browser) -> None:
    refs = _hospital_stay(world)
    nurse = _staff(world, "nurse.n", "nurse-n", "inf")
    other_nurse = _staff(world, "nurse.m", "nurse-m", "inf")
    pharmacist = _staff(world, "pharm.h", "pharm-h", "pha")
    pages: dict[str, Browser] = {}
    for name, person in (("n", nurse), ("m", other_nurse), ("ph", pharmacist), ("x", world.pharmacist)):
        pages[name] = browser()
        sign_in(pages[name], person)
    # the ordinary case: the name, the due date, the kinds filed
    (line,) = _rows(pages["n"].get("/portal/pro/filing").text)
    assert line.startswith("Paul Schmit Emergency")
    assert "Filed: Lab results, Imaging report" in line and "Overdue" not in line
    # the pharmacists' column does not read imaging: the imaging report is not counted for them
    (line,) = _rows(pages["ph"].get("/portal/pro/filing").text)
    assert "Filed: Lab results" in line and "Imaging report, Patient summary" in line
    # the holder hides the imaging report from nurse M and blocks nurse N
    now = _now()
    with writer(world.engine).begin() as conn:
        consent.mask(conn, world.app.state.fhir, HOLDER_B, "pb", "nurse-m", refs["imaging"], now)
        consent.block(conn, world.app.state.fhir, HOLDER_B, "pb", "nurse-n", now)
    (line,) = _rows(pages["m"].get("/portal/pro/filing").text)
    assert (
        "Filed: Lab results" in line
        and "Not filed:" in line
        and "Imaging report" in line.split("Not filed:")[1]
    )
    # N's page is a stranger's page for that record: no line, no id, no count
    blocked = pages["n"].get("/portal/pro/filing")
    stranger = pages["x"].get("/portal/pro/filing")
    assert blocked.status_code == stranger.status_code == 200
    assert _main(blocked.text) == _main(stranger.text)
    assert "Schmit" not in blocked.text and "pb" not in blocked.text and "Filed:" not in blocked.text
