"""The vaccination certificate: ``GET Patient/[id]/$vaccination-certificate`` (PDF) through the
caller's view, in French, German and English, on both databases."""

from __future__ import annotations

import io
from datetime import date
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader
from sqlalchemy import select

from sharedcare.access import consent
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit.models import audit_log
from sharedcare.fhir.store import utcnow
from sharedcare.storage.engine import writer
from sharedcare.vaccination.certificate import certificate_pdf
from sharedcare.vaccination.products import PRODUCT_SYSTEM
from sharedcare.vaccination.record import VERIFICATION_SYSTEM
from support import add_care, bearer, professional, put_all

HOLDER = Principal(PrincipalKind.PATIENT, "acct-pa", patient_id="pa")
GP = professional("gp")
STRANGER = professional("stranger")


def dose(rid: str, product: str, when: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Immunization",
        "id": rid,
        "status": "completed",
        "vaccineCode": {"coding": [{"system": PRODUCT_SYSTEM, "code": product}]},
        "patient": {"reference": "Patient/pa"},
        "occurrenceDateTime": when,
        **extra,
    }


def text_of(pdf: bytes) -> str:
    """The PDF's text, whitespace collapsed (table cells wrap their lines)."""
    return " ".join(" ".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages).split())


@pytest.fixture
def world(client: TestClient) -> TestClient:
    put_all(
        client,
        {
            "resourceType": "Patient",
            "id": "pa",
            "birthDate": "2024-12-01",
            "name": [{"given": ["Zoé"], "family": "Schmitz"}],
            "identifier": [{"system": "http://sharedcare.lu/fhir/sid/matricule", "value": "2024120112345"}],
        },
        dose(
            "d1",
            "hexyon",
            "2025-02-01",
            lotNumber="HX-001",
            performer=[{"actor": {"reference": "Practitioner/gp", "display": "Dr Anne Weber"}}],
        ),
        dose("d2", "rotarix", "2025-02-01", lotNumber="RO-77"),
        dose(
            "d3",
            "priorix",
            "2025-12-05",
            meta={"tag": [{"system": VERIFICATION_SYSTEM, "code": "patient-reported"}]},
        ),
        dose(
            "d4",
            "bexsero",
            "2025-03-01",
            status="not-done",
            statusReason={
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "PATOBJ"}]
            },
        ),
        dose("d5", "prevenar-20", "2025-02-01", lotNumber="SECRET-LOT"),
    )
    app: Any = client.app
    now = utcnow()
    with writer(app.state.engine).begin() as conn:
        add_care(conn, "care-gp", "pa", "gp", now)
        consent.mask(conn, app.state.fhir, HOLDER, "pa", "gp", "Immunization/d5", now)
    return client


@pytest.mark.parametrize(
    ("lang", "words"),
    [
        ("fr", ("Certificat de vaccination", "diphtérie", "déclaré par le patient", "Vaccinateur")),
        ("de", ("Impfbescheinigung", "Diphtherie", "vom Patienten gemeldet", "Impfende Person")),
        ("en", ("Vaccination certificate", "diphtheria", "reported by the patient", "Vaccinator")),
    ],
)
def test_certificate_in_each_language(world: TestClient, lang: str, words: tuple[str, ...]) -> None:
    resp = world.get(
        f"/fhir/Patient/pa/$vaccination-certificate?lang={lang}", headers=bearer(world.app, GP, "user/*.rs")
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/pdf"
    text = text_of(resp.content)
    for word in words:
        assert word in text, (lang, word)
    for expected in (
        "Zoé Schmitz",
        "2024-12-01",
        "2024120112345",
        "Hexyon",
        "HX-001",
        "Dr Anne Weber",
        "Rotarix",
        "Priorix",
    ):
        assert expected in text
    assert "Bexsero" not in text  # not given
    assert "SECRET-LOT" not in text and "Prevenar" not in text  # masked from this professional
    assert text.index("Hexyon") < text.index("Priorix")  # oldest first


def test_read_through_the_callers_view_and_audited(world: TestClient) -> None:
    holder = world.get(
        "/fhir/Patient/pa/$vaccination-certificate?lang=en", headers=bearer(world.app, HOLDER, "patient/*.rs")
    )
    assert holder.status_code == 200
    assert "SECRET-LOT" in text_of(holder.content)  # the holder sees their whole record
    stranger = world.get(
        "/fhir/Patient/pa/$vaccination-certificate", headers=bearer(world.app, STRANGER, "user/*.rs")
    )
    assert stranger.status_code == 404 and stranger.json()["resourceType"] == "OperationOutcome"
    bad = world.get(
        "/fhir/Patient/pa/$vaccination-certificate?lang=it", headers=bearer(world.app, GP, "user/*.rs")
    )
    assert bad.status_code == 400 and "lang must be one of fr, de, en" in bad.text
    app: Any = world.app
    with app.state.engine.connect() as conn:
        rows = conn.execute(
            select(audit_log.c.principal_subject, audit_log.c.patient_id).where(
                audit_log.c.interaction == "vaccination-certificate"
            )
        ).all()
    assert {(r.principal_subject, r.patient_id) for r in rows} == {("acct-pa", "pa")}


def test_an_empty_record() -> None:
    text = text_of(
        certificate_pdf({"resourceType": "Patient", "birthDate": "2020-01-01"}, [], "de", date(2026, 1, 2))
    )
    assert "Keine Impfung eingetragen." in text and "2026-01-02" in text
    with pytest.raises(ValueError):
        certificate_pdf({}, [], "it", date(2026, 1, 2))
