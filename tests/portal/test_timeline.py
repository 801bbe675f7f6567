"""The record timeline: groups, filters (GET) and search (POST, never in a URL), paging, and what
each reader sees through the access decision (holder, GP, pharmacist, a stranger)."""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi.testclient import TestClient
from portal_http import post, sign_in
from portal_world import World
from record_content import EXPECTED_GROUPS, GLUCOSE_SERIES, PENDING

from sharedcare.audit import log as audit
from sharedcare.documents.categories import document_types
from sharedcare.portal.groups import GROUPS, OTHER, group_of
from sharedcare.portal.views import timeline

Browser = Callable[[], TestClient]
ENTRY = re.compile(
    r'<li class="entry" data-group="([a-z-]+)"[^>]*>.*?href="/portal/items/([A-Za-z]+/[^"]+)"', re.S
)
PRO_ENTRY = re.compile(r'<li class="entry" data-group="([a-z-]+)"[^>]*>(.*?)</li>', re.S)
TIMELINE = "/portal/timeline"
GP_TIMELINE = "/portal/pro/patients/pa/timeline"


def _entries(html: str) -> list[tuple[str, str]]:
    """``(group, reference)`` of the holder's timeline entries, in page order."""
    return ENTRY.findall(html)


def _months(html: str) -> list[str]:
    return re.findall(r'<h3 id="month-\d+">([^<]+)</h3>', html)


def test_groups_match_the_document_categories() -> None:
    """The timeline offers every patient category of the document types, and "other"."""
    assert set(document_types().categories) | {OTHER} == set(GROUPS)


def test_every_item_is_in_its_group_newest_first(record: World, holder: TestClient) -> None:
    page = holder.get(TIMELINE)
    assert page.status_code == 200
    entries = _entries(page.text)
    found = dict((ref, group) for group, ref in entries)
    for ref, group in EXPECTED_GROUPS.items():
        assert found.get(ref) == group, ref
    for res in GLUCOSE_SERIES:
        assert found[f"Observation/{res['id']}"] == "laboratory-results"
    assert found["DiagnosticReport/rep-1"] == "laboratory-results"
    # newest first, under month headings in the reader's language
    assert [ref for _g, ref in entries[:3]] == ["Observation/g5", "Observation/g4", "Composition/ips-a"]
    assert _months(page.text)[:3] == ["April 2026", "March 2026", "February 2026"]
    assert "(8)" in page.text.split('id="cat-laboratory-results"')[1].split("</label>")[0]


def test_group_of_documents_and_other_resources() -> None:
    assert group_of({"resourceType": "Immunization"}) == "vaccination"
    assert group_of({"resourceType": "MedicationDispense"}) == "prescriptions"
    assert group_of({"resourceType": "Condition"}) == OTHER
    unlisted = {"resourceType": "DocumentReference", "type": {"coding": [{"code": "0000-0"}]}}
    assert group_of(unlisted) == "consultation-notes"  # the fallback of its matrix row (care reports)


def test_pending_items_are_never_shown_to_the_holder(record: World, holder: TestClient) -> None:
    refs = {ref for _g, ref in _entries(holder.get(TIMELINE).text)}
    assert f"Observation/{PENDING['id']}" not in refs
    assert "Prostate" not in holder.get(TIMELINE).text
    searched = post(holder, TIMELINE, {"q": "prostate"}, TIMELINE)
    assert searched.status_code == 200 and _entries(searched.text) == []
    assert "Prostate specific antigen" not in searched.text
    assert "No item matches these filters." in searched.text


def test_category_and_date_filters_are_get_parameters(record: World, holder: TestClient) -> None:
    resp = post(
        holder, TIMELINE, {"cat": ["imaging", "vaccination", "bogus"], "since": "", "q": " "}, TIMELINE
    )
    assert resp.status_code == 303
    assert resp.headers["location"] == f"{TIMELINE}?cat=imaging&cat=vaccination"
    page = holder.get(resp.headers["location"])
    assert sorted(ref for _g, ref in _entries(page.text)) == [
        "DocumentReference/scan-a",
        "Immunization/flu-a",
    ]
    assert 'id="cat-imaging" name="cat" value="imaging" checked' in page.text
    dated = holder.get(TIMELINE, params={"since": "2026-03-01", "until": "2026-03-12"})
    assert {ref for _g, ref in _entries(dated.text)} == {
        "DocumentReference/letter-a",
        "DocumentReference/scan-a",
        "DocumentReference/note-a",
        "DocumentReference/diary-a",
        "Observation/g3",
    }
    both = holder.get(TIMELINE, params=[("cat", "laboratory-results"), ("until", "2026-01-31")])
    assert {ref for _g, ref in _entries(both.text)} == {"Observation/glucose-a", "Observation/g1"}


def test_search_text_never_goes_into_a_url(record: World, holder: TestClient) -> None:
    resp = post(holder, TIMELINE, {"q": "DISCHARGE hopital", "cat": "hospital-reports"}, TIMELINE)
    assert resp.status_code == 200 and "location" not in resp.headers  # the answer to the POST
    assert [ref for _g, ref in _entries(resp.text)] == ["DocumentReference/letter-a"]
    assert 'value="DISCHARGE hopital"' in resp.text  # kept in the form field, not in a link
    links = re.findall(r'href="([^"]+)"', resp.text) + re.findall(r'action="([^"]+)"', resp.text)
    assert not [link for link in links if "hopital" in link.lower() or "q=" in link]
    accented = post(holder, TIMELINE, {"q": "hôpital"}, TIMELINE)
    assert [ref for _g, ref in _entries(accented.text)] == ["DocumentReference/letter-a"]


