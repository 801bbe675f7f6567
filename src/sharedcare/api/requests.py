"""FHIR operations of the holder's rights on items (``access.requests``), under ``/fhir``.

- ``POST [type]/[id]/$release-disclosure``: a professional releases an item held back for a
  consultation d'annonce (answers the released resource);
- ``POST [type]/[id]/$object-to-filing`` and ``$withdraw-objection``: the holder withdraws an
  item from the shared record, or files it again;
- ``POST [type]/[id]/$request-rectification`` and ``$request-erasure`` (Parameters ``reason``):
  the holder's request, answered with its ``Task`` (201);
- ``POST Patient/[id]/$request-filing`` (Parameters ``practitioner`` = a ``valueReference`` to a
  Practitioner of the holder's care, ``description``): the holder asks that professional to file
  an item not yet in the record (art. 9(2)), answered with its ``Task`` (201), due
  ``filing_request_days`` later;
- ``POST Task/[id]/$decide`` (Parameters ``status`` = accepted | rejected | completed |
  cancelled, ``reason``): the author, an agency administrator or the holder moves it on; the
  professional asked completes a filing request the same way (``completed``: "filed"), and
  anyone else gets the 404 of an unknown Task.

The caller's session (policy, scopes, audit) is the one ``api.fhir.authenticate`` binds; the
module's ``RequestError``s become OperationOutcomes here, and only here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from sharedcare.access import requests as rights
from sharedcare.access.principals import Principal
from sharedcare.api.fhir import authenticate, base_url, fhir_response
from sharedcare.api.parameters import read_parameters
from sharedcare.fhir.errors import BadRequest, FhirError, Issue, NotFound, operation_outcome
from sharedcare.fhir.render import resource_json
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.store import Stored, utcnow
from sharedcare.settings import Settings

router = APIRouter(prefix="/fhir", dependencies=[Depends(authenticate)])
_CODES = {400: "invalid", 403: "forbidden", 404: "not-found", 409: "conflict"}
_PRACTITIONER = re.compile(r"Practitioner/([A-Za-z0-9\-.]{1,64})")
_P = ParamSpec("_P")
_T = TypeVar("_T")


async def _run(act: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """One act of ``access.requests``, off the event loop; its refusal as an OperationOutcome."""
    try:
        return await run_in_threadpool(act, *args, **kwargs)
    except rights.RequestError as exc:
        raise FhirError(str(exc), status=exc.status, code=_CODES.get(exc.status, "invalid")) from None


def _caller(request: Request) -> tuple[FhirService, Principal]:
    service: FhirService = request.state.fhir
    principal: Principal = request.state.principal
    return service, principal


async def _parameters(request: Request) -> dict[str, str]:
    """The operation's string parameters: a FHIR ``Parameters`` body (or none at all)."""
    params = await read_parameters(request)
    for name, value in params.items():
        if not isinstance(value, str):
            raise BadRequest(f"Parameter {name!r} needs a string or code value")
    return params


def _outcome(request: Request, text: str) -> Response:
    return fhir_response(request, operation_outcome([Issue("information", "informational", text)]))


def _task(request: Request, stored: Stored, status: int) -> Response:
    location = f"{base_url(request)}/Task/{stored.id}/_history/{stored.version}"
    headers = {"ETag": stored.etag, "Location": location} if status == 201 else {"ETag": stored.etag}
    return fhir_response(request, resource_json(stored), status, headers)


def _current_task(service: FhirService, task_id: str) -> Stored:
    """The Task the operation just wrote (the caller filed or decided it: no access question)."""
    with service.engine.connect() as conn:
        found = service.store.current(conn, "Task", task_id)
    if found is None:
        raise NotFound(f"Resource Task/{task_id} is not known")
    return found


@router.post("/{rtype}/{rid}/$release-disclosure")
async def release_disclosure(request: Request, rtype: str, rid: str) -> Response:
    service, _who = _caller(request)
    stored = await _run(rights.release_disclosure, service, f"{rtype}/{rid}")
    return fhir_response(request, resource_json(stored), headers={"ETag": stored.etag})


@router.post("/{rtype}/{rid}/$object-to-filing")
async def object_to_filing(request: Request, rtype: str, rid: str) -> Response:
    service, who = _caller(request)
    await _run(rights.object_to_filing, service, who, f"{rtype}/{rid}", utcnow())
    return _outcome(request, f"{rtype}/{rid} is withdrawn from the shared record at the holder's request")


@router.post("/{rtype}/{rid}/$withdraw-objection")
async def withdraw_objection(request: Request, rtype: str, rid: str) -> Response:
    service, who = _caller(request)
    await _run(rights.withdraw_objection, service, who, f"{rtype}/{rid}", utcnow())
    return _outcome(request, f"{rtype}/{rid} is filed in the shared record again")


async def _file(request: Request, rtype: str, rid: str, kind: str) -> Response:
    service, who = _caller(request)
    params = await _parameters(request)
    filed = await _run(
        rights.file_request, service, who, f"{rtype}/{rid}", kind, params.get("reason", ""), utcnow()
    )
    return _task(request, await run_in_threadpool(_current_task, service, filed.id), 201)


@router.post("/{rtype}/{rid}/$request-rectification")
async def request_rectification(request: Request, rtype: str, rid: str) -> Response:
    return await _file(request, rtype, rid, rights.RECTIFY)


@router.post("/{rtype}/{rid}/$request-erasure")
async def request_erasure(request: Request, rtype: str, rid: str) -> Response:
    return await _file(request, rtype, rid, rights.ERASE)


def _practitioner(params: dict[str, Any]) -> str:
    """The ``practitioner`` parameter: a ``valueReference`` to ``Practitioner/[id]``, its id."""
    value = params.get("practitioner")
    ref = value.get("reference") if isinstance(value, dict) else None
    found = _PRACTITIONER.fullmatch(ref) if isinstance(ref, str) else None
    if found is None:
        raise BadRequest(
            "$request-filing needs a 'practitioner' parameter: a valueReference to Practitioner/[id]"
        )
    return found.group(1)


@router.post("/{rtype}/{rid}/$request-filing")
async def request_filing(request: Request, rtype: str, rid: str) -> Response:
    """The holder (or a representative) asks a professional of their care to file an item
    (``access.requests.ask_to_file``): the same refusals, checked in the same order, as the
    portal's form; the record is looked up through the caller's access decision."""
    if rtype != "Patient":
        raise NotFound(f"$request-filing is an operation on Patient, not {rtype}")
    service, who = _caller(request)
    params: dict[str, Any] = await read_parameters(request)
    description = params.get("description", "")
    if not isinstance(description, str):
        raise BadRequest("Parameter 'description' needs a string value")
    practitioner = _practitioner(params)
    settings: Settings = request.app.state.settings
    filed = await _run(
        rights.ask_to_file,
        service,
        who,
        practitioner,
        description,
        utcnow(),
        settings.filing_request_days,
        patient_id=rid,
    )
    return _task(request, await run_in_threadpool(_current_task, service, filed.id), 201)


@router.post("/{rtype}/{rid}/$decide")
async def decide(request: Request, rtype: str, rid: str) -> Response:
    if rtype != "Task":
        raise NotFound(f"$decide is an operation on Task, not {rtype}")
    service, who = _caller(request)
    params: dict[str, Any] = await _parameters(request)
    if "status" not in params:
        raise BadRequest("$decide needs a 'status' parameter: accepted, rejected, completed or cancelled")
    await _run(rights.decide, service, who, rid, params["status"], params.get("reason", ""), utcnow())
    return _task(request, await run_in_threadpool(_current_task, service, rid), 200)
