"""reminders: vaccination forecast state and reminder outbox

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notification_preference",
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("language", sa.String(length=2), nullable=True),
        sa.Column("vaccination_reminders", sa.Boolean(), nullable=False),
        sa.Column("new_documents", sa.Boolean(), nullable=False),
        sa.Column("updated", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_notification_preference")),
    )
    op.create_table(
        "vaccination_forecast_state",
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("computed_at", sa.DateTime(), nullable=False),
        sa.Column("inputs", sa.String(length=80), nullable=False),
        sa.Column("due", sa.Text(), nullable=False),
        sa.Column("next_check", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("patient_id", name=op.f("pk_vaccination_forecast_state")),
    )
    op.create_index("ix_vaccination_forecast_state_next_check", "vaccination_forecast_state", ["next_check"])


def downgrade() -> None:
    op.drop_index("ix_vaccination_forecast_state_next_check", table_name="vaccination_forecast_state")
    op.drop_table("vaccination_forecast_state")
    op.drop_table("notification_preference")
