"""FHIR XML read into FHIR JSON, for documents that arrive as XML (some countries' IPS).

The platform speaks FHIR JSON only (``api.fhir`` refuses XML bodies); this is for the reader
side of cross-border exchange, where a partner's document may come as XML. The conversion
follows the FHIR XML rules with the official R4 JSON schema (``fhir/data``) as the map of every
element: which elements repeat, which are primitives (``value`` attribute; ``id`` and
extensions go to the ``_name`` twin), their JSON type (boolean, number), nested resources, and
the narrative ``div`` kept as XHTML text. Elements the schema does not know are skipped: the
reader reports what it understood, it does not validate. XML with a DTD is refused (no entity
expansion), as is XML that is not FHIR (a CDA document, say).
"""

from __future__ import annotations

import gzip
import json
import xml.etree.ElementTree as ET
from functools import cache
from typing import Any

from sharedcare.fhir.definitions import DATA

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"
_INTEGERS = frozenset({"integer", "positiveInt", "unsignedInt"})


class XmlNotFhir(ValueError):
    """The text is not FHIR XML this reader can take."""


@cache
def _definitions() -> dict[str, Any]:
    with gzip.open(DATA / "fhir.schema.json.gz", "rb") as fh:
        schema: dict[str, Any] = json.load(fh)
    return dict(schema["definitions"])


def parse_xml(text: str) -> dict[str, Any]:
    """The FHIR JSON form of one FHIR XML resource (a Bundle, usually)."""
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise XmlNotFhir("XML with a document type declaration is not accepted")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise XmlNotFhir(f"not well-formed XML: {exc}") from None
    namespace, name = _split(root.tag)
    if namespace != FHIR_NS:
        raise XmlNotFhir(f"not FHIR XML: the root element is {name} in {namespace or 'no namespace'}")
    return _resource(root)


def _split(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        namespace, _, name = tag[1:].partition("}")
        return namespace, name
    return "", tag


def _resource(element: ET.Element) -> dict[str, Any]:
    _, rtype = _split(element.tag)
    if "properties" not in _definitions().get(rtype, {}) or "resourceType" not in _definitions()[rtype].get(
        "properties", {}
    ):
        raise XmlNotFhir(f"{rtype} is not a FHIR R4 resource type")
    out: dict[str, Any] = {"resourceType": rtype}
    _fill(out, element, rtype)
    return out


def _fill(out: dict[str, Any], element: ET.Element, definition: str) -> None:
    """Put the attributes and child elements of ``element`` (of type ``definition``) in ``out``."""
    props = _definitions()[definition].get("properties", {})
    for attribute in ("id", "url"):
        if attribute in element.attrib and attribute in props:
            out[attribute] = element.attrib[attribute]
    values: dict[str, list[Any]] = {}
    twins: dict[str, list[Any]] = {}
    for child in element:
        namespace, name = _split(child.tag) if isinstance(child.tag, str) else ("", "")
        prop = props.get(name)
        if prop is None or (namespace not in (FHIR_NS, XHTML_NS)):
            continue
        target = prop.get("items", prop)
        ref = str(target.get("$ref", "")).rsplit("/", 1)[-1]
        value, twin = _value(child, ref)
        if value is None and twin is None:
            continue
        values.setdefault(name, []).append(value)
        twins.setdefault(name, []).append(twin)
    for name, items in values.items():
        repeating = props[name].get("type") == "array"
        out[name] = items if repeating else items[0]
        if any(t is not None for t in twins[name]):
            out[f"_{name}"] = twins[name] if repeating else twins[name][0]
        if all(v is None for v in items):
            del out[name]


def _value(element: ET.Element, ref: str) -> tuple[Any, dict[str, Any] | None]:
    """(JSON value, ``_name`` twin or None) of one child element of type ``ref``."""
    if ref == "xhtml":
        try:
            return ET.tostring(element, encoding="unicode", default_namespace=XHTML_NS), None
        except ValueError:
            return ET.tostring(element, encoding="unicode"), None
    if ref == "ResourceList":
        inner = next((c for c in element if isinstance(c.tag, str)), None)
        return (_resource(inner) if inner is not None else None), None
    definition = _definitions().get(ref, {})
    if "properties" in definition:
        out: dict[str, Any] = {}
        _fill(out, element, ref)
        return (out or None), None
    return _primitive(element, ref, definition)


def _primitive(
    element: ET.Element, ref: str, definition: dict[str, Any]
) -> tuple[Any, dict[str, Any] | None]:
    raw = element.attrib.get("value")
    value: Any = raw
    if raw is not None:
        if definition.get("type") == "boolean":
            value = raw == "true"
        elif definition.get("type") == "number":
            try:
                value = int(raw) if ref in _INTEGERS or raw.lstrip("-").isdigit() else float(raw)
            except ValueError:
                value = raw
    twin: dict[str, Any] = {}
    _fill(twin, element, "Element")
    return value, (twin or None)
