"""access: care relationships, holder choices and record status

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("resource") as batch_op:
        batch_op.add_column(sa.Column("category", sa.String(length=40), nullable=True))
    _classify_existing()
    op.create_table(
        "record_status",
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("letter_sent", sa.DateTime(), nullable=True),
        sa.Column("activated_at", sa.DateTime(), nullable=True),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.Column("closed_reason", sa.String(length=16), nullable=True),
        sa.Column("first_professional_access", sa.DateTime(), nullable=True),
        sa.Column("last_access", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("patient_id", name=op.f("pk_record_status")),
    )
    op.create_table(
        "care_relationship",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("practitioner_id", sa.String(length=64), nullable=True),
        sa.Column("organization_id", sa.String(length=64), nullable=True),
        sa.Column("context", sa.String(length=16), nullable=False),
        sa.Column("starts", sa.DateTime(), nullable=False),
        sa.Column("ends", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("consent_id", sa.String(length=64), nullable=True),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_care_relationship")),
    )
    op.create_index(
        "ix_care_relationship_practitioner", "care_relationship", ["practitioner_id", "patient_id"]
    )
    op.create_index(
        "ix_care_relationship_organization", "care_relationship", ["organization_id", "patient_id"]
    )
    op.create_index("ix_care_relationship_patient", "care_relationship", ["patient_id"])
    op.create_table(
        "access_restriction",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("practitioner_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=True),
        sa.Column("resource_id", sa.String(length=64), nullable=True),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("removed_at", sa.DateTime(), nullable=True),
        sa.Column("consent_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_restriction")),
    )
    op.create_index(
        "ix_access_restriction_practitioner", "access_restriction", ["practitioner_id", "patient_id"]
    )
    op.create_index("ix_access_restriction_resource", "access_restriction", ["resource_type", "resource_id"])
    op.create_table(
        "delegation",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("legal_basis", sa.Text(), nullable=True),
        sa.Column("starts", sa.DateTime(), nullable=False),
        sa.Column("ends", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("consent_id", sa.String(length=64), nullable=True),
        sa.Column("related_person_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delegation")),
    )
    op.create_index("ix_delegation_account", "delegation", ["account_id"])
    op.create_index("ix_delegation_patient", "delegation", ["patient_id"])
    op.create_table(
        "connection_code",
        sa.Column(
            "pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("code_hash", sa.String(length=128), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("expires", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
        sa.Column("used_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_connection_code")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_connection_code_code_hash")),
    )


def _classify_existing() -> None:
    """Give every stored resource its data category: NULL would make it readable by everyone."""
    from sharedcare.access.reclassify import reclassify

    reclassify(op.get_bind())


def downgrade() -> None:
    for table in (
        "connection_code",
        "delegation",
        "access_restriction",
        "care_relationship",
        "record_status",
    ):
        op.drop_table(table)
    with op.batch_alter_table("resource") as batch_op:
        batch_op.drop_column("category")
