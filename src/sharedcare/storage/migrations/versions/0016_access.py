"""access: vaccination rights and confidentiality

Adds the resource's stored confidentiality (filled from the stored JSON of every existing row),
the withdrawal of a minor's autonomy, and the facilities' withdrawn authorisations.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import orjson
import sqlalchemy as sa
from alembic import op

from sharedcare.fhir.store import confidentiality_of

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_BATCH = 1000


def _backfill_confidentiality() -> None:
    """Set the column of the rows whose JSON names a confidentiality (the store does it on write)."""
    conn = op.get_bind()
    resource = sa.table(
        "resource", sa.column("pk"), sa.column("content"), sa.column("confidentiality", sa.String)
    )
    rows = conn.execute(
        sa.select(resource.c.pk, resource.c.content).where(
            sa.or_(
                resource.c.content.like("%v3-Confidentiality%"),
                resource.c.content.like('%"confidentiality"%'),
            )
        )
    ).all()
    updates = [
        {"key": row.pk, "value": code}
        for row in rows
        if (code := confidentiality_of(orjson.loads(row.content))) is not None
    ]
    statement = (
        sa.update(resource)
        .where(resource.c.pk == sa.bindparam("key"))
        .values(confidentiality=sa.bindparam("value"))
    )
    for start in range(0, len(updates), _BATCH):
        conn.execute(statement, updates[start : start + _BATCH])


def upgrade() -> None:
    with op.batch_alter_table("resource") as batch_op:
        batch_op.add_column(sa.Column("confidentiality", sa.String(length=1), nullable=True))
    _backfill_confidentiality()
    with op.batch_alter_table("minor_autonomy") as batch_op:
        batch_op.add_column(sa.Column("withdrawn_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("withdrawn_by", sa.String(length=64), nullable=True))
    op.create_table(
        "facility_withdrawal",
        sa.Column(
            "pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("withdrawn_at", sa.DateTime(), nullable=False),
        sa.Column("detected_at", sa.DateTime(), nullable=False),
        sa.Column("restored_at", sa.DateTime(), nullable=True),
        sa.Column("holders", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_facility_withdrawal")),
        sa.UniqueConstraint(
            "organization_id", "version", name=op.f("uq_facility_withdrawal_organization_id_version")
        ),
    )


def downgrade() -> None:
    op.drop_table("facility_withdrawal")
    with op.batch_alter_table("minor_autonomy") as batch_op:
        batch_op.drop_column("withdrawn_by")
        batch_op.drop_column("withdrawn_at")
    with op.batch_alter_table("resource") as batch_op:
        batch_op.drop_column("confidentiality")
