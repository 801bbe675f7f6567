"""Access traces follow the life cycle of their record (art. 8 RGD, LAW-AND-CROSSBORDER §A.2).

- **Archived at closure.** The archive marker is the record's own life-cycle row
  (``record_status``): while the record is not open (closed, or deleted), its traces are
  archived. Closure makes the *data* inaccessible, but the holder may still sign in, read
  their access history (art. 8(2)) and reopen within ten years, so archived traces stay
  readable by the holder and their representatives, and by agency staff and trusted platform
  clients (support, reopening requests); professionals and facility systems no longer see
  them. Reopening the record lifts the archive, with nothing to restore.
- **Deleted with the record.** When the record is deleted (ten years after closure, or on
  opt-out) :func:`delete_traces` deletes every record naming the patient but keeps, for each,
  a tombstone (key, chain, seq, ``prev_hash``, hash) in ``audit_tombstone``: the chains still
  verify across the gap. The deletion is itself recorded, as a ``delete-traces`` record naming
  the patient and the number of records deleted, never their content. The records that state
  the deletion (:data:`DELETION_INTERACTIONS`) are kept: they are the agency's proof that it
  deleted the record and hold no health data.

On PostgreSQL the append-only triggers allow a deletion only inside the transaction-local
setting ``sharedcare.audit_redaction = on`` (migration 0011), which only this module sets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, and_, delete, insert, literal, select, text

from sharedcare.access.models import record_status
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit import log as audit
from sharedcare.audit.models import REDACTION_INTERACTION, audit_log, audit_tombstone

__all__ = [
    "DELETE_TRACES",
    "DELETION_INTERACTIONS",
    "Redaction",
    "archived_patients",
    "delete_traces",
    "may_read_archived",
    "readable",
]

DELETE_TRACES = REDACTION_INTERACTION
"""``interaction`` of the record announcing a deletion of traces."""
DELETION_INTERACTIONS = frozenset({"opt-out", "delete-after-retention", DELETE_TRACES})
"""``interaction`` of the ``delete`` records of a record's deletion (written by
``access.lifecycle`` and here): those records are never redacted."""
_CHUNK = 500
_ARCHIVE_READERS = frozenset(
    {PrincipalKind.PATIENT, PrincipalKind.REPRESENTATIVE, PrincipalKind.HELPDESK, PrincipalKind.ADMIN}
)


@dataclass(frozen=True, slots=True)
class Redaction:
    """What :func:`delete_traces` did: how many records went, and the key of the record saying so
    (None when there was nothing to delete)."""

    patient_id: str
    records: int
    announced_by: int | None


# --------------------------------------------------------------------------------------------
# Archive
# --------------------------------------------------------------------------------------------


def may_read_archived(p: Principal) -> bool:
    """The holder, their representatives, agency staff and trusted platform clients."""
    return p.kind in _ARCHIVE_READERS or (p.kind is PrincipalKind.SYSTEM and p.trusted)


def archived_patients(conn: Connection, patient_ids: Iterable[str]) -> set[str]:
    """Those of ``patient_ids`` whose traces are archived: their record is closed or deleted."""
    wanted = sorted(set(patient_ids))
    s = record_status
    found: set[str] = set()
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        found.update(
            conn.execute(
                select(s.c.patient_id).where(s.c.patient_id.in_(chunk), s.c.status != "open")
            ).scalars()
        )
    return found


def readable(conn: Connection, p: Principal, entries: Sequence[audit.AuditEntry]) -> list[audit.AuditEntry]:
    """``entries`` without the archived traces ``p`` may not read (on top of the access decision,
    which already chose whose log ``p`` reads)."""
    if may_read_archived(p):
        return list(entries)
    hidden = archived_patients(conn, {e.record.patient_id for e in entries if e.record.patient_id})
    return [e for e in entries if e.record.patient_id not in hidden]


# --------------------------------------------------------------------------------------------
# Deletion
# --------------------------------------------------------------------------------------------


def delete_traces(conn: Connection, patient_id: str, by: Principal) -> Redaction:
    """Delete every record naming ``patient_id`` (but the records of a deletion), in ``conn``'s
    transaction, leaving tombstones; return what was done.

    Call it in the transaction that deletes the record itself, after the record is closed to
    every reader. The ``delete-traces`` record is appended first (its key goes into every
    tombstone), so the caller's transaction holds a chain head from then on: append-last
    ordering, as ``audit.append`` asks, is kept by calling this at the end of the deletion.
    """
    t = audit_log.c
    targets = [
        int(pk)
        for pk in conn.execute(
            select(t.pk)
            .where(
                t.patient_id == patient_id,
                ~and_(
                    t.action == str(audit.AuditAction.DELETE),
                    t.interaction.is_not(None),
                    t.interaction.in_(sorted(DELETION_INTERACTIONS)),
                ),
            )
            .order_by(t.pk)
        ).scalars()
    ]
    if not targets:
        return Redaction(patient_id, 0, None)
    announced = audit.append(
        conn,
        audit.record_for(
            by,
            audit.AuditAction.DELETE,
            patient_id=patient_id,
            interaction=DELETE_TRACES,
            outcome_desc=f"traces of Patient/{patient_id} deleted under art. 8: {len(targets)} records",
            query=f"records={len(targets)}",
        ),
    )
    # Transaction-local, and switched off again at once: the rest of the caller's transaction
    # (and a rolled-back one) gets the triggers' full refusal back.
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        conn.execute(_REDACTION_ON)
    for start in range(0, len(targets), _CHUNK):
        chunk = targets[start : start + _CHUNK]
        kept = select(t.pk, t.chain, t.seq, t.prev_hash, t.hash, literal(announced)).where(t.pk.in_(chunk))
        conn.execute(
            insert(audit_tombstone).from_select(
                ["pk", "chain", "seq", "prev_hash", "hash", "redacted_by"], kept
            )
        )
        conn.execute(delete(audit_log).where(t.pk.in_(chunk)))
    if postgres:
        conn.execute(_REDACTION_OFF)
    return Redaction(patient_id, len(targets), announced)


_REDACTION_ON = text("SELECT set_config('sharedcare.audit_redaction', 'on', true)")
_REDACTION_OFF = text("SELECT set_config('sharedcare.audit_redaction', 'off', true)")
