"""Shared helpers for the benchmarks: data location, a scratch PostgreSQL database, access tokens,
reporting."""

from __future__ import annotations

import os
import tarfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHAREDCARE_SHARED_DATA", ROOT.parent / "shared" / "data"))
PG_URL = os.environ.get("SHAREDCARE_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
DEMO_CLIENT_SECRET = os.environ.get("SHAREDCARE_DEMO_CLIENT_SECRET") or "bench-demo-system-secret"
"""Secret of the trusted ``demo-system`` client the benchmarks get their system token with."""
TOKEN_SECONDS = 86_400
"""Lifetime of the benchmark servers' access tokens (``SHAREDCARE_ACCESS_TOKEN_SECONDS``): a day, so
no token expires during a run."""


def synthea_bundles(limit: int | None = None, include_shared: bool = False) -> list[tuple[str, bytes]]:
    """The Synthea patient transaction bundles (name, raw JSON), read from the shared archive."""
    archive = SHARED_DATA / "synthea-r4-bundles" / "synthea-r4-bundles.tar.xz"
    out: list[tuple[str, bytes]] = []
    with tarfile.open(archive, mode="r|xz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".json"):
                continue
            shared = "Information" in member.name
            if shared and not include_shared:
                continue
            fh = tar.extractfile(member)
            assert fh is not None
            out.append((member.name, fh.read()))
            if limit is not None and len(out) >= limit:
                break
    return out


@contextmanager
def scratch_database(prefix: str = "sharedcare_bench") -> Iterator[str]:
    """A fresh PostgreSQL database for one benchmark run; dropped afterwards."""
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def report(title: str, rows: list[tuple[str, str]]) -> None:
    """Print a small aligned table of figures, dated."""
    print(f"\n== {title} ({date.today().isoformat()}) ==")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")


def server_env(url: str) -> dict[str, str]:
    """Environment of a benchmark server: the database, no demo data, the bench client's secret."""
    return {
        "SHAREDCARE_DATABASE_URL": url,
        "SHAREDCARE_DEMO_DATA": "false",
        "SHAREDCARE_DEMO_CLIENT_SECRET": DEMO_CLIENT_SECRET,
        "SHAREDCARE_ACCESS_TOKEN_SECONDS": str(TOKEN_SECONDS),
    }


def register_demo_client(url: str) -> None:
    """Register the trusted ``demo-system`` client (``system/*.*``) with the bench secret."""
    from sharedcare.oauth.clients import ensure_demo_client
    from sharedcare.settings import Settings
    from sharedcare.storage.engine import make_engine, writer

    engine = make_engine(url)
    try:
        with writer(engine).begin() as conn:
            ensure_demo_client(conn, Settings(database_url=url, demo_client_secret=DEMO_CLIENT_SECRET))
    finally:
        engine.dispose()


def system_token(port: int) -> str:
    """A ``system/*.*`` token of the trusted demo client, from the server's token endpoint (the
    way operators' scripts get one: ``client_credentials`` with ``client_secret_basic``)."""
    resp = httpx.post(
        f"http://127.0.0.1:{port}/auth/token",
        data={"grant_type": "client_credentials", "scope": "system/*.*"},
        auth=("demo-system", DEMO_CLIENT_SECRET),
        timeout=30,
    )
    resp.raise_for_status()
    token: str = resp.json()["access_token"]
    return token


def mint_token(url: str, port: int, principal: Any, scope: str, client_id: str = "bench-app") -> str:
    """An access token for ``principal`` signed with the server's key and carrying exactly the
    claims the token endpoint issues (``oauth.server._generate_token``: iss, sub, aud, iat, exp,
    jti, client_id, scope, principal). For people, whose sign-in (portal, TOTP) a load test cannot
    go through; the server must already have its signing key (get a system token first)."""
    from joserfc import jwt

    from sharedcare.access.tokens import ACCESS_TOKEN_TYPE, principal_claims
    from sharedcare.oauth.keys import ALGORITHM, KeyStore
    from sharedcare.storage.engine import make_engine

    engine = make_engine(url)
    try:
        key = KeyStore(engine).signing_key()
    finally:
        engine.dispose()
    base = f"http://127.0.0.1:{port}"  # the issuer the server derives from the request
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": base,
        "sub": principal.subject,
        "aud": f"{base}/fhir",
        "iat": now,
        "exp": now + TOKEN_SECONDS,
        "jti": uuid.uuid4().hex,
        "client_id": client_id,
        "scope": scope,
        "principal": principal_claims(principal),
    }
    header = {"alg": ALGORITHM, "kid": key.kid, "typ": ACCESS_TOKEN_TYPE}
    token: str = jwt.encode(header, claims, key.key, algorithms=[ALGORITHM])
    return token
