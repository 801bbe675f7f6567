"""registrations: a facility's access renewed, with the holder's agreement, until a lab result

Adds to ``care_relationship`` the holder's agreement date and the state of the wait for a lab
result (``access.care.renew_until_lab_result``, ``access.labwait``): all nullable, so existing
relationships are unchanged.

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

_DATES = ("patient_agreement", "lab_wait_since", "lab_wait_floor")


def upgrade() -> None:
    with op.batch_alter_table("care_relationship") as batch_op:
        for name in _DATES:
            batch_op.add_column(sa.Column(name, sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("lab_wait_days", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("lab_result_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("care_relationship") as batch_op:
        batch_op.drop_column("lab_result_at")
        batch_op.drop_column("lab_wait_days")
        for name in reversed(_DATES):
            batch_op.drop_column(name)
