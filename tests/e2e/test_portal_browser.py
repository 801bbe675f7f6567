"""The portal in a real browser, on SQLite and PostgreSQL: activation, sign-in with TOTP (codes
computed from the key shown on the page), the holder's access choices, a professional opening
access with the patient's code, and the patient reading the resulting access log."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pyotp
from live_portal import LivePortal, english_context, sign_in, sign_in_as
from portal_world import MATRICULE_NEW, PASSWORD

from sharedcare.access import consent

PHONE = {"width": 390, "height": 844}


def _choices(portal: LivePortal, kind: str) -> list[consent.Choice]:
    now = datetime.now(UTC).replace(tzinfo=None)
    with portal.world.engine.connect() as conn:
        return [c for c in consent.choices(conn, "pa", now) if c.kind == kind]


def _fits_the_screen(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def test_activation_then_sign_in_with_totp_on_a_phone(chromium: Any, portal: LivePortal) -> None:
    context = english_context(chromium, portal, viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto("/portal/activate")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent.trim()") == "Skip to content"
    page.get_by_label("Activation code").fill(portal.world.pending_code)
    page.get_by_label("Matricule or login name").fill(MATRICULE_NEW)
    page.get_by_label("E-mail address or mobile number").fill("nora@example.org")
    page.get_by_role("button", name="Continue").click()

    page.get_by_role("heading", name="Choose a password").wait_for()
    page.get_by_label("New password").fill(PASSWORD)
    page.get_by_label("The same password again").fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()

    page.get_by_role("heading", name="Set up your authenticator app").wait_for()
    assert page.locator("svg.totp-qr").is_visible()
    secret = page.locator("#totp-secret").inner_text().replace(" ", "")
    totp = pyotp.TOTP(secret)
    page.get_by_label("6-digit code").fill(totp.now())
    page.get_by_role("button", name="Confirm").click()

    page.get_by_text("Your account is ready").wait_for()
    # the confirming code's time step is used up: sign in with the next step's code
    sign_in_as(page, MATRICULE_NEW, totp.at(time.time() + 30))
    page.get_by_role("heading", name="My record").wait_for()
    assert "Nora Neumann" in page.inner_text("main")
    assert _fits_the_screen(page)

    page.get_by_role("button", name="Deutsch").click()
    page.get_by_role("heading", name="Meine Akte").wait_for()
    assert page.get_attribute("html", "lang") == "de"
    page.get_by_role("button", name="Abmelden").click()
    page.get_by_role("heading", name="Anmelden").wait_for()
    context.close()


def test_wrong_codes_lock_the_account_with_a_readable_delay(chromium: Any, portal: LivePortal) -> None:
    context = english_context(chromium, portal)
    page = context.new_page()
    for _ in range(portal.world.settings.max_failed_attempts):
        page.goto("/portal/login")
        page.get_by_label("Matricule or login name").fill(portal.world.patient.login)
        page.get_by_label("Password", exact=True).fill("not the password")
        page.get_by_role("button", name="Continue").click()
    alert = page.get_by_role("alert")
    assert "Too many failed attempts. Try again in" in alert.inner_text()
    context.close()


def test_grant_revoke_block_and_hide(chromium: Any, portal: LivePortal) -> None:
    context = english_context(chromium, portal)
    page = context.new_page()
    sign_in(page, portal.world.patient)
    page.get_by_role("link", name="Access rights").first.click()
    page.get_by_role("heading", name="Who has access and why").wait_for()

    # grant, then revoke, permanent access to the GP found in the directory
    page.get_by_label("Name of the professional").fill("Hoffmann")
    page.get_by_role("button", name="Search").click()
    page.locator("ul[aria-label='Professionals found']").get_by_role("link", name="Manage").click()
    page.get_by_role("heading", name="Dr Claire Hoffmann").wait_for()
    page.get_by_role("button", name="Grant permanent access").click()
    page.get_by_role("status").get_by_text("Permanent access granted.").wait_for()
    assert [c.practitioner_id for c in _choices(portal, "permanent")] == ["gp"]
    page.check("#revoke-understood")
    page.get_by_role("button", name="Revoke permanent access").click()
    page.get_by_role("status").get_by_text("Permanent access revoked.").wait_for()
    assert _choices(portal, "permanent") == []

    # hide one item from the GP
    page.get_by_label("Item to hide").select_option(
        label=page.locator("#hide-item option", has_text="Haemoglobin").inner_text()
    )
    page.check("#hide-understood")
    page.get_by_role("button", name="Hide this item").click()
    page.get_by_role("status").get_by_text("The item is hidden from this professional.").wait_for()
    assert [(c.practitioner_id, c.resource) for c in _choices(portal, "mask")] == [("gp", "Observation/hb-a")]

    # block another professional: the health-risk warning must be confirmed first
    page.get_by_role("link", name="Access rights").first.click()
    page.get_by_label("Name of the professional").fill("Kieffer")
    page.get_by_role("button", name="Search").click()
    page.locator("ul[aria-label='Professionals found']").get_by_role("link", name="Manage").click()
    assert page.get_by_text("Restricting access can put your health at risk").first.is_visible()
    page.get_by_role("button", name="Block", exact=True).click()  # the browser asks for the checkbox
    assert _choices(portal, "block") == []
    page.check("#block-understood")
    page.get_by_role("button", name="Block", exact=True).click()
    page.get_by_role("status").get_by_text("The professional is blocked").wait_for()
    assert [c.practitioner_id for c in _choices(portal, "block")] == ["stranger"]
    context.close()


def test_professional_opens_access_with_the_code_and_the_patient_sees_it(
    chromium: Any, portal: LivePortal
) -> None:
    world = portal.world
    patient_context = english_context(chromium, portal, viewport=PHONE, is_mobile=True)
    patient = patient_context.new_page()
    sign_in(patient, world.patient)
    patient.goto("/portal/access")
    patient.get_by_role("button", name="Give a connection code").click()
    code = patient.locator("#connection-code").inner_text()
    assert len(code) == 11

    pharmacist_context = english_context(chromium, portal)
    pharmacist = pharmacist_context.new_page()
    sign_in(pharmacist, world.pharmacist)
    pharmacist.get_by_role("heading", name="My patients").wait_for()
    pharmacist.get_by_label("Name or matricule").fill("Muller")
    pharmacist.get_by_role("button", name="Search").click()
    pharmacist.get_by_text("No patient in your care matches.").wait_for()  # not in their care yet
    pharmacist.get_by_label("Connection code").fill(code)
    pharmacist.get_by_role("button", name="Open the record").click()
    pharmacist.get_by_role("heading", name="Marie Muller").wait_for()
    summary = pharmacist.inner_text("main")
    assert "Glucose" in summary and "Consultation with a connection code" in summary
    pharmacist_context.close()

    patient.get_by_role("link", name="Access log").first.click()
    patient.get_by_role("heading", name="Who accessed my record").wait_for()
    log = patient.inner_text("table.log")
    assert "Luc Wagner" in log and "Pharmacist" in log
    assert "Access opened with your connection code" in log and "Opened the record summary" in log
    patient.get_by_label("Kind of act").select_option("rights")
    patient.get_by_role("button", name="Show").click()
    rights = patient.inner_text("table.log")
    assert "Access opened with your connection code" in rights and "Opened the record summary" not in rights
    assert _fits_the_screen(patient)
    patient_context.close()
