"""The person's notification preferences (``notify.preferences``): channel, language of the
e-mails, and the kinds of e-mail turned off. Per account: a parent's choice covers every child
they represent, so the page needs no chosen record."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from sharedcare.notify import outbox, preferences
from sharedcare.notify.preferences import InvalidPreference
from sharedcare.portal import csrf
from sharedcare.portal.deps import now, signed_in
from sharedcare.portal.i18n import N_
from sharedcare.portal.pages import flash, redirect, render
from sharedcare.portal.sessions import PortalError, PortalUser
from sharedcare.storage.engine import writer

router = APIRouter(dependencies=[Depends(csrf.require_csrf)])
Field = Annotated[str, Form()]

LANGUAGE_NAMES = {"fr": "Français", "de": "Deutsch", "en": "English"}
"""Each language in its own words (not translated: a reader finds their own)."""
KIND_FIELDS = {"vaccination_reminders": outbox.VACCINATION_REMINDER, "new_documents": outbox.NEW_DOCUMENT}
"""Form checkbox → the kind it keeps e-mailed when ticked."""


def _people_told(user: PortalUser = Depends(signed_in)) -> PortalUser:
    """Holders and representatives: the people notifications are for."""
    if not user.holder_side:
        raise PortalError(403, N_("This page is for patients and their representatives."))
    return user


@router.get("/preferences")
def preferences_page(request: Request, user: PortalUser = Depends(_people_told)) -> Response:
    with request.app.state.engine.connect() as conn:
        chosen = preferences.get(conn, user.account.id)
    context = {"chosen": chosen, "languages": LANGUAGE_NAMES, "kinds": KIND_FIELDS}
    return render(request, "preferences.html", context, user=user)


@router.post("/preferences")
def save_preferences(
    request: Request,
    channel: Field = "",
    language: Field = "",
    vaccination_reminders: Field = "",
    new_documents: Field = "",
    user: PortalUser = Depends(_people_told),
    at: datetime = Depends(now),
) -> Response:
    """Replace the account's preferences; an unticked kind is no longer e-mailed."""
    ticked = {"vaccination_reminders": vaccination_reminders, "new_documents": new_documents}
    off = {kind for name, kind in KIND_FIELDS.items() if not ticked[name]}
    try:
        chosen = preferences.validated(channel, language or None, off)
    except InvalidPreference:
        raise PortalError(
            400, N_("These preferences could not be saved: choose among the options shown.")
        ) from None
    with writer(request.app.state.engine).begin() as conn:
        preferences.save(conn, user.account.id, chosen, at)
    flash(request, N_("Your notification preferences are saved."))
    return redirect("/portal/preferences")
