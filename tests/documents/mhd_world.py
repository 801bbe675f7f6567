"""Builders for the MHD tests: Provide Document Bundles, the people who send and read them, and
their world (``build_world``): two open records and a closed one, a laboratory and a hospital
(system clients), a GP, a second GP and a pharmacist in the care of Anne (``pa``), a stranger."""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from sharedcare.access.models import care_relationship, record_status
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.fhir.store import utcnow
from sharedcare.storage.engine import writer
from support import bearer, put_all

LOINC = "http://loinc.org"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
LIST_TYPES = "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes"
FORMAT = "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode"
CLASS = "urn:oid:1.3.6.1.4.1.19376.1.2.6.1"
PROFILE = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.Comprehensive.ProvideBundle"

GP = Principal(PrincipalKind.PROFESSIONAL, "acct-gp", display="Dr Gp", practitioner_id="gp", profession="med")
OTHER_GP = Principal(PrincipalKind.PROFESSIONAL, "acct-gp2", practitioner_id="gp2", profession="med")
PHARMACIST = Principal(PrincipalKind.PROFESSIONAL, "acct-ph", practitioner_id="ph", profession="pha")
STRANGER = Principal(PrincipalKind.PROFESSIONAL, "acct-x", practitioner_id="stranger", profession="med")
HOLDER = Principal(PrincipalKind.PATIENT, "acct-pa", display="Anne", patient_id="pa")
LAB = Principal(PrincipalKind.SYSTEM, "lab-client", display="Labo", organization_id="lab1")
HOSPITAL = Principal(PrincipalKind.SYSTEM, "hosp-client", display="Hospital", organization_id="hosp1")

SCOPES = {
    PrincipalKind.SYSTEM: "system/*.cruds",
    PrincipalKind.PROFESSIONAL: "user/*.cruds",
    PrincipalKind.PATIENT: "patient/*.cruds",
}


def auth(client: TestClient, principal: Principal) -> dict[str, str]:
    """Headers carrying a real access token of ``principal``."""
    return bearer(client.app, principal, SCOPES[principal.kind])


def sha1_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data).digest()).decode()


@dataclass
class Doc:
    """One document of a submission."""

    type_code: str = "11502-2"
    data: bytes = b"%PDF-1.7 laboratory report"
    content_type: str = "application/pdf"
    authors: list[str] = field(default_factory=lambda: ["Organization/lab1"])
    inline: bool = False
    relates: list[tuple[str, str]] = field(default_factory=list)
    confidentiality: str = "N"
    date: str = "2026-03-02T10:00:00Z"
    type_system: str = LOINC
    extra: dict[str, Any] = field(default_factory=dict)
    key: str = field(default_factory=lambda: uuid.uuid4().hex)

    def document_reference(self, patient: str) -> dict[str, Any]:
        attachment: dict[str, Any] = {
            "contentType": self.content_type,
            "language": "fr",
            "size": len(self.data),
            "hash": sha1_b64(self.data),
            "title": f"Document {self.type_code}",
            "creation": "2026-03-01T09:00:00Z",
        }
        if self.inline:
            attachment["data"] = base64.b64encode(self.data).decode()
        else:
            attachment["url"] = f"urn:uuid:{self.key}-bin"
        doc: dict[str, Any] = {
            "resourceType": "DocumentReference",
            "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:1.2.3.{self.key[:8]}"},
            "status": "current",
            "type": {"coding": [{"system": self.type_system, "code": self.type_code}]},
            "category": [{"coding": [{"system": CLASS, "code": "REPORTS"}]}],
            "subject": {"reference": f"Patient/{patient}"},
            "date": self.date,
            "author": [{"reference": a} for a in self.authors],
            "securityLabel": [{"coding": [{"system": CONFIDENTIALITY, "code": self.confidentiality}]}],
            "content": [
                {
                    "attachment": attachment,
                    "format": {"system": FORMAT, "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient"},
                }
            ],
        }
        if self.relates:
            doc["relatesTo"] = [
                {"code": code, "target": {"reference": f"DocumentReference/{target}"}}
                for code, target in self.relates
            ]
        doc.update(self.extra)
        return doc


