"""HTTP of the vaccination record's FHIR operations (``vaccination.operations``), under ``/fhir``.

- ``POST Immunization/$parse-datamatrix``: a pack's GS1 code → draft Immunization + warnings;
- ``POST Immunization/[id]/$validate-reported``: a vaccinator validates a patient-reported dose;
- ``GET Patient/[id]/$vaccination-certificate?lang=fr|de|en``: the certificate (application/pdf);
- ``POST $immds-forecast`` and ``GET|POST Patient/[id]/$immds-forecast``: the forecast (ImmDS).

Included before the generic ``/fhir/{type}`` routes, which would take ``$immds-forecast`` for a
type. The caller's session is the one ``api.fhir.authenticate`` binds.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from sharedcare.access.principals import Principal
from sharedcare.api.fhir import authenticate, fhir_response
from sharedcare.fhir.errors import BadRequest
from sharedcare.fhir.render import resource_json
from sharedcare.fhir.service import FhirService
from sharedcare.vaccination import operations
from sharedcare.vaccination import record as _record  # noqa: F401  (registers the Immunization write rule)

router = APIRouter(prefix="/fhir", dependencies=[Depends(authenticate)])


def _caller(request: Request) -> tuple[FhirService, Principal]:
    return request.state.fhir, request.state.principal


async def _body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return {"resourceType": "Parameters"}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}") from None


@router.post("/Immunization/$parse-datamatrix")
async def parse_datamatrix(request: Request) -> Response:
    body = await _body(request)
    data_dir = request.app.state.settings.data_dir
    return fhir_response(request, operations.parse_datamatrix(body, data_dir))


@router.post("/Immunization/{rid}/$validate-reported")
async def validate_reported(request: Request, rid: str) -> Response:
    service, who = _caller(request)
    stored = await run_in_threadpool(operations.validate_reported, service, who, rid)
    return fhir_response(request, resource_json(stored), headers={"ETag": stored.etag})


@router.get("/Patient/{pid}/$vaccination-certificate")
async def vaccination_certificate(request: Request, pid: str, lang: str = "fr") -> Response:
    service, _who = _caller(request)
    pdf = await run_in_threadpool(operations.certificate, service, pid, lang)
    headers = {"Content-Disposition": f'inline; filename="vaccination-certificate-{pid}.pdf"'}
    return Response(pdf, media_type="application/pdf", headers=headers)


@router.post("/$immds-forecast")
async def immds_forecast(request: Request) -> Response:
    body = await _body(request)
    default = request.app.state.settings.forecast_schedule
    return fhir_response(request, await run_in_threadpool(operations.forecast_operation, body, default))


@router.api_route("/Patient/{pid}/$immds-forecast", methods=["GET", "POST"])
async def patient_forecast(request: Request, pid: str) -> Response:
    service, _who = _caller(request)
    if request.method == "POST":
        params = operations.parameters(await _body(request))
        if any(p["name"] not in ("assessmentDate", "schedule") for p in params):
            raise BadRequest("Patient/[id]/$immds-forecast takes only assessmentDate and schedule")
        values = {p["name"]: p.get("valueDate", p.get("valueString")) for p in params}
    else:
        values = dict(request.query_params)
    as_of = operations.parse_date(values.get("assessmentDate"))
    schedule = values.get("schedule") or request.app.state.settings.forecast_schedule
    answer = await run_in_threadpool(operations.stored_forecast_operation, service, pid, as_of, schedule)
    return fhir_response(request, answer)
