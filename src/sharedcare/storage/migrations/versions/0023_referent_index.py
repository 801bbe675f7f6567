"""an index of the referring-physician designations

The request's facts about a professional (``AccessPolicy.caller_facts_columns``) ask whether
they hold any referring-physician relationship: a partial index finds the few at once.

Revision ID: 0023
Revises: 0022
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_care_relationship_referent",
        "care_relationship",
        ["practitioner_id", "organization_id"],
        postgresql_where=sa.text("context = 'referent'"),
        sqlite_where=sa.text("context = 'referent'"),
    )


def downgrade() -> None:
    op.drop_index("ix_care_relationship_referent", table_name="care_relationship")
