"""Overdue filing requests (art. 9(2), §A.9): one notice to the holder, one to the professional asked.

A daily job (``sharedcare worker``, ``cli.DAILY_JOBS``). A filing request
(``access.requests.ask_to_file``) still open after its due date (its Task's
``restriction.period.end``, as the lists show it) is announced:

- to the holder: a ``filing-request-overdue`` message in the notification outbox, shown in the
  portal to the holder and whoever acts for the record, and e-mailed to the holder and their
  active representatives as each one's preferences say (``notify.delivery``: the e-mail names
  nobody and nothing). The message names the professional and the due date: the holder asked
  them, it is the holder's own data.
- to the professional asked: an e-mail to each active account of that Practitioner with an
  address (``notify.texts.professional_*``: neither the patient nor the item, only where to look,
  their requests page). In the portal their requests page flags it overdue already; with e-mail
  delivery off (``SHAREDCARE_SMTP_HOST`` unset) or nobody to e-mail, that page is their notice.

Once each: ``record_request.overdue_holder_notice_at`` is set in the transaction that queues the
message (which also carries a dedupe key), ``overdue_owner_notice_at`` once the SMTP server
accepted the e-mails. Both under the request's lock (``serialize(conn, "Task/<id>")``, the lock
``requests.decide`` takes), re-reading the row: a request completed, refused or cancelled
meanwhile is not announced, and two workers never both announce one. The professional is told
once the server accepted the e-mail to one of their accounts (those it refused are logged, not
tried again: the next run would e-mail again the accounts that got it); when it refused them
all, their notice waits for the next run (the holder's is not held back by it). As in
``notify.delivery``, a crash between the server's acceptance and the commit sends it again.

Not announced: requests done, refused or cancelled; requests not yet due (the job finds them
again the day they are); requests of a record that is not open (closed at death, after
inactivity or at the holder's wish: nobody files in it any more). This is a system job: it reads
the stored Tasks directly, not through a person's access decision, and writes no clinical data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Row, exists, or_, select, update

from sharedcare.access.licence import display_name
from sharedcare.access.models import record_request, record_status
from sharedcare.access.requests import FILE, OPEN, due_dates
from sharedcare.fhir.service import serialize
from sharedcare.identity.models import AccountStatus, account
from sharedcare.notify import delivery, outbox, texts
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer
from sharedcare.storage.tables import resource

log = logging.getLogger("sharedcare.access.filing_notices")

KIND = outbox.FILING_REQUEST_OVERDUE
REQUESTS_PAGE = "pro/requests"
"""The professional's requests page, under the portal's public address."""


@dataclass(slots=True)
class NoticeReport:
    """What one run did."""

    holders: int = 0
    """Messages queued to holders."""
    professionals: int = 0
    """Requests whose professional was e-mailed."""
    portal_only: int = 0
    """Requests whose professional has nobody to e-mail (or delivery is off): their requests page."""
    retried: int = 0
    """Requests whose professional's e-mails the server all refused: tried again at the next run."""


@dataclass(frozen=True, slots=True)
class Professional:
    """An active account of the professional asked, with an e-mail address."""

    account_id: str
    address: str
    language: str


def overdue(conn: Connection, now: datetime) -> list[tuple[str, datetime]]:
    """The open filing requests of open records past their due date with a notice still to send,
    as (Task id, due date), oldest due first."""
    rq, s = record_request, record_status
    rows = conn.execute(
        select(rq).where(
            rq.c.kind == FILE,
            rq.c.status.in_(OPEN),
            or_(rq.c.overdue_holder_notice_at.is_(None), rq.c.overdue_owner_notice_at.is_(None)),
            ~exists(select(s.c.patient_id).where(s.c.patient_id == rq.c.patient_id, s.c.status != "open")),
        )
    )
    due = due_dates(conn, list(rows))
    return sorted(((rid, when) for rid, when in due.items() if when < now), key=lambda p: (p[1], p[0]))


def professionals(conn: Connection, practitioner_id: str) -> list[Professional]:
    """The active professional accounts of ``practitioner_id`` that have an e-mail address."""
    a = account.c
    rows = conn.execute(
        select(a.id, a.email, a.language)
        .where(
            a.kind == "professional",
            a.practitioner_id == practitioner_id,
            a.status == AccountStatus.ACTIVE.value,
            a.email.is_not(None),
        )
        .order_by(a.id)
    )
    return [Professional(r.id, r.email, r.language) for r in rows]


