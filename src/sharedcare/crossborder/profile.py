"""The IPS rules a patient summary document must meet, checked without a Java validator.

The project's validator (``fhir.validation``) checks the FHIR R4 base: structure, types,
cardinality, bindings. This module adds what makes a Bundle an IPS document (HL7 IPS 1.x,
``Bundle-uv-ips``, ``Composition-uv-ips``) and what FHIR requires of documents beyond the JSON
schema: Composition first (``bdl-11``, ``bdl-ips-1``), identifier and timestamp (``bdl-9``,
``bdl-10``), unique absolute ``fullUrl``s (``bdl-7``), every reference resolved inside the
Bundle, the Composition's type, subject, author and title, the three required sections (by
LOINC code) with entries or an ``emptyReason`` (``ips-comp-1``, ``cmp-2``), a well-formed XHTML
narrative on every section, and the entry types each section allows. The IPS entry profiles'
own minimums (a laboratory result's performer…) are reported as warnings: a summary does not
make up data the record does not hold.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from typing import Any

from sharedcare.crossborder.reader import SECTION_CODES
from sharedcare.fhir.errors import Issue

_XHTML = "{http://www.w3.org/1999/xhtml}"
_REQUIRED = {"11450-4": "problems", "48765-2": "allergies", "10160-0": "medications"}
_ALLOWED: dict[str, frozenset[str]] = {
    "problems": frozenset({"Condition"}),
    "allergies": frozenset({"AllergyIntolerance"}),
    "medications": frozenset(
        {"MedicationStatement", "MedicationRequest", "MedicationAdministration", "MedicationDispense"}
    ),
    "immunizations": frozenset({"Immunization"}),
    "results": frozenset({"Observation", "DiagnosticReport"}),
    "procedures": frozenset({"Procedure"}),
    "devices": frozenset({"DeviceUseStatement"}),
    "vital-signs": frozenset({"Observation"}),
    "past-illness": frozenset({"Condition"}),
    "functional-status": frozenset({"Condition", "ClinicalImpression"}),
    "plan-of-care": frozenset({"CarePlan"}),
    "social-history": frozenset({"Observation"}),
    "pregnancy": frozenset({"Observation"}),
    "advance-directives": frozenset({"Consent"}),
    "alerts": frozenset({"Flag"}),
}
"""Entry types of each section (any section may also point to a DocumentReference)."""
_ENTRY_MINIMUMS: dict[str, tuple[str, ...]] = {
    "Patient": ("name", "birthDate"),
    "AllergyIntolerance": ("code",),
    "Condition": ("code",),
    "Medication": ("code",),
    "MedicationStatement": ("effective",),
    "Procedure": ("code", "performed"),
    "DeviceUseStatement": ("timing",),
    "Organization": ("name",),
    "Practitioner": ("name",),
    "Device": ("patient",),
}
"""Elements the IPS entry profiles make required (a choice element by its prefix)."""
_FORBIDDEN_TAGS = frozenset(
    {"script", "iframe", "object", "embed", "form", "input", "style", "base", "link", "meta"}
)
_URN = re.compile(r"^urn:(uuid|oid):", re.IGNORECASE)


def profile_issues(bundle: Any) -> list[Issue]:
    """Every breach of the IPS document rules in ``bundle`` (errors, and warnings for the
    entry profiles' minimums); an empty list for a conformant document."""
    out: list[Issue] = []
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        return [_error("structure", "an IPS document is a Bundle", "Bundle")]
    if bundle.get("type") != "document":
        out.append(_error("value", "Bundle.type must be 'document'", "Bundle.type"))
    identifier = bundle.get("identifier")
    if not isinstance(identifier, Mapping) or not identifier.get("value"):
        out.append(
            _error("required", "a document needs an identifier with a value (bdl-9)", "Bundle.identifier")
        )
    if not bundle.get("timestamp"):
        out.append(_error("required", "a document needs a timestamp (bdl-10)", "Bundle.timestamp"))
    entries = [e for e in _list(bundle.get("entry")) if isinstance(e, Mapping)]
    if len(entries) < 2:
        out.append(
            _error("required", "an IPS document holds a Composition and a Patient at least", "Bundle.entry")
        )
        return out
    urls = _check_full_urls(entries, out)
    _check_entry_types(entries, out)
    for i, entry in enumerate(entries):
        res = entry.get("resource")
        if isinstance(res, Mapping):
            base = str(entry.get("fullUrl") or "")
            for path, ref in _references(res, f"Bundle.entry[{i}].resource"):
                if _resolve(ref, base, urls) is None:
                    out.append(
                        _error("not-found", f"reference {ref!r} does not resolve inside the Bundle", path)
                    )
            _check_minimums(res, f"Bundle.entry[{i}].resource", out)
    composition = entries[0].get("resource")
    if isinstance(composition, Mapping) and composition.get("resourceType") == "Composition":
        _check_composition(composition, str(entries[0].get("fullUrl") or ""), urls, out)
    return out


def _error(code: str, diagnostics: str, expression: str) -> Issue:
    return Issue("error", code, diagnostics, (expression,))


def _warning(code: str, diagnostics: str, expression: str) -> Issue:
    return Issue("warning", code, diagnostics, (expression,))


def _check_full_urls(entries: list[Mapping[str, Any]], out: list[Issue]) -> dict[str, Mapping[str, Any]]:
    urls: dict[str, Mapping[str, Any]] = {}
    for i, entry in enumerate(entries):
        url = entry.get("fullUrl")
        where = f"Bundle.entry[{i}].fullUrl"
        if not isinstance(url, str) or not url:
            out.append(_error("required", "every entry of a document needs a fullUrl", where))
            continue
        if not (_URN.match(url) or "://" in url):
            out.append(_error("value", f"fullUrl {url!r} is neither absolute nor a urn", where))
        if url in urls:
            out.append(_error("invariant", f"fullUrl {url!r} appears twice (bdl-7)", where))
        res = entry.get("resource")
        urls[url] = res if isinstance(res, Mapping) else {}
    return urls


def _check_entry_types(entries: list[Mapping[str, Any]], out: list[Issue]) -> None:
    types = [_map(e.get("resource")).get("resourceType") for e in entries]
    if types[0] != "Composition":
        out.append(
            _error(
                "invariant", "the first entry of a document is its Composition (bdl-11)", "Bundle.entry[0]"
            )
        )
    for i, rtype in enumerate(types[1:], start=1):
        if rtype == "Composition":
            out.append(
                _error("invariant", "a document holds one Composition (bdl-ips-1)", f"Bundle.entry[{i}]")
            )
    patients = types.count("Patient")
    if patients != 1:
        out.append(
            _error("invariant", f"an IPS document holds exactly one Patient, not {patients}", "Bundle.entry")
        )


def _check_composition(
    comp: Mapping[str, Any], base: str, urls: dict[str, Mapping[str, Any]], out: list[Issue]
) -> None:
    where = "Bundle.entry[0].resource"
    codings = [c for c in _list(_map(comp.get("type")).get("coding")) if isinstance(c, Mapping)]
    if not any(c.get("system") == "http://loinc.org" and c.get("code") == "60591-5" for c in codings):
        out.append(
            _error("value", "Composition.type must be LOINC 60591-5 (patient summary)", f"{where}.type")
        )
    for name in ("status", "date", "title"):
        if not comp.get(name):
            out.append(_error("required", f"Composition.{name} is required", f"{where}.{name}"))
    if not comp.get("author"):
        out.append(_error("required", "Composition.author is required", f"{where}.author"))
    subject = _resolve(str(_map(comp.get("subject")).get("reference") or ""), base, urls)
    if subject is None or subject.get("resourceType") != "Patient":
        out.append(
            _error("invariant", "Composition.subject must resolve to the Patient entry", f"{where}.subject")
        )
    _check_narrative(comp.get("text"), f"{where}.text", out, required=False)
    sections = [s for s in _list(comp.get("section")) if isinstance(s, Mapping)]
    found: dict[str, int] = {}
    for i, section in enumerate(sections):
        path = f"{where}.section[{i}]"
        code = _loinc(section.get("code"))
        key = SECTION_CODES.get(code or "")
        if code is None:
            out.append(_error("required", "a section needs a LOINC code", f"{path}.code"))
        if key is not None:
            found[key] = found.get(key, 0) + 1
        if not section.get("title"):
            out.append(_error("required", "a section needs a title", f"{path}.title"))
        _check_narrative(section.get("text"), f"{path}.text", out, required=True)
        refs = [e.get("reference") for e in _list(section.get("entry")) if isinstance(e, Mapping)]
        if section.get("emptyReason") and refs:
            out.append(
                _error(
                    "invariant", "a section with entries has no emptyReason (cmp-2)", f"{path}.emptyReason"
                )
            )
        if code in _REQUIRED and not refs and not section.get("emptyReason"):
            out.append(
                _error("invariant", "a required section needs entries or an emptyReason (ips-comp-1)", path)
            )
        for j, ref in enumerate(refs):
            target = _resolve(str(ref or ""), base, urls)
            rtype = target.get("resourceType") if target is not None else None
            if (
                key is not None
                and isinstance(rtype, str)
                and rtype not in _ALLOWED[key] | {"DocumentReference"}
            ):
                out.append(_error("value", f"a {key} section may not hold a {rtype}", f"{path}.entry[{j}]"))
    for code, key in _REQUIRED.items():
        if found.get(key, 0) != 1:
            n = found.get(key, 0)
            out.append(
                _error(
                    "required",
                    f"the {key} section (LOINC {code}) must appear once, not {n} times",
                    f"{where}.section",
                )
            )


def _check_narrative(narrative: Any, path: str, out: list[Issue], *, required: bool) -> None:
    if not isinstance(narrative, Mapping) or not isinstance(narrative.get("div"), str):
        if required:
            out.append(_error("required", "a narrative (text.div) is required here", path))
        else:
            out.append(_warning("required", "no narrative", path))
        return
    if "<!DOCTYPE" in narrative["div"] or "<!ENTITY" in narrative["div"]:
        out.append(_error("invalid", "the narrative may not declare a document type", f"{path}.div"))
        return
    try:
        root = ET.fromstring(narrative["div"])
    except ET.ParseError as exc:
        out.append(_error("invalid", f"the narrative is not well-formed XHTML: {exc}", f"{path}.div"))
        return
    if root.tag != f"{_XHTML}div":
        out.append(_error("invalid", "the narrative is an XHTML div in the XHTML namespace", f"{path}.div"))
    for node in root.iter():
        tag = node.tag.rsplit("}", 1)[-1] if isinstance(node.tag, str) else ""
        if tag in _FORBIDDEN_TAGS or any(a.lower().startswith("on") for a in node.attrib):
            out.append(
                _error(
                    "invalid",
                    f"the narrative may not hold <{tag}> or event attributes (txt-1)",
                    f"{path}.div",
                )
            )
            break
    if not "".join(root.itertext()).strip():
        out.append(_error("invalid", "the narrative has no text (txt-2)", f"{path}.div"))


def _check_minimums(res: Mapping[str, Any], path: str, out: list[Issue]) -> None:
    rtype = str(res.get("resourceType"))
    names = _ENTRY_MINIMUMS.get(rtype, ())
    if rtype == "Observation" and "laboratory" in _categories(res):
        names = ("effective", "performer")
    for name in names:
        if not any(k == name or (k.startswith(name) and k[len(name) : len(name) + 1].isupper()) for k in res):
            out.append(_warning("required", f"the IPS {rtype} profile requires {name}", f"{path}.{name}"))


def _categories(res: Mapping[str, Any]) -> set[str]:
    return {
        str(c.get("code"))
        for cat in _list(res.get("category"))
        if isinstance(cat, Mapping)
        for c in _list(cat.get("coding"))
        if isinstance(c, Mapping)
    }


def _loinc(code: Any) -> str | None:
    if not isinstance(code, Mapping):
        return None
    for coding in _list(code.get("coding")):
        if (
            isinstance(coding, Mapping)
            and str(coding.get("system")) == "http://loinc.org"
            and coding.get("code")
        ):
            return str(coding["code"])
    return None


def _references(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """(path, reference) of every literal reference in a resource but its own contained ones."""
    if isinstance(node, Mapping):
        ref = node.get("reference")
        if isinstance(ref, str) and not ref.startswith("#"):
            yield f"{path}.reference", ref
        for key, value in node.items():
            if key != "contained":
                yield from _references(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _references(item, f"{path}[{i}]")


def _resolve(ref: str, base: str, urls: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The entry a reference resolves to by the Bundle rules (FHIR R4 §2.36.4), or None."""
    if not ref:
        return None
    if ref in urls:
        return urls[ref]
    if "://" in ref or _URN.match(ref) or "://" not in base:
        return None
    parts = base.rsplit("/", 2)
    return urls.get(f"{parts[0]}/{ref}") if len(parts) == 3 else None


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
