"""The MHD tests' world: two open records and a closed one, a laboratory and a hospital (system
clients), a GP, a second GP and a pharmacist in the care of Anne (``pa``), a stranger
(``mhd_world.build_world``)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from mhd_world import build_world


@pytest.fixture
def world(client: TestClient) -> TestClient:
    return build_world(client)
