"""backfill: Binaries' confidentiality from their document, contained-author index rows

Data written before 0016 misses two things the store now keeps on every write, which the access
decision reads:

- a document's Binary (``securityContext`` = ``DocumentReference/[id]``) has on its row the
  strictest of its own confidentiality and its document's (``fhir.store``: an R or V document's
  content is hidden wherever the document is); older rows have only their own;
- a raw upload no document claimed yet is ``unfiled`` (``documents.submission``), a category no
  professional reads; older ones have the category of content;
- a DocumentReference whose ``author`` names a contained PractitionerRole has ``author`` index
  rows for that role's practitioner and organisation (``fhir.indexer``: V items are read by
  their author's side); older rows have none.

Both are derived from the stored JSON, in batches by primary key, on SQLite and PostgreSQL;
running it again changes nothing. No schema change: the downgrade leaves the data as it is.

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

from sharedcare.documents.content import UPLOADER_EXTENSION
from sharedcare.fhir.indexer import Indexer
from sharedcare.fhir.store import CONFIDENTIALITY_ORDER, INDEX_COLUMNS, confidentiality_of

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

_BATCH = 1000

_BINARIES = sa.text(
    "SELECT pk, content, confidentiality FROM resource WHERE type = 'Binary' AND pk > :last "
    "AND content LIKE '%DocumentReference/%' ORDER BY pk LIMIT :size"
)
_DOCUMENTS = sa.text(
    "SELECT id, content, confidentiality FROM resource WHERE type = 'DocumentReference' AND id IN :ids"
).bindparams(sa.bindparam("ids", expanding=True))
_AUTHORED = sa.text(
    "SELECT pk, content FROM resource WHERE type = 'DocumentReference' AND pk > :last "
    "AND content LIKE '%PractitionerRole%' ORDER BY pk LIMIT :size"
)
_AUTHOR_ROWS = sa.text(
    "SELECT res_pk, target_type, target_id, url, ident_system, ident_value FROM idx_reference "
    "WHERE rtype = 'DocumentReference' AND param = 'author' AND res_pk IN :pks"
).bindparams(sa.bindparam("pks", expanding=True))
_REF_KEY = ("target_type", "target_id", "url", "ident_system", "ident_value")


def _strictest(*codes: str | None) -> str | None:
    found = [c for c in codes if c]
    return max(found, key=CONFIDENTIALITY_ORDER.index) if found else None


def _document_id(binary: dict[str, Any]) -> str | None:
    """The DocumentReference a Binary's ``securityContext`` names (relative or absolute)."""
    ref = (binary.get("securityContext") or {}).get("reference")
    if not isinstance(ref, str):
        return None
    parts = ref.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    return parts[-1] if len(parts) >= 2 and parts[-2] == "DocumentReference" else None


def _binary_confidentiality(conn: sa.Connection) -> None:
    """Each document Binary's row: the strictest of its own and its document's confidentiality."""
    update = sa.text("UPDATE resource SET confidentiality = :level WHERE pk = :pk")
    last = 0
    while rows := conn.execute(_BINARIES, {"last": last, "size": _BATCH}).all():
        last = rows[-1].pk
        binaries = [(row, orjson.loads(row.content)) for row in rows]
        wanted = {doc for _, res in binaries if (doc := _document_id(res))}
        documents: dict[str, str | None] = {}
        if wanted:
            for stored in conn.execute(_DOCUMENTS, {"ids": sorted(wanted)}):
                own = confidentiality_of(orjson.loads(stored.content)) if stored.content else None
                documents[stored.id] = _strictest(own, stored.confidentiality)
        changes = []
        for row, res in binaries:
            document = _document_id(res)
            if document is None:
                continue
            level = _strictest(confidentiality_of(res), documents.get(document))
            if level != row.confidentiality:
                changes.append({"pk": row.pk, "level": level})
        if changes:
            conn.execute(update, changes)


def _contained_authors(conn: sa.Connection) -> None:
    """The ``author`` index rows of each DocumentReference that the indexer gives now and the
    table lacks (those of a contained PractitionerRole's practitioner and organisation)."""
    indexer = Indexer()
    columns = ("res_pk", "rtype", *INDEX_COLUMNS["reference"])
    insert = sa.text(
        f"INSERT INTO idx_reference ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"
    )
    last = 0
    while rows := conn.execute(_AUTHORED, {"last": last, "size": _BATCH}).all():
        last = rows[-1].pk
        present: dict[int, set[tuple[Any, ...]]] = {}
        for r in conn.execute(_AUTHOR_ROWS, {"pks": [row.pk for row in rows]}):
            present.setdefault(r.res_pk, set()).add(tuple(getattr(r, k) for k in _REF_KEY))
        missing = []
        for row in rows:
            index = indexer.index(orjson.loads(row.content))
            have = present.setdefault(row.pk, set())
            for found in index.rows.get("reference", ()):
                key = tuple(found.get(k) for k in _REF_KEY)
                if found["param"] != "author" or key in have:
                    continue
                have.add(key)
                values = {c: found.get(c) for c in INDEX_COLUMNS["reference"]}
                missing.append({**values, "res_pk": row.pk, "rtype": "DocumentReference"})
        if missing:
            conn.execute(insert, missing)


def _pending_uploads(conn: Any) -> None:
    """Uploads no document claimed yet (they carry ``uploaded-by``) are ``unfiled``: no
    professional reads them until a document claims them, or they expire."""
    conn.execute(
        sa.text(
            "UPDATE resource SET category = 'unfiled' WHERE type = 'Binary' AND deleted = :no "
            "AND content LIKE :mark AND (category IS NULL OR category <> 'unfiled')"
        ),
        {"no": False, "mark": f"%{UPLOADER_EXTENSION}%"},
    )


def upgrade() -> None:
    conn = op.get_bind()
    _binary_confidentiality(conn)
    _contained_authors(conn)
    _pending_uploads(conn)


def downgrade() -> None:
    """Nothing to undo: the rows hold what the store derives on write today."""
