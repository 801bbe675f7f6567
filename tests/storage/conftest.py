"""Fixtures of the content store tests: a real OpenStack Swift cluster with its S3 API (session).

Swift comes from PyPI (``swift``, in the dev extra) and memcached from Debian (installed by
``.ci/run``); ``swift_cluster`` starts three object servers, a container and an account server
and an s3api proxy on loopback. When the cluster cannot be started the S3 tests are skipped
with the reason, unless ``SHAREDCARE_REQUIRE_S3=1`` (set by CI), in which case they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from swift_cluster import BUCKET, ClusterError, SwiftCluster, start_cluster

from sharedcare.storage.s3 import make_client

REQUIRE_S3 = os.environ.get("SHAREDCARE_REQUIRE_S3") == "1"


@pytest.fixture(scope="session")
def swift(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwiftCluster]:
    """A running Swift cluster (``swift_cluster``) for the whole session."""
    try:
        try:
            cluster = start_cluster(tmp_path_factory.mktemp("swift"))
        except ClusterError:  # e.g. a port taken between choosing it and binding it: once more
            cluster = start_cluster(tmp_path_factory.mktemp("swift"))
    except (ClusterError, OSError) as exc:
        if REQUIRE_S3:
            pytest.fail(f"SHAREDCARE_REQUIRE_S3=1 but the Swift cluster did not start: {exc}")
        pytest.skip(f"Swift cluster unavailable: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def s3_client(swift: SwiftCluster) -> Any:
    """A boto3 client on the cluster, its bucket created."""
    client = make_client(
        endpoint=swift.endpoint, access_key=swift.access_key, secret_key=swift.secret_key, region=swift.region
    )
    client.create_bucket(Bucket=BUCKET)
    return client
