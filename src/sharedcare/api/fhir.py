"""FHIR R4 REST endpoints under ``/fhir``: translate HTTP to ``FhirService`` calls and back."""

from __future__ import annotations

from datetime import UTC
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool

from sharedcare.access.policy import category_of
from sharedcare.access.principals import PrincipalKind
from sharedcare.access.session import PolicySession, RequestInfo
from sharedcare.access.tokens import TokenMissing, principal_from_request
from sharedcare.api.capability import capability_statement
from sharedcare.audit import log as audit
from sharedcare.crossborder import ips
from sharedcare.crossborder.texts import LANGUAGES, pick_language
from sharedcare.documents import labresults, mhd, submission
from sharedcare.fhir.bundle import BundleProcessor
from sharedcare.fhir.errors import (
    BadRequest,
    FhirError,
    Forbidden,
    Issue,
    MultipleMatches,
    NotFound,
    NotSupported,
    operation_outcome,
)
from sharedcare.fhir.render import history_bundle, resource_json, searchset
from sharedcare.fhir.search.engine import SearchResult
from sharedcare.fhir.service import FhirService, WriteOutcome
from sharedcare.fhir.store import Stored, instant, utcnow
from sharedcare.storage.engine import writer

FHIR_JSON = "application/fhir+json"


async def _check_format(request: Request) -> None:
    """Refuse an unsupported ``_format`` (406) before the request is acted upon: nothing is written.
    A coroutine: it reads only the URL, so FastAPI need not hand it to a worker thread."""
    fmt = request.query_params.get("_format")
    if fmt and "json" not in fmt:
        raise FhirError(f"_format {fmt!r} is not supported; use json", status=406, code="not-supported")


def authenticate(request: Request) -> None:
    """Every FHIR interaction but the capability statement needs a valid access token; the
    caller's session (policy, scopes, audit) is bound to the service for this request."""
    path = request.url.path
    if path.endswith("/metadata") or "/.well-known/" in path:
        return
    principal = principal_from_request(request)
    if principal is None:
        raise TokenMissing("This endpoint needs an access token: 'Authorization: Bearer <token>'")
    client = request.client
    session = PolicySession(
        principal,
        request.app.state.policy,
        category_of,
        facts=getattr(request.state, "caller_facts", None),
        info=RequestInfo(
            source_ip=client.host if client else None,
            user_agent=request.headers.get("user-agent"),
            request_id=request.headers.get("x-request-id"),
        ),
    )
    request.state.fhir = request.app.state.fhir.for_session(session)


_REFUSED_ACTIONS = {
    "GET": audit.AuditAction.READ,
    "POST": audit.AuditAction.CREATE,
    "PUT": audit.AuditAction.UPDATE,
    "PATCH": audit.AuditAction.PATCH,
    "DELETE": audit.AuditAction.DELETE,
}


def record_refusal(request: Request, exc: FhirError) -> None:
    """A refused or failed act is in the access log too (outcome 4), in its own transaction, as
    the act's own was rolled back. It names no patient: a hidden resource answers as unknown,
    and its log entry must not reveal more than the answer did."""
    principal = getattr(request.state, "principal", None)
    if principal is None or not request.url.path.startswith("/fhir"):
        return
    method = request.method
    action = {
        "GET": audit.AuditAction.READ,
        "POST": audit.AuditAction.CREATE,
        "PUT": audit.AuditAction.UPDATE,
    }
    client = request.client
    record = audit.record_for(
        principal,
        action.get(method, audit.AuditAction.UPDATE if method == "PATCH" else audit.AuditAction.DELETE),
        interaction=f"{method} {request.url.path}",
        outcome=audit.AuditOutcome.MINOR_FAILURE,
        outcome_desc=f"{exc.status} {exc.code}",
        source_ip=client.host if client else None,
        user_agent=request.headers.get("user-agent"),
    )
    with writer(request.app.state.engine).begin() as conn:
        audit.append(conn, record)


router = APIRouter(prefix="/fhir", dependencies=[Depends(_check_format), Depends(authenticate)])


def _service(request: Request) -> FhirService:
    """The FHIR service as seen by the request's caller (bound by ``authenticate``)."""
    service: FhirService = request.state.fhir
    return service


