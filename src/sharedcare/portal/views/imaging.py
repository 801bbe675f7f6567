"""The images of an imaging study in the portal, for the holder's side and for professionals.

``/portal/imaging/[id]`` lists the study's series with a preview of each; every preview is an
image of ``/portal/imaging/[id]/preview``, which proxies the hospital's rendered image through
the same access decision and audit as the FHIR operations (``imaging.studies``): a study the
user may not see is "not found", a series or image outside the study is refused before the
image server is asked, and each page and each preview is a read in the record's access log.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from sharedcare.fhir.errors import FhirError
from sharedcare.imaging import studies
from sharedcare.imaging.client import DicomWebClient, SeriesInfo
from sharedcare.imaging.errors import ImagingError
from sharedcare.imaging.views import image_response, registry
from sharedcare.portal import csrf, records
from sharedcare.portal.deps import holder_side, signed_in
from sharedcare.portal.i18n import N_, Translator
from sharedcare.portal.pages import language, render
from sharedcare.portal.sessions import PortalError, PortalUser

router = APIRouter(dependencies=[Depends(csrf.require_csrf)])
NOT_FOUND = N_("This study is not in the record, or you have no access to it.")
IMAGING_MESSAGES = (
    N_("The images of this study cannot be shown"),
    N_("This is not a valid DICOM UID"),
    N_("This series or image is not part of the study"),
    N_("The record does not say where the images of this study are"),
    N_("The images of this study are on a server the platform is not configured to reach"),
    N_("The hospital's image server cannot be reached at the moment. Please try again later."),
    N_("The hospital's image server did not answer in time. Please try again later."),
    N_("The hospital's image server gave an unexpected answer."),
    N_("The image server does not hold this image."),
    N_("This image is too large to be shown here."),
)
"""The messages of ``imaging.errors``, for extraction (they are shown translated)."""


def reader(user: PortalUser = Depends(signed_in)) -> PortalUser:
    """A professional, or the holder's side with a record chosen."""
    return user if user.professional else holder_side(user)


def _back(user: PortalUser, images: studies.StudyImages | None) -> tuple[str, str]:
    """Where the page leads back to: the patient's record (professionals) or the holder's home."""
    if user.professional and images is not None and images.patient:
        return f"/portal/pro/patients/{images.patient.removeprefix('Patient/')}", N_("Patient record")
    if user.professional:
        return "/portal/pro", N_("My patients")
    return "/portal/home", N_("My record")


@router.get("/imaging/{study_id}")
async def study_page(request: Request, study_id: str, user: PortalUser = Depends(reader)) -> Response:
    """The study's series (from the image server) with a preview of each."""
    reg = registry(request)
    service = records.view(request, user)
    try:
        images = await run_in_threadpool(studies.open_study, service, reg, study_id, "$series")
    except FhirError:
        raise PortalError(404, NOT_FOUND) from None
    except ImagingError as exc:
        return _page(request, user, study_id, None, [], exc)
    try:
        found = await studies.series_of(images, reg)
    except ImagingError as exc:
        return _page(request, user, study_id, images, [], exc)
    return _page(request, user, study_id, images, found, None)


def _page(
    request: Request,
    user: PortalUser,
    study_id: str,
    images: studies.StudyImages | None,
    series: list[SeriesInfo],
    failure: ImagingError | None,
) -> Response:
    t = Translator(language(request, user))
    back_url, back_label = _back(user, images)
    context: dict[str, Any] = {
        "study_id": study_id,
        "description": images.description if images else "",
        "series": series,
        "back_url": back_url,
        "back_label": t.gettext(back_label),
        "error": t.gettext(failure.message) if failure else None,
    }
    return render(request, "imaging.html", context, user=user, status=failure.status if failure else 200)


@router.get("/imaging/{study_id}/preview")
async def preview(
    request: Request, study_id: str, series: str = "", instance: str = "", user: PortalUser = Depends(reader)
) -> Response:
    """One image of the study, rendered by the hospital's server (PNG), streamed."""
    reg = registry(request)
    service = records.view(request, user)
    try:
        series_uid = studies.required_uid(series, "series")
        instance_uid = studies.optional_uid(instance, "instance")
        images = await run_in_threadpool(
            studies.open_study, service, reg, study_id, "$preview", series=series_uid, instance=instance_uid
        )
        chosen = await studies.instance_of(images, reg, series_uid, instance_uid)
        image = await DicomWebClient(images.server, reg).rendered(
            images.study_uid, series_uid, chosen, "image/png"
        )
    except FhirError:
        raise PortalError(404, NOT_FOUND) from None
    except ImagingError as exc:
        raise PortalError(exc.status, exc.message) from None
    return image_response(image)
