"""vaccination: stored categories of the immunization resources, reminder items

Immunization, ImmunizationEvaluation and ImmunizationRecommendation rows written before the
vaccination categories existed keep the category of their write; the access decision reads the
stored one, so they are reclassified here with the store's own classifier
(``access.policy.category_of``, as ``access.reclassify`` does), in batches by primary key.

The reminder job now puts a person's reminders of one run in one message: the table
``vaccination_reminder_item`` keeps the reminders already queued (exactly once), filled from
the once-only keys of the reminders queued before, one message each.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import orjson
import sqlalchemy as sa
from alembic import op

from sharedcare.access.policy import category_of

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_BATCH = 2000
TYPES = ("Immunization", "ImmunizationEvaluation", "ImmunizationRecommendation")

_ROWS = sa.text(
    "SELECT r.pk, r.category, COALESCE(r.content, (SELECT v.content FROM resource_version v "
    "WHERE v.res_pk = r.pk AND v.content IS NOT NULL ORDER BY v.version DESC LIMIT 1)) AS content "
    "FROM resource r WHERE r.pk > :last AND r.type IN :types ORDER BY r.pk LIMIT :size"
).bindparams(sa.bindparam("types", expanding=True))


def _reclassify() -> None:
    """Set each immunization row's category from its content (a deleted one: its last content)."""
    conn = op.get_bind()
    update = sa.text("UPDATE resource SET category = :category WHERE pk = :pk")
    last = 0
    while True:
        rows = conn.execute(_ROWS, {"last": last, "size": _BATCH, "types": list(TYPES)}).all()
        if not rows:
            return
        changes = [
            {"pk": row.pk, "category": category}
            for row in rows
            if row.content and (category := category_of(orjson.loads(row.content))) != row.category
        ]
        if changes:
            conn.execute(update, changes)
        last = rows[-1].pk


def upgrade() -> None:
    op.create_table(
        "vaccination_reminder_item",
        sa.Column("dedupe", sa.String(length=160), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("queued", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("dedupe", name=op.f("pk_vaccination_reminder_item")),
    )
    op.execute(
        "INSERT INTO vaccination_reminder_item (dedupe, patient_id, queued) "
        "SELECT dedupe, patient_id, created FROM notification "
        "WHERE kind = 'vaccination-reminder' AND dedupe IS NOT NULL"
    )
    _reclassify()


def downgrade() -> None:
    op.drop_table("vaccination_reminder_item")
