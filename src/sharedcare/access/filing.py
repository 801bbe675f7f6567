"""The filing deadline after the end of care (art. 9(3), LAW-AND-CROSSBORDER.md §A.9): the
author's worklist.

Lab results, clinical summaries and discharge reports, imaging reports and the patient summary
are filed by their author no later than ``filing_deadline_days`` (15) after the end of care.
``due_filings`` lists, for a professional, the cares that ended whose filings fall on them (their
own solo cares, and those of the facility they act for), their due date, and which of these four
kinds the author side filed so far. It is the author's list: nothing of it is shown to the
holder (who sees the end of care in their access log only).

**Ended cares.** A declared end (``care.end_care``) has a ``filing_deadline`` row: care start,
end of care, due date (the relationship's end since). A relationship that simply ran out, or
whose context ends the care before its access does, has no row; its end of care is derived:

- ``solo`` and ``emergency``: their default durations end with the art. 9(3) deadline (Annex 1
  §3: 15 days after the consultation; 24 hours + 15 days after the emergency registration), so
  the care ended ``filing_deadline_days`` before the relationship ends (never before it began):
  a solo consultation is on the list from the day the code is used, an emergency stay from its
  24th hour;
- ``facility``: its 45 days and renewals hold no deadline; the stay ended when the registration
  ran out, unless the facility declared it before.

The due date is always the relationship's end: once it has ended the author can no longer write
in the record, so a later date would promise what the platform refuses. Revoked relationships
(licence withdrawn, grant revoked), permanent grants, the referring physician and the emergency
override are no care with an end here. A care stays listed ``LISTED_AFTER_DUE_DAYS`` after its
due date. No job runs: the list is read from the relationships as they stand.

**What the caller may read now, and nothing else.** The list is read through the caller's own
access decision (``readable``: the read filter of a ``FhirService`` bound to their
``PolicySession``), so that it shows nothing a read of the record would not:

- a care is listed only while the caller may read its patient's ``Patient`` now: in practice
  while the relationship still stands, within the filing window, and while no block of the
  holder, withdrawn licence or closed record stands in the way. A care whose record the caller
  may not read is neither listed nor counted: a count would grow on the day the deadline passes
  of a record the holder blocked the caller from, and so tell them it exists. A closed care (due
  date passed) is therefore listed only while another relationship opens the record to the
  caller (a new stay, say);
- **kinds filed** are recognised only in items the caller may read now (the same filter: the
  holder's masks, the profession's column of the matrix, R and V confidentiality). Which items
  the author side wrote comes from the access log, the trace of who wrote what (as
  ``access.requests`` finds an item's author): the successful create, update and patch records
  on the holder's record recorded between care start and due date, by the author side: the
  professional (their ``Practitioner`` reference) for a solo relationship, the organisation's
  professionals and systems (``organization_id``) for a registration. Each version so written is
  recognised by ``key_document`` if its resource is still in that record, not deleted, and
  readable by the caller. An item since erased (its rows are gone), deleted, withdrawn by the
  holder's objection or masked from the caller does not count: the list can only vouch for what
  the caller can open.

A facility's system reads no clinical item, so no kind filed could be shown to it truthfully:
like the holder and agency staff, it gets no list.

**Cost.** A few statements whatever the number of cares, none per care: the cares (the
``LISTED_MAX`` latest due among those readable now), the access-log records of all of them, and
the versions written, in bulk (one statement per ``ITEMS_PER_STATEMENT`` versions).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Connection, and_, exists, func, or_, select

from sharedcare.access.care import ENDED_CONTEXTS
from sharedcare.access.categories import LOINC, DataCategory, classify
from sharedcare.access.models import care_relationship, filing_deadline
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit.log import AuditAction, AuditOutcome
from sharedcare.audit.models import audit_log
from sharedcare.fhir.search.engine import AccessFilter
from sharedcare.settings import Settings, get_settings
from sharedcare.storage.tables import resource, resource_compartment, resource_version

LISTED_AFTER_DUE_DAYS = 90
"""How long an ended care stays on the worklist after its due date."""
LISTED_MAX = 200
"""The most cares one worklist lists: the latest due (a hospital's list stays one page)."""
ITEMS_PER_STATEMENT = 1000
"""Versions written looked for in one statement (bounds the statement's parameters)."""


class KeyDocument(StrEnum):
    """The four kinds of art. 9(3), filed by their author by the due date."""

    LAB_RESULTS = "lab-results"
    DISCHARGE_REPORT = "discharge-report"
    """Clinical summaries and discharge reports ("synthèses cliniques et lettres de sortie")."""
    IMAGING_REPORT = "imaging-report"
    PATIENT_SUMMARY = "patient-summary"


FINAL_STATUSES: Mapping[str, frozenset[str]] = {
    "DiagnosticReport": frozenset({"final", "amended", "corrected", "appended"}),
    "DocumentReference": frozenset({"current"}),
    "Composition": frozenset({"final", "amended"}),
}
"""Per report or document type, the statuses of a filed item (a draft or a preliminary report is
not filed yet)."""

DISCHARGE_TYPES = frozenset(
    {
        "18842-5",  # Discharge summary
        "34105-7",  # Hospital discharge summary
        "11490-0",  # Physician discharge summary
        "28574-2",  # Discharge note
        "59258-4",  # Emergency department discharge summary
        "34133-9",  # Summary of episode note
        "18761-7",  # Transfer summary
    }
)
"""LOINC document types of clinical summaries and discharge reports: in the matrix they are
care reports (``categories.DOCUMENT_TYPES``), so their type code tells them apart."""

_BY_CATEGORY: Mapping[str, KeyDocument] = {
    DataCategory.LAB_RESULTS: KeyDocument.LAB_RESULTS,
    DataCategory.IMAGING: KeyDocument.IMAGING_REPORT,
    DataCategory.SUMMARIES: KeyDocument.PATIENT_SUMMARY,
}
_FILING_ACTIONS = (str(AuditAction.CREATE), str(AuditAction.UPDATE), str(AuditAction.PATCH))


def _type_codes(resource: Mapping[str, Any]) -> set[str]:
    """The LOINC codes of the item's type (``DiagnosticReport.code``, a document's ``type``)."""
    concept = resource.get("code" if resource.get("resourceType") == "DiagnosticReport" else "type")
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    return {
        c["code"]
        for c in (codings if isinstance(codings, list) else ())
        if isinstance(c, Mapping) and c.get("system") == LOINC and isinstance(c.get("code"), str)
    }


def key_document(resource: Mapping[str, Any]) -> KeyDocument | None:
    """Which key document ``resource`` is, if it is a filed one.

    Only reports and documents count: a ``DiagnosticReport``, ``DocumentReference`` or
    ``Composition`` in a filed status (``FINAL_STATUSES``; a ``DocumentReference`` whose
    ``docStatus`` is not preliminary). Individual Observations are the report's content, not
    the report. Then:

    - discharge report: its type (LOINC) is one of ``DISCHARGE_TYPES``;
    - lab results: its data category is ``lab-results`` (``categories.classify``: laboratory
      report and pathology codes, v2-0074 laboratory sections, a specimen, or explicit);
    - imaging report: its data category is ``imaging`` (radiology codes and sections);
    - patient summary: its data category is ``summaries`` (LOINC 60591-5, 60592-3, 48764-5, or
      explicit).
    """
    rtype = resource.get("resourceType")
    statuses = FINAL_STATUSES.get(rtype if isinstance(rtype, str) else "")
    if statuses is None or resource.get("status") not in statuses:
        return None
    if rtype == "DocumentReference" and resource.get("docStatus") not in (None, "final", "amended"):
        return None
    if _type_codes(resource) & DISCHARGE_TYPES:
        return KeyDocument.DISCHARGE_REPORT
    category = classify(resource)
    return _BY_CATEGORY.get(category) if category else None


@dataclass(frozen=True, slots=True)
class DueFiling:
    """One ended care on the author's worklist."""

    relationship_id: str
    patient_id: str
    context: str
    practitioner_id: str | None
    """The solo professional who files (None: the facility ``organization_id`` does)."""
    organization_id: str | None
    care_start: datetime
    care_end: datetime
    due: datetime
    declared: bool
    """The end of care was declared (``care.end_care``); else derived (see the module)."""
    filed: frozenset[KeyDocument]
    closed: bool
    """The due date has passed: the author can no longer file in the record."""

    @property
    def overdue(self) -> bool:
        """The due date passed with none of the four kinds filed. The platform cannot know which
        of them a care produced (a consultation may need no imaging report), so a care with some
        filed is not flagged: its kinds are listed for the author to judge."""
        return self.closed and not self.filed


@dataclass(frozen=True, slots=True)
class Worklist:
    """The cares of one worklist: ``cares`` as ``due_filings`` orders them, and whether more
    readable ones were left out past ``LISTED_MAX``."""

    cares: list[DueFiling]
    more: bool


def _side(principal: Principal) -> ColumnElement[bool] | None:
    """The relationships whose filings fall on ``principal``: a professional's own solo ones, and
    the registrations of the facility they act for (None: anyone else)."""
    if principal.kind is not PrincipalKind.PROFESSIONAL or not principal.practitioner_id:
        return None
    cr = care_relationship
    sides = [and_(cr.c.practitioner_id == principal.practitioner_id, cr.c.context == "solo")]
    if principal.organization_id:
        sides.append(
            and_(
                cr.c.organization_id == principal.organization_id,
                cr.c.practitioner_id.is_(None),
                cr.c.context.in_(("facility", "emergency")),
            )
        )
    return or_(*sides)


def _derived_end(context: str, starts: datetime, ends: datetime, deadline: timedelta) -> datetime:
    """The end of care of a relationship with none declared (see the module's docstring)."""
    if context == "facility":
        return ends
    return max(starts, ends - deadline)


def _readable_record(readable: AccessFilter, patient_id: ColumnElement[str]) -> ColumnElement[bool]:
    """The caller may read the ``Patient`` of ``patient_id`` now: their access decision opens the
    record to them."""
    p = resource.alias("filing_patient")
    return exists(
        select(p.c.pk).where(
            p.c.type == "Patient", p.c.id == patient_id, p.c.deleted.is_(False), readable(p, ("Patient",))
        )
    )


def due_filings(
    conn: Connection,
    principal: Principal,
    now: datetime,
    readable: AccessFilter,
    settings: Settings | None = None,
    *,
    limit: int = LISTED_MAX,
) -> Worklist:
    """The ended cares whose filings fall on ``principal`` (a professional: their own solo cares
    and their facility's) and whose record ``readable`` opens to them now, listed until
    ``LISTED_AFTER_DUE_DAYS`` after their due date: the ``limit`` latest due, then those still
    open first, soonest due first, then those closed, latest first. Anyone else (the holder,
    agency staff, a facility's system) gets an empty list.

    ``readable`` is the caller's own read filter (``FhirService.access_filter()`` of the service
    bound to their ``PolicySession``): it decides which cares are listed and which items count as
    filed (see the module's docstring).
    """
    side = _side(principal)
    if side is None:
        return Worklist([], False)
    deadline = timedelta(days=(settings or get_settings()).filing_deadline_days)
    since = now - timedelta(days=LISTED_AFTER_DUE_DAYS)
    cr, fd = care_relationship, filing_deadline
    due = func.coalesce(fd.c.due, cr.c.ends)
    rows = conn.execute(
        select(
            cr.c.id,
            cr.c.patient_id,
            cr.c.practitioner_id,
            cr.c.organization_id,
            cr.c.context,
            cr.c.starts,
            cr.c.ends,
            fd.c.care_start,
            fd.c.care_end,
            fd.c.due,
        )
        .select_from(cr.outerjoin(fd, fd.c.relationship_id == cr.c.id))
        .where(
            side,
            cr.c.context.in_(ENDED_CONTEXTS),
            cr.c.revoked_at.is_(None),
            cr.c.starts <= now,
            cr.c.ends.is_not(None),
            due >= since,
            # the care ended (``_derived_end`` <= now, in SQL: the limit counts ended cares only)
            or_(
                fd.c.care_end <= now,
                and_(fd.c.care_end.is_(None), cr.c.context == "facility", cr.c.ends <= now),
                and_(fd.c.care_end.is_(None), cr.c.context != "facility", cr.c.ends <= now + deadline),
            ),
            _readable_record(readable, cr.c.patient_id),
        )
        .order_by(due.desc(), cr.c.id)
        .limit(limit + 1)
    ).all()
    more = len(rows) > limit
    cares: list[_Care] = []
    for row in rows[:limit]:
        declared = row.care_end is not None
        start = row.care_start if declared else row.starts
        end = row.care_end if declared else _derived_end(row.context, row.starts, row.ends, deadline)
        cares.append(_Care(row, declared, start, end, row.due if declared else row.ends))
    filed = _filed(conn, cares, readable)
    found = [
        DueFiling(
            c.row.id,
            c.row.patient_id,
            c.row.context,
            c.row.practitioner_id,
            c.row.organization_id,
            c.start,
            c.end,
            c.due,
            c.declared,
            frozenset(filed.get(c.row.id, ())),
            c.due <= now,
        )
        for c in cares
        if c.end <= now
    ]
    open_ = sorted((f for f in found if not f.closed), key=lambda f: (f.due, f.relationship_id))
    closed = sorted((f for f in found if f.closed), key=lambda f: (f.due, f.relationship_id), reverse=True)
    return Worklist(open_ + closed, more)


@dataclass(frozen=True, slots=True)
class _Care:
    """A listed relationship and its care's dates, while its kinds filed are looked for."""

    row: Any
    """The relationship's row, as ``due_filings`` selects it."""
    declared: bool
    start: datetime
    end: datetime
    due: datetime

    def wrote(self, entry: Any) -> bool:
        """The access-log record ``entry`` is a write of this care's author side in its window."""
        if entry.patient_id != self.row.patient_id or not self.start <= entry.recorded <= self.due:
            return False
        if self.row.practitioner_id:
            return bool(entry.principal_ref == f"Practitioner/{self.row.practitioner_id}")
        return bool(entry.organization_id == self.row.organization_id and entry.principal_kind in _AUTHORS)


_AUTHORS = (str(PrincipalKind.PROFESSIONAL), str(PrincipalKind.SYSTEM))
"""Who writes for a facility: its professionals and its systems."""


def _filed(conn: Connection, cares: list[_Care], readable: AccessFilter) -> dict[str, set[KeyDocument]]:
    """Per relationship, the key documents its author side wrote in the record between care
    start and due date, among the items the caller may read now: one statement for the access
    log of every care, then the versions written in bulk."""
    if not cares:
        return {}
    a = audit_log
    practitioners = sorted({f"Practitioner/{c.row.practitioner_id}" for c in cares if c.row.practitioner_id})
    organizations = sorted({c.row.organization_id for c in cares if not c.row.practitioner_id})
    authors: list[ColumnElement[bool]] = []
    if practitioners:
        authors.append(a.c.principal_ref.in_(practitioners))
    if organizations:
        authors.append(and_(a.c.organization_id.in_(organizations), a.c.principal_kind.in_(_AUTHORS)))
    entries = conn.execute(
        select(
            a.c.patient_id,
            a.c.recorded,
            a.c.principal_ref,
            a.c.organization_id,
            a.c.principal_kind,
            a.c.resources,
        ).where(
            a.c.patient_id.in_(sorted({c.row.patient_id for c in cares})),
            a.c.action.in_(_FILING_ACTIONS),
            a.c.outcome == int(AuditOutcome.SUCCESS),
            a.c.recorded >= min(c.start for c in cares),
            a.c.recorded <= max(c.due for c in cares),
            or_(*authors),
        )
    ).all()
    # (patient, type, id, version) written -> the relationships whose author side wrote it
    written: dict[tuple[str, str, str, int], set[str]] = {}
    for entry in entries:
        mine = [c.row.id for c in cares if c.wrote(entry)]
        if not mine:
            continue
        for ref in orjson.loads(entry.resources):
            parts = ref.split("/") if isinstance(ref, str) else []
            if len(parts) != 4 or parts[0] not in FINAL_STATUSES or not parts[3].isdigit():
                continue
            written.setdefault((entry.patient_id, parts[0], parts[1], int(parts[3])), set()).update(mine)
    kinds: dict[str, set[KeyDocument]] = {}
    keys = sorted(written)
    for start in range(0, len(keys), ITEMS_PER_STATEMENT):
        for key, content in _readable_versions(conn, keys[start : start + ITEMS_PER_STATEMENT], readable):
            kind = key_document(orjson.loads(content)) if content else None
            if kind is not None:
                for rid in written[key]:
                    kinds.setdefault(rid, set()).add(kind)
    return kinds


def _readable_versions(
    conn: Connection, keys: list[tuple[str, str, str, int]], readable: AccessFilter
) -> list[tuple[tuple[str, str, str, int], str | None]]:
    """The content of each version ``(patient, type, id, version)`` of ``keys`` whose resource is
    still in that patient's record, not deleted, and readable by the caller now (as a ``vread``
    decides: by the resource's current row)."""
    wanted = set(keys)
    r, v, c = resource, resource_version, resource_compartment
    types = sorted({k[1] for k in keys})
    rows = conn.execute(
        select(c.c.patient_id, r.c.type, r.c.id, v.c.version, v.c.content)
        .select_from(r.join(v, v.c.res_pk == r.c.pk).join(c, c.c.res_pk == r.c.pk))
        .where(
            r.c.type.in_(types),
            r.c.id.in_(sorted({k[2] for k in keys})),
            v.c.version.in_(sorted({k[3] for k in keys})),
            c.c.patient_id.in_(sorted({k[0] for k in keys})),
            r.c.deleted.is_(False),
            readable(r, types),
        )
    ).all()
    found = [((row.patient_id, row.type, row.id, row.version), row.content) for row in rows]
    return [(key, content) for key, content in found if key in wanted]
