"""The International Patient Summary (HL7 IPS 1.x, FHIR R4) of a record: ``Patient/[id]/$summary``.

``generate_summary`` builds a *document* Bundle from the record as the caller may read it
(``record.open_record``: the single access decision, audited), so a pharmacist's summary holds
only what a pharmacist reads, and the holder's holds everything but the items still held back
for a consultation d'annonce. ``persist_summary`` has a professional author and sign off a
summary, stored as a ``DocumentReference`` (type LOINC 60591-5, category ``summaries``) whose
attachment is the document itself, with its size and SHA-1; ``summary_document`` reads it back
and checks it. ``read_summary`` (``reader``) understands IPS documents made elsewhere and
``profile_issues`` (``profile``) checks the IPS rules.

Shape of a generated document (IPS ``Bundle-uv-ips`` / ``Composition-uv-ips``):

- ``Bundle.type`` document, ``identifier`` (a ``urn:uuid``), ``timestamp``; the Composition is
  the first entry, then the Patient, the sections' resources and what they refer to;
- every ``fullUrl`` is the resource's absolute URL on this server (``urn:uuid`` when the base
  URL is unknown, and for what the summary itself makes); every reference inside the Bundle is
  rewritten to the ``fullUrl`` of an entry. A reference the summary cannot resolve (another
  server's, a resource the caller may not read, an encounter) is dropped where the element is
  optional, else kept as a display-only reference: nothing in the document points outside it;
- the three required sections (problems, allergies, medication) always, with ``emptyReason``
  ``unavailable`` and a "no information" narrative when the record holds nothing the caller may
  read; the others only when they have entries;
- a generated XHTML narrative (escaped) for the Composition and every section.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from html import escape
from typing import Any

import orjson

from sharedcare.access.categories import CATEGORY_SYSTEM
from sharedcare.access.requests import DISCLOSURE_SYSTEM, PENDING_DISCLOSURE
from sharedcare.crossborder import narrative as nv
from sharedcare.crossborder.profile import profile_issues
from sharedcare.crossborder.reader import ReadSummary, SummaryUnreadable, read_summary
from sharedcare.crossborder.record import RecordView, open_record
from sharedcare.crossborder.texts import DEFAULT_LANGUAGE, text
from sharedcare.fhir.definitions import DATA, definitions
from sharedcare.fhir.search.reference import split_reference
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.store import Stored

__all__ = [
    "SECTIONS",
    "Limits",
    "ReadSummary",
    "SectionSpec",
    "Signer",
    "SummaryCorrupted",
    "SummaryUnreadable",
    "build_summary",
    "generate_summary",
    "persist_summary",
    "profile_issues",
    "read_summary",
    "summary_document",
]

LOINC = "http://loinc.org"
SUMMARY_TYPE = {"system": LOINC, "code": "60591-5", "display": "Patient summary Document"}
BUNDLE_PROFILE = "http://hl7.org/fhir/uv/ips/StructureDefinition/Bundle-uv-ips"
COMPOSITION_PROFILE = "http://hl7.org/fhir/uv/ips/StructureDefinition/Composition-uv-ips"
OPERATION = "http://hl7.org/fhir/uv/ips/OperationDefinition/summary"
EMPTY_REASON = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/list-empty-reason",
            "code": "unavailable",
            "display": "Unavailable",
        }
    ]
}
CONFIDENTIALITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
_CONFIDENTIALITY_ORDER = ("U", "L", "M", "N", "R", "V")
IPS_FORMAT = {"system": "urn:ietf:rfc:3986", "code": BUNDLE_PROFILE}
"""``DocumentReference.content.format`` of an IPS document (IHE FormatCode value set)."""
AGENCY_IDENTIFIER = {
    "system": "https://sharedcare.lu/fhir/NamingSystem/organization",
    "value": "agence-esante",
}
AGENCY_NAME = "Agence eSanté"
_DOC_NAMESPACE = uuid.UUID("5d0c3a8e-4f1b-5a8e-9d3c-2e7f0a6b1c4d")
"""Namespace of the ``urn:uuid`` full URLs of resources when the server's base URL is unknown."""


@dataclass(frozen=True, slots=True)
class SectionSpec:
    """One section of the IPS Composition: its key, LOINC code and IPS conformance level."""

    key: str
    code: str
    display: str
    level: str
    """``required`` (always present, ``emptyReason`` when empty), ``recommended``, ``optional``."""


