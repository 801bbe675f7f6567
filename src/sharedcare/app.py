"""Build the FastAPI application from settings; nothing else lives here."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sharedcare import portal
from sharedcare.access import death as _death  # noqa: F401  (closes a record when its holder dies)
from sharedcare.access.policy import AccessPolicy, category_of
from sharedcare.api import audit as audit_api
from sharedcare.api import auth as auth_api
from sharedcare.api import documents as documents_api
from sharedcare.api import fhir as fhir_api
from sharedcare.api import registrations as registrations_api
from sharedcare.api import requests as requests_api
from sharedcare.api import vaccination as vaccination_api
from sharedcare.documents import labresults as _labresults  # noqa: F401  (registers write rules)
from sharedcare.fhir.errors import FhirError, Issue, operation_outcome
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.store import utcnow
from sharedcare.imaging import views as imaging_api
from sharedcare.settings import Settings, get_settings
from sharedcare.storage.content import make_blob_store
from sharedcare.storage.engine import make_engine

log = logging.getLogger("sharedcare")


def _outcome_response(status: int, code: str, diagnostics: str) -> Response:
    body = operation_outcome([Issue("error", code, diagnostics)])
    return Response(orjson.dumps(body), status_code=status, media_type=fhir_api.FHIR_JSON)


class BodySizeLimit:
    """Refuse bodies larger than the limit with 413 before they are read into memory.

    A declared Content-Length is checked up front; a chunked body is counted as it streams
    and the request is cut off as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, limit: int, streamed_limit: int | None = None) -> None:
        self.app = app
        self.limit = limit
        self.streamed_limit = streamed_limit
        """For bodies that stream into the content store (``api.documents.streamed_upload``)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit
        if self.streamed_limit is not None and documents_api.streamed_upload(scope):
            limit = max(limit, self.streamed_limit + 1024 * 1024)  # the content, and a form's fields
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, limit)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send, limit)

    async def _refuse(self, send: Send, limit: int) -> None:
        body = orjson.dumps(
            operation_outcome(
                [Issue("error", "too-costly", f"Request body exceeds the limit of {limit} bytes")]
            )
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", fhir_api.FHIR_JSON.encode()), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The server's start and stop: code to run at either goes here (with a lifespan, Starlette
    ignores ``on_event`` handlers).

    At start, the objects built so far (about 200,000: FHIR definitions, routes, the policy's
    tables) leave the reach of the cyclic garbage collector (``gc.freeze``): a full collection
    scanned them all and stopped every request of the worker for 120-150 ms about every 30 s
    under load (measured in the ITI-67 benchmark), the largest share of its p99. Caches built
    lazily later (cross-border definitions, vaccination schedules, portal catalogues) are not
    frozen. Reference counting still frees frozen objects, but cycles among them are never
    reclaimed: this is for servers (one app per process), not for a process that builds many
    apps (the tests turn it off)."""
    if app.state.settings.gc_freeze:
        gc.collect()
        gc.freeze()
    yield


def create_app(settings: Settings | None = None, *, validator: Any = "default") -> FastAPI:
    """The application for ``settings`` (defaults: environment); the schema must be migrated."""
    settings = settings or get_settings()
    engine = make_engine(settings.effective_database_url)
    if validator == "default":
        from sharedcare.fhir.validation import store_issues

        validator = store_issues if settings.validate_on_write else None

    app = FastAPI(title="SharedCare", version="0.1.0", docs_url="/docs", redoc_url=None, lifespan=_lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.started = utcnow()
    app.state.fhir = FhirService(
        engine,
        validator=validator,
        default_page_size=settings.default_page_size,
        max_page_size=settings.max_page_size,
        default_total=settings.default_total,
        classify=category_of,
    )
    app.state.policy = AccessPolicy(settings)
    app.state.blobs = make_blob_store(settings, engine)  # encrypted document content (storage.md)
    auth_api.install(app)  # OAuth/OIDC server and SMART discovery: before the FHIR routes
    app.include_router(audit_api.router)  # before the generic /fhir/{type} routes
    app.include_router(documents_api.router)  # ITI-68 Binary retrieval: before the generic routes too
    app.include_router(vaccination_api.router)  # $immds-forecast…: before the generic routes too
    app.include_router(registrations_api.router)  # $register, $renew-registration, $opt-out on Patient
    app.include_router(fhir_api.router)
    app.include_router(requests_api.router)  # operations on items: $release-disclosure…
    app.include_router(imaging_api.router)  # ImagingStudy $series and $preview (docs/imaging.md)
    portal.install(app)  # /portal pages, /portal/static and their error pages

    @app.exception_handler(FhirError)
    async def fhir_error(request: Request, exc: FhirError) -> Response:
        if exc.status in (403, 404, 410, 422) and getattr(request.state, "principal", None) is not None:
            await run_in_threadpool(fhir_api.record_refusal, request, exc)
        return Response(orjson.dumps(exc.outcome()), status_code=exc.status, media_type=fhir_api.FHIR_JSON)

    @app.exception_handler(RequestValidationError)
    async def request_error(_request: Request, exc: RequestValidationError) -> Response:
        return _outcome_response(400, "invalid", f"Invalid request: {exc.errors()}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
        return _outcome_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(IntegrityError)
    async def write_conflict(_request: Request, exc: IntegrityError) -> Response:
        # two writers raced for the same new resource id: the loser is told, nothing is half-written
        return _outcome_response(409, "conflict", "The resource was changed by another request; retry")

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return _outcome_response(500, "exception", f"Internal error: {type(exc).__name__}")

    @app.get("/", include_in_schema=False)
    async def root() -> dict[str, str]:
        return {"name": "SharedCare", "fhir": "/fhir", "capabilities": "/fhir/metadata"}

    app.add_middleware(SessionMiddleware, **auth_api.session_options(settings))
    app.add_middleware(
        BodySizeLimit, limit=settings.max_request_bytes, streamed_limit=settings.max_content_bytes
    )
    return app
