"""filing deadline after the end of care

A ``filing_deadline`` row per declared end of care (``access.care.end_care``, art. 9(3)): the
relationship it ended, who files (practitioner or organisation), care start and end, due date.

Revision ID: 0022
Revises: 0021
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "filing_deadline",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("relationship_id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("practitioner_id", sa.String(length=64), nullable=True),
        sa.Column("organization_id", sa.String(length=64), nullable=True),
        sa.Column("context", sa.String(length=16), nullable=False),
        sa.Column("care_start", sa.DateTime(), nullable=False),
        sa.Column("care_end", sa.DateTime(), nullable=False),
        sa.Column("due", sa.DateTime(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_filing_deadline")),
        sa.UniqueConstraint("relationship_id", name=op.f("uq_filing_deadline_relationship_id")),
    )
    op.create_index("ix_filing_deadline_practitioner", "filing_deadline", ["practitioner_id", "due"])
    op.create_index("ix_filing_deadline_organization", "filing_deadline", ["organization_id", "due"])
    op.create_index("ix_filing_deadline_patient", "filing_deadline", ["patient_id"])


def downgrade() -> None:
    op.drop_table("filing_deadline")
