"""storage: per-patient data keys for content encryption

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "content_key",
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("master_key_id", sa.String(length=32), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("wrapped_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", name=op.f("pk_content_key")),
    )
    op.create_index("ix_content_key_master_key_id", "content_key", ["master_key_id"])


def downgrade() -> None:
    op.drop_index("ix_content_key_master_key_id", table_name="content_key")
    op.drop_table("content_key")
