"""oauth: clients, authorization codes, refresh tokens and revocations

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _client_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["client_id"],
        ["oauth_client.client_id"],
        name=op.f(f"fk_{table}_client_id_oauth_client"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "oauth_client",
        sa.Column("client_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("redirect_uris", sa.Text(), nullable=False),
        sa.Column("grant_types", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("token_endpoint_auth_method", sa.String(length=32), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=True),
        sa.Column("jwks", sa.Text(), nullable=True),
        sa.Column("jwks_uri", sa.Text(), nullable=True),
        sa.Column("organization_id", sa.String(length=64), nullable=True),
        sa.Column("trusted", sa.Boolean(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("updated", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("client_id", name=op.f("pk_oauth_client")),
    )
    op.create_table(
        "oauth_code",
        sa.Column("pk", _PK, autoincrement=True, nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=128), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=True),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("principal", sa.Text(), nullable=False),
        sa.Column("launch_patient", sa.String(length=64), nullable=True),
        sa.Column("nonce", sa.String(length=255), nullable=True),
        sa.Column("code_challenge", sa.String(length=128), nullable=False),
        sa.Column("code_challenge_method", sa.String(length=8), nullable=False),
        sa.Column("auth_time", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("used", sa.Boolean(), nullable=False),
        sa.Column("family", sa.String(length=64), nullable=True),
        sa.Column("access_jti", sa.String(length=64), nullable=True),
        sa.Column("access_expires_at", sa.DateTime(), nullable=True),
        _client_fk("oauth_code"),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_oauth_code")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_oauth_code_code_hash")),
    )
    with op.batch_alter_table("oauth_code", schema=None) as batch_op:
        batch_op.create_index("ix_oauth_code_expires_at", ["expires_at"], unique=False)

    op.create_table(
        "oauth_refresh_token",
        sa.Column("pk", _PK, autoincrement=True, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("family", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=128), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("principal", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("launch_patient", sa.String(length=64), nullable=True),
        sa.Column("issued_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("rotated_at", sa.DateTime(), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("access_jti", sa.String(length=64), nullable=True),
        sa.Column("access_expires_at", sa.DateTime(), nullable=True),
        _client_fk("oauth_refresh_token"),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_oauth_refresh_token")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_oauth_refresh_token_token_hash")),
    )
    with op.batch_alter_table("oauth_refresh_token", schema=None) as batch_op:
        batch_op.create_index("ix_oauth_refresh_token_family", ["family"], unique=False)
        batch_op.create_index("ix_oauth_refresh_token_expires_at", ["expires_at"], unique=False)

    op.create_table(
        "oauth_revoked",
        sa.Column("jti", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_oauth_revoked")),
    )
    with op.batch_alter_table("oauth_revoked", schema=None) as batch_op:
        batch_op.create_index("ix_oauth_revoked_expires_at", ["expires_at"], unique=False)

    op.create_table(
        "oauth_signing_key",
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("alg", sa.String(length=8), nullable=False),
        sa.Column("private_jwk", sa.Text(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("retired_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_oauth_signing_key")),
    )
    op.create_table(
        "oauth_assertion_jti",
        sa.Column("client_id", sa.String(length=128), nullable=False),
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("client_id", "jti", name=op.f("pk_oauth_assertion_jti")),
    )
    with op.batch_alter_table("oauth_assertion_jti", schema=None) as batch_op:
        batch_op.create_index("ix_oauth_assertion_jti_expires_at", ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("oauth_assertion_jti", schema=None) as batch_op:
        batch_op.drop_index("ix_oauth_assertion_jti_expires_at")
    op.drop_table("oauth_assertion_jti")
    op.drop_table("oauth_signing_key")
    with op.batch_alter_table("oauth_revoked", schema=None) as batch_op:
        batch_op.drop_index("ix_oauth_revoked_expires_at")
    op.drop_table("oauth_revoked")
    with op.batch_alter_table("oauth_refresh_token", schema=None) as batch_op:
        batch_op.drop_index("ix_oauth_refresh_token_expires_at")
        batch_op.drop_index("ix_oauth_refresh_token_family")
    op.drop_table("oauth_refresh_token")
    with op.batch_alter_table("oauth_code", schema=None) as batch_op:
        batch_op.drop_index("ix_oauth_code_expires_at")
    op.drop_table("oauth_code")
    op.drop_table("oauth_client")
