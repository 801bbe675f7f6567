"""FastAPI dependencies of the portal pages: who is signed in, and what they may open."""

from __future__ import annotations

from datetime import datetime

from fastapi import Depends, Request

from sharedcare.fhir.store import utcnow
from sharedcare.portal.i18n import N_
from sharedcare.portal.sessions import LoginRequired, PortalError, PortalUser, load_user


class RecordChoiceRequired(Exception):
    """A representative of several holders must first choose whose record the pages are about."""


def now() -> datetime:
    """The time of the request, naive UTC as stored (one value for every step of a request)."""
    return utcnow()


def optional_user(request: Request, at: datetime = Depends(now)) -> PortalUser | None:
    return load_user(request, at)


def signed_in(request: Request, user: PortalUser | None = Depends(optional_user)) -> PortalUser:
    """The signed-in user; anyone else is sent to the login page (and back here afterwards)."""
    if user is None:
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(back if request.method == "GET" else "/portal/")
    return user


def holder_side(user: PortalUser = Depends(signed_in)) -> PortalUser:
    """A holder, or a representative acting for a chosen holder."""
    if not user.holder_side:
        raise PortalError(403, N_("This page is for patients and their representatives."))
    if user.record is None:
        raise RecordChoiceRequired()
    return user


def professional(user: PortalUser = Depends(signed_in)) -> PortalUser:
    if not user.professional:
        raise PortalError(403, N_("This page is for health professionals."))
    return user
