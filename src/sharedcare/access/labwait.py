"""The end of a facility's access renewed "until a lab result arrives" (Annex 1 §3, §A.3).

With the holder's agreement, a facility's registration is renewed until a laboratory result is
filed in the record (``care.renew_until_lab_result``); the relationship then lasts the art. 9(3)
filing deadline more. The row keeps ``ends`` at its safety cap while it waits, and a write effect
(``fhir.service.register_write_effect``) sets ``ends`` in the transaction that files the result,
so the access decision stays one SQL filter on ``ends`` and no job has to run. A rolled-back
write ends nothing. ``access.care`` imports this module, so the effect is registered wherever a
relationship can start waiting.

A result is a final (or amended, corrected, appended) ``Observation`` or ``DiagnosticReport``, or
a current ``DocumentReference``, whose data category is ``lab-results``; a preliminary or
registered one is not the result yet. Only the first version of a resource that is a result
ends a wait (created as one, or its previous version was not one): an amendment, or an old
result written again, is not the result awaited.

The effect locks the relationships it ends (``SELECT … FOR UPDATE``) as ``care.renew`` locks the
one it prolongs, so a renewal and a result filed at the same time never write back a stale end.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, select, update

from sharedcare.access.categories import DataCategory, classify
from sharedcare.access.models import care_relationship
from sharedcare.fhir.service import register_write_effect
from sharedcare.fhir.store import Stored, Write
from sharedcare.storage.tables import resource_compartment, resource_version

RESULT_STATUSES: Mapping[str, frozenset[str]] = {
    "Observation": frozenset({"final", "amended", "corrected"}),
    "DiagnosticReport": frozenset({"final", "amended", "corrected", "appended"}),
    "DocumentReference": frozenset({"current"}),
}
"""Per resource type, the statuses of a lab result that has arrived."""


def is_lab_result(res: Mapping[str, Any]) -> bool:
    """Whether ``res`` is a laboratory result that has arrived (see the module's docstring)."""
    statuses = RESULT_STATUSES.get(res.get("resourceType", ""))
    if statuses is None or res.get("status") not in statuses:
        return False
    if res.get("docStatus") not in (None, "final", "amended"):
        return False
    return classify(res) == DataCategory.LAB_RESULTS


def _first_result(conn: Connection, write: Write, stored: Stored) -> bool:
    """Whether ``stored`` is the first version of its resource that is a result: created as one,
    or its previous version was not one (a deleted resource written again: none before was)."""
    previous = write.current
    if previous is None:
        return True
    if not previous.deleted:
        return not is_lab_result(previous.resource())
    rv = resource_version
    earlier = conn.execute(
        select(rv.c.content).where(
            rv.c.res_pk == stored.pk, rv.c.version < stored.version, rv.c.content.is_not(None)
        )
    ).scalars()
    return not any(is_lab_result(orjson.loads(content)) for content in earlier)


def end_lab_wait(conn: Connection, write: Write, stored: Stored) -> None:
    """The write effect: a lab result filed in a record ends its registrations waiting for one,
    the filing deadline after the result (never before their end before the wait, never after
    their cap)."""
    if write.resource is None or stored.deleted or not is_lab_result(write.resource):
        return
    if not _first_result(conn, write, stored):
        return
    cr = care_relationship
    filed = stored.last_updated
    patients = select(resource_compartment.c.patient_id).where(resource_compartment.c.res_pk == stored.pk)
    waiting = conn.execute(
        select(cr.c.id, cr.c.ends, cr.c.lab_wait_floor, cr.c.lab_wait_days)
        .where(
            cr.c.patient_id.in_(patients),
            cr.c.lab_wait_since.is_not(None),
            cr.c.lab_wait_since <= filed,
            cr.c.lab_result_at.is_(None),
            cr.c.revoked_at.is_(None),
            cr.c.ends > filed,
        )
        .order_by(cr.c.id)  # rows locked in one order: two results of a holder cannot deadlock
        .with_for_update(of=cr)
    ).all()
    for row in waiting:
        after = filed + timedelta(days=row.lab_wait_days or 0)
        ends = min(row.ends, max(row.lab_wait_floor or after, after))
        conn.execute(update(cr).where(cr.c.id == row.id).values(ends=ends, lab_result_at=filed))


for _type in RESULT_STATUSES:
    register_write_effect(_type, end_lab_wait)
