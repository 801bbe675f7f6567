"""Document content over HTTP: ITI-68 Retrieve Document (``GET``/``HEAD [base]/Binary/[id]``) and
the streamed upload of large content (``POST [base]/Binary``, ``PUT [base]/Binary/[id]``).

Upload: a body of a non-FHIR ``Content-Type`` is the Binary's content (FHIR R4 REST, "Binary"),
and ``X-Security-Context`` its ``securityContext``: ``Patient/[id]``, the record it goes to. The
caller's write check runs before the body is read; the body then streams chunk by chunk from
the connection into the blob store (hashed and encrypted as it arrives), up to
``SHAREDCARE_MAX_CONTENT_BYTES`` (413 beyond, nothing kept; a refusal is in the access log). A
Provide Document Bundle of the same caller then names it by ``attachment.url``
(``documents.submission``); until then no professional reads it (category ``unfiled``) but its
uploader, who reads it back by ``GET`` (``submission.read_own_upload``), and it expires after
``SHAREDCARE_UNCLAIMED_UPLOAD_HOURS`` (``sharedcare expire-uploads``).

The bytes, with their own ``Content-Type``, ``Content-Length``, a strong ``ETag`` (their SHA-256),
``Accept-Ranges: bytes`` and single ``Range`` requests (206, or 416 outside the content; an
``If-Range`` that does not match sends the whole). ``Accept: application/fhir+json`` (or
``_format=json``) answers the Binary resource instead, with ``data`` for small content. The
access decision, the audit and the integrity check are ``documents.retrieve``'s; this module
only speaks HTTP. Included before the generic ``/fhir/{type}/{id}`` routes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC
from email.utils import format_datetime

import anyio.from_thread
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

from sharedcare.api import fhir as fhir_api
from sharedcare.api.fhir import authenticate, base_url, fhir_response, record_refusal
from sharedcare.documents import submission
from sharedcare.documents.content import RangeNotSatisfiable
from sharedcare.documents.mhd import literal
from sharedcare.documents.retrieve import Document, retrieve
from sharedcare.fhir.errors import BadRequest, FhirError, PayloadTooLarge
from sharedcare.fhir.service import FhirService
from sharedcare.storage.blobstore import BlobCorrupted, BlobNotFound

log = logging.getLogger(__name__)
router = APIRouter(prefix="/fhir", dependencies=[Depends(authenticate)])

ACTIVE_CONTENT = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/xml",
        "application/xml",
        "text/javascript",
        "application/javascript",
    }
)
"""Types a browser would run script from: served sandboxed, as a download, never on our origin."""


def _wants_resource(request: Request) -> bool:
    """The Binary resource is asked for (FHIR format), not the document's bytes."""
    fmt = request.query_params.get("_format")
    if fmt:
        if "json" not in fmt:
            raise FhirError(f"_format {fmt!r} is not supported; use json", status=406, code="not-supported")
        return True
    accept = request.headers.get("accept", "").lower()
    return "application/fhir+json" in accept or "application/json+fhir" in accept


def _matches(header: str | None, etag: str) -> bool:
    return header is not None and any(t.strip() in ("*", etag) for t in header.split(","))


