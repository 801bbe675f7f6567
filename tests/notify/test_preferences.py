"""Notification preferences (channel, language, opt-outs) and their effect on e-mail delivery,
against a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from test_delivery import Inbox, inbox, mail_settings, person, queue, represent, row, text_of

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "portal"))  # the portal tests' helpers

from portal_http import sign_in, token
from portal_world import World, build_world

from sharedcare.access.principals import PrincipalKind
from sharedcare.app import create_app
from sharedcare.fhir.store import utcnow
from sharedcare.notify import delivery, outbox, preferences
from sharedcare.notify.preferences import Channel, InvalidPreference, Preferences
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer
from support import cheap_passwords, emptied_engine, truncate

__all__ = ["inbox"]


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    yield from emptied_engine(db_url)


def test_preferences_are_saved_per_account_and_validated(engine: Engine) -> None:
    now = utcnow()
    with writer(engine).begin() as conn:
        assert preferences.get(conn, "nobody") == preferences.DEFAULT
        chosen = preferences.validated("portal", "de", {outbox.NEW_DOCUMENT})
        preferences.save(conn, "acct-1", chosen, now)
        assert preferences.opt_out(conn, "acct-2", outbox.VACCINATION_REMINDER, now).opted_out == {
            outbox.VACCINATION_REMINDER
        }
    with engine.connect() as conn:
        assert preferences.get(conn, "acct-1") == Preferences(
            Channel.PORTAL, "de", frozenset({outbox.NEW_DOCUMENT})
        )
        second = preferences.get(conn, "acct-2")
    assert second.channel is Channel.EMAIL and second.language is None
    assert not second.emails(outbox.VACCINATION_REMINDER) and second.emails(outbox.NEW_DOCUMENT)
    for channel, language, kinds, reason in (
        ("sms", None, set(), "unknown channel"),
        ("email", "it", set(), "unknown language"),
        ("email", None, {outbox.EMERGENCY_ACCESS}, "cannot be turned off"),  # required by §A.10
    ):
        with pytest.raises(InvalidPreference, match=reason):
            preferences.validated(channel, language, kinds)


def test_an_opted_out_kind_is_not_emailed_but_stays_in_the_portal(
    engine: Engine, settings: Settings, inbox: tuple[Inbox, int]
) -> None:
    server, port = inbox
    now = utcnow()
    with writer(engine).begin() as conn:
        holder = person(conn, PrincipalKind.PATIENT, 1, email="marie@example.org", patient_id="pa")
        parent = person(conn, PrincipalKind.REPRESENTATIVE, 2, email="jean@example.org", language="en")
        represent(conn, parent, "pa", now)
        preferences.opt_out(conn, holder, outbox.VACCINATION_REMINDER, now)
        outbox.queue(conn, "pa", outbox.VACCINATION_REMINDER, now, group="MMR", dose=1, date="2026-06-11")
        paul = person(conn, PrincipalKind.PATIENT, 3, email="paul@example.org", patient_id="pb")
        preferences.opt_out(conn, paul, outbox.NEW_DOCUMENT, now)
        outbox.queue(conn, "pb", outbox.NEW_DOCUMENT, now, category="lab")
        queue(conn, "pb", outbox.FIRST_PROFESSIONAL_ACCESS, now)  # not a kind one can turn off
    report = delivery.deliver_pending(engine, mail_settings(settings, port), now=now)
    assert (report.sent, report.portal_only) == (2, 1)
    assert [rcpt for rcpt, _ in server.mails] == [["jean@example.org"], ["paul@example.org"]]
    assert "première utilisation du dossier" in text_of(server.to("paul@example.org")[0])
    with writer(engine).begin() as conn:
        preferences.opt_out(conn, parent, outbox.VACCINATION_REMINDER, now)
        outbox.queue(conn, "pa", outbox.VACCINATION_REMINDER, now, group="MMR", dose=1, date="2026-08-10")
    second = delivery.deliver_pending(engine, mail_settings(settings, port), now=now)
    assert (second.sent, second.portal_only) == (0, 1) and len(server.mails) == 2  # nobody wants it
    with engine.connect() as conn:
        assert [m.kind for m in outbox.for_patient(conn, "pa")] == [outbox.VACCINATION_REMINDER] * 2


def test_portal_only_channel_and_chosen_language(
    engine: Engine, settings: Settings, inbox: tuple[Inbox, int]
) -> None:
    server, port = inbox
    now = utcnow()
    with writer(engine).begin() as conn:
        holder = person(
            conn, PrincipalKind.PATIENT, 1, email="marie@example.org", language="fr", patient_id="pa"
        )
        parent = person(conn, PrincipalKind.REPRESENTATIVE, 2, email="jean@example.org", language="fr")
        represent(conn, parent, "pa", now)
        preferences.save(conn, holder, Preferences(Channel.PORTAL), now)  # no e-mail of any kind
        preferences.save(conn, parent, Preferences(language="de"), now)  # mails in German, portal in French
        queue(conn, "pa", outbox.FIRST_PROFESSIONAL_ACCESS, now)
    assert delivery.deliver_pending(engine, mail_settings(settings, port), now=now).sent == 1
    (mail,) = server.to("jean@example.org")
    assert server.to("marie@example.org") == []
    assert mail["Content-Language"] == "de" and "Sie haben eine neue Nachricht" in text_of(mail)
    assert row(engine, "pa").delivery == delivery.SENT


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    for _ in cheap_passwords():
        app = create_app(settings)
        truncate(app.state.engine)
        w = build_world(app, settings)
        yield w
        w.engine.dispose()


def test_the_portal_page_edits_the_accounts_preferences(world: World) -> None:
    browser = TestClient(world.app, follow_redirects=False)
    browser.cookies.set("sharedcare_lang", "en")
    sign_in(browser, world.representative)  # a parent: preferences need no chosen record
    page = browser.get("/portal/preferences")
    assert page.status_code == 200 and "Notification preferences" in page.text
    assert 'id="vaccination_reminders" name="vaccination_reminders" value="on" checked' in page.text
    csrf = token(browser, "/portal/preferences")
    form = {"csrf": csrf, "channel": "email", "language": "de", "new_documents": "on"}  # reminders unticked
    saved = browser.post("/portal/preferences", data=form)
    assert saved.status_code == 303 and saved.headers["location"] == "/portal/preferences"
    with world.engine.connect() as conn:
        chosen = preferences.get(conn, world.representative.account_id)
    assert chosen == Preferences(Channel.EMAIL, "de", frozenset({outbox.VACCINATION_REMINDER}))
    shown = browser.get("/portal/preferences").text
    assert "Your notification preferences are saved." in shown
    assert 'value="de" lang="de" selected' in shown and 'name="vaccination_reminders" value="on">' in shown
    refused = browser.post("/portal/preferences", data={**form, "channel": "carrier-pigeon"})
    assert refused.status_code == 400 and "could not be saved" in refused.text
    with world.engine.connect() as conn:
        assert preferences.get(conn, world.representative.account_id) == chosen  # unchanged
    no_token = browser.post("/portal/preferences", data={"channel": "portal"})
    assert no_token.status_code == 403


def test_professionals_have_no_notification_preferences(world: World) -> None:
    browser = TestClient(world.app, follow_redirects=False)
    browser.cookies.set("sharedcare_lang", "en")
    sign_in(browser, world.gp)
    assert browser.get("/portal/preferences").status_code == 403