def compose(settings: Settings, recipient: Professional) -> EmailMessage:
    """The e-mail to the professional asked, in their language; it names no patient and no item."""
    lang = texts.language_of(recipient.language)
    portal = delivery.portal_url(settings)
    body = texts.professional_body(lang, requests_url=portal + REQUESTS_PAGE if portal else None)
    return delivery.message(settings, recipient.address, lang, texts.professional_subject(lang), body)


def _practitioner_name(conn: Connection, practitioner_id: str) -> str:
    r = resource.c
    content = conn.execute(
        select(r.content).where(r.type == "Practitioner", r.id == practitioner_id, r.deleted.is_(False))
    ).scalar()
    return (display_name(orjson.loads(content)) if content else "") or practitioner_id


def _tell_holder(conn: Connection, row: Row[Any], due: datetime, now: datetime) -> bool:
    """Queue the holder's message (once: by its dedupe key too); True if queued now."""
    return outbox.queue(
        conn,
        row.patient_id,
        KIND,
        now,
        dedupe=f"{KIND}:{row.id}",
        practitioner_id=row.author_practitioner_id,
        display=_practitioner_name(conn, row.author_practitioner_id),
        due=due.isoformat(),
        request=row.id,
    )


def _tell_professional(
    conn: Connection, row: Row[Any], mailer: delivery.Mailer | None, settings: Settings
) -> str:
    """E-mail each account of the professional asked: ``sent`` once the server accepted one
    (the accounts it refused are logged, not tried again: a retry would e-mail again those who
    got it, every day while one address stays refused), ``portal-only`` (nobody to e-mail, or
    delivery off) or ``retry`` (it accepted none: nothing recorded, the next run tries again)."""
    people = professionals(conn, row.author_practitioner_id) if mailer is not None else []
    if not people:
        return delivery.PORTAL_ONLY
    assert mailer is not None
    accepted = 0
    for person in people:
        try:
            mailer.send(compose(settings, person), person.address)
        except delivery.SendFailed as exc:
            log.warning(
                "overdue filing request e-mail failed",
                extra={"request": row.id, "account": person.account_id, "error": str(exc)},
            )
            continue
        accepted += 1
    return delivery.SENT if accepted else "retry"


def _announce(
    engine: Engine,
    request_id: str,
    due: datetime,
    now: datetime,
    mailer: delivery.Mailer | None,
    settings: Settings,
    report: NoticeReport,
) -> None:
    """Both notices of one request still open, in one transaction under its lock."""
    rq = record_request
    with writer(engine).begin() as conn:
        serialize(conn, f"Task/{request_id}")
        row = conn.execute(select(rq).where(rq.c.id == request_id)).first()
        if row is None or row.status not in OPEN or row.kind != FILE:
            return  # decided (or the record deleted) since it was found
        values: dict[str, datetime] = {}
        if row.overdue_holder_notice_at is None:
            if _tell_holder(conn, row, due, now):
                report.holders += 1
            values["overdue_holder_notice_at"] = now
        if row.overdue_owner_notice_at is None:
            outcome = _tell_professional(conn, row, mailer, settings)
            if outcome == delivery.SENT:
                report.professionals += 1
            elif outcome == delivery.PORTAL_ONLY:
                report.portal_only += 1
            else:
                report.retried += 1
            if outcome != "retry":
                values["overdue_owner_notice_at"] = now
        if values:
            conn.execute(update(rq).where(rq.c.id == request_id).values(**values))


def run(
    engine: Engine, settings: Settings, now: datetime, *, mailer: delivery.Mailer | None = None
) -> NoticeReport:
    """Announce every overdue open filing request not announced yet (``now``: the clock). The
    SMTP connection (``mailer``, else one from ``settings`` when delivery is on) is opened before
    the first request is locked, as ``notify.delivery`` does."""
    report = NoticeReport()
    with engine.connect() as conn:
        found = overdue(conn, now)
    if not found:
        return report
    if mailer is None and delivery.enabled(settings):
        mailer = delivery.Mailer(settings)
    if mailer is None:
        for request_id, due in found:
            _announce(engine, request_id, due, now, None, settings, report)
        return report
    with mailer as smtp:
        smtp.open()
        for request_id, due in found:
            _announce(engine, request_id, due, now, smtp, settings, report)
    return report
