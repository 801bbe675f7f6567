"""The holder's rights on items in the portal: withdraw an item, ask for its correction or
erasure, follow the requests; professionals release held-back items and decide corrections;
agency administrators decide erasures. Refused forms show why and change nothing."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from portal_http import post, sign_in
from portal_world import World, enrol
from sqlalchemy import func, select

from sharedcare.access import requests as rights
from sharedcare.access.models import filing_objection, record_request
from sharedcare.access.policy import category_of
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.access.session import PolicySession
from sharedcare.fhir.service import FhirService

Browser = Callable[[], TestClient]
ITEM = "/portal/items/Observation/hb-a"
GP_PAGE = "/portal/pro/patients/pa"


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _as_gp(world: World) -> FhirService:
    """The GP's own service, as the FHIR API would give them (their writes are audited as theirs)."""
    gp = Principal(
        PrincipalKind.PROFESSIONAL,
        world.gp.account_id,
        practitioner_id="gp",
        profession="med",
        scopes=frozenset({"user/*.cruds"}),
    )
    service: FhirService = world.app.state.fhir
    return service.for_session(PolicySession(gp, world.app.state.policy, category_of))


def _gp_files(world: World, rid: str, text: str, *, pending: bool = False) -> None:
    res: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": text},
        "subject": {"reference": "Patient/pa"},
        "effectiveDateTime": "2026-04-01T08:00:00Z",
    }
    svc = _as_gp(world)
    with svc.transaction() as conn:
        svc.create_in(conn, rights.mark_pending(res) if pending else res, new_id=rid)


def _count(world: World, table: Any) -> int:
    with world.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.fixture
def holder(world: World, browser: Browser) -> TestClient:
    c = browser()
    sign_in(c, world.patient)
    return c


@pytest.fixture
def gp(world: World, browser: Browser) -> TestClient:
    c = browser()
    sign_in(c, world.gp)
    return c


def test_the_holder_withdraws_an_item_and_files_it_again(
    world: World, holder: TestClient, gp: TestClient
) -> None:
    page = holder.get("/portal/items")
    assert page.status_code == 200 and "Haemoglobin" in page.text and "You have made no request." in page.text
    assert "/portal/items" in holder.get("/portal/home").text
    assert "Withdraw this item" in holder.get(ITEM).text
    refused = post(holder, "/portal/items/object", {"reference": "Observation/hb-a"}, ITEM)
    assert refused.status_code == 400 and "health risks" in refused.text
    assert _count(world, filing_objection) == 0
    done = post(holder, "/portal/items/object", {"reference": "Observation/hb-a", "understood": "yes"}, ITEM)
    assert done.status_code == 303 and done.headers["location"] == ITEM
    assert "The item is withdrawn from the shared record." in holder.get(ITEM).text
    assert "Withdrawn at your request" in holder.get("/portal/items").text
    assert "Haemoglobin" not in gp.get(GP_PAGE).text
    again = post(holder, "/portal/items/object", {"reference": "Observation/hb-a", "understood": "yes"}, ITEM)
    assert again.status_code == 409 and "already withdrawn" in again.text
    assert post(holder, "/portal/items/undo", {"reference": "Observation/hb-a"}, ITEM).status_code == 303
    assert "Haemoglobin" in gp.get(GP_PAGE).text
    assert "Withdrawn at your request" not in holder.get("/portal/items").text
    # items of other records, or not items at all, are not the holder's to withdraw
    other = post(
        holder, "/portal/items/object", {"reference": "Observation/glucose-b", "understood": "yes"}, ITEM
    )
    assert other.status_code == 404 and "This item is not in your record." in other.text
    assert holder.get("/portal/items/Observation/glucose-b").status_code == 404
    assert _count(world, filing_objection) == 1  # the one withdrawn, then filed again