def base_url(request: Request) -> str:
    """The public base of the FHIR endpoint (settings, else derived from the request)."""
    configured = request.app.state.settings.base_url
    if configured:
        return str(configured).rstrip("/")
    return str(request.base_url).rstrip("/") + "/fhir"


def fhir_response(
    request: Request, body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """Serialise a FHIR body as JSON (``_pretty=true`` indents it); stored JSON is embedded as is.

    ``_format`` needs no check here: the router dependency ``_check_format`` refuses it first.
    """
    if request.query_params.get("_pretty") != "true":
        content = orjson.dumps(body)
    elif _has_fragment(body):
        # orjson writes a Fragment (stored JSON) verbatim even when indenting: re-read it to indent
        content = orjson.dumps(orjson.loads(orjson.dumps(body)), option=orjson.OPT_INDENT_2)
    else:
        content = orjson.dumps(body, option=orjson.OPT_INDENT_2)
    return Response(content, status_code=status, media_type=FHIR_JSON + "; charset=utf-8", headers=headers)


def _has_fragment(body: Any) -> bool:
    if isinstance(body, orjson.Fragment):
        return True
    if isinstance(body, dict):
        return any(_has_fragment(v) for v in body.values())
    if isinstance(body, list):
        return any(_has_fragment(v) for v in body)
    return False


def _version_headers(request: Request, stored: Stored, location: bool = False) -> dict[str, str]:
    headers = {
        "ETag": stored.etag,
        "Last-Modified": format_datetime(stored.last_updated.replace(tzinfo=UTC), usegmt=True),
    }
    url = f"{base_url(request)}/{stored.type}/{stored.id}/_history/{stored.version}"
    headers["Content-Location"] = url
    if location:
        headers["Location"] = url
    return headers


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if not body:
        raise BadRequest("The request has no body")
    ctype = request.headers.get("content-type", "")
    if "xml" in ctype:
        raise FhirError(
            "FHIR XML is not supported; send application/fhir+json", status=415, code="not-supported"
        )
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}") from None


def _prefer(request: Request, key: str) -> str | None:
    for part in request.headers.get("prefer", "").split(";"):
        for item in part.split(","):
            name, _, value = item.strip().partition("=")
            if name.strip() == key:
                return value.strip().strip('"')
    return None


def _write_response(request: Request, outcome: WriteOutcome, diagnostics: str) -> Response:
    headers = _version_headers(request, outcome.stored, location=outcome.created)
    ret = _prefer(request, "return") or "representation"
    if ret == "minimal":
        return Response(status_code=outcome.status, headers=headers)
    if ret == "OperationOutcome":
        body: Any = operation_outcome([Issue("information", "informational", diagnostics)])
    else:
        body = orjson.Fragment(outcome.stored.content or "null")
    return fhir_response(request, body, outcome.status, headers)


def _query_params(request: Request) -> list[tuple[str, str]]:
    return [(k, v) for k, v in request.query_params.multi_items() if k not in ("_format", "_pretty")]


def _strict(request: Request) -> bool:
    return _prefer(request, "handling") == "strict"


MAX_PAGE_KEY = 2**63 - 1


def _whole_number(value: str, name: str, error: str | None = None) -> int:
    """A non-negative whole number parameter (below 2**63), else 400 with ``error``."""
    if len(value) > 19 or not (value.isascii() and value.isdigit()) or int(value) > MAX_PAGE_KEY:
        raise BadRequest(error or f"{name} must be a non-negative whole number, not {value!r}")
    return int(value)


# -- system level ------------------------------------------------------------------------------
@router.get("/metadata")
async def metadata(request: Request) -> Response:
    limit = request.app.state.settings.max_content_bytes
    return fhir_response(
        request, capability_statement(base_url(request), instant(request.app.state.started), limit)
    )


