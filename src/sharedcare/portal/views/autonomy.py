"""Minors acting alone (§A.7): the professional's decision and the minor's objection to the parents.

A professional in the care of a minor records, from the record page, that the minor exercises
their rights alone, and only that professional withdraws it there (with a reason: the parents'
rights come back); that minor, signed in to their own account, may object to their parents'
access from the access-rights page, and withdraw the objection, and may also give up acting
alone there (personally, never a representative; the reason is optional, as ``access.minors``
asks for none; the parents' rights come back). The minor and their parents see on that page
whether the minor acts alone. The sections these pages show are built here (``pro_section``,
``holder_section``) and included by their templates; each change runs ``access.minors`` in one
writer transaction; a refused one changes nothing and shows why.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from sharedcare.access import minors
from sharedcare.access.principals import PrincipalKind
from sharedcare.portal import csrf, records
from sharedcare.portal.deps import holder_side, now, professional
from sharedcare.portal.i18n import N_
from sharedcare.portal.pages import flash, redirect
from sharedcare.portal.sessions import PortalError, PortalUser
from sharedcare.storage.engine import writer

router = APIRouter(dependencies=[Depends(csrf.require_csrf)])
Text = Annotated[str, Form()]

MINOR_MESSAGES = (
    N_("Only a professional taking part in the care of this minor can record this decision"),
    N_("This decision is only for a minor whose date of birth is in the record"),
    N_("This minor already exercises their rights alone"),
    N_("Only the minor themselves can object to their parents' access"),
    N_(
        "Only a minor whom a professional has admitted to exercise their rights alone can object "
        "to their parents' access"
    ),
    N_("You already object to your parents' access"),
    N_("You do not object to your parents' access"),
    N_("This patient is no longer a minor by the date of birth in the record"),
    N_("This minor does not exercise their rights alone"),
    N_(
        "Only the professional who recorded this decision, while taking part in the minor's care, "
        "or the minor themselves can withdraw it"
    ),
)
"""User-facing messages of ``access.minors``, for extraction."""
REASON_MAX = 500
"""Longest reason for a withdrawal (kept in the decision's Consent)."""
OWN_WITHDRAWAL_REFUSED = N_(
    "Only a minor whom a professional has admitted to exercise their rights alone can give up "
    "that decision, and only personally"
)
"""The one refusal of the holder's withdrawal, whatever ``access.minors`` refused for (a
representative, an adult, a minor who does not act alone or no longer does): the page of a
representative acting for a minor learns nothing from it about that minor."""


def pro_section(request: Request, user: PortalUser, patient_id: str, at: datetime) -> dict[str, Any] | None:
    """What the professional's record page shows of a minor (None: not a minor): the decision in
    force, and the form to record one or, to its author only, to withdraw it (the forms follow
    the rules of ``access.minors``, which decides again when one is sent)."""
    with request.app.state.engine.connect() as conn:
        state = minors.status(conn, patient_id, at)
        if not state.minor:
            return None
        decision = state.autonomy
        author = decision is not None and decision.practitioner_id == user.principal.practitioner_id
        in_care = (decision is None or author) and minors.in_care(
            conn, request.app.state.policy, user.principal, patient_id, at
        )
    decided_by = ""
    if state.autonomy is not None:
        ref = f"Practitioner/{state.autonomy.practitioner_id}"
        decided_by = records.directory_names(request, [ref]).get(ref) or ref
    return {
        "patient_id": patient_id,
        "state": state,
        "can_record": decision is None and in_care,
        "can_withdraw": author and in_care,
        "decided_by": decided_by,
        "reason_max": REASON_MAX,
    }


def holder_section(request: Request, user: PortalUser, at: datetime) -> dict[str, Any] | None:
    """What the access-rights page of a minor's record shows (None: the holder is not a minor):
    whether the minor acts alone, to the minor (``own``: with their parents' access) and to the
    representatives acting for them."""
    if user.record is None:
        return None
    with request.app.state.engine.connect() as conn:
        state = minors.status(conn, user.record, at)
    if not state.minor:
        return None
    p = user.principal
    return {
        "own": p.kind is PrincipalKind.PATIENT and p.patient_id == user.record and not p.acting_for,
        "since": state.autonomy.decided_at if state.autonomy is not None else None,
        "objection_since": state.objection_since,
        "reason_max": REASON_MAX,
    }


@router.post("/pro/patients/{patient_id}/autonomy")
def record_autonomy(
    request: Request,
    patient_id: str,
    understood: Text = "",
    user: PortalUser = Depends(professional),
    at: datetime = Depends(now),
) -> Response:
    """The professional admits the minor to exercise their rights alone (confirmed first)."""
    if understood != "yes":
        raise PortalError(400, N_("Confirm that you have assessed the minor's discernment first."))
    try:
        with writer(request.app.state.engine).begin() as conn:
            minors.record_autonomy(
                conn, request.app.state.fhir, request.app.state.policy, user.principal, patient_id, at
            )
    except minors.MinorError as exc:
        raise PortalError(403, str(exc)) from None
    flash(request, N_("The minor now exercises their rights alone."))
    return redirect(f"/portal/pro/patients/{patient_id}")


@router.post("/pro/patients/{patient_id}/autonomy/withdraw")
def withdraw_autonomy(
    request: Request,
    patient_id: str,
    reason: Text = "",
    understood: Text = "",
    user: PortalUser = Depends(professional),
    at: datetime = Depends(now),
) -> Response:
    """The professional who recorded the decision withdraws it, with a reason (confirmed first):
    the parents exercise the minor's rights again, and a standing objection ends."""
    if not reason.strip():
        raise PortalError(400, N_("Give the reason for withdrawing the decision."))
    if len(reason) > REASON_MAX:
        raise PortalError(400, N_("The reason is too long (at most 500 characters)."))
    if understood != "yes":
        raise PortalError(400, N_("Confirm that the parents exercise the minor's rights again."))
    try:
        with writer(request.app.state.engine).begin() as conn:
            minors.withdraw_autonomy(
                conn, request.app.state.fhir, request.app.state.policy, user.principal, patient_id, at, reason
            )
    except minors.MinorError as exc:
        raise PortalError(403, str(exc)) from None
    flash(request, N_("The decision is withdrawn: the parents exercise the minor's rights again."))
    return redirect(f"/portal/pro/patients/{patient_id}")


def _parents(request: Request, user: PortalUser, at: datetime, objecting: bool) -> Response:
    """Object to the parents' access, or allow it again."""
    assert user.record is not None
    change = minors.object_to_parents if objecting else minors.allow_parents
    try:
        with writer(request.app.state.engine).begin() as conn:
            change(conn, request.app.state.fhir, user.principal, user.record, at)
    except minors.MinorError as exc:
        raise PortalError(403, str(exc)) from None
    done = (
        N_("Your parents no longer have access to your record.")
        if objecting
        else N_("Your parents have access to your record again.")
    )
    flash(request, done)
    return redirect("/portal/access")


@router.post("/access/parents/object")
def object_to_parents(
    request: Request, user: PortalUser = Depends(holder_side), at: datetime = Depends(now)
) -> Response:
    return _parents(request, user, at, objecting=True)


@router.post("/access/parents/allow")
def allow_parents(
    request: Request, user: PortalUser = Depends(holder_side), at: datetime = Depends(now)
) -> Response:
    return _parents(request, user, at, objecting=False)


@router.post("/access/autonomy/withdraw")
def withdraw_own_autonomy(
    request: Request,
    reason: Text = "",
    understood: Text = "",
    user: PortalUser = Depends(holder_side),
    at: datetime = Depends(now),
) -> Response:
    """The autonomous minor, personally, gives up acting alone (confirmed first; the reason is
    optional): their parents exercise their rights again at once, and a standing objection ends.

    Always the chosen record, never an id from the form; ``access.minors`` refuses a
    representative acting for the minor. Every refusal shows ``OWN_WITHDRAWAL_REFUSED``: the form
    checks (which do not depend on the record) come first, and the refusal is the same for each
    reason, so it tells a representative nothing about the minor."""
    assert user.record is not None
    if len(reason) > REASON_MAX:
        raise PortalError(400, N_("The reason is too long (at most 500 characters)."))
    if understood != "yes":
        raise PortalError(400, N_("Confirm that your parents exercise your rights again."))
    try:
        with writer(request.app.state.engine).begin() as conn:
            minors.withdraw_autonomy(
                conn,
                request.app.state.fhir,
                request.app.state.policy,
                user.principal,
                user.record,
                at,
                reason,
            )
    except minors.MinorError:
        raise PortalError(403, OWN_WITHDRAWAL_REFUSED) from None
    flash(request, N_("You no longer exercise your rights alone: your parents exercise them again."))
    return redirect("/portal/access")
