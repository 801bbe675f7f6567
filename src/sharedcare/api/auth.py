"""OAuth 2.0 / OpenID Connect and SMART endpoints: translate HTTP to ``oauth.server`` and back.

Routes: ``/auth/authorize`` (GET, and POST for the consent form and SMART ``authorize-post``),
``/auth/token``, ``/auth/revoke``, ``/auth/introspect``, ``/auth/jwks``, ``/auth/userinfo``,
``/.well-known/openid-configuration``, ``/.well-known/oauth-authorization-server`` and
``/fhir/.well-known/smart-configuration``. ``install`` wires the server into an application.
"""

from __future__ import annotations

import hmac
import html
import secrets
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidRequestError
from authlib.oidc.core.errors import ConsentRequiredError
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool

from sharedcare.access.principals import Principal
from sharedcare.access.scopes import ScopeSet
from sharedcare.access.tokens import (
    InsufficientScope,
    TokenError,
    TokenValidator,
    principal_from_request,
)
from sharedcare.fhir.errors import Issue, operation_outcome
from sharedcare.fhir.store import utcnow
from sharedcare.identity import sessions
from sharedcare.oauth import throttle
from sharedcare.oauth.keys import KeyStore, session_secret
from sharedcare.oauth.server import (
    AuthorizationServer,
    PrincipalResolver,
    StarletteOAuth2Request,
    fhir_user_url,
    launch_patient_for,
)
from sharedcare.oauth.urls import PublicUrls, public_urls
from sharedcare.settings import Settings

FHIR_JSON = "application/fhir+json"
AUTH_METHODS = ["client_secret_basic", "private_key_jwt", "none"]
ASSERTION_ALGORITHMS = ["RS384", "ES384", "RS256", "ES256"]
GRANT_TYPES = ["authorization_code", "client_credentials", "refresh_token"]
SCOPES_SUPPORTED = [
    "openid",
    "fhirUser",
    "launch/patient",
    "offline_access",
    "online_access",
    "patient/*.read",
    "patient/*.rs",
    "user/*.read",
    "user/*.*",
    "user/*.cruds",
    "system/*.read",
    "system/*.*",
    "system/*.cruds",
]
SMART_CAPABILITIES = [
    "launch-standalone",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "sso-openid-connect",
    "context-standalone-patient",
    "permission-offline",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
]
_CONSENT_FIELDS = ("decision", "csrf")

router = APIRouter()


def _server(request: Request) -> AuthorizationServer:
    server: AuthorizationServer = request.app.state.oauth
    return server


def request_time() -> datetime:
    """The time of the request, naive UTC (a dependency, so tests can move the clock)."""
    return utcnow()


def _attempt(request: Request, endpoint: str, oreq: StarletteOAuth2Request) -> throttle.TokenAttempt:
    client = request.client
    return throttle.attempt_of(endpoint, request.headers, oreq.form, client.host if client else None)


async def oauth_request(request: Request) -> StarletteOAuth2Request:
    """The authlib request for a Starlette request (reads the form body: OAuth posts forms)."""
    form: list[tuple[str, str]] = []
    ctype = request.headers.get("content-type", "")
    if request.method == "POST" and ctype.startswith("application/x-www-form-urlencoded"):
        data = await request.form()
        form = [(k, v) for k, v in data.multi_items() if isinstance(v, str)]
    query = list(request.query_params.multi_items())
    return StarletteOAuth2Request(request.method, str(request.url), request.headers, query, form)


# --- authorization endpoint ------------------------------------------------------------------


@router.api_route("/auth/authorize", methods=["GET", "POST"], include_in_schema=False)
async def authorize(request: Request) -> Response:
    oreq = await oauth_request(request)
    decision = oreq.form.get("decision")
    csrf = _csrf_token(request)
    if decision is not None and not hmac.compare_digest(oreq.form.get("csrf", ""), csrf):
        return _error_page(400, "The consent form has expired. Start again from the application.")
    principal = await run_in_threadpool(request.app.state.session_principal, request)
    return await run_in_threadpool(
        _authorize,
        _server(request),
        public_urls(request),
        oreq,
        principal,
        decision,
        _login_url(request, oreq),
        csrf,
        _session_id(request) if principal is not None else None,
    )


