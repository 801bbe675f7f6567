"""Helpers of the OAuth tests: register clients, log a user in, run the code flow, sign JWTs."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import RSAKey

from sharedcare.access.principals import Principal
from sharedcare.oauth.clients import ClientKind, OAuthClient, save_client
from sharedcare.oauth.urls import PublicUrls
from sharedcare.storage.engine import writer

BASE = "http://testserver"
URLS = PublicUrls(issuer=BASE, fhir_base=f"{BASE}/fhir")
TOKEN_URL = f"{BASE}/auth/token"
REDIRECT = "https://app.example/callback"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

SMART_APP = OAuthClient(
    client_id="smart-app",
    name="Health app",
    kind=ClientKind.PUBLIC,
    token_endpoint_auth_method="none",
    grant_types=("authorization_code", "refresh_token"),
    scope="openid fhirUser launch/patient offline_access patient/*.rs user/*.rs",
    redirect_uris=(REDIRECT,),
    trusted=True,
)


def register(client: TestClient, oauth_client: OAuthClient, secret: str | None = None) -> None:
    """Store a client directly (there is no registration endpoint)."""
    with writer(client.app.state.engine).begin() as conn:  # type: ignore[attr-defined]
        save_client(conn, oauth_client, secret)


def login(client: TestClient, principal: Principal | None) -> None:
    """Pretend the portal has this user logged in, with an account the refresh grant can re-read."""
    app = client.app
    app.state.session_principal = lambda _request: principal  # type: ignore[attr-defined]
    app.state.oauth.resolve_account = (  # type: ignore[attr-defined]
        lambda _conn, account_id: principal if principal and account_id == principal.subject else None
    )


def pkce() -> tuple[str, str]:
    """A PKCE (verifier, S256 challenge) pair."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize(client: TestClient, **params: str) -> httpx.Response:
    """GET the authorization endpoint without following the redirect."""
    return client.get("/auth/authorize", params=params, follow_redirects=False)


def redirect_params(response: httpx.Response) -> dict[str, str]:
    """The query parameters of a redirect to the client."""
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def code_params(
    challenge: str, scope: str = "launch/patient openid fhirUser offline_access patient/*.rs", **extra: str
) -> dict[str, str]:
    """Authorization request parameters for ``SMART_APP``."""
    params = {
        "response_type": "code",
        "client_id": SMART_APP.client_id,
        "redirect_uri": REDIRECT,
        "scope": scope,
        "state": "st-" + uuid.uuid4().hex[:8],
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "aud": URLS.fhir_base,
    }
    params.update(extra)
    return params


def get_code(client: TestClient, challenge: str, **extra: str) -> str:
    """Run the authorization request of a logged-in user; returns the code."""
    params = code_params(challenge, **extra)
    got = redirect_params(authorize(client, **params))
    assert got["state"] == params["state"]
    return got["code"]


def exchange(
    client: TestClient, code: str, verifier: str | None, client_id: str = "smart-app"
) -> httpx.Response:
    """POST the code to the token endpoint (public client: client_id in the form)."""
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": client_id,
    }
    if verifier is not None:
        data["code_verifier"] = verifier
    return client.post("/auth/token", data=data)


def tokens_for_patient(client: TestClient, **extra: str) -> dict[str, Any]:
    """The token response of a full code flow for the logged-in user."""
    verifier, challenge = pkce()
    response = exchange(client, get_code(client, challenge, **extra), verifier)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def refresh(client: TestClient, refresh_token: str, client_id: str = "smart-app") -> httpx.Response:
    return client.post(
        "/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id},
    )


def demo_token(client: TestClient, secret: str, scope: str = "system/*.*") -> httpx.Response:
    return client.post(
        "/auth/token", auth=("demo-system", secret), data={"grant_type": "client_credentials", "scope": scope}
    )


def rsa_key(kid: str | None = None) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid or uuid.uuid4().hex}, private=True)


def client_assertion(
    key: RSAKey, client_id: str, *, aud: str = TOKEN_URL, lifetime: int = 240, alg: str = "RS384"
) -> str:
    """A SMART Backend Services client assertion."""
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": aud, "exp": now + lifetime, "jti": uuid.uuid4().hex}
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=[alg])


def backend_token(client: TestClient, assertion: str, scope: str = "system/*.rs") -> httpx.Response:
    return client.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
    )
