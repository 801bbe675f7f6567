"""The holder's rights on the items of their record (§A.4) and the consultation d'annonce.

- **Pending disclosure** (law of 24 July 2014, art. 16(5)): an author marks an item with the
  ``meta.security`` code ``PENDING-DISCLOSURE`` of ``DISCLOSURE_SYSTEM``; the holder and their
  representatives do not see it (the access decision reads the store's ``_security`` index)
  until a professional who may write it releases it (``release_disclosure``, or an update
  that drops the code), with the patient present.
- **Objection to filing** (art. 6(3)): the holder withdraws an item from the shared record; it
  is in no professional's or facility system's view any more, the holder still sees it and may
  undo the objection. A ``Consent`` (deny, data = the item) and a ``filing_objection`` row.
- **Rectification** (art. 6(5), to the item's author) and **erasure** (GDPR art. 17, to the
  Agence as controller): a FHIR ``Task`` in the holder's record and a ``record_request`` row;
  the author's professionals and systems see and decide rectifications, agency administrators
  decide erasures. An approved erasure removes the item, every version and index row, in the
  deciding transaction, and leaves an audit record naming it.
- **Filing request** (art. 9(2), §A.9): the holder asks a professional they have or had a care
  relationship with to file an item not yet in the record; a ``Task`` owned by that
  Practitioner, due ``filing_request_days`` later (``Task.restriction.period.end``), that only
  this professional (and the Agence) sees and completes; its row names the record itself
  (``Patient/<id>``) since the item does not exist yet. Open requests past their due date are
  overdue (``RecordRequest.overdue``) in both lists, and announced once to the holder and the
  professional by a daily job (``access.filing_notices``).

Every function runs in one transaction of the caller's session-bound ``FhirService``: the item
is looked up through the caller's own access decision (an item they may not see answers as an
unknown one), the Consent or Task is written by the platform, and the act is audited before the
commit. Errors are ``RequestError``s, whose messages are written for people.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Row, delete, func, select, update

from sharedcare.access.consent import audit_change, deactivate_consent, fhir_consent, write_consent
from sharedcare.access.minors import delegation_in_force
from sharedcare.access.models import care_relationship, delegation, filing_objection, record_request
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit import log as audit
from sharedcare.audit.models import audit_log
from sharedcare.fhir.errors import Forbidden, Gone, NotFound
from sharedcare.fhir.service import FhirService, serialize
from sharedcare.fhir.session import Interaction
from sharedcare.fhir.store import Stored, instant
from sharedcare.storage.tables import INDEX_TABLES, resource, resource_compartment, resource_version

DISCLOSURE_SYSTEM = "https://sharedcare.lu/fhir/CodeSystem/disclosure"
"""Our code system of disclosure holds, for ``meta.security``."""
PENDING_DISCLOSURE = "PENDING-DISCLOSURE"
"""The item waits for a consultation d'annonce: hidden from the holder until released."""
PENDING_TAG = {
    "system": DISCLOSURE_SYSTEM,
    "code": PENDING_DISCLOSURE,
    "display": "Pending disclosure to the patient",
}
REQUEST_SYSTEM = "https://sharedcare.lu/fhir/CodeSystem/record-request"
"""Our code system of the holder's requests on an item (``Task.code``)."""
RECTIFY = "rectify"
ERASE = "erase"
FILE = "file"
KINDS = (RECTIFY, ERASE, FILE)
ADDRESSED = (RECTIFY, FILE)
"""Kinds addressed to a professional (or their organisation), who sees and decides them."""
OBJECTION = "object-to-filing"
"""``Consent.policyRule`` code (in ``consent.CHOICE_SYSTEM``) of an objection to filing."""
AGENCY_OWNER: dict[str, Any] = {
    "identifier": {
        "system": "https://sharedcare.lu/fhir/NamingSystem/organization",
        "value": "agence-esante",
    },
    "display": "Agence eSanté",
}
"""``Task.owner`` of the requests the Agence handles: erasures, and rectifications of items whose
author is unknown."""

