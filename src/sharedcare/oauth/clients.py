"""OAuth clients: registration, lookup, secrets, and the demo system client.

Three kinds of client (``ClientKind``): *public* apps (browser or mobile, no secret, PKCE),
*confidential* apps (a server-side web app with a secret or a key) and *system* clients
(hospital, laboratory or pharmacy software using SMART Backend Services: ``client_credentials``
with ``private_key_jwt``). ``trusted`` marks the platform's own clients, which skip the consent
page.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from authlib.oauth2.rfc6749 import ClientMixin
from sqlalchemy import Connection, Row, select, update

from sharedcare.access.scopes import ScopeSet
from sharedcare.fhir.store import utcnow
from sharedcare.oauth.models import oauth_client
from sharedcare.settings import Settings

DEMO_CLIENT_ID = "demo-system"

AUTH_METHODS = ("none", "client_secret_basic", "private_key_jwt")


class ClientKind(StrEnum):
    PUBLIC = "public"
    CONFIDENTIAL = "confidential"
    SYSTEM = "system"


class ClientRegistrationError(ValueError):
    """A client definition that cannot work (e.g. a public client with a secret)."""


def hash_secret(secret: str) -> str:
    """SHA-256 of a client secret, code or refresh token (all long random strings)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    """A new random secret (256 bits)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class OAuthClient(ClientMixin):
    """A registered client, as authlib's grants and endpoints need it."""

    client_id: str
    name: str
    kind: ClientKind
    token_endpoint_auth_method: str
    grant_types: tuple[str, ...]
    scope: str = ""
    """Space-separated scopes the client may be granted (requests are narrowed to these)."""
    redirect_uris: tuple[str, ...] = ()
    secret_hash: str | None = None
    jwks: dict[str, Any] | None = None
    jwks_uri: str | None = None
    organization_id: str | None = None
    trusted: bool = False

    # --- authlib ClientMixin
    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        return str(ScopeSet.parse(scope or "").restrict_to(self.scope))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        if not self.secret_hash:
            return False
        return hmac.compare_digest(hash_secret(client_secret), self.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types

    @property
    def is_public(self) -> bool:
        return self.token_endpoint_auth_method == "none"


def validate_client(client: OAuthClient) -> None:
    """Refuse client definitions that cannot work or would be unsafe."""
    method = client.token_endpoint_auth_method
    if method not in AUTH_METHODS:
        raise ClientRegistrationError(f"token_endpoint_auth_method must be one of {AUTH_METHODS}")
    if (client.kind == ClientKind.PUBLIC) != (method == "none"):
        raise ClientRegistrationError("public clients, and only they, use token_endpoint_auth_method 'none'")
    if method == "private_key_jwt" and not (client.jwks or client.jwks_uri):
        raise ClientRegistrationError("private_key_jwt needs the client's public jwks or jwks_uri")
    if client.kind == ClientKind.SYSTEM and set(client.grant_types) != {"client_credentials"}:
        raise ClientRegistrationError("system clients use the client_credentials grant only")
    if "client_credentials" in client.grant_types and client.kind != ClientKind.SYSTEM:
        raise ClientRegistrationError("only system clients may use client_credentials")
    if "authorization_code" in client.grant_types and not client.redirect_uris:
        raise ClientRegistrationError("authorization_code needs at least one redirect URI")


def save_client(conn: Connection, client: OAuthClient, secret: str | None = None) -> None:
    """Create or update ``client``; ``secret`` (client_secret_basic) is stored hashed.

    Without ``secret`` an existing client keeps its secret hash.
    """
    validate_client(client)
    now = utcnow()
    values: dict[str, Any] = {
        "name": client.name,
        "kind": str(client.kind),
        "redirect_uris": orjson.dumps(list(client.redirect_uris)).decode(),
        "grant_types": " ".join(client.grant_types),
        "scope": client.scope,
        "token_endpoint_auth_method": client.token_endpoint_auth_method,
        "jwks": orjson.dumps(client.jwks).decode() if client.jwks else None,
        "jwks_uri": client.jwks_uri,
        "organization_id": client.organization_id,
        "trusted": client.trusted,
        "updated": now,
    }
    if secret is not None:
        values["secret_hash"] = hash_secret(secret)
    elif client.secret_hash is not None:
        values["secret_hash"] = client.secret_hash
    exists = conn.execute(
        select(oauth_client.c.client_id).where(oauth_client.c.client_id == client.client_id)
    ).first()
    if exists:
        conn.execute(
            update(oauth_client).where(oauth_client.c.client_id == client.client_id).values(**values)
        )
    else:
        conn.execute(oauth_client.insert().values(client_id=client.client_id, created=now, **values))
    if client.token_endpoint_auth_method == "client_secret_basic":
        stored = conn.execute(
            select(oauth_client.c.secret_hash).where(oauth_client.c.client_id == client.client_id)
        ).scalar()
        if not stored:
            raise ClientRegistrationError("client_secret_basic needs a secret")


def get_client(conn: Connection, client_id: str) -> OAuthClient | None:
    """The registered client, or None."""
    row = conn.execute(select(oauth_client).where(oauth_client.c.client_id == client_id)).first()
    return _from_row(row) if row is not None else None


def _from_row(row: Row[Any]) -> OAuthClient:
    return OAuthClient(
        client_id=row.client_id,
        name=row.name,
        kind=ClientKind(row.kind),
        token_endpoint_auth_method=row.token_endpoint_auth_method,
        grant_types=tuple(row.grant_types.split()),
        scope=row.scope,
        redirect_uris=tuple(orjson.loads(row.redirect_uris or "[]")),
        secret_hash=row.secret_hash,
        jwks=orjson.loads(row.jwks) if row.jwks else None,
        jwks_uri=row.jwks_uri,
        organization_id=row.organization_id,
        trusted=bool(row.trusted),
    )


def ensure_demo_client(conn: Connection, settings: Settings) -> str | None:
    """Create or update the demo system client ``demo-system`` (``system/*.*``, client_secret_basic).

    Its secret is ``settings.demo_client_secret``; when that is unset a new secret is generated
    (on every call: only its hash is kept) and returned so that ``sharedcare serve`` can print it.
    Returns None when the configured secret was used.
    """
    generated = None if settings.demo_client_secret else new_secret()
    client = OAuthClient(
        client_id=DEMO_CLIENT_ID,
        name="Demo system client",
        kind=ClientKind.SYSTEM,
        token_endpoint_auth_method="client_secret_basic",
        grant_types=("client_credentials",),
        scope="system/*.*",
        trusted=True,
    )
    save_client(conn, client, secret=settings.demo_client_secret or generated)
    return generated
