"""Portal sessions kept on the server: sign-out, idle and absolute ends, "sign out everywhere
else", password change, agency lock and revocation, and the online_access grants that end with
the session. Over HTTP through the real app, on both databases; the portal's clock is moved with
a dependency override of ``portal.deps.now``."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from portal_http import post, sign_in
from portal_world import PASSWORD, World
from sqlalchemy import select, update
from typer.testing import CliRunner

from sharedcare.access.tokens import TokenRevoked
from sharedcare.audit import log as audit
from sharedcare.cli import app as cli_app
from sharedcare.fhir.store import utcnow
from sharedcare.identity import accounts, sessions
from sharedcare.identity.models import AccountStatus, login_session
from sharedcare.oauth.clients import ClientKind, OAuthClient, save_client
from sharedcare.oauth.urls import PublicUrls
from sharedcare.portal import deps
from sharedcare.settings import get_settings
from sharedcare.storage.engine import writer

Browser = Callable[[], TestClient]
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
REDIRECT = "https://app.example/callback"
URLS = PublicUrls(issuer="http://testserver", fhir_base="http://testserver/fhir")


def _copy(browser: Browser, signed_in: TestClient) -> TestClient:
    """Another browser holding a copy of ``signed_in``'s session cookie (a stolen cookie)."""
    thief = browser()
    thief.cookies.set("sharedcare_session", signed_in.cookies["sharedcare_session"])
    return thief


def _token(client: TestClient) -> str:
    """The sign-in session's token in the (signed, readable) session cookie."""
    payload = client.cookies["sharedcare_session"].split(".", 1)[0]
    token: str = json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4)))["sid"]
    return token


def _signed_out(client: TestClient, page: str = "/portal/home") -> bool:
    resp = client.get(page)
    return resp.status_code == 303 and resp.headers["location"].startswith("/portal/login")


def _rows(world: World) -> list[Any]:
    with world.engine.connect() as conn:
        return list(conn.execute(select(login_session).order_by(login_session.c.created)).all())


def _clock(world: World, moment: datetime) -> None:
    world.app.dependency_overrides[deps.now] = lambda: moment


@pytest.fixture(autouse=True)
def real_clock(world: World) -> Iterator[None]:
    yield
    world.app.dependency_overrides.clear()


def test_copied_cookie_is_useless_after_sign_out(world: World, browser: Browser, session_app: None) -> None:
    c = browser()
    sign_in(c, world.patient)
    thief = _copy(browser, c)
    assert thief.get("/portal/home").status_code == 200  # a copied cookie works while the session lives
    params, _verifier = _code_request("launch/patient patient/*.rs")
    assert thief.get("/auth/authorize", params=params).headers["location"].startswith(REDIRECT)
    assert post(c, "/portal/logout", {}, "/portal/home").headers["location"] == "/portal/login"
    assert _signed_out(thief)
    assert "Your session has ended" in thief.get("/portal/login").text
    # the OAuth authorization endpoint does not take it either: it asks for a sign-in
    again = thief.get("/auth/authorize", params=params)
    assert again.status_code == 303 and again.headers["location"].startswith("/portal/login?next=")
    [row] = _rows(world)
    assert row.revoked_at is not None and row.revoked_reason == "sign-out"


def test_the_cookie_holds_a_random_token_the_table_only_its_hash(world: World, browser: Browser) -> None:
    c = browser()
    c.headers["user-agent"] = FIREFOX
    sign_in(c, world.patient)
    token = _token(c)
    assert len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) == 32  # 256 bits
    [row] = _rows(world)
    assert row.id == sessions.key_of(token) and token not in str(tuple(row))
    assert row.account_id == world.patient.account_id and row.user_agent == "Firefox on Linux"
    assert row.expires - row.created == timedelta(hours=world.settings.session_hours)
    page = c.get("/portal/account")
    assert page.status_code == 200 and "Firefox on Linux" in page.text and "This session" in page.text