@router.post("")
@router.post("/")
async def system_bundle(request: Request) -> Response:
    body = await _json_body(request)
    svc = _service(request)
    base = base_url(request)
    if mhd.is_provide_bundle(body):  # IHE MHD ITI-65: checked whole before anything is stored
        blobs, limit = request.app.state.blobs, request.app.state.settings.max_content_bytes
        result = await run_in_threadpool(submission.provide, svc, blobs, body, base_url=base, max_size=limit)
        return fhir_response(request, result)
    processor = BundleProcessor(svc, get_handler=lambda url, b, conn: _bundle_get(svc, url, b, conn))
    if labresults.carries_inline_forms(body):  # a report's PDF goes to the content store first
        blobs, limit = request.app.state.blobs, request.app.state.settings.max_content_bytes
        result = await run_in_threadpool(
            labresults.file_transaction,
            svc,
            blobs,
            body,
            base_url=base,
            max_size=limit,
            get_handler=processor.get_handler,
        )
        return fhir_response(request, result)
    result = await run_in_threadpool(processor.process, body, base)
    return fhir_response(request, result)


def _bundle_get(svc: FhirService, url: str, base: str, conn: Connection) -> tuple[int, Any]:
    """GET entries inside a batch/transaction: read, vread or search, on the Bundle's connection
    so that a transaction's GETs (processed last) see what its other entries wrote."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) == 1:
        params = parse_qsl(parts.query, keep_blank_values=True)
        query = svc.parse_search(segments[0], params, strict=False)
        result = svc.search_in(conn, query, base_url=base)
        return 200, searchset(result, base, segments[0], params, query.summary, query.elements)
    if len(segments) == 2:
        return 200, resource_json(svc.read_in(conn, segments[0], segments[1]))
    if len(segments) == 4 and segments[2] == "_history":
        return 200, resource_json(svc.vread_in(conn, segments[0], segments[1], segments[3]))
    raise BadRequest(f"Unsupported GET {url!r} in bundle")


@router.get("/_history")
async def system_history(request: Request) -> Response:
    return await _history(request, None, None, "_history")


async def _history(request: Request, rtype: str | None, rid: str | None, path: str) -> Response:
    params = _query_params(request)
    q = dict(params)
    count = None
    if "_count" in q:
        count = _whole_number(q["_count"], "_count")
    if "_page" in q:
        _whole_number(q["_page"], "_page", "Invalid or expired history page link (_page)")
    page = await run_in_threadpool(
        _service(request).history,
        rtype,
        rid,
        since=q.get("_since"),
        at=q.get("_at"),
        count=count,
        page=q.get("_page"),
    )
    return fhir_response(
        request, history_bundle(page.versions, page.total, base_url(request), path, params, page.next_cursor)
    )


# -- type level --------------------------------------------------------------------------------
@router.get("/{rtype}")
async def search_type(request: Request, rtype: str) -> Response:
    return await _search(request, rtype, _query_params(request), rtype)


@router.post("/{rtype}/_search")
async def search_post(request: Request, rtype: str) -> Response:
    # parsed here: Starlette's request.form() needs python-multipart, which is not a dependency
    body = await request.body()
    ctype = request.headers.get("content-type", "")
    if body and "application/x-www-form-urlencoded" not in ctype:
        raise FhirError(
            f"A _search body must be application/x-www-form-urlencoded, not {ctype!r}",
            status=415,
            code="not-supported",
        )
    form = parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    params = _query_params(request) + form
    return await _search(request, rtype, params, rtype)


async def _search(
    request: Request, rtype: str, params: list[tuple[str, str]], path: str, compartment: str | None = None
) -> Response:
    svc = _service(request)
    query = svc.parse_search(rtype, params, strict=_strict(request))
    base = base_url(request)
    result = await run_in_threadpool(svc.search, query, base_url=base, compartment=compartment)
    issues = [
        {"severity": "warning", "code": "not-supported", "diagnostics": f"Parameter ignored: {text}"}
        for text in query.ignored
    ] + [{"severity": "warning", "code": "too-costly", "diagnostics": text} for text in result.warnings]
    shown = [(k, v) for k, v in params if not any(text.startswith(f"{k}:") for text in query.ignored)]
    return fhir_response(request, searchset(result, base, path, shown, query.summary, query.elements, issues))


@router.post("/{rtype}")
async def create(request: Request, rtype: str) -> Response:
    body = await _json_body(request)
    svc = _service(request)
    svc.check_type(rtype)
    if isinstance(body, dict) and body.get("resourceType") not in (None, rtype):
        raise BadRequest(
            f"Resource type {body.get('resourceType')!r} in the body does not match the URL type {rtype!r}"
        )
    if_none_exist = request.headers.get("if-none-exist")
    if if_none_exist:
        # HAPI accepts the criteria with the type in front (``Patient?identifier=x``): so do we
        if_none_exist = if_none_exist.strip().removeprefix(f"{rtype}?")
        if not if_none_exist:
            raise BadRequest("If-None-Exist needs search criteria")
    if labresults.carries_inline_form(body):  # a report's PDF goes to the content store first
        blobs, limit = request.app.state.blobs, request.app.state.settings.max_content_bytes
        outcome = await run_in_threadpool(
            labresults.create_report,
            svc,
            blobs,
            body,
            if_none_exist=if_none_exist,
            base_url=base_url(request),
            max_size=limit,
        )
        return _write_response(request, outcome, "Created" if outcome.created else "Resource already exists")
    outcome = await run_in_threadpool(
        svc.create, body, if_none_exist=if_none_exist, base_url=base_url(request)
    )
    return _write_response(request, outcome, "Created" if outcome.created else "Resource already exists")


@router.put("/{rtype}")
async def conditional_update(request: Request, rtype: str) -> Response:
    body = await _json_body(request)
    query = request.url.query
    outcome = await run_in_threadpool(
        _service(request).conditional_update, rtype, query, body, base_url=base_url(request)
    )
    return _write_response(request, outcome, "Updated")


@router.delete("/{rtype}")
async def conditional_delete(request: Request, rtype: str) -> Response:
    await run_in_threadpool(
        _service(request).conditional_delete, rtype, request.url.query, base_url=base_url(request)
    )
    return fhir_response(request, operation_outcome([Issue("information", "informational", "Deleted")]))


@router.patch("/{rtype}")
async def conditional_patch(request: Request, rtype: str) -> Response:
    body = await _patch_body(request)
    outcome = await run_in_threadpool(
        _service(request).conditional_patch, rtype, request.url.query, body, base_url=base_url(request)
    )
    return _write_response(request, outcome, "Patched")


@router.get("/{rtype}/_history")
async def type_history(request: Request, rtype: str) -> Response:
    return await _history(request, rtype, None, f"{rtype}/_history")


@router.post("/{rtype}/$validate")
async def validate_type(request: Request, rtype: str) -> Response:
    return await _validate(request, rtype)


@router.post("/{rtype}/{rid}/$validate")
async def validate_instance(request: Request, rtype: str, rid: str) -> Response:
    return await _validate(request, rtype)


async def _validate(request: Request, rtype: str) -> Response:
    body = await _json_body(request)
    svc = _service(request)
    svc.check_type(rtype)
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        parameters = body.get("parameter", [])
        if not isinstance(parameters, list) or not all(isinstance(p, dict) for p in parameters):
            raise BadRequest("$validate Parameters.parameter must be a list of parameter objects")
        found = [p.get("resource") for p in parameters if p.get("name") == "resource"]
        if not found:
            raise BadRequest("$validate Parameters need a 'resource' parameter")
        body = found[0]
    try:
        svc.check_resource(body, rtype)
    except FhirError as err:
        if err.status == 404:
            raise
        return fhir_response(request, err.outcome(), 200)
    return fhir_response(
        request,
        operation_outcome([Issue("information", "informational", "Validation successful: no errors")]),
    )


# -- Patient compartment and $everything --------------------------------------------------------
@router.api_route("/Patient/{pid}/$everything", methods=["GET", "POST"])
async def patient_everything(request: Request, pid: str) -> Response:
    svc = _service(request)
    params = _query_params(request)
    q = dict(params)
    count = _whole_number(q["_count"], "_count") if "_count" in q else None
    types = tuple(t for t in q.get("_type", "").split(",") if t)
    base = base_url(request)
    page = await run_in_threadpool(
        svc.everything,
        pid,
        count=count,
        since=q.get("_since"),
        types=types,
        page=q.get("_page"),
        base_url=base,
    )
    result = SearchResult(page.matches, page.included, page.total, page.next_cursor)
    return fhir_response(request, searchset(result, base, f"Patient/{pid}/$everything", params))


# -- $summary: the International Patient Summary (crossborder.ips) ------------------------------
_SUMMARY_PARAMS = ("identifier", "profile", "language", "persist")


@router.api_route("/Patient/$summary", methods=["GET", "POST"])
async def patient_summary_by_identifier(request: Request) -> Response:
    params = await _summary_params(request)
    identifier = params.get("identifier")
    if not identifier:
        raise BadRequest(
            "Patient/$summary needs an 'identifier' (system|value); or call Patient/[id]/$summary"
        )
    svc = _service(request)
    query = svc.parse_search("Patient", [("identifier", identifier)], strict=True)
    found = await run_in_threadpool(svc.search, query, base_url=base_url(request))
    if not found.matches:
        raise NotFound(f"No patient is known by the identifier {identifier!r}")
    if len(found.matches) > 1:
        raise MultipleMatches(f"More than one patient has the identifier {identifier!r}")
    return await _summary(request, found.matches[0].id, params)


@router.api_route("/Patient/{pid}/$summary", methods=["GET", "POST"])
async def patient_summary(request: Request, pid: str) -> Response:
    params = await _summary_params(request)
    if "identifier" in params:
        raise BadRequest("'identifier' selects the patient of Patient/$summary, not of Patient/[id]/$summary")
    return await _summary(request, pid, params)


async def _summary_params(request: Request) -> dict[str, str]:
    """The operation's parameters: the query string, and a ``Parameters`` body on POST."""
    params = dict(_query_params(request))
    body = await request.body() if request.method == "POST" else b""
    if body.strip():
        parsed = await _json_body(request)
        if not isinstance(parsed, dict) or parsed.get("resourceType") != "Parameters":
            raise BadRequest("$summary takes a Parameters resource in its body")
        if not isinstance(parsed.get("parameter", []), list):
            raise BadRequest("Parameters.parameter must be a list of parameters")
        for p in parsed.get("parameter", []):
            value = (
                next((v for k, v in p.items() if k.startswith("value")), None)
                if isinstance(p, dict)
                else None
            )
            if (
                not isinstance(p, dict)
                or not isinstance(p.get("name"), str)
                or not isinstance(value, str | bool)
            ):
                raise BadRequest("Each $summary parameter needs a name and a string, code or boolean value")
            params[p["name"]] = str(value).lower() if isinstance(value, bool) else value
    unknown = sorted(set(params) - set(_SUMMARY_PARAMS))
    if unknown:
        raise BadRequest(f"Unknown $summary parameter(s): {', '.join(unknown)}")
    return params


