"""Activation, sign-in with the second factor, lockouts, sign-out: over HTTP, on both databases."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable

import pyotp
from fastapi.testclient import TestClient
from portal_http import post, sign_in, token
from portal_world import MATRICULE_NEW, PASSWORD, World, build_world
from sqlalchemy import select

from sharedcare.app import create_app
from sharedcare.audit import log as audit
from sharedcare.audit.models import audit_log
from sharedcare.identity import accounts, sessions
from sharedcare.identity.models import AccountStatus
from sharedcare.oauth.clients import ClientKind, OAuthClient, save_client
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer
from support import truncate

Browser = Callable[[], TestClient]


def _logins(world: World) -> list[audit.AuditEntry]:
    with world.engine.connect() as conn:
        return audit.query(conn, actions=[audit.AuditAction.LOGIN, audit.AuditAction.LOGOUT], limit=100)


def test_activation_password_and_authenticator_then_sign_in(world: World, browser: Browser) -> None:
    c = browser()
    page = c.get("/portal/activate")
    assert page.status_code == 200 and 'for="code"' in page.text
    resp = post(
        c,
        "/portal/activate",
        {"code": "AAAA-BBBB-CCCC", "login": MATRICULE_NEW, "contact": "n@example.org"},
        "/portal/activate",
    )
    assert resp.status_code == 400 and "activation code does not match" in resp.text
    data = {"code": world.pending_code.lower(), "login": MATRICULE_NEW, "contact": "nora@example.org"}
    resp = post(c, "/portal/activate", data, "/portal/activate")
    assert resp.status_code == 303 and resp.headers["location"] == "/portal/activate/password"

    weak = post(
        c,
        "/portal/activate/password",
        {"password": "short", "confirmation": "short"},
        "/portal/activate/password",
    )
    assert weak.status_code == 400 and "too short" in weak.text
    mismatch = {"password": PASSWORD, "confirmation": PASSWORD + "x"}
    assert post(c, "/portal/activate/password", mismatch, "/portal/activate/password").status_code == 400
    ok = post(
        c,
        "/portal/activate/password",
        {"password": PASSWORD, "confirmation": PASSWORD},
        "/portal/activate/password",
    )
    assert ok.status_code == 303 and ok.headers["location"] == "/portal/activate/app"

    enrol = c.get("/portal/activate/app")
    assert enrol.status_code == 200 and "<svg" in enrol.text
    secret = re.search(r'id="totp-secret">([A-Z2-7 ]+)<', enrol.text).group(1).replace(" ", "")  # type: ignore[union-attr]
    wrong = post(c, "/portal/activate/app", {"code": "000000"}, "/portal/login")  # GET app: a new key
    assert wrong.status_code == 400
    # the wrong code re-showed the form without a new key: the same secret still confirms
    resp = c.post(
        "/portal/activate/app", data={"csrf": token(c, "/portal/login"), "code": pyotp.TOTP(secret).now()}
    )
    assert resp.status_code == 303 and resp.headers["location"] == "/portal/login"
    with world.engine.connect() as conn:
        account = accounts.find_by_login(conn, MATRICULE_NEW)
    assert (
        account is not None and account.status is AccountStatus.ACTIVE and account.email == "nora@example.org"
    )

    login = post(c, "/portal/login", {"login": MATRICULE_NEW, "password": PASSWORD}, "/portal/login")
    assert login.headers["location"] == "/portal/login/code"
    code = pyotp.TOTP(secret).at(time.time() + 30)  # the confirming code's step is used up
    done = post(c, "/portal/login/code", {"code": code}, "/portal/login/code")
    assert done.status_code == 303 and done.headers["location"] == "/portal/"
    assert c.get("/portal/home").status_code == 200


def test_sign_in_records_the_login_and_the_session_serves_oauth(world: World, browser: Browser) -> None:
    c = browser()
    sign_in(c, world.patient)
    home = c.get("/portal/")
    assert home.status_code == 303 and home.headers["location"] == "/portal/home"
    assert "Marie Muller" in c.get("/portal/home").text
    entries = _logins(world)
    assert [(e.record.action, e.record.principal_subject, e.record.outcome) for e in entries] == [
        (audit.AuditAction.LOGIN, world.patient.account_id, audit.AuditOutcome.SUCCESS)
    ]
    # the OAuth authorize endpoint reads the sign-in session's token (``sid``) from this (signed,
    # not encrypted) cookie; the session itself, and the account, are on the server
    payload = c.cookies["sharedcare_session"].split(".", 1)[0]
    session = json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4)))
    with world.engine.connect() as conn:
        found = sessions.resume(conn, world.settings, session["sid"])
    assert found is not None and found.account_id == world.patient.account_id
    assert set(session) <= {"sid", "csrf", "flash", "record"}


def test_wrong_password_and_lockout_are_readable_and_audited(world: World, browser: Browser) -> None:
    c = browser()
    limit = world.settings.max_failed_attempts
    for attempt in range(limit):
        resp = post(
            c, "/portal/login", {"login": world.patient.login, "password": "wrong password!"}, "/portal/login"
        )
        if attempt < limit - 1:
            assert resp.status_code == 400 and "login or the password is wrong" in resp.text
    assert resp.status_code == 429
    assert int(resp.headers["retry-after"]) > 0
    assert re.search(r"Try again in \d+ minutes, at \d", resp.text)
    # locked: even the right password is refused
    right = post(c, "/portal/login", {"login": world.patient.login, "password": PASSWORD}, "/portal/login")
    assert right.status_code == 429
    failures = [e for e in _logins(world) if e.record.outcome == audit.AuditOutcome.MINOR_FAILURE]
    assert len(failures) == limit + 1
    assert {e.record.principal_subject for e in failures} == {world.patient.account_id}
    assert all(
        e.record.patient_id is None and PASSWORD not in (e.record.outcome_desc or "") for e in failures
    )


def test_unknown_login_is_audited_without_the_typed_text(world: World, browser: Browser) -> None:
    c = browser()
    resp = post(
        c, "/portal/login", {"login": "nobody.here", "password": "secret words here"}, "/portal/login"
    )
    assert resp.status_code == 400
    with world.engine.connect() as conn:
        rows = list(conn.execute(select(audit_log).where(audit_log.c.principal_kind == "unknown")))
    assert len(rows) == 1
    assert "nobody" not in str(tuple(rows[0])) and "secret" not in str(tuple(rows[0]))


def test_wrong_second_factor_then_right_one(world: World, browser: Browser) -> None:
    c = browser()
    post(c, "/portal/login", {"login": world.gp.login, "password": PASSWORD}, "/portal/login")
    wrong = post(c, "/portal/login/code", {"code": "123456"}, "/portal/login/code")
    assert wrong.status_code == 400 and "code is not right" in wrong.text
    ok = post(c, "/portal/login/code", {"code": world.gp.code()}, "/portal/login/code")
    assert ok.headers["location"] == "/portal/"
    assert c.get("/portal/").headers["location"] == "/portal/pro"


def test_second_factor_page_needs_a_verified_password(browser: Browser) -> None:
    c = browser()
    resp = c.get("/portal/login/code")
    assert resp.status_code == 303 and resp.headers["location"] == "/portal/login"


def test_next_accepts_only_paths_of_this_site(world: World, browser: Browser) -> None:
    c = browser()
    done = sign_in(c, world.patient, next_path="/auth/authorize?client_id=x&state=y")
    assert done.headers["location"] == "/auth/authorize?client_id=x&state=y"
    for evil in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)"):
        other = browser()
        page = other.get("/portal/login", params={"next": evil})
        assert evil not in page.text
    assert c.get("/portal/login", params={"next": "//evil.example"}).headers["location"] == "/portal/"


def test_enrolment_is_resumed_after_a_right_password(world: World, browser: Browser) -> None:
    with accounts.transaction(world.engine) as conn:
        account = accounts.find_by_login(conn, MATRICULE_NEW)
        assert account is not None
        accounts.activate(
            conn,
            world.settings,
            code=world.pending_code,
            matricule_or_login=MATRICULE_NEW,
            contact="n@example.org",
        )
        accounts.set_password(conn, world.settings, account.id, PASSWORD)
    c = browser()
    resp = post(c, "/portal/login", {"login": MATRICULE_NEW, "password": PASSWORD}, "/portal/login")
    assert resp.status_code == 303 and resp.headers["location"] == "/portal/activate/app"
    assert "<svg" in c.get("/portal/activate/app").text


def test_sign_out_ends_the_session_and_is_audited(world: World, browser: Browser) -> None:
    c = browser()
    sign_in(c, world.patient)
    resp = post(c, "/portal/logout", {}, "/portal/home")
    assert resp.status_code == 303 and resp.headers["location"] == "/portal/login"
    assert c.get("/portal/home").headers["location"].startswith("/portal/login?next=")
    actions = [e.record.action for e in _logins(world)]
    assert actions == [audit.AuditAction.LOGOUT, audit.AuditAction.LOGIN]


def test_post_without_csrf_token_is_refused_and_counts_nothing(world: World, browser: Browser) -> None:
    c = browser()
    token(c)  # the session exists, the form field is missing
    resp = c.post("/portal/login", data={"login": world.patient.login, "password": "wrong"})
    assert resp.status_code == 403 and "form has expired" in resp.text
    forged = c.post(
        "/portal/login", data={"login": world.patient.login, "password": "x", "csrf": "forged" * 8}
    )
    assert forged.status_code == 403
    cross = c.post(
        "/portal/login",
        data={"csrf": token(c), "login": world.patient.login, "password": "x"},
        headers={"Origin": "https://evil.example"},
    )
    assert cross.status_code == 403
    with world.engine.connect() as conn:
        account = accounts.get_account(conn, world.patient.account_id)
    assert account.failed_attempts == 0
    assert _logins(world) == []


def test_pages_carry_security_headers(world: World, browser: Browser) -> None:
    c = browser()
    resp = c.get("/portal/login")
    assert "default-src 'none'" in resp.headers["content-security-policy"]
    assert resp.headers["x-frame-options"] == "DENY"
    assert resp.headers["cache-control"] == "no-store"
    done = sign_in(c, world.patient)
    cookies = done.headers.get_list("set-cookie")
    session = next(h for h in cookies if h.startswith("sharedcare_session="))
    assert "httponly" in session.lower() and "samesite=lax" in session.lower()
    assert any(h.startswith("sharedcare_lang=en") for h in cookies)
    css = c.get("/portal/static/portal.css")
    assert css.status_code == 200 and ":focus-visible" in css.text


def test_cookies_are_secure_when_the_site_is_public_over_https(settings: Settings) -> None:
    """Served at an https address, the session and language cookies are ``Secure`` (a browser
    then never sends them over plain http); a local http run keeps them usable."""
    public = settings.model_copy(update={"base_url": "https://portal.example.lu"})
    app = create_app(public)
    truncate(app.state.engine)
    world = build_world(app, public)
    try:
        c = TestClient(world.app, base_url="https://portal.example.lu", follow_redirects=False)
        c.cookies.set("sharedcare_lang", "en")
        done = sign_in(c, world.patient)
        cookies = done.headers.get_list("set-cookie")
        session = next(h for h in cookies if h.startswith("sharedcare_session="))
        language = next(h for h in cookies if h.startswith("sharedcare_lang="))
        assert "; secure" in session.lower() and "; secure" in language.lower()
    finally:
        world.engine.dispose()


def test_cookies_are_not_secure_on_a_local_http_run(world: World, browser: Browser) -> None:
    cookies = sign_in(browser(), world.patient).headers.get_list("set-cookie")
    assert cookies and not any("; secure" in h.lower() for h in cookies)


def test_oauth_authorization_goes_through_the_portal_login(world: World, browser: Browser) -> None:
    """A SMART app's authorization request sends the user to the portal and back, with a code."""
    app_client = OAuthClient(
        client_id="portal-test-app",
        name="Health app",
        kind=ClientKind.PUBLIC,
        token_endpoint_auth_method="none",
        grant_types=("authorization_code",),
        scope="openid fhirUser launch/patient patient/*.rs",
        redirect_uris=("https://app.example/callback",),
        trusted=True,
    )
    with writer(world.engine).begin() as conn:
        save_client(conn, app_client)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    params = {
        "response_type": "code",
        "client_id": "portal-test-app",
        "redirect_uri": "https://app.example/callback",
        "scope": "openid launch/patient patient/*.rs",
        "state": "s-123",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "aud": "http://testserver/fhir",
    }
    c = browser()
    first = c.get("/auth/authorize", params=params)
    assert first.status_code == 303 and first.headers["location"].startswith("/portal/login?next=")
    login_page = c.get(first.headers["location"])
    nexts = re.findall(r'name="next" value="([^"]+)"', login_page.text)  # the language form has one too
    back = nexts[-1].replace("&amp;", "&")
    assert nexts[0].startswith("/portal/login?next=%2Fauth%2Fauthorize")  # switching language keeps it
    assert back.startswith("/auth/authorize?")
    done = sign_in(c, world.patient, next_path=back)
    assert done.headers["location"] == back
    final = c.get(back)
    assert final.status_code == 302 and final.headers["location"].startswith(
        "https://app.example/callback?code="
    )
    assert "state=s-123" in final.headers["location"]