OPEN = ("requested", "accepted")
FILE_OPEN_MAX = 10
"""Open filing requests a holder may have with one professional at a time (a request is a duty
with a deadline for its professional: not a channel to flood)."""
_BREAK_GLASS = "override"
"""The emergency override's relationship (``access.policy.OVERRIDE``): opened by the professional,
not a care the holder took part in, so no ground to ask them to file."""
DECISIONS = ("accepted", "rejected", "completed", "cancelled")
REASON_MAX = 2000
_REFERENCE = re.compile(r"^([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})$")
_DISPLAY = {RECTIFY: "Rectification of an item", ERASE: "Erasure of an item", FILE: "Filing of an item"}

# categories an objection or request cannot be about (identity is the record itself, the holder's
# own choices and the access log are not filed items, the holder writes their own area freely);
# the read filter relies on it: an item of these categories has no objection to look for
NOT_OBJECTABLE = frozenset(
    {"identity", "holder-choices", "access-traces", "personal-expression", "reference", "unclassified"}
)
_NOT_RECTIFIABLE = frozenset({"holder-choices", "access-traces", "personal-expression", "reference"})
_NOT_ERASABLE = frozenset({"identity", "holder-choices", "access-traces", "reference"})
_AUTHOR_ELEMENTS = ("author", "recorder", "asserter", "performer", "requester", "practitioner", "sender")


class RequestError(Exception):
    """A request the holder's rights do not allow as given; the message is for people."""

    status = 400


class UnknownItem(RequestError):
    """No such item or request, or the caller may not see it (the same answer, on purpose)."""

    status = 404


class NotAllowed(RequestError):
    """The caller sees the item or request but may not do this with it."""

    status = 403


class RequestConflict(RequestError):
    """The item or request is not in a state that allows this (already done, already closed)."""

    status = 409


@dataclass(frozen=True, slots=True)
class RecordRequest:
    """A rectification, erasure or filing request as the portal lists it."""

    id: str
    patient_id: str
    kind: str
    reference: str
    status: str
    reason: str | None
    decision_reason: str | None
    created: datetime
    decided_at: datetime | None
    author_practitioner_id: str | None
    owner_organization_id: str | None
    due: datetime | None = None
    """When a filing request must be done by (its Task's ``restriction.period.end``)."""

    @property
    def open(self) -> bool:
        return self.status in OPEN

    def overdue(self, now: datetime) -> bool:
        """Still open after its due date (a filing request past art. 9(2)'s deadline)."""
        return self.open and self.due is not None and now > self.due


def _request(row: Row[Any], due: datetime | None = None) -> RecordRequest:
    return RecordRequest(
        row.id,
        row.patient_id,
        row.kind,
        f"{row.resource_type}/{row.resource_id}",
        row.status,
        row.reason,
        row.decision_reason,
        row.created,
        row.decided_at,
        row.author_practitioner_id,
        row.owner_organization_id,
        due,
    )


# -- pending disclosure ----------------------------------------------------------------------------
def is_pending(res: Mapping[str, Any]) -> bool:
    """Whether the resource waits for its consultation d'annonce."""
    meta = res.get("meta")
    security = meta.get("security") if isinstance(meta, dict) else None
    return isinstance(security, list) and any(
        isinstance(c, dict) and c.get("system") == DISCLOSURE_SYSTEM and c.get("code") == PENDING_DISCLOSURE
        for c in security
    )


