"""The holder's rights on items (``access.requests``) in the portal.

- the holder (or a representative) lists the record's items and their own requests, withdraws
  an item from the shared record (objection to filing) or files it again, asks its author for a
  correction or the agency for its erasure, asks a professional of their care to file an item
  (art. 9(2), due ``filing_request_days`` later), and cancels an open request;
- professionals release items held back for a consultation d'annonce, and decide the
  correction requests on the items they (or their organisation) wrote and the filing requests
  addressed to them (overdue ones flagged, as in the holder's list);
- agency administrators decide the erasure requests.

Every item is read through the user's own access decision (``records.view``): an item the user
may not see (for the holder: one still held back) answers exactly like an unknown one, and a
pending item is never hinted at. A refused action changes nothing and shows why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from sharedcare.access import care
from sharedcare.access import requests as rights
from sharedcare.access.principals import PrincipalKind
from sharedcare.fhir.errors import FhirError
from sharedcare.fhir.service import FhirService
from sharedcare.portal import csrf, records
from sharedcare.portal.deps import holder_side, now, professional, signed_in
from sharedcare.portal.i18n import N_, Translator
from sharedcare.portal.pages import flash, language, redirect, render
from sharedcare.portal.sessions import PortalError, PortalUser
from sharedcare.portal.views.patient import record_overview

router = APIRouter(dependencies=[Depends(csrf.require_csrf)])
Text = Annotated[str, Form()]
ITEMS = "/portal/items"
PRO_REQUESTS = "/portal/pro/requests"
ERASURES = "/portal/erasures"

REQUEST_MESSAGES = (
    N_("This item is not held back: the patient already sees it"),
    N_("Only a professional who may write this item can release it"),
    N_("You have already withdrawn this item from the shared record"),
    N_("This item is not withdrawn from the shared record"),
    N_("Choose what you ask for: a correction or an erasure"),
    N_("Say what is wrong with this item"),
    N_("Say why this item should be erased"),
    N_("Keep the explanation under 2000 characters"),
    N_("You have already asked for this: your request is still open"),
    N_("Choose accept, reject, complete or cancel"),
    N_("There is no such request, or you have no access to it"),
    N_("Only the holder can cancel a request"),
    N_("Only the author of the item or the Agence can decide this request"),
    N_("Only an agency administrator can decide an erasure request"),
    N_("This request is already decided"),
    N_("Give the reason for the refusal"),
    N_("Correct the item first: it has not changed since the request"),
    N_("Choose an item of the record"),
    N_("Only the holder of the record or their representative can ask for this"),
    N_("There is no such item, or you have no access to it"),
    N_("This kind of item cannot be withdrawn, corrected or erased this way"),
    N_("Describe the item to file"),
    N_("Choose a professional who takes or took part in your care"),
    N_("You already have 10 open requests to this professional: wait for their answer or cancel one"),
    N_("Only the professional asked or the Agence can decide this request"),
)
"""The messages of ``access.requests``, for extraction (they are shown translated)."""
KIND_LABELS = {rights.RECTIFY: N_("Correction"), rights.ERASE: N_("Erasure"), rights.FILE: N_("Filing")}
STATUS_LABELS = {
    "requested": N_("Sent"),
    "accepted": N_("Accepted"),
    "rejected": N_("Refused"),
    "completed": N_("Done"),
    "cancelled": N_("Cancelled"),
}


def _labels(t: Translator) -> dict[str, Any]:
    return {
        "kind_label": lambda code: t.gettext(KIND_LABELS[code]) if code in KIND_LABELS else code,
        "status_label": lambda code: t.gettext(STATUS_LABELS[code]) if code in STATUS_LABELS else code,
    }


def _message(t: Translator, exc: Exception) -> str:
    return t.gettext(str(exc))


# -- moving a request on (the holder cancels; its author or an agency administrator decides) ------
@dataclass(frozen=True, slots=True)
class _Decision:
    """A request's next status, and why (the decision form of the request pages)."""

    request_id: str
    status: str
    reason: str


def _decision(request_id: Text = "", status: Text = "", reason: Text = "") -> _Decision:
    return _Decision(request_id, status, reason)


class _RequestsPage(Protocol):
    def __call__(
        self, request: Request, user: PortalUser, *, error: str | None = None, status: int = 200
    ) -> Response: ...


def _decide(
    request: Request,
    user: PortalUser,
    decision: _Decision,
    at: datetime,
    page: _RequestsPage,
    back: str,
    done: str = N_("The request is updated."),
) -> Response:
    """Move a request on through the user's own access decision; refused, ``page`` again with
    the reason (nothing changed)."""
    t = Translator(language(request, user))
    try:
        rights.decide(
            records.view(request, user),
            user.principal,
            decision.request_id,
            decision.status,
            decision.reason,
            at,
        )
    except rights.RequestError as exc:
        return page(request, user, error=_message(t, exc), status=exc.status)
    flash(request, done)
    return redirect(back)


