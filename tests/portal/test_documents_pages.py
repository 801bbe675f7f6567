"""The document viewer and the holder's upload: content through the reader's access decision,
the same 404 for hidden and unknown documents, uploads checked before anything is stored."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from portal_http import sign_in, token
from portal_world import World
from sqlalchemy import func, select

from sharedcare.access.categories import DOCUMENT_TYPE_SYSTEM, PERSONAL_DOCUMENT
from sharedcare.fhir.store import CONFIDENTIALITY_SYSTEM, utcnow
from sharedcare.portal.views import documents
from sharedcare.settings import Settings
from sharedcare.storage.tables import resource as resources
from support import add_care

Browser = Callable[[], TestClient]
PDF = b"%PDF-1.7\n% a discharge letter\n%%EOF\n"
LOINC = "http://loinc.org"


def file_for(world: World, patient: str, data: bytes = PDF, content_type: str = "application/pdf") -> str:
    """A hospital report filed through the documents module (as a trusted import): its id."""
    from sharedcare.documents import submission

    bundle = documents.provide_bundle(
        patient,
        "Practitioner/gp",
        data,
        content_type,
        "Discharge letter",
        {"system": LOINC, "code": "18842-5"},
    )
    result = submission.provide(
        world.app.state.fhir, world.app.state.blobs, bundle, base_url="http://testserver/fhir"
    )
    locations = [e["response"]["location"] for e in result["entry"]]
    return next(loc.split("/")[1] for loc in locations if loc.startswith("DocumentReference/"))


def count(world: World, rtype: str) -> int:
    with world.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(resources).where(resources.c.type == rtype)
            ).scalar_one()
        )


@pytest.fixture
def holder(world: World, browser: Browser) -> TestClient:
    client = browser()
    sign_in(client, world.patient)
    return client


def upload(client: TestClient, title: str, name: str, data: bytes, content_type: str) -> httpx.Response:
    csrf = token(client, "/portal/documents/upload/new")
    return client.post(
        "/portal/documents/upload/new",
        data={"csrf": csrf, "title": title},
        files={"file": (name, data, content_type)},
    )


def test_holder_sees_a_pdf_inline(world: World, holder: TestClient) -> None:
    doc = file_for(world, "pa")
    page = holder.get(f"/portal/documents/{doc}")
    assert page.status_code == 200, page.text
    assert "Discharge letter" in page.text and "Dr Claire Hoffmann" in page.text
    assert f'<iframe class="document-frame" src="/portal/documents/{doc}/content"' in page.text
    assert "frame-src 'self'" in page.headers["content-security-policy"]
    content = holder.get(f"/portal/documents/{doc}/content")
    assert content.status_code == 200
    assert content.content == PDF
    assert content.headers["content-type"] == "application/pdf"
    assert content.headers["content-disposition"] == "inline"
    assert "frame-ancestors 'self'" in content.headers["content-security-policy"]
    timeline = holder.get("/portal/timeline")
    assert f'href="/portal/documents/{doc}"' in timeline.text


def test_other_content_is_a_sandboxed_download(world: World, holder: TestClient) -> None:
    doc = file_for(world, "pa", b"<html><script>alert(1)</script></html>", "text/html")
    content = holder.get(f"/portal/documents/{doc}/content")
    assert content.status_code == 200
    assert content.headers["content-disposition"] == "attachment"
    assert "sandbox" in content.headers["content-security-policy"]
    page = holder.get(f"/portal/documents/{doc}")
    assert "<iframe" not in page.text and "Download the document" in page.text


def test_hidden_and_unknown_documents_answer_the_same_404(
    world: World, holder: TestClient, browser: Browser
) -> None:
    other = file_for(world, "pb")
    hidden = holder.get(f"/portal/documents/{other}")
    unknown = holder.get("/portal/documents/no-such-document")
    assert hidden.status_code == unknown.status_code == 404
    assert "This document was not found" in hidden.text
    assert hidden.text.replace(other, "ID") == unknown.text.replace("no-such-document", "ID")
    assert holder.get(f"/portal/documents/{other}/content").status_code == 404
    stranger = browser()
    sign_in(stranger, world.stranger)
    mine = file_for(world, "pa")
    assert stranger.get(f"/portal/pro/patients/pa/documents/{mine}").status_code == 404
    assert stranger.get(f"/portal/pro/patients/pa/documents/{mine}/content").status_code == 404
    gp = browser()
    sign_in(gp, world.gp)
    assert gp.get(f"/portal/pro/patients/pa/documents/{mine}/content").content == PDF
    assert gp.get(f"/portal/pro/patients/pb/documents/{mine}").status_code == 404


def test_holder_uploads_a_pdf(world: World, holder: TestClient) -> None:
    resp = upload(holder, "My vaccination card", "card.pdf", PDF, "application/pdf")
    assert resp.status_code == 303, resp.text
    address = resp.headers["location"]
    page = holder.get(address)
    assert "My vaccination card" in page.text and "Personal documents" in page.text
    assert holder.get(f"{address}/content").content == PDF


@pytest.fixture
def small_world(settings: Settings) -> Iterator[World]:
    from portal_world import build_world

    from sharedcare.app import create_app
    from support import truncate

    limited = settings.model_copy(update={"max_content_bytes": 64})
    app = create_app(limited)
    truncate(app.state.engine)
    w = build_world(app, limited)
    yield w
    w.engine.dispose()


@pytest.mark.parametrize(
    ("name", "data", "content_type", "message"),
    [
        ("page.html", b"<html></html>", "text/html", "Only PDF, JPEG, PNG and plain text"),
        ("fake.pdf", b"MZ not a pdf", "application/pdf", "Only PDF, JPEG, PNG and plain text"),
        ("big.pdf", b"%PDF-" + b"x" * 100, "application/pdf", "The file is too large: the limit is 64 B"),
    ],
)
def test_rejected_uploads_store_nothing(
    small_world: World, name: str, data: bytes, content_type: str, message: str
) -> None:
    client = TestClient(small_world.app, follow_redirects=False)
    client.cookies.set("sharedcare_lang", "en")
    sign_in(client, small_world.patient)
    before = count(small_world, "DocumentReference"), count(small_world, "Binary")
    resp = upload(client, "Something", name, data, content_type)
    assert resp.status_code == 400
    assert message in resp.text
    assert (count(small_world, "DocumentReference"), count(small_world, "Binary")) == before


def test_upload_needs_the_csrf_token(world: World, holder: TestClient) -> None:
    before = count(world, "DocumentReference")
    resp = holder.post(
        "/portal/documents/upload/new", data={"title": "x"}, files={"file": ("a.pdf", PDF, "application/pdf")}
    )
    assert resp.status_code == 403
    assert count(world, "DocumentReference") == before


# -- the professional's upload and status changes ----------------------------------------------------

PRO_NEW = "/portal/pro/patients/pa/documents/new"


@pytest.fixture
def gp(world: World, browser: Browser) -> TestClient:
    client = browser()
    sign_in(client, world.gp)
    return client


def pro_upload(client: TestClient, fields: dict[str, str], data: bytes = PDF) -> httpx.Response:
    csrf = token(client, PRO_NEW)
    return client.post(
        PRO_NEW, data={"csrf": csrf, **fields}, files={"file": ("letter.pdf", data, "application/pdf")}
    )


def stored(world: World, document_id: str) -> dict[str, object]:
    return dict(world.app.state.fhir.read("DocumentReference", document_id).resource())


def test_professional_uploads_a_restricted_report(world: World, gp: TestClient) -> None:
    form = gp.get(PRO_NEW)
    assert form.status_code == 200
    assert 'value="http://loinc.org|18842-5"' in form.text  # a hospital report type
    assert "Personal documents —" not in form.text  # the holder's own category is not offered
    assert 'href="/portal/pro/patients/pa/documents/new"' in gp.get("/portal/pro/patients/pa").text
    resp = pro_upload(
        gp, {"title": "Discharge letter, cardiology", "type": f"{LOINC}|18842-5", "confidentiality": "R"}
    )
    assert resp.status_code == 303, resp.text
    address = resp.headers["location"]
    document_id = address.rsplit("/", 1)[1]
    res = stored(world, document_id)
    assert res["author"] == [{"reference": "Practitioner/gp"}]
    assert res["securityLabel"][0]["coding"][0]["code"] == "R"  # type: ignore[index]
    assert res["type"]["coding"][0]["code"] == "18842-5"  # type: ignore[index]
    page = gp.get(address)
    assert "Restricted" in page.text and "Discharge letter, cardiology" in page.text
    assert gp.get(f"{address}/content").content == PDF
    assert 'value="superseded"' in page.text and 'value="entered-in-error"' in page.text


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"title": "x", "type": "http://loinc.org|nope", "confidentiality": "N"}, "Choose the type"),
        (
            {"title": "x", "type": f"{DOCUMENT_TYPE_SYSTEM}|{PERSONAL_DOCUMENT}", "confidentiality": "N"},
            "type",
        ),
        ({"title": "x", "type": "http://loinc.org|18842-5", "confidentiality": "U"}, "confidentiality"),
        (
            {"title": " ", "type": "http://loinc.org|18842-5", "confidentiality": "N"},
            "Give the document a title",
        ),
    ],
)
def test_professional_upload_refusals_store_nothing(
    world: World, gp: TestClient, fields: dict[str, str], message: str
) -> None:
    before = count(world, "DocumentReference"), count(world, "Binary")
    resp = pro_upload(gp, fields)
    assert resp.status_code == 400
    assert message in resp.text
    assert (count(world, "DocumentReference"), count(world, "Binary")) == before


def test_professional_without_access_cannot_upload(world: World, browser: Browser) -> None:
    stranger = browser()
    sign_in(stranger, world.stranger)
    assert stranger.get(PRO_NEW).status_code == 404
    before = count(world, "DocumentReference")
    csrf = token(stranger, "/portal/pro")
    resp = stranger.post(
        PRO_NEW,
        data={"csrf": csrf, "title": "x", "type": f"{LOINC}|18842-5", "confidentiality": "N"},
        files={"file": ("a.pdf", PDF, "application/pdf")},
    )
    assert resp.status_code == 404
    assert count(world, "DocumentReference") == before


def test_author_deprecates_then_marks_in_error(world: World, gp: TestClient) -> None:
    doc = file_for(world, "pa")  # authored by Practitioner/gp
    address = f"/portal/pro/patients/pa/documents/{doc}"
    csrf = token(gp, address)
    refused = gp.post(f"{address}/status", data={"status": "superseded"})
    assert refused.status_code == 403  # no CSRF token
    assert stored(world, doc)["status"] == "current"
    done = gp.post(f"{address}/status", data={"csrf": csrf, "status": "superseded"})
    assert done.status_code == 303, done.text
    assert stored(world, doc)["status"] == "superseded"
    page = gp.get(address)
    assert "Replaced or withdrawn by its author" in page.text
    assert 'value="superseded"' not in page.text and 'value="entered-in-error"' in page.text
    again = gp.post(f"{address}/status", data={"csrf": csrf, "status": "superseded"})
    assert again.status_code == 422 and "cannot become" in again.text
    gp.post(f"{address}/status", data={"csrf": csrf, "status": "entered-in-error"})
    assert stored(world, doc)["status"] == "entered-in-error"


def row_level(world: World, rtype: str, rid: str) -> str | None:
    with world.engine.connect() as conn:
        level: str | None = conn.execute(
            select(resources.c.confidentiality).where(resources.c.type == rtype, resources.c.id == rid)
        ).scalar_one()
    return level


def test_the_author_sets_the_confidentiality_and_its_readers_change(
    world: World, gp: TestClient, browser: Browser
) -> None:
    """The author's page changes a document's level; its content follows, another GP in the
    patient's care loses it at V (not the author's side) and gets it back at N; the other GP
    is offered no such form and is refused."""
    doc = file_for(world, "pa")  # authored by Practitioner/gp, confidentiality N
    binary = str(stored(world, doc)["content"][0]["attachment"]["url"]).rsplit("/", 1)[1]  # type: ignore[index]
    with world.engine.begin() as conn:
        add_care(conn, "kieffer-solo", "pa", "stranger", utcnow())
    other = browser()
    sign_in(other, world.stranger)
    address = f"/portal/pro/patients/pa/documents/{doc}"
    page = gp.get(address)
    assert f'action="{address}/confidentiality"' in page.text
    assert 'name="confidentiality"' not in other.get(address).text
    other_csrf = token(other, address)
    csrf = token(gp, address)
    assert gp.post(f"{address}/confidentiality", data={"confidentiality": "V"}).status_code == 403  # CSRF
    wrong = gp.post(f"{address}/confidentiality", data={"csrf": csrf, "confidentiality": "X"})
    assert wrong.status_code == 400 and "Choose the confidentiality of the document." in wrong.text
    assert row_level(world, "DocumentReference", doc) == "N"

    done = gp.post(f"{address}/confidentiality", data={"csrf": csrf, "confidentiality": "V"})
    assert done.status_code == 303, done.text
    labels = stored(world, doc)["securityLabel"]
    assert labels == [{"coding": [{"system": CONFIDENTIALITY_SYSTEM, "code": "V"}]}]
    assert row_level(world, "DocumentReference", doc) == "V" and row_level(world, "Binary", binary) == "V"
    assert "Very restricted" in gp.get(address).text  # the author still reads it
    assert other.get(address).status_code == 404
    assert other.get(f"{address}/content").status_code == 404
    refused = other.post(f"{address}/confidentiality", data={"csrf": other_csrf, "confidentiality": "N"})
    assert refused.status_code == 404 and row_level(world, "DocumentReference", doc) == "V"

    gp.post(f"{address}/confidentiality", data={"csrf": csrf, "confidentiality": "N"})
    assert row_level(world, "DocumentReference", doc) == "N" and row_level(world, "Binary", binary) == "N"
    assert other.get(f"{address}/content").content == PDF
    refused = other.post(f"{address}/confidentiality", data={"csrf": other_csrf, "confidentiality": "R"})
    assert refused.status_code == 403 and "Only the author" in refused.text
    assert row_level(world, "DocumentReference", doc) == "N"


def test_only_the_author_may_change_the_status(world: World, gp: TestClient) -> None:
    from sharedcare.documents import submission

    bundle = documents.provide_bundle(
        "pa",
        "Practitioner/stranger",
        PDF,
        "application/pdf",
        "Other letter",
        {"system": LOINC, "code": "18842-5"},
    )
    result = submission.provide(
        world.app.state.fhir, world.app.state.blobs, bundle, base_url="http://testserver/fhir"
    )
    doc = next(
        e["response"]["location"].split("/")[1]
        for e in result["entry"]
        if e["response"]["location"].startswith("DocumentReference/")
    )
    address = f"/portal/pro/patients/pa/documents/{doc}"
    page = gp.get(address)
    assert page.status_code == 200 and 'name="status"' not in page.text
    resp = gp.post(f"{address}/status", data={"csrf": token(gp, address), "status": "entered-in-error"})
    assert resp.status_code == 403
    assert "The status could not be changed" in resp.text
    assert stored(world, doc)["status"] == "current"


def test_the_holder_is_told_of_a_professionals_document(
    world: World, gp: TestClient, holder: TestClient
) -> None:
    upload(holder, "My own notes", "notes.pdf", PDF, "application/pdf")
    assert "A new document was added" not in holder.get("/portal/home").text  # not for their own
    resp = pro_upload(gp, {"title": "Letter of 3 May", "type": f"{LOINC}|18842-5", "confidentiality": "N"})
    assert resp.status_code == 303
    home = holder.get("/portal/home")
    assert "A new document was added to your record: Hospital reports." in home.text
    assert "Letter of 3 May" not in home.text.split('id="messages"')[1].split("</section>")[0]


def _png() -> bytes:
    """A real 2 by 1 pixel PNG (signature, IHDR, IDAT, IEND with their CRCs)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    pixels = zlib.compress(b"\x00\xff\x00\x00\x00\x00\xff")
    header = struct.pack(">IIBBBBB", 2, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_holder_sees_an_image_inline(world: World, holder: TestClient) -> None:
    png = _png()
    doc = file_for(world, "pa", png, "image/png")
    page = holder.get(f"/portal/documents/{doc}")
    assert page.status_code == 200, page.text
    assert (
        f'<img class="document-image" src="/portal/documents/{doc}/content" alt="Discharge letter">'
        in page.text
    )
    assert "<iframe" not in page.text and "Open the document alone" in page.text
    content = holder.get(f"/portal/documents/{doc}/content")
    assert content.status_code == 200 and content.content == png
    assert content.headers["content-type"] == "image/png"
    assert content.headers["content-disposition"] == "inline"
    assert "sandbox" not in content.headers["content-security-policy"]


def test_holder_reads_a_text_document_in_the_page(world: World, holder: TestClient) -> None:
    text = "Lettre de sortie\nTension 12/8 — <b>pas de HTML</b> & suite\n"
    doc = file_for(world, "pa", text.encode(), "text/plain")
    page = holder.get(f"/portal/documents/{doc}")
    assert page.status_code == 200, page.text
    shown = "Lettre de sortie\nTension 12/8 — &lt;b&gt;pas de HTML&lt;/b&gt; &amp; suite\n"
    assert f'<pre class="document-text">{shown}</pre>' in page.text
    assert "<b>pas de HTML</b>" not in page.text and "<iframe" not in page.text
    content = holder.get(f"/portal/documents/{doc}/content")
    assert content.status_code == 200 and content.content == text.encode()
    assert content.headers["content-type"].startswith("text/plain")
    assert content.headers["content-disposition"] == "inline"
