"""Bearer token validation (``access.tokens``): each way a token can be bad has its exception."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from oauth_helpers import URLS, demo_token, rsa_key

from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.access.tokens import (
    ACCESS_TOKEN_TYPE,
    InsufficientScope,
    TokenExpired,
    TokenInvalid,
    TokenRevoked,
    TokenValidator,
    WrongAudience,
    principal_claims,
    principal_from_claims,
    require_scope,
)
from sharedcare.app import create_app
from sharedcare.oauth.keys import KeyStore
from sharedcare.settings import Settings


def validator(client: TestClient) -> TokenValidator:
    tokens: TokenValidator = client.app.state.tokens  # type: ignore[attr-defined]
    return tokens


def sign(
    client: TestClient,
    key: Any = None,
    kid: str | None = None,
    typ: str = ACCESS_TOKEN_TYPE,
    **overrides: Any,
) -> str:
    """A token signed with the server's key (or ``key``), valid unless ``overrides`` say otherwise."""
    keys: KeyStore = client.app.state.oauth_keys  # type: ignore[attr-defined]
    signing = keys.signing_key()
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": URLS.issuer,
        "sub": "acc-1",
        "aud": URLS.fhir_base,
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "client_id": "smart-app",
        "scope": "patient/*.rs launch/patient",
        "patient": "pat-9",
        "principal": {"kind": "patient", "patient_id": "pat-9", "display": "Ben"},
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    header = {"alg": "RS256", "kid": kid or signing.kid, "typ": typ}
    return jwt.encode(header, claims, key or signing.key, algorithms=["RS256"])


def test_valid_token_gives_the_principal(client: TestClient) -> None:
    principal = validator(client).validate(sign(client), URLS)
    assert principal.kind == PrincipalKind.PATIENT
    assert principal.subject == "acc-1" and principal.patient_id == "pat-9" and principal.display == "Ben"
    assert principal.launch_patient == "pat-9" and principal.client_id == "smart-app"
    assert principal.scopes == frozenset({"patient/*.rs", "launch/patient"}) and principal.token_id


def test_expired_and_not_yet_valid(client: TestClient) -> None:
    now = int(time.time())
    with pytest.raises(TokenExpired):
        validator(client).validate(sign(client, exp=now - 120, iat=now - 600), URLS)
    validator(client).validate(sign(client, exp=now - 10), URLS)  # within the clock-skew leeway
    with pytest.raises(TokenExpired):
        validator(client).validate(sign(client, nbf=now + 600), URLS)
    with pytest.raises(TokenInvalid, match="expiry"):
        validator(client).validate(sign(client, exp=None), URLS)


def test_forged_tokens(client: TestClient) -> None:
    real_kid = client.app.state.oauth_keys.signing_key().kid  # type: ignore[attr-defined]
    with pytest.raises(TokenInvalid, match="signature"):
        validator(client).validate(sign(client, key=rsa_key(), kid=real_kid), URLS)
    with pytest.raises(TokenInvalid, match="unknown key"):
        validator(client).validate(sign(client, key=rsa_key(), kid="other-kid"), URLS)
    unsigned = _b64({"alg": "none", "typ": ACCESS_TOKEN_TYPE}) + "." + _b64({"iss": URLS.issuer}) + "."
    with pytest.raises(TokenInvalid):
        validator(client).validate(unsigned, URLS)
    for garbage in ("", "abc", "a.b.c", "Bearer"):
        with pytest.raises(TokenInvalid):
            validator(client).validate(garbage, URLS)


def test_tampered_payload(client: TestClient) -> None:
    header, payload, signature = sign(client).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["principal"]["kind"] = "system"
    claims["principal"]["trusted"] = True
    with pytest.raises(TokenInvalid, match="signature"):
        validator(client).validate(f"{header}.{_b64(claims)}.{signature}", URLS)


def test_wrong_audience_and_issuer(client: TestClient) -> None:
    with pytest.raises(WrongAudience):
        validator(client).validate(sign(client, aud="https://other.example/fhir"), URLS)
    with pytest.raises(WrongAudience):
        validator(client).validate(sign(client, aud=None), URLS)
    validator(client).validate(sign(client, aud=["https://other.example/fhir", URLS.fhir_base]), URLS)
    with pytest.raises(TokenInvalid, match="unknown issuer"):
        validator(client).validate(sign(client, iss="https://evil.example"), URLS)


def test_id_token_is_not_an_access_token(client: TestClient) -> None:
    with pytest.raises(TokenInvalid, match="Not an access token"):
        validator(client).validate(sign(client, typ="JWT"), URLS)


