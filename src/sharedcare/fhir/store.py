"""The versioned resource store: every version kept, the current one indexed for search.

Callers pass an open SQLAlchemy ``Connection`` so that several writes (a transaction Bundle)
share one database transaction; the store never commits on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Table, and_, bindparam, delete, insert, or_, select, text, tuple_, update

from sharedcare.fhir.errors import Gone, NotFound
from sharedcare.fhir.indexer import Indexer, IndexRows, default_indexer
from sharedcare.storage.tables import (
    INDEX_TABLES,
    idx_reference,
    resource,
    resource_compartment,
    resource_version,
)

Classifier = Callable[[dict[str, Any]], "str | None"]
"""Gives a resource's data category (the access matrix's row); None when it is not patient data."""


CONFIDENTIALITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
CONFIDENTIALITY_ORDER = "ULMNRV"
"""v3-Confidentiality codes from the least to the most restrictive."""


def confidentiality_of(res: Mapping[str, Any]) -> str | None:
    """The strictest v3-Confidentiality code of a resource: its ``meta.security``, its
    ``securityLabel`` (DocumentReference) and a Composition's ``confidentiality``; None when it
    carries none. Stored on the row so that the access decision reads it without a join."""
    codings: list[Any] = list((res.get("meta") or {}).get("security") or ())
    for label in res.get("securityLabel") or ():
        if isinstance(label, dict):
            codings.extend(label.get("coding") or () if "coding" in label else (label,))
    codes = [
        c.get("code") for c in codings if isinstance(c, dict) and c.get("system") == CONFIDENTIALITY_SYSTEM
    ]
    if res.get("resourceType") == "Composition":
        codes.append(res.get("confidentiality"))
    found = [c for c in codes if isinstance(c, str) and len(c) == 1 and c in CONFIDENTIALITY_ORDER]
    return max(found, key=CONFIDENTIALITY_ORDER.index) if found else None


def _strictest(*codes: str | None) -> str | None:
    """The most restrictive of some v3-Confidentiality codes (None when there is none)."""
    found = [c for c in codes if c]
    return max(found, key=CONFIDENTIALITY_ORDER.index) if found else None


def _level_changed(w: Write) -> bool:
    """Whether the confidentiality a write stores on its row differs from the row's before it
    (``ResourceStore._inherit_document_labels``). The row's level is ``confidentiality_of`` its
    current content, but for a deleted row, which keeps its last label: unknown, so it counts.
    A content that names no confidentiality system (nor is a Composition) has none, unparsed."""
    assert w.resource is not None
    new = confidentiality_of(w.resource)
    if w.current is None:
        return new is not None
    content = w.current.content
    if content is None:
        return True
    if CONFIDENTIALITY_SYSTEM not in content and '"Composition"' not in content:
        return new is not None
    return confidentiality_of(orjson.loads(content)) != new


def utcnow() -> datetime:
    """Current time as naive UTC (the stored form)."""
    return datetime.now(UTC).replace(tzinfo=None)


def instant(moment: datetime) -> str:
    """A stored naive-UTC datetime as a FHIR instant."""
    return moment.isoformat(timespec="microseconds") + "Z"


@dataclass(slots=True)
class Stored:
    """One stored version of a resource (content is the JSON text, None when deleted)."""

    pk: int
    type: str
    id: str
    version: int
    last_updated: datetime
    deleted: bool
    content: str | None
    method: str = "PUT"

    def resource(self) -> dict[str, Any]:
        """The resource as a dict (a fresh copy each call)."""
        if self.content is None:
            raise Gone(f"Resource {self.type}/{self.id} is deleted")
        parsed: dict[str, Any] = orjson.loads(self.content)
        return parsed

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'


@dataclass(slots=True)
class Write:
    """A write to apply: create/update carry the final resource (id set), delete carries none."""

    method: str  # POST | PUT | PATCH | DELETE
    type: str
    id: str
    resource: dict[str, Any] | None
    current: Stored | None  # the current row when the resource already exists (deleted or not)


def stored_from_row(row: Any) -> Stored:
    """A ``Stored`` from a ``resource`` row or a ``resource_version`` row (``res_pk``, ``method``)."""
    mapping = row._mapping
    pk = mapping["pk"] if "pk" in mapping else mapping["res_pk"]
    method = mapping.get("method", "PUT")
    return Stored(pk, row.type, row.id, row.version, row.last_updated, row.deleted, row.content, method)


class ResourceStore:
    """Reads and writes resources, their versions, index rows and compartment links."""

    def __init__(self, indexer: Indexer | None = None, classify: Classifier | None = None) -> None:
        self.indexer = indexer or default_indexer()
        self.classify = classify

    # -- reads -------------------------------------------------------------------------------
    def current(self, conn: Connection, rtype: str, rid: str) -> Stored | None:
        """The current row of a resource, deleted or not; None if it never existed."""
        row = conn.execute(select(resource).where(resource.c.type == rtype, resource.c.id == rid)).first()
        return stored_from_row(row) if row else None

    def current_many(
        self, conn: Connection, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], Stored]:
        """Current rows of several resources at once (missing ones are absent from the result)."""
        wanted = list(set(keys))
        found: dict[tuple[str, str], Stored] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = conn.execute(select(resource).where(tuple_(resource.c.type, resource.c.id).in_(chunk)))
            for row in rows:
                found[(row.type, row.id)] = stored_from_row(row)
        return found

    def read(self, conn: Connection, rtype: str, rid: str) -> Stored:
        """The current version; NotFound if it never existed, Gone if it is deleted."""
        stored = self.current(conn, rtype, rid)
        if stored is None:
            raise NotFound(f"Resource {rtype}/{rid} is not known")
        if stored.deleted:
            raise Gone(f"Resource {rtype}/{rid} was deleted (version {stored.version})")
        return stored

    def vread(self, conn: Connection, rtype: str, rid: str, version: int) -> Stored:
        """One version; Gone if that version is a deletion."""
        row = conn.execute(
            select(resource_version).where(
                resource_version.c.type == rtype,
                resource_version.c.id == rid,
                resource_version.c.version == version,
            )
        ).first()
        if row is None:
            raise NotFound(f"Version {version} of {rtype}/{rid} is not known")
        stored = stored_from_row(row)
        if stored.deleted:
            raise Gone(f"Version {version} of {rtype}/{rid} is a deletion")
        return stored

    def by_pks(self, conn: Connection, pks: Sequence[int]) -> list[Stored]:
        """Current rows for primary keys, in the order given (missing or deleted ones skipped)."""
        found: dict[int, Stored] = {}
        for start in range(0, len(pks), 500):
            rows = conn.execute(
                select(resource).where(
                    resource.c.pk.in_(pks[start : start + 500]), resource.c.deleted.is_(False)
                )
            )
            for row in rows:
                found[row.pk] = stored_from_row(row)
        return [found[pk] for pk in pks if pk in found]

    # -- writes ------------------------------------------------------------------------------
    def apply(self, conn: Connection, writes: Sequence[Write], now: datetime | None = None) -> list[Stored]:
        """Apply writes in bulk inside the caller's transaction; returns the new versions in order.

        Each write gets the next version number and ``meta.versionId``/``meta.lastUpdated``; the
        index rows of changed resources are replaced.
        """
        now = now or utcnow()
        stamp = instant(now)
        results: list[Stored] = []
        new_rows: list[dict[str, Any]] = []
        new_positions: list[int] = []
        indexed: list[IndexRows | None] = [
            self.indexer.index(w.resource) if w.resource is not None else None for w in writes
        ]
        categories = [self._category(w) for w in writes]
        for position, w in enumerate(writes):
            version = (w.current.version + 1) if w.current else 1
            content: str | None = None
            if w.resource is not None:
                meta = dict(w.resource.get("meta") or {})
                meta["versionId"] = str(version)
                meta["lastUpdated"] = stamp
                w.resource["meta"] = meta
                content = orjson.dumps(w.resource).decode()
            deleted = w.method == "DELETE"
            stored = Stored(
                w.current.pk if w.current else 0, w.type, w.id, version, now, deleted, content, w.method
            )
            results.append(stored)
            if w.current is None:
                new_rows.append(
                    {
                        "type": w.type,
                        "id": w.id,
                        "version": version,
                        "last_updated": now,
                        "deleted": deleted,
                        "content": content,
                        "category": categories[position],
                        "confidentiality": confidentiality_of(w.resource) if w.resource else None,
                    }
                )
                new_positions.append(position)
        if new_rows:
            pks = self._new_pks(conn, new_rows)
            for position, pk in zip(new_positions, pks, strict=True):
                results[position].pk = pk
        changed_pks = [w.current.pk for w in writes if w.current is not None]
        for w, stored, category in zip(writes, results, categories, strict=True):
            if w.current is not None:
                values: dict[str, Any] = {
                    "version": stored.version,
                    "last_updated": now,
                    "deleted": stored.deleted,
                    "content": stored.content,
                }
                if w.resource is not None:
                    values["category"] = category
                    values["confidentiality"] = confidentiality_of(w.resource)
                conn.execute(update(resource).where(resource.c.pk == stored.pk).values(**values))
        if changed_pks:
            for table in INDEX_TABLES.values():
                conn.execute(delete(table).where(table.c.res_pk.in_(changed_pks)))
            # a deleted resource stays in its patient's compartment (and category): the record
            # still owns it, so the access decision over its history is the one it had alive
            rewritten = [w.current.pk for w in writes if w.current is not None and w.resource is not None]
            if rewritten:
                conn.execute(delete(resource_compartment).where(resource_compartment.c.res_pk.in_(rewritten)))
        _bulk_insert(
            conn,
            resource_version,
            ("res_pk", "type", "id", "version", "last_updated", "method", "deleted", "content"),
            [(s.pk, s.type, s.id, s.version, now, s.method, s.deleted, s.content) for s in results],
        )
        self._insert_index_rows(
            conn, [(rows, s) for rows, s in zip(indexed, results, strict=True) if rows is not None]
        )
        self._inherit_document_labels(conn, writes, results)
        return results

    @staticmethod
    def _inherit_document_labels(
        conn: Connection, writes: Sequence[Write], results: Sequence[Stored]
    ) -> None:
        """A Binary's row takes the strictest of its own confidentiality and that of the resource
        its ``securityContext`` names (a DocumentReference, a laboratory DiagnosticReport whose
        PDF it is, any type: FHIR applies the context's labels to the Binary), so that a Binary
        of an R or V item is hidden wherever the item is (search, includes, history,
        ``$everything``), not only on retrieval. Kept in step in the write's transaction: for the
        Binaries written, and for those of every other resource written (its label may have
        changed, or it may arrive after its content). A deleted context keeps its last label on
        its row, so its Binaries keep it too. Reads the index rows just inserted
        (``security-context``).

        The query runs only for a batch where it can change something: a Binary written with a
        ``securityContext`` (its level depends on its context's), or a resource written whose
        own level (the row's ``confidentiality``, the only thing a Binary takes from its context)
        differs from the one its row had, so that every Binary naming it was computed from
        another level. A new resource had none: it counts when it carries a label (a Binary may
        have arrived before it). An unchanged level leaves every Binary naming the resource right
        as it is, so the common write (no label, or the same label again) costs no query."""
        contexts = {
            (w.type, w.id)
            for w in writes
            if w.type != "Binary" and w.resource is not None and _level_changed(w)
        }
        ids, types = sorted({i for _, i in contexts}), sorted({t for t, _ in contexts})
        binaries = [
            s.pk
            for w, s in zip(writes, results, strict=True)
            if w.type == "Binary" and w.resource and w.resource.get("securityContext")
        ]
        if not ids and not binaries:
            return
        x, b, d = idx_reference, resource.alias("sc_binary"), resource.alias("sc_context")
        found: dict[int, tuple[str | None, str | None, str | None]] = {}
        for start in range(0, max(len(ids), len(binaries)), 500):
            which = []
            if ids[start : start + 500]:
                # ids and types apart (the index leads with the id); a Binary matched by another
                # written type's id is only recomputed from its own context, to the same level
                which.append(and_(x.c.target_id.in_(ids[start : start + 500]), x.c.target_type.in_(types)))
            if binaries[start : start + 500]:
                which.append(x.c.res_pk.in_(binaries[start : start + 500]))
            rows = conn.execute(
                select(b.c.pk, b.c.content, b.c.confidentiality, d.c.confidentiality.label("context"))
                .select_from(
                    x.join(b, b.c.pk == x.c.res_pk).outerjoin(
                        d, and_(d.c.type == x.c.target_type, d.c.id == x.c.target_id)
                    )
                )
                .where(x.c.rtype == "Binary", x.c.param == "security-context", or_(*which))
            )
            for row in rows:
                found[row.pk] = (row.content, row.confidentiality, row.context)
        changes = []
        for pk, (content, stored, context) in found.items():
            own = confidentiality_of(orjson.loads(content)) if content else None
            level = _strictest(own, context)
            if level != stored:
                changes.append({"b_pk": pk, "b_level": level})
        if changes:
            conn.execute(
                update(resource)
                .where(resource.c.pk == bindparam("b_pk"))
                .values(confidentiality=bindparam("b_level")),
                changes,
            )

    def _category(self, w: Write) -> str | None:
        if w.resource is None or self.classify is None:
            return None
        return self.classify(w.resource)

    def _new_pks(self, conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
        """Insert new resource rows and return their keys, in order.

        PostgreSQL takes the keys from the sequence in one round trip and the rows by COPY;
        SQLite inserts with RETURNING.
        """
        if conn.dialect.name == "postgresql":
            pks = list(
                conn.execute(
                    text("SELECT nextval('resource_pk_seq') FROM generate_series(1, :n)"), {"n": len(rows)}
                ).scalars()
            )
            columns = (
                "pk",
                "type",
                "id",
                "version",
                "last_updated",
                "deleted",
                "content",
                "category",
                "confidentiality",
            )
            _bulk_insert(
                conn,
                resource,
                columns,
                [
                    (
                        pk,
                        r["type"],
                        r["id"],
                        r["version"],
                        r["last_updated"],
                        r["deleted"],
                        r["content"],
                        r["category"],
                        r["confidentiality"],
                    )
                    for pk, r in zip(pks, rows, strict=True)
                ],
            )
            return pks
        inserted = conn.execute(insert(resource).returning(resource.c.pk, sort_by_parameter_order=True), rows)
        return list(inserted.scalars())

    def _insert_index_rows(self, conn: Connection, items: Sequence[tuple[IndexRows, Stored]]) -> None:
        batches: dict[str, list[tuple[Any, ...]]] = {}
        compartment_rows: list[tuple[Any, ...]] = []
        for rows, stored in items:
            pk, rtype = stored.pk, stored.type
            for kind, kind_rows in rows.rows.items():
                columns = INDEX_COLUMNS[kind]
                batch = batches.setdefault(kind, [])
                head = (pk, rtype)
                batch.extend(head + tuple(map(row.get, columns)) for row in kind_rows)
            compartment_rows.extend((pk, p) for p in rows.patients)
        for kind, batch in batches.items():
            table = INDEX_TABLES[kind]
            _bulk_insert(conn, table, ("res_pk", "rtype", *INDEX_COLUMNS[kind]), batch)
        if compartment_rows:
            _bulk_insert(conn, resource_compartment, ("res_pk", "patient_id"), compartment_rows)


INDEX_COLUMNS: dict[str, tuple[str, ...]] = {
    kind: (
        "param",
        "grp",
        *(c.name for c in table.columns if c.name not in ("res_pk", "rtype", "param", "grp")),
    )
    for kind, table in INDEX_TABLES.items()
}


def _bulk_insert(
    conn: Connection, table: Table, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    """Insert many rows: COPY on PostgreSQL (one stream, no per-row statements), executemany elsewhere."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        assert raw is not None
        with raw.cursor() as cur, cur.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    conn.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])