SECTIONS = (
    SectionSpec("problems", "11450-4", "Problem list - Reported", "required"),
    SectionSpec("allergies", "48765-2", "Allergies and adverse reactions Document", "required"),
    SectionSpec("medications", "10160-0", "History of Medication use Narrative", "required"),
    SectionSpec("immunizations", "11369-6", "History of Immunization Narrative", "recommended"),
    SectionSpec("results", "30954-2", "Relevant diagnostic tests/laboratory data Narrative", "recommended"),
    SectionSpec("procedures", "47519-4", "History of Procedures Document", "recommended"),
    SectionSpec("devices", "46264-8", "History of medical device use", "recommended"),
    SectionSpec("vital-signs", "8716-3", "Vital signs", "optional"),
    SectionSpec("past-illness", "11348-0", "History of Past illness Narrative", "optional"),
    SectionSpec("functional-status", "47420-5", "Functional status assessment note", "optional"),
    SectionSpec("plan-of-care", "18776-5", "Plan of care note", "optional"),
    SectionSpec("social-history", "29762-2", "Social history Narrative", "optional"),
    SectionSpec("pregnancy", "10162-6", "History of pregnancies Narrative", "optional"),
    SectionSpec("advance-directives", "42348-3", "Advance healthcare directives", "optional"),
)
SUMMARY_TYPES = (
    "Condition",
    "AllergyIntolerance",
    "MedicationStatement",
    "MedicationRequest",
    "Immunization",
    "Observation",
    "Procedure",
    "DeviceUseStatement",
    "CarePlan",
    "ClinicalImpression",
    "Consent",
)
"""The compartment types the sections are chosen from."""
FOLLOWED_TYPES = frozenset(
    {"Practitioner", "PractitionerRole", "Organization", "Location", "Medication", "Substance", "Device"}
)
"""Types an entry's references are followed to (and included) when the caller may read them."""
_FOLLOW_ROUNDS = 3


@dataclass(frozen=True, slots=True)
class Limits:
    """How much of a long record a summary keeps (the newest first)."""

    results: int = 50
    """Laboratory results: the last result of each test, for this many tests."""
    vital_signs: int = 20
    procedures: int = 20
    past_illness: int = 30
    entries: int = 200
    """Any other section."""


@dataclass(frozen=True, slots=True)
class Signer:
    """The professional who authors and signs a stored summary."""

    practitioner_id: str
    display: str = ""
    organization_id: str | None = None


class SummaryCorrupted(ValueError):
    """A stored summary's bytes no longer match the size or hash its DocumentReference records."""


# -- selection rules --------------------------------------------------------------------------
_ACTIVE_PROBLEM = frozenset({"active", "recurrence", "relapse"})
_PAST_PROBLEM = frozenset({"inactive", "remission", "resolved"})
_NOT_TRUE = frozenset({"refuted", "entered-in-error"})
_CURRENT_MEDICATION = frozenset({"active", "on-hold", "intended"})
_RESULT_STATUS = frozenset({"final", "amended", "corrected", "preliminary"})
_SOCIAL_CODES = frozenset({"72166-2", "11367-0", "74013-4", "11331-6"})
"""Tobacco smoking status, history of tobacco use, alcoholic drinks per day, history of alcohol use."""
_PREGNANCY_CODES = frozenset(
    {"82810-3", "11449-6", "11778-8", "11779-6", "11780-4", "11636-8", "11637-6", "11638-4"}
    | {"11639-2", "11640-0", "11612-9", "11613-7", "33065-4"}
)
"""Pregnancy status, estimated delivery dates, and the pregnancy outcome counts (IPS value sets)."""


def _verified(res: Mapping[str, Any]) -> bool:
    return (
        nv.coded(res.get("verificationStatus")) not in _NOT_TRUE and res.get("status") != "entered-in-error"
    )


def _categories(res: Mapping[str, Any]) -> set[str]:
    return {
        str(c.get("code"))
        for cat in nv.items(res.get("category"))
        if isinstance(cat, Mapping)
        for c in nv.items(cat.get("coding"))
        if isinstance(c, Mapping)
    }


def _loinc(res: Mapping[str, Any]) -> set[str]:
    code = res.get("code")
    codings = code.get("coding") if isinstance(code, Mapping) else None
    return {
        str(c.get("code")) for c in nv.items(codings) if isinstance(c, Mapping) and c.get("system") == LOINC
    }