def _content_headers(doc: Document) -> dict[str, str]:
    headers = {
        "Content-Type": doc.content_type,
        "ETag": doc.etag,
        "Accept-Ranges": "bytes",
        "Last-Modified": format_datetime(doc.last_updated.replace(tzinfo=UTC), usegmt=True),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    if doc.content_type.split(";")[0].strip().lower() in ACTIVE_CONTENT:
        headers["Content-Security-Policy"] = "sandbox"
        headers["Content-Disposition"] = "attachment"
    return headers


def _checked(chunks: Iterator[bytes], binary_id: str) -> Iterator[bytes]:
    """Log a corrupted blob found while streaming (the connection then closes short)."""
    try:
        yield from chunks
    except BlobCorrupted:
        log.error("document content failed its integrity check while streaming: Binary/%s", binary_id)
        raise


@router.api_route("/Binary/{rid}", methods=["GET", "HEAD"])
async def retrieve_document(request: Request, rid: str) -> Response:
    svc: FhirService = request.state.fhir
    head = request.method == "HEAD"
    as_resource = _wants_resource(request)
    try:
        doc = await run_in_threadpool(
            retrieve,
            svc,
            request.app.state.blobs,
            rid,
            range_header=request.headers.get("range"),
            if_range=request.headers.get("if-range"),
            read_body=not head,
            inline=as_resource,
        )
    except RangeNotSatisfiable as exc:
        # RFC 9110 §15.5.17: the answer names the content's size
        return fhir_response(request, exc.outcome(), 416, headers={"Content-Range": f"bytes */{exc.size}"})
    except (BlobCorrupted, BlobNotFound) as exc:
        corrupted = isinstance(exc, BlobCorrupted)
        log.error("document content %s: Binary/%s", "corrupted" if corrupted else "missing", rid)
        what = "failed its integrity check" if corrupted else "is missing from the content store"
        error = FhirError(f"The stored content of Binary/{rid} {what}", status=500, code="exception")
        await run_in_threadpool(record_refusal, request, error)
        raise error from None
    if as_resource:
        headers = {
            "ETag": f'W/"{doc.version}"',
            "Last-Modified": format_datetime(doc.last_updated.replace(tzinfo=UTC), usegmt=True),
        }
        return fhir_response(request, doc.as_resource(), headers=headers)
    headers = _content_headers(doc)
    if _matches(request.headers.get("if-none-match"), doc.etag):
        return Response(status_code=304, headers={"ETag": doc.etag, "Cache-Control": "no-store"})
    status = 200
    length = doc.size
    if doc.range is not None:
        status, length = 206, doc.range.end - doc.range.start
        headers["Content-Range"] = doc.range.content_range
    headers["Content-Length"] = str(length)
    if head:
        return Response(status_code=status, headers=headers)
    if doc.body is not None:
        return Response(doc.body, status_code=status, headers=headers)
    return StreamingResponse(_checked(doc.stream(), rid), status_code=status, headers=headers)


# -- streamed upload -------------------------------------------------------------------------------
_FHIR_TYPES = ("application/fhir+json", "application/json", "application/json+fhir", "application/fhir+xml")
_PORTAL_UPLOADS = ("/documents/new", "/documents/upload/new", "/replace", "/personal/writings")


def _raw(content_type: str | None) -> bool:
    """A body that is a document's bytes, not a FHIR resource."""
    bare = (content_type or "").split(";")[0].strip().lower()
    return bool(bare) and bare not in _FHIR_TYPES and not bare.endswith(("+json", "+xml"))


def streamed_upload(scope: Scope) -> bool:
    """Requests whose body streams into the content store, bounded by the content limit
    (``SHAREDCARE_MAX_CONTENT_BYTES``) rather than the request limit: raw Binary uploads and the
    portal's file uploads (spooled to disk by Starlette, then streamed)."""
    path, method = scope.get("path", ""), scope.get("method", "")
    if method == "POST" and path.startswith("/portal/") and path.endswith(_PORTAL_UPLOADS):
        return True
    binary = (method == "POST" and path == "/fhir/Binary") or (
        method == "PUT" and path.startswith("/fhir/Binary/") and path.count("/") == 3
    )
    if not binary:
        return False
    headers = dict(scope.get("headers") or ())
    return _raw(headers.get(b"content-type", b"").decode("latin-1"))


def _patient_of(request: Request) -> str:
    """The record the content goes to, from ``X-Security-Context`` (``Patient/[id]``)."""
    context = request.headers.get("x-security-context")
    if not context:
        raise BadRequest(
            "A raw Binary upload needs 'X-Security-Context: Patient/[id]', the record the content goes to"
        )
    target = literal(context.strip(), base_url(request))
    if target is None or target[0] != "Patient":
        raise BadRequest(
            f"X-Security-Context {context!r} is not supported: upload into a record with Patient/[id], "
            "then file the document (ITI-65) naming the Binary in attachment.url"
        )
    return target[1]


def _body_chunks(request: Request) -> Iterator[bytes]:
    """The request body, chunk by chunk as it arrives, for a worker thread: each chunk is awaited
    on the event loop, so no more than one chunk is held."""
    stream = request.stream()

    async def next_chunk() -> bytes | None:
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return None

    while (chunk := anyio.from_thread.run(next_chunk)) is not None:
        yield chunk


_RECORDED_BY_THE_APP = frozenset({403, 404, 410, 422})
"""Refusals the application's error handler puts in the access log itself (``app.fhir_error``)."""


async def _upload(request: Request, binary_id: str | None) -> Response:
    """Store the body as a Binary; a refusal (400, 409, 413…) is in the access log as a refused
    attempt, like every refused act of an authenticated caller."""
    try:
        return await _store_upload(request, binary_id)
    except FhirError as exc:
        if exc.status not in _RECORDED_BY_THE_APP:
            await run_in_threadpool(record_refusal, request, exc)
        raise


async def _store_upload(request: Request, binary_id: str | None) -> Response:
    svc: FhirService = request.state.fhir
    patient_id = _patient_of(request)
    content_type = request.headers["content-type"].strip()
    limit = request.app.state.settings.max_content_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:  # refused unread
        raise PayloadTooLarge(f"The content exceeds the limit of {limit} bytes: nothing kept")
    outcome = await run_in_threadpool(
        submission.upload,
        svc,
        request.app.state.blobs,
        _body_chunks(request),
        patient_id=patient_id,
        content_type=content_type,
        max_size=limit,
        binary_id=binary_id,
    )
    return fhir_api._write_response(request, outcome, "Stored" if outcome.created else "Replaced")


@router.post("/Binary")
async def upload_binary(request: Request) -> Response:
    """A raw upload (streamed); a FHIR Binary resource goes to the generic create."""
    if not _raw(request.headers.get("content-type")):
        return await fhir_api.create(request, "Binary")
    return await _upload(request, None)


@router.put("/Binary/{rid}")
async def put_binary(request: Request, rid: str) -> Response:
    """Raw bytes replacing the caller's own unclaimed upload; a FHIR Binary resource goes to the
    generic update."""
    if not _raw(request.headers.get("content-type")):
        return await fhir_api.update(request, "Binary", rid)
    return await _upload(request, rid)
