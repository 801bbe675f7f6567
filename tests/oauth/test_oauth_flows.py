"""The authorization server over HTTP, on SQLite and PostgreSQL: discovery, every grant, PKCE,
refresh rotation and replay detection, revocation, introspection, consent, user info."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from authlib.oidc.discovery import OpenIDProviderMetadata
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import KeySet
from oauth_helpers import (
    BASE,
    REDIRECT,
    SMART_APP,
    TOKEN_URL,
    URLS,
    authorize,
    backend_token,
    client_assertion,
    code_params,
    demo_token,
    exchange,
    get_code,
    login,
    pkce,
    redirect_params,
    refresh,
    register,
    rsa_key,
    tokens_for_patient,
)

from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.access.tokens import TokenInvalid, TokenRevoked
from sharedcare.oauth.clients import ClientKind, OAuthClient, ensure_demo_client, new_secret
from sharedcare.oauth.keys import session_secret
from sharedcare.oauth.revocation import purge_expired
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer


def validate(client: TestClient, token: str) -> Principal:
    principal: Principal = client.app.state.tokens.validate(token, URLS)  # type: ignore[attr-defined]
    return principal


# --- discovery -------------------------------------------------------------------------------


def test_discovery_documents(client: TestClient) -> None:
    oidc = client.get("/.well-known/openid-configuration").json()
    OpenIDProviderMetadata(oidc).validate()
    assert oidc["issuer"] == BASE
    assert oidc["token_endpoint"] == TOKEN_URL
    assert "private_key_jwt" in oidc["token_endpoint_auth_methods_supported"]

    smart = client.get("/fhir/.well-known/smart-configuration")
    assert smart.status_code == 200
    doc = smart.json()
    assert doc["issuer"] == BASE
    assert doc["jwks_uri"] == f"{BASE}/auth/jwks"
    assert doc["authorization_endpoint"] == f"{BASE}/auth/authorize"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert set(doc["grant_types_supported"]) == {"authorization_code", "client_credentials", "refresh_token"}
    assert {
        "launch-standalone",
        "client-confidential-asymmetric",
        "permission-v2",
        "sso-openid-connect",
    } <= set(doc["capabilities"])
    assert "launch-ehr" not in doc["capabilities"]  # not built: not advertised
    assert client.get("/.well-known/oauth-authorization-server").json()["revocation_endpoint"] == (
        f"{BASE}/auth/revoke"
    )

    jwks = client.get("/auth/jwks").json()
    [key] = jwks["keys"]
    assert key["kty"] == "RSA" and key["kid"] and "d" not in key and "p" not in key


def test_key_rotation_keeps_old_tokens_valid(client: TestClient, demo_secret: str) -> None:
    old = demo_token(client, demo_secret).json()["access_token"]
    new_kid = client.app.state.oauth_keys.rotate()  # type: ignore[attr-defined]
    kids = {k["kid"] for k in client.get("/auth/jwks").json()["keys"]}
    assert len(kids) == 2 and new_kid in kids
    assert validate(client, old).subject == "demo-system"
    fresh = demo_token(client, demo_secret).json()["access_token"]
    assert jwt.decode(fresh, KeySet.import_key_set(client.get("/auth/jwks").json())).header["kid"] == new_kid


# --- client credentials ----------------------------------------------------------------------


def test_demo_system_client_secret_basic(client: TestClient, demo_secret: str) -> None:
    response = demo_token(client, demo_secret)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "system/*.*"
    assert body["expires_in"] == 900
    assert "refresh_token" not in body and "id_token" not in body
    principal = validate(client, body["access_token"])
    assert principal.kind == PrincipalKind.SYSTEM
    assert principal.subject == principal.client_id == "demo-system"
    assert principal.trusted
    assert principal.scopes == frozenset({"system/*.*"})

    claims = jwt.decode(body["access_token"], KeySet.import_key_set(client.get("/auth/jwks").json())).claims
    assert claims["iss"] == BASE and claims["aud"] == URLS.fhir_base
    assert claims["exp"] - claims["iat"] == 900 and claims["jti"]

    wrong = demo_token(client, "not-the-secret")
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client"


def test_demo_client_scopes_are_narrowed_not_widened(client: TestClient, demo_secret: str) -> None:
    narrowed = demo_token(client, demo_secret, "system/Observation.rs patient/*.read openid launch/patient")
    assert narrowed.status_code == 200
    assert narrowed.json()["scope"] == "system/Observation.rs"
    refused = demo_token(client, demo_secret, "user/*.read")
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_scope"
    default = client.post(
        "/auth/token", auth=("demo-system", demo_secret), data={"grant_type": "client_credentials"}
    )
    assert default.json()["scope"] == "system/*.*"  # no scope asked: the client's own


def test_demo_client_configured_secret(client: TestClient, settings: Settings) -> None:
    configured = settings.model_copy(update={"demo_client_secret": "s3cret-from-env"})
    with writer(client.app.state.engine).begin() as conn:  # type: ignore[attr-defined]
        assert ensure_demo_client(conn, configured) is None
        assert ensure_demo_client(conn, configured) is None  # idempotent
    assert demo_token(client, "s3cret-from-env").status_code == 200


def test_unsupported_grant_and_missing_client(client: TestClient) -> None:
    response = client.post("/auth/token", data={"grant_type": "password", "username": "a", "password": "b"})
    assert response.json()["error"] == "unsupported_grant_type"
    response = client.post("/auth/token", data={"grant_type": "client_credentials"})
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


def _backend_client(client: TestClient, key_set: KeySet) -> OAuthClient:
    backend = OAuthClient(
        client_id="lab-system",
        name="Laboratoire Central",
        kind=ClientKind.SYSTEM,
        token_endpoint_auth_method="private_key_jwt",
        grant_types=("client_credentials",),
        scope="system/Observation.cruds system/DiagnosticReport.cruds system/Patient.rs",
        jwks=key_set.as_dict(private=False),
        organization_id="org-lab",
    )
    register(client, backend)
    return backend


def test_private_key_jwt_backend_services(client: TestClient) -> None:
    key = rsa_key()
    _backend_client(client, KeySet([key]))
    assertion = client_assertion(key, "lab-system")
    response = backend_token(client, assertion, scope="system/Observation.rs system/Patient.read")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scope"] == "system/Observation.rs system/Patient.read"
    principal = validate(client, body["access_token"])
    assert principal.kind == PrincipalKind.SYSTEM and principal.subject == "lab-system"
    assert principal.organization_id == "org-lab" and not principal.trusted

    replay = backend_token(client, assertion)
    assert replay.status_code in (400, 401) and replay.json()["error"] == "invalid_client"

    elsewhere = backend_token(client, client_assertion(key, "lab-system", aud="https://other.example/token"))
    assert elsewhere.json()["error"] == "invalid_client"

    forged = backend_token(client, client_assertion(rsa_key(kid=key.kid), "lab-system"))
    assert forged.json()["error"] == "invalid_client"

    too_long = backend_token(client, client_assertion(key, "lab-system", lifetime=3600))
    assert too_long.json()["error"] == "invalid_client"

    es_ok = backend_token(client, client_assertion(key, "lab-system", alg="RS256"))
    assert es_ok.status_code == 200


def test_private_key_jwt_client_cannot_use_a_secret(client: TestClient) -> None:
    _backend_client(client, KeySet([rsa_key()]))
    response = client.post(
        "/auth/token", auth=("lab-system", "guess"), data={"grant_type": "client_credentials"}
    )
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


# --- authorization code + PKCE ---------------------------------------------------------------


def test_code_flow_with_launch_patient(client: TestClient, patient_session: Principal) -> None:
    verifier, challenge = pkce()
    code = get_code(client, challenge, nonce="n-0S6")
    response = exchange(client, code, verifier)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["patient"] == "pat-1"
    assert set(body["scope"].split()) == {
        "launch/patient",
        "openid",
        "fhirUser",
        "offline_access",
        "patient/*.rs",
    }
    assert body["refresh_token"]

    principal = validate(client, body["access_token"])
    assert principal.kind == PrincipalKind.PATIENT
    assert principal.subject == "acc-pat-1" and principal.patient_id == "pat-1"
    assert principal.launch_patient == "pat-1" and principal.client_id == "smart-app"

    keys = KeySet.import_key_set(client.get("/auth/jwks").json())
    id_token = jwt.decode(body["id_token"], keys).claims
    assert id_token["iss"] == BASE and id_token["aud"] == ["smart-app"]
    assert id_token["sub"] == "acc-pat-1" and id_token["nonce"] == "n-0S6"
    assert id_token["fhirUser"] == f"{URLS.fhir_base}/Patient/pat-1"
    # an ID token is not an access token
    with pytest.raises(TokenInvalid, match="Not an access token"):
        validate(client, body["id_token"])


def test_code_flow_for_a_professional_drops_launch_patient(client: TestClient) -> None:
    register(client, SMART_APP)
    login(client, Principal(kind=PrincipalKind.PROFESSIONAL, subject="acc-gp", practitioner_id="prac-7"))
    body = tokens_for_patient(client, scope="launch/patient user/*.rs openid fhirUser")
    assert "patient" not in body  # no patient picker yet: the server grants less, as SMART allows
    assert body["scope"] == "user/*.rs openid fhirUser"
    assert "refresh_token" not in body  # no offline_access asked
    assert validate(client, body["access_token"]).practitioner_id == "prac-7"


def test_user_must_log_in_first(client: TestClient) -> None:
    register(client, SMART_APP)
    login(client, None)
    _, challenge = pkce()
    params = code_params(challenge)
    response = authorize(client, **params)
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert location.path == "/portal/login"
    back = unquote(parse_qs(location.query)["next"][0])
    assert back.startswith("/auth/authorize?")
    assert {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()} == params


def test_unknown_client_or_redirect_is_not_redirected(client: TestClient, patient_session: Principal) -> None:
    _, challenge = pkce()
    unknown = authorize(client, **code_params(challenge, client_id="nobody"))
    assert unknown.status_code == 400 and "location" not in unknown.headers
    elsewhere = authorize(client, **code_params(challenge, redirect_uri="https://evil.example/cb"))
    assert elsewhere.status_code == 400 and "location" not in elsewhere.headers


def test_pkce_s256_is_required(client: TestClient, patient_session: Principal) -> None:
    missing = code_params("")
    del missing["code_challenge"], missing["code_challenge_method"]
    assert redirect_params(authorize(client, **missing))["error"] == "invalid_request"
    verifier, _ = pkce()
    plain = code_params(verifier, code_challenge_method="plain")
    assert redirect_params(authorize(client, **plain))["error"] == "invalid_request"


def test_wrong_audience_parameter(client: TestClient, patient_session: Principal) -> None:
    _, challenge = pkce()
    got = redirect_params(authorize(client, **code_params(challenge, aud="https://other.example/fhir")))
    assert got["error"] == "invalid_request" and got["state"]


def test_wrong_or_missing_code_verifier(client: TestClient, patient_session: Principal) -> None:
    verifier, challenge = pkce()
    code = get_code(client, challenge)
    wrong = exchange(client, code, pkce()[0])
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    missing = exchange(client, code, None)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"
    # failed attempts do not consume the code: the client holding the verifier still gets its token
    assert exchange(client, code, verifier).status_code == 200


def test_code_reuse_refused_and_revokes_what_it_gave(client: TestClient, patient_session: Principal) -> None:
    verifier, challenge = pkce()
    code = get_code(client, challenge)
    first = exchange(client, code, verifier)
    assert first.status_code == 200
    again = exchange(client, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    with pytest.raises(TokenRevoked):
        validate(client, first.json()["access_token"])
    assert refresh(client, first.json()["refresh_token"]).json()["error"] == "invalid_grant"


def test_expired_code_refused(client: TestClient, patient_session: Principal) -> None:
    from sqlalchemy import update

    from sharedcare.oauth.models import oauth_code

    verifier, challenge = pkce()
    code = get_code(client, challenge)
    with writer(client.app.state.engine).begin() as conn:  # type: ignore[attr-defined]
        conn.execute(update(oauth_code).values(expires_at=oauth_code.c.auth_time))
    assert exchange(client, code, verifier).json()["error"] == "invalid_grant"


def test_code_of_another_client_refused(client: TestClient, patient_session: Principal) -> None:
    register(
        client,
        OAuthClient(
            client_id="other-app",
            name="Other",
            kind=ClientKind.PUBLIC,
            token_endpoint_auth_method="none",
            grant_types=("authorization_code",),
            scope="patient/*.rs",
            redirect_uris=(REDIRECT,),
        ),
    )
    verifier, challenge = pkce()
    code = get_code(client, challenge)
    assert exchange(client, code, verifier, client_id="other-app").json()["error"] == "invalid_grant"


# --- refresh tokens --------------------------------------------------------------------------


def test_refresh_rotation_and_reuse_detection(client: TestClient, patient_session: Principal) -> None:
    first = tokens_for_patient(client)
    second = refresh(client, first["refresh_token"])
    assert second.status_code == 200, second.text
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    assert rotated["patient"] == "pat-1"
    assert rotated["access_token"] != first["access_token"]
    assert validate(client, rotated["access_token"]).launch_patient == "pat-1"

    narrower = refresh(client, rotated["refresh_token"]).json()
    reuse = refresh(client, first["refresh_token"])  # a rotated token comes back: stolen
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    # the whole family is gone, with the access tokens issued alongside
    assert refresh(client, narrower["refresh_token"]).json()["error"] == "invalid_grant"
    with pytest.raises(TokenRevoked):
        validate(client, narrower["access_token"])


def test_refresh_may_narrow_but_not_widen(client: TestClient, patient_session: Principal) -> None:
    first = tokens_for_patient(client)
    data = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"], "client_id": "smart-app"}
    wider = client.post("/auth/token", data={**data, "scope": "patient/*.cruds"})
    assert wider.json()["error"] == "invalid_scope"
    narrow = client.post("/auth/token", data={**data, "scope": "patient/*.rs offline_access"})
    assert narrow.status_code == 200 and narrow.json()["scope"] == "patient/*.rs offline_access"
    assert "patient" not in narrow.json()


def test_refresh_refused_once_the_account_is_unusable(client: TestClient, patient_session: Principal) -> None:
    first = tokens_for_patient(client)
    client.app.state.oauth.resolve_account = lambda _conn, _account_id: None  # type: ignore[attr-defined]
    refused = refresh(client, first["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"


def test_refresh_of_another_client_refused(client: TestClient, patient_session: Principal) -> None:
    first = tokens_for_patient(client)
    register(client, replace(SMART_APP, client_id="copycat"))
    assert refresh(client, first["refresh_token"], client_id="copycat").json()["error"] == "invalid_grant"


# --- revocation and introspection ------------------------------------------------------------


def test_revoke_access_token(client: TestClient, patient_session: Principal, demo_secret: str) -> None:
    body = tokens_for_patient(client)
    assert validate(client, body["access_token"]).subject == "acc-pat-1"
    revoked = client.post("/auth/revoke", data={"token": body["access_token"], "client_id": "smart-app"})
    assert revoked.status_code == 200
    with pytest.raises(TokenRevoked):
        validate(client, body["access_token"])
    seen = client.post(
        "/auth/introspect", auth=("demo-system", demo_secret), data={"token": body["access_token"]}
    )
    assert seen.json() == {"active": False}
    # the refresh token was not revoked with it
    assert refresh(client, body["refresh_token"]).status_code == 200


def test_revoke_refresh_token(client: TestClient, patient_session: Principal) -> None:
    body = tokens_for_patient(client)
    data = {"token": body["refresh_token"], "token_type_hint": "refresh_token", "client_id": "smart-app"}
    assert client.post("/auth/revoke", data=data).status_code == 200
    assert refresh(client, body["refresh_token"]).json()["error"] == "invalid_grant"
    with pytest.raises(TokenRevoked):  # and the access token issued with it
        validate(client, body["access_token"])


def test_revoke_system_token_and_unknown_token(client: TestClient, demo_secret: str) -> None:
    token = demo_token(client, demo_secret).json()["access_token"]
    auth = ("demo-system", demo_secret)
    assert client.post("/auth/revoke", auth=auth, data={"token": token}).status_code == 200
    with pytest.raises(TokenRevoked):
        validate(client, token)
    assert client.post("/auth/revoke", auth=auth, data={"token": "no-such-token"}).status_code == 200
    assert client.post("/auth/revoke", data={"token": token}).json()["error"] == "invalid_client"


def test_introspection(client: TestClient, patient_session: Principal, demo_secret: str) -> None:
    body = tokens_for_patient(client)
    auth = ("demo-system", demo_secret)
    active = client.post("/auth/introspect", auth=auth, data={"token": body["access_token"]}).json()
    assert active["active"] is True
    assert active["client_id"] == "smart-app" and active["sub"] == "acc-pat-1"
    assert active["patient"] == "pat-1" and "patient/*.rs" in active["scope"].split()
    assert active["exp"] > time.time() and active["token_type"] == "Bearer"

    rt = client.post(
        "/auth/introspect",
        auth=auth,
        data={"token": body["refresh_token"], "token_type_hint": "refresh_token"},
    ).json()
    assert rt["active"] is True and rt["token_type"] == "refresh_token"

    assert client.post("/auth/introspect", auth=auth, data={"token": "garbage"}).json() == {"active": False}

    # public clients cannot introspect; a confidential client only sees its own tokens
    public = client.post("/auth/introspect", data={"token": body["access_token"], "client_id": "smart-app"})
    assert public.status_code in (400, 401) and public.json()["error"] == "invalid_client"
    key = rsa_key()
    _backend_client(client, KeySet([key]))
    assertion = client_assertion(key, "lab-system", aud=f"{BASE}/auth/introspect")
    foreign = client.post(
        "/auth/introspect",
        data={
            "token": body["access_token"],
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        },
    )
    assert foreign.status_code == 200 and foreign.json() == {"active": False}


# --- consent, user info, transport -----------------------------------------------------------


def test_consent_step_for_third_party_apps(client: TestClient) -> None:
    register(client, replace(SMART_APP, trusted=False, name="Third <App>"))
    login(client, Principal(kind=PrincipalKind.PATIENT, subject="acc-pat-1", patient_id="pat-1"))
    verifier, challenge = pkce()
    params = code_params(challenge)
    page = authorize(client, **params)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Third &lt;App&gt;" in page.text and "read, search all data of the patient in context" in page.text
    csrf = page.text.split('name="csrf" value="')[1].split('"')[0]

    forged = client.post("/auth/authorize", data={**params, "decision": "approve", "csrf": "x"})
    assert forged.status_code == 400

    denied = client.post(
        "/auth/authorize", data={**params, "decision": "deny", "csrf": csrf}, follow_redirects=False
    )
    assert redirect_params(denied)["error"] == "access_denied"

    approved = client.post(
        "/auth/authorize", data={**params, "decision": "approve", "csrf": csrf}, follow_redirects=False
    )
    code = redirect_params(approved)["code"]
    assert exchange(client, code, verifier).json()["patient"] == "pat-1"

    silent = redirect_params(authorize(client, **code_params(challenge, prompt="none")))
    assert silent["error"] == "consent_required"


def test_userinfo(client: TestClient, patient_session: Principal, demo_secret: str) -> None:
    body = tokens_for_patient(client)
    info = client.get("/auth/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert info.json() == {"sub": "acc-pat-1", "fhirUser": f"{URLS.fhir_base}/Patient/pat-1"}

    system = demo_token(client, demo_secret).json()["access_token"]
    refused = client.get("/auth/userinfo", headers={"Authorization": f"Bearer {system}"})
    assert refused.status_code == 403
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]

    bad = client.get("/auth/userinfo", headers={"Authorization": "Bearer abc.def.ghi"})
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["www-authenticate"]
    client.headers.pop("Authorization", None)
    assert client.get("/auth/userinfo").status_code == 401


def test_plain_http_refused_unless_allowed(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTHLIB_INSECURE_TRANSPORT")
    response = client.post("/auth/token", data={"grant_type": "client_credentials"})
    assert response.status_code == 400 and response.json()["error"] == "insecure_transport"


def test_session_secret_generated_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first = session_secret(settings)
    assert len(first) > 40 and session_secret(settings) == first
    assert (tmp_path / "data" / "secret.key").stat().st_mode & 0o777 == 0o600
    assert session_secret(Settings(data_dir=tmp_path, secret_key="fixed")) == "fixed"
    assert new_secret() != new_secret()


# --- races and housekeeping ------------------------------------------------------------------


def test_concurrent_refresh_with_one_token(client: TestClient, patient_session: Principal) -> None:
    first = tokens_for_patient(client)
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: refresh(client, first["refresh_token"]), range(6)))
    winners = [a for a in answers if a.status_code == 200]
    assert len(winners) == 1
    assert all(a.json()["error"] == "invalid_grant" for a in answers if a.status_code != 200)
    for winner in winners:  # the others were replays: the family is revoked, the winner's token too
        assert refresh(client, winner.json()["refresh_token"]).json()["error"] == "invalid_grant"


def test_concurrent_code_exchange(client: TestClient, patient_session: Principal) -> None:
    verifier, challenge = pkce()
    code = get_code(client, challenge)
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: exchange(client, code, verifier), range(6)))
    assert [a.status_code for a in answers].count(200) == 1
    [winner] = [a.json() for a in answers if a.status_code == 200]
    with pytest.raises(TokenRevoked):
        validate(client, winner["access_token"])


def test_purge_expired(client: TestClient, patient_session: Principal, demo_secret: str) -> None:
    body = tokens_for_patient(client)
    client.post("/auth/revoke", data={"token": body["access_token"], "client_id": "smart-app"})
    later = datetime.now(UTC).replace(tzinfo=None) + timedelta(days=400)
    with writer(client.app.state.engine).begin() as conn:  # type: ignore[attr-defined]
        assert purge_expired(conn) == 0
        assert purge_expired(conn, now=later) == 3  # the revocation, the refresh token, the code
