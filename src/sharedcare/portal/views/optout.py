"""The holder's objection to their record (§A.1, art. 3(1)): the record is deleted for good.

The gravest act of the portal, so it asks more than a click: the holder reads what it means,
ticks that they understood, and signs in again on the spot (password and a fresh second-factor
code, counted against the account's lockout like any sign-in), all under the CSRF token. Only
the holder personally objects, never a representative. ``care.honour_objection`` deletes the
record, disables the account and ends its sessions in the same transaction, and the page that
answers is the confirmation: afterwards nothing is left to sign in to.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from sharedcare.access import care
from sharedcare.access.principals import PrincipalKind
from sharedcare.identity import accounts
from sharedcare.identity.errors import IdentityError, TooManyAttempts
from sharedcare.portal import csrf
from sharedcare.portal.deps import now, signed_in
from sharedcare.portal.i18n import N_, Translator
from sharedcare.portal.messages import identity_error
from sharedcare.portal.pages import language, render
from sharedcare.portal.sessions import PortalError, PortalUser

router = APIRouter(dependencies=[Depends(csrf.require_csrf)])
Text = Annotated[str, Form()]
PAGE = "optout.html"


def the_holder(user: PortalUser = Depends(signed_in)) -> PortalUser:
    """The holder in person: the objection is theirs alone (§A.1)."""
    if user.principal.kind is not PrincipalKind.PATIENT or not user.principal.patient_id:
        raise PortalError(403, N_("Only the holder of a record can object to it."))
    return user


@router.get("/account/opt-out")
def opt_out_page(request: Request, user: PortalUser = Depends(the_holder)) -> Response:
    return render(request, PAGE, {}, user=user)


@router.post("/account/opt-out")
def opt_out(
    request: Request,
    understood: Text = "",
    password: Text = "",
    code: Text = "",
    user: PortalUser = Depends(the_holder),
    at: datetime = Depends(now),
) -> Response:
    t = Translator(language(request, user))
    if understood != "yes":
        message = t.gettext(
            N_("Please confirm that you understand that your record will be deleted for good.")
        )
        return render(request, PAGE, {"error": message}, user=user, status=400)
    patient_id = user.principal.patient_id
    assert patient_id is not None
    try:
        with accounts.transaction(request.app.state.engine) as conn:
            accounts.authenticate(
                conn,
                request.app.state.settings,
                login=user.account.login,
                password=password,
                totp_code=code,
                now=at,
            )
            care.honour_objection(conn, user.principal, patient_id, at, request.app.state.blobs)
    except IdentityError as exc:
        retry = exc.retry_after if isinstance(exc, TooManyAttempts) else None
        locked = retry is not None
        headers = {"Retry-After": str(retry)} if locked else {}
        context = {"error": identity_error(t, exc)}
        return render(request, PAGE, context, user=user, status=429 if locked else 400, headers=headers)
    request.session.clear()  # the account is disabled and its sessions ended with the record
    csrf.renew(request)
    return render(request, "optout_done.html", {"when": at, "name": user.account.display_name})
