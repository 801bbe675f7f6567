"""Withdrawal of a professional's licence to practise: the holders are told (§A.3, art. 7(4)).

The Minister's temporary or final withdrawal reaches the platform through the national
directory, which marks the professional's ``Practitioner`` inactive (``active = false``). The
access decision reads that same signal (``AccessPolicy._licensed``) and ends every right of the
professional at once; nothing here changes a right. What art. 7(4) adds, "the Agence informs the
DSP holder", is this job, run by ``sharedcare lifecycle``: for each withdrawal not seen before,
one ``licence-withdrawn`` notification to every holder who had a care relationship naming the
professional (code handed over, permanent grant, referring physician, emergency override) that
was active when the licence was withdrawn, and a trace in that holder's access log.

A withdrawal is the directory version that made the professional inactive (after an active
one, or the first); it is kept in ``licence_withdrawal`` so that each is announced once, and a
licence restored and withdrawn again is announced again. Facility and emergency-department
registrations name the organisation, not the professional, and are left out: the facility's
other professionals go on caring for the holder.

A care facility's authorisation is withdrawn the same way: the directory marks its
``Organization`` inactive. The access decision then ignores every registration at the facility
(``policy._authorised``: its professionals and its system lose what the registrations gave them;
their own solo relationships stay; nothing is written on the facility's behalf any more:
``AccessPolicy.write_denial``), and ``notify_facility_withdrawals`` (run by ``sharedcare
lifecycle`` beside ``notify_withdrawals``) tells each holder registered there when it was
withdrawn, once per withdrawal (``facility_withdrawal``), with a notice of its own (kind
``facility-withdrawn``, the facility's name) and an access-log trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Connection, Table, or_, select, update

from sharedcare.access.models import care_relationship, facility_withdrawal, licence_withdrawal, record_status
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit import log as audit
from sharedcare.notify import outbox
from sharedcare.storage.tables import idx_token, resource, resource_version

JOB = Principal(
    PrincipalKind.SYSTEM, "sharedcare-lifecycle", display="SharedCare life-cycle job", trusted=True
)


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """A withdrawal announced by this run: to whom (``holders``: patient ids)."""

    practitioner_id: str
    version: int
    withdrawn_at: datetime
    display: str
    holders: tuple[str, ...]


def inactive_practitioners(conn: Connection) -> dict[str, int]:
    """Practitioner id → row key of every professional the directory marks inactive (the same
    index rows ``AccessPolicy._licensed`` reads)."""
    return _inactive(conn, "Practitioner")


def _inactive(conn: Connection, rtype: str) -> dict[str, int]:
    """Id → row key of every directory entry of ``rtype`` marked inactive (``active`` false)."""
    r, t = resource, idx_token
    rows = conn.execute(
        select(r.c.id, r.c.pk)
        .select_from(t.join(r, r.c.pk == t.c.res_pk))
        .where(
            t.c.rtype == rtype,
            t.c.param == "active",
            t.c.code == "false",
            r.c.type == rtype,
            r.c.deleted.is_(False),
        )
    )
    return {row.id: row.pk for row in rows}


@dataclass(frozen=True, slots=True)
class _Run:
    """The directory history of an inactive professional, read backwards from now."""

    version: int
    """The version that made the professional inactive (the start of the current inactive run)."""
    withdrawn_at: datetime
    restored_at: datetime | None
    """When the version before it (active) was stored: the end of any earlier withdrawal."""
    current: dict[str, Any]


def _inactive_run(conn: Connection, res_pk: int) -> _Run | None:
    """The current inactive run of a Practitioner; None if its history does not show one."""
    v = resource_version
    rows = conn.execute(
        select(v.c.version, v.c.last_updated, v.c.deleted, v.c.content)
        .where(v.c.res_pk == res_pk)
        .order_by(v.c.version.desc())
    )
    start: tuple[int, datetime] | None = None
    current: dict[str, Any] | None = None
    before: datetime | None = None
    for row in rows:
        content = None if row.deleted or row.content is None else orjson.loads(row.content)
        if content is None or content.get("active") is not False:
            before = row.last_updated
            break
        current = current or content
        start = (row.version, row.last_updated)
    if start is None or current is None:
        return None
    return _Run(start[0], start[1], before, current)


def display_name(practitioner: dict[str, Any]) -> str:
    """The professional's name as the directory gives it (official name first)."""
    names = [n for n in practitioner.get("name") or [] if isinstance(n, dict)]
    if not names:
        return ""
    name = next((n for n in names if n.get("use") == "official"), names[0])
    if name.get("text"):
        return str(name["text"])
    parts = [*name.get("prefix", []), *name.get("given", []), name.get("family", "")]
    return " ".join(str(p) for p in parts if p)


