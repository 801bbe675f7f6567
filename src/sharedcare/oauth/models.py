"""Tables of the authorization server (created by migration 0003).

Secrets never sit in the database in clear: client secrets, authorization codes and refresh
tokens are stored as SHA-256 hashes (they are long random strings, so a fast hash is enough and
lets a presented value be looked up by its hash). Access tokens are self-contained JWTs and are
not stored; revoking one records its ``jti`` until it would have expired anyway.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, ForeignKey, Index, String, Table, Text

from sharedcare.storage.tables import PK, metadata

oauth_client = Table(
    "oauth_client",
    metadata,
    Column("client_id", String(128), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("kind", String(16), nullable=False),  # public | confidential | system
    Column("redirect_uris", Text, nullable=False, default="[]"),  # JSON list, exact match
    Column("grant_types", Text, nullable=False),  # space-separated
    Column("scope", Text, nullable=False, default=""),  # space-separated allowed scopes
    Column("token_endpoint_auth_method", String(32), nullable=False),  # none | client_secret_basic | ...
    Column("secret_hash", String(64), nullable=True),
    Column("jwks", Text, nullable=True),  # public JWKS (JSON) for private_key_jwt
    Column("jwks_uri", Text, nullable=True),  # or where to fetch it
    Column("organization_id", String(64), nullable=True),
    Column("trusted", Boolean, nullable=False, default=False),  # platform client: no consent page
    Column("created", DateTime(timezone=False), nullable=False),
    Column("updated", DateTime(timezone=False), nullable=False),
)

oauth_code = Table(
    "oauth_code",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("code_hash", String(64), nullable=False, unique=True),
    Column(
        "client_id", String(128), ForeignKey("oauth_client.client_id", ondelete="CASCADE"), nullable=False
    ),
    Column("redirect_uri", Text, nullable=True),
    Column("scope", Text, nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("principal", Text, nullable=False),  # JSON snapshot of the user's principal claims
    Column("launch_patient", String(64), nullable=True),
    Column("nonce", String(255), nullable=True),
    Column("code_challenge", String(128), nullable=False),
    Column("code_challenge_method", String(8), nullable=False),
    Column("auth_time", DateTime(timezone=False), nullable=False),
    Column("expires_at", DateTime(timezone=False), nullable=False),
    Column("used", Boolean, nullable=False, default=False),
    # set when the code is exchanged, so that a replayed code revokes what it produced
    Column("family", String(64), nullable=True),
    Column("access_jti", String(64), nullable=True),
    Column("access_expires_at", DateTime(timezone=False), nullable=True),
    # the portal sign-in session an ``online_access`` authorization lasts for (migration 0008)
    Column("session_id", String(64), nullable=True),
    Index("ix_oauth_code_expires_at", "expires_at"),
)

oauth_refresh_token = Table(
    "oauth_refresh_token",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("family", String(64), nullable=False),  # one per authorization; rotation keeps it
    Column(
        "client_id", String(128), ForeignKey("oauth_client.client_id", ondelete="CASCADE"), nullable=False
    ),
    Column("account_id", String(64), nullable=False),
    Column("principal", Text, nullable=False),
    Column("scope", Text, nullable=False),
    Column("launch_patient", String(64), nullable=True),
    Column("issued_at", DateTime(timezone=False), nullable=False),
    Column("expires_at", DateTime(timezone=False), nullable=False),
    Column("rotated_at", DateTime(timezone=False), nullable=True),
    Column("revoked", Boolean, nullable=False, default=False),
    # the access token issued together with this refresh token, revoked with the family
    Column("access_jti", String(64), nullable=True),
    Column("access_expires_at", DateTime(timezone=False), nullable=True),
    # ``online_access``: the portal sign-in session (``login_session.id``) the token ends with
    Column("session_id", String(64), nullable=True),
    Index("ix_oauth_refresh_token_family", "family"),
    Index("ix_oauth_refresh_token_expires_at", "expires_at"),
    Index("ix_oauth_refresh_token_session_id", "session_id"),
)

oauth_revoked = Table(
    "oauth_revoked",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("expires_at", DateTime(timezone=False), nullable=False),
    Column("revoked_at", DateTime(timezone=False), nullable=False),
    Index("ix_oauth_revoked_expires_at", "expires_at"),
)

oauth_signing_key = Table(
    "oauth_signing_key",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("alg", String(8), nullable=False),
    Column("private_jwk", Text, nullable=False),
    Column("created", DateTime(timezone=False), nullable=False),
    Column("active", Boolean, nullable=False),
    Column("retired_at", DateTime(timezone=False), nullable=True),
)

oauth_assertion_jti = Table(
    "oauth_assertion_jti",
    metadata,
    Column("client_id", String(128), primary_key=True),
    Column("jti", String(255), primary_key=True),
    Column("expires_at", DateTime(timezone=False), nullable=False),
    Index("ix_oauth_assertion_jti_expires_at", "expires_at"),
)