def test_a_held_back_item_is_never_hinted_at_and_the_gp_releases_it(
    world: World, holder: TestClient, gp: TestClient
) -> None:
    before = holder.get("/portal/home").text
    _gp_files(world, "biopsy", "Biopsy result", pending=True)
    home, items = holder.get("/portal/home").text, holder.get("/portal/items").text
    assert "Biopsy" not in home and "Biopsy" not in items
    shown = re.search(r"(\d+) of (\d+) items shown", home)
    assert shown and shown.group(0) == re.search(r"(\d+) of (\d+) items shown", before).group(0)  # type: ignore[union-attr]
    unknown = holder.get("/portal/items/Observation/biopsy")
    missing = holder.get("/portal/items/Observation/nothing")
    assert unknown.status_code == missing.status_code == 404
    assert unknown.text.replace("biopsy", "nothing") == missing.text  # the same answer as a missing one
    page = gp.get(GP_PAGE).text
    assert (
        "Not yet shown to the patient" in page
        and "Release to the patient" in page
        and "Biopsy result" in page
    )
    released = post(gp, f"{GP_PAGE}/release", {"reference": "Observation/biopsy"}, GP_PAGE)
    assert released.status_code == 303 and released.headers["location"] == GP_PAGE
    page = gp.get(GP_PAGE).text
    assert "The item is released" in page and "Not yet shown to the patient" not in page
    assert "Biopsy result" in holder.get("/portal/home").text
    again = post(gp, f"{GP_PAGE}/release", {"reference": "Observation/biopsy"}, GP_PAGE)
    assert again.status_code == 409 and "the patient already sees it" in again.text


def test_a_correction_request_goes_to_the_author_who_answers_it(
    world: World, holder: TestClient, gp: TestClient, browser: Browser
) -> None:
    _gp_files(world, "ecg", "ECG report")
    page = "/portal/items/Observation/ecg"
    empty = post(holder, "/portal/items/request", {"reference": "Observation/ecg", "kind": "rectify"}, page)
    assert empty.status_code == 400 and "Say what is wrong with this item" in empty.text
    assert _count(world, record_request) == 0
    form = {"reference": "Observation/ecg", "kind": "rectify", "reason": "The date is wrong"}
    assert post(holder, "/portal/items/request", form, page).status_code == 303
    listed = holder.get("/portal/items").text
    assert "Correction" in listed and "Sent" in listed
    requests = gp.get("/portal/pro/requests").text
    assert "The date is wrong" in requests and "ECG report" in requests
    with world.engine.connect() as conn:
        (request_id,) = [r.id for r in rights.requests_of(conn, "pa")]
    decide = {"request_id": request_id, "status": "completed", "reason": "Date fixed"}
    early = post(gp, "/portal/pro/requests/decide", decide, "/portal/pro/requests")
    assert early.status_code == 409 and "Correct the item first" in early.text
    stranger = browser()
    sign_in(stranger, world.stranger)
    assert "The date is wrong" not in stranger.get("/portal/pro/requests").text
    foreign = post(stranger, "/portal/pro/requests/decide", decide, "/portal/pro/requests")
    assert foreign.status_code == 404 and "There is no such request" in foreign.text
    svc = _as_gp(world)
    svc.update("Observation", "ecg", svc.read("Observation", "ecg").resource() | {"status": "corrected"})
    assert post(gp, "/portal/pro/requests/decide", decide, "/portal/pro/requests").status_code == 303
    listed = holder.get("/portal/items").text
    assert "Done" in listed and "Answer: Date fixed" in listed


def test_an_erasure_request_is_decided_by_an_agency_administrator(
    world: World, holder: TestClient, browser: Browser
) -> None:
    form = {"reference": "Observation/hb-a", "kind": "erase", "reason": "Not my blood test"}
    assert post(holder, "/portal/items/request", form, ITEM).status_code == 303
    assert holder.get("/portal/erasures").status_code == 403
    admin_person = enrol(
        world.engine,
        world.settings,
        PrincipalKind.ADMIN,
        "agency.admin",
        display_name="Ada Admin",
        username="agency.admin",
    )
    admin = browser()
    sign_in(admin, admin_person)
    assert "/portal/erasures" in admin.get("/portal/").text
    listed = admin.get("/portal/erasures").text
    assert "Not my blood test" in listed and "Observation/hb-a" in listed
    with world.engine.connect() as conn:
        (request_id,) = [r.id for r in rights.erasure_requests(conn)]
    refused = post(
        admin, "/portal/erasures/decide", {"request_id": request_id, "status": "rejected"}, "/portal/erasures"
    )
    assert refused.status_code == 400 and "Give the reason for the refusal" in refused.text
    erased = post(
        admin,
        "/portal/erasures/decide",
        {"request_id": request_id, "status": "completed"},
        "/portal/erasures",
    )
    assert erased.status_code == 303
    assert "No open request." in admin.get("/portal/erasures").text
    items = holder.get("/portal/items").text
    assert "Haemoglobin" not in items and "Erasure" in items and "Done" in items
    assert holder.get(ITEM).status_code == 404


