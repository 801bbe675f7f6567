"""A small world for the portal tests (HTTP and browser): a directory, two records, accounts.

Accounts are enrolled for real (activation code, argon2 password with cheap parameters, TOTP);
their second factor is confirmed one step in the past, so that a test can sign each of them in
with the codes of the current and the next step without waiting.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyotp
from fastapi import FastAPI
from sqlalchemy import Engine

from sharedcare.access.principals import PrincipalKind
from sharedcare.identity import accounts
from sharedcare.identity.matricule import MATRICULE_SYSTEM, generate
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer
from support import add_care

PASSWORD = "blue kettle sings at dawn"
MATRICULE_A = generate(date(1980, 4, 12), 7)
MATRICULE_B = generate(date(1975, 9, 30), 12)
MATRICULE_NEW = generate(date(1990, 1, 2), 3)
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
LOINC = "http://loinc.org"


def _practitioner(rid: str, given: str, family: str) -> dict[str, Any]:
    return {
        "resourceType": "Practitioner",
        "id": rid,
        "active": True,
        "name": [{"prefix": ["Dr"], "given": [given], "family": family}],
    }


DIRECTORY = [
    {"resourceType": "Organization", "id": "hosp", "name": "Hôpital du Nord"},
    _practitioner("gp", "Claire", "Hoffmann"),
    _practitioner("pharm", "Luc", "Wagner"),
    _practitioner("stranger", "Ines", "Kieffer"),
]
PATIENT_A = {
    "resourceType": "Patient",
    "id": "pa",
    "identifier": [{"system": MATRICULE_SYSTEM, "value": MATRICULE_A}],
    "name": [{"family": "Muller", "given": ["Marie"]}],
    "gender": "female",
    "birthDate": "1980-04-12",
}
PATIENT_B = {
    "resourceType": "Patient",
    "id": "pb",
    "identifier": [{"system": MATRICULE_SYSTEM, "value": MATRICULE_B}],
    "name": [{"family": "Schmit", "given": ["Paul"]}],
    "gender": "male",
    "birthDate": "1975-09-30",
}
PATIENT_NEW = {
    "resourceType": "Patient",
    "id": "pn",
    "identifier": [{"system": MATRICULE_SYSTEM, "value": MATRICULE_NEW}],
    "name": [{"family": "Neumann", "given": ["Nora"]}],
    "gender": "female",
    "birthDate": "1990-01-02",
}


def _lab(rid: str, patient: str, code: str, text: str, when: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": code}], "text": text},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": 5.4,
            "unit": "mmol/L",
            "system": "http://unitsofmeasure.org",
            "code": "mmol/L",
        },
    }


RECORD_A = [
    _lab("glucose-a", "pa", "2345-7", "Glucose", "2026-01-10T08:00:00Z"),
    _lab("hb-a", "pa", "718-7", "Haemoglobin", "2026-02-11T08:00:00Z"),
    {
        "resourceType": "Condition",
        "id": "asthma-a",
        "subject": {"reference": "Patient/pa"},
        "code": {"text": "Asthma"},
        "recordedDate": "2025-06-01",
    },
    {
        "resourceType": "DocumentReference",
        "id": "letter-a",
        "status": "current",
        "type": {"coding": [{"system": LOINC, "code": "18842-5", "display": "Discharge summary"}]},
        "subject": {"reference": "Patient/pa"},
        "date": "2026-03-01T10:00:00Z",
        "description": "Discharge letter Hôpital du Nord",
        "content": [{"attachment": {"contentType": "text/plain", "data": "T0s="}}],
    },
]
RECORD_B = [_lab("glucose-b", "pb", "2345-7", "Glucose B", "2026-01-12T08:00:00Z")]


@dataclass
class Person:
    """An enrolled account: what the person types to sign in, and their TOTP secret."""

    account_id: str
    login: str
    secret: str
    display: str

    def code(self, offset_steps: int = 0) -> str:
        return pyotp.TOTP(self.secret).at(time.time() + 30 * offset_steps)


@dataclass
class World:
    app: FastAPI
    settings: Settings
    patient: Person
    representative: Person
    gp: Person
    pharmacist: Person
    stranger: Person
    pending_code: str
    """Activation code of Nora Neumann's pending account (matricule ``MATRICULE_NEW``)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def engine(self) -> Engine:
        engine: Engine = self.app.state.engine
        return engine


def enrol(engine: Engine, settings: Settings, kind: PrincipalKind, login: str, **fields: Any) -> Person:
    """Create an account and enrol it completely (activation, password, confirmed TOTP)."""
    past = datetime.now(UTC) - timedelta(seconds=60)
    fields.setdefault("language", "en")  # the tests read English; test_i18n covers the others
    with accounts.transaction(engine) as conn:
        account = accounts.create_account(conn, kind, **fields)
        code = accounts.issue_activation_code(conn, account.id, settings)
        accounts.activate(conn, settings, code=code, matricule_or_login=login, contact="someone@example.org")
        accounts.set_password(conn, settings, account.id, PASSWORD)
        secret, _uri, _svg = accounts.start_totp_enrolment(conn, account.id)
        accounts.confirm_totp(conn, account.id, pyotp.TOTP(secret).at(past), now=past)
    return Person(account.id, login, secret, account.display_name)


def build_world(app: FastAPI, settings: Settings, *, solo_for_gp: bool = True) -> World:
    """Directory, records A and B, and the accounts; the GP is in Marie Muller's care (solo)."""
    fhir = app.state.fhir
    for res in [*DIRECTORY, PATIENT_A, PATIENT_B, PATIENT_NEW, *RECORD_A, *RECORD_B]:
        fhir.update(res["resourceType"], res["id"], res)
    engine: Engine = app.state.engine
    patient = enrol(
        engine,
        settings,
        PrincipalKind.PATIENT,
        MATRICULE_A,
        display_name="Marie Muller",
        matricule=MATRICULE_A,
        patient_id="pa",
    )
    representative = enrol(
        engine,
        settings,
        PrincipalKind.REPRESENTATIVE,
        "jean.muller",
        display_name="Jean Muller",
        username="jean.muller",
    )
    gp = enrol(
        engine,
        settings,
        PrincipalKind.PROFESSIONAL,
        "dr.hoffmann",
        display_name="Dr Claire Hoffmann",
        username="dr.hoffmann",
        practitioner_id="gp",
        profession="med",
    )
    pharmacist = enrol(
        engine,
        settings,
        PrincipalKind.PROFESSIONAL,
        "luc.wagner",
        display_name="Luc Wagner",
        username="luc.wagner",
        practitioner_id="pharm",
        profession="pha",
    )
    stranger = enrol(
        engine,
        settings,
        PrincipalKind.PROFESSIONAL,
        "dr.kieffer",
        display_name="Dr Ines Kieffer",
        username="dr.kieffer",
        practitioner_id="stranger",
        profession="med",
    )
    with accounts.transaction(engine) as conn:
        pending = accounts.create_account(
            conn, PrincipalKind.PATIENT, display_name="Nora Neumann", matricule=MATRICULE_NEW, patient_id="pn"
        )
        pending_code = accounts.issue_activation_code(conn, pending.id, settings)
    if solo_for_gp:
        now = datetime.now(UTC).replace(tzinfo=None)
        with writer(engine).begin() as conn:
            add_care(conn, "gp-solo", "pa", "gp", now)
    return World(app, settings, patient, representative, gp, pharmacist, stranger, pending_code)
