"""The OAuth 2.0 / OpenID Connect authorization server, on authlib, with SMART on FHIR rules.

authlib brings the protocol (RFC 6749 grants, RFC 7636 PKCE, RFC 7009 revocation, RFC 7662
introspection, RFC 7523 ``private_key_jwt``, OpenID Connect ID tokens); this module brings storage,
our token format and a small Starlette adapter (authlib has no Starlette *server* integration):
the HTTP layer reads the request body (async), builds a ``StarletteOAuth2Request`` and calls the
server inside ``AuthorizationServer.run`` in the thread pool.

``run`` makes one request one database transaction: a failed request rolls back whatever it
wrote, except *security writes* (revoking a refresh-token family after a replay, remembering a
client assertion's ``jti``), which are replayed in a new transaction after the rollback.

Grants: ``authorization_code`` with PKCE S256 (required for every client, as SMART 2 asks),
``client_credentials`` for system clients, ``refresh_token`` with rotation (a rotated token used
again revokes its whole family, and the access tokens issued with it).
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

import orjson
from authlib.oauth2.rfc6749 import (
    AuthorizationServer as _AuthorizationServer,
)
from authlib.oauth2.rfc6749 import (
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    JsonPayload,
    JsonRequest,
    OAuth2Payload,
    OAuth2Request,
    TokenMixin,
    grants,
)
from authlib.oauth2.rfc7009 import RevocationEndpoint as _RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint as _IntrospectionEndpoint
from authlib.oidc.core import grants as oidc_grants
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import Connection, Engine, Row, select, update
from starlette.datastructures import Headers
from starlette.responses import Response

from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.access.scopes import ScopeSet
from sharedcare.access.tokens import (
    ACCESS_TOKEN_TYPE,
    TokenError,
    TokenValidator,
    principal_claims,
    principal_from_claims,
)
from sharedcare.fhir.store import utcnow
from sharedcare.identity import sessions
from sharedcare.oauth.clients import OAuthClient, get_client, hash_secret, new_secret
from sharedcare.oauth.keys import ALGORITHM, KeyStore, RemoteJwks, SigningKey
from sharedcare.oauth.models import oauth_code, oauth_refresh_token
from sharedcare.oauth.revocation import is_revoked, remember_assertion, revoke_family, revoke_jti
from sharedcare.oauth.urls import PublicUrls
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer

T = TypeVar("T")

CODE_SECONDS = 120
"""Lifetime of an authorization code (RFC 6749 recommends at most 10 minutes)."""
ASSERTION_MAX_SECONDS = 300
"""SMART Backend Services: a client assertion expires at most five minutes after it is made."""
ASSERTION_ALGORITHMS = ["RS384", "ES384", "RS256", "ES256", "RS512", "ES512", "PS256", "PS384"]
REFRESH_SCOPES = frozenset({"offline_access", "online_access"})


# --- one request, one transaction ------------------------------------------------------------


@dataclass
class IssuedAccess:
    """The access token just generated, for the records that must name it."""

    jti: str
    expires_at: datetime
    principal: Principal
    scope: str


@dataclass
class Exchange:
    """The state of the OAuth request being served: its transaction and public URLs."""

    conn: Connection
    urls: PublicUrls
    endpoint_url: str
    signing_key: SigningKey
    replays: list[Callable[[Connection], object]] = field(default_factory=list)
    issued: IssuedAccess | None = None
    session_id: str | None = None
    """The portal sign-in session (``login_session.id``) of the user at the authorization endpoint."""

    def security_write(self, write: Callable[[Connection], T]) -> T:
        """Run an idempotent write that must survive a failed request (it is replayed then)."""
        result = write(self.conn)
        self.replays.append(write)
        return result


_exchange: ContextVar[Exchange] = ContextVar("sharedcare_oauth_exchange")


def current() -> Exchange:
    """The exchange of the request being served (authlib's callbacks carry no context of ours)."""
    return _exchange.get()


class _Failed(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


# --- the Starlette adapter -------------------------------------------------------------------


class StarletteOAuth2Payload(OAuth2Payload):
    """Query and form parameters together, first value winning (like Flask's ``request.values``)."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in items:
            self._datalist[key].append(value)
        self._data = {key: values[0] for key, values in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class StarletteOAuth2Request(OAuth2Request):
    """An authlib request from a Starlette request whose body was already read.

    authlib refuses plain-http URLs other than loopback (``InsecureTransportError``) unless
    ``AUTHLIB_INSECURE_TRANSPORT`` is set; behind a TLS proxy, run uvicorn with proxy headers.
    """

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Headers,
        query: list[tuple[str, str]],
        form: list[tuple[str, str]],
    ) -> None:
        super().__init__(method, uri, headers=headers)
        self._args = dict(reversed(query))
        self._form = dict(reversed(form))
        self.payload = StarletteOAuth2Payload(query + form)
        self.family: str | None = None
        """The refresh-token family of the authorization being exchanged or refreshed."""
        self.session_id: str | None = None
        """The portal session an ``online_access`` authorization is bound to (None: not bound)."""

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


class StarletteJsonPayload(JsonPayload):
    def __init__(self, body: Any) -> None:
        self._body = body

    @property
    def data(self) -> Any:
        return self._body


class StarletteJsonRequest(JsonRequest):
    """An authlib JSON request (used by endpoints such as dynamic registration, not served yet)."""

    def __init__(self, method: str, uri: str, headers: Headers, body: Any) -> None:
        super().__init__(method, uri, headers)
        self.payload = StarletteJsonPayload(body)


# --- stored codes and tokens -----------------------------------------------------------------


def _principal_json(principal: Principal) -> str:
    return orjson.dumps({"sub": principal.subject, **principal_claims(principal)}).decode()


def _principal_from_json(text: str, client_id: str, scope: str, launch_patient: str | None) -> Principal:
    data = orjson.loads(text)
    subject = data.pop("sub")
    principal = principal_from_claims(
        {"sub": subject, "principal": data, "scope": scope, "client_id": client_id}
    )
    return replace(principal, launch_patient=launch_patient)


@dataclass(frozen=True)
class StoredCode:
    """An authorization code row, as authlib's code grant and OpenID extension read it."""

    row: Row[Any]

    @property
    def code_challenge(self) -> str:
        return str(self.row.code_challenge)

    @property
    def code_challenge_method(self) -> str:
        return str(self.row.code_challenge_method)

    def get_redirect_uri(self) -> str | None:
        return self.row.redirect_uri

    def get_scope(self) -> str:
        return str(self.row.scope)

    def get_nonce(self) -> str | None:
        return self.row.nonce

    def get_auth_time(self) -> int:
        return _epoch(self.row.auth_time)

    def get_acr(self) -> str | None:
        return None

    def get_amr(self) -> list[str] | None:
        return None

    def principal(self) -> Principal:
        r = self.row
        return _principal_from_json(r.principal, r.client_id, r.scope, r.launch_patient)


@dataclass(frozen=True)
class StoredRefreshToken(TokenMixin):
    """A refresh token row."""

    row: Row[Any]

    @property
    def family(self) -> str:
        return str(self.row.family)

    @property
    def launch_patient(self) -> str | None:
        return self.row.launch_patient

    def check_client(self, client: OAuthClient) -> bool:
        return bool(self.row.client_id == client.client_id)

    def get_scope(self) -> str:
        return str(self.row.scope)

    def get_expires_in(self) -> int:
        return max(0, _epoch(self.row.expires_at) - int(time.time()))

    def is_expired(self) -> bool:
        return bool(self.row.expires_at <= utcnow())

    def is_revoked(self) -> bool:
        return bool(self.row.revoked or self.row.rotated_at is not None)

    def revoke(self, conn: Connection) -> None:
        revoke_family(conn, self.family)

    def introspection(self) -> dict[str, Any]:
        return {
            "active": True,
            "token_type": "refresh_token",
            "scope": self.row.scope,
            "client_id": self.row.client_id,
            "sub": self.row.account_id,
            "iat": _epoch(self.row.issued_at),
            "exp": _epoch(self.row.expires_at),
        }


@dataclass(frozen=True)
class AccessTokenRecord(TokenMixin):
    """A verified access token (JWT), for revocation and introspection."""

    claims: dict[str, Any]
    revoked: bool

    def check_client(self, client: OAuthClient) -> bool:
        return bool(self.claims.get("client_id") == client.client_id)

    def get_scope(self) -> str:
        return str(self.claims.get("scope") or "")

    def get_expires_in(self) -> int:
        return max(0, int(self.claims["exp"]) - int(time.time()))

    def is_expired(self) -> bool:
        return bool(self.claims["exp"] <= time.time())

    def is_revoked(self) -> bool:
        return self.revoked

    def revoke(self, conn: Connection) -> None:
        revoke_jti(conn, str(self.claims["jti"]), _from_epoch(self.claims["exp"]))

    def introspection(self) -> dict[str, Any]:
        body = {"active": True, "token_type": "Bearer"}
        keep = ("scope", "client_id", "sub", "exp", "iat", "iss", "aud", "jti", "patient", "fhirUser")
        body.update({k: self.claims[k] for k in keep if k in self.claims})
        return body


def _epoch(moment: datetime) -> int:
    """Seconds since the epoch of a naive UTC datetime (the stored form)."""
    return int((moment - datetime(1970, 1, 1)).total_seconds())


def _from_epoch(seconds: float) -> datetime:
    return datetime(1970, 1, 1) + timedelta(seconds=float(seconds))


# --- grants and extensions -------------------------------------------------------------------


class PkceS256(CodeChallenge):
    """PKCE with S256 only, and required at the authorization endpoint for every client."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: Any) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge with code_challenge_method=S256")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256")
        super().validate_code_challenge(grant, redirect_uri)


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "private_key_jwt", "none"]

    def save_authorization_code(self, code: str, request: StarletteOAuth2Request) -> None:
        principal: Principal = request.user
        scope = ScopeSet.parse(request.scope)
        if "launch/patient" in scope and not principal.launch_patient:
            scope = scope.without("launch/patient")  # no patient in context: grant less, as SMART allows
        now = utcnow()
        data = request.payload.data
        # online_access (without offline_access) lasts as long as the portal session it was given in
        online = "online_access" in scope.other and "offline_access" not in scope.other
        current().conn.execute(
            oauth_code.insert().values(
                code_hash=hash_secret(code),
                client_id=request.client.client_id,
                redirect_uri=data.get("redirect_uri"),
                scope=str(scope),
                account_id=principal.subject,
                principal=_principal_json(principal),
                launch_patient=principal.launch_patient,
                nonce=data.get("nonce"),
                code_challenge=data["code_challenge"],
                code_challenge_method=data["code_challenge_method"],
                auth_time=now,
                expires_at=now + timedelta(seconds=CODE_SECONDS),
                used=False,
                session_id=current().session_id if online else None,
            )
        )

    def query_authorization_code(self, code: str, client: OAuthClient) -> StoredCode | None:
        ex = current()
        row = ex.conn.execute(select(oauth_code).where(oauth_code.c.code_hash == hash_secret(code))).first()
        if row is None or row.client_id != client.client_id:
            return None
        if row.used:
            # RFC 6749 §4.1.2: a code used twice revokes what it produced
            if row.family:
                family = row.family
                ex.security_write(lambda conn: revoke_family(conn, family))
            return None
        if row.expires_at <= utcnow():
            return None
        return StoredCode(row)

    def delete_authorization_code(self, authorization_code: StoredCode) -> None:
        ex = current()
        issued = ex.issued
        result = ex.conn.execute(
            update(oauth_code)
            .where(oauth_code.c.pk == authorization_code.row.pk, oauth_code.c.used.is_(False))
            .values(
                used=True,
                family=self.request.family,
                access_jti=issued.jti if issued else None,
                access_expires_at=issued.expires_at if issued else None,
            )
        )
        if result.rowcount != 1:  # exchanged concurrently by another request
            family = ex.conn.execute(
                select(oauth_code.c.family).where(oauth_code.c.pk == authorization_code.row.pk)
            ).scalar()
            if family:
                ex.security_write(lambda conn: revoke_family(conn, family))
            raise InvalidGrantError("The authorization code was already used")

    def authenticate_user(self, authorization_code: StoredCode) -> Principal:
        self.request.session_id = authorization_code.row.session_id
        return authorization_code.principal()


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "private_key_jwt"]


class RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "private_key_jwt", "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> StoredRefreshToken | None:
        ex = current()
        row = ex.conn.execute(
            select(oauth_refresh_token).where(oauth_refresh_token.c.token_hash == hash_secret(refresh_token))
        ).first()
        if row is None:
            return None
        if row.revoked or row.rotated_at is not None:
            # a rotated token used again: stolen or replayed, so the whole authorization goes
            family = row.family
            ex.security_write(lambda conn: revoke_family(conn, family))
            return None
        if row.expires_at <= utcnow():
            return None
        server: AuthorizationServer = self.server
        if row.session_id is not None and not sessions.is_open(ex.conn, server.settings, row.session_id):
            # online_access: the portal session ended (signed out, idle, revoked), so does the grant
            family = row.family
            ex.security_write(lambda conn: revoke_family(conn, family))
            return None
        return StoredRefreshToken(row)

    def authenticate_user(self, refresh_token: StoredRefreshToken) -> Principal | None:
        self.request.family = refresh_token.family
        self.request.session_id = refresh_token.row.session_id
        server: AuthorizationServer = self.server
        principal = server.refresh_principal(refresh_token)
        if principal is None:
            raise InvalidGrantError("The account of this refresh token is no longer active")
        return principal

    def revoke_old_credential(self, refresh_token: StoredRefreshToken) -> None:
        ex = current()
        result = ex.conn.execute(
            update(oauth_refresh_token)
            .where(
                oauth_refresh_token.c.pk == refresh_token.row.pk,
                oauth_refresh_token.c.rotated_at.is_(None),
                oauth_refresh_token.c.revoked.is_(False),
            )
            .values(rotated_at=utcnow())
        )
        if result.rowcount != 1:  # used twice at the same time
            family = refresh_token.family
            ex.security_write(lambda conn: revoke_family(conn, family))
            raise InvalidGrantError("The refresh token was already used")


class OpenIDCode(oidc_grants.OpenIDCode):
    """ID tokens for ``openid`` requests, signed with the server key; ``fhirUser`` when asked."""

    def __init__(self, server: AuthorizationServer) -> None:
        super().__init__(require_nonce=False)
        self.server = server

    def exists_nonce(self, nonce: str, request: StarletteOAuth2Request) -> bool:
        codes = oauth_code.c
        query = select(codes.pk).where(codes.nonce == nonce, codes.client_id == request.payload.client_id)
        return current().conn.execute(query).first() is not None

    def resolve_client_private_key(self, client: OAuthClient) -> Any:
        return current().signing_key.key

    def get_client_algorithm(self, client: OAuthClient) -> str:
        return ALGORITHM

    def get_encode_header(self, client: OAuthClient) -> dict[str, str]:
        return {"alg": ALGORITHM, "kid": current().signing_key.kid, "typ": "JWT"}

    def get_client_claims(self, client: OAuthClient) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": current().urls.issuer,
            "aud": [client.client_id],
            "iat": now,
            "exp": now + self.server.settings.access_token_seconds,
        }

    def generate_user_info(self, user: Principal, scope: str) -> dict[str, Any]:
        info: dict[str, Any] = {"sub": user.subject}
        fhir_user = fhir_user_url(user, current().urls.fhir_base)
        if fhir_user and "fhirUser" in scope.split():
            info["fhirUser"] = fhir_user
        return info


class PrivateKeyJwt(JWTBearerClientAssertion):
    """``private_key_jwt`` client authentication (RFC 7523) as SMART Backend Services use it."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, server: AuthorizationServer) -> None:
        super().__init__(validate_jti=True, leeway=30)
        self.server = server

    def get_audiences(self) -> list[str]:
        ex = current()
        return list(dict.fromkeys([ex.urls.token_endpoint, ex.endpoint_url]))

    def resolve_client_public_key(self, client: OAuthClient) -> KeySet:
        if client.jwks:
            return KeySet.import_key_set(client.jwks)  # type: ignore[arg-type]
        if client.jwks_uri:
            try:
                return self.server.remote_jwks(client.jwks_uri).keys()
            except Exception as exc:  # the client's key server is down or answers nonsense
                raise InvalidClientError(description="The client's jwks_uri could not be read") from exc
        raise InvalidClientError(description="The client has no registered public key")

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                assertion, resolve_key, algorithms=ASSERTION_ALGORITHMS
            ).claims
        except JoseError:
            raise InvalidClientError(description="The client assertion signature does not verify") from None
        exp = claims.get("exp")
        if isinstance(exp, int | float) and exp - time.time() > ASSERTION_MAX_SECONDS + self.leeway:
            raise InvalidClientError(description="The client assertion expires more than 5 minutes ahead")
        self.verify_claims(claims)
        return claims

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        client_id = str(claims["sub"])
        expires = _from_epoch(float(claims["exp"]) + self.leeway)
        return current().security_write(lambda conn: remember_assertion(conn, client_id, str(jti), expires))


class RevocationEndpoint(_RevocationEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "private_key_jwt", "none"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenMixin | None:
        server: AuthorizationServer = self.server
        return server.find_token(token_string, token_type_hint)

    def revoke_token(self, token: StoredRefreshToken | AccessTokenRecord, request: Any) -> None:
        token.revoke(current().conn)


class IntrospectionEndpoint(_IntrospectionEndpoint):
    """For confidential clients: a client sees its own tokens; a trusted client sees every token."""

    CLIENT_AUTH_METHODS = ["client_secret_basic", "private_key_jwt"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenMixin | None:
        server: AuthorizationServer = self.server
        return server.find_token(token_string, token_type_hint)

    def check_permission(self, token: Any, client: OAuthClient, request: Any) -> bool:
        return client.trusted or bool(token.check_client(client))

    def introspect_token(self, token: StoredRefreshToken | AccessTokenRecord) -> dict[str, Any]:
        return token.introspection()


# --- the server ------------------------------------------------------------------------------


def fhir_user_url(principal: Principal, fhir_base: str) -> str | None:
    """SMART ``fhirUser``: the FHIR resource of the person behind the principal."""
    if principal.kind == PrincipalKind.PATIENT and principal.patient_id:
        return f"{fhir_base}/Patient/{principal.patient_id}"
    if principal.kind == PrincipalKind.PROFESSIONAL and principal.practitioner_id:
        return f"{fhir_base}/Practitioner/{principal.practitioner_id}"
    return None


def launch_patient_for(principal: Principal) -> str | None:
    """The patient of a standalone ``launch/patient``: the user's own record, or the only record
    a representative acts for. Others would need a patient picker (not built yet)."""
    if principal.launch_patient:
        return principal.launch_patient
    if principal.kind == PrincipalKind.PATIENT:
        return principal.patient_id
    if principal.kind == PrincipalKind.REPRESENTATIVE and len(principal.acting_for) == 1:
        return principal.acting_for[0]
    return None


PrincipalResolver = Callable[[Connection, str], Principal | None]
"""Resolve an account id to its current principal (None: the account is gone or disabled)."""


class AuthorizationServer(_AuthorizationServer):
    """authlib's authorization server bound to our storage, token format and Starlette."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        keys: KeyStore,
        tokens: TokenValidator,
        resolve_account: PrincipalResolver | None = None,
    ) -> None:
        super().__init__(scopes_supported=None)
        self.engine = engine
        self.settings = settings
        self.keys = keys
        self.tokens = tokens
        self.resolve_account = resolve_account
        """Re-reads a user's principal at refresh time (rights may have changed); None: the
        snapshot taken at login is reused."""
        self._remote_jwks: dict[str, RemoteJwks] = {}
        self.register_token_generator("default", self._generate_token)
        self.register_client_auth_method(PrivateKeyJwt.CLIENT_AUTH_METHOD, PrivateKeyJwt(self))
        self.register_grant(AuthorizationCodeGrant, [PkceS256(required=True), OpenIDCode(self)])
        self.register_grant(ClientCredentialsGrant)
        self.register_grant(RefreshTokenGrant)
        self.register_endpoint(RevocationEndpoint(self))
        self.register_endpoint(IntrospectionEndpoint(self))

    # --- running a request
    def run(
        self,
        urls: PublicUrls,
        endpoint_url: str,
        action: Callable[[], Response],
        *,
        session_id: str | None = None,
    ) -> Response:
        """Serve ``action`` in one write transaction, rolled back when the answer is an error.

        Security writes made during a failed request are replayed after the rollback.
        ``session_id`` is the user's portal session at the authorization endpoint.
        """
        signing_key = self.keys.signing_key()  # committed before, never inside, the transaction
        replays: list[Callable[[Connection], object]] = []
        try:
            with writer(self.engine).begin() as conn:
                exchange = Exchange(conn, urls, endpoint_url, signing_key, replays, session_id=session_id)
                token = _exchange.set(exchange)
                try:
                    response = action()
                finally:
                    _exchange.reset(token)
                if response.status_code >= 400:
                    raise _Failed(response)
        except _Failed as failed:
            if replays:
                with writer(self.engine).begin() as conn:
                    for write in replays:
                        write(conn)
            return failed.response
        return response

    # --- authlib framework hooks
    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        if not isinstance(request, OAuth2Request):
            raise TypeError("build the request with api.auth.oauth_request() first")
        return request

    def create_json_request(self, request: Any) -> JsonRequest:
        if not isinstance(request, JsonRequest):
            raise TypeError("build the request with StarletteJsonRequest first")
        return request

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> Response:
        content = orjson.dumps(body) if isinstance(body, dict) else body
        return Response(content, status_code=status, headers=dict(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """authlib's signals (client authenticated, token revoked): the audit trail will listen."""

    def query_client(self, client_id: str) -> OAuthClient | None:
        return get_client(current().conn, client_id)

    def save_token(self, token: dict[str, Any], request: StarletteOAuth2Request) -> None:
        ex = current()
        issued = ex.issued
        assert issued is not None, "save_token before a token was generated"
        if request.family is None:
            request.family = uuid.uuid4().hex
        refresh = token.get("refresh_token")
        if not refresh:
            return
        now = utcnow()
        ex.conn.execute(
            oauth_refresh_token.insert().values(
                token_hash=hash_secret(refresh),
                family=request.family,
                client_id=request.client.client_id,
                account_id=issued.principal.subject,
                principal=_principal_json(issued.principal),
                scope=issued.scope,
                launch_patient=issued.principal.launch_patient,
                issued_at=now,
                expires_at=now + timedelta(days=self.settings.refresh_token_days),
                revoked=False,
                access_jti=issued.jti,
                access_expires_at=issued.expires_at,
                session_id=request.session_id,
            )
        )

    # --- tokens
    def _generate_token(
        self,
        grant_type: str,
        client: OAuthClient,
        user: Principal | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        """Our access token: a JWT (RFC 9068 ``at+jwt``) naming the principal and granted scopes."""
        ex = current()
        system = grant_type == "client_credentials"
        requested = ScopeSet.parse(scope if scope or not system else client.scope)
        granted = requested.restrict_to(client.scope)
        if system:
            granted = ScopeSet.parse([s.raw for s in granted.resources if s.context == "system"])
        else:
            granted = granted.only_contexts("patient", "user")
        if requested.resources and not granted.resources:
            raise InvalidScopeError("None of the requested scopes may be granted to this client")
        if user is None:
            principal = Principal(
                kind=PrincipalKind.SYSTEM,
                subject=client.client_id,
                display=client.name,
                organization_id=client.organization_id,
                trusted=client.trusted,
            )
        else:
            principal = user
        if "launch/patient" in granted and not principal.launch_patient:
            granted = granted.without("launch/patient")
        if "launch/patient" not in granted:
            principal = replace(principal, launch_patient=None)
        principal = replace(principal, client_id=client.client_id, scopes=frozenset(granted.names))

        now = int(time.time())
        seconds = expires_in or self.settings.access_token_seconds
        jti = uuid.uuid4().hex
        claims: dict[str, Any] = {
            "iss": ex.urls.issuer,
            "sub": principal.subject,
            "aud": ex.urls.fhir_base,
            "iat": now,
            "exp": now + seconds,
            "jti": jti,
            "client_id": client.client_id,
            "scope": str(granted),
            "principal": principal_claims(principal),
        }
        if principal.launch_patient:
            claims["patient"] = principal.launch_patient
        fhir_user = fhir_user_url(principal, ex.urls.fhir_base)
        if fhir_user and "fhirUser" in granted:
            claims["fhirUser"] = fhir_user
        header = {"alg": ALGORITHM, "kid": ex.signing_key.kid, "typ": ACCESS_TOKEN_TYPE}
        token: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": jwt.encode(header, claims, ex.signing_key.key, algorithms=[ALGORITHM]),
            "expires_in": seconds,
            "scope": str(granted),
        }
        if principal.launch_patient:
            token["patient"] = principal.launch_patient
        if include_refresh_token and not system and REFRESH_SCOPES & granted.other:
            token["refresh_token"] = new_secret()
        ex.issued = IssuedAccess(jti, _from_epoch(now + seconds), principal, str(granted))
        return token

    def refresh_principal(self, token: StoredRefreshToken) -> Principal | None:
        """The principal a refreshed token is for: re-read from the account when possible."""
        row = token.row
        principal = _principal_from_json(row.principal, row.client_id, row.scope, row.launch_patient)
        if self.resolve_account is None:
            return principal
        fresh = self.resolve_account(current().conn, row.account_id)
        if fresh is None:
            return None
        return replace(fresh, launch_patient=row.launch_patient)

    def find_token(self, value: str, hint: str | None) -> StoredRefreshToken | AccessTokenRecord | None:
        """The access or refresh token ``value`` names (for revocation and introspection)."""
        ex = current()
        kinds = (
            ["refresh_token", "access_token"]
            if hint == "refresh_token"
            else ["access_token", "refresh_token"]
        )
        for kind in kinds:
            if kind == "access_token" and value.count(".") == 2:
                try:
                    claims = self.tokens.claims(value, ex.urls, check_expiry=False, check_revoked=False)
                except TokenError:
                    continue
                jti = claims.get("jti")
                if not isinstance(jti, str) or not isinstance(claims.get("exp"), int | float):
                    continue
                return AccessTokenRecord(claims, revoked=is_revoked(ex.conn, jti))
            if kind == "refresh_token":
                row = ex.conn.execute(
                    select(oauth_refresh_token).where(oauth_refresh_token.c.token_hash == hash_secret(value))
                ).first()
                if row is not None:
                    return StoredRefreshToken(row)
        return None

    def remote_jwks(self, url: str) -> RemoteJwks:
        """The cached JWKS of a client that registered a ``jwks_uri``."""
        if url not in self._remote_jwks:
            self._remote_jwks[url] = RemoteJwks(url)
        return self._remote_jwks[url]
