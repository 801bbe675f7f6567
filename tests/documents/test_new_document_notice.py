"""The holder's "new document" notice: queued once per MHD submission filed by someone else (the
FHIR API's ITI-65 here; the portal's professional upload in tests/portal), never for the holder's
own documents or a refused submission, and its e-mail says nothing of the document."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from mhd_world import GP, HOLDER, LAB, STRANGER, Doc, created, provide, provide_bundle
from sqlalchemy import select

from sharedcare.notify import outbox, texts
from sharedcare.notify.models import notification

PERSONAL = ("https://sharedcare.lu/fhir/CodeSystem/document-type", "personal-document")


def notices(client: TestClient, patient: str = "pa") -> list[outbox.Notification]:
    app: Any = client.app
    with app.state.engine.connect() as conn:
        return [n for n in outbox.for_patient(conn, patient) if n.kind == outbox.NEW_DOCUMENT]


def test_a_laboratory_submission_queues_one_notice(world: TestClient) -> None:
    response = provide(world, LAB, provide_bundle("pa", Doc(), Doc(data=b"%PDF-1.7 second report")))
    assert len(created(response, "DocumentReference")) == 2
    found = notices(world)
    assert len(found) == 1  # one per submission, however many documents it holds
    assert found[0].params == {"category": "laboratory-results", "documents": 2}
    assert notices(world, "pb") == []
    app: Any = world.app
    with app.state.engine.connect() as conn:
        dedupe = conn.execute(select(notification.c.dedupe)).scalars().all()
    assert len(dedupe) == 1 and str(dedupe[0]).startswith("new-document:")


def test_each_submission_has_its_own_notice(world: TestClient) -> None:
    created(provide(world, LAB, provide_bundle("pa", Doc())), "DocumentReference")
    gp_doc = Doc(type_code="18842-5", authors=["Practitioner/gp"], data=b"%PDF-1.7 letter")
    created(provide(world, GP, provide_bundle("pa", gp_doc, source="Practitioner/gp")), "DocumentReference")
    categories = sorted(n.params["category"] for n in notices(world))
    assert categories == ["hospital-reports", "laboratory-results"]


def test_no_notice_for_the_holders_own_document(world: TestClient) -> None:
    mine = Doc(type_system=PERSONAL[0], type_code=PERSONAL[1], authors=["Patient/pa"], data=b"my notes")
    response = provide(world, HOLDER, provide_bundle("pa", mine, source="Patient/pa"))
    assert created(response, "DocumentReference")
    assert notices(world) == []


def test_no_notice_for_a_refused_submission(world: TestClient) -> None:
    doc = Doc(type_code="18842-5", authors=["Practitioner/stranger"])
    response = provide(world, STRANGER, provide_bundle("pa", doc, source="Practitioner/stranger"))
    assert response.status_code == 403
    assert notices(world) == []


def test_the_email_says_nothing_of_the_document() -> None:
    for lang in texts.LANGUAGES:
        body = texts.body(lang, outbox.NEW_DOCUMENT, representative=False, portal_url=None)
        assert texts.KIND[outbox.NEW_DOCUMENT][lang] in body
        assert "11502-2" not in body and "labor" not in body.lower() and "Document 1" not in body


def test_no_notice_for_a_document_held_back_for_its_announcement(world: TestClient) -> None:
    from sharedcare.access.requests import DISCLOSURE_SYSTEM, PENDING_DISCLOSURE

    pending = {"meta": {"security": [{"system": DISCLOSURE_SYSTEM, "code": PENDING_DISCLOSURE}]}}
    held = Doc(type_code="11526-1", extra=pending, data=b"%PDF-1.7 biopsy")
    assert created(provide(world, LAB, provide_bundle("pa", held)), "DocumentReference")
    assert notices(world) == []  # the notice would announce what the holder may not see yet
    assert created(provide(world, LAB, provide_bundle("pa", Doc())), "DocumentReference")
    assert len(notices(world)) == 1
