"""identity/oauth: server-side portal sessions and token endpoint throttling

``login_session`` holds the portal's sign-in sessions (identity.sessions); ``session_id`` on
``oauth_code`` and ``oauth_refresh_token`` ties an ``online_access`` authorization to the session
it was given in. Token endpoint throttling reuses ``attempt_throttle`` (0002): no table.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_session",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("last_seen", sa.DateTime(), nullable=False),
        sa.Column("expires", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_reason", sa.String(length=32), nullable=True),
        sa.Column("user_agent", sa.String(length=100), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["account.id"],
            name=op.f("fk_login_session_account_id_account"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_session")),
    )
    with op.batch_alter_table("login_session", schema=None) as batch_op:
        batch_op.create_index("ix_login_session_account_id", ["account_id"], unique=False)
        batch_op.create_index("ix_login_session_expires", ["expires"], unique=False)
    with op.batch_alter_table("oauth_code", schema=None) as batch_op:
        batch_op.add_column(sa.Column("session_id", sa.String(length=64), nullable=True))
    with op.batch_alter_table("oauth_refresh_token", schema=None) as batch_op:
        batch_op.add_column(sa.Column("session_id", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_oauth_refresh_token_session_id", ["session_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("oauth_refresh_token", schema=None) as batch_op:
        batch_op.drop_index("ix_oauth_refresh_token_session_id")
        batch_op.drop_column("session_id")
    with op.batch_alter_table("oauth_code", schema=None) as batch_op:
        batch_op.drop_column("session_id")
    with op.batch_alter_table("login_session", schema=None) as batch_op:
        batch_op.drop_index("ix_login_session_expires")
        batch_op.drop_index("ix_login_session_account_id")
    op.drop_table("login_session")