def test_the_holder_cancels_an_open_request(world: World, holder: TestClient) -> None:
    form = {"reference": "Observation/hb-a", "kind": "erase", "reason": "Old"}
    assert post(holder, "/portal/items/request", form, ITEM).status_code == 303
    twice = post(holder, "/portal/items/request", form, ITEM)
    assert twice.status_code == 409 and "still open" in twice.text
    with world.engine.connect() as conn:
        (request_id,) = [r.id for r in rights.requests_of(conn, "pa")]
    unknown = post(holder, "/portal/items/cancel", {"request_id": "someone-else"}, "/portal/items")
    assert unknown.status_code == 404
    assert (
        post(holder, "/portal/items/cancel", {"request_id": request_id}, "/portal/items").status_code == 303
    )
    assert "Cancelled" in holder.get("/portal/items").text


def test_the_access_log_shows_a_held_back_items_trace_but_not_the_item(
    world: World, holder: TestClient, gp: TestClient
) -> None:
    generic = "An item of your record"
    assert generic not in holder.get("/portal/log").text
    _gp_files(world, "biopsy", "Biopsy result", pending=True)
    log = holder.get("/portal/log").text
    assert generic in log  # the GP's act is in the log (art. 8) ...
    assert "Biopsy" not in log  # ... without naming what the holder may not open yet
    post(gp, f"{GP_PAGE}/release", {"reference": "Observation/biopsy"}, GP_PAGE)
    assert generic not in holder.get("/portal/log").text  # released: the item's kind is named


def test_the_holder_asks_the_gp_to_file_an_item_and_the_gp_files_it(
    world: World, holder: TestClient, gp: TestClient, browser: Browser
) -> None:
    page = holder.get("/portal/items").text
    assert "Ask a professional to file an item" in page and "within 15 days" in page
    assert '<option value="gp"' in page and '<option value="stranger"' not in page  # only their care
    empty = post(holder, "/portal/items/ask-to-file", {"practitioner": "gp"}, "/portal/items")
    assert empty.status_code == 400 and "Describe the item to file" in empty.text
    foreign = {"practitioner": "stranger", "description": "Scan report"}
    refused = post(holder, "/portal/items/ask-to-file", foreign, "/portal/items")
    assert refused.status_code == 400 and "takes or took part in your care" in refused.text
    assert "Scan report" in refused.text  # the text is kept
    assert _count(world, record_request) == 0
    form = {"practitioner": "gp", "description": "Discharge report of my March stay"}
    assert post(holder, "/portal/items/ask-to-file", form, "/portal/items").status_code == 303
    listed = holder.get("/portal/items").text
    assert "Filing" in listed and "Discharge report of my March stay" in listed and "Claire" in listed
    assert "due by" in listed and "Overdue" not in listed
    requests = gp.get("/portal/pro/requests").text
    assert "Discharge report of my March stay" in requests and "Marie" in requests
    assert "Mark as filed" in requests and "Overdue" not in requests
    stranger = browser()
    sign_in(stranger, world.stranger)
    assert "Discharge report" not in stranger.get("/portal/pro/requests").text
    with world.engine.connect() as conn:
        (filing,) = rights.requests_of(conn, "pa")
    assert filing.due is not None
    svc: FhirService = world.app.state.fhir
    task = svc.read("Task", filing.id).resource()
    past = (_now().replace(microsecond=0) - (filing.due - filing.created)).isoformat() + "Z"
    task["restriction"]["period"]["end"] = past  # the due date passed, still not filed: overdue for both
    svc.update("Task", filing.id, task)
    assert "Overdue" in holder.get("/portal/items").text
    assert "Overdue" in gp.get("/portal/pro/requests").text
    decide = {"request_id": filing.id, "status": "completed", "reason": "Filed"}
    assert post(gp, "/portal/pro/requests/decide", decide, "/portal/pro/requests").status_code == 303
    listed = holder.get("/portal/items").text
    assert "Done" in listed and "Overdue" not in listed
