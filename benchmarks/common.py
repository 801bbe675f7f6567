"""Shared helpers for the benchmarks: data location, a scratch PostgreSQL database, reporting."""

from __future__ import annotations

import os
import tarfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHAREDCARE_SHARED_DATA", ROOT.parent / "shared" / "data"))
PG_URL = os.environ.get("SHAREDCARE_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def synthea_bundles(limit: int | None = None, include_shared: bool = False) -> list[tuple[str, bytes]]:
    """The Synthea patient transaction bundles (name, raw JSON), read from the shared archive."""
    archive = SHARED_DATA / "synthea-r4-bundles" / "synthea-r4-bundles.tar.xz"
    out: list[tuple[str, bytes]] = []
    with tarfile.open(archive, mode="r|xz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".json"):
                continue
            shared = "Information" in member.name
            if shared and not include_shared:
                continue
            fh = tar.extractfile(member)
            assert fh is not None
            out.append((member.name, fh.read()))
            if limit is not None and len(out) >= limit:
                break
    return out


@contextmanager
def scratch_database(prefix: str = "sharedcare_bench") -> Iterator[str]:
    """A fresh PostgreSQL database for one benchmark run; dropped afterwards."""
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def report(title: str, rows: list[tuple[str, str]]) -> None:
    """Print a small aligned table of figures, dated."""
    print(f"\n== {title} ({date.today().isoformat()}) ==")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")