def test_bad_filters_are_explained_and_change_nothing(record: World, holder: TestClient) -> None:
    for params, message in (
        ({"since": "yesterday"}, "Enter the dates as year-month-day"),
        ({"since": "2026-03-02", "until": "2026-03-01"}, "The start date is after the end date."),
    ):
        resp = holder.get(TIMELINE, params=params)
        assert resp.status_code == 400 and message in resp.text and 'role="alert"' in resp.text
        assert _entries(resp.text) == []
    long = post(holder, TIMELINE, {"q": "x" * 201}, TIMELINE)
    assert long.status_code == 400 and "Keep the search under 200 characters." in long.text
    bad = post(holder, TIMELINE, {"since": "2026-13-01"}, TIMELINE)
    assert bad.status_code == 400 and "location" not in bad.headers
    no_token = holder.post(TIMELINE, data={"q": "glucose"})
    assert no_token.status_code == 403


def test_paging(record: World, holder: TestClient) -> None:
    fhir = record.app.state.fhir
    for i in range(timeline.PAGE + 5):
        fhir.update(
            "Observation",
            f"bp-{i}",
            {
                "resourceType": "Observation",
                "id": f"bp-{i}",
                "status": "final",
                "code": {"text": f"Blood pressure {i}"},
                "subject": {"reference": "Patient/pa"},
                "effectiveDateTime": f"2024-{1 + i % 12:02d}-{1 + i // 12:02d}T08:00:00Z",
            },
        )
    first = holder.get(TIMELINE, params={"cat": "consultation-notes"})
    assert len(_entries(first.text)) == timeline.PAGE
    assert "page 1 of 2" in first.text and "Newer items" not in first.text
    older = re.search(r'href="([^"]+)">Older items', first.text)
    assert older and older.group(1) == f"{TIMELINE}?cat=consultation-notes&amp;page=2"
    second = holder.get(older.group(1).replace("&amp;", "&"))
    assert len(_entries(second.text)) == 6  # 56 items: the consultation note and 55 readings
    assert "page 2 of 2" in second.text and "Older items" not in second.text
    page_one = {ref for _g, ref in _entries(first.text)}
    assert page_one.isdisjoint(ref for _g, ref in _entries(second.text))
    beyond = holder.get(TIMELINE, params={"cat": "consultation-notes", "page": "99"})
    assert "page 2 of 2" in beyond.text
    # paging a search posts the search again
    searched = post(holder, TIMELINE, {"q": "blood pressure"}, TIMELINE)
    assert len(_entries(searched.text)) == timeline.PAGE and "page 1 of 2" in searched.text
    assert '<input type="hidden" name="q" value="blood pressure">' in searched.text
    more = post(holder, TIMELINE, {"q": "blood pressure", "page": "2"}, TIMELINE)
    assert len(_entries(more.text)) == 6  # 55 readings and the diary ("My blood pressure diary")


def test_the_timeline_is_read_through_the_access_decision(record: World, holder: TestClient) -> None:
    holder.get(TIMELINE)
    with record.engine.connect() as conn:
        reads = audit.query(conn, patient_id="pa", principal_subject=record.patient.account_id)
    assert reads and reads[0].record.action is audit.AuditAction.OPERATION
    assert "DocumentReference/scan-a/_history/1" in reads[0].record.resources


def test_professionals_see_what_the_matrix_allows(record: World, browser: Browser) -> None:
    gp = browser()
    sign_in(gp, record.gp)
    seen_by_gp = gp.get(GP_TIMELINE)
    assert seen_by_gp.status_code == 200 and "Marie Muller" in seen_by_gp.text
    gp_titles = set(re.findall(r"<strong>([^<]+)</strong>", seen_by_gp.text))
    assert {
        "Chest X-ray report",
        "Patient summary of Marie Muller",
        "Discharge letter Hôpital du Nord",
    } <= gp_titles
    # the GP sees the result held back for its consultation d'annonce, marked as such
    assert "Prostate specific antigen" in gp_titles and "Held back from the patient" in seen_by_gp.text

    pharmacist = browser()
    sign_in(pharmacist, record.pharmacist)
    seen = pharmacist.get(GP_TIMELINE)
    assert seen.status_code == 200
    groups = {group for group, _body in PRO_ENTRY.findall(seen.text)}
    # a pharmacist reads neither imaging nor summaries (Annex 1), but does read results and prescriptions
    assert "imaging" not in groups and "patient-summary" not in groups
    assert {"laboratory-results", "prescriptions", "hospital-reports"} <= groups
    assert "Chest X-ray report" not in seen.text and "Patient summary of Marie Muller" not in seen.text
    filtered = pharmacist.get(GP_TIMELINE, params={"cat": "imaging"})
    assert PRO_ENTRY.findall(filtered.text) == []

    stranger = browser()
    sign_in(stranger, record.stranger)
    for url in (GP_TIMELINE, "/portal/pro/patients/unknown/timeline"):
        denied = stranger.get(url)
        assert denied.status_code == 404 and "Marie" not in denied.text
    assert post(stranger, GP_TIMELINE, {"q": "x"}, "/portal/pro").status_code == 404


def test_pages_are_for_their_kind_of_user(record: World, holder: TestClient, browser: Browser) -> None:
    assert holder.get(GP_TIMELINE).status_code == 403
    gp = browser()
    sign_in(gp, record.gp)
    assert gp.get(TIMELINE).status_code == 403
    anonymous = browser()
    resp = anonymous.get(TIMELINE)
    assert resp.status_code == 303 and resp.headers["location"].startswith("/portal/login")
    home = holder.get("/portal/home").text
    assert 'href="/portal/timeline"' in home and 'href="/portal/results"' in home
    pro_page = gp.get("/portal/pro/patients/pa").text
    assert f'href="{GP_TIMELINE}"' in pro_page and 'href="/portal/pro/patients/pa/results"' in pro_page
