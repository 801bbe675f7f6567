"""The patient summary page in a real browser (both databases): the holder opens it from the
record's home, reads each section as a table (an active problem, the laboratory results) and
the empty required sections said in words, switches to French; the GP in care opens the same
record's summary from the patient's page."""

from __future__ import annotations

from typing import Any

from live_portal import LivePortal, english_context, sign_in

ACTIVE = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
}
HYPERTENSION = {
    "resourceType": "Condition",
    "id": "htn-a",
    "clinicalStatus": ACTIVE,
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}], "text": "Hypertension"},
    "subject": {"reference": "Patient/pa"},
    "onsetDateTime": "2021-05-06",
}


def _section(page: Any, title: str) -> Any:
    return page.get_by_role("region", name=title)


def test_holder_reads_the_summary(chromium: Any, portal: LivePortal) -> None:
    portal.world.app.state.fhir.update("Condition", HYPERTENSION["id"], HYPERTENSION)
    context = english_context(chromium, portal)
    page = context.new_page()
    sign_in(page, portal.world.patient)
    page.get_by_role("heading", name="My record").wait_for()
    page.get_by_role("link", name="Patient summary").click()
    page.get_by_role("heading", name="Patient summary", exact=True).wait_for()
    assert page.url.endswith("/portal/summary")
    problems = _section(page, "Problem list")
    rows = problems.locator("tbody tr")
    assert rows.count() == 1
    cells = [c.strip() for c in rows.first.locator("td").all_inner_texts()]
    assert cells[0] == "Hypertension" and cells[2] == "active" and "2021-05-06" in cells[3]
    for required in ("Allergies and intolerances", "Medication summary"):
        empty = _section(page, required).locator("p.empty-reason")
        assert empty.inner_text() == "Nothing is known in the record for this part of the summary."
    results = _section(page, "Results")
    items = [t.strip() for t in results.locator("tbody tr td:first-child").all_inner_texts()]
    assert sorted(items) == ["Glucose", "Haemoglobin"]
    # the reader's language: French headings and words
    page.get_by_role("button", name="Français").click()
    page.wait_for_load_state()
    page.goto("/portal/summary")
    page.get_by_role("heading", name="Résumé patient", exact=True).wait_for()
    assert _section(page, "Liste des problèmes").locator("tbody tr").count() == 1
    context.close()


def test_the_gp_opens_the_summary_from_the_patients_page(chromium: Any, portal: LivePortal) -> None:
    portal.world.app.state.fhir.update("Condition", HYPERTENSION["id"], HYPERTENSION)
    context = english_context(chromium, portal)
    page = context.new_page()
    sign_in(page, portal.world.gp)
    page.goto("/portal/pro/patients/pa")
    page.get_by_role("link", name="Patient summary").click()
    page.get_by_role("heading", name="Patient summary", exact=True).wait_for()
    assert page.url.endswith("/portal/pro/patients/pa/summary")
    assert "Hypertension" in _section(page, "Problem list").inner_text()
    context.close()
