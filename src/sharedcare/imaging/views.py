"""The imaging proxy under the FHIR base: the same authentication, access decision and audit.

- ``GET /fhir/ImagingStudy/[id]/$series``: the study's series on the hospital's DICOMweb
  server (QIDO-RS): UID, number, modality, description, number of instances;
- ``GET /fhir/ImagingStudy/[id]/$preview?series=…[&instance=…]``: one image rendered by the
  server (WADO-RS ``rendered``), PNG, or JPEG when the ``Accept`` header prefers it; without
  ``instance``, the middle image of the series.

Errors of ``imaging.errors`` become OperationOutcomes here, and only here.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from sharedcare.api.fhir import authenticate
from sharedcare.fhir.errors import FhirError, Issue
from sharedcare.fhir.service import FhirService
from sharedcare.imaging import studies
from sharedcare.imaging.client import DicomWebClient, Rendered
from sharedcare.imaging.endpoints import Registry
from sharedcare.imaging.errors import ImagingError

router = APIRouter(prefix="/fhir", dependencies=[Depends(authenticate)])
IMAGE_HEADERS = {
    "Cache-Control": "private, no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'",
}


def registry(request: Request) -> Registry:
    """The configured DICOMweb servers (built from the settings on first use)."""
    found = getattr(request.app.state, "imaging", None)
    if not isinstance(found, Registry):
        found = Registry.from_settings(request.app.state.settings)
        request.app.state.imaging = found
    return found


def outcome_error(exc: ImagingError) -> FhirError:
    """The OperationOutcome of an imaging failure (its status and issue type)."""
    text = f"{exc.message}: {exc.detail}" if exc.detail else exc.message
    return FhirError(text, status=exc.status, code=exc.code, issues=[Issue("error", exc.code, text)])


def media_type(accept: str | None) -> str:
    """PNG unless the ``Accept`` header asks for JPEG and not PNG."""
    value = (accept or "").lower()
    return "image/jpeg" if "image/jpeg" in value and "image/png" not in value else "image/png"


def image_response(image: Rendered) -> Response:
    """The rendered image, streamed, with headers that keep it private and inert."""
    headers = dict(IMAGE_HEADERS)
    if image.length is not None:
        headers["Content-Length"] = str(image.length)
    return StreamingResponse(image.chunks(), media_type=image.media_type, headers=headers)


@router.get("/ImagingStudy/{study_id}/$series")
async def series(request: Request, study_id: str) -> Response:
    service: FhirService = request.state.fhir
    reg = registry(request)
    try:
        images = await run_in_threadpool(studies.open_study, service, reg, study_id, "$series")
        found = await studies.series_of(images, reg)
    except ImagingError as exc:
        raise outcome_error(exc) from None
    body = {
        "study": f"ImagingStudy/{study_id}",
        "studyInstanceUid": images.study_uid,
        "series": [s.to_json() for s in found],
    }
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/ImagingStudy/{study_id}/$preview")
async def preview(request: Request, study_id: str) -> Response:
    service: FhirService = request.state.fhir
    reg = registry(request)
    try:
        series_uid = studies.required_uid(request.query_params.get("series"), "series")
        instance_uid = studies.optional_uid(request.query_params.get("instance"), "instance")
        images = await run_in_threadpool(
            studies.open_study,
            service,
            reg,
            study_id,
            "$preview",
            series=series_uid,
            instance=instance_uid,
        )
        instance = await studies.instance_of(images, reg, series_uid, instance_uid)
        image = await DicomWebClient(images.server, reg).rendered(
            images.study_uid, series_uid, instance, media_type(request.headers.get("accept"))
        )
    except ImagingError as exc:
        raise outcome_error(exc) from None
    return image_response(image)
