"""A Binary takes the confidentiality of the resource its ``securityContext`` names
(``fhir.store.ResourceStore._inherit_document_labels``), and the store looks for such Binaries only
when a write can change one (issue 4): a label changed on a document reaches its Binary; a write
that leaves every label as it was issues no extra query. Statements are counted with a SQLAlchemy
event listener, on SQLite and PostgreSQL (the ``world`` fixture)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from mhd_world import CONFIDENTIALITY, LAB, Doc, auth, created, provide_bundle
from sqlalchemy import select

from sharedcare.fhir.store import resource as resources
from support import statements

INHERIT = "sc_binary"
"""The alias of the inheritance query (the only statement that names it)."""


def level(app: Any, rtype: str, rid: str) -> str | None:
    with app.state.engine.connect() as conn:
        query = select(resources.c.confidentiality).where(resources.c.type == rtype, resources.c.id == rid)
        return conn.execute(query).scalar_one()  # type: ignore[no-any-return]


def filed_document(world: TestClient) -> tuple[str, str]:
    """A laboratory report filed by ITI-65 (normal confidentiality): its id and its Binary's."""
    response = world.post("/fhir", json=provide_bundle("pa", Doc()), headers=auth(world, LAB))
    assert response.status_code == 200, response.text
    [document_id] = created(response, "DocumentReference")
    [binary_id] = created(response, "Binary")
    return document_id, binary_id


def relabelled(document: dict[str, Any], code: str) -> dict[str, Any]:
    return {**document, "securityLabel": [{"coding": [{"system": CONFIDENTIALITY, "code": code}]}]}


def test_a_label_change_reaches_the_binary_and_an_unchanged_label_costs_no_query(world: TestClient) -> None:
    app: Any = world.app
    fhir = app.state.fhir  # the agency's own service: the statements are the store's alone
    document_id, binary_id = filed_document(world)
    assert level(app, "Binary", binary_id) == "N"
    document = fhir.read("DocumentReference", document_id).resource()

    with statements(app.state.engine) as seen:
        fhir.update("DocumentReference", document_id, relabelled(document, "R"))
    assert len([s for s in seen if INHERIT in s]) == 1
    assert level(app, "Binary", binary_id) == "R"  # the document's restriction reaches its content

    document = fhir.read("DocumentReference", document_id).resource()
    with statements(app.state.engine) as seen:
        fhir.update("DocumentReference", document_id, {**document, "description": "the same label, again"})
        fhir.update(
            "Observation",
            "unrelated",
            {
                "resourceType": "Observation",
                "id": "unrelated",
                "status": "final",
                "code": {"text": "weight"},
                "subject": {"reference": "Patient/pa"},
            },
        )
    assert seen and not [s for s in seen if INHERIT in s]
    assert level(app, "Binary", binary_id) == "R"

    document = fhir.read("DocumentReference", document_id).resource()
    with statements(app.state.engine) as seen:
        fhir.update("DocumentReference", document_id, relabelled(document, "N"))
    assert len([s for s in seen if INHERIT in s]) == 1
    assert level(app, "Binary", binary_id) == "N"  # lifted again: the Binary follows


def test_a_context_written_after_its_binary_still_labels_it(world: TestClient) -> None:
    """A Binary may arrive before the resource it names: created with a label, that resource
    passes it on; created without one, it costs no query."""
    app: Any = world.app
    fhir = app.state.fhir
    binary = {
        "resourceType": "Binary",
        "id": "early",
        "contentType": "text/plain",
        "data": "aGVsbG8=",
        "securityContext": {"reference": "DocumentReference/later"},
    }
    fhir.update("Binary", "early", binary)
    assert level(app, "Binary", "early") is None
    document = {
        "resourceType": "DocumentReference",
        "id": "later",
        "status": "current",
        "subject": {"reference": "Patient/pa"},
        "content": [{"attachment": {"contentType": "text/plain", "url": "Binary/early"}}],
    }
    with statements(app.state.engine) as seen:
        fhir.update("DocumentReference", "plain", {**document, "id": "plain"})
    assert not [s for s in seen if INHERIT in s]
    with statements(app.state.engine) as seen:
        fhir.update("DocumentReference", "later", relabelled(document, "V"))
    assert len([s for s in seen if INHERIT in s]) == 1
    assert level(app, "Binary", "early") == "V"