def _authorize(
    server: AuthorizationServer,
    urls: PublicUrls,
    oreq: StarletteOAuth2Request,
    principal: Principal | None,
    decision: str | None,
    login_url: str,
    csrf: str,
    session_id: str | None,
) -> Response:
    def action() -> Response:
        try:
            grant = server.get_consent_grant(oreq, end_user=principal)
        except OAuth2Error as error:
            if error.redirect_uri:  # the client and redirect URI are known good: tell the client
                return server.handle_error_response(oreq, error)
            return _error_page(error.status_code, error.description or error.error)
        state = oreq.payload.state
        aud = oreq.payload.data.get("aud")
        if aud and aud.rstrip("/") != urls.fhir_base:
            bad_aud = InvalidRequestError("aud is not the FHIR base URL of this server", state=state)
            bad_aud.redirect_uri = grant.redirect_uri
            return server.handle_error_response(oreq, bad_aud)
        if principal is None:
            return RedirectResponse(login_url, status_code=303)
        needs_consent = not grant.client.trusted or grant.prompt == "consent"
        if needs_consent and decision is None:
            if oreq.payload.data.get("prompt") == "none":
                refused = ConsentRequiredError(redirect_uri=grant.redirect_uri, state=state)
                return server.handle_error_response(oreq, refused)
            return _consent_page(oreq, grant.client.name, oreq.scope or "", csrf)
        if needs_consent and decision != "approve":
            return server.create_authorization_response(oreq, grant_user=None, grant=grant)
        user = replace(principal, launch_patient=launch_patient_for(principal))
        return server.create_authorization_response(oreq, grant_user=user, grant=grant)

    return server.run(urls, urls.authorization_endpoint, action, session_id=session_id)


def _session_id(request: Request) -> str | None:
    """The stored key of the portal sign-in session the request carries, if any."""
    token = request.session.get(sessions.SESSION_FIELD) if "session" in request.scope else None
    return sessions.key_of(token) if isinstance(token, str) and token else None


def _login_url(request: Request, oreq: StarletteOAuth2Request) -> str:
    """The portal login page, coming back to this authorization request afterwards."""
    params = [
        (k, v) for k, values in oreq.payload.datalist.items() if k not in _CONSENT_FIELDS for v in values
    ]
    back = f"{request.url.path}?{urlencode(params)}"
    return f"/portal/login?next={quote(back, safe='')}"


