"""HTTP helpers of the portal tests: read the CSRF token of a page, post forms, sign in."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi.testclient import TestClient
from portal_world import CSRF, PASSWORD, Person


def token(client: TestClient, page: str = "/portal/login") -> str:
    """The CSRF token of the session, read from a page's form."""
    resp = client.get(page)
    assert resp.status_code == 200, f"{page}: {resp.status_code} {resp.text[:300]}"
    found = CSRF.search(resp.text)
    assert found, f"no CSRF field on {page}"
    return found.group(1)


def post(client: TestClient, url: str, data: dict[str, Any], page: str) -> httpx.Response:
    """Post a form as a browser would: with the token of ``page`` (a page of the same session)."""
    return client.post(url, data={"csrf": token(client, page), **data})


def sign_in(client: TestClient, person: Person, offset_steps: int = 0, next_path: str = "") -> httpx.Response:
    """Sign in with password and TOTP code; returns the final redirect response."""
    resp = post(
        client,
        "/portal/login",
        {"login": person.login, "password": PASSWORD, "next": next_path},
        "/portal/login",
    )
    assert resp.status_code == 303 and resp.headers["location"] == "/portal/login/code", resp.text[:500]
    resp = post(client, "/portal/login/code", {"code": person.code(offset_steps)}, "/portal/login/code")
    assert resp.status_code == 303, resp.text[:500]
    return resp
