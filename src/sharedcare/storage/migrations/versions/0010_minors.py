"""access: autonomous minors and minors' objections

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "minor_autonomy",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("practitioner_id", sa.String(length=64), nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=True),
        sa.Column("decided_at", sa.DateTime(), nullable=False),
        sa.Column("consent_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_minor_autonomy")),
    )
    op.create_index("ix_minor_autonomy_patient", "minor_autonomy", ["patient_id"])
    op.create_table(
        "minor_objection",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("removed_at", sa.DateTime(), nullable=True),
        sa.Column("consent_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_minor_objection")),
    )
    op.create_index("ix_minor_objection_patient", "minor_objection", ["patient_id"])


def downgrade() -> None:
    op.drop_index("ix_minor_objection_patient", table_name="minor_objection")
    op.drop_table("minor_objection")
    op.drop_index("ix_minor_autonomy_patient", table_name="minor_autonomy")
    op.drop_table("minor_autonomy")
