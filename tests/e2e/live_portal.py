"""What a browser test gets: the live server's address and the world behind it."""

from __future__ import annotations

from dataclasses import dataclass

from portal_world import World


@dataclass
class LivePortal:
    url: str
    """Base URL of the server (``http://127.0.0.1:<port>``); the portal is under ``/portal``."""
    world: World
