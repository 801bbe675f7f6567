"""Keys: the server's token-signing keys, external issuers' JWKS, and the session secret.

The signing key is an RSA key (RS256, what every OpenID Connect client can check) generated on
first use and kept in ``oauth_signing_key``, so every process of a deployment signs with the same
key. Rotation adds a new active key and retires the old one; retired keys stay published in the
JWKS (and accepted) for a day so tokens signed just before a rotation stay valid until they expire.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from joserfc.jwk import KeySet, RSAKey, import_key
from sqlalchemy import Connection, Engine, or_, select, update

from sharedcare.fhir.store import utcnow
from sharedcare.oauth.models import oauth_signing_key
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer

log = logging.getLogger("sharedcare.oauth")

ALGORITHM = "RS256"
RETIRED_KEY_LIFETIME = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    key: Any
    """A joserfc private key."""
    alg: str = ALGORITHM


class KeyStore:
    """The server's signing keys, read from the database and cached for ``cache_seconds``.

    A token naming an unknown ``kid`` triggers a reload (at most every few seconds), so a key
    created by another process is found without waiting for the cache to expire.
    """

    def __init__(self, engine: Engine, cache_seconds: float = 60.0) -> None:
        self.engine = engine
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._keys: list[tuple[str, bool, Any]] = []  # (kid, active, key), newest first
        self._loaded = -1e9
        self._last_miss_reload = -1e9

    def signing_key(self) -> SigningKey:
        """The newest active key, created (in its own transaction) when there is none."""
        self._refresh()
        active = [(kid, key) for kid, is_active, key in self._keys if is_active]
        if not active:
            with writer(self.engine).begin() as conn:
                self._load(conn)
                if not any(is_active for _, is_active, _ in self._keys):
                    self._create(conn)
                    self._load(conn)
            active = [(kid, key) for kid, is_active, key in self._keys if is_active]
        kid, key = active[0]
        return SigningKey(kid, key)

    def key_for(self, kid: str | None) -> Any | None:
        """The published key with this ``kid`` (a private joserfc key; it verifies too)."""
        self._refresh()
        found = self._find(kid)
        if found is None and time.monotonic() - self._last_miss_reload > 5:
            self._last_miss_reload = time.monotonic()
            self._refresh(force=True)
            found = self._find(kid)
        return found

    def public_jwks(self) -> dict[str, Any]:
        """The JWKS document: public parts of the active and recently retired keys."""
        self.signing_key()
        document: dict[str, Any] = dict(KeySet([key for _, _, key in self._keys]).as_dict(private=False))
        return document

    def rotate(self) -> str:
        """Retire the active keys and make a new one; returns the new ``kid``."""
        with writer(self.engine).begin() as conn:
            conn.execute(
                update(oauth_signing_key)
                .where(oauth_signing_key.c.active.is_(True))
                .values(active=False, retired_at=utcnow())
            )
            kid = self._create(conn)
            self._load(conn)
        return kid

    def _find(self, kid: str | None) -> Any | None:
        for known, _, key in self._keys:
            if known == kid:
                return key
        return None

    def _refresh(self, force: bool = False) -> None:
        if force or time.monotonic() - self._loaded > self.cache_seconds:
            with self.engine.connect() as conn:
                self._load(conn)

    def _load(self, conn: Connection) -> None:
        t = oauth_signing_key.c
        rows = conn.execute(
            select(t.kid, t.active, t.private_jwk)
            .where(or_(t.active.is_(True), t.retired_at > utcnow() - RETIRED_KEY_LIFETIME))
            .order_by(t.created.desc(), t.kid)
        ).all()
        keys = [(row.kid, bool(row.active), import_key(orjson.loads(row.private_jwk))) for row in rows]
        with self._lock:
            self._keys = keys
            self._loaded = time.monotonic()

    def _create(self, conn: Connection) -> str:
        kid = uuid.uuid4().hex
        key = RSAKey.generate_key(2048, parameters={"kid": kid, "alg": ALGORITHM, "use": "sig"}, private=True)
        conn.execute(
            oauth_signing_key.insert().values(
                kid=kid,
                alg=ALGORITHM,
                private_jwk=orjson.dumps(key.as_dict(private=True)).decode(),
                created=utcnow(),
                active=True,
            )
        )
        log.info("oauth signing key created", extra={"kid": kid})
        return kid


class RemoteJwks:
    """A JWKS fetched over HTTPS and cached; refetched when a token names an unknown ``kid``."""

    def __init__(self, url: str, ttl: float = 600.0, min_refetch: float = 30.0) -> None:
        self.url = url
        self.ttl = ttl
        self.min_refetch = min_refetch
        self._keys: KeySet | None = None
        self._fetched = -1e9
        self._lock = threading.Lock()

    def keys(self, kid: str | None = None) -> KeySet:
        """The key set, fetched again when stale or when ``kid`` is not in it."""
        with self._lock:
            age = time.monotonic() - self._fetched
            missing = kid is not None and self._keys is not None and not _has_kid(self._keys, kid)
            if self._keys is None or age > self.ttl or (missing and age > self.min_refetch):
                response = httpx.get(self.url, timeout=10.0, follow_redirects=True)
                response.raise_for_status()
                self._keys = KeySet.import_key_set(response.json())
                self._fetched = time.monotonic()
            return self._keys


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(k.kid == kid for k in keys.keys)


def session_secret(settings: Settings) -> str:
    """The key signing portal sessions: ``settings.secret_key``, else generated once into a file.

    The file (``DATA_DIR/secret.key``, mode 0600) is created exclusively, so concurrent workers
    starting together end up with the same secret.
    """
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.data_dir) / "secret.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another worker may be writing it right now
            value = path.read_text().strip()
            if value:
                return value
            time.sleep(0.02)
        raise RuntimeError(f"{path} is empty: delete it to generate a new secret") from None
    value = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value