def mark_pending(res: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``res`` held back from the holder until released (for authors writing it)."""
    out = dict(res)
    meta = dict(out.get("meta") or {})
    if not is_pending(out):
        meta["security"] = [*meta.get("security", []), dict(PENDING_TAG)]
    out["meta"] = meta
    return out


def without_pending(res: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``res`` released to the holder."""
    out = dict(res)
    meta = dict(out.get("meta") or {})
    kept = [
        c
        for c in meta.get("security", [])
        if not (
            isinstance(c, dict)
            and c.get("system") == DISCLOSURE_SYSTEM
            and c.get("code") == PENDING_DISCLOSURE
        )
    ]
    if kept:
        meta["security"] = kept
    else:
        meta.pop("security", None)
    out["meta"] = meta
    return out


def release_disclosure(svc: FhirService, reference: str) -> Stored:
    """Release a pending item to the holder: its author, or any professional who may write it,
    with the patient present. ``svc`` is bound to the caller's session: the item must be in the
    caller's view (else ``UnknownItem``) and writable by them (else ``NotAllowed``); the update
    and the release are in the record's access log."""
    rtype, rid = _parse(reference)
    with svc.transaction() as conn:
        serialize(conn, f"{rtype}/{rid}")
        current = _visible(svc, conn, rtype, rid, "u")
        res = current.resource()
        if not is_pending(res):
            raise RequestConflict("This item is not held back: the patient already sees it")
        try:
            outcome = svc.update_in(conn, rtype, rid, without_pending(res))
        except (Forbidden, NotFound) as exc:
            raise NotAllowed("Only a professional who may write this item can release it") from exc
        if svc.session is not None:
            svc.session.record(
                conn,
                Interaction(
                    "operation",
                    rtype,
                    [outcome.stored],
                    query=f"{reference}/$release-disclosure",
                    operation="release-disclosure",
                ),
            )
    return outcome.stored


# -- objection to filing ---------------------------------------------------------------------------
def object_to_filing(
    svc: FhirService, who: Principal, reference: str, now: datetime, *, patient_id: str | None = None
) -> str:
    """The holder (or a representative) withdraws an item from the shared record: no professional
    or facility system sees it any more (trusted platform clients, the Agence's own, still do).
    Returns the objection's Consent id."""
    _holder_side(who)
    rtype, rid = _parse(reference)
    with svc.transaction() as conn:
        stored = _visible(svc, conn, rtype, rid, "r")
        patient = _holder_patient(conn, who, stored, now, patient_id)
        _refuse_category(conn, stored, NOT_OBJECTABLE)
        if _objection(conn, patient, rtype, rid) is not None:
            raise RequestConflict("You have already withdrawn this item from the shared record")
        objection = fhir_consent(patient, OBJECTION, "deny", now, data=reference)
        consent_id = write_consent(conn, svc, objection)
        conn.execute(
            filing_objection.insert().values(
                id=uuid.uuid4().hex,
                patient_id=patient,
                resource_type=rtype,
                resource_id=rid,
                created=now,
                created_by=who.subject,
                consent_id=consent_id,
            )
        )
        audit_change(conn, who, patient, f"object-to-filing {reference}", consent_id)
    return consent_id


def withdraw_objection(
    svc: FhirService, who: Principal, reference: str, now: datetime, *, patient_id: str | None = None
) -> None:
    """Undo an objection: the item is filed again, for whoever may see it."""
    _holder_side(who)
    rtype, rid = _parse(reference)
    with svc.transaction() as conn:
        stored = _visible(svc, conn, rtype, rid, "r")
        patient = _holder_patient(conn, who, stored, now, patient_id)
        row = _objection(conn, patient, rtype, rid)
        if row is None:
            raise RequestConflict("This item is not withdrawn from the shared record")
        conn.execute(update(filing_objection).where(filing_objection.c.id == row.id).values(removed_at=now))
        deactivate_consent(conn, svc, row.consent_id)
        audit_change(conn, who, patient, f"withdraw-objection {reference}", row.consent_id)


def objections(conn: Connection, patient_id: str) -> set[str]:
    """The items of the record the holder has withdrawn (``Type/id``)."""
    fo = filing_objection
    rows = conn.execute(
        select(fo.c.resource_type, fo.c.resource_id).where(
            fo.c.patient_id == patient_id, fo.c.removed_at.is_(None)
        )
    )
    return {f"{r.resource_type}/{r.resource_id}" for r in rows}


def _objection(conn: Connection, patient_id: str, rtype: str, rid: str) -> Any:
    fo = filing_objection
    return conn.execute(
        select(fo.c.id, fo.c.consent_id).where(
            fo.c.patient_id == patient_id,
            fo.c.resource_type == rtype,
            fo.c.resource_id == rid,
            fo.c.removed_at.is_(None),
        )
    ).first()


# -- rectification and erasure requests ----------------------------------------------------------
def file_request(
    svc: FhirService,
    who: Principal,
    reference: str,
    kind: str,
    reason: str,
    now: datetime,
    *,
    patient_id: str | None = None,
) -> RecordRequest:
    """The holder asks for an item to be corrected (by its author's organisation, or the Agence
    when the author is unknown) or erased (by the Agence). One open request per kind and item."""
    _holder_side(who)
    if kind not in (RECTIFY, ERASE):
        raise RequestError("Choose what you ask for: a correction or an erasure")
    text = reason.strip()
    if not text:
        raise RequestError(
            "Say what is wrong with this item" if kind == RECTIFY else "Say why this item should be erased"
        )
    if len(text) > REASON_MAX:
        raise RequestError("Keep the explanation under 2000 characters")
    rtype, rid = _parse(reference)
    with svc.transaction() as conn:
        stored = _visible(svc, conn, rtype, rid, "r")
        patient = _holder_patient(conn, who, stored, now, patient_id)
        _refuse_category(conn, stored, _NOT_RECTIFIABLE if kind == RECTIFY else _NOT_ERASABLE)
        rq = record_request
        already = conn.execute(
            select(rq.c.id).where(
                rq.c.patient_id == patient,
                rq.c.kind == kind,
                rq.c.resource_type == rtype,
                rq.c.resource_id == rid,
                rq.c.status.in_(OPEN),
            )
        ).first()
        if already is not None:
            raise RequestConflict("You have already asked for this: your request is still open")
        practitioner, organization = _author(conn, stored, patient) if kind == RECTIFY else (None, None)
        task = _task(who, patient, kind, text, now, practitioner, organization, focus=reference)
        task_id = svc.for_session(None).create_in(conn, task).stored.id
        conn.execute(
            rq.insert().values(
                id=task_id,
                patient_id=patient,
                kind=kind,
                resource_type=rtype,
                resource_id=rid,
                item_version=stored.version,
                status="requested",
                author_practitioner_id=practitioner,
                owner_organization_id=organization,
                reason=text,
                created=now,
                created_by=who.subject,
            )
        )
        _audit(conn, who, audit.AuditAction.CREATE, patient, f"request-{kind} {reference}", task_id)
        row = conn.execute(select(rq).where(rq.c.id == task_id)).one()
    return _request(row)


def ask_to_file(
    svc: FhirService,
    who: Principal,
    practitioner_id: str,
    description: str,
    now: datetime,
    days: int,
    *,
    patient_id: str | None = None,
) -> RecordRequest:
    """The holder asks a professional they have or had a care relationship with to file an item
    (art. 9(2)): a Task owned by that Practitioner, due ``days`` from ``now``. The record is read
    through the caller's access decision (``Patient/<id>``, else ``UnknownItem``)."""
    _holder_side(who)
    text = description.strip()
    if not text:
        raise RequestError("Describe the item to file")
    if len(text) > REASON_MAX:
        raise RequestError("Keep the explanation under 2000 characters")
    wanted = patient_id or who.patient_id
    if not wanted:
        raise UnknownItem("There is no such item, or you have no access to it")
    with svc.transaction() as conn:
        record = _visible(svc, conn, "Patient", wanted, "r")
        patient = _holder_patient(conn, who, record, now, wanted)
        serialize(conn, f"file-requests/{patient}")  # the count below stays true until commit
        cr = care_relationship
        known = conn.execute(
            select(cr.c.id).where(
                cr.c.patient_id == patient,
                cr.c.practitioner_id == practitioner_id,
                cr.c.starts <= now,
                cr.c.context != _BREAK_GLASS,
            )
        ).first()
        if not practitioner_id or known is None:
            raise RequestError("Choose a professional who takes or took part in your care")
        rq = record_request
        pending = conn.execute(
            select(func.count())
            .select_from(rq)
            .where(
                rq.c.patient_id == patient,
                rq.c.kind == FILE,
                rq.c.author_practitioner_id == practitioner_id,
                rq.c.status.in_(OPEN),
            )
        ).scalar_one()
        if pending >= FILE_OPEN_MAX:
            raise RequestError(
                "You already have 10 open requests to this professional: wait for their answer or cancel one"
            )
        due = now + timedelta(days=days)
        task = _task(who, patient, FILE, text, now, practitioner_id, None, due=due)
        task_id = svc.for_session(None).create_in(conn, task).stored.id
        conn.execute(
            rq.insert().values(
                id=task_id,
                patient_id=patient,
                kind=FILE,
                resource_type="Patient",
                resource_id=patient,
                item_version=record.version,
                status="requested",
                author_practitioner_id=practitioner_id,
                owner_organization_id=None,
                reason=text,
                created=now,
                created_by=who.subject,
            )
        )
        what = f"request-{FILE} Practitioner/{practitioner_id}"
        _audit(conn, who, audit.AuditAction.CREATE, patient, what, task_id)
        row = conn.execute(select(rq).where(rq.c.id == task_id)).one()
    return _request(row, due)


def decide(
    svc: FhirService, who: Principal, request_id: str, status: str, reason: str, now: datetime
) -> RecordRequest:
    """Move a request on: ``accepted``, ``rejected`` (with a reason), ``completed`` or
    ``cancelled`` (by the holder). Rectifications are decided by their author (the professional,
    or the professionals and systems of the author's organisation) or the Agence, and completed
    only once the item has been corrected; erasures by agency administrators, and completing one
    erases the item; filing requests by the professional asked (or the Agence). A request the
    caller may not see answers as unknown."""
    if status not in DECISIONS:
        raise RequestError("Choose accept, reject, complete or cancel")
    text = reason.strip()
    if len(text) > REASON_MAX:
        raise RequestError("Keep the explanation under 2000 characters")
    rq = record_request
    with svc.transaction() as conn:
        serialize(conn, f"Task/{request_id}")
        row = conn.execute(select(rq).where(rq.c.id == request_id)).first()
        if row is None or not _sees_request(svc, conn, who, request_id):
            raise UnknownItem("There is no such request, or you have no access to it")
        if not _may_decide(who, row.kind, status):
            raise NotAllowed(
                "Only the holder can cancel a request"
                if status == "cancelled"
                else "Only the author of the item or the Agence can decide this request"
                if row.kind == RECTIFY
                else "Only the professional asked or the Agence can decide this request"
                if row.kind == FILE
                else "Only an agency administrator can decide an erasure request"
            )
        if row.status not in OPEN or row.status == status:
            raise RequestConflict("This request is already decided")
        if status == "rejected" and not text:
            raise RequestError("Give the reason for the refusal")
        reference = f"{row.resource_type}/{row.resource_id}"
        output: list[dict[str, Any]] = []
        if status == "completed" and row.kind == RECTIFY:
            current = svc.for_session(None).store.current(conn, row.resource_type, row.resource_id)
            if current is None or current.version <= row.item_version:
                raise RequestConflict("Correct the item first: it has not changed since the request")
            corrected = f"{reference}/_history/{current.version}"
            output.append({"type": {"text": "Corrected version"}, "valueReference": {"reference": corrected}})
        erased = None
        if status == "completed" and row.kind == ERASE:
            erased = erase_item(conn, row.resource_type, row.resource_id, now)
            output.append({"type": {"text": "Erased item"}, "valueString": reference})
        _update_task(svc, conn, request_id, status, text, now, output)
        conn.execute(
            update(rq)
            .where(rq.c.id == request_id)
            .values(status=status, decision_reason=text or None, decided_at=now, decided_by=who.subject)
        )
        if erased is not None:
            audit.append(
                conn,
                audit.record_for(
                    who,
                    audit.AuditAction.DELETE,
                    patient_id=row.patient_id,
                    interaction="erase",
                    resources=(reference,),
                    outcome_desc=f"{erased} versions erased at the request Task/{request_id}",
                ),
            )
        _audit(
            conn, who, audit.AuditAction.UPDATE, row.patient_id, f"{row.kind}-request {status}", request_id
        )
        done = conn.execute(select(rq).where(rq.c.id == request_id)).one()
        due = due_dates(conn, [done]).get(request_id)
    return _request(done, due)


def erase_item(conn: Connection, rtype: str, rid: str, now: datetime) -> int:
    """Remove an item from the store for good: the resource, every version, its index rows and
    compartment links (no FHIR soft delete), and end the objections to it. Returns how many
    versions went. Runs in the caller's transaction."""
    serialize(conn, f"{rtype}/{rid}")
    pk = conn.execute(select(resource.c.pk).where(resource.c.type == rtype, resource.c.id == rid)).scalar()
    if pk is None:
        return 0
    versions = int(
        conn.execute(
            select(func.count()).select_from(resource_version).where(resource_version.c.res_pk == pk)
        ).scalar_one()
    )
    for table in (*INDEX_TABLES.values(), resource_compartment, resource_version):
        conn.execute(delete(table).where(table.c.res_pk == pk))
    conn.execute(delete(resource).where(resource.c.pk == pk))
    fo = filing_objection
    conn.execute(
        update(fo)
        .where(fo.c.resource_type == rtype, fo.c.resource_id == rid, fo.c.removed_at.is_(None))
        .values(removed_at=now)
    )
    return versions


def requests_of(conn: Connection, patient_id: str) -> list[RecordRequest]:
    """The holder's requests, newest first (their own data: the "my requests" list)."""
    rq = record_request
    rows = list(
        conn.execute(select(rq).where(rq.c.patient_id == patient_id).order_by(rq.c.created.desc(), rq.c.id))
    )
    due = due_dates(conn, rows)
    return [_request(r, due.get(r.id)) for r in rows]


def rectification_requests(svc: FhirService, *, open_only: bool = True) -> list[RecordRequest]:
    """The rectification requests the caller (an author) may see, newest first."""
    return addressed_requests(svc, (RECTIFY,), open_only=open_only)


def addressed_requests(
    svc: FhirService, kinds: Iterable[str] = ADDRESSED, *, open_only: bool = True
) -> list[RecordRequest]:
    """The requests of ``kinds`` addressed to the caller (a professional or facility system)
    that they may see, newest first: read as Tasks through the caller's access decision (and
    audited), then their projection rows; a filing request's due date from its Task."""
    codes = ",".join(f"{REQUEST_SYSTEM}|{kind}" for kind in kinds)
    params = [("code", codes), ("_count", "200"), ("_sort", "-_lastUpdated")]
    if open_only:
        params.append(("status", ",".join(OPEN)))
    found = svc.search(svc.parse_search("Task", params, strict=True)).matches
    due = {s.id: _due_of(s.resource()) for s in found if s.content is not None}
    ids = [s.id for s in found]
    if not ids:
        return []
    rq = record_request
    with svc.engine.connect() as conn:
        rows = {r.id: _request(r, due.get(r.id)) for r in conn.execute(select(rq).where(rq.c.id.in_(ids)))}
    return [rows[i] for i in ids if i in rows]


def _due_of(task: Mapping[str, Any]) -> datetime | None:
    """``Task.restriction.period.end`` as naive UTC (the stored form), or None."""
    end = ((task.get("restriction") or {}).get("period") or {}).get("end")
    if not isinstance(end, str):
        return None
    try:
        moment = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def due_dates(conn: Connection, rows: Iterable[Row[Any]]) -> dict[str, datetime]:
    """The due dates of the filing requests among ``rows``, from their current Tasks."""
    ids = [r.id for r in rows if r.kind == FILE]
    if not ids:
        return {}
    found = conn.execute(
        select(resource.c.id, resource.c.content).where(resource.c.type == "Task", resource.c.id.in_(ids))
    )
    dates = {r.id: _due_of(orjson.loads(r.content)) for r in found if r.content}
    return {k: v for k, v in dates.items() if v is not None}


def erasure_requests(conn: Connection, *, open_only: bool = True) -> list[RecordRequest]:
    """The erasure requests addressed to the Agence (metadata: what its administrators decide on)."""
    rq = record_request
    query = select(rq).where(rq.c.kind == ERASE)
    if open_only:
        query = query.where(rq.c.status.in_(OPEN))
    return [_request(r) for r in conn.execute(query.order_by(rq.c.created, rq.c.id))]


def _task(
    who: Principal,
    patient_id: str,
    kind: str,
    reason: str,
    now: datetime,
    practitioner: str | None,
    organization: str | None,
    *,
    focus: str | None = None,
    due: datetime | None = None,
) -> dict[str, Any]:
    if organization:
        owner: dict[str, Any] = {"reference": f"Organization/{organization}"}
    elif practitioner:
        owner = {"reference": f"Practitioner/{practitioner}"}
    else:
        owner = dict(AGENCY_OWNER)
    own = who.kind is PrincipalKind.PATIENT and who.patient_id == patient_id
    requester = (
        {"reference": f"Patient/{patient_id}"} if own else {"display": who.display or "Representative"}
    )
    task: dict[str, Any] = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "priority": "routine",
        "code": {"coding": [{"system": REQUEST_SYSTEM, "code": kind, "display": _DISPLAY[kind]}]},
        "description": f"{_DISPLAY[kind]} asked by the holder of the record"
        + (f": {focus}" if focus else ""),
    }
    if focus is not None:
        task["focus"] = {"reference": focus}
    task |= {
        "for": {"reference": f"Patient/{patient_id}"},
        "authoredOn": instant(now),
        "lastModified": instant(now),
        "requester": requester,
        "owner": owner,
    }
    if due is not None:
        task["restriction"] = {"period": {"start": instant(now), "end": instant(due)}}
    task["note"] = [{"text": reason, "time": instant(now)}]
    return task


