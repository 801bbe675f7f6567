"""The document page's actions in a real browser (both databases): a GP files a report, then
replaces it with a new version from its page; the holder withdraws a personal document."""

from __future__ import annotations

from typing import Any

from live_portal import LivePortal, signed_in_page

PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)
NEW_PDF = PDF.replace(b"%%EOF", b"% corrected\n%%EOF")


def _document(portal: LivePortal, url: str) -> dict[str, Any]:
    document_id = url.rstrip("/").rsplit("/", 1)[1]
    return dict(portal.world.app.state.fhir.read("DocumentReference", document_id).resource())


def test_the_author_replaces_a_report_with_a_new_version(chromium: Any, portal: LivePortal) -> None:
    context, page = signed_in_page(chromium, portal, portal.world.gp)
    page.goto("/portal/pro/patients/pa/documents/new")
    page.get_by_label("Type").select_option("http://loinc.org|18842-5")
    page.get_by_label("Confidentiality").select_option("R")
    page.get_by_label("Title").fill("Discharge letter")
    page.get_by_label("File").set_input_files(
        {"name": "letter.pdf", "mimeType": "application/pdf", "buffer": PDF}
    )
    page.get_by_role("button", name="Add the document").click()
    page.get_by_role("heading", name="Discharge letter").wait_for()
    old_url = page.url
    page.get_by_role("heading", name="Replace with a new version").wait_for()
    replace = page.get_by_role("form", name="Replace with a new version")
    replace.get_by_label("Title").fill("Discharge letter (corrected)")
    replace.get_by_label("Confidentiality").select_option("V")
    replace.get_by_label("File").set_input_files(
        {"name": "letter.pdf", "mimeType": "application/pdf", "buffer": NEW_PDF}
    )
    replace.get_by_role("button", name="Replace the document").click()
    page.get_by_role("heading", name="Discharge letter (corrected)").wait_for()
    page.get_by_role("status").get_by_text("The new version replaced the document.").wait_for()
    assert page.url != old_url
    new = _document(portal, page.url)
    assert new["securityLabel"][0]["coding"][0]["code"] == "V"
    assert new["relatesTo"][0]["code"] == "replaces"
    assert _document(portal, old_url)["status"] == "superseded"
    assert context.request.get(page.locator("iframe.document-frame").get_attribute("src")).body() == NEW_PDF
    # the author lowers the new version's confidentiality from its page
    relabel = page.get_by_role("form", name="Change the confidentiality")
    relabel.get_by_label("Confidentiality").select_option("N")
    relabel.get_by_role("button", name="Change the confidentiality").click()
    page.get_by_role("status").get_by_text("The confidentiality of the document was changed.").wait_for()
    assert _document(portal, page.url)["securityLabel"] == [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]}
    ]
    page.goto(old_url)
    page.get_by_text("Replaced or withdrawn by its author").wait_for()
    assert page.get_by_role("button", name="Replace the document").count() == 0
    context.close()


def test_the_holder_withdraws_a_personal_document(chromium: Any, portal: LivePortal) -> None:
    context, page = signed_in_page(chromium, portal, portal.world.patient)
    page.goto("/portal/documents/upload/new")
    page.get_by_label("Title").fill("My own notes")
    page.get_by_label("File").set_input_files(
        {"name": "notes.pdf", "mimeType": "application/pdf", "buffer": PDF}
    )
    page.get_by_role("button", name="Add the document").click()
    page.get_by_role("heading", name="My own notes").wait_for()
    page.get_by_role("button", name="Withdraw this document").click()
    page.get_by_role("status").get_by_text("The status of the document was changed.").wait_for()
    page.get_by_text("Replaced or withdrawn by its author").wait_for()
    assert page.get_by_role("button", name="Withdraw this document").count() == 0
    assert _document(portal, page.url)["status"] == "superseded"
    context.close()