def test_idle_sessions_end_and_activity_keeps_them(world: World, browser: Browser) -> None:
    c = browser()
    sign_in(c, world.gp)
    start = utcnow()
    idle = timedelta(minutes=world.settings.session_idle_minutes)
    _clock(world, start + idle - timedelta(minutes=2))
    assert c.get("/portal/pro").status_code == 200  # in time: last_seen moves on
    _clock(world, start + 2 * idle - timedelta(minutes=4))
    assert c.get("/portal/pro").status_code == 200
    _clock(world, start + 3 * idle)
    assert _signed_out(c, "/portal/pro")
    _clock(world, start)  # going back does not revive it: the cookie was emptied
    assert _signed_out(c, "/portal/pro")


def test_a_session_ends_after_its_lifetime_however_active(world: World, browser: Browser) -> None:
    c = browser()
    sign_in(c, world.patient)
    start = utcnow()
    step = timedelta(minutes=world.settings.session_idle_minutes - 1)
    moment = start
    while moment + step < start + timedelta(hours=world.settings.session_hours):
        moment += step
        _clock(world, moment)
        assert c.get("/portal/home").status_code == 200
    _clock(world, start + timedelta(hours=world.settings.session_hours, minutes=1))
    assert _signed_out(c)


def test_sign_out_everywhere_else(world: World, browser: Browser) -> None:
    phone, laptop = browser(), browser()
    phone.headers["user-agent"] = "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 Chrome/126.0 Mobile"
    sign_in(phone, world.patient)
    sign_in(laptop, world.patient, offset_steps=1)  # each TOTP code is accepted once
    page = laptop.get("/portal/account")
    assert page.text.count('data-label="Browser"') == 2 and "Chrome on Android" in page.text
    resp = post(laptop, "/portal/account/sessions/end-others", {}, "/portal/account")
    assert resp.status_code == 303 and resp.headers["location"] == "/portal/account"
    after = laptop.get("/portal/account")
    assert "signed out everywhere else" in after.text and "Chrome on Android" not in after.text
    assert after.text.count('data-label="Browser"') == 1
    assert _signed_out(phone)
    assert laptop.get("/portal/home").status_code == 200
    with world.engine.connect() as conn:
        [logout] = audit.query(conn, actions=[audit.AuditAction.LOGOUT])
    assert logout.record.principal_subject == world.patient.account_id
    assert logout.record.outcome_desc == "other sessions ended: 1"
    assert {r.revoked_reason for r in _rows(world)} == {"signed-out-elsewhere", None}


def test_refused_without_csrf_ends_nothing(world: World, browser: Browser) -> None:
    phone, laptop = browser(), browser()
    sign_in(phone, world.patient)
    sign_in(laptop, world.patient, offset_steps=1)
    assert laptop.post("/portal/account/sessions/end-others", data={}).status_code == 403
    assert phone.get("/portal/home").status_code == 200
    assert all(r.revoked_at is None for r in _rows(world))


def test_password_change_and_agency_lock_end_every_session(world: World, browser: Browser) -> None:
    c, other = browser(), browser()
    sign_in(c, world.patient)
    sign_in(other, world.patient, offset_steps=1)
    token = _token(c)
    with accounts.transaction(world.engine) as conn:  # the person changes it from session ``c``
        accounts.set_password(
            conn, world.settings, world.patient.account_id, PASSWORD + "!", keep_session=token
        )
    assert _signed_out(other) and c.get("/portal/home").status_code == 200

    pro = browser()
    sign_in(pro, world.gp)
    thief = _copy(browser, pro)
    with accounts.transaction(world.engine) as conn:
        accounts.set_status(conn, world.gp.account_id, AccountStatus.LOCKED)
        accounts.set_status(conn, world.gp.account_id, AccountStatus.ACTIVE)  # unlocked again...
    assert _signed_out(thief, "/portal/pro")  # ...but the sessions of before stay ended
    assert _signed_out(pro, "/portal/pro")
    reasons = {r.account_id: r.revoked_reason for r in _rows(world) if r.revoked_at is not None}
    assert reasons == {world.patient.account_id: "password-changed", world.gp.account_id: "account-locked"}


