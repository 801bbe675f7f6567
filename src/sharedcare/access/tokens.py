"""Bearer access tokens → ``Principal``: the one place a request's token is checked.

Access tokens are JWTs signed by this server's key (``oauth.keys``), or, when configured, by an
external OpenID Connect provider (``settings.external_oidc_issuer`` and ``external_oidc_jwks_url``).
A token is accepted only if its signature verifies, its issuer is one of those, its audience is
this server's FHIR base URL, it is within its validity period (30 s leeway for clock skew) and its
``jti`` was not revoked. Each failure is a named exception the HTTP layer turns into 401
``WWW-Authenticate: Bearer error="invalid_token"`` (``InsufficientScope``: 403).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from joserfc import jws, jwt
from joserfc.errors import JoseError
from sqlalchemy import ColumnElement, Connection, Engine, false, select
from starlette.requests import Request

from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.access.scopes import INTERACTIONS, parse_cached
from sharedcare.oauth.keys import KeyStore, RemoteJwks
from sharedcare.oauth.revocation import revoked_clause
from sharedcare.oauth.urls import PublicUrls, public_urls
from sharedcare.settings import Settings

ACCESS_TOKEN_TYPE = "at+jwt"
"""JOSE ``typ`` of our access tokens (RFC 9068), so an ID token can never pass for one."""
LEEWAY_SECONDS = 30
ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256"]


class TokenError(Exception):
    """The bearer token cannot be used: HTTP 401 with ``error="invalid_token"``."""

    error = "invalid_token"
    status = 401

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description

    @property
    def www_authenticate(self) -> str:
        """The ``WWW-Authenticate`` header value for the 401/403 answer."""
        text = self.description.replace("\\", "").replace('"', "'")
        return f'Bearer error="{self.error}", error_description="{text}"'


class TokenMissing(TokenError):
    """No bearer token on a request that needs one (RFC 6750 §3.1: no error code)."""

    @property
    def www_authenticate(self) -> str:
        return 'Bearer realm="SharedCare"'


class TokenInvalid(TokenError):
    """Malformed, forged, tampered, of an unknown issuer or signed by an unknown key."""


class TokenExpired(TokenInvalid):
    """Past its ``exp`` (or before its ``nbf``)."""


class TokenRevoked(TokenInvalid):
    """Revoked (RFC 7009) before its expiry."""


class WrongAudience(TokenInvalid):
    """Issued for another resource server."""


class InsufficientScope(TokenError):
    """Valid token, but its scopes do not cover the request: HTTP 403."""

    error = "insufficient_scope"
    status = 403

    def __init__(self, description: str, scope: str | None = None) -> None:
        super().__init__(description)
        self.scope = scope

    @property
    def www_authenticate(self) -> str:
        value = super().www_authenticate
        return f'{value}, scope="{self.scope}"' if self.scope else value


# --- the principal inside a token ------------------------------------------------------------


def principal_claims(principal: Principal) -> dict[str, Any]:
    """The ``principal`` claim of our access tokens: what ``Principal`` needs, nothing empty."""
    claims: dict[str, Any] = {
        "kind": str(principal.kind),
        "display": principal.display,
        "patient_id": principal.patient_id,
        "acting_for": list(principal.acting_for),
        "practitioner_id": principal.practitioner_id,
        "practitioner_role_id": principal.practitioner_role_id,
        "organization_id": principal.organization_id,
        "profession": principal.profession,
        "trusted": principal.trusted,
    }
    return {k: v for k, v in claims.items() if v}


def principal_from_claims(claims: dict[str, Any], *, own: bool = True) -> Principal:
    """The principal of a validated token's claims.

    Our own tokens (``own``) carry a ``principal`` claim. A token of an external provider is
    mapped from SMART's ``fhirUser`` (Patient → patient, Practitioner → professional), or is a
    system client when its subject is its client; it can never claim to be ``trusted``.
    """
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise TokenInvalid("The token has no subject")
    common: dict[str, Any] = {
        "subject": subject,
        "client_id": claims.get("client_id") or claims.get("azp"),
        "scopes": frozenset(str(claims.get("scope") or "").split()),
        "launch_patient": claims.get("patient"),
        "token_id": claims.get("jti"),
    }
    data = claims.get("principal") if own else None
    if isinstance(data, dict):
        try:
            kind = PrincipalKind(str(data.get("kind")))
        except ValueError:
            raise TokenInvalid("The token names an unknown kind of principal") from None
        return Principal(
            kind=kind,
            display=str(data.get("display") or ""),
            patient_id=data.get("patient_id"),
            acting_for=tuple(data.get("acting_for") or ()),
            practitioner_id=data.get("practitioner_id"),
            practitioner_role_id=data.get("practitioner_role_id"),
            organization_id=data.get("organization_id"),
            profession=data.get("profession"),
            trusted=kind == PrincipalKind.SYSTEM and data.get("trusted") is True,
            **common,
        )
    rtype, _, rid = str(claims.get("fhirUser") or "").rstrip("/").rpartition("/")
    rtype = rtype.rpartition("/")[2]
    if rtype == "Patient" and rid:
        return Principal(kind=PrincipalKind.PATIENT, patient_id=rid, **common)
    if rtype == "Practitioner" and rid:
        return Principal(kind=PrincipalKind.PROFESSIONAL, practitioner_id=rid, **common)
    if common["client_id"] == subject:
        return Principal(kind=PrincipalKind.SYSTEM, **common)
    raise TokenInvalid("The token does not say who its subject is (no principal or fhirUser claim)")


# --- validation ------------------------------------------------------------------------------


VERIFIED_KEPT = 4096
"""Tokens whose verified signature a validator remembers (``TokenValidator._verified``)."""


@dataclass(frozen=True, slots=True)
class _Verified:
    """A token of ours whose signature, issuer, type and audience were verified, with the key
    that verified it; what can change over its life (expiry, revocation) is checked at every
    use."""

    key: Any
    kid: str | None
    claims: dict[str, Any]
    principal: Principal


class TokenValidator:
    """Checks bearer tokens; one per application (``app.state.tokens``).

    A token is checked in full at every request, but the verification of the signature of our
    own tokens (the same for every request of a token) is remembered while the key that
    verified it is still published (``_verified``): the time and the revocation list are
    checked every time, so a revoked or expired token is refused at once.
    """

    def __init__(
        self, engine: Engine, keys: KeyStore, settings: Settings, leeway: int = LEEWAY_SECONDS
    ) -> None:
        self.engine = engine
        self.keys = keys
        self.leeway = leeway
        self.external_issuer = (settings.external_oidc_issuer or "").rstrip("/") or None
        self.external_jwks = (
            RemoteJwks(settings.external_oidc_jwks_url)
            if self.external_issuer and settings.external_oidc_jwks_url
            else None
        )
        self._verified: dict[tuple[str, str, str], _Verified] = {}

    def validate(self, token: str, urls: PublicUrls) -> Principal:
        """The principal of a valid access token; raises a ``TokenError`` subclass otherwise."""
        return self.validate_with(token, urls)[0]

    def validate_with(
        self,
        token: str,
        urls: PublicUrls,
        also: Callable[[Principal], Sequence[ColumnElement[Any]]] | None = None,
    ) -> tuple[Principal, tuple[Any, ...]]:
        """``validate``, and the values of the columns ``also`` gives for the principal, read in
        the statement that checks the revocation list (the access decision's facts about the
        caller: ``AccessPolicy.caller_facts_columns``): one statement per request, not two."""
        known = self._verified.get((token, urls.issuer, urls.fhir_base))
        if known is not None and self.keys.key_for(known.kid) is known.key:
            self._check_time(known.claims)
            values = self._check_revoked(known.claims, None, also(known.principal) if also else ())
            return known.principal, values
        claims = self.claims(token, urls, check_revoked=False)
        principal = principal_from_claims(claims, own=claims.get("iss") == urls.issuer)
        values = self._check_revoked(claims, None, also(principal) if also else ())
        if claims.get("iss") == urls.issuer:  # our own tokens only (external keys are fetched)
            kid = _peek(token)[0].get("kid")
            if len(self._verified) >= VERIFIED_KEPT:
                self._verified.clear()
            self._verified[(token, urls.issuer, urls.fhir_base)] = _Verified(
                self.keys.key_for(kid), kid, claims, principal
            )
        return principal, values

    def claims(
        self,
        token: str,
        urls: PublicUrls,
        *,
        conn: Connection | None = None,
        check_expiry: bool = True,
        check_revoked: bool = True,
    ) -> dict[str, Any]:
        """The verified claims of an access token (signature, issuer, type, audience, time, jti).

        ``conn`` reads the revocation list in the caller's transaction (else a new connection).
        """
        header, unverified = _peek(token)
        issuer = unverified.get("iss")
        if issuer == urls.issuer:
            key = self.keys.key_for(header.get("kid"))
            if key is None:
                raise TokenInvalid("The token is signed by an unknown key")
            if header.get("typ") != ACCESS_TOKEN_TYPE:
                raise TokenInvalid("Not an access token")
        elif (
            self.external_jwks is not None
            and isinstance(issuer, str)
            and issuer.rstrip("/") == self.external_issuer
        ):
            try:
                key = self.external_jwks.keys(header.get("kid"))
            except Exception as exc:  # network or JSON failure: the token cannot be checked now
                raise TokenInvalid(
                    f"The external issuer's keys are unavailable ({type(exc).__name__})"
                ) from exc
        else:
            raise TokenInvalid("The token is from an unknown issuer")
        try:
            claims: dict[str, Any] = jwt.decode(token, key, algorithms=ALGORITHMS).claims
        except JoseError:
            raise TokenInvalid("The token signature does not verify") from None
        self._check_audience(claims, urls.fhir_base)
        if check_expiry:
            self._check_time(claims)
        if check_revoked:
            self._check_revoked(claims, conn)
        return claims

    def _check_revoked(
        self, claims: dict[str, Any], conn: Connection | None, also: Sequence[ColumnElement[Any]] = ()
    ) -> tuple[Any, ...]:
        """Refuse a revoked token; the values of ``also``, selected in the same statement."""
        jti = claims.get("jti")
        if not isinstance(jti, str) and not also:
            return ()
        statement = select(revoked_clause(jti) if isinstance(jti, str) else false(), *also)
        if conn is not None:
            row = conn.execute(statement).one()
        else:
            own = self.engine.connect()
            if own.dialect.name == "postgresql":  # one statement, no transaction to end
                own = own.execution_options(isolation_level="AUTOCOMMIT")
            with own:
                row = own.execute(statement).one()
        if row[0]:
            raise TokenRevoked("The token was revoked")
        return tuple(row[1:])

    @staticmethod
    def _check_audience(claims: dict[str, Any], audience: str) -> None:
        aud = claims.get("aud")
        values = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if audience.rstrip("/") not in [str(v).rstrip("/") for v in values]:
            raise WrongAudience(f"The token is not meant for {audience}")

    def _check_time(self, claims: dict[str, Any]) -> None:
        now = time.time()
        exp = claims.get("exp")
        if not isinstance(exp, int | float):
            raise TokenInvalid("The token has no expiry")
        if now > exp + self.leeway:
            raise TokenExpired("The token has expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and now < nbf - self.leeway:
            raise TokenExpired("The token is not valid yet")


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a JWS, unverified: only to choose the key that verifies it."""
    try:
        obj = jws.extract_compact(token.encode())
        claims = orjson.loads(obj.payload)
    except (JoseError, ValueError, orjson.JSONDecodeError):
        raise TokenInvalid("The token is not a well-formed JWT") from None
    if not isinstance(claims, dict):
        raise TokenInvalid("The token is not a well-formed JWT")
    return dict(obj.headers()), claims


