"""The record as a timeline: every item the reader may see, newest first, by month and by group.

``/portal/timeline`` is the holder's (or representative's) view, and
``/portal/pro/patients/[id]/timeline`` the same view for a professional: both read the record
through the reader's own access decision (``records.view``, ``$everything`` page by page, each
page one audited read), so a professional sees exactly what their profession and care context
allow, and the holder never sees an item held back for a consultation d'annonce.

Filters that hold no health data (the groups, a date range, the page) are GET parameters, so a
filtered view can be bookmarked. The free-text search over titles is health data ("diabetes"):
it is posted, answered by the response to the POST and never put in a URL; paging through its
results posts it again. A POST without search text redirects to the GET address of its filters.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import Response

from sharedcare.access.requests import is_pending
from sharedcare.fhir.errors import FhirError
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.store import Stored
from sharedcare.portal import csrf, records
from sharedcare.portal.deps import holder_side, professional
from sharedcare.portal.groups import GROUPS, group_of
from sharedcare.portal.i18n import N_, TIMEZONE, Translator
from sharedcare.portal.pages import language, redirect, render
from sharedcare.portal.sessions import PortalError, PortalUser

router = APIRouter(dependencies=[Depends(csrf.require_csrf)])
PAGE = 50
"""Items per page of the timeline."""
READ_PAGE = 500
MAX_ITEMS = 5000
"""Items read at most for one page (``$everything`` pages of ``READ_PAGE``)."""
MAX_TEXT = 200
NO_RECORD = N_("No record was found, or you have no access to it.")
BAD_DATE = N_("Enter the dates as year-month-day, for example 2026-03-01.")
DATES_REVERSED = N_("The start date is after the end date.")
TEXT_TOO_LONG = N_("Keep the search under 200 characters.")
Texts = Annotated[list[str] | None, Form()]
Text = Annotated[str, Form()]


@dataclass(frozen=True, slots=True)
class Entry:
    """One item of the timeline and the group it is listed under."""

    item: records.Item
    group: str


@dataclass(frozen=True, slots=True)
class OpenRecord:
    """What one reader may see of a record: the holder's identity and the current items."""

    patient_id: str
    patient: dict[str, str] | None
    stored: list[Stored]
    holder: bool
    """Read by the holder's side: items held back for a consultation d'annonce are left out."""
    base: str
    """The address of the record's pages for this reader (``/portal`` or the professional's)."""

    def resources(self) -> list[tuple[Stored, dict[str, Any]]]:
        out = []
        for stored in self.stored:
            res = stored.resource()
            if not (self.holder and is_pending(res)):
                out.append((stored, res))
        return out


def read_record(service: FhirService, patient_id: str) -> tuple[dict[str, str] | None, list[Stored]]:
    """The holder's identity and the current items, up to ``MAX_ITEMS``, as ``service`` sees them.

    Raises ``FhirError`` when the caller may not open the record at all.
    """
    patient = None
    found: list[Stored] = []
    cursor: str | None = None
    while True:
        page = service.everything(patient_id, count=READ_PAGE, page=cursor)
        for stored in page.matches:
            if stored.deleted:
                continue
            if stored.type == "Patient" and stored.id == patient_id:
                patient = records.patient_summary(stored.resource())
            elif stored.type not in records.NOT_ITEMS:
                found.append(stored)
        cursor = page.next_cursor
        if not cursor or len(found) >= MAX_ITEMS:
            return patient, found


def open_record(request: Request, user: PortalUser, patient_id: str | None = None) -> OpenRecord:
    """The record the page is about: the chosen holder's (``patient_id`` None) or, for a
    professional, ``patient_id``; a record they may not open is "not found" like an unknown one."""
    service = records.view(request, user)
    if patient_id is None:
        assert user.record is not None
        try:
            patient, stored = read_record(service, user.record)
        except FhirError:  # a closed record, for instance: nothing to show
            patient, stored = None, []
        return OpenRecord(user.record, patient, stored, True, "/portal")
    try:
        patient, stored = read_record(service, patient_id)
    except FhirError:
        patient, stored = None, []
    if patient is None:
        raise PortalError(404, NO_RECORD)
    return OpenRecord(patient_id, patient, stored, False, f"/portal/pro/patients/{patient_id}")


def entries_of(record: OpenRecord) -> list[Entry]:
    """The record's items with their groups, newest first."""
    entries = []
    for stored, res in record.resources():
        when = records.when_of(res) or stored.last_updated.replace(tzinfo=UTC)
        item = records.Item(
            f"{stored.type}/{stored.id}", stored.type, records.title_of(res), when, is_pending(res)
        )
        entries.append(Entry(item, group_of(res)))
    entries.sort(key=lambda e: e.item.when or datetime.min.replace(tzinfo=UTC), reverse=True)
    return entries


