"""ITI-68 Retrieve Document over HTTP: ``GET`` and ``HEAD [base]/Binary/[id]``.

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

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from sharedcare.api.fhir import authenticate, fhir_response, record_refusal
from sharedcare.documents.content import RangeNotSatisfiable
from sharedcare.documents.retrieve import Document, retrieve
from sharedcare.fhir.errors import FhirError
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
