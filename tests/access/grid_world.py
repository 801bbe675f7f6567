"""The world of ``test_policy_grid``: one record holding an item of every data category, and the
rights the matrix data file gives each profession in each care context.

The expectations are read from ``access/data/matrix.toml`` with ``tomllib`` here, never through
``access.matrix`` or ``access.policy``: the grid checks the decision against the legal table, so
it must not share the code under test. The items are ordinary FHIR resources whose type and codes
place them in their category (``access.categories``); the world checks, in the database, that the
store classified each as intended, so that a classification slip is not taken for a policy bug.
"""

from __future__ import annotations

import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sharedcare.access.categories import (
    CATEGORY_SYSTEM,
    IMMUNIZATION_VERIFICATION_SYSTEM,
    LOINC,
    SNOMED,
)
from sharedcare.access.matrix import MATRIX_FILE
from sharedcare.documents.content import PATIENT_EXTENSION

DATA: dict[str, Any] = tomllib.loads(MATRIX_FILE.read_text(encoding="utf-8"))
CELLS: dict[str, dict[str, str]] = {**DATA["matrix"], **DATA["platform_matrix"]}
"""Category → matrix column → cell (``rw``, ``r`` or ``-``), as the file spells it."""
VACCINATORS: frozenset[str] = frozenset(DATA["vaccination"]["vaccinators"])
VACCINATION_ROWS = frozenset({"vaccination", "vaccination-reported"})
"""Rows whose writers the file's ``[vaccination]`` list narrows (its comment above both rows)."""
POLICY_WRITES = frozenset({"identity", "holder-choices", "unfiled"})
"""Platform rows whose writers the file leaves to the access policy ("who writes them ... is
decided by the access policy, not here"; an upload's write "is checked as the content it will be
filed as"): the grid tests their reading only."""
WRITE_CATEGORIES: tuple[str, ...] = tuple(c for c in CELLS if c not in POLICY_WRITES)

REFERENT = "referent"
CONTEXTS = ("solo", "facility", "emergency", "permanent", REFERENT)
"""Annex 1 §3's three contexts, the holder's permanent grant, and the médecin référent designation."""
DESIGNATED = {c["code"] for c in DATA["columns"] if c.get("designated")}
COLUMNS: tuple[str, ...] = tuple(c["code"] for c in DATA["columns"] if c["code"] not in DESIGNATED)
"""The profession columns (tokens carry one of them: an account's profession is a column code)."""
PROFESSIONS: dict[str, str] = {
    **{code: entry["column"] for code, entry in DATA["professions"].items()},
    **{column: column for column in COLUMNS},
}
"""Every profession the decision may be asked about → its column: the file's professions by
their codes, and each column's code as a token carries it."""

PATIENT = "grid-pa"
"""The record every reader looks at; written only while the world is built."""
FACILITY, EMERGENCY, OUTSIDERS = "grid-facility", "grid-emergency", "grid-outsiders"
"""The care facility, the hospital whose emergency department registers the holder, and the
facility the outsiders act for (it registered the holder in both ways)."""


def referent_column(profession: str) -> bool:
    """Only a physician (the ``med`` column) is designated médecin référent (art. 9(4))."""
    return PROFESSIONS[profession] == "med"


def column_in(profession: str, context: str) -> str:
    """The column whose cells apply: ``mr`` for the designated physician, else the profession's."""
    return "mr" if context == REFERENT else PROFESSIONS[profession]


def readable(profession: str, context: str) -> frozenset[str]:
    column = column_in(profession, context)
    return frozenset(cat for cat, row in CELLS.items() if row[column] in ("r", "rw"))


def vaccinates(profession: str) -> bool:
    """A listed vaccinator, or a bare column code whose column writes the vaccination record
    (the file's comment on ``[vaccination]``)."""
    if profession in COLUMNS:
        return CELLS["vaccination"][profession] == "rw"
    return profession in VACCINATORS


def writable(profession: str, context: str) -> frozenset[str]:
    column = column_in(profession, context)
    return frozenset(
        cat
        for cat in WRITE_CATEGORIES
        if CELLS[cat][column] == "rw" and (cat not in VACCINATION_ROWS or vaccinates(profession))
    )


@dataclass(frozen=True, slots=True)
class Combo:
    """One cell group of the grid: a profession in a care context."""

    profession: str
    context: str

    @property
    def id(self) -> str:
        return f"{self.profession}-{self.context}"

    @property
    def practitioner(self) -> str:
        return f"grid-{self.id}"

    @property
    def write_patient(self) -> str:
        """The combo's own record for write tests, in the same care context as ``PATIENT``."""
        return f"grid-w-{self.id}"

    @property
    def organization(self) -> str | None:
        return {"facility": FACILITY, "emergency": EMERGENCY}.get(self.context)


