"""Reading IPS documents made elsewhere: sections, their entries, and what could not be understood.

Documents arrive from other countries' systems with every kind of defect: sections without a
LOINC code, relative or missing ``fullUrl``s, references to nothing, a search result wrapping
the document, FHIR XML. ``read_summary`` never fails on such a document: it keeps what it
understands (sections recognised by code, else by title; entries resolved by the Bundle's
reference rules, else leniently by type and id) and lists the rest in ``issues``. It fails
(``SummaryUnreadable``) only when there is no document at all: no Bundle, or no Composition.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sharedcare.crossborder import narrative as nv

SECTION_CODES: dict[str, str] = {
    "11450-4": "problems",
    "48765-2": "allergies",
    "10160-0": "medications",
    "11369-6": "immunizations",
    "30954-2": "results",
    "47519-4": "procedures",
    "46264-8": "devices",
    "8716-3": "vital-signs",
    "11348-0": "past-illness",
    "47420-5": "functional-status",
    "18776-5": "plan-of-care",
    "29762-2": "social-history",
    "10162-6": "pregnancy",
    "42348-3": "advance-directives",
    "104605-1": "alerts",
    "81338-6": "patient-story",
}
"""LOINC section code → section key (IPS 1.x and 2.0)."""

_TITLES: tuple[tuple[str, str], ...] = (
    ("past illness", "past-illness"),
    ("history of illness", "past-illness"),
    ("problem", "problems"),
    ("allerg", "allergies"),
    ("intoleran", "allergies"),
    ("device", "devices"),
    ("medica", "medications"),
    ("immuni", "immunizations"),
    ("vaccin", "immunizations"),
    ("impfung", "immunizations"),
    ("result", "results"),
    ("procedure", "procedures"),
    ("vital", "vital-signs"),
    ("functional", "functional-status"),
    ("plan of care", "plan-of-care"),
    ("care plan", "plan-of-care"),
    ("social", "social-history"),
    ("pregnan", "pregnancy"),
    ("advance directive", "advance-directives"),
    ("alert", "alerts"),
    ("patient story", "patient-story"),
)
"""Title fragments (lower case) → section key, for sections sent without a known code."""

_URN = re.compile(r"^urn:(uuid|oid):", re.IGNORECASE)
_TYPED = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


class SummaryUnreadable(ValueError):
    """The input holds no patient summary document at all."""


@dataclass
class ReadEntry:
    """One entry of a section: the reference and, when resolved, its resource."""

    reference: str
    resource: dict[str, Any] | None
    label: str = ""
    """What a reader would call it: the resource's code, else the reference's display."""

    @property
    def resource_type(self) -> str | None:
        return self.resource.get("resourceType") if self.resource is not None else None


@dataclass
class ReadSection:
    """One Composition section as understood."""

    key: str | None
    """Our section key (``problems``…), from the LOINC code, else from the title; None: unknown."""
    code: str | None
    title: str
    entries: list[ReadEntry] = field(default_factory=list)
    empty_reason: str | None = None
    has_narrative: bool = False
    sections: list[ReadSection] = field(default_factory=list)

    @property
    def resolved(self) -> list[ReadEntry]:
        return [e for e in self.entries if e.resource is not None]


@dataclass
class ReadSummary:
    """What a patient summary document says, as far as it could be understood."""

    identifier: str | None
    timestamp: str | None
    language: str | None
    title: str
    date: str | None
    patient: dict[str, Any] | None
    authors: list[str]
    sections: list[ReadSection]
    resources: int
    """How many resources the document holds (the Composition included)."""
    issues: list[str] = field(default_factory=list)
    """What could not be understood, in words; empty for a clean document."""

    @property
    def patient_name(self) -> str:
        return nv.human_name(self.patient) if self.patient else ""

    def section(self, key: str) -> ReadSection | None:
        """The first section of ``key`` (nested sections included), or None."""
        stack = list(self.sections)
        while stack:
            current = stack.pop(0)
            if current.key == key:
                return current
            stack.extend(current.sections)
        return None

    def report(self) -> dict[str, Any]:
        """A summary of the reading: patient, sections with their entry counts, issues."""
        return {
            "identifier": self.identifier,
            "title": self.title,
            "patient": self.patient_name,
            "resources": self.resources,
            "sections": [
                {
                    "key": s.key,
                    "code": s.code,
                    "title": s.title,
                    "entries": len(s.entries),
                    "resolved": len(s.resolved),
                    "empty_reason": s.empty_reason,
                }
                for s in self.sections
            ],
            "issues": list(self.issues),
        }


def read_summary(document: Any) -> ReadSummary:
    """Understand an IPS document (a Bundle as a dict, JSON or FHIR XML text or bytes)."""
    if isinstance(document, bytes | str):
        document = _parse_text(document)
    issues: list[str] = []
    bundle = _document_bundle(document, issues)
    entries = [e for e in nv.items(bundle.get("entry")) if isinstance(e, Mapping)]
    resolver = _Resolver(entries, issues)
    compositions = [
        (i, e) for i, e in enumerate(entries) if _resource(e).get("resourceType") == "Composition"
    ]
    if not compositions:
        raise SummaryUnreadable("the Bundle holds no Composition: it is not a document")
    index, comp_entry = compositions[0]
    if index != 0:
        issues.append("the Composition is not the first entry of the Bundle")
    composition = _resource(comp_entry)
    base = str(comp_entry.get("fullUrl") or "")
    subject = composition.get("subject") if isinstance(composition.get("subject"), Mapping) else {}
    patient = resolver.resolve(subject, base)
    if patient is None or patient.get("resourceType") != "Patient":
        issues.append("the Composition's subject does not resolve to a Patient in the Bundle")
        patient = next((_resource(e) for e in entries if _resource(e).get("resourceType") == "Patient"), None)
    identifier: Mapping[str, Any] = (
        bundle["identifier"] if isinstance(bundle.get("identifier"), Mapping) else {}
    )
    summary = ReadSummary(
        identifier=str(identifier["value"]) if identifier.get("value") else None,
        timestamp=_text(bundle.get("timestamp")),
        language=_text(bundle.get("language")) or _text(composition.get("language")),
        title=_text(composition.get("title")) or "",
        date=_text(composition.get("date")),
        patient=dict(patient) if isinstance(patient, Mapping) else None,
        authors=[_label(resolver.resolve(a, base), a) for a in _list(composition.get("author"))],
        sections=_sections(composition, resolver, base, issues),
        resources=len(entries),
        issues=issues,
    )
    if not summary.sections:
        issues.append("the Composition has no sections")
    return summary


def _parse_text(document: bytes | str) -> Any:
    raw = document.decode("utf-8-sig", errors="replace") if isinstance(document, bytes) else document
    stripped = raw.lstrip("\ufeff \t\r\n")
    if stripped.startswith("<"):
        from sharedcare.crossborder.fhirxml import XmlNotFhir, parse_xml

        try:
            return parse_xml(stripped)
        except XmlNotFhir as exc:
            raise SummaryUnreadable(str(exc)) from None
    import orjson

    try:
        return orjson.loads(stripped)
    except orjson.JSONDecodeError as exc:
        raise SummaryUnreadable(f"not JSON: {exc}") from None


def _document_bundle(document: Any, issues: list[str]) -> Mapping[str, Any]:
    """The document Bundle: the input itself, or the document a search result wraps."""
    if not isinstance(document, Mapping) or document.get("resourceType") != "Bundle":
        kind = document.get("resourceType") if isinstance(document, Mapping) else type(document).__name__
        raise SummaryUnreadable(f"a patient summary is a Bundle, not {kind}")
    if document.get("type") == "document":
        return document
    for entry in _list(document.get("entry")):
        inner = _resource(entry)
        if inner.get("resourceType") == "Bundle" and inner.get("type") == "document":
            issues.append(f"the document came wrapped in a Bundle of type {document.get('type')!r}")
            return inner
    issues.append(f"Bundle.type is {document.get('type')!r}, not 'document'")
    return document


class _Resolver:
    """Resolves references inside a Bundle: by ``fullUrl`` as FHIR says, else by type and id."""

    def __init__(self, entries: list[Mapping[str, Any]], issues: list[str]) -> None:
        self.by_url: dict[str, Mapping[str, Any]] = {}
        self.by_key: dict[tuple[str, str], Mapping[str, Any]] = {}
        missing = 0
        for entry in entries:
            res = _resource(entry)
            url = entry.get("fullUrl")
            if isinstance(url, str) and url:
                self.by_url[url] = res
            else:
                missing += 1
            if isinstance(res.get("resourceType"), str) and isinstance(res.get("id"), str):
                self.by_key.setdefault((res["resourceType"], res["id"]), res)
        if missing:
            issues.append(f"{missing} entries have no fullUrl")
        relative = sum(1 for u in self.by_url if not (_URN.match(u) or "://" in u))
        if relative:
            issues.append(f"{relative} fullUrls are relative (a fullUrl must be absolute or a urn)")

    def resolve(self, ref: Any, base: str) -> Mapping[str, Any] | None:
        if not isinstance(ref, Mapping) or not isinstance(ref.get("reference"), str):
            return None
        reference = ref["reference"]
        if reference in self.by_url:
            return self.by_url[reference]
        match = _TYPED.search(reference)
        if match is None:
            return None
        if "://" in base and "://" not in reference:
            root = base[: base.rfind("/", 0, base.rfind("/"))]
            found = self.by_url.get(f"{root}/{reference}")
            if found is not None:
                return found
        return self.by_key.get((match[1], match[2]))


def _section(section: Mapping[str, Any], resolver: _Resolver, base: str, issues: list[str]) -> ReadSection:
    code = _section_code(section.get("code"))
    title = _text(section.get("title")) or ""
    key = (
        SECTION_CODES.get(code or "")
        or _key_from_title(title)
        or _key_from_title(nv.concept(section.get("code")))
    )
    if key is None:
        issues.append(f"section {title or code or '(untitled)'!r} is not an IPS section this reader knows")
    elif code is None:
        issues.append(f"section {title!r} has no LOINC code; recognised by its title as {key}")
    text_ = section.get("text")
    read = ReadSection(
        key=key,
        code=code,
        title=title,
        empty_reason=nv.concept(section.get("emptyReason")) or None,
        has_narrative=isinstance(text_, Mapping) and isinstance(text_.get("div"), str),
    )
    for ref in _list(section.get("entry")):
        target = resolver.resolve(ref, base)
        reference = str(ref.get("reference") or "") if isinstance(ref, Mapping) else ""
        read.entries.append(
            ReadEntry(reference, dict(target) if target is not None else None, _label(target, ref))
        )
    unresolved = len(read.entries) - len(read.resolved)
    if unresolved:
        issues.append(f"section {title or key!r}: {unresolved} of {len(read.entries)} entries do not resolve")
    read.sections = _sections(section, resolver, base, issues)
    return read


def _sections(
    parent: Mapping[str, Any], resolver: _Resolver, base: str, issues: list[str]
) -> list[ReadSection]:
    items = _list(parent.get("section"))
    if any(not isinstance(s, Mapping) for s in items):
        issues.append("some sections are not JSON objects and were skipped")
    return [_section(s, resolver, base, issues) for s in items if isinstance(s, Mapping)]


def _section_code(code: Any) -> str | None:
    if not isinstance(code, Mapping):
        return None
    codings = [c for c in _list(code.get("coding")) if isinstance(c, Mapping)]
    for coding in codings:
        value = coding.get("code")
        if (
            isinstance(value, str)
            and value in SECTION_CODES
            and str(coding.get("system") or "").endswith("loinc.org")
        ):
            return value
    for coding in codings:
        if isinstance(coding.get("code"), str):
            return str(coding["code"])
    return None


def _key_from_title(title: str) -> str | None:
    lowered = title.lower()
    return next((key for fragment, key in _TITLES if fragment in lowered), None) if lowered else None


def _label(resource: Mapping[str, Any] | None, ref: Any) -> str:
    if resource is not None:
        for name in ("code", "vaccineCode", "medicationCodeableConcept", "type"):
            label = nv.concept(resource.get(name))
            if label:
                return label
        if resource.get("resourceType") in ("Patient", "Practitioner", "RelatedPerson"):
            return nv.human_name(resource)
        if isinstance(resource.get("name"), str):
            return str(resource["name"])
    return str(ref.get("display") or "") if isinstance(ref, Mapping) else ""


def _resource(entry: Any) -> Mapping[str, Any]:
    res = entry.get("resource") if isinstance(entry, Mapping) else None
    return res if isinstance(res, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
