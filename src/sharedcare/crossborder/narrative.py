"""The human-readable part of a summary: plain labels for FHIR values, and escaped XHTML.

A document's narrative is what a reader without FHIR software sees and what a professional
signs, so every section gets one (FHIR ``cmp-1``, IPS ``Composition.section.text`` 1..1). It is
generated from the entries only (``status`` ``generated``): every value taken from the record is
escaped, so a resource cannot inject markup into the document.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

from sharedcare.crossborder.texts import text

XHTML_NS = "http://www.w3.org/1999/xhtml"

_DATE_FIELDS = (
    "onsetDateTime",
    "onsetPeriod",
    "effectiveDateTime",
    "effectivePeriod",
    "effectiveInstant",
    "performedDateTime",
    "performedPeriod",
    "occurrenceDateTime",
    "occurrenceString",
    "authoredOn",
    "dateAsserted",
    "timingDateTime",
    "timingPeriod",
    "recordedOn",
    "period",
    "issued",
    "recordedDate",
    "dateTime",
    "date",
)
"""Where each summary type keeps the date that orders it (first present wins)."""


def items(value: Any) -> list[Any]:
    """A repeating element's values; nothing when a damaged document holds something else."""
    return value if isinstance(value, list) else []


def concept(value: Any) -> str:
    """A CodeableConcept (or Coding) as a label: its text, else a coding's display, else a code."""
    if not isinstance(value, Mapping):
        return ""
    if isinstance(value.get("text"), str) and value["text"].strip():
        return str(value["text"]).strip()
    codings: list[Any] = value["coding"] if isinstance(value.get("coding"), list) else [value]
    for coding in codings:
        if isinstance(coding, Mapping) and isinstance(coding.get("display"), str):
            return str(coding["display"]).strip()
    for coding in codings:
        if isinstance(coding, Mapping) and isinstance(coding.get("code"), str):
            return str(coding["code"])
    return ""


def coded(value: Any) -> str:
    """The code of the first coding of a CodeableConcept (``clinicalStatus``…), or ''."""
    if isinstance(value, Mapping):
        for coding in items(value.get("coding")):
            if isinstance(coding, Mapping) and isinstance(coding.get("code"), str):
                return str(coding["code"])
    return ""


def number(value: Any) -> str:
    """A decimal for reading: at most six significant digits (Synthea writes 17)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value) if value is not None else ""
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}"


def quantity(value: Any) -> str:
    if not isinstance(value, Mapping):
        return ""
    unit = value.get("unit") or value.get("code") or ""
    comparator = value.get("comparator") or ""
    return f"{comparator}{number(value.get('value'))} {unit}".strip()


def value_of(res: Mapping[str, Any]) -> str:
    """An Observation's (or component's) ``value[x]`` as a label."""
    for key, val in res.items():
        if not key.startswith("value"):
            continue
        kind = key[5:]
        if kind in ("Quantity", "Age", "Duration", "Distance", "Count", "SimpleQuantity"):
            return quantity(val)
        if kind == "CodeableConcept":
            return concept(val)
        if kind == "Boolean":
            return "true" if val is True else "false"
        if kind in ("Integer", "Decimal"):
            return number(val)
        if kind in ("String", "DateTime", "Time"):
            return str(val)
        if kind == "Range" and isinstance(val, Mapping):
            return f"{quantity(val.get('low'))} - {quantity(val.get('high'))}".strip(" -")
        if kind == "Ratio" and isinstance(val, Mapping):
            return f"{quantity(val.get('numerator'))} / {quantity(val.get('denominator'))}"
        if kind == "Period" and isinstance(val, Mapping):
            return period(val)
    return ""


def period(value: Any) -> str:
    if not isinstance(value, Mapping):
        return ""
    start, end = day(value.get("start")), day(value.get("end"))
    return f"{start} - {end}" if end else start


def day(value: Any) -> str:
    """A FHIR date/dateTime shown to the day (the time adds nothing in a summary)."""
    return value[:10] if isinstance(value, str) else ""


def when(res: Mapping[str, Any]) -> str:
    """The date that orders a resource in its section (ISO text, comparable as a string)."""
    for name in _DATE_FIELDS:
        value = res.get(name)
        if isinstance(value, str):
            return value
        if isinstance(value, Mapping) and isinstance(value.get("start"), str):
            return str(value["start"])
    return ""


def human_name(patient: Mapping[str, Any]) -> str:
    names: list[Any] = patient["name"] if isinstance(patient.get("name"), list) else []
    for name in names:
        if not isinstance(name, Mapping):
            continue
        if isinstance(name.get("text"), str):
            return str(name["text"])
        given = " ".join(g for g in items(name.get("given")) if isinstance(g, str))
        family = name.get("family") if isinstance(name.get("family"), str) else ""
        if given or family:
            return f"{given} {family}".strip()
    return ""


def div(language: str, body: str) -> str:
    """An XHTML narrative ``div`` around already escaped ``body``."""
    return f'<div xmlns="{XHTML_NS}" lang="{escape(language)}" xml:lang="{escape(language)}">{body}</div>'


def narrative(language: str, body: str) -> dict[str, str]:
    """A generated ``Narrative``."""
    return {"status": "generated", "div": div(language, body)}


def paragraph(words: str) -> str:
    return f"<p>{escape(words)}</p>"


def table(language: str, rows: Iterable[Sequence[str]]) -> str:
    """The rows of a section (item, details, status, date), escaped, as an XHTML table."""
    head = "".join(f"<th>{escape(text(language, k))}</th>" for k in ("item", "details", "status", "date"))
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def definition_list(pairs: Iterable[tuple[str, str]]) -> str:
    """Label/value pairs (already translated labels), escaped."""
    items = "".join(f"<li><b>{escape(label)}</b>: {escape(value)}</li>" for label, value in pairs if value)
    return f"<ul>{items}</ul>" if items else ""
