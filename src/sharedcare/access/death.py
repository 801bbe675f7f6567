"""Closure at death (art. 4(5), LAW-AND-CROSSBORDER.md §A.2): the record closes as soon as the
death is known, not at the next ``sharedcare lifecycle`` run.

The death reaches the platform as the holder's ``Patient`` written with ``deceasedBoolean`` true
or a ``deceasedDateTime`` (the CCSS notice or a death certificate, by whatever write path). A
write effect (``fhir.service.register_write_effect``) closes the record in the transaction of
that write, so the record is never seen written-deceased but open; a rolled-back write closes
nothing. Importing this module registers the effect (``app.py`` does); the scheduled job still
closes the records of deceased holders written before, or by code that did not import it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from sharedcare.access.lifecycle import close
from sharedcare.fhir.service import register_write_effect
from sharedcare.fhir.store import Stored, Write


def is_deceased(patient: dict[str, Any]) -> bool:
    """Whether a ``Patient`` says its person died (``deceased[x]``: true, or a date)."""
    return patient.get("deceasedBoolean") is True or bool(patient.get("deceasedDateTime"))


_CLOSED_HERE = "sharedcare_closed_at_death"


def close_at_death(conn: Connection, write: Write, stored: Stored) -> None:
    """The write effect on ``Patient``: close the record of a holder written deceased, dated as
    the write (the ten-year deletion clock of art. 4(3) starts there)."""
    deceased = write.resource is not None and is_deceased(write.resource)
    if deceased and close(conn, write.id, "death", stored.last_updated):
        txn, closed = conn.info.get(_CLOSED_HERE, (None, set()))
        if txn is not conn.get_transaction():
            txn, closed = conn.get_transaction(), set()
        closed.add(write.id)
        conn.info[_CLOSED_HERE] = (txn, closed)


def closed_in_this_transaction(conn: Connection) -> frozenset[str]:
    """Records this transaction closed at death: the rest of the same transaction (a Bundle that
    writes the deceased Patient and the data of their record) may still write into them, as it
    would have had the Patient entry come last."""
    txn, closed = conn.info.get(_CLOSED_HERE, (None, set()))
    return frozenset(closed) if txn is not None and txn is conn.get_transaction() else frozenset()


register_write_effect("Patient", close_at_death)
