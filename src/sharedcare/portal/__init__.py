"""The portal: server-rendered pages for patients, representatives and professionals (``/portal``).

Jinja2 templates in French, German and English, no JavaScript; every page reads and changes the
record through the same services as the API (``access``, ``identity``, ``audit``). See
``docs/portal.md``. ``install`` adds the pages, the stylesheet and the error pages to the app.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.staticfiles import StaticFiles

from sharedcare.portal.csrf import CsrfRefused
from sharedcare.portal.deps import RecordChoiceRequired
from sharedcare.portal.i18n import N_, Translator, load_catalogues
from sharedcare.portal.pages import language, redirect, render
from sharedcare.portal.sessions import LoginRequired, PortalError, login_url
from sharedcare.portal.views import (
    accesslog,
    account,
    autonomy,
    documents,
    items,
    optout,
    patient,
    personal,
    preferences,
    professional,
    results,
    rights,
    staff,
    summary,
    timeline,
    vaccination,
)
from sharedcare.portal.views import imaging as imaging_views

STATIC = Path(__file__).parent / "static"
_TITLES = {
    400: N_("This request could not be completed"),
    403: N_("Access refused"),
    404: N_("Not found"),
}


def _error_page(request: Request, status: int, message: str) -> Response:
    t = Translator(language(request))
    title = t.gettext(_TITLES.get(status, _TITLES[400]))
    return render(request, "error.html", {"title": title, "message": t.gettext(message)}, status=status)


async def _csrf_refused(request: Request, _exc: Exception) -> Response:
    message = N_(
        "This form has expired or did not come from this site. Please go back, reload the page and try again."
    )
    return _error_page(request, 403, message)


async def _login_required(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    return redirect(login_url(exc.next_path))


async def _record_choice(_request: Request, _exc: Exception) -> Response:
    return redirect("/portal/records")


async def _portal_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PortalError)
    return _error_page(request, exc.status, exc.message)


def install(app: FastAPI) -> None:
    """Mount ``/portal/static``, add the pages under ``/portal`` and their error handlers."""
    load_catalogues()
    app.mount("/portal/static", StaticFiles(directory=STATIC), name="portal-static")
    for module in (account, patient, rights, accesslog, professional, autonomy, items):
        app.include_router(module.router, prefix="/portal", include_in_schema=False)
    app.include_router(imaging_views.router, prefix="/portal", include_in_schema=False)  # study images
    for module in (timeline, results):  # the record's timeline, laboratory results and trends
        app.include_router(module.router, prefix="/portal", include_in_schema=False)
    app.include_router(documents.router, prefix="/portal", include_in_schema=False)  # documents
    app.include_router(summary.router, prefix="/portal", include_in_schema=False)  # patient summary
    app.include_router(preferences.router, prefix="/portal", include_in_schema=False)  # notifications
    app.include_router(vaccination.router, prefix="/portal", include_in_schema=False)  # vaccination card
    app.include_router(staff.router, prefix="/portal", include_in_schema=False)  # agency staff
    app.include_router(optout.router, prefix="/portal", include_in_schema=False)  # the holder's objection
    app.include_router(personal.router, prefix="/portal", include_in_schema=False)  # personal expression area
    app.add_exception_handler(CsrfRefused, _csrf_refused)
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(RecordChoiceRequired, _record_choice)
    app.add_exception_handler(PortalError, _portal_error)