async def _summary(request: Request, pid: str, params: dict[str, str]) -> Response:
    profile = params.get("profile")
    if profile and profile not in (ips.BUNDLE_PROFILE, ips.COMPOSITION_PROFILE):
        raise NotSupported(f"Only the IPS profile is supported ({ips.COMPOSITION_PROFILE}), not {profile!r}")
    language = params.get("language")
    if language and language[:2].lower() not in LANGUAGES:
        raise BadRequest(f"language must be one of {', '.join(LANGUAGES)}, not {language!r}")
    lang = pick_language(language, request.headers.get("accept-language"))
    persist = params.get("persist", "false")
    if persist not in ("true", "false"):
        raise BadRequest(f"persist must be true or false, not {persist!r}")
    svc, base = _service(request), base_url(request)
    if persist == "false":
        bundle = await run_in_threadpool(ips.generate_summary, svc, pid, base_url=base, language=lang)
        return fhir_response(request, bundle)
    if request.method != "POST":
        raise BadRequest("persist=true stores a signed summary in the record: use POST")
    who = request.state.principal
    if who.kind is not PrincipalKind.PROFESSIONAL or not who.practitioner_id:
        raise Forbidden("Only a health professional can author and sign a patient summary")
    signer = ips.Signer(who.practitioner_id, who.display, who.organization_id)
    bundle, stored = await run_in_threadpool(
        ips.persist_summary, svc, signer, pid, base_url=base, language=lang
    )
    location = f"{base}/DocumentReference/{stored.id}/_history/{stored.version}"
    return fhir_response(request, bundle, 201, {"Location": location})


