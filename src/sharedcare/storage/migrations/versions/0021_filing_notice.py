"""filing requests: when the overdue notice was sent

An open filing request past its due date (art. 9(2)) is announced once to the holder (a message
in the outbox) and once to the professional asked (an e-mail): ``access.filing_notices``, a daily
job. Two nullable columns on ``record_request`` record that each was done, so a second run sends
nothing twice; an index on (kind, status) finds the open filing requests without a scan of every
request ever filed. No data to move: existing rows start with neither notice sent.

Revision ID: 0021
Revises: 0020
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("record_request") as batch_op:
        batch_op.add_column(sa.Column("overdue_holder_notice_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("overdue_owner_notice_at", sa.DateTime(), nullable=True))
    op.create_index("ix_record_request_kind_status", "record_request", ["kind", "status"])


def downgrade() -> None:
    op.drop_index("ix_record_request_kind_status", table_name="record_request")
    with op.batch_alter_table("record_request") as batch_op:
        batch_op.drop_column("overdue_owner_notice_at")
        batch_op.drop_column("overdue_holder_notice_at")
