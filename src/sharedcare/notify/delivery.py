"""E-mail delivery of the holders' notifications (§A.10): ``sharedcare notify deliver``.

Every notification is in the portal from the moment it is queued; this worker also tells the
holder, and their active representatives, by e-mail that a message waits there (``texts``: no
health data in the mail). Delivery is off while ``SHAREDCARE_SMTP_HOST`` is unset.

At most once: a pass takes one due notification at a time, in its own transaction, locking
its row (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so a second worker skips the row instead of
sending it too; SQLite's ``BEGIN IMMEDIATE`` serialises the workers), sends the e-mails over an
SMTP connection opened beforehand, and marks the row in that same transaction once the server
accepted them. The one gap SMTP leaves is a crash between the server's acceptance and the
commit: that notification is sent again by the next pass.

A refused or failed send is recorded on the row (``attempts``, ``last_error``) and retried
after ``notify_retry_seconds``, doubled at each retry; after ``notify_max_attempts`` the row is
marked ``failed`` and stays visible (``status``). Recipients who already got the e-mail are
remembered (``delivered_to``) and not sent it again by a retry. A notification with nobody to
e-mail (no activated account with an address, or everyone chose the portal only or opted out
of its kind: ``notify.preferences``) is marked ``portal-only``.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Connection, Engine, Row, func, literal, or_, select, update

from sharedcare.access.minors import delegation_in_force
from sharedcare.access.models import delegation
from sharedcare.fhir.store import utcnow
from sharedcare.identity.models import AccountStatus, account
from sharedcare.notify import preferences, texts
from sharedcare.notify.models import notification, notification_preference
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer

log = logging.getLogger("sharedcare.notify")

SENT = "sent"
PORTAL_ONLY = "portal-only"
FAILED = "failed"
MAX_RETRY_DELAY = timedelta(days=1)
ERROR_CHARS = 500


class DeliveryNotConfigured(Exception):
    """The SMTP settings are incomplete; the message names the missing setting."""


class SendFailed(Exception):
    """The SMTP server could not be reached or did not accept one e-mail."""


@dataclass(frozen=True, slots=True)
class Recipient:
    """A person to tell: the holder or one of their active representatives."""

    account_id: str
    address: str
    language: str
    representative: bool


@dataclass(slots=True)
class DeliveryReport:
    """What one pass did."""

    enabled: bool = True
    sent: int = 0
    portal_only: int = 0
    retried: int = 0
    """Failed this pass, to be retried later."""
    failed: int = 0
    """Failed this pass for the last allowed time: given up."""


def enabled(settings: Settings) -> bool:
    """E-mail delivery is on when an SMTP server is configured."""
    return bool(settings.smtp_host)


def portal_url(settings: Settings) -> str | None:
    """The portal's public address, derived from the public FHIR base (``…/fhir`` → ``…/portal/``)."""
    if not settings.base_url:
        return None
    return settings.base_url.rstrip("/").removesuffix("/fhir") + "/portal/"


def recipients(conn: Connection, patient_id: str, now: datetime, kind: str | None = None) -> list[Recipient]:
    """The holder's active account and the active accounts of their current representatives,
    where the person gave an e-mail address; a mobile number alone gets no e-mail. With ``kind``,
    only those whose preferences let a message of that kind be e-mailed; each in the language
    they chose for messages, else their portal language."""
    a, d, pref = account, delegation, notification_preference
    usable = (a.c.status == AccountStatus.ACTIVE.value, a.c.email.is_not(None))
    columns = (
        a.c.id,
        a.c.email,
        func.coalesce(pref.c.language, a.c.language).label("language"),
        pref.c.channel,
        pref.c.vaccination_reminders,
        pref.c.new_documents,
    )
    with_prefs = a.outerjoin(pref, pref.c.account_id == a.c.id)
    holder = (
        select(*columns, literal(False).label("representative"))
        .select_from(with_prefs)
        .where(a.c.patient_id == patient_id, a.c.kind == "patient", *usable)
    )
    represents = (
        select(*columns, literal(True).label("representative"))
        .select_from(with_prefs.join(d, d.c.account_id == a.c.id))
        .where(
            d.c.patient_id == patient_id,
            delegation_in_force(d, now),  # not to parents a minor objects to, nor after 18
            *usable,
        )
    )
    found: dict[str, Recipient] = {}
    for row in conn.execute(holder.union_all(represents)):
        if row.id in found:  # the holder's own account first
            continue
        chosen = preferences.from_row(row.channel, None, row.vaccination_reminders, row.new_documents)
        if kind is None or chosen.emails(kind):
            found[row.id] = Recipient(row.id, row.email, row.language, bool(row.representative))
    return sorted(found.values(), key=lambda r: (r.representative, r.account_id))