# -- instance level ----------------------------------------------------------------------------
def _none_match_hit(header: str | None, version: int) -> bool:
    """True when If-None-Match names the current version: ``*`` or any listed tag, compared weakly
    (``W/"3"``, ``"3"`` and ``3`` all name version 3, as RFC 9110 and HAPI have it)."""
    if header is None:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/").strip('"') == str(version) for t in tags)


@router.get("/{rtype}/{rid}")
async def read(request: Request, rtype: str, rid: str) -> Response:
    stored = await run_in_threadpool(_service(request).read, rtype, rid)
    if _none_match_hit(request.headers.get("if-none-match"), stored.version):
        return Response(status_code=304, headers=_version_headers(request, stored))
    summary = request.query_params.get("_summary")
    elements = tuple(e for e in request.query_params.get("_elements", "").split(",") if e)
    body = resource_json(stored, summary if summary not in (None, "false") else None, elements)
    return fhir_response(request, body, headers=_version_headers(request, stored))


@router.put("/{rtype}/{rid}")
async def update(request: Request, rtype: str, rid: str) -> Response:
    body = await _json_body(request)
    if rtype == "DiagnosticReport" and labresults.carries_inline_form(body):  # its PDF: as create
        blobs, limit = request.app.state.blobs, request.app.state.settings.max_content_bytes
        outcome = await run_in_threadpool(
            labresults.update_report,
            _service(request),
            blobs,
            rid,
            body,
            if_match=request.headers.get("if-match"),
            base_url=base_url(request),
            max_size=limit,
        )
        return _write_response(request, outcome, "Created" if outcome.created else "Updated")
    outcome = await run_in_threadpool(
        _service(request).update, rtype, rid, body, if_match=request.headers.get("if-match")
    )
    return _write_response(request, outcome, "Created" if outcome.created else "Updated")


