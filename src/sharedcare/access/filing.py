"""The filing deadline after the end of care (art. 9(3), LAW-AND-CROSSBORDER.md §A.9): the
author's worklist.

Lab results, clinical summaries and discharge reports, imaging reports and the patient summary
are filed by their author no later than ``filing_deadline_days`` (15) after the end of care.
``due_filings`` lists, for a professional or a facility's system, the cares that ended, their
due date, and which of these four kinds the author side filed so far. It is the author's list:
nothing of it is shown to the holder (who sees the end of care in their access log only).

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

**Kinds filed** come from the access log, the trace of who wrote what (as ``access.requests``
finds an item's author): the successful create, update and patch records on the holder's record
recorded between care start and due date, by the author side: the professional (their
``Practitioner`` reference) for a solo relationship, the organisation's professionals and
systems (``organization_id``) for a registration. Each version written is read back and
recognised by ``key_document``. An item since erased, or withdrawn by the holder's objection,
was filed all the same: the author did their part.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Connection, and_, or_, select

from sharedcare.access.care import ENDED_CONTEXTS
from sharedcare.access.categories import LOINC, DataCategory, classify
from sharedcare.access.models import care_relationship, filing_deadline
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit.log import AuditAction, AuditOutcome
from sharedcare.audit.models import audit_log
from sharedcare.settings import Settings, get_settings
from sharedcare.storage.tables import resource, resource_version

LISTED_AFTER_DUE_DAYS = 90
"""How long an ended care stays on the worklist after its due date."""


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


def _side(principal: Principal) -> ColumnElement[bool] | None:
    """The relationships whose filings fall on ``principal``: a professional's own solo ones, and
    the registrations of the facility a professional or system acts for."""
    cr = care_relationship
    sides: list[ColumnElement[bool]] = []
    if principal.kind is PrincipalKind.PROFESSIONAL and principal.practitioner_id:
        sides.append(and_(cr.c.practitioner_id == principal.practitioner_id, cr.c.context == "solo"))
    if principal.kind in (PrincipalKind.PROFESSIONAL, PrincipalKind.SYSTEM) and principal.organization_id:
        sides.append(
            and_(
                cr.c.organization_id == principal.organization_id,
                cr.c.practitioner_id.is_(None),
                cr.c.context.in_(("facility", "emergency")),
            )
        )
    return or_(*sides) if sides else None


def _derived_end(context: str, starts: datetime, ends: datetime, deadline: timedelta) -> datetime:
    """The end of care of a relationship with none declared (see the module's docstring)."""
    if context == "facility":
        return ends
    return max(starts, ends - deadline)


def due_filings(
    conn: Connection, principal: Principal, now: datetime, settings: Settings | None = None
) -> list[DueFiling]:
    """The ended cares whose filings fall on ``principal`` (a professional: their own solo cares
    and their facility's; a facility's system: the facility's), listed until
    ``LISTED_AFTER_DUE_DAYS`` after their due date: those still open first, soonest due first,
    then those closed, latest first. Anyone else (the holder, agency staff) gets an empty list.
    """
    side = _side(principal)
    if side is None:
        return []
    deadline = timedelta(days=(settings or get_settings()).filing_deadline_days)
    since = now - timedelta(days=LISTED_AFTER_DUE_DAYS)
    cr, fd = care_relationship, filing_deadline
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
            or_(fd.c.due >= since, and_(fd.c.due.is_(None), cr.c.ends >= since)),
        )
    ).all()
    found: list[DueFiling] = []
    for row in rows:
        declared = row.care_end is not None
        start = row.care_start if declared else row.starts
        end = row.care_end if declared else _derived_end(row.context, row.starts, row.ends, deadline)
        due = row.due if declared else row.ends
        if end > now:
            continue
        found.append(
            DueFiling(
                row.id,
                row.patient_id,
                row.context,
                row.practitioner_id,
                row.organization_id,
                start,
                end,
                due,
                declared,
                _filed(conn, row.patient_id, row.practitioner_id, row.organization_id, start, due),
                due <= now,
            )
        )
    open_ = sorted((f for f in found if not f.closed), key=lambda f: (f.due, f.relationship_id))
    closed = sorted((f for f in found if f.closed), key=lambda f: (f.due, f.relationship_id), reverse=True)
    return open_ + closed


def _filed(
    conn: Connection,
    patient_id: str,
    practitioner_id: str | None,
    organization_id: str | None,
    start: datetime,
    due: datetime,
) -> frozenset[KeyDocument]:
    """The key documents the author side wrote in the record between ``start`` and ``due``."""
    a = audit_log
    if practitioner_id:
        author: ColumnElement[bool] = a.c.principal_ref == f"Practitioner/{practitioner_id}"
    else:
        author = and_(
            a.c.organization_id == organization_id,
            a.c.principal_kind.in_((str(PrincipalKind.PROFESSIONAL), str(PrincipalKind.SYSTEM))),
        )
    written = conn.execute(
        select(a.c.resources).where(
            a.c.patient_id == patient_id,
            a.c.action.in_(_FILING_ACTIONS),
            a.c.outcome == int(AuditOutcome.SUCCESS),
            a.c.recorded >= start,
            a.c.recorded <= due,
            author,
        )
    ).scalars()
    kinds: set[KeyDocument] = set()
    rv, r = resource_version, resource
    for resources in written:
        for ref in orjson.loads(resources):
            parts = ref.split("/") if isinstance(ref, str) else []
            if len(parts) != 4 or parts[0] not in FINAL_STATUSES or not parts[3].isdigit():
                continue
            content = conn.execute(
                select(rv.c.content)
                .join(r, r.c.pk == rv.c.res_pk)
                .where(r.c.type == parts[0], r.c.id == parts[1], rv.c.version == int(parts[3]))
            ).scalar_one_or_none()
            kind = key_document(orjson.loads(content)) if content else None
            if kind is not None:
                kinds.add(kind)
    return frozenset(kinds)
