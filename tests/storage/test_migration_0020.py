"""Migration 0020 on a database written before Device was in the patient compartment: a current
Device assigned to a patient gets its ``resource_compartment`` row; a Device already linked, one
without ``patient``, a deleted one and other types are left alone; a second run, in small batches,
changes nothing."""

from __future__ import annotations

import importlib
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, text
from test_migration_0017 import NOW, fresh  # noqa: F401  (the fixture: a new database per engine)

from sharedcare.storage.migrate import upgrade


def _insert(engine: Engine, pk: int, res: dict[str, Any], *, deleted: bool = False) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO resource (pk, type, id, version, last_updated, deleted, content, category) "
                "VALUES (:pk, :type, :id, 1, :now, :deleted, :content, :category)"
            ),
            {
                "pk": pk,
                "type": res["resourceType"],
                "id": res["id"],
                "now": NOW,
                "deleted": deleted,
                "content": None if deleted else orjson.dumps(res).decode(),
                "category": "devices" if res["resourceType"] == "Device" else "history",
            },
        )


def _device(rid: str, patient: str | None) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Device", "id": rid, "status": "active"}
    if patient:
        res["patient"] = {"reference": patient}
    return res


def _links(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return sorted(
            tuple(r) for r in conn.execute(text("SELECT res_pk, patient_id FROM resource_compartment"))
        )


def test_0020_links_current_devices_to_their_patient(fresh: Engine, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    upgrade(fresh, "0019")
    _insert(fresh, 1, _device("pump", "Patient/pa"))  # old shape: no compartment row
    _insert(fresh, 2, _device("implant", "Patient/pb"))
    _insert(fresh, 3, _device("linked", "Patient/pc"))  # already linked (written after the change)
    _insert(fresh, 4, _device("stock", None))  # not assigned: in no record
    _insert(fresh, 5, _device("gone", "Patient/pa"), deleted=True)
    condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/pa"}}
    _insert(fresh, 6, condition)  # unlinked on purpose: not this migration's
    with fresh.begin() as conn:
        conn.execute(text("INSERT INTO resource_compartment (res_pk, patient_id) VALUES (3, 'pc')"))
    assert _links(fresh) == [(3, "pc")]

    upgrade(fresh)
    links = _links(fresh)
    assert links == [(1, "pa"), (2, "pb"), (3, "pc")]

    # idempotent, and batched by pk: a retried run (batches of 2, one row lost meanwhile) restores
    # exactly the missing row and duplicates nothing
    migration = importlib.import_module("sharedcare.storage.migrations.versions.0020_device_compartment")
    monkeypatch.setattr(migration, "_BATCH", 2)
    with fresh.begin() as conn:
        conn.execute(text("DELETE FROM resource_compartment WHERE res_pk = 2"))
        migration._device_compartments(conn)
        migration._device_compartments(conn)
    assert _links(fresh) == links