def _newest(items: Iterable[dict[str, Any]], cap: int) -> list[dict[str, Any]]:
    return sorted(items, key=nv.when, reverse=True)[:cap]


def _code_key(res: Mapping[str, Any]) -> str:
    code = res.get("code")
    if isinstance(code, Mapping):
        for c in nv.items(code.get("coding")):
            if isinstance(c, Mapping) and c.get("code"):
                return f"{c.get('system')}|{c.get('code')}"
        if code.get("text"):
            return f"text|{code['text']}"
    return f"id|{res.get('id')}"


def _last_per_code(items: Iterable[dict[str, Any]], cap: int) -> list[dict[str, Any]]:
    """The newest resource of each code, newest codes first."""
    latest: dict[str, dict[str, Any]] = {}
    for res in _newest(items, 2**31):
        latest.setdefault(_code_key(res), res)
    return list(latest.values())[:cap]


def select_sections(resources: Iterable[dict[str, Any]], limits: Limits) -> dict[str, list[dict[str, Any]]]:
    """The IPS selection rules: which of the readable resources go into which section."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for res in resources:
        by_type.setdefault(res["resourceType"], []).append(res)
    conditions = [c for c in by_type.get("Condition", ()) if _verified(c)]
    observations = [o for o in by_type.get("Observation", ()) if o.get("status") in _RESULT_STATUS]
    social = [o for o in observations if _loinc(o) & _SOCIAL_CODES or "social-history" in _categories(o)]
    pregnancy = [o for o in observations if _loinc(o) & _PREGNANCY_CODES and o not in social]
    special = {id(o) for o in social + pregnancy}
    vital = [o for o in observations if "vital-signs" in _categories(o) and id(o) not in special]
    labs = [
        o
        for o in observations
        if _categories(o) & {"laboratory", "imaging"} and id(o) not in special and o not in vital
    ]
    medications = [
        m
        for m in by_type.get("MedicationStatement", []) + by_type.get("MedicationRequest", [])
        if m.get("status") in _CURRENT_MEDICATION
    ]
    advance = [
        c
        for c in by_type.get("Consent", ())
        if c.get("status") == "active" and nv.coded(c.get("scope")) == "adr"
    ]
    return {
        "problems": _newest(
            (c for c in conditions if nv.coded(c.get("clinicalStatus")) in _ACTIVE_PROBLEM), limits.entries
        ),
        "allergies": _newest(
            (a for a in by_type.get("AllergyIntolerance", ()) if _verified(a)), limits.entries
        ),
        "medications": _newest(medications, limits.entries),
        "immunizations": _newest(
            (i for i in by_type.get("Immunization", ()) if i.get("status") == "completed"), limits.entries
        ),
        "results": _last_per_code(labs, limits.results),
        "procedures": _newest(
            (p for p in by_type.get("Procedure", ()) if p.get("status") in ("completed", "in-progress")),
            limits.procedures,
        ),
        "devices": _newest(
            (d for d in by_type.get("DeviceUseStatement", ()) if d.get("status") != "entered-in-error"),
            limits.entries,
        ),
        "vital-signs": _last_per_code(vital, limits.vital_signs),
        "past-illness": _newest(
            (c for c in conditions if nv.coded(c.get("clinicalStatus")) in _PAST_PROBLEM), limits.past_illness
        ),
        "functional-status": _newest(
            (c for c in by_type.get("ClinicalImpression", ()) if c.get("status") == "completed"),
            limits.entries,
        ),
        "plan-of-care": _newest(
            (c for c in by_type.get("CarePlan", ()) if c.get("status") == "active"), limits.entries
        ),
        "social-history": _last_per_code(social, limits.entries),
        "pregnancy": _last_per_code(pregnancy, limits.entries),
        "advance-directives": _newest(advance, limits.entries),
    }


def _pending(res: Mapping[str, Any]) -> bool:
    """Held back for a consultation d'annonce (``access.requests``): never in a stored summary,
    which the holder reads."""
    meta = res.get("meta")
    labels = meta.get("security") if isinstance(meta, Mapping) else None
    return any(
        isinstance(s, Mapping)
        and s.get("system") == DISCLOSURE_SYSTEM
        and s.get("code") == PENDING_DISCLOSURE
        for s in nv.items(labels)
    )


def _confidentiality(resources: Iterable[Mapping[str, Any]]) -> str:
    """The most restrictive v3 confidentiality code among the entries (normal by default)."""
    level = _CONFIDENTIALITY_ORDER.index("N")
    for res in resources:
        meta = res.get("meta")
        for label in nv.items(meta.get("security") if isinstance(meta, Mapping) else None):
            if isinstance(label, Mapping) and label.get("system") == CONFIDENTIALITY_SYSTEM:
                code = label.get("code")
                if code in _CONFIDENTIALITY_ORDER:
                    level = max(level, _CONFIDENTIALITY_ORDER.index(code))
    return _CONFIDENTIALITY_ORDER[level]


# -- references -------------------------------------------------------------------------------
@cache
def _mandatory() -> dict[str, frozenset[str]]:
    """Per resource type, its top-level elements of minimum cardinality 1 (``medication`` for
    ``medication[x]``): an unresolvable reference there is kept as a display, never dropped."""
    with gzip.open(DATA / "profiles-resources.json.gz", "rb") as fh:
        bundle = json.load(fh)
    out: dict[str, frozenset[str]] = {}
    for entry in bundle["entry"]:
        sd = entry["resource"]
        if sd.get("resourceType") != "StructureDefinition" or sd.get("kind") != "resource":
            continue
        names = {
            el["path"].split(".")[1].replace("[x]", "")
            for el in sd.get("snapshot", {}).get("element", [])
            if el["path"].count(".") == 1 and el.get("min", 0) > 0
        }
        out[sd["type"]] = frozenset(names)
    return out


def _is_mandatory(rtype: str, key: str) -> bool:
    names = _mandatory().get(rtype, frozenset())
    return key in names or any(key.startswith(n) and key[len(n) : len(n) + 1].isupper() for n in names)


_DROP = object()


class _References:
    """Rewrites the literal references of the entries to the entries' full URLs."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.types = definitions().resource_types
        self.full_urls: dict[tuple[str, str], str] = {}

    def target(self, reference: str) -> tuple[str, str] | None:
        """(type, id) of a reference to a resource of this server, else None."""
        if reference.startswith("#") or reference.startswith("urn:"):
            return None
        if "://" in reference and not (self.base_url and reference.startswith(self.base_url + "/")):
            return None
        rtype, rid = split_reference(reference, self.types)
        return (rtype, rid) if rtype and rid else None

    def full_url(self, key: tuple[str, str]) -> str:
        if self.base_url:
            return f"{self.base_url}/{key[0]}/{key[1]}"
        return f"urn:uuid:{uuid.uuid5(_DOC_NAMESPACE, f'{key[0]}/{key[1]}')}"

    def targets(self, node: Any) -> set[tuple[str, str]]:
        """Every local (type, id) referenced anywhere in ``node``."""
        found: set[tuple[str, str]] = set()
        stack = [node]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                ref = item.get("reference")
                if isinstance(ref, str):
                    key = self.target(ref)
                    if key is not None:
                        found.add(key)
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
        return found

    def rewrite(self, res: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``res`` whose every reference resolves inside the document."""
        rtype = res["resourceType"]
        out: dict[str, Any] = {}
        for key, value in res.items():
            cleaned = self._clean(value, droppable=not _is_mandatory(rtype, key))
            if cleaned is not _DROP:
                out[key] = cleaned
        return out

    def _clean(self, value: Any, *, droppable: bool) -> Any:
        """``value`` with its references rewritten; ``_DROP`` when nothing of it is left."""
        if isinstance(value, list):
            items = [c for c in (self._clean(v, droppable=droppable) for v in value) if c is not _DROP]
            return items or _DROP
        if not isinstance(value, dict):
            return value
        ref = value.get("reference")
        if isinstance(ref, str) and not ref.startswith("#"):
            key = self.target(ref)
            if key is not None and key in self.full_urls:
                value = {**value, "reference": self.full_urls[key]}
            else:
                value = {k: v for k, v in value.items() if k != "reference"}
                if not value.get("display") and not value.get("identifier"):
                    if droppable:
                        return _DROP
                    value["display"] = (key or ("", ""))[0] or "Not included in this summary"
        # nested elements: a reference inside a backbone element may be its required part: kept
        out = {k: self._clean(v, droppable=False) for k, v in value.items()}
        return {k: c for k, c in out.items() if c is not _DROP} or _DROP


# -- assembly ---------------------------------------------------------------------------------
@dataclass
class _Entry:
    key: tuple[str, str]
    resource: dict[str, Any]
    stored: Stored | None = None


@dataclass
class BuiltSummary:
    """A generated document and the stored resources it holds (for the audit record)."""

    bundle: dict[str, Any]
    returned: list[Stored] = field(default_factory=list)


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def build_summary(
    patient: Stored,
    resources: Iterable[Stored],
    fetch: Callable[[Iterable[tuple[str, str]]], Mapping[tuple[str, str], Stored]],
    *,
    base_url: str = "",
    language: str = DEFAULT_LANGUAGE,
    signer: Signer | None = None,
    limits: Limits | None = None,
    now: datetime | None = None,
    exclude_pending: bool = False,
) -> BuiltSummary:
    """The IPS document of ``patient`` from ``resources`` (what the caller may read of the
    record); ``fetch`` gives the readable resources an entry refers to. A pure function of its
    inputs (but the fresh document id): the service functions below supply them."""
    now = now or datetime.now(UTC)
    limits = limits or Limits()
    stored_by_key = {(s.type, s.id): s for s in resources}
    parsed = [(s, s.resource()) for s in stored_by_key.values()]
    chosen = select_sections([res for _s, res in parsed if not (exclude_pending and _pending(res))], limits)
    refs = _References(base_url)
    entries: dict[tuple[str, str], _Entry] = {}
    patient_key = ("Patient", patient.id)
    entries[patient_key] = _Entry(patient_key, patient.resource(), patient)
    for items in chosen.values():
        for res in items:
            key = (res["resourceType"], res["id"])
            entries.setdefault(key, _Entry(key, res, stored_by_key.get(key)))
    _follow(entries, refs, fetch, exclude_pending)
    for key in entries:
        refs.full_urls[key] = refs.full_url(key)
    sources = {key: e.resource for key, e in entries.items()}

    doc_id = str(uuid.uuid4())
    agency = _agency()
    made: list[tuple[str, dict[str, Any]]] = [(f"urn:uuid:{agency['id']}", agency)]
    author_url = made[0][0]
    if signer is not None:
        signer_key = ("Practitioner", signer.practitioner_id)
        if signer_key not in entries:
            found = fetch([signer_key]).get(signer_key)
            if found is not None:
                entries[signer_key] = _Entry(signer_key, found.resource(), found)
                refs.full_urls[signer_key] = refs.full_url(signer_key)
            else:
                person = _practitioner(signer)
                made.append((f"urn:uuid:{person['id']}", person))
                refs.full_urls[signer_key] = made[-1][0]
        author_url = refs.full_urls[signer_key]

    composition = _composition(
        doc_id,
        patient=sources[patient_key],
        patient_url=refs.full_urls[patient_key],
        chosen=chosen,
        refs=refs,
        sources=sources,
        language=language,
        now=now,
        author_url=author_url,
        agency_url=made[0][0],
        signer=signer,
    )
    bundle_entries = [{"fullUrl": f"urn:uuid:{doc_id}", "resource": composition}]
    bundle_entries += [
        {"fullUrl": refs.full_urls[k], "resource": refs.rewrite(e.resource)} for k, e in entries.items()
    ]
    bundle_entries += [{"fullUrl": url, "resource": res} for url, res in made]
    bundle = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [BUNDLE_PROFILE]},
        "language": language,
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{doc_id}"},
        "type": "document",
        "timestamp": _instant(now),
        "entry": bundle_entries,
    }
    return BuiltSummary(bundle, [e.stored for e in entries.values() if e.stored is not None])


def _follow(
    entries: dict[tuple[str, str], _Entry],
    refs: _References,
    fetch: Callable[[Iterable[tuple[str, str]]], Mapping[tuple[str, str], Stored]],
    exclude_pending: bool,
) -> None:
    """Add the practitioners, organisations, medications and devices the entries refer to."""
    todo = list(entries.values())
    for _ in range(_FOLLOW_ROUNDS):
        wanted = {
            key
            for entry in todo
            for key in refs.targets(entry.resource)
            if key[0] in FOLLOWED_TYPES and key not in entries
        }
        if not wanted:
            return
        todo = []
        for key, stored in sorted(fetch(wanted).items()):
            res = stored.resource()
            if exclude_pending and _pending(res):
                continue
            entries[key] = _Entry(key, res, stored)
            todo.append(entries[key])


def _agency() -> dict[str, Any]:
    """The Agence eSanté, custodian of the record, author of what the platform generates."""
    return {
        "resourceType": "Organization",
        "id": str(uuid.uuid5(_DOC_NAMESPACE, "organization|agence-esante")),
        "identifier": [dict(AGENCY_IDENTIFIER)],
        "active": True,
        "name": AGENCY_NAME,
        "address": [{"country": "LU"}],
    }


def _practitioner(signer: Signer) -> dict[str, Any]:
    """The signing professional, from their access token, when the directory has no entry."""
    return {
        "resourceType": "Practitioner",
        "id": str(uuid.uuid5(_DOC_NAMESPACE, f"practitioner|{signer.practitioner_id}")),
        "identifier": [
            {
                "system": "https://sharedcare.lu/fhir/NamingSystem/practitioner",
                "value": signer.practitioner_id,
            }
        ],
        "name": [{"text": signer.display or signer.practitioner_id}],
    }


def _composition(
    doc_id: str,
    *,
    patient: dict[str, Any],
    patient_url: str,
    chosen: Mapping[str, list[dict[str, Any]]],
    refs: _References,
    sources: Mapping[tuple[str, str], dict[str, Any]],
    language: str,
    now: datetime,
    author_url: str,
    agency_url: str,
    signer: Signer | None,
) -> dict[str, Any]:
    sections = []
    for spec in SECTIONS:
        items = chosen.get(spec.key, [])
        if not items and spec.level != "required":
            continue
        section: dict[str, Any] = {
            "title": text(language, spec.key),
            "code": {"coding": [{"system": LOINC, "code": spec.code, "display": spec.display}]},
        }
        if items:
            rows = [_row(res, sources) for res in items]
            section["text"] = nv.narrative(language, nv.table(language, rows))
            section["entry"] = [{"reference": refs.full_urls[(r["resourceType"], r["id"])]} for r in items]
        else:
            section["text"] = nv.narrative(language, nv.paragraph(text(language, "no-information")))
            section["emptyReason"] = {**EMPTY_REASON, "text": text(language, "no-information")}
        sections.append(section)
    author_display = (signer.display or signer.practitioner_id) if signer else AGENCY_NAME
    composition: dict[str, Any] = {
        "resourceType": "Composition",
        "id": doc_id,
        "meta": {"profile": [COMPOSITION_PROFILE]},
        "language": language,
        "text": nv.narrative(language, _header(patient, sections, language, now, author_display, signer)),
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{doc_id}"},
        "status": "final",
        "type": {"coding": [dict(SUMMARY_TYPE)]},
        "subject": {"reference": patient_url, "display": nv.human_name(patient) or None},
        "date": _instant(now),
        "author": [{"reference": author_url, "display": author_display}],
        "title": text(language, "document"),
        "confidentiality": _confidentiality(
            sources[(r["resourceType"], r["id"])] for items in chosen.values() for r in items
        ),
        "custodian": {"reference": agency_url, "display": AGENCY_NAME},
        "event": [
            {
                "code": [
                    {
                        "coding": [
                            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActClass", "code": "PCPR"}
                        ]
                    }
                ],
                "period": {"end": _instant(now)},
            }
        ],
        "section": sections,
    }
    if not composition["subject"]["display"]:
        del composition["subject"]["display"]
    if signer is not None:
        composition["attester"] = [
            {"mode": "legal", "time": _instant(now), "party": {"reference": author_url}}
        ]
    return composition


def _header(
    patient: Mapping[str, Any],
    sections: list[dict[str, Any]],
    language: str,
    now: datetime,
    author: str,
    signer: Signer | None,
) -> str:
    """The Composition's own narrative: who, when, by whom, and what each section holds."""
    identifiers = [i.get("value") for i in nv.items(patient.get("identifier")) if isinstance(i, Mapping)]
    about = nv.definition_list(
        [
            (text(language, "patient"), nv.human_name(patient)),
            (text(language, "born"), nv.day(patient.get("birthDate"))),
            (text(language, "gender"), str(patient.get("gender") or "")),
            (text(language, "identifier"), str(identifiers[0]) if identifiers and identifiers[0] else ""),
            (text(language, "generated"), _instant(now)),
            (text(language, "signed") if signer else text(language, "author"), author),
            (text(language, "custodian"), AGENCY_NAME),
        ]
    )
    lines = [
        (
            section["title"],
            f"{len(section['entry'])} {text(language, 'entries')}"
            if section.get("entry")
            else text(language, "no-information"),
        )
        for section in sections
    ]
    return f"<h1>{escape(text(language, 'document'))}</h1>{about}{nv.definition_list(lines)}"


def _row(
    res: Mapping[str, Any], sources: Mapping[tuple[str, str], dict[str, Any]]
) -> tuple[str, str, str, str]:
    """One line of a section's table: item, details, status, date."""
    rtype = res["resourceType"]
    status = nv.coded(res.get("clinicalStatus")) or str(res.get("status") or "")
    date = nv.day(nv.when(res))
    details = ""
    if rtype in ("MedicationStatement", "MedicationRequest"):
        item = _medication(res, sources)
        dosage = nv.items(res.get("dosage")) or nv.items(res.get("dosageInstruction"))
        details = "; ".join(
            d["text"] for d in dosage if isinstance(d, Mapping) and isinstance(d.get("text"), str)
        )
    elif rtype == "Immunization":
        item = nv.concept(res.get("vaccineCode"))
        details = str(res.get("lotNumber") or "")
    elif rtype == "AllergyIntolerance":
        item = nv.concept(res.get("code"))
        reactions = [
            nv.concept(m)
            for r in nv.items(res.get("reaction"))
            if isinstance(r, Mapping)
            for m in nv.items(r.get("manifestation"))
        ]
        kinds = [
            str(res.get("type") or ""),
            *map(str, nv.items(res.get("category"))),
            str(res.get("criticality") or ""),
        ]
        details = ", ".join(x for x in [*kinds, *reactions] if x)
    elif rtype == "Observation":
        item = nv.concept(res.get("code"))
        parts = [nv.value_of(res)] + [
            f"{nv.concept(c.get('code'))}: {nv.value_of(c)}"
            for c in nv.items(res.get("component"))
            if isinstance(c, Mapping)
        ]
        details = "; ".join(p for p in parts if p)
    elif rtype == "DeviceUseStatement":
        item = _device(res, sources)
    elif rtype == "CarePlan":
        item = str(res.get("title") or "") or ", ".join(nv.concept(c) for c in nv.items(res.get("category")))
        details = ", ".join(
            nv.concept(a["detail"].get("code"))
            for a in nv.items(res.get("activity"))
            if isinstance(a, Mapping) and isinstance(a.get("detail"), Mapping)
        )
    elif rtype == "ClinicalImpression":
        item = nv.concept(res.get("code")) or str(res.get("description") or "")
        details = str(res.get("summary") or "")
    elif rtype == "Consent":
        item = ", ".join(nv.concept(c) for c in nv.items(res.get("category"))) or nv.concept(res.get("scope"))
    else:
        item = nv.concept(res.get("code"))
        details = ", ".join(nv.concept(b) for b in nv.items(res.get("bodySite")))
    if rtype == "Condition":
        details = ", ".join(x for x in [nv.concept(res.get("severity")), details] if x)
    return item, details, status, date


def _medication(res: Mapping[str, Any], sources: Mapping[tuple[str, str], dict[str, Any]]) -> str:
    if "medicationCodeableConcept" in res:
        return nv.concept(res["medicationCodeableConcept"])
    ref = res.get("medicationReference")
    if isinstance(ref, Mapping):
        key = _local_key(ref.get("reference"))
        medication = sources.get(key) if key else None
        if medication is not None:
            return nv.concept(medication.get("code"))
        return str(ref.get("display") or "")
    return ""


def _device(res: Mapping[str, Any], sources: Mapping[tuple[str, str], dict[str, Any]]) -> str:
    ref = res.get("device")
    if not isinstance(ref, Mapping):
        return ""
    key = _local_key(ref.get("reference"))
    device = sources.get(key) if key else None
    if device is not None:
        for name in nv.items(device.get("deviceName")):
            if isinstance(name, Mapping) and name.get("name"):
                return str(name["name"])
        return nv.concept(device.get("type"))
    return str(ref.get("display") or "")


def _local_key(reference: Any) -> tuple[str, str] | None:
    if not isinstance(reference, str):
        return None
    rtype, rid = split_reference(reference, definitions().resource_types)
    return (rtype, rid) if rtype and rid else None


# -- the service functions --------------------------------------------------------------------
def _build(view: RecordView, **options: Any) -> BuiltSummary:
    return build_summary(
        view.patient, view.compartment(SUMMARY_TYPES), view.fetch, base_url=view.base_url, **options
    )


def generate_summary(
    service: FhirService,
    patient_id: str,
    *,
    base_url: str = "",
    language: str = DEFAULT_LANGUAGE,
    limits: Limits | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """``Patient/[id]/$summary``: the IPS document of the record as ``service``'s caller may
    read it, audited as one act. NotFound when the caller may not see the patient."""
    with service.reading() as conn:
        view = open_record(service, conn, patient_id, base_url)
        built = _build(view, language=language, limits=limits, now=now)
        view.record_summary(built.returned)
        return built.bundle


def persist_summary(
    service: FhirService,
    signer: Signer,
    patient_id: str,
    *,
    base_url: str = "",
    language: str = DEFAULT_LANGUAGE,
    limits: Limits | None = None,
    now: datetime | None = None,
) -> tuple[dict[str, Any], Stored]:
    """A summary authored and signed (legal attester) by ``signer``, stored in the record as a
    DocumentReference holding the document: one transaction, so a refused write (the access
    decision: only columns that write ``summaries``) stores nothing. Items pending disclosure
    are left out, as the holder reads stored summaries. Returns the document and the stored
    DocumentReference."""
    now = now or datetime.now(UTC)
    with service.transaction() as conn:
        view = open_record(service, conn, patient_id, base_url)
        built = _build(view, language=language, limits=limits, now=now, signer=signer, exclude_pending=True)
        view.record_summary(built.returned)
        reference = document_reference(built.bundle, patient_id, signer, now)
        outcome = service.create_in(conn, reference, base_url=base_url)
        return built.bundle, outcome.stored


def document_reference(
    bundle: Mapping[str, Any], patient_id: str, signer: Signer, now: datetime
) -> dict[str, Any]:
    """The DocumentReference of a signed summary: MHD metadata, the document as its attachment
    (``application/fhir+json``), with the size and the SHA-1 (base64) FHIR R4 defines."""
    data = orjson.dumps(bundle)
    composition = bundle["entry"][0]["resource"]
    author = [{"reference": f"Practitioner/{signer.practitioner_id}", "display": signer.display or None}]
    if signer.organization_id:
        author.append({"reference": f"Organization/{signer.organization_id}"})
    for a in author:
        if a.get("display") is None:
            a.pop("display", None)
    return {
        "resourceType": "DocumentReference",
        "masterIdentifier": dict(bundle["identifier"]),
        "status": "current",
        "docStatus": "final",
        "type": {"coding": [dict(SUMMARY_TYPE)]},
        "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": "summaries", "display": "Synthèses"}]}],
        "subject": {"reference": f"Patient/{patient_id}"},
        "date": _instant(now),
        "author": author,
        "authenticator": {"reference": f"Practitioner/{signer.practitioner_id}"},
        "custodian": {"identifier": dict(AGENCY_IDENTIFIER), "display": AGENCY_NAME},
        "description": composition["title"],
        "securityLabel": [
            {"coding": [{"system": CONFIDENTIALITY_SYSTEM, "code": composition["confidentiality"]}]}
        ],
        "content": [
            {
                "attachment": {
                    "contentType": "application/fhir+json",
                    "language": bundle.get("language", DEFAULT_LANGUAGE),
                    "data": base64.b64encode(data).decode("ascii"),
                    "size": len(data),
                    "hash": base64.b64encode(hashlib.sha1(data).digest()).decode("ascii"),
                    "title": composition["title"],
                    "creation": _instant(now),
                },
                "format": dict(IPS_FORMAT),
            }
        ],
        "context": {"period": {"end": _instant(now)}},
    }


def summary_document(reference: Mapping[str, Any]) -> dict[str, Any]:
    """The document a stored summary's DocumentReference holds, after checking its size and
    hash; SummaryCorrupted when they do not match (or there is no document)."""
    try:
        attachment = reference["content"][0]["attachment"]
        data = base64.b64decode(attachment["data"], validate=True)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise SummaryCorrupted(f"the DocumentReference holds no summary document: {exc}") from None
    if attachment.get("size") != len(data):
        raise SummaryCorrupted("the summary's size does not match its DocumentReference")
    digest = base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")
    if attachment.get("hash") != digest:
        raise SummaryCorrupted("the summary's SHA-1 does not match its DocumentReference")
    document: dict[str, Any] = orjson.loads(data)
    return document
