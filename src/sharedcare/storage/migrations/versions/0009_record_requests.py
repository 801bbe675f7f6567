"""access: pending disclosure, objections to filing, rectification and erasure requests

Revision ID: 0009
Revises: 0008

Pending disclosure needs no table: it is the ``_security`` token the store already indexes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "filing_objection",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("removed_at", sa.DateTime(), nullable=True),
        sa.Column("consent_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_filing_objection")),
    )
    op.create_index("ix_filing_objection_resource", "filing_objection", ["resource_type", "resource_id"])
    op.create_index("ix_filing_objection_patient", "filing_objection", ["patient_id"])
    op.create_table(
        "record_request",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("item_version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("author_practitioner_id", sa.String(length=64), nullable=True),
        sa.Column("owner_organization_id", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("decision_reason", sa.Text(), nullable=True),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("decided_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_record_request")),
    )
    op.create_index("ix_record_request_patient", "record_request", ["patient_id"])
    op.create_index("ix_record_request_practitioner", "record_request", ["author_practitioner_id"])
    op.create_index("ix_record_request_organization", "record_request", ["owner_organization_id"])
    op.create_index("ix_record_request_resource", "record_request", ["resource_type", "resource_id"])


def downgrade() -> None:
    op.drop_table("record_request")
    op.drop_table("filing_objection")
