"""The patient summary page: the IPS generated for the reader, as tables in the reader's language,
empty required sections said in words, record text escaped, the generation audited, and the
professional's page limited to records they may open."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from portal_http import post, sign_in
from portal_world import World
from sqlalchemy import func, select

from sharedcare.audit.models import audit_log

Browser = Callable[[], TestClient]
HOSTILE = "Asthma <script>alert(1)</script>"
CONDITION = {
    "resourceType": "Condition",
    "id": "c-asthma",
    "clinicalStatus": {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
    },
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "195967001"}], "text": HOSTILE},
    "subject": {"reference": "Patient/pa"},
    "onsetDateTime": "2019-03-04",
}


@pytest.fixture
def record(world: World) -> World:
    world.app.state.fhir.update("Condition", CONDITION["id"], CONDITION)
    return world


def audit_count(world: World) -> int:
    with world.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit_log)).scalar_one())


def test_holder_sees_the_summary_in_english(record: World, browser: Browser) -> None:
    client = browser()
    sign_in(client, record.patient)
    home = client.get("/portal/home")
    assert 'href="/portal/summary"' in home.text
    before = audit_count(record)
    page = client.get("/portal/summary")
    assert page.status_code == 200, page.text
    assert "<h2" in page.text and "Problem list" in page.text
    assert "Asthma &lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<script>alert(1)" not in page.text
    assert "2019-03-04" in page.text and "active" in page.text
    # allergies and medication are required: present, and empty in words
    assert "Allergies and intolerances" in page.text and "Medication summary" in page.text
    assert page.text.count("Nothing is known in the record for this part of the summary.") == 2
    assert audit_count(record) > before


@pytest.mark.parametrize(
    ("lang", "heading", "empty"),
    [
        (
            "fr",
            "Liste des problèmes",
            "Le dossier ne contient aucune information pour cette partie du résumé.",
        ),
        ("de", "Problemliste", "Für diesen Teil der Zusammenfassung ist in der Akte nichts bekannt."),
    ],
)
def test_summary_in_french_and_german(
    record: World, browser: Browser, lang: str, heading: str, empty: str
) -> None:
    client = browser()
    sign_in(client, record.patient)
    post(client, "/portal/language", {"lang": lang, "next": "/portal/summary"}, "/portal/home")
    page = client.get("/portal/summary")
    assert page.status_code == 200
    assert heading in page.text and empty in page.text


def test_professional_summary_only_for_their_patients(record: World, browser: Browser) -> None:
    gp = browser()
    sign_in(gp, record.gp)
    assert 'href="/portal/pro/patients/pa/summary"' in gp.get("/portal/pro/patients/pa").text
    page = gp.get("/portal/pro/patients/pa/summary")
    assert page.status_code == 200 and "Problem list" in page.text and "Asthma" in page.text
    stranger = browser()
    sign_in(stranger, record.stranger)
    refused = stranger.get("/portal/pro/patients/pa/summary")
    unknown = stranger.get("/portal/pro/patients/nobody/summary")
    assert refused.status_code == unknown.status_code == 404
    assert "Asthma" not in refused.text
