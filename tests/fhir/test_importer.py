"""`sharedcare import` loads the shared Synthea data unchanged: counts by type match the sources."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from sharedcare.fhir.importer import import_paths
from sharedcare.storage.engine import make_engine
from sharedcare.storage.tables import resource
from support import shared_data

SAMPLE_BUNDLES = 3


def _db_counts(url: str) -> Counter[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(resource.c.type, func.count())
                .where(resource.c.deleted.is_(False))
                .group_by(resource.c.type)
            )
            return Counter({t: n for t, n in rows})
    finally:
        engine.dispose()


def _empty(url: str) -> None:
    from support import truncate

    engine = make_engine(url)
    truncate(engine)
    engine.dispose()


@pytest.fixture
def synthea_sample(tmp_path: Path) -> tuple[Path, Counter[str]]:
    """A .tar.gz of the first few Synthea patient bundles, and the resource counts they hold."""
    archive = shared_data("synthea-r4-bundles", "synthea-r4-bundles.tar.xz")
    expected: Counter[str] = Counter()
    out = tmp_path / "sample.tar.gz"
    taken = 0
    with tarfile.open(archive, mode="r|xz") as src, tarfile.open(out, "w:gz") as dst:
        for member in src:
            if not member.isfile() or "Information" in member.name:
                continue
            fh = src.extractfile(member)
            assert fh is not None
            data = fh.read()
            for entry in orjson.loads(data)["entry"]:
                expected[entry["resource"]["resourceType"]] += 1
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
            taken += 1
            if taken == SAMPLE_BUNDLES:
                break
    return out, expected


def test_import_synthea_bundle_archive(db_url: str, synthea_sample: tuple[Path, Counter[str]]) -> None:
    _empty(db_url)
    path, expected = synthea_sample
    engine = make_engine(db_url)
    before = _analyzed(engine)
    report = import_paths(engine, [path])
    assert report.errors == []
    assert report.counts == expected
    assert _db_counts(db_url) == expected
    if engine.dialect.name == "postgresql":  # the planner has fresh statistics after a bulk load
        after = _analyzed(engine)
        assert after["resource"] is not None and after["resource"] != before["resource"]
        assert after["idx_token"] is not None and after["idx_token"] != before["idx_token"]


def _analyzed(engine: Any) -> dict[str, Any]:
    if engine.dialect.name != "postgresql":
        return {}
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        rows = conn.exec_driver_sql(
            "SELECT relname, last_analyze FROM pg_stat_user_tables WHERE relname IN ('resource', 'idx_token')"
        ).all()
    return {name: when for name, when in rows}


def test_import_bulk_ndjson_with_conditional_references(db_url: str) -> None:
    _empty(db_url)
    folder = shared_data("synthea-bulk-ndjson", "10-patients")
    expected: Counter[str] = Counter()
    for file in folder.glob("*.ndjson.gz"):
        with gzip.open(file, "rb") as fh:
            for line in fh:
                if line.strip():
                    expected[orjson.loads(line)["resourceType"]] += 1
    report = import_paths(make_engine(db_url), [folder])
    assert report.errors == []
    assert report.counts == expected
    assert _db_counts(db_url) == expected
    # re-importing the same files changes nothing (upserts of identical content keep their version)
    again = import_paths(make_engine(db_url), [folder])
    assert again.errors == []
    assert _db_counts(db_url) == expected


def test_import_reports_bad_input_and_keeps_the_rest(db_url: str, tmp_path: Path) -> None:
    _empty(db_url)
    good = {"resourceType": "Patient", "id": "p1", "gender": "female"}
    bad = {"resourceType": "Patient", "id": "p2", "gender": "woman"}
    (tmp_path / "Patient.ndjson").write_bytes(
        orjson.dumps(good) + b"\n" + orjson.dumps(bad) + b"\n{not json\n"
    )
    report = import_paths(make_engine(db_url), [tmp_path])
    assert report.counts == Counter({"Patient": 1})
    assert len(report.errors) == 2
    assert any("Patient/p2" in e and "gender" in e for e in report.errors)
    assert any(":3: not valid JSON" in e for e in report.errors)
    assert _db_counts(db_url) == Counter({"Patient": 1})
