"""The document page's actions: the author replaces a document with a new version (ITI-65,
``relatesTo`` replaces), the holder withdraws a personal document they added. Every refusal
changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from portal_http import sign_in, token
from portal_world import World
from sqlalchemy import func, select

from sharedcare.documents import submission
from sharedcare.portal.views import documents
from sharedcare.storage.tables import resource as resources

Browser = Callable[[], TestClient]
PDF = b"%PDF-1.7\n% a discharge letter\n%%EOF\n"
NEW_PDF = b"%PDF-1.7\n% the corrected discharge letter\n%%EOF\n"
LOINC = "http://loinc.org"


def filed(world: World, author: str, title: str = "Discharge letter") -> str:
    """A hospital report of Marie Muller by ``author``, filed as a trusted import: its id."""
    bundle = documents.provide_bundle(
        "pa", author, PDF, "application/pdf", title, {"system": LOINC, "code": "18842-5"}, "R"
    )
    result = submission.provide(
        world.app.state.fhir, world.app.state.blobs, bundle, base_url="http://testserver/fhir"
    )
    locations = [e["response"]["location"] for e in result["entry"]]
    return next(loc.split("/")[1] for loc in locations if loc.startswith("DocumentReference/"))


def stored(world: World, document_id: str) -> dict[str, Any]:
    return dict(world.app.state.fhir.read("DocumentReference", document_id).resource())


def count(world: World, rtype: str) -> int:
    with world.engine.connect() as conn:
        query = select(func.count()).select_from(resources).where(resources.c.type == rtype)
        return int(conn.execute(query).scalar_one())


def counts(world: World) -> tuple[int, int, int]:
    return count(world, "DocumentReference"), count(world, "Binary"), count(world, "List")


@pytest.fixture
def gp(world: World, browser: Browser) -> TestClient:
    client = browser()
    sign_in(client, world.gp)
    return client


@pytest.fixture
def holder(world: World, browser: Browser) -> TestClient:
    client = browser()
    sign_in(client, world.patient)
    return client


def replace(
    client: TestClient,
    address: str,
    fields: dict[str, str],
    data: bytes = NEW_PDF,
    content_type: str = "application/pdf",
    csrf: str | None = None,
) -> httpx.Response:
    csrf = csrf if csrf is not None else token(client, address)
    files = {"file": ("letter.pdf", data, content_type)} if data else None
    return client.post(f"{address}/replace", data={"csrf": csrf, **fields}, files=files)


def test_the_author_replaces_a_document_with_a_new_version(world: World, gp: TestClient) -> None:
    old = filed(world, "Practitioner/gp")
    address = f"/portal/pro/patients/pa/documents/{old}"
    page = gp.get(address)
    assert f'action="{address}/replace"' in page.text and "Replace with a new version" in page.text
    assert '<option value="R" selected>' in page.text  # the old document's confidentiality first
    resp = replace(gp, address, {"title": "Discharge letter (corrected)", "confidentiality": "V"})
    assert resp.status_code == 303, resp.text
    new_address = resp.headers["location"]
    new = new_address.rsplit("/", 1)[1]
    assert new != old and new_address == f"/portal/pro/patients/pa/documents/{new}"
    assert stored(world, old)["status"] == "superseded"
    res = stored(world, new)
    assert res["status"] == "current"
    assert res["relatesTo"] == [{"code": "replaces", "target": {"reference": f"DocumentReference/{old}"}}]
    assert res["author"] == [{"reference": "Practitioner/gp"}]
    assert res["type"]["coding"][0]["code"] == "18842-5"
    assert res["securityLabel"][0]["coding"][0]["code"] == "V"
    shown = gp.get(new_address)
    assert "The new version replaced the document." in shown.text
    assert "Discharge letter (corrected)" in shown.text and "Very restricted" in shown.text
    assert gp.get(f"{new_address}/content").content == NEW_PDF
    # the old version stays readable, marked, and cannot be replaced again
    old_page = gp.get(address)
    assert "Replaced or withdrawn by its author" in old_page.text and "/replace" not in old_page.text
    before = counts(world)
    again = replace(gp, address, {"title": "Third", "confidentiality": "N"})
    assert again.status_code == 403 and "Only the author of a current document" in again.text
    assert counts(world) == before


@pytest.mark.parametrize(
    ("fields", "data", "content_type", "message"),
    [
        ({"title": "x", "confidentiality": "N"}, b"", "application/pdf", "Choose the file"),
        ({"title": "x", "confidentiality": "N"}, b"<html>", "text/html", "Only PDF, JPEG, PNG"),
        ({"title": "x", "confidentiality": "N"}, b"not a pdf", "application/pdf", "Only PDF, JPEG, PNG"),
        ({"title": " ", "confidentiality": "N"}, NEW_PDF, "application/pdf", "Give the document a title"),
        ({"title": "x", "confidentiality": "U"}, NEW_PDF, "application/pdf", "confidentiality"),
    ],
)
def test_a_refused_replacement_changes_nothing(
    world: World, gp: TestClient, fields: dict[str, str], data: bytes, content_type: str, message: str
) -> None:
    old = filed(world, "Practitioner/gp")
    address = f"/portal/pro/patients/pa/documents/{old}"
    before = counts(world)
    resp = replace(gp, address, fields, data, content_type)
    assert resp.status_code == 400
    assert message in resp.text
    assert counts(world) == before
    assert stored(world, old)["status"] == "current"


def test_only_the_author_replaces(world: World, gp: TestClient, browser: Browser) -> None:
    other = filed(world, "Practitioner/stranger")
    address = f"/portal/pro/patients/pa/documents/{other}"
    page = gp.get(address)
    assert page.status_code == 200 and "/replace" not in page.text
    before = counts(world)
    resp = replace(gp, address, {"title": "Mine now", "confidentiality": "N"})
    assert resp.status_code == 403
    assert counts(world) == before and stored(world, other)["status"] == "current"
    # without the CSRF token, and by a professional without access: refused, nothing stored
    mine = filed(world, "Practitioner/gp")
    mine_address = f"/portal/pro/patients/pa/documents/{mine}"
    no_csrf = gp.post(
        f"{mine_address}/replace",
        data={"title": "x", "confidentiality": "N"},
        files={"file": ("a.pdf", NEW_PDF, "application/pdf")},
    )
    assert no_csrf.status_code == 403
    stranger = browser()
    sign_in(stranger, world.stranger)
    csrf = token(stranger, "/portal/pro")
    outsider = replace(stranger, mine_address, {"title": "x", "confidentiality": "N"}, csrf=csrf)
    assert outsider.status_code == 404
    assert stored(world, mine)["status"] == "current"


def holder_upload(client: TestClient, title: str) -> str:
    csrf = token(client, "/portal/documents/upload/new")
    resp = client.post(
        "/portal/documents/upload/new",
        data={"csrf": csrf, "title": title},
        files={"file": ("notes.pdf", PDF, "application/pdf")},
    )
    assert resp.status_code == 303, resp.text
    location: str = resp.headers["location"]
    return location.rsplit("/", 1)[1]


def test_the_holder_withdraws_a_personal_document(world: World, holder: TestClient) -> None:
    doc = holder_upload(holder, "My own notes")
    address = f"/portal/documents/{doc}"
    page = holder.get(address)
    assert "You added this document: you may withdraw it." in page.text
    assert 'value="superseded"' in page.text and 'value="entered-in-error"' not in page.text
    assert "/replace" not in page.text
    no_csrf = holder.post(f"{address}/status", data={"status": "superseded"})
    assert no_csrf.status_code == 403 and stored(world, doc)["status"] == "current"
    wrong = holder.post(
        f"{address}/status", data={"csrf": token(holder, address), "status": "entered-in-error"}
    )
    assert wrong.status_code == 400 and stored(world, doc)["status"] == "current"
    done = holder.post(f"{address}/status", data={"csrf": token(holder, address), "status": "superseded"})
    assert done.status_code == 303, done.text
    assert done.headers["location"] == address
    assert stored(world, doc)["status"] == "superseded"
    after = holder.get(address)
    assert "The status of the document was changed." in after.text
    assert "Replaced or withdrawn by its author" in after.text and 'name="status"' not in after.text


def test_the_holder_cannot_withdraw_a_professionals_document(world: World, holder: TestClient) -> None:
    doc = filed(world, "Practitioner/gp")
    address = f"/portal/documents/{doc}"
    page = holder.get(address)
    assert page.status_code == 200 and 'name="status"' not in page.text
    resp = holder.post(f"{address}/status", data={"csrf": token(holder, address), "status": "superseded"})
    assert resp.status_code == 403
    assert "The status could not be changed" in resp.text
    assert stored(world, doc)["status"] == "current"