def _update_task(
    svc: FhirService,
    conn: Connection,
    task_id: str,
    status: str,
    reason: str,
    now: datetime,
    output: list[dict[str, Any]],
) -> None:
    internal = svc.for_session(None)
    current = internal.store.current(conn, "Task", task_id)
    if current is None or current.deleted:
        return  # the projection row is the request's truth for the decision; nothing to mirror
    task = current.resource()
    task["status"] = status
    task["lastModified"] = instant(now)
    if reason:
        if status in ("rejected", "cancelled"):
            task["statusReason"] = {"text": reason}
        else:
            task["note"] = [*task.get("note", []), {"text": reason, "time": instant(now)}]
    if output:
        task["output"] = output
    internal.update_in(conn, "Task", task_id, task)


def _may_decide(who: Principal, kind: str, status: str) -> bool:
    if status == "cancelled":
        return who.kind in (PrincipalKind.PATIENT, PrincipalKind.REPRESENTATIVE)
    if who.kind is PrincipalKind.ADMIN or (who.kind is PrincipalKind.SYSTEM and who.trusted):
        return True
    # the author's side (or the professional asked to file) sees a request only when the access
    # decision names it the owner
    return kind in ADDRESSED and who.kind in (PrincipalKind.PROFESSIONAL, PrincipalKind.SYSTEM)


