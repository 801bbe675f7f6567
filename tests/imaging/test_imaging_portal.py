"""The study's images in the portal: series and previews for the holder and their GP, through
the same access decision and audit as the API, against the real Orthanc (both databases)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from imaging_helpers import PNG_MAGIC, file_study, imaging_study
from orthanc_server import CT_MR_STUDY, OTHER_STUDY, free_port
from portal_http import sign_in
from portal_world import World
from sqlalchemy import select

from sharedcare.audit.models import audit_log
from sharedcare.imaging.endpoints import Registry
from sharedcare.settings import DicomWebServer

pytestmark = pytest.mark.xdist_group("orthanc")

CT, MR = CT_MR_STUDY.series
IMG = re.compile(r'<img src="([^"]+)"')
Browser = Callable[..., TestClient]


@pytest.fixture
def browser(world: World) -> Browser:
    """A new signed-in client (its own cookies, like a separate browser) on the world's app."""

    def new(person: object, lang: str = "en", offset_steps: int = 0) -> TestClient:
        client = TestClient(world.app, follow_redirects=False)
        client.cookies.set("sharedcare_lang", lang)
        sign_in(client, person, offset_steps)  # type: ignore[arg-type]
        return client

    return new


@pytest.fixture
def study_id(world: World) -> str:
    with TestClient(world.app) as client:
        return file_study(client, imaging_study())


def _csrf(client: TestClient) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get("/portal/home").text)
    assert found is not None
    return found.group(1)


def _reads(world: World, subject: str) -> list[str]:
    with world.engine.connect() as conn:
        rows = conn.execute(
            select(audit_log.c.query).where(
                audit_log.c.principal_subject == subject,
                audit_log.c.outcome == 0,
                audit_log.c.patient_id == "pa",
            )
        ).scalars()
        return [q for q in rows if q and q.startswith("$")]


def test_the_holder_sees_the_series_and_their_previews(world: World, browser: Browser, study_id: str) -> None:
    marie = browser(world.patient)
    item = marie.get(f"/portal/items/ImagingStudy/{study_id}")
    assert item.status_code == 200 and f'href="/portal/imaging/{study_id}"' in item.text
    page = marie.get(f"/portal/imaging/{study_id}")
    assert page.status_code == 200, page.text[:500]
    assert "Images of the study" in page.text and CT_MR_STUDY.description in page.text
    assert CT.description in page.text and MR.description in page.text
    assert "3 images" in page.text and "2 images" in page.text
    sources = [s.replace("&amp;", "&") for s in IMG.findall(page.text)]
    assert sources == [
        f"/portal/imaging/{study_id}/preview?series={CT.uid}",
        f"/portal/imaging/{study_id}/preview?series={MR.uid}",
    ]
    for src in sources:
        image = marie.get(src)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert image.content.startswith(PNG_MAGIC)
    assert _reads(world, world.patient.account_id) == [
        "$series",
        f"$preview?series={CT.uid}",
        f"$preview?series={MR.uid}",
    ]
    # the page in French (the language chosen on the page; a second sign-in takes the next code)
    french_browser = browser(world.patient, "fr", 1)
    french_browser.post("/portal/language", data={"csrf": _csrf(french_browser), "lang": "fr", "next": "/"})
    french = french_browser.get(f"/portal/imaging/{study_id}")
    assert french.status_code == 200 and "Images de l'examen" in french.text and "3 images" in french.text


def test_the_gp_opens_the_study_from_the_record_page(world: World, browser: Browser, study_id: str) -> None:
    doctor = browser(world.gp)
    record = doctor.get("/portal/pro/patients/pa")
    assert record.status_code == 200 and f'href="/portal/imaging/{study_id}"' in record.text
    page = doctor.get(f"/portal/imaging/{study_id}")
    assert page.status_code == 200 and CT.description in page.text
    assert 'href="/portal/pro/patients/pa"' in page.text
    image = doctor.get(f"/portal/imaging/{study_id}/preview?series={MR.uid}&instance={MR.instances[1]}")
    assert image.status_code == 200 and image.content.startswith(PNG_MAGIC)
    assert _reads(world, world.gp.account_id) == [
        "$series",
        f"$preview?series={MR.uid}&instance={MR.instances[1]}",
    ]


def test_others_see_nothing_and_foreign_uids_are_refused(
    world: World, browser: Browser, study_id: str
) -> None:
    for person in (world.stranger, world.pharmacist):
        other = browser(person)
        assert other.get(f"/portal/imaging/{study_id}").status_code == 404
        resp = other.get(f"/portal/imaging/{study_id}/preview?series={CT.uid}")
        assert resp.status_code == 404 and "image/png" not in resp.headers["content-type"]
        assert _reads(world, person.account_id) == []
    marie = browser(world.patient)
    foreign = OTHER_STUDY.series[0]
    resp = marie.get(
        f"/portal/imaging/{study_id}/preview?series={foreign.uid}&instance={foreign.instances[0]}"
    )
    assert resp.status_code == 404 and "not part of the study" in resp.text
    resp = marie.get(f"/portal/imaging/{study_id}/preview?series=..%2F..%2Fsystem")
    assert resp.status_code == 400 and "not a valid DICOM UID" in resp.text
    assert marie.get("/portal/imaging/unknown-study").status_code == 404
    anonymous = TestClient(world.app, follow_redirects=False)
    resp = anonymous.get(f"/portal/imaging/{study_id}")
    assert resp.status_code == 303 and resp.headers["location"].startswith("/portal/login")


def test_the_page_says_when_the_image_server_is_down(world: World, browser: Browser, study_id: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}/dicom-web"
    world.app.state.imaging = Registry({"pacs-nord": DicomWebServer(url=dead)}, timeout=1)
    endpoint = world.app.state.fhir.read("Endpoint", "pacs-nord").resource()
    world.app.state.fhir.update("Endpoint", "pacs-nord", {**endpoint, "address": dead})
    page = browser(world.patient).get(f"/portal/imaging/{study_id}")
    assert page.status_code == 502
    assert "image server cannot be reached at the moment" in page.text.replace("&#39;", "'")
    assert "<img" not in page.text
