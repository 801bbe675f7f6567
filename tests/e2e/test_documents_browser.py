"""The holder's document upload in a real browser (both databases): a PDF chosen in the form is
filed, the document page opens on it with the PDF in a frame, and its content route serves the
same bytes as application/pdf."""

from __future__ import annotations

from typing import Any

from live_portal import LivePortal, english_context, sign_in

PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)


def test_holder_uploads_a_pdf_and_views_it(chromium: Any, portal: LivePortal) -> None:
    context = english_context(chromium, portal)
    page = context.new_page()
    sign_in(page, portal.world.patient)
    page.get_by_role("heading", name="My record").wait_for()
    page.get_by_role("link", name="Add a document").click()
    page.get_by_label("Title").fill("Vaccination card")
    page.get_by_label("File").set_input_files(
        {"name": "card.pdf", "mimeType": "application/pdf", "buffer": PDF}
    )
    page.get_by_role("button", name="Add the document").click()
    page.get_by_role("heading", name="Vaccination card").wait_for()
    assert "/portal/documents/" in page.url
    page.get_by_role("status").get_by_text("The document was added to the record.").wait_for()
    frame = page.locator("iframe.document-frame")
    assert frame.count() == 1
    source = frame.get_attribute("src")
    assert source == page.url.split(portal.url, 1)[1] + "/content"
    content = context.request.get(source)  # with the page's session cookie
    assert content.status == 200
    assert content.headers["content-type"] == "application/pdf"
    assert content.body() == PDF
    context.close()
