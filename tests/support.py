"""Helpers shared by the tests: emptying a database, storing fixtures, reading searchsets."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from sharedcare.storage.tables import metadata


def truncate(engine: Engine) -> None:
    """Empty every table of the schema."""
    names = [t.name for t in reversed(metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("TRUNCATE " + ", ".join(names) + " RESTART IDENTITY CASCADE"))
        else:
            for name in names:
                conn.execute(text(f"DELETE FROM {name}"))


def put_all(client: TestClient, *resources: dict[str, Any]) -> None:
    """Store ``resources`` under their own ids in one transaction Bundle."""
    entries = [
        {
            "fullUrl": f"http://testserver/fhir/{r['resourceType']}/{r['id']}",
            "resource": r,
            "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
        }
        for r in resources
    ]
    resp = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert resp.status_code == 200, resp.text


def get_bundle(client: TestClient, url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """GET a search URL (relative to /fhir, or absolute) and return the searchset Bundle."""
    resp = client.get(url if url.startswith("http") else f"/fhir/{url}", headers=headers)
    assert resp.status_code == 200, f"{url}: {resp.text}"
    assert resp.headers["content-type"].startswith("application/fhir+json")
    body: dict[str, Any] = resp.json()
    assert body["resourceType"] == "Bundle"
    assert body["type"] == "searchset"
    return body
