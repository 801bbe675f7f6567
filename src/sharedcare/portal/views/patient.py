"""The start page of each kind of user, the patient's home and the representative's choice of record."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from sharedcare.access import consent
from sharedcare.documents.categories import document_types
from sharedcare.fhir.errors import FhirError
from sharedcare.notify import outbox
from sharedcare.portal import csrf, records
from sharedcare.portal.deps import holder_side, now, optional_user, signed_in
from sharedcare.portal.pages import language, redirect, render
from sharedcare.portal.sessions import RECORD, PortalUser, login_url

router = APIRouter(dependencies=[Depends(csrf.require_csrf)])
HOME_ITEMS = 10
HOME_MESSAGES = 5
"""Newest notifications on the home page (first professional access, emergency access, licence
withdrawn)."""


@router.get("/")
def start(request: Request, user: PortalUser | None = Depends(optional_user)) -> Response:
    """Each kind of user lands on their own page."""
    if user is None:
        return redirect(login_url("/portal/"))
    if user.holder_side:
        return redirect("/portal/home" if user.record else "/portal/records")
    if user.professional:
        return redirect("/portal/pro")
    return render(request, "staff.html", user=user)


def holder_names(request: Request, user: PortalUser) -> dict[str, str]:
    """Names of the holders the user may act for, read through their own access decision."""
    service = records.view(request, user)
    names: dict[str, str] = {}
    try:
        query = service.parse_search(
            "Patient", [("_id", ",".join(user.records)), ("_count", "50")], strict=True
        )
        for stored in service.search(query).matches:
            names[stored.id] = records.human_name(stored.resource())
    except FhirError:
        pass
    return names


@router.get("/records")
def choose_record_page(request: Request, user: PortalUser = Depends(signed_in)) -> Response:
    if not user.holder_side:
        return redirect("/portal/")
    names = holder_names(request, user) if user.records else {}
    return render(request, "records.html", {"names": names}, user=user)


@router.post("/records")
def choose_record(
    request: Request, record: Annotated[str, Form()] = "", user: PortalUser = Depends(signed_in)
) -> Response:
    """Act for one of the holders the user is delegated by (checked against the delegations)."""
    if not user.holder_side or record not in user.records:
        return redirect("/portal/records")
    request.session[RECORD] = record
    return redirect("/portal/home")


@router.get("/home")
def home(request: Request, user: PortalUser = Depends(holder_side), at: datetime = Depends(now)) -> Response:
    assert user.record is not None
    service = records.view(request, user)
    patient, items = record_overview(service, user.record)
    with request.app.state.engine.connect() as conn:
        status = consent.status(conn, user.record)
        messages = outbox.for_patient(conn, user.record, limit=HOME_MESSAGES)
    context = {
        "patient": patient,
        "items": items[:HOME_ITEMS],
        "count": len(items),
        "status": status,
        "messages": messages,
        "stored_time": stored_time,
        "category_label": lambda code: category_label(code, language(request, user)),
    }
    return render(request, "home.html", context, user=user)


def category_label(code: object, lang: str) -> str:
    """The patient category of a new-document notice, in words ("" for an unknown one)."""
    found = document_types().categories.get(code) if isinstance(code, str) else None
    return found.label(lang) if found else ""


def stored_time(value: object) -> datetime | None:
    """A time a notification keeps in its parameters (ISO text, naive UTC), for ``t.date``."""
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def record_overview(service: Any, patient_id: str) -> tuple[dict[str, str] | None, list[records.Item]]:
    """The holder's identity and items in one audited read (``$everything``)."""
    patient = None
    try:
        page = service.everything(patient_id, count=records.ITEMS_LIMIT)
    except FhirError:
        return None, []
    for stored in page.matches:
        if stored.type == "Patient" and stored.id == patient_id and not stored.deleted:
            patient = records.patient_summary(stored.resource())
    return patient, records.items_of(page.matches)
