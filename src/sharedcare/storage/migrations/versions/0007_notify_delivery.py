"""notify: delivery of notifications and licence-withdrawal tracking

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notification") as batch_op:
        batch_op.add_column(sa.Column("delivery", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("delivered_to", sa.Text(), nullable=True))
        batch_op.create_index("ix_notification_due", ["delivery", "next_attempt_at"])
    op.create_table(
        "licence_withdrawal",
        sa.Column(
            "pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("practitioner_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("withdrawn_at", sa.DateTime(), nullable=False),
        sa.Column("detected_at", sa.DateTime(), nullable=False),
        sa.Column("restored_at", sa.DateTime(), nullable=True),
        sa.Column("holders", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_licence_withdrawal")),
        sa.UniqueConstraint(
            "practitioner_id", "version", name=op.f("uq_licence_withdrawal_practitioner_id_version")
        ),
    )


def downgrade() -> None:
    op.drop_table("licence_withdrawal")
    with op.batch_alter_table("notification") as batch_op:
        batch_op.drop_index("ix_notification_due")
        batch_op.drop_column("delivered_to")
        batch_op.drop_column("last_error")
        batch_op.drop_column("next_attempt_at")
        batch_op.drop_column("attempts")
        batch_op.drop_column("delivery")