def holders_at(conn: Connection, practitioner_id: str, moment: datetime) -> list[str]:
    """Holders with a relationship naming the professional that was active at ``moment`` (ended
    or revoked since, or not), whose record still exists."""
    cr = care_relationship
    return _holders(conn, moment, cr.c.practitioner_id == practitioner_id)


def _holders(conn: Connection, moment: datetime, *naming: ColumnElement[bool]) -> list[str]:
    """Holders of an existing record with a relationship matching ``naming`` active at ``moment``
    (ended or revoked since, or not): whom a withdrawal concerns, professional or facility."""
    cr, s = care_relationship, record_status
    deleted = select(s.c.patient_id).where(s.c.status == "deleted")
    rows = conn.execute(
        select(cr.c.patient_id)
        .where(
            *naming,
            cr.c.starts <= moment,
            or_(cr.c.ends.is_(None), cr.c.ends > moment),
            or_(cr.c.revoked_at.is_(None), cr.c.revoked_at > moment),
            cr.c.patient_id.not_in(deleted),
        )
        .distinct()
    )
    return sorted(rows.scalars())


def _record(conn: Connection, values: dict[str, Any], table: Table = licence_withdrawal) -> bool:
    """Insert the withdrawal unless another run did; True if this run did."""
    stmt: Any
    keys = [c.name for c in table.columns if c.name in ("practitioner_id", "organization_id", "version")]
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(table).on_conflict_do_nothing(index_elements=keys)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(table).on_conflict_do_nothing(index_elements=keys)
    return bool(conn.execute(stmt.values(values)).rowcount)


def _open_withdrawals(
    conn: Connection, table: Table, subject: str, inactive: dict[str, int], now: datetime
) -> dict[str, Any]:
    """The announced withdrawals still open, by subject id (``subject``: the id column); first
    closes those whose subject is active again. Shared by licences and facilities."""
    announced = {
        row[1]: row
        for row in conn.execute(
            select(table.c.pk, table.c[subject], table.c.version).where(table.c.restored_at.is_(None))
        )
    }
    for subject_id, row in announced.items():
        if subject_id not in inactive:
            conn.execute(update(table).where(table.c.pk == row.pk).values(restored_at=now))
    return announced


def _announced_already(conn: Connection, table: Table, previous: Any, run: _Run) -> bool:
    """True if this inactive run was announced already. If an earlier one was (restored and
    withdrawn again between two runs), that earlier withdrawal has ended: it is closed."""
    if previous is None:
        return False
    if previous.version == run.version:
        return True
    ended = run.restored_at or run.withdrawn_at
    conn.execute(update(table).where(table.c.pk == previous.pk).values(restored_at=ended))
    return False


def _inform_holders(
    conn: Connection,
    actor: Principal,
    holders: list[str],
    now: datetime,
    kind: str,
    rtype: str,
    subject_id: str,
    run: _Run,
    display: str,
) -> None:
    """Queue one message a holder (once-only by its dedupe key) and audit that each was told;
    the same for a professional's licence and a facility's authorisation."""
    key = "practitioner_id" if rtype == "Practitioner" else "organization_id"
    interaction = "licence-withdrawn" if rtype == "Practitioner" else "facility-authorisation-withdrawn"
    for patient_id in holders:
        outbox.queue(
            conn,
            patient_id,
            kind,
            now,
            dedupe=f"{kind}:{subject_id}:{run.version}:{patient_id}",
            **{key: subject_id},
            display=display,
            date=run.withdrawn_at.isoformat(),
        )
    audit.append_all(
        conn,
        [
            audit.record_for(
                actor,
                audit.AuditAction.CONSENT_CHANGE,
                patient_id=patient_id,
                resources=(f"{rtype}/{subject_id}",),
                interaction=f"{interaction} (holder informed)",
            )
            for patient_id in holders
        ],
    )


