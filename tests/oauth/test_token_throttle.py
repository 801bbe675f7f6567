"""Failed client authentications and grants at the token endpoint are limited per client and per
source address, in the database (shared by workers, kept over restarts): through the real app,
on SQLite and PostgreSQL, with the endpoint's clock moved by a dependency override."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from joserfc.jwk import KeySet
from oauth_helpers import SMART_APP, backend_token, client_assertion, register, rsa_key
from sqlalchemy import func, select

from sharedcare.api import auth as auth_api
from sharedcare.app import create_app
from sharedcare.audit import log as audit
from sharedcare.audit.models import audit_log
from sharedcare.fhir.store import utcnow
from sharedcare.identity import throttle
from sharedcare.identity.models import attempt_throttle
from sharedcare.oauth import throttle as token_throttle
from sharedcare.oauth.clients import ClientKind, OAuthClient
from sharedcare.settings import Settings
from support import DEMO_SECRET, ensure_demo, truncate

LIMIT = 3
PER_ADDRESS = 5
LOCK = 120
HOST_A = ("10.0.0.1", 40001)
HOST_B = ("10.0.0.2", 40002)


@dataclass
class Platform:
    app: FastAPI
    settings: Settings
    start: datetime

    def client(self, host: tuple[str, int] = HOST_A) -> TestClient:
        return TestClient(self.app, client=host)

    def at(self, seconds: float) -> None:
        """Move the token endpoint's clock to ``seconds`` after the start of the test."""
        moment = self.start + timedelta(seconds=seconds)
        self.app.dependency_overrides[auth_api.request_time] = lambda: moment


@pytest.fixture
def platform(settings: Settings) -> Iterator[Platform]:
    """The app with small limits, over an emptied database holding the demo system client."""
    tuned = settings.model_copy(
        update={
            "token_max_failures": LIMIT,
            "token_max_failures_per_address": PER_ADDRESS,
            "token_lockout_seconds": LOCK,
        }
    )
    app = create_app(tuned)
    truncate(app.state.engine)
    ensure_demo(app.state.engine, tuned)
    p = Platform(app, tuned, utcnow())
    p.at(0)
    yield p
    app.state.engine.dispose()


def _demo(c: TestClient, secret: str = DEMO_SECRET, path: str = "/auth/token") -> int:
    data = {"grant_type": "client_credentials", "scope": "system/*.*"} if path == "/auth/token" else {}
    if path != "/auth/token":
        data["token"] = "not-a-token"
    return c.post(path, auth=("demo-system", secret), data=data).status_code


def _logins(p: Platform) -> list[audit.AuditEntry]:
    with p.app.state.engine.connect() as conn:
        return audit.query(conn, actions=[audit.AuditAction.LOGIN], limit=200)


def _throttle_rows(p: Platform) -> int:
    with p.app.state.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(attempt_throttle)).scalar_one())


def test_wrong_secrets_lock_the_client_with_429_and_retry_after(platform: Platform) -> None:
    a, b = platform.client(HOST_A), platform.client(HOST_B)
    for _ in range(LIMIT - 1):
        wrong = a.post(
            "/auth/token", auth=("demo-system", "guess"), data={"grant_type": "client_credentials"}
        )
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    locking = a.post("/auth/token", auth=("demo-system", "guess"), data={"grant_type": "client_credentials"})
    assert locking.status_code == 429
    assert locking.json()["error"] == "slow_down"
    assert locking.headers["retry-after"] == str(LOCK)
    assert locking.headers["cache-control"] == "no-store"

    platform.at(30)
    right = a.post(
        "/auth/token", auth=("demo-system", DEMO_SECRET), data={"grant_type": "client_credentials"}
    )
    assert right.status_code == 429  # locked: even the right secret is refused, unchecked
    assert right.headers["retry-after"] == str(LOCK - 30)
    assert _demo(b) == 429  # the lock is the client's, whatever the address

    failures = _logins(platform)
    assert len(failures) == LIMIT  # refusals while locked test nothing and leave no record
    assert {(e.record.outcome, e.record.client_id, e.record.interaction) for e in failures} == {
        (audit.AuditOutcome.MINOR_FAILURE, "demo-system", "token")
    }
    assert {e.record.source_ip for e in failures} == {HOST_A[0]}
    assert failures[0].record.outcome_desc == "invalid_client; locked"
    assert DEMO_SECRET not in str(failures) and "guess" not in str(failures)

    platform.at(LOCK + 1)
    assert _demo(b) == 200
    with platform.app.state.engine.connect() as conn:  # the success cleared the client's count
        assert throttle.counter(conn, token_throttle.CLIENT, "demo-system", utcnow()) is None


def test_successes_are_neither_counted_nor_slowed(platform: Platform) -> None:
    a = platform.client()
    for _ in range(LIMIT + 2):
        assert _demo(a) == 200
    assert _throttle_rows(platform) == 0 and _logins(platform) == []
    for _round in range(2):  # a success between failures restarts the client's count
        for _ in range(LIMIT - 1):
            assert _demo(a, "guess") == 401
        assert _demo(platform.client(HOST_B)) == 200
    with platform.app.state.engine.connect() as conn:
        assert throttle.counter(conn, token_throttle.CLIENT, "demo-system", utcnow()) is None


def test_failures_further_apart_than_the_lockout_do_not_add_up(platform: Platform) -> None:
    a = platform.client()
    for _ in range(LIMIT - 1):
        assert _demo(a, "guess") == 401
    platform.at(LOCK + 1)
    for _ in range(LIMIT - 1):
        assert _demo(a, "guess") == 401  # a new count started after the quiet period
    assert _demo(a, "guess") == 429