def compose(settings: Settings, kind: str, recipient: Recipient) -> EmailMessage:
    """The e-mail to ``recipient`` in their language; it names no one and no data."""
    lang = texts.language_of(recipient.language)
    body = texts.body(lang, kind, representative=recipient.representative, portal_url=portal_url(settings))
    return message(settings, recipient.address, lang, texts.subject(lang), body)


def message(settings: Settings, address: str, lang: str, subject: str, body: str) -> EmailMessage:
    """An automatic e-mail of the platform to ``address``, written in ``lang``."""
    sender = settings.smtp_from or ""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = address
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain=parseaddr(sender)[1].rpartition("@")[2] or None)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(body)
    msg["Content-Language"] = lang  # after the content, which replaces the Content-* headers
    return msg


class Mailer:
    """One SMTP connection for a delivery pass: opened before the first notification is claimed
    (so no database lock waits on a connection), reopened after an error; when it cannot be
    opened, every send of the pass fails at once with the reason."""

    def __init__(self, settings: Settings) -> None:
        if not settings.smtp_host:
            raise DeliveryNotConfigured("SHAREDCARE_SMTP_HOST is not set")
        if not settings.smtp_from or "@" not in parseaddr(settings.smtp_from)[1]:
            raise DeliveryNotConfigured("SHAREDCARE_SMTP_FROM must be an e-mail address")
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None
        self._down: str | None = None

    def open(self) -> None:
        """Connect, say EHLO, STARTTLS and log in as configured; remember a failure."""
        if self._smtp is not None or self._down is not None:
            return
        s = self.settings
        try:
            smtp = smtplib.SMTP(s.smtp_host or "", s.smtp_port, timeout=s.smtp_timeout_seconds)
            try:
                smtp.ehlo()
                if s.smtp_starttls:  # with certificate and host name checks (smtplib's default has none)
                    smtp.starttls(context=ssl.create_default_context())
                    smtp.ehlo()
                if s.smtp_username:
                    password = s.smtp_password.get_secret_value() if s.smtp_password else ""
                    smtp.login(s.smtp_username, password)
            except BaseException:
                smtp.close()
                raise
        except (smtplib.SMTPException, OSError) as exc:
            self._down = describe(exc)
            return
        self._smtp = smtp

    def send(self, message: EmailMessage, address: str) -> None:
        """Hand one e-mail to the server; raises ``SendFailed`` unless it accepted it."""
        self.open()
        if self._smtp is None:
            raise SendFailed(self._down or "no SMTP connection")
        try:
            self._smtp.send_message(
                message, from_addr=parseaddr(self.settings.smtp_from or "")[1], to_addrs=[address]
            )
        except (smtplib.SMTPException, OSError) as exc:
            self.close()  # the session's state is unknown: the next send starts a new one
            raise SendFailed(describe(exc)) from exc

    def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()

    def __enter__(self) -> Mailer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def describe(exc: BaseException) -> str:
    """A short reason for ``last_error``: the exception's kind and the server's reply."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = "; ".join(f"{code} {_text(msg)}" for code, msg in exc.recipients.values())
        detail = f"recipient refused: {replies}"
    elif isinstance(exc, smtplib.SMTPResponseException):
        detail = f"{exc.smtp_code} {_text(exc.smtp_error)}"
    else:
        detail = str(exc)
    return f"{type(exc).__name__}: {detail}"[:ERROR_CHARS]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def retry_delay(settings: Settings, attempts: int) -> timedelta:
    """Exponential back-off: the base wait after the first failure, doubled after each other."""
    seconds = settings.notify_retry_seconds * 2 ** max(attempts - 1, 0)
    return min(timedelta(seconds=seconds), MAX_RETRY_DELAY)


def _due(now: datetime) -> tuple[ColumnElement[bool], ...]:
    n = notification.c
    return (n.delivery.is_(None), or_(n.next_attempt_at.is_(None), n.next_attempt_at <= now))


def _claim(conn: Connection, now: datetime) -> Row[Any] | None:
    """The oldest due notification, locked for this transaction (others skip it)."""
    stmt = (
        select(notification)
        .where(*_due(now))
        .order_by(notification.c.pk)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    return conn.execute(stmt).first()


def _deliver_one(
    conn: Connection, row: Row[Any], mailer: Mailer, settings: Settings, now: datetime, report: DeliveryReport
) -> None:
    done: list[str] = orjson.loads(row.delivered_to) if row.delivered_to else []
    todo = [r for r in recipients(conn, row.patient_id, now, row.kind) if r.account_id not in done]
    values: dict[str, Any]
    if not todo and not done:
        values = {"delivery": PORTAL_ONLY}
        report.portal_only += 1
    else:
        errors: list[str] = []
        for recipient in todo:
            try:
                mailer.send(compose(settings, row.kind, recipient), recipient.address)
            except SendFailed as exc:
                errors.append(str(exc))
            else:
                done.append(recipient.account_id)
        values = {"delivered_to": orjson.dumps(done).decode()}
        if not errors:
            values.update(delivery=SENT, sent_at=now, attempts=row.attempts + 1, next_attempt_at=None)
            report.sent += 1
        else:
            attempts = row.attempts + 1
            values.update(attempts=attempts, last_error=errors[0][:ERROR_CHARS])
            if attempts >= settings.notify_max_attempts:
                values.update(delivery=FAILED, next_attempt_at=None)
                report.failed += 1
            else:
                values.update(next_attempt_at=now + retry_delay(settings, attempts))
                report.retried += 1
            log.warning(
                "notification delivery failed",
                extra={
                    "notification": row.pk,
                    "kind": row.kind,
                    "attempts": attempts,
                    "gave_up": attempts >= settings.notify_max_attempts,
                },
            )
    conn.execute(update(notification).where(notification.c.pk == row.pk).values(**values))


def deliver_pending(
    engine: Engine,
    settings: Settings,
    *,
    now: datetime | None = None,
    limit: int = 500,
    mailer: Mailer | None = None,
) -> DeliveryReport:
    """One pass: deliver up to ``limit`` due notifications, oldest first (``now``: the clock)."""
    if not enabled(settings):
        return DeliveryReport(enabled=False)
    report = DeliveryReport()
    now = now or utcnow()
    with engine.connect() as conn:
        if conn.execute(select(notification.c.pk).where(*_due(now)).limit(1)).first() is None:
            return report
    with mailer or Mailer(settings) as smtp:
        smtp.open()
        for _ in range(limit):
            with writer(engine).begin() as conn:
                row = _claim(conn, now)
                if row is None:
                    break
                _deliver_one(conn, row, smtp, settings, now, report)
    if report.sent or report.retried or report.failed:
        log.info(
            "notification delivery pass",
            extra={"sent": report.sent, "retried": report.retried, "failed": report.failed},
        )
    return report


def run_loop(
    engine: Engine,
    settings: Settings,
    interval: float,
    *,
    stop: threading.Event | None = None,
    on_pass: Callable[[DeliveryReport], None] | None = None,
) -> None:
    """Deliver, then wait ``interval`` seconds, until ``stop`` is set. A pass that fails (the
    database unreachable) is logged and the loop goes on: the next pass retries."""
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            report = deliver_pending(engine, settings)
        except Exception:
            log.exception("notification delivery pass failed")
        else:
            if on_pass is not None:
                on_pass(report)
        stop.wait(interval)


def status(conn: Connection) -> dict[str, int]:
    """How many notifications are in each delivery state (``pending``: not yet sent)."""
    n = notification.c
    rows = conn.execute(select(n.delivery, func.count()).group_by(n.delivery))
    return {(state or "pending"): count for state, count in rows}