def _csrf_token(request: Request) -> str:
    token = request.session.get("oauth_csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["oauth_csrf"] = token
    return token


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:2rem auto;padding:0 1rem}}
button{{font-size:1rem;padding:.5rem 1.2rem;margin-right:.5rem}}</style></head>
<body><main>{body}</main></body></html>"""


def _consent_page(oreq: StarletteOAuth2Request, client_name: str, scope: str, csrf: str) -> Response:
    """A minimal consent step for third-party apps (the portal will restyle it)."""
    scopes = ScopeSet.parse(scope)
    items = "".join(f"<li>{html.escape(s.describe())}</li>" for s in scopes.resources)
    named = {
        "openid": "confirm who you are",
        "fhirUser": "know your identity in the health record",
        "launch/patient": "work on one patient record: yours, or the one you act for",
        "offline_access": "keep access when you are not connected",
        "online_access": "keep access while you are connected",
    }
    items += "".join(f"<li>{html.escape(named[n])}</li>" for n in scopes.names if n in named)
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, values in oreq.payload.datalist.items()
        if k not in _CONSENT_FIELDS
        for v in values
    )
    body = (
        f"<h1>Allow {html.escape(client_name)}?</h1>"
        f"<p>The application <strong>{html.escape(client_name)}</strong> asks to:</p><ul>{items}</ul>"
        "<p>Your access rules still apply: the application never sees more than you may.</p>"
        f'<form method="post" action="/auth/authorize">{hidden}'
        f'<input type="hidden" name="csrf" value="{html.escape(csrf)}">'
        '<button type="submit" name="decision" value="approve">Allow</button>'
        '<button type="submit" name="decision" value="deny">Deny</button></form>'
    )
    page = _PAGE.format(title="Allow access", body=body)
    return Response(page, media_type="text/html", headers={"Cache-Control": "no-store"})


def _error_page(status: int, message: str) -> Response:
    body = f"<h1>This sign-in request cannot be completed</h1><p>{html.escape(message)}</p>"
    return Response(
        _PAGE.format(title="Sign-in error", body=body), status_code=status, media_type="text/html"
    )


# --- token, revocation, introspection --------------------------------------------------------


def _guarded(
    server: AuthorizationServer, attempt: throttle.TokenAttempt, at: datetime, action: Callable[[], Response]
) -> Response:
    """``action`` behind the limit on failed client authentications and grants (``oauth.throttle``)."""
    return throttle.guard(server.engine, server.settings, attempt, at, action)


@router.post("/auth/token", include_in_schema=False)
async def token(request: Request, at: datetime = Depends(request_time)) -> Response:
    oreq = await oauth_request(request)
    server, urls = _server(request), public_urls(request)
    return await run_in_threadpool(
        _guarded,
        server,
        _attempt(request, "token", oreq),
        at,
        lambda: server.run(urls, urls.token_endpoint, lambda: server.create_token_response(oreq)),
    )


@router.post("/auth/revoke", include_in_schema=False)
async def revoke(request: Request, at: datetime = Depends(request_time)) -> Response:
    oreq = await oauth_request(request)
    server, urls = _server(request), public_urls(request)
    return await run_in_threadpool(
        _guarded,
        server,
        _attempt(request, "revoke", oreq),
        at,
        lambda: server.run(
            urls, urls.revocation_endpoint, lambda: server.create_endpoint_response("revocation", oreq)
        ),
    )


@router.post("/auth/introspect", include_in_schema=False)
async def introspect(request: Request, at: datetime = Depends(request_time)) -> Response:
    oreq = await oauth_request(request)
    server, urls = _server(request), public_urls(request)
    return await run_in_threadpool(
        _guarded,
        server,
        _attempt(request, "introspect", oreq),
        at,
        lambda: server.run(
            urls, urls.introspection_endpoint, lambda: server.create_endpoint_response("introspection", oreq)
        ),
    )


# --- keys, user info, discovery --------------------------------------------------------------


@router.get("/auth/jwks", include_in_schema=False)
def jwks(request: Request) -> Response:
    keys: KeyStore = request.app.state.oauth_keys
    return JSONResponse(keys.public_jwks(), headers={"Cache-Control": "public, max-age=300"})


@router.api_route("/auth/userinfo", methods=["GET", "POST"], include_in_schema=False)
def userinfo(request: Request, principal: Principal | None = Depends(principal_from_request)) -> Response:
    if principal is None:
        return JSONResponse(
            {"error": "invalid_request", "error_description": "An access token is required"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="sharedcare"'},
        )
    if "openid" not in principal.scopes:
        raise InsufficientScope("The user info endpoint needs the openid scope", scope="openid")
    info: dict[str, Any] = {"sub": principal.subject}
    fhir_user = fhir_user_url(principal, public_urls(request).fhir_base)
    if fhir_user and "fhirUser" in principal.scopes:
        info["fhirUser"] = fhir_user
    return JSONResponse(info, headers={"Cache-Control": "no-store"})


def _common_metadata(urls: PublicUrls) -> dict[str, Any]:
    return {
        "issuer": urls.issuer,
        "authorization_endpoint": urls.authorization_endpoint,
        "token_endpoint": urls.token_endpoint,
        "jwks_uri": urls.jwks_uri,
        "userinfo_endpoint": urls.userinfo_endpoint,
        "revocation_endpoint": urls.revocation_endpoint,
        "introspection_endpoint": urls.introspection_endpoint,
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
        "grant_types_supported": GRANT_TYPES,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "scopes_supported": SCOPES_SUPPORTED,
        "code_challenge_methods_supported": ["S256"],
    }


@router.get("/.well-known/openid-configuration", include_in_schema=False)
async def openid_configuration(request: Request) -> Response:
    doc = _common_metadata(public_urls(request))
    doc.update(
        {
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": [
                "iss",
                "sub",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "nonce",
                "at_hash",
                "fhirUser",
            ],
        }
    )
    return JSONResponse(doc)


@router.get("/.well-known/oauth-authorization-server", include_in_schema=False)
async def oauth_metadata(request: Request) -> Response:
    return JSONResponse(_common_metadata(public_urls(request)))


@router.get("/fhir/.well-known/smart-configuration", include_in_schema=False)
async def smart_configuration(request: Request) -> Response:
    """SMART App Launch 2 discovery: only capabilities that really work are listed."""
    doc = _common_metadata(public_urls(request))
    doc["capabilities"] = SMART_CAPABILITIES
    return JSONResponse(doc)


# --- wiring ----------------------------------------------------------------------------------


def account_resolver() -> PrincipalResolver | None:
    """``identity.accounts.get_account`` + ``principal_for`` once that module provides them."""
    try:
        from sharedcare.identity import accounts, errors
    except ImportError:
        return None
    get_account = getattr(accounts, "get_account", None)
    principal_for = getattr(accounts, "principal_for", None)
    if not callable(get_account) or not callable(principal_for):
        return None
    unusable = (LookupError, getattr(errors, "IdentityError", LookupError))

    def resolve(conn: Connection, account_id: str) -> Principal | None:
        try:  # unknown, disabled, locked or half-enrolled: no principal
            account = get_account(conn, account_id)
            principal: Principal | None = principal_for(account) if account is not None else None
        except unusable:
            return None
        return principal

    return resolve


def default_session_principal(request: Request) -> Principal | None:
    """The portal user: the sign-in session the cookie names (``identity.sessions``), if still in
    force, and its account resolved through ``identity.accounts``."""
    token = request.session.get(sessions.SESSION_FIELD) if "session" in request.scope else None
    server = _server(request)
    if not isinstance(token, str) or server.resolve_account is None:
        return None
    with request.app.state.engine.connect() as conn:
        session = sessions.resume(conn, server.settings, token, utcnow())
        return server.resolve_account(conn, session.account_id) if session is not None else None


def session_options(settings: Settings) -> dict[str, Any]:
    """Options of Starlette's ``SessionMiddleware``: signed cookie, Secure when served over https.

    The cookie carries the sign-in session's token; the session itself (idle timeout, absolute
    end, revocation) is checked on the server at every request (``identity.sessions``).
    """
    public = settings.issuer or settings.base_url or ""
    return {
        "secret_key": session_secret(settings),
        "session_cookie": "sharedcare_session",
        "same_site": "lax",
        "https_only": public.startswith("https://"),
        "max_age": settings.session_hours * 3600,
    }


async def _token_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TokenError)
    headers = {"WWW-Authenticate": exc.www_authenticate}
    if request.url.path.startswith("/fhir"):
        code = "login" if exc.status == 401 else "forbidden"
        body = orjson.dumps(operation_outcome([Issue("error", code, exc.description)]))
        return Response(body, status_code=exc.status, media_type=FHIR_JSON, headers=headers)
    return JSONResponse(
        {"error": exc.error, "error_description": exc.description}, status_code=exc.status, headers=headers
    )


async def _oauth_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OAuth2Error)
    status, body, headers = exc()
    return Response(orjson.dumps(body), status_code=status, headers=dict(headers))


def install(app: FastAPI) -> None:
    """Add the authorization server to ``app``: state, routes and error handlers.

    Call before the FHIR router is included (``/fhir/.well-known/smart-configuration`` must win
    over ``/fhir/{type}/{id}``). Sets ``app.state.oauth_keys``, ``tokens``, ``oauth`` and
    ``session_principal`` (replaceable: a callable ``Request -> Principal | None``).
    """
    settings: Settings = app.state.settings
    keys = KeyStore(app.state.engine)
    tokens = TokenValidator(app.state.engine, keys, settings)
    app.state.oauth_keys = keys
    app.state.tokens = tokens
    app.state.oauth = AuthorizationServer(app.state.engine, settings, keys, tokens, account_resolver())
    session_principal: Callable[[Request], Principal | None] = default_session_principal
    app.state.session_principal = session_principal
    app.include_router(router)
    app.add_exception_handler(TokenError, _token_error)
    app.add_exception_handler(OAuth2Error, _oauth_error)