# --- HTTP helpers ----------------------------------------------------------------------------


def principal_from_request(request: Request) -> Principal | None:
    """FastAPI dependency: the principal of the request's bearer token, None without one.

    Raises a ``TokenError`` for a bad token (the application answers 401). Synchronous on
    purpose: FastAPI runs it in the thread pool, since it may read the revocation list. The
    result is cached on ``request.state.principal``.
    """
    if hasattr(request.state, "principal"):
        cached: Principal | None = request.state.principal
        return cached
    header = request.headers.get("authorization")
    principal = None
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenInvalid("Use 'Authorization: Bearer <access token>'")
        validator: TokenValidator = request.app.state.tokens
        policy = getattr(request.app.state, "policy", None)
        patient = requested_patient(request)
        principal, values = validator.validate_with(
            token.strip(),
            public_urls(request),
            (lambda p: policy.caller_facts_columns(p, patient)) if policy is not None else None,
        )
        request.state.caller_facts = policy.caller_facts(values, patient) if policy is not None else None
    request.state.principal = principal
    return principal


def requested_patient(request: Request) -> str | None:
    """The patient a request names, whose care by the caller the token check then reads with
    the other facts (``AccessPolicy.caller_facts_columns``): ``[id]`` of a path
    ``…/Patient/[id]/$everything`` or ``…/Patient/[id]/[type]`` (a compartment search), else the
    one value of ``patient`` (``Patient/[id]`` or an id) or ``subject`` (``Patient/[id]``) in
    its query. Only a hint: a search applies it where its criteria keep it to the same
    patient's record (``SearchEngine.searched_patient``)."""
    parts = request.url.path.split("/")
    for i, part in enumerate(parts[:-2]):
        after = parts[i + 2]
        if part == "Patient" and parts[i + 1] and (after == "$everything" or after[:1].isupper()):
            return parts[i + 1]
    for name, bare in (("patient", True), ("subject", False)):
        values = request.query_params.getlist(name)
        if len(values) != 1 or "," in values[0]:
            continue
        kind, _, rid = values[0].rpartition("/")
        if rid and (kind == "Patient" or (bare and not kind)):
            return rid
    return None


def require_scope(principal: Principal, resource_type: str, interaction: str) -> None:
    """Raise ``InsufficientScope`` unless the principal's scopes allow the interaction on the type.

    ``interaction`` is one of ``c r u d s``. Apply to token principals only (``principal.token_id``
    set): a portal session has no scopes. This narrows the access decision, never replaces it.
    """
    if interaction not in INTERACTIONS or len(interaction) != 1:
        raise ValueError(f"interaction must be one of {INTERACTIONS!r}")
    if not parse_cached(principal.scopes).permits(resource_type, interaction):
        raise InsufficientScope(
            f"The token's scopes do not allow '{interaction}' on {resource_type}",
            scope=f"{_context_of(principal)}/{resource_type}.{interaction}",
        )


def _context_of(principal: Principal) -> str:
    if principal.kind == PrincipalKind.SYSTEM:
        return "system"
    return "patient" if principal.launch_patient else "user"
