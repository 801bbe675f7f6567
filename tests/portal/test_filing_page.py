"""The professional's page "Filing after end of care" (art. 9(3), ``access.filing``): their own
ended cares only, the patient's name while the record is open to them, the due date, overdue in
red, and the key documents filed."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from portal_http import sign_in
from portal_world import World

from sharedcare.identity import accounts
from sharedcare.storage.engine import writer
from support import add_care, bearer, professional

Browser = Callable[[], TestClient]
LOINC = "http://loinc.org"


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
    current, late = _rows(page.text)
    assert current.startswith("Marie Muller Consultation with a connection code")
    assert "Filed: Lab results" in current and "Overdue" not in current
    assert "Not filed: Clinical summary or discharge report, Imaging report, Patient summary" in current
    assert 'href="/portal/pro/patients/pa"' in page.text
    # past its due date the record is closed to the GP: the line names the record, in red
    assert late.startswith("Patient/pb") and "Schmit" not in page.text
    assert "Overdue" in late and '<strong class="badge overdue">' in page.text
    assert "Filed:" not in late
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
