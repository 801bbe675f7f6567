"""The record's timeline and laboratory results in a real browser (both databases): filtering by
category and searching (the search text stays out of the address bar), a professional's view,
and the trend chart reached with the keyboard alone, its SVG drawn with every point."""

from __future__ import annotations

from typing import Any

from live_portal import LivePortal, english_context, sign_in
from record_content import GLUCOSE, add_record_content

ANALYTE = "Glucose [Mass/volume] in Blood"


def _titles(page: Any) -> list[str]:
    return [t.strip() for t in page.locator("ol.timeline li.entry .what strong").all_inner_texts()]


def test_timeline_filters_and_search(chromium: Any, portal: LivePortal) -> None:
    add_record_content(portal.world)
    context = english_context(chromium, portal)
    page = context.new_page()
    sign_in(page, portal.world.patient)
    page.get_by_role("heading", name="My record").wait_for()
    page.get_by_role("link", name="Record timeline").click()
    page.get_by_role("heading", name="Record timeline").wait_for()
    assert "Asthma" in _titles(page) and page.locator("h3", has_text="April 2026").is_visible()

    page.get_by_label("Imaging").check()
    page.get_by_label("Vaccination").check()
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**/portal/timeline?cat=imaging&cat=vaccination")
    assert sorted(_titles(page)) == ["Chest X-ray report", "Influenza vaccine"]
    assert page.get_by_label("Imaging").is_checked()

    page.get_by_label("Imaging").uncheck()
    page.get_by_label("Vaccination").uncheck()
    page.get_by_label("Search in titles").fill("discharge")
    page.get_by_role("button", name="Show").click()
    page.get_by_role("status").get_by_text("1 item").wait_for()
    assert _titles(page) == ["Discharge letter Hôpital du Nord"]
    assert "discharge" not in page.url.lower() and page.url.endswith("/portal/timeline")

    page.get_by_role("link", name="Clear the filters").click()
    page.wait_for_url("**/portal/timeline")
    assert len(_titles(page)) == 16
    context.close()


def test_results_chart_by_keyboard(chromium: Any, portal: LivePortal) -> None:
    add_record_content(portal.world)
    context = english_context(chromium, portal)
    page = context.new_page()
    sign_in(page, portal.world.patient)
    page.get_by_role("heading", name="My record").wait_for()
    page.goto("/portal/results")
    page.get_by_role("heading", name="Laboratory results").wait_for()
    # from the top of the page, Tab reaches the first analyte link
    page.locator("body").focus()
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('analyte')"):
            break
    else:
        raise AssertionError("Tab never reached an analyte link")
    assert page.evaluate("document.activeElement.textContent").startswith(ANALYTE)
    page.keyboard.press("Enter")
    page.get_by_role("heading", name=ANALYTE).wait_for()
    assert GLUCOSE not in page.url

    charts = page.locator("svg.trend")
    assert charts.count() == 2
    first = charts.nth(0)
    assert first.is_visible() and first.bounding_box()["width"] > 200
    assert first.locator(".point").count() == 3 and first.locator(".point.out").count() == 1
    assert first.locator("rect.band").count() == 2
    assert charts.nth(1).locator(".point").count() == 1
    named = page.get_by_role("img", name=f"Trend of {ANALYTE} (mg/dL)")
    assert named.count() == 1
    assert page.get_by_role("table", name="The values of the chart").first.locator("tbody tr").count() == 3
    context.close()


def test_a_pharmacist_sees_no_imaging_in_the_timeline(chromium: Any, portal: LivePortal) -> None:
    add_record_content(portal.world)
    context = english_context(chromium, portal)
    page = context.new_page()
    sign_in(page, portal.world.pharmacist)
    page.get_by_role("heading", name="My patients").wait_for()
    page.goto("/portal/pro/patients/pa")
    page.get_by_role("link", name="Record timeline").click()
    page.get_by_role("heading", name="Record timeline: Marie Muller").wait_for()
    titles = _titles(page)
    assert "Salbutamol inhaler" in titles and "Chest X-ray report" not in titles
    assert "Patient summary of Marie Muller" not in titles
    context.close()
