"""A reminder queued by the job is shown on the holder's portal home page (group, dose, date),
while its e-mail says only that a vaccination reminder waits."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "portal"))  # the portal tests' helpers

from portal_http import sign_in
from portal_world import World, build_world

from sharedcare.app import create_app
from sharedcare.notify import texts
from sharedcare.settings import Settings
from sharedcare.vaccination import reminders
from sharedcare.vaccination.reminders import Due
from support import cheap_passwords, truncate

TODAY = date(2026, 6, 1)


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    for _ in cheap_passwords():
        app = create_app(settings)
        truncate(app.state.engine)
        w = build_world(app, settings)
        yield w
        w.engine.dispose()


def marie_only(conn: Connection, patient_id: str, today: date) -> Sequence[Due]:
    """A forecast with one dose due soon and one overdue, for Marie Muller's record only."""
    if patient_id != "pa":
        return []
    return [
        Due("MMR", reminders.NOT_COMPLETE, 2, date(2026, 6, 11), date(2026, 8, 10)),
        Due("DTaP/Tdap/Td", reminders.NOT_COMPLETE, 5, date(2026, 1, 5), date(2026, 3, 5)),
        Due("HepB", "Complete", None, None, None),
    ]


def test_the_holder_sees_the_reminders_on_the_home_page(world: World, settings: Settings) -> None:
    report = reminders.run(world.engine, settings, TODAY, forecast=marie_only)
    assert (report.queued, report.reminders) == (1, 2)  # one message listing both
    browser = TestClient(world.app, follow_redirects=False)
    browser.cookies.set("sharedcare_lang", "en")
    sign_in(browser, world.patient)
    home = browser.get("/portal/home")
    assert home.status_code == 200
    messages = home.text.split('id="messages"')[1].split("</section>")[0]
    assert "Vaccination reminder: dose 2 against MMR is due on" in messages
    assert "Vaccination reminder: dose 5 against DTaP/Tdap/Td was due by" in messages
    assert "is overdue" in messages and "HepB" not in messages
    assert messages.count("<li>") == 1  # both reminders in one message
    mail = texts.body("en", "vaccination-reminder", representative=False, portal_url=None)
    assert "vaccination reminder" in mail and "MMR" not in mail and "the vaccine concerned" in mail