def notify_withdrawals(conn: Connection, now: datetime, actor: Principal = JOB) -> list[Withdrawal]:
    """Announce every licence withdrawal not announced yet; note the licences restored since.
    (The facilities' withdrawn authorisations: ``notify_facility_withdrawals``.)

    Works in the caller's transaction: the notifications, the audit records and the
    ``licence_withdrawal`` rows commit together.
    """
    lw = licence_withdrawal
    inactive = inactive_practitioners(conn)
    announced = _open_withdrawals(conn, lw, "practitioner_id", inactive, now)
    found: list[Withdrawal] = []
    for practitioner_id, res_pk in sorted(inactive.items()):
        run = _inactive_run(conn, res_pk)
        if run is None or _announced_already(conn, lw, announced.get(practitioner_id), run):
            continue
        version, withdrawn_at = run.version, run.withdrawn_at
        holders = holders_at(conn, practitioner_id, withdrawn_at)
        recorded = _record(
            conn,
            {
                "practitioner_id": practitioner_id,
                "version": version,
                "withdrawn_at": withdrawn_at,
                "detected_at": now,
                "holders": len(holders),
            },
        )
        if not recorded:
            continue
        display = display_name(run.current) or practitioner_id
        _inform_holders(
            conn, actor, holders, now, outbox.LICENCE_WITHDRAWN, "Practitioner", practitioner_id, run, display
        )
        found.append(Withdrawal(practitioner_id, version, withdrawn_at, display, tuple(holders)))
    return found


@dataclass(frozen=True, slots=True)
class FacilityWithdrawal:
    """A facility's withdrawn authorisation announced by this run: to whom (patient ids)."""

    organization_id: str
    version: int
    withdrawn_at: datetime
    display: str
    holders: tuple[str, ...]


def facility_authorised(conn: Connection, organization_id: str) -> bool:
    """The directory does not mark the facility inactive (its authorisation stands)."""
    r, t = resource, idx_token
    inactive = conn.execute(
        select(r.c.pk)
        .select_from(t.join(r, r.c.pk == t.c.res_pk))
        .where(
            r.c.type == "Organization",
            r.c.id == organization_id,
            r.c.deleted.is_(False),
            t.c.param == "active",
            t.c.code == "false",
        )
        .limit(1)
    ).first()
    return inactive is None


def registered_at(conn: Connection, organization_id: str, moment: datetime) -> list[str]:
    """Holders with a registration at the facility (a relationship naming the organisation and
    no professional) that was active at ``moment``, whose record still exists."""
    cr = care_relationship
    return _holders(conn, moment, cr.c.organization_id == organization_id, cr.c.practitioner_id.is_(None))


def notify_facility_withdrawals(
    conn: Connection, now: datetime, actor: Principal = JOB
) -> list[FacilityWithdrawal]:
    """Announce every withdrawn facility authorisation not announced yet to the holders
    registered there when it was withdrawn; note the authorisations restored since. In the
    caller's transaction, like ``notify_withdrawals``."""
    fw = facility_withdrawal
    inactive = _inactive(conn, "Organization")
    announced = _open_withdrawals(conn, fw, "organization_id", inactive, now)
    found: list[FacilityWithdrawal] = []
    for organization_id, res_pk in sorted(inactive.items()):
        run = _inactive_run(conn, res_pk)
        if run is None or _announced_already(conn, fw, announced.get(organization_id), run):
            continue
        holders = registered_at(conn, organization_id, run.withdrawn_at)
        values = {
            "organization_id": organization_id,
            "version": run.version,
            "withdrawn_at": run.withdrawn_at,
            "detected_at": now,
            "holders": len(holders),
        }
        if not _record(conn, values, fw):
            continue
        display = str(run.current.get("name") or organization_id)
        _inform_holders(
            conn,
            actor,
            holders,
            now,
            outbox.FACILITY_WITHDRAWN,
            "Organization",
            organization_id,
            run,
            display,
        )
        found.append(
            FacilityWithdrawal(organization_id, run.version, run.withdrawn_at, display, tuple(holders))
        )
    return found