def provide_bundle(
    patient: str, *docs: Doc, source: str = "Organization/lab1", extra: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A Provide Document Bundle (ITI-65) publishing ``docs`` into ``patient``'s record."""
    docs = docs or (Doc(),)
    submission_set = {
        "resourceType": "List",
        "extension": [
            {
                "url": "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-sourceId",
                "valueIdentifier": {"value": "urn:oid:1.2.3.4"},
            },
            {
                "url": "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-designationType",
                "valueCodeableConcept": {"coding": [{"system": LOINC, "code": docs[0].type_code}]},
            },
        ],
        "identifier": [
            {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:1.2.3.9.{uuid.uuid4().int % 10**8}"}
        ],
        "status": "current",
        "mode": "working",
        "code": {"coding": [{"system": LIST_TYPES, "code": "submissionset"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "date": "2026-03-02T10:05:00Z",
        "source": {"reference": source},
        "entry": [{"item": {"reference": f"urn:uuid:{d.key}"}} for d in docs],
    }
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": "urn:uuid:submission-set",
            "resource": submission_set,
            "request": {"method": "POST", "url": "List"},
        }
    ]
    for d in docs:
        entries.append(
            {
                "fullUrl": f"urn:uuid:{d.key}",
                "resource": d.document_reference(patient),
                "request": {"method": "POST", "url": "DocumentReference"},
            }
        )
        if not d.inline:
            entries.append(
                {
                    "fullUrl": f"urn:uuid:{d.key}-bin",
                    "resource": {
                        "resourceType": "Binary",
                        "contentType": d.content_type,
                        "data": base64.b64encode(d.data).decode(),
                    },
                    "request": {"method": "POST", "url": "Binary"},
                }
            )
    entries.extend(extra or [])
    return {"resourceType": "Bundle", "meta": {"profile": [PROFILE]}, "type": "transaction", "entry": entries}


def provide(client: TestClient, principal: Principal, bundle: dict[str, Any]) -> Any:
    """POST the bundle as ``principal``; the response."""
    return client.post("/fhir", json=bundle, headers=auth(client, principal))


def created(response: Any, rtype: str) -> list[str]:
    """Ids of the ``rtype`` resources a transaction-response reports as created."""
    assert response.status_code == 200, response.text
    out = []
    for entry in response.json()["entry"]:
        location = entry["response"].get("location", "")
        if location.startswith(f"{rtype}/"):
            out.append(location.split("/")[1])
    return out


def blob_files(data_dir: Path, patient: str | None = None) -> list[Path]:
    """The content files under the blob store (of one patient's namespace)."""
    root = data_dir / "blobs" / patient if patient else data_dir / "blobs"
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def issues(response: Any) -> list[tuple[str, str]]:
    """(expression, diagnostics) of each issue of an OperationOutcome answer."""
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return [(",".join(i.get("expression", [])), i["diagnostics"]) for i in body["issue"]]


# -- the world --------------------------------------------------------------------------------
def _relationship(rid: str, patient: str, practitioner: str) -> dict[str, Any]:
    now = utcnow()
    return {
        "id": rid,
        "patient_id": patient,
        "practitioner_id": practitioner,
        "context": "solo",
        "starts": now - timedelta(days=1),
        "ends": now + timedelta(days=14),
        "created_by": "test",
    }


def build_world(client: TestClient) -> TestClient:
    """The world on ``client``'s app (the ``world`` fixture; tests elsewhere build it on another
    content store)."""
    put_all(
        client,
        {"resourceType": "Organization", "id": "lab1", "name": "Laboratoire Central"},
        {"resourceType": "Organization", "id": "hosp1", "name": "Hôpital du Nord"},
        {
            "resourceType": "Practitioner",
            "id": "gp",
            "active": True,
            "name": [{"family": "Muller", "given": ["Jean"]}],
        },
        {
            "resourceType": "Practitioner",
            "id": "gp2",
            "active": True,
            "name": [{"family": "Weber", "given": ["Lise"]}],
        },
        {"resourceType": "Practitioner", "id": "ph", "active": True, "name": [{"family": "Schmit"}]},
        {"resourceType": "Practitioner", "id": "stranger", "active": True},
        {
            "resourceType": "Patient",
            "id": "pa",
            "identifier": [{"system": "http://example.lu/matricule", "value": "1980010100187"}],
            "gender": "female",
        },
        {"resourceType": "Patient", "id": "pb", "gender": "male"},
        {"resourceType": "Patient", "id": "pc", "gender": "male"},
    )
    app: Any = client.app
    with writer(app.state.engine).begin() as conn:
        for rid, practitioner in (("r-gp", "gp"), ("r-gp2", "gp2"), ("r-ph", "ph")):
            conn.execute(care_relationship.insert().values(**_relationship(rid, "pa", practitioner)))
        conn.execute(
            record_status.insert().values(
                patient_id="pc", status="closed", closed_at=utcnow(), closed_reason="holder"
            )
        )
    return client