def test_revoked(client: TestClient, demo_secret: str) -> None:
    token = demo_token(client, demo_secret).json()["access_token"]
    assert validator(client).validate(token, URLS).trusted
    client.post("/auth/revoke", auth=("demo-system", demo_secret), data={"token": token})
    with pytest.raises(TokenRevoked):
        validator(client).validate(token, URLS)


def test_http_answers(client: TestClient) -> None:
    expired = sign(client, exp=int(time.time()) - 3600, scope="openid")
    response = client.get("/auth/userinfo", headers={"Authorization": f"Bearer {expired}"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert response.json()["error"] == "invalid_token"
    basic = client.get("/auth/userinfo", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert basic.status_code == 401


def test_require_scope() -> None:
    principal = Principal(
        kind=PrincipalKind.SYSTEM, subject="lab", scopes=frozenset({"system/Observation.rs"})
    )
    require_scope(principal, "Observation", "r")
    require_scope(principal, "Observation", "s")
    with pytest.raises(InsufficientScope) as caught:
        require_scope(principal, "Observation", "c")
    assert caught.value.status == 403
    assert caught.value.www_authenticate == (
        "Bearer error=\"insufficient_scope\", error_description=\"The token's scopes do not allow 'c' on "
        'Observation", scope="system/Observation.c"'
    )
    with pytest.raises(InsufficientScope):
        require_scope(principal, "Patient", "r")
    with pytest.raises(ValueError):
        require_scope(principal, "Patient", "read")


def test_principal_claims_round_trip() -> None:
    principal = Principal(
        kind=PrincipalKind.REPRESENTATIVE, subject="acc-rep", display="Parent", acting_for=("pat-a", "pat-b")
    )
    back = principal_from_claims({"sub": "acc-rep", "principal": principal_claims(principal)})
    assert back == principal
    system = Principal(kind=PrincipalKind.SYSTEM, subject="x", trusted=True)
    assert principal_from_claims({"sub": "x", "principal": principal_claims(system)}).trusted
    # only system principals may be trusted, and never through another issuer's token
    patient = {"sub": "p", "principal": {"kind": "patient", "trusted": True}}
    assert not principal_from_claims(patient).trusted
    with pytest.raises(TokenInvalid):
        principal_from_claims({"sub": "x", "principal": principal_claims(system)}, own=False)
    with pytest.raises(TokenInvalid):
        principal_from_claims({"sub": "x", "principal": {"kind": "wizard"}})


# --- an external OpenID Connect provider ---------------------------------------------------


@pytest.fixture
def idp_jwks() -> Iterator[tuple[Any, str]]:
    """An external provider's key, its JWKS served over real HTTP on a loopback port."""
    key = rsa_key()
    body = json.dumps({"keys": [key.as_dict(private=False)]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield key, f"http://127.0.0.1:{server.server_address[1]}/jwks"
    finally:
        server.shutdown()
        thread.join()


def test_external_issuer(db_url: str, tmp_path: Path, idp_jwks: tuple[Any, str]) -> None:
    key, jwks_url = idp_jwks
    settings = Settings(
        database_url=db_url,
        data_dir=tmp_path,
        demo_data=False,
        external_oidc_issuer="https://idp.example",
        external_oidc_jwks_url=jwks_url,
    )
    app = create_app(settings)
    try:
        tokens: TokenValidator = app.state.tokens
        now = int(time.time())
        claims = {
            "iss": "https://idp.example",
            "sub": "ext-42",
            "aud": URLS.fhir_base,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
            "scope": "user/*.rs",
            "fhirUser": "https://directory.example/fhir/Practitioner/prac-42",
            "principal": {"kind": "system", "trusted": True},  # ignored: not ours to believe
        }
        token = jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key, algorithms=["RS256"])
        principal = tokens.validate(token, URLS)
        assert principal.kind == PrincipalKind.PROFESSIONAL and principal.practitioner_id == "prac-42"
        assert not principal.trusted and principal.scopes == frozenset({"user/*.rs"})

        forged = jwt.encode({"alg": "RS256", "kid": key.kid}, claims, rsa_key(), algorithms=["RS256"])
        with pytest.raises(TokenInvalid):
            tokens.validate(forged, URLS)
        with pytest.raises(WrongAudience):
            other = {**claims, "aud": "https://elsewhere/fhir"}
            tokens.validate(
                jwt.encode({"alg": "RS256", "kid": key.kid}, other, key, algorithms=["RS256"]), URLS
            )
    finally:
        app.state.engine.dispose()


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
