"""The access log of a record ("who accessed my record", art. 8(2)): who, when, what and why.

Entries come from ``audit.log.query`` for the record the user may act on, newest first, paged
by key. The filters (period, kind of act, who) are in the query string: they hold dates,
category words and opaque directory ids, never names or clinical codes. Document titles are
read through the user's own access decision, so a title is shown only when the holder can
see the document.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from sharedcare.access import care, consent
from sharedcare.audit import log as audit
from sharedcare.audit.log import AuditAction, AuditEntry, AuditOutcome
from sharedcare.portal import csrf, labels, records
from sharedcare.portal.deps import holder_side, now
from sharedcare.portal.i18n import TIMEZONE, Translator
from sharedcare.portal.pages import language, render
from sharedcare.portal.sessions import PortalUser

router = APIRouter(dependencies=[Depends(csrf.require_csrf)])
PAGE = 50
BATCH = 200
SCAN_LIMIT = 2000
"""Entries read at most to fill one page when the "who" filter skips many (the rest is paged)."""
TITLED = ("DocumentReference", "Composition", "DiagnosticReport")
"""Types whose titles the log shows (documents and reports)."""
ACTS: dict[str, tuple[AuditAction, ...] | None] = {
    "all": None,
    "reads": (
        AuditAction.READ,
        AuditAction.VREAD,
        AuditAction.HISTORY,
        AuditAction.SEARCH,
        AuditAction.OPERATION,
        AuditAction.EXPORT,
    ),
    "changes": (AuditAction.CREATE, AuditAction.UPDATE, AuditAction.PATCH, AuditAction.DELETE),
    "rights": (AuditAction.CONSENT_CHANGE, AuditAction.EMERGENCY_ACCESS),
    "emergency": None,
}
MAX_SHOWN = 5


@dataclass
class Row:
    """One line of the log as the holder reads it."""

    entry: AuditEntry
    who: str
    kind: str
    profession: str
    organization: str
    action: str
    what: list[str] = field(default_factory=list)
    more: int = 0
    purpose: str = ""
    mine: bool = False

    @property
    def failed(self) -> bool:
        return self.entry.record.outcome != AuditOutcome.SUCCESS


def _day(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def _page_key(value: str) -> int | None:
    """The audit key a "older entries" link carries, or None for the first page."""
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        return None
    return int(value) or None


def _local_midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=TIMEZONE).astimezone(UTC)


def _keep(who: str, user: PortalUser) -> Callable[[AuditEntry], bool]:
    if who == "all":
        return lambda e: True
    if who.startswith("pro:"):
        ref = f"Practitioner/{who[4:]}"
        return lambda e: e.record.principal_ref == ref
    return lambda e: e.record.principal_subject != user.account.id


def entries_page(
    request: Request,
    patient_id: str,
    keep: Callable[[AuditEntry], bool],
    *,
    since: datetime | None,
    until: datetime | None,
    act: str,
    before: int | None,
) -> tuple[list[AuditEntry], int | None]:
    """Up to ``PAGE`` kept entries, newest first, and the key to continue from (None: the end)."""
    found: list[AuditEntry] = []
    cursor, scanned = before, 0
    with request.app.state.engine.connect() as conn:
        while len(found) < PAGE and scanned < SCAN_LIMIT:
            batch = audit.query(
                conn,
                patient_id=patient_id,
                actions=ACTS.get(act),
                since=since,
                until=until,
                emergency=True if act == "emergency" else None,
                before=cursor,
                limit=BATCH,
            )
            for entry in batch:
                scanned += 1
                cursor = entry.pk
                if keep(entry):
                    found.append(entry)
                    if len(found) == PAGE:
                        return found, cursor
            if len(batch) < BATCH:
                return found, None
    return found, cursor


def _what(
    t: Translator, entry: AuditEntry, names: dict[str, str], titles: dict[str, str]
) -> tuple[list[str], int]:
    r = entry.record
    if r.action is AuditAction.CONSENT_CHANGE:
        text = labels.consent_change(t, r.interaction)
        target = next((w for w in (r.interaction or "").split() if w.startswith("Practitioner/")), None)
        if target and names.get(target):
            text = f"{text}: {names[target]}"
        return [text], 0
    if r.action is AuditAction.EMERGENCY_ACCESS:
        return [], 0
    shown = []
    for ref in r.resources:
        rtype, _, rest = ref.partition("/")
        base = f"{rtype}/{rest.split('/', 1)[0]}"
        if base not in titles:
            # not readable by the holder now: held back for a consultation d'annonce (§A.4) or
            # gone since; the trace is shown, the item's kind is not
            shown.append(t.gettext("An item of your record"))
            continue
        text = labels.label(t, labels.RESOURCE_TYPES, rtype)
        if rtype in TITLED and titles[base]:
            text = f"{text}: {titles[base]}"
        shown.append(text)
    unique = list(dict.fromkeys(shown))
    return unique[:MAX_SHOWN], max(0, len(unique) - MAX_SHOWN)


def rows_for(request: Request, user: PortalUser, entries: list[AuditEntry], t: Translator) -> list[Row]:
    refs = set()
    for e in entries:
        if e.record.organization_id and not e.record.organization_display:
            refs.add(f"Organization/{e.record.organization_id}")
        refs.update(w for w in (e.record.interaction or "").split() if w.startswith("Practitioner/"))
    names = records.directory_names(request, refs)
    titled = [ref for e in entries for ref in e.record.resources]
    # every referenced item is looked up through the holder's own view: only what they may read
    # now is named (a title for documents, the kind for the rest)
    types = {ref.split("/", 1)[0] for ref in titled}
    titles = records.titles(records.view(request, user), titled, types) if titled else {}
    rows = []
    for e in entries:
        r = e.record
        mine = r.principal_subject == user.account.id
        organization = r.organization_display or names.get(f"Organization/{r.organization_id}", "")
        what, more = _what(t, e, names, titles)
        rows.append(
            Row(
                entry=e,
                who=t.gettext("You") if mine else (r.principal_display or r.client_id or r.principal_subject),
                kind=labels.label(t, labels.KINDS, r.principal_kind),
                profession=labels.profession(t, r.profession),
                organization=organization,
                action=labels.label(t, labels.ACTIONS, str(r.action)),
                what=what,
                more=more,
                purpose=labels.label(t, labels.PURPOSES, r.purpose),
                mine=mine,
            )
        )
    return rows


def _known_professionals(request: Request, patient_id: str, at: datetime) -> list[tuple[str, str]]:
    """Professionals related to the record (past and present), for the "who" filter."""
    with request.app.state.engine.connect() as conn:
        ids = {r.practitioner_id for r in care.of_patient(conn, patient_id, at, include_ended=True)}
        ids |= {c.practitioner_id for c in consent.choices(conn, patient_id, at)}
    refs = {f"Practitioner/{i}" for i in ids if i}
    names = records.directory_names(request, refs)
    return sorted(((ref.split("/", 1)[1], name) for ref, name in names.items()), key=lambda p: p[1].lower())


@router.get("/log")
def access_log(
    request: Request,
    since: str = "",
    until: str = "",
    act: str = "all",
    who: str = "others",
    before: str = "",
    user: PortalUser = Depends(holder_side),
    at: datetime = Depends(now),
) -> Response:
    assert user.record is not None
    t = Translator(language(request, user))
    act = act if act in ACTS else "all"
    start, end = _day(since), _day(until)
    entries, next_before = entries_page(
        request,
        user.record,
        _keep(who, user),
        since=_local_midnight(start) if start else None,
        until=_local_midnight(end + timedelta(days=1)) if end else None,
        act=act,
        before=_page_key(before),
    )
    filters = {
        "since": start.isoformat() if start else "",
        "until": end.isoformat() if end else "",
        "act": act,
        "who": who,
    }
    context = {
        "rows": rows_for(request, user, entries, t),
        "filters": filters,
        "next_url": f"/portal/log?{urlencode({**filters, 'before': next_before})}" if next_before else None,
        "professionals": _known_professionals(request, user.record, at),
        "acts": list(ACTS),
        "first_page": _page_key(before) is None,
    }
    return render(request, "log.html", context, user=user)
