"""The personal expression area in a real browser (both databases): the holder records an
organ-donation wish and advance directives from "My personal space", changes the wish, and the
GP in their care reads both on the patient's record."""

from __future__ import annotations

from typing import Any

from live_portal import LivePortal, signed_in_page


def test_the_holder_records_wishes_and_the_gp_reads_them(chromium: Any, portal: LivePortal) -> None:
    context, page = signed_in_page(chromium, portal, portal.world.patient)
    page.goto("/portal/home")
    page.get_by_role("link", name="My personal space").click()
    page.get_by_role("heading", name="My personal space", level=1).wait_for()
    page.get_by_text("No wish on organ donation is recorded.").wait_for()

    page.get_by_label("Only some organs or tissues").check()
    page.get_by_label("Which organs and tissues (if only some)").fill("kidneys and corneas")
    page.get_by_role("button", name="Save my wish").click()
    page.get_by_role("status").get_by_text("Your personal space was updated.").wait_for()
    page.get_by_text("I agree to donate only these organs and tissues: kidneys and corneas").wait_for()

    write = page.get_by_role("region", name="Write for the professionals")
    write.get_by_label("What you write").select_option("directive")
    write.get_by_label("Title").fill("My end-of-life wishes")
    write.get_by_label("Text").fill("I wish to die at home, with palliative care.")
    write.get_by_role("button", name="Save", exact=True).click()
    page.get_by_role("status").get_by_text("Your personal space was updated.").wait_for()
    directives = page.get_by_role("region", name="Advance directives and end-of-life arrangements")
    directives.locator("pre", has_text="I wish to die at home, with palliative care.").wait_for()

    page.get_by_label("Yes, all organs and tissues").check()
    page.get_by_role("button", name="Save my wish").click()
    page.get_by_text("I agree to donate my organs and tissues after my death.").wait_for()
    context.close()

    context, page = signed_in_page(chromium, portal, portal.world.gp)
    page.goto("/portal/pro/patients/pa")
    page.get_by_role("link", name="The patient's personal space").click()
    page.get_by_role("heading", name="The patient's personal space", level=1).wait_for()
    page.get_by_text("I agree to donate my organs and tissues after my death.").wait_for()
    page.get_by_text("I wish to die at home, with palliative care.").wait_for()
    assert page.get_by_role("button", name="Save my wish").count() == 0
    context.close()
