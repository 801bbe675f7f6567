"""The holder's access log: who, when, what, why, filters and paging, in the holder's language."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from portal_http import post, sign_in
from portal_world import MATRICULE_A, World

from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit import log as audit
from sharedcare.portal.i18n import TIMEZONE
from sharedcare.storage.engine import writer

Browser = Callable[[], TestClient]


@pytest.fixture
def after_gp_visit(world: World, browser: Browser) -> TestClient:
    """The GP searched and opened Marie Muller's record; Marie is signed in."""
    gp = browser()
    sign_in(gp, world.gp)
    post(gp, "/portal/pro/search", {"query": "Muller"}, "/portal/pro")
    assert gp.get("/portal/pro/patients/pa").status_code == 200
    holder = browser()
    sign_in(holder, world.patient)
    return holder


def _rows(page: str) -> list[str]:
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0] if "<tbody>" in page else ""
    return re.findall(r"<tr.*?</tr>", body, flags=re.S)


def test_log_shows_who_when_what_and_why(world: World, after_gp_visit: TestClient) -> None:
    page = after_gp_visit.get("/portal/log").text
    rows = _rows(page)
    assert rows, page
    gp_rows = [r for r in rows if "Dr Claire Hoffmann" in r]
    assert len(gp_rows) >= 2  # the search and the opening of the record
    assert all("Physician" in r for r in gp_rows)  # the access matrix's profession label, in English
    assert any("Discharge letter" in r for r in gp_rows)  # a document's title, readable by the holder
    assert all("<time datetime=" in r for r in gp_rows)
    assert "Marie Muller" not in "".join(rows)  # "everyone but me" by default


def test_log_filters(world: World, after_gp_visit: TestClient) -> None:
    c = after_gp_visit
    post(c, "/portal/access/block", {"practitioner": "stranger", "understood": "yes"}, "/portal/access")
    rights = _rows(c.get("/portal/log", params={"act": "rights", "who": "all"}).text)
    assert rights and all("Dr Claire Hoffmann" not in r for r in rights)
    assert any("Dr Ines Kieffer" in r for r in rights)  # the blocked professional, named
    reads = _rows(c.get("/portal/log", params={"act": "reads"}).text)
    assert reads and all("Dr Claire Hoffmann" in r for r in reads)
    me = _rows(c.get("/portal/log", params={"who": "all"}).text)
    assert any("<strong>You</strong>" in r for r in me)
    only_gp = _rows(c.get("/portal/log", params={"who": "pro:gp", "act": "all"}).text)
    assert only_gp and all("Dr Claire Hoffmann" in r for r in only_gp)
    future = (datetime.now(UTC) + timedelta(days=3)).date().isoformat()
    assert _rows(c.get("/portal/log", params={"since": future}).text) == []
    today = datetime.now(TIMEZONE).date().isoformat()  # the portal's days are Luxembourg's
    assert _rows(c.get("/portal/log", params={"since": today, "until": today}).text)
    assert (
        c.get("/portal/log", params={"since": "not-a-date", "act": "nonsense", "before": "x4"}).status_code
        == 200
    )


def test_log_pages_by_key(world: World, browser: Browser) -> None:
    gp = Principal(
        PrincipalKind.PROFESSIONAL, world.gp.account_id, display="Dr Claire Hoffmann", practitioner_id="gp"
    )
    with writer(world.engine).begin() as conn:
        for i in range(60):
            audit.append(
                conn,
                audit.record_for(
                    gp, audit.AuditAction.READ, patient_id="pa", resources=[f"Observation/o{i}"]
                ),
            )
    c = browser()
    sign_in(c, world.patient)
    first = c.get("/portal/log").text
    assert len(_rows(first)) == 50
    older = re.search(r'href="(/portal/log\?[^"]+before=\d+)"', first)
    assert older
    second = c.get(older.group(1).replace("&amp;", "&")).text
    assert len(_rows(second)) == 10


def test_log_is_for_the_holder_side_only(world: World, browser: Browser) -> None:
    c = browser()
    sign_in(c, world.gp)
    assert c.get("/portal/log").status_code == 403


def test_emergency_access_is_flagged_with_its_reason(emergency_world: World) -> None:
    world = emergency_world
    stranger = TestClient(world.app, follow_redirects=False)
    sign_in(stranger, world.stranger)
    data = {"matricule": MATRICULE_A, "reason": "cardiac arrest in the street", "understood": "yes"}
    assert post(stranger, "/portal/pro/emergency", data, "/portal/pro").status_code == 303
    stranger.get("/portal/pro/patients/pa")
    holder = TestClient(world.app, follow_redirects=False)
    sign_in(holder, world.patient)
    holder.post(
        "/portal/language",
        data={
            "csrf": re.search(r'name="csrf" value="([^"]+)"', holder.get("/portal/home").text).group(1),
            "lang": "en",
        },
    )  # type: ignore[union-attr]
    rows = _rows(holder.get("/portal/log", params={"act": "emergency"}).text)
    assert rows and all('class="emergency"' in r and "cardiac arrest in the street" in r for r in rows)
    assert any("Emergency care" in r for r in rows)