def test_agency_revokes_an_accounts_sessions_from_the_command_line(
    world: World, browser: Browser, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    c, bystander = browser(), browser()
    sign_in(c, world.gp)
    sign_in(bystander, world.patient)
    monkeypatch.setenv("SHAREDCARE_DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        unknown = CliRunner().invoke(cli_app, ["accounts", "revoke-sessions", "nobody.here"])
        assert unknown.exit_code == 1
        done = CliRunner().invoke(cli_app, ["accounts", "revoke-sessions", world.gp.login])
        assert done.exit_code == 0, done.output
        assert f"1 sessions of account {world.gp.account_id} ended" in done.output
    finally:
        get_settings.cache_clear()
    assert _signed_out(c, "/portal/pro")
    assert bystander.get("/portal/home").status_code == 200
    with world.engine.connect() as conn:
        [record] = audit.query(conn, actions=[audit.AuditAction.LOGOUT])
    assert record.record.principal_kind == "admin" and record.record.interaction == "revoke-sessions"
    assert record.record.outcome_desc == f"account {world.gp.account_id}: 1 sessions ended"


# --- OAuth grants given during a session ----------------------------------------------------------


def _code_request(scope: str) -> tuple[dict[str, str], str]:
    """Authorization request parameters of the trusted SMART app, and the PKCE verifier."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    params = {
        "response_type": "code",
        "client_id": "session-app",
        "redirect_uri": REDIRECT,
        "scope": scope,
        "state": "s",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "aud": URLS.fhir_base,
    }
    return params, verifier


def _authorize(c: TestClient, scope: str) -> dict[str, Any]:
    """Run the code flow of the trusted SMART app for the signed-in user; the token response."""
    params, verifier = _code_request(scope)
    resp = c.get("/auth/authorize", params=params)
    assert resp.status_code == 302 and resp.headers["location"].startswith(REDIRECT), resp.text[:300]
    code = parse_qs(urlsplit(resp.headers["location"]).query)["code"][0]
    token = c.post(
        "/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": "session-app",
            "code_verifier": verifier,
        },
    )
    assert token.status_code == 200, token.text
    body: dict[str, Any] = token.json()
    return body


def _refresh(c: TestClient, refresh_token: str) -> Any:
    return c.post(
        "/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": "session-app"},
    )


@pytest.fixture
def session_app(world: World) -> None:
    app_client = OAuthClient(
        client_id="session-app",
        name="Session app",
        kind=ClientKind.PUBLIC,
        token_endpoint_auth_method="none",
        grant_types=("authorization_code", "refresh_token"),
        scope="openid launch/patient online_access offline_access patient/*.rs",
        redirect_uris=(REDIRECT,),
        trusted=True,
    )
    with writer(world.engine).begin() as conn:
        save_client(conn, app_client)


def test_online_access_ends_with_the_session_offline_access_does_not(
    world: World, browser: Browser, session_app: None
) -> None:
    c = browser()
    sign_in(c, world.patient)
    online = _authorize(c, "launch/patient patient/*.rs online_access")
    offline = _authorize(c, "launch/patient patient/*.rs offline_access")
    rotated = _refresh(c, online["refresh_token"])
    assert rotated.status_code == 200  # while the session lives, the online grant refreshes
    online_access = rotated.json()["access_token"]
    post(c, "/portal/logout", {}, "/portal/home")
    refused = _refresh(c, rotated.json()["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    with pytest.raises(TokenRevoked):  # the access token issued with it is revoked too
        world.app.state.tokens.validate(online_access, URLS)
    assert _refresh(c, offline["refresh_token"]).status_code == 200


def test_online_access_ends_when_the_session_goes_idle(
    world: World, browser: Browser, session_app: None
) -> None:
    c = browser()
    sign_in(c, world.patient)
    online = _authorize(c, "launch/patient patient/*.rs online_access")
    idle = timedelta(minutes=world.settings.session_idle_minutes + 1)
    with writer(world.engine).begin() as conn:  # nobody used the portal for longer than allowed
        conn.execute(update(login_session).values(last_seen=utcnow() - idle))
    refused = _refresh(c, online["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert _signed_out(c)  # the portal agrees: the session is over