def _contexts(profession: str) -> tuple[str, ...]:
    return CONTEXTS if referent_column(profession) else CONTEXTS[:-1]


COMBOS: tuple[Combo, ...] = tuple(Combo(col, ctx) for col in COLUMNS for ctx in _contexts(col))
"""The full grid: every column, as a token carries it, in every context."""
LISTED: tuple[str, ...] = tuple(DATA["professions"])
PROFESSION_COMBOS: tuple[Combo, ...] = tuple(
    Combo(p, _contexts(p)[i % len(_contexts(p))]) for i, p in enumerate(LISTED)
)
"""Each profession the file lists, by its own code, in one context (taken in turn, so that every
context is met): its cells are its column's, already crossed with every context above; what is
its own (the column it maps to, the ``[vaccination]`` list) is the same in every context."""

OUTSIDER_KINDS = ("stranger", "delicensed", "blocked")


@dataclass(frozen=True, slots=True)
class Outsider:
    """A professional who must see nothing: no care relationship, a withdrawn licence, or blocked
    by the holder. The last two have a relationship in every context (a code, a permanent grant,
    a facility and an emergency registration of the facility they act for, and for physicians
    the referring physician's designation), so no context can let them in."""

    kind: str
    column: str

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.column}"

    @property
    def practitioner(self) -> str:
        return f"grid-{self.id}"

    @property
    def write_patient(self) -> str:
        return f"grid-w-{self.id}"

    @property
    def organization(self) -> str | None:
        return None if self.kind == "stranger" else OUTSIDERS


OUTSIDER_COLUMNS = ("med", "pha", "inf")
"""The physician (every context, the referring physician's included) and two other columns: what
an outsider sees depends on their relationships, not on the cells."""
OUTSIDER_CASES: tuple[Outsider, ...] = tuple(Outsider(k, c) for k in OUTSIDER_KINDS for c in OUTSIDER_COLUMNS)


# --- one item per category ------------------------------------------------------------------------------

Builder = Callable[[str], dict[str, Any]]
"""The content of an item in a patient's record (no id)."""


def _ref(patient: str) -> dict[str, str]:
    return {"reference": f"Patient/{patient}"}


def _document(coding: dict[str, str], field: str = "type") -> Builder:
    def build(patient: str) -> dict[str, Any]:
        return {
            "resourceType": "DocumentReference",
            "status": "current",
            field: {"coding": [coding]} if field == "type" else [{"coding": [coding]}],
            "subject": _ref(patient),
            "content": [{"attachment": {"contentType": "text/plain", "data": "R3JpZA=="}}],
        }

    return build


def _observation(category: str, code: str) -> Builder:
    def build(patient: str) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": category,
                        }
                    ]
                }
            ],
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "subject": _ref(patient),
            "valueString": "grid",
        }

    return build


def _procedure(category: dict[str, str] | None) -> Builder:
    def build(patient: str) -> dict[str, Any]:
        res: dict[str, Any] = {
            "resourceType": "Procedure",
            "status": "completed",
            "code": {"text": "grid"},
            "subject": _ref(patient),
        }
        if category:
            res["category"] = {"coding": [category]}
        return res

    return build


def _immunization(reported: bool) -> Builder:
    def build(patient: str) -> dict[str, Any]:
        res: dict[str, Any] = {
            "resourceType": "Immunization",
            "status": "completed",
            "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "08"}]},
            "patient": _ref(patient),
            "occurrenceDateTime": "2020-01-15",
            "primarySource": False,
        }
        if reported:
            res["meta"] = {"tag": [{"system": IMMUNIZATION_VERIFICATION_SYSTEM, "code": "patient-reported"}]}
        return res

    return build


def _simple(rtype: str, patient_field: str, **extra: Any) -> Builder:
    def build(patient: str) -> dict[str, Any]:
        return {"resourceType": rtype, **extra, patient_field: _ref(patient)}

    return build


def _personal(patient: str) -> dict[str, Any]:
    """A list the holder made (its ``source`` is the holder: personal expression); in the read
    record it also lists every other item, for ``_include``."""
    return {
        "resourceType": "List",
        "status": "current",
        "mode": "working",
        "title": "My notes",
        "subject": _ref(patient),
        "source": _ref(patient),
    }


def _provenance(patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Provenance",
        "target": [_ref(patient)],
        "recorded": "2024-01-01T00:00:00Z",
        "agent": [{"who": {"reference": "Organization/grid-facility"}}],
    }


def _consent(patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
        "patient": _ref(patient),
        "policyRule": {"text": "grid"},
    }