# -- the holder's items and requests ------------------------------------------------------------
def _items(
    request: Request,
    user: PortalUser,
    *,
    error: str | None = None,
    status: int = 200,
    keep: dict[str, str] | None = None,
) -> Response:
    assert user.record is not None
    at = now()
    _patient, items = record_overview(records.view(request, user), user.record)
    with request.app.state.engine.connect() as conn:
        withdrawn = rights.objections(conn, user.record)
        mine = rights.requests_of(conn, user.record)
        cared = {r.practitioner_id for r in care.of_patient(conn, user.record, at, include_ended=True)}
    asked = {f"Practitioner/{r.author_practitioner_id}" for r in mine if r.kind == rights.FILE}
    names = records.directory_names(request, {f"Practitioner/{p}" for p in cared if p} | asked)
    professionals = sorted(
        ((ref.split("/", 1)[1], name) for ref, name in names.items() if ref.split("/", 1)[1] in cared),
        key=lambda pair: pair[1].lower(),
    )
    titles = {i.reference: i for i in items}
    t = Translator(language(request, user))
    context = {
        "items": items,
        "withdrawn": withdrawn,
        "requests": mine,
        "titles": titles,
        "names": names,
        "professionals": professionals,
        "filing_days": request.app.state.settings.filing_request_days,
        "now": at,
        "keep": keep or {},
        "error": error,
        **_labels(t),
    }
    return render(request, "items.html", context, user=user, status=status)


@router.get("/items")
def items_page(request: Request, user: PortalUser = Depends(holder_side)) -> Response:
    return _items(request, user)


def _item(request: Request, user: PortalUser, reference: str) -> records.Item:
    """An item of the record the user sees (one audited read); else "not found"."""
    rtype, _, rid = reference.partition("/")
    try:
        stored = records.view(request, user).read(rtype, rid)
    except FhirError:
        stored = None
    found = records.items_of([stored]) if stored is not None else []
    if not found or found[0].reference != reference:
        raise PortalError(404, N_("This item is not in your record."))
    return found[0]


def _item_page(
    request: Request, user: PortalUser, reference: str, *, error: str | None = None, status: int = 200
) -> Response:
    assert user.record is not None
    item = _item(request, user, reference)
    with request.app.state.engine.connect() as conn:
        withdrawn = reference in rights.objections(conn, user.record)
        about = [r for r in rights.requests_of(conn, user.record) if r.reference == reference]
    t = Translator(language(request, user))
    context = {"item": item, "withdrawn": withdrawn, "requests": about, "error": error, **_labels(t)}
    return render(request, "item.html", context, user=user, status=status)


@router.get("/items/{rtype}/{rid}")
def item_page(request: Request, rtype: str, rid: str, user: PortalUser = Depends(holder_side)) -> Response:
    return _item_page(request, user, f"{rtype}/{rid}")


def _holder_act(
    request: Request, user: PortalUser, reference: str, done: str, act: Any, back: str | None = None
) -> Response:
    """Run one of the holder's acts; on refusal show the item again with the reason."""
    t = Translator(language(request, user))
    try:
        act(records.view(request, user))
    except rights.RequestError as exc:
        if isinstance(exc, rights.UnknownItem):
            raise PortalError(404, N_("This item is not in your record.")) from None
        return _item_page(request, user, reference, error=_message(t, exc), status=exc.status)
    flash(request, done)
    return redirect(back or f"{ITEMS}/{reference}")


@router.post("/items/object")
def object_to_filing(
    request: Request,
    reference: Text = "",
    understood: Text = "",
    user: PortalUser = Depends(holder_side),
    at: datetime = Depends(now),
) -> Response:
    """Withdraw an item from the shared record: a restriction, so the risk warning is confirmed."""
    if understood != "yes":
        _item(request, user, reference)
        message = N_(
            "Please read the warning about the health risks and confirm it before restricting access."
        )
        t = Translator(language(request, user))
        return _item_page(request, user, reference, error=t.gettext(message), status=400)

    def act(svc: Any) -> None:
        rights.object_to_filing(svc, user.principal, reference, at, patient_id=user.record)

    return _holder_act(request, user, reference, N_("The item is withdrawn from the shared record."), act)


@router.post("/items/undo")
def withdraw_objection(
    request: Request,
    reference: Text = "",
    user: PortalUser = Depends(holder_side),
    at: datetime = Depends(now),
) -> Response:
    def act(svc: Any) -> None:
        rights.withdraw_objection(svc, user.principal, reference, at, patient_id=user.record)

    return _holder_act(request, user, reference, N_("The item is filed in the shared record again."), act)


@router.post("/items/request")
def file_request(
    request: Request,
    reference: Text = "",
    kind: Text = "",
    reason: Text = "",
    user: PortalUser = Depends(holder_side),
    at: datetime = Depends(now),
) -> Response:
    def act(svc: Any) -> None:
        rights.file_request(svc, user.principal, reference, kind, reason, at, patient_id=user.record)

    return _holder_act(request, user, reference, N_("Your request is sent."), act)