def test_address_limit_spans_clients_and_names_no_unknown_client(platform: Platform) -> None:
    a, b = platform.client(HOST_A), platform.client(HOST_B)
    statuses = [
        a.post(
            "/auth/token",
            auth=(f"typo-secret-{i}", "x"),
            data={"grant_type": "client_credentials"},
        ).status_code
        for i in range(PER_ADDRESS)
    ]
    assert statuses == [401] * (PER_ADDRESS - 1) + [429]
    assert _demo(a) == 429  # the address is locked for every client
    assert _demo(b) == 200  # elsewhere the client is fine: unknown ids are counted per address only
    with platform.app.state.engine.connect() as conn:
        assert throttle.counter(conn, token_throttle.CLIENT, "typo-secret-0", utcnow()) is None
        rows = [tuple(r) for r in conn.execute(select(audit_log)).all()]
    assert len(rows) == PER_ADDRESS
    assert all("typo-secret" not in str(row) for row in rows)  # a mistyped id may be a secret
    failures = _logins(platform)
    assert {(e.record.principal_kind, e.record.client_id) for e in failures} == {("unknown", None)}


def test_public_client_grant_failures_are_counted_per_address_only(platform: Platform) -> None:
    a, b = platform.client(HOST_A), platform.client(HOST_B)
    register(a, SMART_APP)
    bad = [
        {
            "grant_type": "refresh_token",
            "refresh_token": "stolen-or-expired",
            "client_id": SMART_APP.client_id,
        },
        {
            "grant_type": "authorization_code",
            "code": "guessed-code",
            "redirect_uri": SMART_APP.redirect_uris[0],
            "client_id": SMART_APP.client_id,
            "code_verifier": "v" * 43,
        },
    ]
    statuses = [a.post("/auth/token", data=bad[i % 2]).status_code for i in range(PER_ADDRESS)]
    assert statuses == [400] * (PER_ADDRESS - 1) + [429]
    # anyone may send a public client's id: the app is not locked out for its other users
    elsewhere = b.post("/auth/token", data=bad[0])
    assert elsewhere.status_code == 400 and elsewhere.json()["error"] == "invalid_grant"
    failures = _logins(platform)
    assert {e.record.client_id for e in failures} == {SMART_APP.client_id}
    assert {e.record.outcome_desc for e in failures} == {"invalid_grant", "invalid_grant; locked"}


def test_confidential_client_failed_refreshes_lock_the_client(platform: Platform) -> None:
    a, b = platform.client(HOST_A), platform.client(HOST_B)
    web = OAuthClient(
        client_id="web-app",
        name="Web app",
        kind=ClientKind.CONFIDENTIAL,
        token_endpoint_auth_method="client_secret_basic",
        grant_types=("authorization_code", "refresh_token"),
        scope="openid patient/*.rs offline_access",
        redirect_uris=("https://web.example/cb",),
    )
    register(a, web, "web-app-secret")
    data = {"grant_type": "refresh_token", "refresh_token": "no-such-token"}
    statuses = [
        a.post("/auth/token", auth=("web-app", "web-app-secret"), data=data).status_code for _ in range(LIMIT)
    ]
    assert statuses == [400] * (LIMIT - 1) + [429]
    refused = b.post("/auth/token", auth=("web-app", "web-app-secret"), data=data)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) == LOCK


def test_bad_assertions_lock_a_private_key_jwt_client(platform: Platform) -> None:
    a, b = platform.client(HOST_A), platform.client(HOST_B)
    key = rsa_key()
    lab = OAuthClient(
        client_id="lab-system",
        name="Laboratoire Central",
        kind=ClientKind.SYSTEM,
        token_endpoint_auth_method="private_key_jwt",
        grant_types=("client_credentials",),
        scope="system/Observation.rs",
        jwks=KeySet([key]).as_dict(private=False),
    )
    register(a, lab)
    forged = [backend_token(a, client_assertion(rsa_key(kid=key.kid), "lab-system")) for _ in range(LIMIT)]
    assert [r.json()["error"] for r in forged] == ["invalid_client"] * (LIMIT - 1) + ["slow_down"]
    assert backend_token(b, client_assertion(key, "lab-system")).status_code == 429
    assert _logins(platform)[0].record.principal_subject == "lab-system"
    platform.at(LOCK + 1)
    assert backend_token(b, client_assertion(key, "lab-system")).status_code == 200


def test_revocation_and_introspection_share_the_limit(platform: Platform) -> None:
    a = platform.client()
    assert _demo(a, "guess", "/auth/introspect") == 401
    assert _demo(a, "guess", "/auth/revoke") == 401
    assert _demo(a, "guess", "/auth/introspect") == 429
    assert _demo(a) == 429
    assert {e.record.interaction for e in _logins(platform)} == {"introspect", "revoke"}


def test_the_lock_holds_for_another_worker_and_after_a_restart(platform: Platform) -> None:
    a = platform.client()
    for _ in range(LIMIT):
        _demo(a, "guess")
    other = create_app(platform.settings)  # a second process over the same database
    try:
        assert (
            TestClient(other, client=HOST_B)
            .post("/auth/token", auth=("demo-system", DEMO_SECRET), data={"grant_type": "client_credentials"})
            .status_code
            == 429
        )
    finally:
        other.state.engine.dispose()
