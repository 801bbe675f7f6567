"""Recompute the stored data category of every resource (after a migration or a rule change).

The store records each resource's category at write time; when the classification rules
change, the stored categories must follow, or the access decision would apply old rules.
"""

from __future__ import annotations

import orjson
from sqlalchemy import Connection, text

from sharedcare.access.policy import category_of

_BATCH = text(
    "SELECT r.pk, r.category, COALESCE(r.content, (SELECT v.content FROM resource_version v "
    "WHERE v.res_pk = r.pk AND v.content IS NOT NULL ORDER BY v.version DESC LIMIT 1)) AS content "
    "FROM resource r WHERE r.pk > :last ORDER BY r.pk LIMIT :size"
)


def reclassify(conn: Connection, batch: int = 2000) -> int:
    """Set every resource's category from its content (a deleted one from its last content);
    returns how many changed. Runs in the caller's transaction."""
    last = 0
    changed = 0
    while True:
        rows = conn.execute(_BATCH, {"last": last, "size": batch}).all()
        if not rows:
            return changed
        updates = []
        for row in rows:
            category = category_of(orjson.loads(row.content)) if row.content else None
            if category != row.category:
                updates.append({"pk": row.pk, "category": category})
        if updates:
            conn.execute(text("UPDATE resource SET category = :category WHERE pk = :pk"), updates)
            changed += len(updates)
        last = rows[-1].pk