def _unfiled(patient: str) -> dict[str, Any]:
    """Content uploaded ahead of its document (``documents.submission``): in the record through
    the platform's ``binary-patient`` extension, tagged ``unfiled`` until a document claims it."""
    return {
        "resourceType": "Binary",
        "contentType": "text/plain",
        "data": "R3JpZA==",
        "meta": {
            "extension": [{"url": PATIENT_EXTENSION, "valueReference": _ref(patient)}],
            "tag": [{"system": CATEGORY_SYSTEM, "code": "unfiled"}],
        },
    }


ITEMS: dict[str, Builder] = {
    "personal-expression": _personal,
    "summaries": lambda p: {
        "resourceType": "Composition",
        "status": "final",
        "type": {"coding": [{"system": LOINC, "code": "60591-5"}]},
        "subject": _ref(p),
        "date": "2024-01-01",
        "author": [{"reference": "Organization/grid-facility"}],
        "title": "Patient summary",
    },
    "history": _simple("Condition", "subject", code={"text": "Asthma"}),
    "allergies": _simple("AllergyIntolerance", "patient", code={"text": "Penicillin"}),
    "devices": _simple(
        "DeviceUseStatement", "subject", status="active", device={"reference": "Device/grid-pacemaker"}
    ),
    "care-reports": _procedure(None),
    "certificates": _document({"system": LOINC, "code": "72267-8"}),
    "imaging": _simple("ImagingStudy", "subject", status="available"),
    "lab-results": _observation("laboratory", "2345-7"),
    "dispensations": _simple(
        "MedicationDispense", "subject", status="completed", medicationCodeableConcept={"text": "Salbutamol"}
    ),
    "care-assessments": _simple("QuestionnaireResponse", "subject", status="completed"),
    "prescriptions": _simple(
        "MedicationRequest",
        "subject",
        status="active",
        intent="order",
        medicationCodeableConcept={"text": "Salbutamol"},
    ),
    "prevention": _simple("RiskAssessment", "subject", status="final"),
    "socio-educational": _document({"system": CATEGORY_SYSTEM, "code": "socio-educational"}, "category"),
    "social-environment": _observation("social-history", "76437-3"),
    "legal-protection": _document({"system": LOINC, "code": "64299-1"}),
    "social-coverage": lambda p: {
        "resourceType": "Coverage",
        "status": "active",
        "beneficiary": _ref(p),
        "payor": [{"reference": "Organization/grid-facility"}],
    },
    "health-education": _procedure({"system": SNOMED, "code": "409073007"}),
    "access-traces": _provenance,
    "holder-choices": _consent,
    "vaccination": _immunization(False),
    "vaccination-reported": _immunization(True),
    "unfiled": _unfiled,
}
"""Category → builder of its item; ``identity`` is the Patient itself."""
assert set(ITEMS) | {"identity"} == set(CELLS), "every category of the matrix file has an item"


def item_id(category: str) -> str:
    return f"grid-{category}"


def item_key(category: str) -> str:
    """``Type/id`` of the category's item in ``PATIENT``'s record."""
    if category == "identity":
        return f"Patient/{PATIENT}"
    return f"{ITEMS[category](PATIENT)['resourceType']}/{item_id(category)}"


KEYS: dict[str, str] = {cat: item_key(cat) for cat in CELLS}
"""Category → key of its item in the read record."""
SEARCH_TYPES: tuple[str, ...] = tuple(sorted({k.split("/")[0] for k in KEYS.values()}))


def search_url(rtype: str) -> str:
    """The search of one type in the read record (the Patient by id: it has no ``patient``)."""
    where = f"_id={PATIENT}" if rtype == "Patient" else f"patient={PATIENT}"
    return f"/fhir/{rtype}?{where}&_count=100&_total=accurate"


def record_items() -> Iterator[dict[str, Any]]:
    """The read record: the Patient, then one item per category with stable ids; the holder's
    list names every other item."""
    yield {"resourceType": "Patient", "id": PATIENT, "name": [{"family": "Grid"}], "gender": "female"}
    for category, build in ITEMS.items():
        res = {**build(PATIENT), "id": item_id(category)}
        if category == "personal-expression":
            res["entry"] = [
                {"item": {"reference": key}}
                for cat, key in KEYS.items()
                if cat not in ("personal-expression",)
            ]
        yield res


def entry_for(category: str, patient: str) -> dict[str, Any]:
    """A Bundle entry creating the category's item in ``patient``'s record."""
    res = ITEMS[category](patient)
    return {
        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
        "resource": res,
        "request": {"method": "POST", "url": res["resourceType"]},
    }
