"""Helpers shared by the tests: emptying a database, storing fixtures, reading searchsets, tokens,
principals and care relationships as the tests seed them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, event, text

from sharedcare.access.models import care_relationship
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.identity import passwords
from sharedcare.oauth.clients import ensure_demo_client
from sharedcare.schema import metadata
from sharedcare.settings import Settings
from sharedcare.storage.engine import make_engine, writer

SHARED_DATA = Path(
    os.environ.get("SHAREDCARE_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


def shared_data(*parts: str) -> Path:
    """A path in the shared data folder; skips the test (with the reason) when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


# the in-process test server is http://testserver: allow OAuth over plain http there
os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")
DEMO_SECRET = "test-demo-system-secret"

KEEP = ("oauth_signing_key",)
"""Infrastructure rows a test never needs emptied: keeping the server's signing keys spares a
key generation per test."""


def truncate(engine: Engine) -> None:
    """Empty every table of the schema (but the infrastructure of ``KEEP``)."""
    names = [t.name for t in reversed(metadata.sorted_tables) if t.name not in KEEP]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("TRUNCATE " + ", ".join(names) + " RESTART IDENTITY CASCADE"))
        else:
            for name in names:
                conn.execute(text(f"DELETE FROM {name}"))


def emptied_engine(db_url: str, *, empty_after: bool = False) -> Iterator[Engine]:
    """The body of an ``engine`` fixture: an engine on the test database, emptied first (and after
    the test too with ``empty_after``), disposed of at the end."""
    engine = make_engine(db_url)
    truncate(engine)
    try:
        yield engine
    finally:
        if empty_after:
            truncate(engine)
        engine.dispose()


CHEAP = passwords.HashParameters(time_cost=1, memory_cost=8, parallelism=1)
"""The smallest argon2id costs: the suite stays fast, the code paths stay real."""


def cheap_passwords() -> Iterator[None]:
    """The body of a ``cheap_hashing`` fixture: password hashing at ``CHEAP`` costs for the test,
    the previous parameters restored after it."""
    previous = passwords.set_parameters(CHEAP)
    try:
        yield
    finally:
        passwords.set_parameters(previous)


def put_all(client: TestClient, *resources: dict[str, Any]) -> None:
    """Store ``resources`` under their own ids in one transaction Bundle."""
    entries = [
        {
            "fullUrl": f"http://testserver/fhir/{r['resourceType']}/{r['id']}",
            "resource": r,
            "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
        }
        for r in resources
    ]
    resp = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert resp.status_code == 200, resp.text


def get_bundle(client: TestClient, url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """GET a search URL (relative to /fhir, or absolute) and return the searchset Bundle."""
    resp = client.get(url if url.startswith("http") else f"/fhir/{url}", headers=headers)
    assert resp.status_code == 200, f"{url}: {resp.text}"
    assert resp.headers["content-type"].startswith("application/fhir+json")
    body: dict[str, Any] = resp.json()
    assert body["resourceType"] == "Bundle"
    assert body["type"] == "searchset"
    return body


def ensure_demo(engine: Engine, settings: Settings) -> None:
    """Register the trusted demo system client (its secret from the settings)."""
    with writer(engine).begin() as conn:
        ensure_demo_client(conn, settings)


def system_token(http: httpx.Client | TestClient, token_url: str = "/auth/token") -> str:
    """A ``system/*.*`` access token of the trusted demo client, from the real token endpoint."""
    resp = http.post(
        token_url,
        data={"grant_type": "client_credentials", "scope": "system/*.*"},
        auth=("demo-system", DEMO_SECRET),
    )
    assert resp.status_code == 200, resp.text
    token: str = resp.json()["access_token"]
    return token


@contextmanager
def signed_in_client(app: Any, settings: Settings) -> Iterator[TestClient]:
    """A client on ``app`` over an emptied database, signed in as the trusted demo system client
    (the FHIR core tests run as the agency's own unrestricted client)."""
    truncate(app.state.engine)
    ensure_demo(app.state.engine, settings)
    with TestClient(app) as c:
        c.headers["Authorization"] = f"Bearer {system_token(c)}"
        yield c
    app.state.engine.dispose()


def mint_token(
    app: Any, principal: Any, scope: str, *, lifetime: int = 300, base: str = "http://testserver"
) -> str:
    """An access token for ``principal`` signed with the server's key, with exactly the claims
    the token endpoint issues: for principals whose sign-in (the portal) the test skips."""
    import time
    import uuid

    from joserfc import jwt

    from sharedcare.access.tokens import ACCESS_TOKEN_TYPE, principal_claims
    from sharedcare.oauth.server import ALGORITHM

    key = app.state.oauth_keys.signing_key()
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": base,
        "sub": principal.subject,
        "aud": f"{base}/fhir",
        "iat": now,
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
        "client_id": "test-app",
        "scope": scope,
        "principal": principal_claims(principal),
    }
    if principal.launch_patient:
        claims["patient"] = principal.launch_patient
    header = {"alg": ALGORITHM, "kid": key.kid, "typ": ACCESS_TOKEN_TYPE}
    token: str = jwt.encode(header, claims, key.key, algorithms=[ALGORITHM])
    return token


OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def lab_result(rid: str, patient: str = "pa", code: str = "2345-7") -> dict[str, Any]:
    """A final laboratory Observation (LOINC ``code``) of ``Patient/<patient>``."""
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
    }


def bearer(app: Any, principal: Any, scope: str) -> dict[str, str]:
    """The ``Authorization`` header of a ``mint_token`` token."""
    return {"Authorization": f"Bearer {mint_token(app, principal, scope)}"}


def professional(pid: str, profession: str = "med", organization: str | None = None) -> Principal:
    """A professional with user scopes: account ``acct-<pid>``, practitioner ``pid``."""
    return Principal(
        PrincipalKind.PROFESSIONAL,
        f"acct-{pid}",
        display=pid,
        practitioner_id=pid,
        profession=profession,
        organization_id=organization,
        scopes=frozenset({"user/*.cruds"}),
    )


def add_care(
    conn: Connection,
    rel_id: str,
    patient_id: str,
    practitioner_id: str | None,
    now: datetime,
    *,
    organization_id: str | None = None,
    context: str = "solo",
    ends: timedelta | None = timedelta(days=14),
) -> None:
    """A care relationship as the tests seed one: begun a day before ``now``, ending ``ends``
    after it (None: no end)."""
    conn.execute(
        care_relationship.insert().values(
            id=rel_id,
            patient_id=patient_id,
            practitioner_id=practitioner_id,
            organization_id=organization_id,
            context=context,
            starts=now - timedelta(days=1),
            ends=None if ends is None else now + ends,
            created_by="test",
        )
    )


# -- a clinic, another organisation, their systems and doctors (registrations, filing) ----------
CLINIC = {"resourceType": "Organization", "id": "clinic", "active": True, "name": "Clinique du Parc"}
OTHER_ORGANIZATION = {
    "resourceType": "Organization",
    "id": "other",
    "active": True,
    "name": "Hôpital du Nord",
}
CLINIC_SYSTEM = Principal(PrincipalKind.SYSTEM, "clinic-system", display="Clinic", organization_id="clinic")
OTHER_SYSTEM = Principal(PrincipalKind.SYSTEM, "other-system", organization_id="other")
CLINIC_DOCTOR = Principal(
    PrincipalKind.PROFESSIONAL,
    "acct-doc",
    display="Dr Doc",
    practitioner_id="doc",
    profession="med",
    organization_id="clinic",
)
OTHER_DOCTOR = Principal(
    PrincipalKind.PROFESSIONAL, "acct-od", practitioner_id="od", profession="med", organization_id="other"
)


@contextmanager
def statements(engine: Any) -> Iterator[list[str]]:
    """The SQL statements run on ``engine`` (and the engines derived from it) meanwhile."""
    seen: list[str] = []

    def listen(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        seen.append(sql)

    event.listen(engine, "before_cursor_execute", listen)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", listen)