def fold(text: str) -> str:
    """Text for matching: case and accents ignored ("hopital" finds "Hôpital")."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _local_midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=TIMEZONE).astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Filters:
    """What the reader asked to see. ``text`` is never put in a URL."""

    groups: tuple[str, ...] = ()
    since: date | None = None
    until: date | None = None
    text: str = ""

    def keeps(self, entry: Entry) -> bool:
        if self.groups and entry.group not in self.groups:
            return False
        when = entry.item.when
        if self.since and (when is None or when < _local_midnight(self.since)):
            return False
        if self.until and (when is None or when >= _local_midnight(self.until + timedelta(days=1))):
            return False
        if self.text:
            title = fold(entry.item.title)
            return all(word in title for word in fold(self.text).split())
        return True

    def query(self, page: int = 1) -> str:
        """The GET parameters of these filters (never the search text)."""
        params: list[tuple[str, str]] = [("cat", g) for g in self.groups]
        if self.since:
            params.append(("since", self.since.isoformat()))
        if self.until:
            params.append(("until", self.until.isoformat()))
        if page > 1:
            params.append(("page", str(page)))
        return urlencode(params)

    @property
    def active(self) -> bool:
        return bool(self.groups or self.since or self.until or self.text)


class FilterError(ValueError):
    """A filter the page cannot apply; the message is a catalogue msgid."""


def _day(value: str) -> date | None:
    value = value.strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise FilterError(BAD_DATE) from None


def parse_filters(groups: list[str] | None, since: str, until: str, text: str = "") -> Filters:
    """Filters from the request; unknown group codes are ignored. Raises ``FilterError``."""
    chosen = tuple(g for g in GROUPS if g in set(groups or ()))
    start, end = _day(since), _day(until)
    if start and end and start > end:
        raise FilterError(DATES_REVERSED)
    text = " ".join(text.split())
    if len(text) > MAX_TEXT:
        raise FilterError(TEXT_TOO_LONG)
    return Filters(chosen, start, end, text)


def _page_number(value: str) -> int:
    return int(value) if value.isascii() and value.isdigit() and len(value) < 6 else 1


def months(t: Translator, entries: list[Entry]) -> list[tuple[str, list[Entry]]]:
    """``entries`` (newest first) under the name of their month, in Luxembourg time."""
    out: list[tuple[str, list[Entry]]] = []
    current: tuple[int, int] | None = None
    for entry in entries:
        local = (entry.item.when or datetime.min.replace(tzinfo=UTC)).astimezone(TIMEZONE)
        key = (local.year, local.month)
        if key != current:
            label = t.date(date(local.year, local.month, 1), "LLLL y")
            out.append((label[:1].upper() + label[1:], []))
            current = key
        out[-1][1].append(entry)
    return out


def _timeline(
    request: Request,
    user: PortalUser,
    record: OpenRecord,
    raw: dict[str, Any],
    page: str,
) -> Response:
    t = Translator(language(request, user))
    entries = entries_of(record)
    counts = {code: 0 for code in GROUPS}
    for entry in entries:
        counts[entry.group] += 1
    error: str | None = None
    try:
        filters = parse_filters(raw["cat"], raw["since"], raw["until"], raw["text"])
    except FilterError as exc:
        error, filters = t.gettext(str(exc)), Filters()
    kept = [e for e in entries if filters.keeps(e)] if error is None else []
    pages = max(1, math.ceil(len(kept) / PAGE))
    number = min(_page_number(page), pages)
    shown = kept[(number - 1) * PAGE : number * PAGE]
    address = f"{record.base}/timeline"
    context = {
        "record": record,
        "patient": record.patient,
        "address": address,
        "groups": [(code, t.gettext(label), counts[code]) for code, label in GROUPS.items()],
        "group_label": lambda code: t.gettext(GROUPS.get(code, GROUPS["other"])),
        "filters": filters,
        "typed": raw,
        "months": months(t, shown),
        "total": len(kept),
        "all": len(entries),
        "page": number,
        "pages": pages,
        "previous_url": f"{address}?{filters.query(number - 1)}" if number > 1 and not filters.text else None,
        "next_url": f"{address}?{filters.query(number + 1)}" if number < pages and not filters.text else None,
        "error": error,
    }
    return render(request, "timeline.html", context, user=user, status=400 if error else 200)


def _posted(
    request: Request, user: PortalUser, record: OpenRecord, raw: dict[str, Any], page: str
) -> Response:
    """A posted filter form: with search text, the answer is this response; without, the GET page."""
    try:
        filters = parse_filters(raw["cat"], raw["since"], raw["until"], raw["text"])
    except FilterError:
        return _timeline(request, user, record, raw, page)
    if not filters.text:
        query = filters.query()
        return redirect(f"{record.base}/timeline" + (f"?{query}" if query else ""))
    return _timeline(request, user, record, raw, page)


def _raw(cat: list[str] | None, since: str, until: str, text: str = "") -> dict[str, Any]:
    return {"cat": list(cat or ()), "since": since, "until": until, "text": text}


@router.get("/timeline")
def timeline(
    request: Request,
    cat: Annotated[list[str] | None, Query()] = None,
    since: str = "",
    until: str = "",
    page: str = "",
    user: PortalUser = Depends(holder_side),
) -> Response:
    return _timeline(request, user, open_record(request, user), _raw(cat, since, until), page)


@router.post("/timeline")
def timeline_search(
    request: Request,
    cat: Texts = None,
    since: Text = "",
    until: Text = "",
    q: Text = "",
    page: Text = "",
    user: PortalUser = Depends(holder_side),
) -> Response:
    return _posted(request, user, open_record(request, user), _raw(cat, since, until, q), page)


@router.get("/pro/patients/{patient_id}/timeline")
def pro_timeline(
    request: Request,
    patient_id: str,
    cat: Annotated[list[str] | None, Query()] = None,
    since: str = "",
    until: str = "",
    page: str = "",
    user: PortalUser = Depends(professional),
) -> Response:
    record = open_record(request, user, patient_id)
    return _timeline(request, user, record, _raw(cat, since, until), page)


@router.post("/pro/patients/{patient_id}/timeline")
def pro_timeline_search(
    request: Request,
    patient_id: str,
    cat: Texts = None,
    since: Text = "",
    until: Text = "",
    q: Text = "",
    page: Text = "",
    user: PortalUser = Depends(professional),
) -> Response:
    record = open_record(request, user, patient_id)
    return _posted(request, user, record, _raw(cat, since, until, q), page)