async def _patch_body(request: Request) -> Any:
    ctype = request.headers.get("content-type", "")
    if "json-patch" not in ctype:
        raise FhirError(
            f"PATCH needs Content-Type application/json-patch+json, not {ctype!r}",
            status=415,
            code="not-supported",
        )
    return await _json_body(request)


@router.patch("/{rtype}/{rid}")
async def patch(request: Request, rtype: str, rid: str) -> Response:
    body = await _patch_body(request)
    outcome = await run_in_threadpool(
        _service(request).patch, rtype, rid, body, if_match=request.headers.get("if-match")
    )
    return _write_response(request, outcome, "Patched")


@router.delete("/{rtype}/{rid}")
async def delete(request: Request, rtype: str, rid: str) -> Response:
    stored = await run_in_threadpool(_service(request).delete, rtype, rid)
    headers = {"ETag": stored.etag} if stored else {}
    return fhir_response(
        request,
        operation_outcome([Issue("information", "informational", f"Deleted {rtype}/{rid}")]),
        headers=headers,
    )


@router.get("/{rtype}/{rid}/_history")
async def instance_history(request: Request, rtype: str, rid: str) -> Response:
    return await _history(request, rtype, rid, f"{rtype}/{rid}/_history")


@router.get("/{rtype}/{rid}/_history/{vid}")
async def vread(request: Request, rtype: str, rid: str, vid: str) -> Response:
    stored = await run_in_threadpool(_service(request).vread, rtype, rid, vid)
    return fhir_response(request, resource_json(stored), headers=_version_headers(request, stored))


@router.get("/Patient/{pid}/{rtype}")
async def compartment_search(request: Request, pid: str, rtype: str) -> Response:
    svc = _service(request)
    if rtype == "*":
        raise NotFound(f"Searching every type of a compartment (Patient/{pid}/*) is not supported")
    if rtype not in svc.defs.resource_types:
        raise NotFound(f"Unknown resource type {rtype!r}")
    return await _search(request, rtype, _query_params(request), f"Patient/{pid}/{rtype}", compartment=pid)


__all__ = ["router", "utcnow"]
