"""The overdue filing request notices (access.filing_notices, a daily job): one message to the holder
(portal, then e-mail through notify.delivery) and one e-mail to the professional asked, each once;
nothing for requests done, cancelled, not yet due, or of a closed record. Against a real SMTP server
(aiosmtpd), on both databases."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "portal"))  # the portal tests' helpers
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # notify/test_delivery's SMTP server

from portal_http import sign_in
from portal_world import MATRICULE_A, World, build_world

from notify.test_delivery import Inbox, inbox, mail_settings, text_of
from sharedcare import cli
from sharedcare.access import filing_notices
from sharedcare.access import requests as rights
from sharedcare.access.models import care_relationship, record_request, record_status
from sharedcare.access.policy import AccessPolicy
from sharedcare.access.policy import category_of as classify
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.access.session import PolicySession
from sharedcare.app import create_app
from sharedcare.fhir.service import FhirService
from sharedcare.identity.models import account
from sharedcare.notify import delivery, outbox
from sharedcare.notify.models import notification
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer
from support import cheap_passwords, professional, truncate

__all__ = ["inbox"]  # the SMTP server fixture of tests/notify

GP_MAIL = "claire.hoffmann@cabinet.test"
HOLDER_MAIL = "marie.muller@example.org"
NOT_IN_MAILS = ("Marie", "Muller", "Discharge report", "Hoffmann", "Patient/", MATRICULE_A)


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    """The portal world (Marie Muller in Dr Hoffmann's care), each with their own e-mail address."""
    for _ in cheap_passwords():
        app = create_app(settings)
        truncate(app.state.engine)
        w = build_world(app, settings)
        with writer(w.engine).begin() as conn:
            for who, address in ((w.patient, HOLDER_MAIL), (w.gp, GP_MAIL)):
                conn.execute(update(account).where(account.c.id == who.account_id).values(email=address))
            others = (w.representative.account_id, w.pharmacist.account_id, w.stranger.account_id)
            conn.execute(update(account).where(account.c.id.in_(others)).values(email=None))
        yield w
        w.engine.dispose()


def _holder(w: World) -> Principal:
    return Principal(
        PrincipalKind.PATIENT,
        w.patient.account_id,
        display="Marie Muller",
        patient_id="pa",
        scopes=frozenset({"patient/*.cruds"}),
    )


def _as(w: World, who: Principal) -> FhirService:
    return FhirService(w.engine, classify=classify).for_session(
        PolicySession(who, AccessPolicy(w.settings), classify)
    )


def _ask(w: World, description: str, now: datetime) -> rights.RecordRequest:
    holder = _holder(w)
    return rights.ask_to_file(_as(w, holder), holder, "gp", description, now, w.settings.filing_request_days)


def _notices(w: World) -> list[outbox.Notification]:
    with w.engine.connect() as conn:
        return [m for m in outbox.for_patient(conn, "pa") if m.kind == outbox.FILING_REQUEST_OVERDUE]


def _marks(w: World) -> dict[str, tuple[datetime | None, datetime | None]]:
    rq = record_request
    with w.engine.connect() as conn:
        rows = conn.execute(select(rq.c.id, rq.c.overdue_holder_notice_at, rq.c.overdue_owner_notice_at))
        return {r.id: (r.overdue_holder_notice_at, r.overdue_owner_notice_at) for r in rows}


def _counts(report: filing_notices.NoticeReport) -> tuple[int, int, int, int]:
    return (report.holders, report.professionals, report.portal_only, report.retried)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def test_an_overdue_request_is_announced_once_to_each(
    world: World, settings: Settings, inbox: tuple[Inbox, int]
) -> None:
    server, port = inbox
    mail = mail_settings(settings, port)
    now = _now()
    overdue = _ask(world, "Discharge report of March", now)
    later = _ask(world, "Lab result of May", now + timedelta(days=10))  # due ten days after the first
    done = _ask(world, "Imaging report", now)
    cancelled = _ask(world, "Vaccination", now)
    gp = professional("gp")
    rights.decide(_as(world, gp), gp, done.id, "completed", "Filed", now + timedelta(days=3))
    holder = _holder(world)
    rights.decide(_as(world, holder), holder, cancelled.id, "cancelled", "", now + timedelta(days=3))

    assert _counts(filing_notices.run(world.engine, mail, now + timedelta(days=14))) == (
        0,
        0,
        0,
        0,
    )  # not due
    day16 = now + timedelta(days=16)
    assert _counts(filing_notices.run(world.engine, mail, day16)) == (1, 1, 0, 0)
    (message,) = _notices(world)
    assert overdue.due is not None
    assert {k: v for k, v in message.params.items() if k != "due"} == {
        "practitioner_id": "gp",
        "display": "Dr Claire Hoffmann",
        "request": overdue.id,
    }
    assert message.params["due"][:16] == overdue.due.isoformat()[:16]  # the Task's due date
    (to_gp,) = server.to(GP_MAIL)
    text = text_of(to_gp)
    assert "the request is past its due date and still open" in text  # in the professional's language
    assert to_gp["Subject"].startswith("SharedCare")
    for word in NOT_IN_MAILS:  # neither the patient nor what was asked
        assert word not in text and word not in str(to_gp["Subject"])
    marks = _marks(world)
    assert marks[overdue.id] == (day16, day16)
    assert marks[later.id] == marks[done.id] == marks[cancelled.id] == (None, None)

    # a second run, the same day or the next, sends nothing again
    for moment in (day16, day16 + timedelta(days=1)):
        assert _counts(filing_notices.run(world.engine, mail, moment)) == (0, 0, 0, 0)
    assert len(_notices(world)) == 1 and len(server.mails) == 1

    # the holder's message is e-mailed by the delivery worker: the kind, nobody named
    assert delivery.deliver_pending(world.engine, mail, now=day16).sent == 1
    (to_holder,) = server.to(HOLDER_MAIL)
    holder_text = text_of(to_holder)
    assert "overdue request to file an item in the record" in holder_text
    for word in ("Hoffmann", "Discharge report", "gp"):
        assert word not in holder_text

    # the later request, once due, is announced in its turn; the completed and cancelled never
    day26 = now + timedelta(days=26)
    assert _counts(filing_notices.run(world.engine, mail, day26)) == (1, 1, 0, 0)
    assert [m.params["request"] for m in _notices(world)] == [later.id, overdue.id]
    assert _marks(world)[done.id] == _marks(world)[cancelled.id] == (None, None)
    assert len(server.to(GP_MAIL)) == 2


def test_a_refused_email_is_retried_without_telling_the_holder_twice(
    world: World, settings: Settings, inbox: tuple[Inbox, int]
) -> None:
    server, port = inbox
    mail = mail_settings(settings, port)
    now = _now()
    filed = _ask(world, "Discharge report of March", now)
    server.refuse.add(GP_MAIL)
    first = now + timedelta(days=16)
    assert _counts(filing_notices.run(world.engine, mail, first)) == (1, 0, 0, 1)
    assert _marks(world)[filed.id] == (first, None)
    assert server.to(GP_MAIL) == []
    server.refuse.clear()
    second = first + timedelta(days=1)
    assert _counts(filing_notices.run(world.engine, mail, second)) == (0, 1, 0, 0)
    assert _marks(world)[filed.id] == (first, second)
    assert len(server.to(GP_MAIL)) == 1 and len(_notices(world)) == 1


def test_a_refused_address_of_several_does_not_hold_back_the_others(
    world: World, settings: Settings, inbox: tuple[Inbox, int], caplog: pytest.LogCaptureFixture
) -> None:
    """Dr Hoffmann has a second account (her practice's address): the server refuses that one.
    The account it accepted got the notice, so the professional is told and the refused one is
    logged; the next runs send nothing again (they re-sent to her own address every day). Only
    when the server refuses every address does the notice wait for the next run."""
    server, port = inbox
    mail = mail_settings(settings, port)
    practice = "secretariat@cabinet.test"
    with writer(world.engine).begin() as conn:
        row = conn.execute(select(account).where(account.c.id == world.gp.account_id)).one()._asdict()
        conn.execute(
            account.insert().values(
                {**row, "id": "gp-practice", "username": "gp.practice", "email": practice}
            )
        )
    now = _now()
    filed = _ask(world, "Discharge report of March", now)
    server.refuse.add(practice)
    day16 = now + timedelta(days=16)
    with caplog.at_level("WARNING", logger="sharedcare.access.filing_notices"):
        assert _counts(filing_notices.run(world.engine, mail, day16)) == (1, 1, 0, 0)
    assert _marks(world)[filed.id] == (day16, day16)
    assert len(server.to(GP_MAIL)) == 1 and server.to(practice) == []
    [refused] = [r for r in caplog.records if r.getMessage() == "overdue filing request e-mail failed"]
    assert refused.__dict__["account"] == "gp-practice"  # an `extra` of the record
    for moment in (day16 + timedelta(days=1), day16 + timedelta(days=2)):
        assert _counts(filing_notices.run(world.engine, mail, moment)) == (0, 0, 0, 0)
    assert len(server.to(GP_MAIL)) == 1

    # every address refused: nothing recorded, tried again the next day
    second = _ask(world, "Lab result of May", now)
    server.refuse.add(GP_MAIL)
    assert _counts(filing_notices.run(world.engine, mail, day16)) == (1, 0, 0, 1)
    assert _marks(world)[second.id] == (day16, None)
    server.refuse.clear()
    day17 = day16 + timedelta(days=1)
    assert _counts(filing_notices.run(world.engine, mail, day17)) == (0, 1, 0, 0)
    assert _marks(world)[second.id] == (day16, day17)
    assert len(server.to(GP_MAIL)) == 2 and len(server.to(practice)) == 1


def test_without_email_delivery_the_requests_page_is_the_professionals_notice(
    world: World, settings: Settings
) -> None:
    assert not delivery.enabled(settings)
    now = _now()
    filed = _ask(world, "Discharge report of March", now)
    moment = now + timedelta(days=16)
    assert _counts(filing_notices.run(world.engine, settings, moment)) == (1, 0, 1, 0)
    assert _marks(world)[filed.id] == (moment, moment)
    assert _counts(filing_notices.run(world.engine, settings, moment)) == (0, 0, 0, 0)


def test_a_closed_record_gets_no_notice(world: World, settings: Settings) -> None:
    now = _now()
    filed = _ask(world, "Discharge report of March", now)
    with writer(world.engine).begin() as conn:
        conn.execute(
            record_status.insert().values(
                patient_id="pa", status="closed", closed_at=now, closed_reason="holder"
            )
        )
    assert _counts(filing_notices.run(world.engine, settings, now + timedelta(days=16))) == (0, 0, 0, 0)
    assert _marks(world)[filed.id] == (None, None)
    with world.engine.connect() as conn:
        assert (
            conn.execute(
                select(notification.c.pk).where(notification.c.kind == outbox.FILING_REQUEST_OVERDUE)
            ).first()
            is None
        )


def test_the_holder_reads_the_notice_on_the_home_page(world: World, settings: Settings) -> None:
    now = _now()
    _ask(world, "Discharge report of March", now)
    filing_notices.run(world.engine, settings, now + timedelta(days=16))
    browser = TestClient(world.app, follow_redirects=False)
    browser.cookies.set("sharedcare_lang", "en")
    sign_in(browser, world.patient)
    home = browser.get("/portal/home")
    assert home.status_code == 200
    messages = home.text.split('id="messages"')[1].split("</section>")[0]
    assert "Your request to Dr Claire Hoffmann to file an item was due by" in messages
    assert "is still open" in messages


def test_the_worker_runs_it_daily(world: World, settings: Settings) -> None:
    assert ("overdue filing requests", cli._filing_notice_job) in cli.DAILY_JOBS
    now = _now()
    with writer(world.engine).begin() as conn:  # a care that began a month ago
        cr = care_relationship
        conn.execute(update(cr).where(cr.c.id == "gp-solo").values(starts=now - timedelta(days=30)))
    _ask(world, "Discharge report of March", now - timedelta(days=16))
    line = cli._filing_notice_job(world.engine, settings)
    assert (
        line == "overdue filing requests: 1 holders told, 0 professionals e-mailed, 1 portal only, 0 to retry"
    )
    assert len(_notices(world)) == 1
