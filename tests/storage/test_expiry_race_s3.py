"""The expiry of an unclaimed upload racing a write of the same bytes, with the content in S3 (the
Swift cluster of ``conftest``): the same forced interleavings as
``tests/documents/test_blob_expiry_race.py``, on SQLite and PostgreSQL, the application's store
an encrypted S3 store in a bucket of its own."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from swift_cluster import SwiftCluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "documents"))  # the MHD tests' world

import test_blob_expiry_race as race
from mhd_world import build_world

from sharedcare.app import create_app
from sharedcare.settings import Settings
from support import DEMO_SECRET, signed_in_client


@pytest.fixture
def s3_world(db_url: str, tmp_path: Path, swift: SwiftCluster, s3_client: Any) -> Iterator[TestClient]:
    bucket = f"race-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=bucket)
    settings = Settings(
        database_url=db_url,
        data_dir=tmp_path,
        demo_data=False,
        demo_client_secret=DEMO_SECRET,
        blob_backend="s3",
        s3_endpoint=swift.endpoint,
        s3_bucket=bucket,
        s3_access_key=swift.access_key,
        s3_secret_key=swift.secret_key,
        s3_region=swift.region,
    )
    app = create_app(settings)
    with signed_in_client(app, settings) as client:
        yield build_world(client)


@pytest.mark.parametrize("kind", sorted(race.WRITERS))
def test_s3_a_write_whose_blob_the_expiry_removed_is_refused(s3_world: TestClient, kind: str) -> None:
    race.test_a_write_whose_blob_the_expiry_removed_after_its_put_is_refused(s3_world, kind)


@pytest.mark.parametrize("kind", sorted(race.WRITERS))
def test_s3_a_write_cannot_commit_between_the_check_and_the_delete(s3_world: TestClient, kind: str) -> None:
    race.test_a_write_cannot_commit_between_the_expirys_check_and_its_delete(s3_world, kind)


def test_s3_a_write_committed_before_the_expiry_keeps_the_blob(s3_world: TestClient) -> None:
    race.test_a_write_committed_before_the_expiry_keeps_the_blob(s3_world)