def _sees_request(svc: FhirService, conn: Connection, who: Principal, task_id: str) -> bool:
    """Agency staff see the requests' metadata (the Agence handles them, §A.8); everyone else
    sees a request only through their access decision on its Task."""
    if who.is_staff:
        return True
    current = svc.store.current(conn, "Task", task_id)
    return current is not None and not current.deleted and svc.visible(conn, current)


def _author(conn: Connection, stored: Stored, patient_id: str) -> tuple[str | None, str | None]:
    """The professional and organisation that wrote the item: from its creation in the access
    log (a professional's or facility system's create), else from its author-like elements."""
    a = audit_log
    created = conn.execute(
        select(a.c.principal_kind, a.c.principal_ref, a.c.organization_id)
        .where(
            a.c.patient_id == patient_id,
            a.c.action == str(audit.AuditAction.CREATE),
            a.c.resources.like(f'%"{stored.type}/{stored.id}/_history/1"%'),
        )
        .order_by(a.c.pk)
        .limit(1)
    ).first()
    if created is not None and created.principal_kind in (PrincipalKind.PROFESSIONAL, PrincipalKind.SYSTEM):
        ref = created.principal_ref or ""
        practitioner = ref.removeprefix("Practitioner/") if ref.startswith("Practitioner/") else None
        if practitioner or created.organization_id:
            return practitioner, created.organization_id
    res = stored.resource()
    refs = [r for name in _AUTHOR_ELEMENTS for r in _references(res.get(name))]
    practitioner = next(
        (r.removeprefix("Practitioner/") for r in refs if r.startswith("Practitioner/")), None
    )
    organization = next(
        (r.removeprefix("Organization/") for r in refs if r.startswith("Organization/")), None
    )
    return practitioner, organization


