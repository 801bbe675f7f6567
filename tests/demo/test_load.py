"""The demo population loads through the FHIR transaction path, once, on both databases."""

from __future__ import annotations

from sqlalchemy import func, select

from sharedcare.demo.load import load_demo, load_demo_if_empty
from sharedcare.storage.engine import make_engine
from sharedcare.storage.tables import resource
from support import truncate


def test_demo_loads_once_and_reloads_without_new_versions(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        truncate(engine)
        loaded = load_demo_if_empty(engine)
        assert loaded > 800
        assert load_demo_if_empty(engine) == 0
        assert load_demo(engine) == loaded  # seeding again is idempotent: fixed ids, unchanged content
        with engine.connect() as conn:
            count, newest = conn.execute(select(func.count(), func.max(resource.c.version))).one()
            patients = conn.execute(
                select(func.count()).select_from(resource).where(resource.c.type == "Patient")
            ).scalar_one()
        assert (count, newest) == (loaded, 1)
        assert patients == 40
    finally:
        truncate(engine)
        engine.dispose()
