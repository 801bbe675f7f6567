"""Record content for the timeline and results tests (HTTP and browser), added to the portal world.

Marie Muller's record gets an item of every group the timeline knows, a laboratory report with a
glucose series whose chart geometry the tests check by hand (mg/dL with a reference range that
changes, one result in mmol/L, one text result), and the pharmacist gets a care relationship so
that the tests can compare what a pharmacist and a GP see.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from portal_world import LOINC, World

from sharedcare.access import requests as rights
from sharedcare.access.categories import DOCUMENT_TYPE_SYSTEM, PERSONAL_DOCUMENT
from sharedcare.storage.engine import writer
from support import add_care

LAB_CATEGORY = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]
}
GLUCOSE = "2339-0"
UCUM = "http://unitsofmeasure.org"
LAB_ORG = {"resourceType": "Organization", "id": "labo", "name": "Laboratoire Central"}


def glucose(
    rid: str,
    when: str,
    value: float | None,
    unit: str = "mg/dL",
    low: float | None = 70,
    high: float | None = 100,
    flag: str | None = None,
    text: str | None = None,
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "category": [LAB_CATEGORY],
        "code": {"coding": [{"system": LOINC, "code": GLUCOSE, "display": "Glucose [Mass/volume] in Blood"}]},
        "subject": {"reference": "Patient/pa"},
        "effectiveDateTime": when,
        "performer": [{"reference": "Organization/labo"}],
    }
    if value is not None:
        res["valueQuantity"] = {"value": value, "unit": unit, "system": UCUM, "code": unit}
    if text is not None:
        res["valueString"] = text
    if low is not None or high is not None:
        limits: dict[str, Any] = {}
        if low is not None:
            limits["low"] = {"value": low, "unit": unit, "system": UCUM, "code": unit}
        if high is not None:
            limits["high"] = {"value": high, "unit": unit, "system": UCUM, "code": unit}
        res["referenceRange"] = [limits]
    if flag:
        res["interpretation"] = [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": flag,
                    }
                ]
            }
        ]
    return res


GLUCOSE_SERIES = [
    glucose("g1", "2026-01-01T08:00:00Z", 90),
    glucose("g2", "2026-02-01T08:00:00Z", 120, flag="H"),
    glucose("g3", "2026-03-01T08:00:00Z", 95, high=110),
    glucose("g4", "2026-04-01T08:00:00Z", 5.0, unit="mmol/L", low=3.9, high=5.5),
    glucose("g5", "2026-04-15T08:00:00Z", None, low=None, high=None, text="Haemolysed sample"),
]
REPORT = {
    "resourceType": "DiagnosticReport",
    "id": "rep-1",
    "status": "final",
    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}],
    "code": {"coding": [{"system": LOINC, "code": "24323-8"}], "text": "Metabolic panel"},
    "subject": {"reference": "Patient/pa"},
    "effectiveDateTime": "2026-02-01T08:00:00Z",
    "issued": "2026-02-01T12:00:00Z",
    "performer": [{"reference": "Organization/labo"}],
    "result": [{"reference": "Observation/g1"}, {"reference": "Observation/g2"}],
}


def _document(
    rid: str, code: str, title: str, when: str, author: str = "Practitioner/gp", system: str = LOINC
) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "id": rid,
        "status": "current",
        "type": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": "Patient/pa"},
        "author": [{"reference": author}],
        "date": when,
        "description": title,
        "content": [{"attachment": {"contentType": "text/plain", "data": "T0s="}}],
    }


TIMELINE_ITEMS = [
    _document("scan-a", "18748-4", "Chest X-ray report", "2026-03-05T10:00:00Z"),
    _document("note-a", "11488-4", "Consultation note Dr Hoffmann", "2026-03-10T10:00:00Z"),
    _document(
        "diary-a",
        PERSONAL_DOCUMENT,
        "My blood pressure diary",
        "2026-03-12T10:00:00Z",
        "Patient/pa",
        DOCUMENT_TYPE_SYSTEM,
    ),
    {
        "resourceType": "Composition",
        "id": "ips-a",
        "status": "final",
        "type": {"coding": [{"system": LOINC, "code": "60591-5"}]},
        "subject": {"reference": "Patient/pa"},
        "date": "2026-03-15T10:00:00Z",
        "author": [{"reference": "Practitioner/gp"}],
        "title": "Patient summary of Marie Muller",
    },
    {
        "resourceType": "Immunization",
        "id": "flu-a",
        "status": "completed",
        "vaccineCode": {"text": "Influenza vaccine"},
        "patient": {"reference": "Patient/pa"},
        "occurrenceDateTime": "2025-11-03",
    },
    {
        "resourceType": "MedicationRequest",
        "id": "rx-a",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": "Salbutamol inhaler"},
        "subject": {"reference": "Patient/pa"},
        "authoredOn": "2025-12-20",
    },
]
EXPECTED_GROUPS = {
    "Observation/glucose-a": "laboratory-results",
    "Observation/hb-a": "laboratory-results",
    "DocumentReference/letter-a": "hospital-reports",
    "DocumentReference/scan-a": "imaging",
    "DocumentReference/note-a": "consultation-notes",
    "DocumentReference/diary-a": "personal-documents",
    "Composition/ips-a": "patient-summary",
    "Immunization/flu-a": "vaccination",
    "MedicationRequest/rx-a": "prescriptions",
    "Condition/asthma-a": "other",
}
"""Every item of the world's and this module's record content (lab series aside) and its group."""
PENDING = glucose("g-pending", "2026-04-20T08:00:00Z", 250, flag="H")
PENDING["code"] = {"coding": [{"system": LOINC, "code": "2857-1"}], "text": "Prostate specific antigen"}


def add_record_content(world: World, *, pending: bool = True) -> None:
    """The items above in Marie Muller's record, a pending result, and the pharmacist's access."""
    fhir = world.app.state.fhir
    for res in [LAB_ORG, *GLUCOSE_SERIES, REPORT, *TIMELINE_ITEMS]:
        fhir.update(res["resourceType"], res["id"], res)
    if pending:
        fhir.update("Observation", PENDING["id"], rights.mark_pending(PENDING))
    now = datetime.now(UTC).replace(tzinfo=None)
    with writer(world.engine).begin() as conn:
        add_care(conn, "pharm-solo", "pa", "pharm", now)