def _references(value: Any) -> Iterable[str]:
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, dict):
            ref = item.get("reference") or (item.get("actor") or {}).get("reference")
            if isinstance(ref, str) and _REFERENCE.match(ref):
                yield ref


# -- shared steps ------------------------------------------------------------------------------------
def _parse(reference: str) -> tuple[str, str]:
    match = _REFERENCE.match(reference.strip())
    if match is None:
        raise UnknownItem("Choose an item of the record")
    return match.group(1), match.group(2)


def _holder_side(who: Principal) -> None:
    if who.kind not in (PrincipalKind.PATIENT, PrincipalKind.REPRESENTATIVE):
        raise NotAllowed("Only the holder of the record or their representative can ask for this")


def _visible(svc: FhirService, conn: Connection, rtype: str, rid: str, interaction: str) -> Stored:
    """The item's current version, if the caller's access decision shows it (and their scopes
    allow ``interaction`` on its type); else ``UnknownItem``, whether it exists or not."""
    if svc.session is not None:
        try:
            svc.session.require(rtype, interaction)
        except Forbidden as exc:
            raise NotAllowed(str(exc)) from exc
    if rtype not in svc.defs.resource_types:
        raise UnknownItem("There is no such item, or you have no access to it")
    try:
        current = svc.store.current(conn, rtype, rid)
    except (NotFound, Gone):
        current = None
    if current is None or current.deleted or not svc.visible(conn, current):
        raise UnknownItem("There is no such item, or you have no access to it")
    return current


