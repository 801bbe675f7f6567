"""Issue 5's "done when" in a real browser (both databases): the parent sees the child's card and
next due date; a paediatrician scans a pack's DataMatrix into the form and records the dose; the
parent reloads the card and sees the dose and the next due date move."""

from __future__ import annotations

from typing import Any

from live_portal import LivePortal, english_context, sign_in
from vaccination_world import DTAP, PACK, add_vaccination_world, next_due, shown

SCANNED = f"]d201{PACK}1728123110AB-12<GS>21SER9"
"""A keyboard-wedge scanner's rendering of the pack code (FNC1 typed as ``<GS>``)."""


def _dtap_card(page: Any) -> Any:
    return page.locator("section.vaccine-group").filter(has=page.get_by_role("heading", name=DTAP))


def test_a_paediatrician_records_a_dose_and_the_parent_sees_the_forecast_change(
    chromium: Any, portal: LivePortal
) -> None:
    world = portal.world
    vw = add_vaccination_world(world)
    before = next_due(world)

    parent_context = english_context(chromium, portal)
    parent = parent_context.new_page()
    sign_in(parent, world.representative)
    parent.get_by_role("navigation").get_by_role("link", name="Vaccinations").click()
    parent.get_by_role("heading", name="Vaccinations", exact=True).wait_for()
    card = _dtap_card(parent)
    assert card.locator(".badge").first.inner_text() == "Overdue"
    assert card.locator("dd.next-due").inner_text() == shown(before)

    doctor_context = english_context(chromium, portal)
    doctor = doctor_context.new_page()
    sign_in(doctor, vw.paediatrician)
    doctor.goto("/portal/pro/patients/kid")
    doctor.get_by_role("link", name="Vaccinations").click()
    doctor.get_by_role("heading", name="Record a dose").wait_for()
    doctor.get_by_label("DataMatrix code of the pack").fill(SCANNED)
    doctor.get_by_label("DataMatrix code of the pack").press("Enter")  # the scanner's Enter reads the code
    doctor.get_by_text("The code was read").wait_for()
    assert doctor.get_by_label("Lot number").input_value() == "AB-12"
    assert doctor.get_by_label("Expiry date").input_value() == "2028-12-31"
    assert doctor.get_by_label("Serial number").input_value() == "SER9"
    assert doctor.get_by_label("Product").input_value() == "hexyon"
    doctor.get_by_label("Site").select_option("LT")
    doctor.get_by_label("Route").select_option("IM")
    doctor.get_by_role("button", name="Record the dose").click()
    doctor.get_by_role("status").get_by_text("The dose was recorded.").wait_for()
    after = next_due(world)
    assert after != before
    assert "Hexyon" in _dtap_card(doctor).inner_text()

    parent.reload()
    card = _dtap_card(parent)
    assert "Hexyon" in card.inner_text() and "AB-12" in card.inner_text()
    assert card.locator("dd.next-due").inner_text() == shown(after)
    doctor_context.close()
    parent_context.close()
