"""A laboratory report's PDF follows the report's confidentiality label (issue 4, a leak fixed).

The PDF of a report filed inline is a Binary whose ``securityContext`` is the report. When the
report is relabelled R or V, the store recomputes the Binary's row in the same transaction, so the
SQL access filter (searches, ``$everything``, reads) hides it from the professionals who may no
longer read the report. A pharmacist in care reads lab results (matrix: ``pha`` R, not RW), so
not a restricted one; the holder reads both. On SQLite and PostgreSQL (the ``settings`` fixture)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "portal"))  # the portal tests' world

from portal_world import World, build_world
from test_lab_results import GP, PDF, _filed_report, auth, pdf_binary

from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.app import create_app
from sharedcare.fhir.store import CONFIDENTIALITY_SYSTEM
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer
from sharedcare.storage.tables import resource
from support import add_care, bearer, cheap_passwords, truncate

PHARMACIST = Principal(PrincipalKind.PROFESSIONAL, "acct-pharm", practitioner_id="pharm", profession="pha")
HOLDER = Principal(PrincipalKind.PATIENT, "acct-pa", patient_id="pa")


@pytest.fixture(autouse=True)
def cheap_hashing() -> Iterator[None]:
    yield from cheap_passwords()


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    """The laboratory tests' world (Marie Muller ``pa``, her GP in care, the laboratory), and the
    pharmacist ``pharm`` of the directory in her care too."""
    app = create_app(settings)
    truncate(app.state.engine)
    w = build_world(app, settings)
    app.state.fhir.update("Organization", "lab1", {"resourceType": "Organization", "id": "lab1"})
    with writer(w.engine).begin() as conn:
        add_care(conn, "care-pharm", "pa", "pharm", datetime.now(UTC).replace(tzinfo=None))
    yield w
    w.engine.dispose()


@pytest.fixture
def api(world: World) -> Iterator[TestClient]:
    with TestClient(world.app) as client:
        yield client


def headers(client: TestClient, who: Principal) -> dict[str, str]:
    scope = "patient/*.rs" if who.kind is PrincipalKind.PATIENT else "user/*.rs"
    return bearer(client.app, who, scope)


def found(client: TestClient, who: Principal, url: str) -> set[str]:
    """The references of a search's (or ``$everything``'s) entries, read as ``who``."""
    response = client.get(f"/fhir/{url}", headers=headers(client, who))
    assert response.status_code == 200, response.text
    entries = response.json().get("entry", [])
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries}


def sees(client: TestClient, who: Principal, binary: str) -> dict[str, bool]:
    """Whether ``who`` finds the Binary by ``Binary?patient=``, in ``$everything``, by its id."""
    read = client.get(f"/fhir/{binary}", headers=headers(client, who)).status_code
    assert read in (200, 404), read
    return {
        "search": binary in found(client, who, "Binary?patient=pa"),
        "everything": binary in found(client, who, "Patient/pa/$everything?_count=1000"),
        "read": read == 200,
    }


def stored_label(world: World, binary_id: str) -> str | None:
    with world.engine.connect() as conn:
        query = select(resource.c.confidentiality).where(
            resource.c.type == "Binary", resource.c.id == binary_id
        )
        label: str | None = conn.execute(query).scalar_one()
        return label


def relabel(client: TestClient, report: dict[str, Any], code: str | None) -> dict[str, Any]:
    """The report PUT again by the GP (lab results: RW) with confidentiality ``code`` (None: no label)."""
    meta = {k: v for k, v in report["meta"].items() if k not in ("versionId", "lastUpdated", "security")}
    if code is not None:
        meta["security"] = [{"system": CONFIDENTIALITY_SYSTEM, "code": code}]
    body = {k: v for k, v in report.items() if k != "meta"} | ({"meta": meta} if meta else {})
    put = client.put(f"/fhir/DiagnosticReport/{report['id']}", json=body, headers=auth(client, GP))
    assert put.status_code == 200, put.text
    stored: dict[str, Any] = put.json()
    return stored


def test_a_report_relabelled_restricted_hides_its_pdf(api: TestClient, world: World) -> None:
    report = _filed_report(api)
    binary_id = pdf_binary(report)
    binary = f"Binary/{binary_id}"
    everywhere = dict.fromkeys(("search", "everything", "read"), True)
    nowhere = dict.fromkeys(everywhere, False)
    assert stored_label(world, binary_id) is None
    assert sees(api, PHARMACIST, binary) == everywhere
    # raised to R: the pharmacist's column only reads lab results, so neither the report nor its PDF
    relabelled = relabel(api, report, "R")
    assert stored_label(world, binary_id) == "R"
    assert sees(api, PHARMACIST, binary) == nowhere
    read = api.get(f"/fhir/DiagnosticReport/{report['id']}", headers=headers(api, PHARMACIST))
    assert read.status_code == 404
    for who in (HOLDER, GP):  # the holder reads everything of theirs, the GP's column writes lab results
        assert sees(api, who, binary) == everywhere, who
    assert api.get(f"/fhir/{binary}", headers=headers(api, HOLDER)).content == PDF
    # lowered again by the GP: the PDF follows back (its own row never had a label)
    relabelled = relabel(api, relabelled, None)
    assert stored_label(world, binary_id) is None
    assert sees(api, PHARMACIST, binary) == everywhere
    # raised to V: the GP in care is not the author's side either; the holder still reads it
    relabel(api, relabelled, "V")
    assert stored_label(world, binary_id) == "V"
    assert sees(api, GP, binary) == nowhere and sees(api, PHARMACIST, binary) == nowhere
    assert sees(api, HOLDER, binary) == everywhere