def _holder_patient(
    conn: Connection, who: Principal, stored: Stored, now: datetime, wanted: str | None
) -> str:
    """The record (of the holder's own or those they represent) the item belongs to."""
    c = resource_compartment
    owners = set(conn.execute(select(c.c.patient_id).where(c.c.res_pk == stored.pk)).scalars())
    d = delegation
    mine = set(
        conn.execute(
            select(d.c.patient_id).where(
                d.c.account_id == who.subject,
                delegation_in_force(d, now),
            )
        ).scalars()
    )
    if who.kind is PrincipalKind.PATIENT and who.patient_id:
        mine.add(who.patient_id)
    candidates = owners & mine
    if wanted is not None:
        candidates &= {wanted}
    if not candidates:
        raise UnknownItem("There is no such item, or you have no access to it")
    if who.patient_id is not None and who.patient_id in candidates:
        return who.patient_id
    return sorted(candidates)[0]


def _refuse_category(conn: Connection, stored: Stored, refused: frozenset[str]) -> None:
    category = conn.execute(select(resource.c.category).where(resource.c.pk == stored.pk)).scalar()
    is_request = (
        stored.type == "Task"
        and conn.execute(select(record_request.c.id).where(record_request.c.id == stored.id)).first()
        is not None
    )
    if category is None or category in refused or is_request:
        raise RequestError("This kind of item cannot be withdrawn, corrected or erased this way")


def _audit(
    conn: Connection, who: Principal, action: audit.AuditAction, patient_id: str, what: str, task_id: str
) -> None:
    """A request's act in the record's access log (same transaction, last write of the act);
    the objections are audited as every change of the record's rights (``consent.audit_change``)."""
    resources = (f"Task/{task_id}",)
    audit.append(
        conn, audit.record_for(who, action, patient_id=patient_id, interaction=what, resources=resources)
    )
