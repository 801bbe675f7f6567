"""device compartment: link the Devices stored before to their patient's record

The platform now adds Device (through ``Device.patient``) to the patient compartment
(``fhir/data/search-parameters-local.json``), which the R4 CompartmentDefinition leaves it out of;
the store writes a Device's ``resource_compartment`` rows from then on. A Device stored before has
none, so the access decision, which finds a record's items through the compartment, shows it to
nobody. This adds the rows the indexer gives a current, non-deleted Device and the table lacks,
in batches by primary key, on SQLite and PostgreSQL; running it again changes nothing. No schema
change: the downgrade leaves the rows (the store writes the same ones on the Device's next update).

Revision ID: 0020
Revises: 0019
"""

from __future__ import annotations

import orjson
import sqlalchemy as sa
from alembic import op

from sharedcare.fhir.indexer import Indexer

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

_BATCH = 1000

_DEVICES = sa.text(
    "SELECT pk, content FROM resource WHERE type = 'Device' AND NOT deleted AND content IS NOT NULL "
    "AND pk > :last ORDER BY pk LIMIT :size"
)
_LINKED = sa.text("SELECT res_pk, patient_id FROM resource_compartment WHERE res_pk IN :pks").bindparams(
    sa.bindparam("pks", expanding=True)
)
_LINK = sa.text("INSERT INTO resource_compartment (res_pk, patient_id) VALUES (:res_pk, :patient_id)")


def _device_compartments(conn: sa.Connection) -> None:
    """Each current Device's compartment rows that the indexer gives now and the table lacks."""
    indexer = Indexer()
    last = 0
    while rows := conn.execute(_DEVICES, {"last": last, "size": _BATCH}).all():
        last = rows[-1].pk
        present = {(r.res_pk, r.patient_id) for r in conn.execute(_LINKED, {"pks": [row.pk for row in rows]})}
        missing = [
            {"res_pk": row.pk, "patient_id": patient}
            for row in rows
            for patient in sorted(indexer.index(orjson.loads(row.content)).patients)
            if (row.pk, patient) not in present
        ]
        if missing:
            conn.execute(_LINK, missing)


def upgrade() -> None:
    _device_compartments(op.get_bind())


def downgrade() -> None:
    """Nothing to undo: the rows are those the store writes for a Device today."""
