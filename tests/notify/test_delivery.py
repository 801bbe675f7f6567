"""E-mail delivery of the holders' notifications, against a real SMTP server (aiosmtpd) in-process."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import Connection, Engine, select, update
from typer.testing import CliRunner

from sharedcare import settings as settings_module
from sharedcare.access.models import delegation
from sharedcare.access.principals import PrincipalKind
from sharedcare.cli import app as cli
from sharedcare.fhir.store import utcnow
from sharedcare.identity import accounts
from sharedcare.identity.matricule import generate
from sharedcare.identity.models import account
from sharedcare.notify import delivery, outbox
from sharedcare.notify.models import notification
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer
from support import emptied_engine

SENDER = "SharedCare <no-reply@sharedcare.test>"
PROFESSIONAL = "Dr Claire Hoffmann"
REASON = "unconscious after a fall"
HEALTH_WORDS = (PROFESSIONAL, "Hoffmann", "gp-1", REASON, "Muller", "Marie")


class Inbox:
    """An aiosmtpd handler keeping every accepted e-mail; it can refuse recipients or be slow."""

    def __init__(self) -> None:
        self.mails: list[tuple[list[str], EmailMessage]] = []
        self.refuse: set[str] = set()
        self.refuse_all = False
        self.delay = 0.0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.refuse_all or address in self.refuse:
            return "451 4.3.2 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.mails.append((list(envelope.rcpt_tos), message))
        return "250 OK accepted"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for rcpt, m in self.mails if address in rcpt]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    handler = Inbox()
    port = _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    yield from emptied_engine(db_url)


def mail_settings(settings: Settings, port: int, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_from": SENDER,
        "smtp_starttls": False,
        "smtp_timeout_seconds": 5,
        **changes,
    }
    return settings.model_copy(update=values)


def person(
    conn: Connection,
    kind: PrincipalKind,
    n: int,
    *,
    email: str | None = None,
    mobile: str | None = None,
    language: str = "fr",
    patient_id: str | None = None,
    active: bool = True,
) -> str:
    """An account as activation leaves it (the enrolment itself is tested in tests/identity)."""
    created = accounts.create_account(
        conn,
        kind,
        display_name=f"Person {n}",
        matricule=generate(date(1970, 1, 1) + timedelta(days=n), n % 900 + 1),
        patient_id=patient_id,
        email=email,
        mobile=mobile,
        language=language,
    )
    if active:
        conn.execute(update(account).where(account.c.id == created.id).values(status="active"))
    return created.id


def represent(conn: Connection, account_id: str, patient_id: str, now: datetime, **times: Any) -> None:
    conn.execute(
        delegation.insert().values(
            id=f"d-{account_id}-{patient_id}",
            patient_id=patient_id,
            account_id=account_id,
            kind="parent",
            starts=times.get("starts", now - timedelta(days=1)),
            ends=times.get("ends"),
            revoked_at=times.get("revoked_at"),
        )
    )


def queue(conn: Connection, patient_id: str, kind: str, now: datetime, **params: Any) -> None:
    params = {"practitioner_id": "gp-1", "display": PROFESSIONAL, **params}
    assert outbox.queue(conn, patient_id, kind, now, **params)


def row(engine: Engine, patient_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(notification).where(notification.c.patient_id == patient_id)).one()


def text_of(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return f"{message['Subject']}\n{body.get_content()}"


def test_holder_and_representatives_are_told_in_their_language_without_health_data(
    engine: Engine, settings: Settings, inbox: tuple[Inbox, int]
) -> None:
    server, port = inbox
    s = mail_settings(settings, port, base_url="https://dsp.example.lu/fhir")
    now = utcnow()
    with writer(engine).begin() as conn:
        person(conn, PrincipalKind.PATIENT, 1, email="marie@example.org", language="fr", patient_id="pa")
        parent = person(conn, PrincipalKind.REPRESENTATIVE, 2, email="jean@example.org", language="de")
        former = person(conn, PrincipalKind.REPRESENTATIVE, 3, email="former@example.org", language="en")
        later = person(conn, PrincipalKind.REPRESENTATIVE, 4, email="later@example.org", language="en")
        represent(conn, parent, "pa", now)
        represent(conn, former, "pa", now, ends=now - timedelta(hours=1))  # delegation over
        represent(conn, later, "pa", now, starts=now + timedelta(days=1))  # not yet
        person(conn, PrincipalKind.PATIENT, 5, email="other@example.org", language="en", patient_id="pb")
        queue(conn, "pa", outbox.EMERGENCY_ACCESS, now, reason=REASON)
    report = delivery.deliver_pending(engine, s, now=now)
    assert (report.sent, report.retried, report.failed, report.portal_only) == (1, 0, 0, 0)
    assert sorted(rcpt for rcpt, _ in server.mails) == [["jean@example.org"], ["marie@example.org"]]
    (french,) = server.to("marie@example.org")
    (german,) = server.to("jean@example.org")
    assert french["To"] == "marie@example.org" and french["From"] == SENDER
    assert french["Content-Language"] == "fr" and french["Auto-Submitted"] == "auto-generated"
    fr, de = text_of(french), text_of(german)
    assert "vous avez un nouveau message" in fr and "accès d'urgence au dossier" in fr
    assert "votre dossier de soins partagé" in fr and "https://dsp.example.lu/portal/" in fr
    assert "Sie haben eine neue Nachricht" in de and "Notfallzugriff auf die Akte" in de
    assert "einer Person, die Sie vertreten" in de  # the representative is told whose record it is not
    for text in (fr, de):
        for word in HEALTH_WORDS:
            assert word not in text
    stored = row(engine, "pa")
    assert stored.delivery == delivery.SENT and stored.sent_at == now and stored.attempts == 1
    again = delivery.deliver_pending(engine, s, now=now + timedelta(hours=1))
    assert again.sent == 0 and len(server.mails) == 2  # delivered once


def test_without_an_address_the_message_stays_in_the_portal(
    engine: Engine, settings: Settings, inbox: tuple[Inbox, int]
) -> None:
    server, port = inbox
    s = mail_settings(settings, port)
    now = utcnow()
    with writer(engine).begin() as conn:
        person(conn, PrincipalKind.PATIENT, 1, mobile="+352621123456", patient_id="mobile-only")
        person(
            conn, PrincipalKind.PATIENT, 2, email="pending@example.org", patient_id="pending", active=False
        )
        for patient in ("mobile-only", "pending", "no-account"):
            queue(conn, patient, outbox.FIRST_PROFESSIONAL_ACCESS, now)
    report = delivery.deliver_pending(engine, s, now=now)
    assert report.portal_only == 3 and report.sent == 0 and server.mails == []
    for patient in ("mobile-only", "pending", "no-account"):
        stored = row(engine, patient)
        assert stored.delivery == delivery.PORTAL_ONLY and stored.sent_at is None
    with engine.connect() as conn:
        assert outbox.for_patient(conn, "no-account")[0].kind == outbox.FIRST_PROFESSIONAL_ACCESS
        assert delivery.status(conn) == {"portal-only": 3}


def test_delivery_is_off_without_an_smtp_server(engine: Engine, settings: Settings) -> None:
    now = utcnow()
    with writer(engine).begin() as conn:
        person(conn, PrincipalKind.PATIENT, 1, email="marie@example.org", patient_id="pa")
        queue(conn, "pa", outbox.FIRST_PROFESSIONAL_ACCESS, now)
    report = delivery.deliver_pending(engine, settings, now=now)
    assert not report.enabled
    stored = row(engine, "pa")
    assert stored.delivery is None and stored.attempts == 0  # left for when delivery is turned on
    with pytest.raises(delivery.DeliveryNotConfigured):
        delivery.Mailer(settings.model_copy(update={"smtp_host": "127.0.0.1"}))  # no sender


def test_refusal_is_retried_with_backoff_then_given_up(
    engine: Engine, settings: Settings, inbox: tuple[Inbox, int]
) -> None:
    server, port = inbox
    s = mail_settings(settings, port, notify_retry_seconds=60, notify_max_attempts=3)
    now = utcnow()
    with writer(engine).begin() as conn:
        person(conn, PrincipalKind.PATIENT, 1, email="marie@example.org", patient_id="pa")
        person(conn, PrincipalKind.PATIENT, 2, email="paul@example.org", patient_id="pb")
        queue(conn, "pa", outbox.FIRST_PROFESSIONAL_ACCESS, now)
        queue(conn, "pb", outbox.FIRST_PROFESSIONAL_ACCESS, now)
    server.refuse_all = True
    first = delivery.deliver_pending(engine, s, now=now)
    assert (first.sent, first.retried) == (0, 2) and server.mails == []
    stored = row(engine, "pa")
    assert stored.delivery is None and stored.attempts == 1
    assert stored.next_attempt_at == now + timedelta(seconds=60)
    assert "451" in stored.last_error and "try again later" in stored.last_error
    assert delivery.deliver_pending(engine, s, now=now + timedelta(seconds=59)).retried == 0  # not yet due
    second = delivery.deliver_pending(engine, s, now=now + timedelta(seconds=60))
    assert second.retried == 2
    assert row(engine, "pa").next_attempt_at == now + timedelta(seconds=60 + 120)  # doubled
    server.refuse_all = False
    server.refuse = {"paul@example.org"}
    third = delivery.deliver_pending(engine, s, now=now + timedelta(seconds=180))
    assert (third.sent, third.failed) == (1, 1)  # Paul's third refusal was the last allowed
    assert [rcpt for rcpt, _ in server.mails] == [["marie@example.org"]]
    given_up = row(engine, "pb")
    assert given_up.delivery == delivery.FAILED and given_up.attempts == 3 and given_up.sent_at is None
    assert given_up.next_attempt_at is None and "451" in given_up.last_error
    server.refuse = set()
    assert delivery.deliver_pending(engine, s, now=now + timedelta(days=2)).sent == 0  # failed is final
    with engine.connect() as conn:
        assert delivery.status(conn) == {"sent": 1, "failed": 1}
        assert len(outbox.for_patient(conn, "pb")) == 1  # still in the portal


def test_unreachable_server_is_a_recorded_failure(engine: Engine, settings: Settings) -> None:
    s = mail_settings(settings, _free_port())  # nothing listens there
    now = utcnow()
    with writer(engine).begin() as conn:
        person(conn, PrincipalKind.PATIENT, 1, email="marie@example.org", patient_id="pa")
        queue(conn, "pa", outbox.LICENCE_WITHDRAWN, now, date=now.isoformat())
    report = delivery.deliver_pending(engine, s, now=now)
    assert report.retried == 1
    stored = row(engine, "pa")
    assert stored.attempts == 1 and stored.last_error.startswith("ConnectionRefusedError")


def test_a_retry_does_not_mail_again_those_already_told(
    engine: Engine, settings: Settings, inbox: tuple[Inbox, int]
) -> None:
    server, port = inbox
    s = mail_settings(settings, port, notify_retry_seconds=1)
    now = utcnow()
    with writer(engine).begin() as conn:
        person(conn, PrincipalKind.PATIENT, 1, email="marie@example.org", patient_id="pa")
        parent = person(conn, PrincipalKind.REPRESENTATIVE, 2, email="jean@example.org", language="en")
        represent(conn, parent, "pa", now)
        queue(conn, "pa", outbox.LICENCE_WITHDRAWN, now, date=now.isoformat())
    server.refuse = {"jean@example.org"}
    assert delivery.deliver_pending(engine, s, now=now).retried == 1
    assert [rcpt for rcpt, _ in server.mails] == [["marie@example.org"]]
    server.refuse = set()
    assert delivery.deliver_pending(engine, s, now=now + timedelta(seconds=1)).sent == 1
    assert [rcpt for rcpt, _ in server.mails] == [["marie@example.org"], ["jean@example.org"]]
    english = text_of(server.to("jean@example.org")[0])
    assert "withdrawal of a health professional's access rights" in english
    assert "a person you represent" in english


def test_two_concurrent_deliverers_send_each_notification_once(
    engine: Engine, settings: Settings, inbox: tuple[Inbox, int]
) -> None:
    server, port = inbox
    server.delay = 0.02  # each e-mail takes a while: the two workers overlap
    s = mail_settings(settings, port)
    now = utcnow()
    addresses = [f"holder{i}@example.org" for i in range(24)]
    with writer(engine).begin() as conn:
        for i, address in enumerate(addresses):
            person(conn, PrincipalKind.PATIENT, i + 1, email=address, patient_id=f"p{i}")
            queue(conn, f"p{i}", outbox.FIRST_PROFESSIONAL_ACCESS, now)
    start = threading.Barrier(2)
    reports: list[delivery.DeliveryReport] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait()
            reports.append(delivery.deliver_pending(engine, s, now=now))
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    received = sorted(r for rcpt, _ in server.mails for r in rcpt)
    assert received == sorted(addresses)  # every one, none twice
    assert sum(r.sent for r in reports) == len(addresses)
    if engine.dialect.name == "postgresql":  # SKIP LOCKED: both workers sent, side by side
        assert all(r.sent > 0 for r in reports)


def test_loop_runs_passes_until_stopped(engine: Engine, settings: Settings, inbox: tuple[Inbox, int]) -> None:
    server, port = inbox
    s = mail_settings(settings, port)
    with writer(engine).begin() as conn:
        person(conn, PrincipalKind.PATIENT, 1, email="marie@example.org", patient_id="pa")
        queue(conn, "pa", outbox.FIRST_PROFESSIONAL_ACCESS, utcnow() - timedelta(seconds=1))
    stop = threading.Event()
    passes: list[delivery.DeliveryReport] = []

    def on_pass(report: delivery.DeliveryReport) -> None:
        passes.append(report)
        if len(passes) == 2:
            stop.set()

    thread = threading.Thread(
        target=delivery.run_loop, args=(engine, s, 0.01), kwargs={"stop": stop, "on_pass": on_pass}
    )
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert [p.sent for p in passes] == [1, 0] and len(server.mails) == 1


def test_cli_delivers_one_pass(
    engine: Engine, db_url: str, inbox: tuple[Inbox, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, port = inbox
    with writer(engine).begin() as conn:
        person(conn, PrincipalKind.PATIENT, 1, email="marie@example.org", language="de", patient_id="pa")
        queue(conn, "pa", outbox.FIRST_PROFESSIONAL_ACCESS, utcnow() - timedelta(seconds=1))
    monkeypatch.setenv("SHAREDCARE_DATABASE_URL", db_url)
    settings_module.get_settings.cache_clear()
    try:
        off = CliRunner().invoke(cli, ["notify", "deliver"])
        assert off.exit_code == 0 and "delivery is off" in off.output and server.mails == []
        monkeypatch.setenv("SHAREDCARE_SMTP_HOST", "127.0.0.1")
        settings_module.get_settings.cache_clear()
        misconfigured = CliRunner().invoke(cli, ["notify", "deliver"])
        assert misconfigured.exit_code == 2 and "SHAREDCARE_SMTP_FROM" in misconfigured.output
        monkeypatch.setenv("SHAREDCARE_SMTP_PORT", str(port))
        monkeypatch.setenv("SHAREDCARE_SMTP_FROM", SENDER)
        monkeypatch.setenv("SHAREDCARE_SMTP_STARTTLS", "false")
        settings_module.get_settings.cache_clear()
        done = CliRunner().invoke(cli, ["notify", "deliver"])
    finally:
        settings_module.get_settings.cache_clear()
    assert done.exit_code == 0, done.output
    assert "sent: 1" in done.output and "sent: 1" in done.output.splitlines()[-1]
    (mail,) = server.to("marie@example.org")
    assert "Sie haben eine neue Nachricht" in text_of(mail)