@router.post("/items/ask-to-file")
def ask_to_file(
    request: Request,
    practitioner: Text = "",
    description: Text = "",
    user: PortalUser = Depends(holder_side),
    at: datetime = Depends(now),
) -> Response:
    """Ask a professional of the holder's care to file an item (art. 9(2)): due in
    ``filing_request_days``; refused, the page again with the reason and the text kept."""
    t = Translator(language(request, user))
    days = request.app.state.settings.filing_request_days
    try:
        rights.ask_to_file(
            records.view(request, user),
            user.principal,
            practitioner,
            description,
            at,
            days,
            patient_id=user.record,
        )
    except rights.RequestError as exc:
        keep = {"practitioner": practitioner, "description": description}
        return _items(request, user, error=_message(t, exc), status=exc.status, keep=keep)
    flash(request, N_("Your request is sent."))
    return redirect(ITEMS)


@router.post("/items/cancel")
def cancel_request(
    request: Request,
    request_id: Text = "",
    user: PortalUser = Depends(holder_side),
    at: datetime = Depends(now),
) -> Response:
    assert user.record is not None
    with request.app.state.engine.connect() as conn:
        mine = {r.id for r in rights.requests_of(conn, user.record)}
    if request_id not in mine:  # only this record's requests, whatever the user may see
        unknown = rights.UnknownItem("There is no such request, or you have no access to it")
        t = Translator(language(request, user))
        return _items(request, user, error=_message(t, unknown), status=unknown.status)
    cancel = _Decision(request_id, "cancelled", "")
    return _decide(request, user, cancel, at, _items, ITEMS, N_("Your request is cancelled."))


# -- professionals ------------------------------------------------------------------------------------
@router.post("/pro/patients/{patient_id}/release")
def release(
    request: Request, patient_id: str, reference: Text = "", user: PortalUser = Depends(professional)
) -> Response:
    """Release an item held back for a consultation d'annonce (the patient is present)."""
    try:
        rights.release_disclosure(records.view(request, user), reference)
    except rights.RequestError as exc:
        raise PortalError(exc.status, str(exc)) from None
    flash(request, N_("The item is released: the patient can see it now."))
    return redirect(f"/portal/pro/patients/{patient_id}")


def _pro_requests(
    request: Request, user: PortalUser, *, error: str | None = None, status: int = 200
) -> Response:
    service = records.view(request, user)
    found = rights.addressed_requests(service, open_only=False)
    refs = [r.reference for r in found if r.kind != rights.FILE]
    titles = records.titles(service, refs, {ref.split("/")[0] for ref in refs})
    patients = {r.patient_id for r in found if r.kind == rights.FILE}
    t = Translator(language(request, user))
    context = {
        "open": [r for r in found if r.open],
        "closed": [r for r in found if not r.open][:20],
        "titles": titles,
        "patients": _patient_names(service, patients),
        "now": now(),
        "error": error,
        **_labels(t),
    }
    return render(request, "pro_requests.html", context, user=user, status=status)


def _patient_names(service: FhirService, patient_ids: set[str]) -> dict[str, str]:
    """The names of the patients of filing requests, read through the professional's own access
    decision (audited); a record they may not read keeps its id."""
    if not patient_ids:
        return {}
    params = [("_id", ",".join(sorted(patient_ids))), ("_count", "200")]
    found = service.search(service.parse_search("Patient", params, strict=True)).matches
    return {s.id: records.human_name(s.resource()) for s in found}


@router.get("/pro/requests")
def pro_requests(request: Request, user: PortalUser = Depends(professional)) -> Response:
    return _pro_requests(request, user)


@router.post("/pro/requests/decide")
def pro_decide(
    request: Request,
    decision: _Decision = Depends(_decision),
    user: PortalUser = Depends(professional),
    at: datetime = Depends(now),
) -> Response:
    return _decide(request, user, decision, at, _pro_requests, PRO_REQUESTS)


# -- agency administrators ----------------------------------------------------------------------------
def _administrator(user: PortalUser = Depends(signed_in)) -> PortalUser:
    if user.principal.kind is not PrincipalKind.ADMIN:
        raise PortalError(403, N_("This page is for agency administrators."))
    return user


def _erasures(request: Request, user: PortalUser, *, error: str | None = None, status: int = 200) -> Response:
    """The open erasure requests: metadata and the holder's reason, never the item's content."""
    with request.app.state.engine.connect() as conn:
        found = rights.erasure_requests(conn)
    context = {"requests": found, "error": error}
    return render(request, "erasures.html", context, user=user, status=status)


@router.get("/erasures")
def erasures(request: Request, user: PortalUser = Depends(_administrator)) -> Response:
    return _erasures(request, user)


@router.post("/erasures/decide")
def decide_erasure(
    request: Request,
    decision: _Decision = Depends(_decision),
    user: PortalUser = Depends(_administrator),
    at: datetime = Depends(now),
) -> Response:
    return _decide(request, user, decision, at, _erasures, ERASURES)
