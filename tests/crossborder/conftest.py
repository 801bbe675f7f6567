"""Fixtures of the patient summary tests: Anne's record (``ips_world``)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from ips_world import IpsWorld, build_world


@pytest.fixture
def ips_world(client: TestClient) -> IpsWorld:
    return build_world(client)
