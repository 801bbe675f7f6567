"""``Patient/[id]/$everything``: the patient's whole compartment, paged, with referenced support data.

Paging is by key over the compartment rows, so there is no hidden cap: every resource is
reachable through ``next`` links. Each page also carries the practitioners, organisations,
locations and medications its resources refer to (support data that is in no patient's
compartment), as HAPI does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, func, select

from sharedcare.fhir.errors import BadRequest
from sharedcare.fhir.search.engine import AccessFilter, local_compartment_link
from sharedcare.fhir.search.reference import local
from sharedcare.fhir.store import ResourceStore, Stored
from sharedcare.storage.engine import any_of, planned_once
from sharedcare.storage.tables import idx_reference, resource, resource_compartment

_R = resource.alias("r")
_T = resource.alias("t")
_REF = idx_reference.alias("ref")
_COLUMNS = ("pk", "type", "id", "version", "last_updated", "deleted", "content")
SUPPORT_TYPES = ("Practitioner", "PractitionerRole", "Organization", "Location", "Medication", "Substance")


@dataclass
class EverythingPage:
    """One page of a patient's record."""

    matches: list[Stored]
    included: list[Stored] = field(default_factory=list)
    total: int | None = None
    next_cursor: str | None = None


MAX_PK = 2**63 - 1


def page_key(page: str) -> int:
    """The row key a ``_page`` link of ``$everything`` holds: a whole number in 0..2**63-1."""
    if len(page) > 19 or not (page.isascii() and page.isdigit()) or int(page) > MAX_PK:
        raise BadRequest("Invalid $everything page link (_page)")
    return int(page)


def everything(
    conn: Connection,
    store: ResourceStore,
    patient_id: str,
    *,
    count: int,
    since: datetime | None = None,
    types: tuple[str, ...] = (),
    page: str | None = None,
    access: AccessFilter | None = None,
    base_url: str = "",
) -> EverythingPage:
    """One page of the compartment of ``patient_id`` (which must exist and not be deleted)."""
    store.read(conn, "Patient", patient_id)
    r = _R
    conds: list[Any] = [
        r.c.deleted.is_(False),
        r.c.pk.in_(
            select(resource_compartment.c.res_pk).where(resource_compartment.c.patient_id == patient_id)
        ),
        local_compartment_link(r, patient_id, base_url),
    ]
    if since is not None:
        conds.append(r.c.last_updated >= since)
    if types:
        conds.append(r.c.type.in_(types))
    if access is not None:
        conds.append(access(r, types or None, patient=patient_id, in_record=True))  # (``conds``)
    if page is not None:
        conds.append(r.c.pk > page_key(page))
    # the first page counts the matches in the same pass (the window sees them all before the
    # LIMIT, over the keys only): a count statement of its own ran the access filter again
    keys = (
        select(r.c.pk, func.count().over().label("total"))
        .where(*conds)
        .order_by(r.c.pk)
        .limit(count + 1)
        .subquery("pg")
    )
    c = _T
    stmt = (
        select(
            c.c.pk, c.c.type, c.c.id, c.c.version, c.c.last_updated, c.c.deleted, c.c.content, keys.c.total
        )
        .select_from(keys.join(c, c.c.pk == keys.c.pk))
        .order_by(c.c.pk)
    )
    with planned_once(conn):
        rows = list(conn.execute(stmt))
    total = (rows[0].total if rows else 0) if page is None else None
    more = len(rows) > count
    rows = rows[:count]
    matches = [Stored(x.pk, x.type, x.id, x.version, x.last_updated, x.deleted, x.content) for x in rows]
    result = EverythingPage(matches, total=total, next_cursor=str(rows[-1].pk) if more and rows else None)
    if matches:
        # the page's keys as values (a sub-query selecting the page again ran the filter again)
        seen = {m.pk for m in matches}
        result.included = _support(conn, sorted(seen), seen, types, access, base_url)
    return result


def _support(
    conn: Connection,
    page_pks: list[int],
    seen: set[int],
    types: tuple[str, ...],
    access: AccessFilter | None,
    base_url: str,
) -> list[Stored]:
    wanted = [t for t in SUPPORT_TYPES if not types or t in types]
    if not wanted:
        return []
    t, ref = _T, _REF
    targets = (
        select(ref.c.target_type, ref.c.target_id)
        .where(
            any_of(ref.c.res_pk, page_pks, conn.dialect.name),
            ref.c.target_type.in_(wanted),
            local(ref, base_url),
        )
        .distinct()
        .subquery()
    )
    conds: list[Any] = [t.c.deleted.is_(False)]
    if access is not None:
        conds.append(access(t, wanted))
    stmt = (
        select(t.c.pk, t.c.type, t.c.id, t.c.version, t.c.last_updated, t.c.deleted, t.c.content)
        .select_from(targets)
        .join(t, and_(t.c.type == targets.c.target_type, t.c.id == targets.c.target_id))
        .where(*conds)
    )
    out = []
    with planned_once(conn):  # by the page's keys: one plan serves every page
        rows = list(conn.execute(stmt))
    for x in rows:
        if x.pk not in seen:
            seen.add(x.pk)
            out.append(Stored(x.pk, x.type, x.id, x.version, x.last_updated, x.deleted, x.content))
    return out
