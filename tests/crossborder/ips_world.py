"""A small record with something for every IPS section, and the people who ask for its summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi.testclient import TestClient

from sharedcare.access import consent
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.access.requests import PENDING_TAG
from sharedcare.fhir.store import utcnow
from sharedcare.storage.engine import writer
from support import add_care, bearer, put_all

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
IDENTIFIER_SYSTEM = "urn:oid:1.2.442.0.1"

GP = Principal(
    PrincipalKind.PROFESSIONAL, "acct-gp", display="Dr Greta Pinto", practitioner_id="gp", profession="med"
)
PHARMACIST = Principal(
    PrincipalKind.PROFESSIONAL,
    "acct-ph",
    display="Paul Pharma",
    practitioner_id="ph",
    profession="pharmacist",
)
LAB = Principal(
    PrincipalKind.PROFESSIONAL,
    "acct-lab",
    display="Lena Labo",
    practitioner_id="lab",
    profession="laboratory-technician",
)
NURSE = Principal(
    PrincipalKind.PROFESSIONAL, "acct-nu", display="Nina", practitioner_id="nu", profession="nurse"
)
STRANGER = Principal(PrincipalKind.PROFESSIONAL, "acct-x", practitioner_id="stranger", profession="med")
HOLDER = Principal(PrincipalKind.PATIENT, "acct-pa", display="Anne Holder", patient_id="pa")


def _condition(
    rid: str, code: str, text: str, clinical: str, verification: str = "confirmed"
) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": rid,
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": clinical}]},
        "verificationStatus": {"coding": [{"system": VERIFICATION, "code": verification}]},
        "code": {"coding": [{"system": SNOMED, "code": code}], "text": text},
        "subject": {"reference": "Patient/pa"},
        "encounter": {"reference": "Encounter/enc-1"},
        "onsetDateTime": "2019-05-01",
    }


def _allergy(rid: str, text: str, verification: str) -> dict[str, Any]:
    return {
        "resourceType": "AllergyIntolerance",
        "id": rid,
        "clinicalStatus": {"coding": [{"system": ALLERGY_CLINICAL, "code": "active"}]},
        "verificationStatus": {"coding": [{"system": ALLERGY_VERIFICATION, "code": verification}]},
        "code": {"coding": [{"system": SNOMED, "code": "91935009"}], "text": text},
        "patient": {"reference": "Patient/pa"},
        "criticality": "high",
    }


def _lab(rid: str, code: str, text: str, when: str, value: float, unit: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "category": [{"coding": [{"system": OBS_CAT, "code": "laboratory"}]}],
        "code": {"coding": [{"system": LOINC, "code": code}], "text": text},
        "subject": {"reference": "Patient/pa"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }


def record() -> list[dict[str, Any]]:
    """Anne's record: an item for each section, and items the rules leave out."""
    pending = _lab("lab-pending", "2160-0", "Creatinine", "2024-07-01", 1.4, "mg/dL")
    pending["meta"] = {"security": [dict(PENDING_TAG)]}
    return [
        *(
            {"resourceType": "Practitioner", "id": p, "active": True, "name": [{"text": n}]}
            for p, n in (
                ("gp", "Dr Greta Pinto"),
                ("ph", "Paul Pharma"),
                ("lab", "Lena Labo"),
                ("nu", "Nina"),
                ("stranger", "Sam"),
            )
        ),
        {
            "resourceType": "Patient",
            "id": "pa",
            "identifier": [{"system": IDENTIFIER_SYSTEM, "value": "1980010112345"}],
            "name": [{"family": "Holder", "given": ["Anne"]}],
            "gender": "female",
            "birthDate": "1980-01-01",
        },
        {"resourceType": "Patient", "id": "pb", "name": [{"family": "Other"}], "birthDate": "1970-01-01"},
        {
            "resourceType": "Encounter",
            "id": "enc-1",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": "Patient/pa"},
        },
        _condition("c-active", "44054006", "Diabetes mellitus type 2", "active"),
        _condition("c-resolved", "195662009", "Acute viral pharyngitis", "resolved"),
        _condition("c-refuted", "38341003", "Hypertension", "active", "refuted"),
        _condition("c-masked", "35489007", "Depressive disorder", "active"),
        _allergy("a-peanut", "Peanut allergy", "confirmed"),
        _allergy("a-error", "Penicillin allergy", "entered-in-error"),
        {
            "resourceType": "Medication",
            "id": "med-1",
            "code": {
                "coding": [{"system": "http://www.whocc.no/atc", "code": "A10BA02"}],
                "text": "Metformin 500 mg",
            },
        },
        {
            "resourceType": "MedicationRequest",
            "id": "mr-active",
            "status": "active",
            "intent": "order",
            "medicationReference": {"reference": "Medication/med-1"},
            "subject": {"reference": "Patient/pa"},
            "authoredOn": "2024-02-01",
            "requester": {"reference": "Practitioner/gp"},
            "dosageInstruction": [{"text": "1 tablet twice a day"}],
        },
        {
            "resourceType": "MedicationRequest",
            "id": "mr-stopped",
            "status": "stopped",
            "intent": "order",
            "medicationCodeableConcept": {"text": "Amoxicillin 1 g"},
            "subject": {"reference": "Patient/pa"},
        },
        {
            "resourceType": "MedicationStatement",
            "id": "ms-active",
            "status": "active",
            "medicationCodeableConcept": {"text": "Vitamin D 1000 IU"},
            "subject": {"reference": "Patient/pa"},
            "effectiveDateTime": "2023-11-01",
        },
        {
            "resourceType": "Immunization",
            "id": "imm-1",
            "status": "completed",
            "vaccineCode": {
                "coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}],
                "text": "Influenza",
            },
            "patient": {"reference": "Patient/pa"},
            "occurrenceDateTime": "2023-10-15",
        },
        _lab("lab-old", "4548-4", "HbA1c", "2024-01-01", 7.5, "%"),
        _lab("lab-new", "4548-4", "HbA1c", "2024-06-01", 6.9, "%"),
        pending,
        {
            "resourceType": "Observation",
            "id": "vital-1",
            "status": "final",
            "category": [{"coding": [{"system": OBS_CAT, "code": "vital-signs"}]}],
            "code": {"coding": [{"system": LOINC, "code": "29463-7"}], "text": "Body weight"},
            "subject": {"reference": "Patient/pa"},
            "effectiveDateTime": "2024-06-01",
            "valueQuantity": {"value": 72.5, "unit": "kg"},
        },
        {
            "resourceType": "Procedure",
            "id": "proc-1",
            "status": "completed",
            "code": {"coding": [{"system": SNOMED, "code": "80146002"}], "text": "Appendectomy"},
            "subject": {"reference": "Patient/pa"},
            "performedDateTime": "2001-03-04",
            "performer": [{"actor": {"reference": "Practitioner/somebody-else"}}],
        },
        {
            "resourceType": "Device",
            "id": "dev-1",
            "patient": {"reference": "Patient/pa"},
            "deviceName": [{"name": "Insulin pump", "type": "user-friendly-name"}],
        },
        {
            "resourceType": "DeviceUseStatement",
            "id": "dus-1",
            "status": "active",
            "subject": {"reference": "Patient/pa"},
            "device": {"reference": "Device/dev-1"},
            "timingDateTime": "2022-01-01",
        },
        _condition("pb-problem", "38341003", "Hypertension of another patient", "active")
        | {"subject": {"reference": "Patient/pb"}},
    ]


@dataclass
class IpsWorld:
    """The record, its API client (the trusted platform client) and tokens for each person."""

    client: TestClient

    def headers(self, principal: Principal, scope: str = "user/*.cruds") -> dict[str, str]:
        if principal.kind is PrincipalKind.PATIENT:
            scope = "patient/*.cruds"
        return bearer(self.client.app, principal, scope)


def build_world(client: TestClient) -> IpsWorld:
    """Store the record, give each professional a care relationship, and mask one item from the GP."""
    put_all(client, *record())
    app: Any = client.app
    now = utcnow()
    with writer(app.state.engine).begin() as conn:
        for practitioner in ("gp", "ph", "lab", "nu"):
            add_care(conn, f"care-{practitioner}", "pa", practitioner, now)
        consent.mask(conn, app.state.fhir, HOLDER, "pa", "gp", "Condition/c-masked", now)
    return IpsWorld(client)


def ok_summary(world: IpsWorld, principal: Principal, query: str = "") -> dict[str, Any]:
    """``principal``'s summary of Anne's record (200 expected)."""
    resp = world.client.get(f"/fhir/Patient/pa/$summary{query}", headers=world.headers(principal))
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/fhir+json")
    body: dict[str, Any] = resp.json()
    return body
