"""Write-path validation of FHIR R4 JSON resources.

Every create/update runs :func:`validate_resource`, so it has to be both strict and cheap
(the ingest target is 5,000 resources/s on two cores). ``docs/validation.md`` has the
measurements behind the design; in short:

* The **basis is the official R4 JSON schema** (``data/fhir.schema.json.gz``): it supplies
  every element name (so unknown elements are errors), array-vs-single shape, element data
  types, the primitive regexes and the enumerations of required ``code`` bindings. It is
  *compiled into per-type dispatch tables* instead of being run through a JSON-schema
  engine: fastjsonschema's generated code tests every declared property of every object
  (100+ for each ``Extension``): 70-90 us for a typical resource, up to 800 us at p95. A
  table lookup per *present* key brings that to about 20-35 us.
* The **StructureDefinitions** complement what the schema leaves out: min cardinality of
  primitives and choice elements, choice-type exclusivity (one ``value[x]``), and required
  bindings on ``CodeableConcept``/``Coding`` expanded from ``data/valuesets.json.gz``.
* FHIR JSON rules the schema gets wrong are applied directly: nulls that align primitive
  arrays with their ``_x`` extension arrays are allowed, integers must be JSON integers in
  range, dates must exist in the calendar, strings must not be empty or hold control chars.

Tables are built once, lazily, on first use (1-2 s) and then shared read-only.
"""

from __future__ import annotations

import binascii
import functools
import gzip
import json
import math
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from sharedcare.fhir.errors import Issue

__all__ = ["ValidationIssue", "known_resource_types", "validate_resource"]

_DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True, slots=True)
class ValidationIssue:
    """One problem found in a resource, ready to become an ``OperationOutcome.issue``."""

    severity: str  # 'error' | 'warning'
    code: str  # issue type: structure | required | value | code-invalid | invalid | not-supported
    diagnostics: str  # clear human message
    expression: str  # FHIRPath location, e.g. 'Patient.gender' or 'Patient.name[0].given[1]'


# --------------------------------------------------------------------------------------------
# Compiled tables
# --------------------------------------------------------------------------------------------

# Element kinds, dispatched with integer comparisons on the hot path.
_K_OBJECT = 0  # complex datatype or backbone element: recurse into its table
_K_RESOURCE = 1  # nested resource: contained[], Bundle.entry.resource, Parameters.parameter.resource
_K_STRING = 2  # JSON string checked against a regex
_K_BOOLEAN = 3
_K_DECIMAL = 4
_K_INTEGER = 5  # integer, positiveInt, unsignedInt (range in lo/hi)
_K_CODE_ENUM = 6  # code with a required binding enumerated in the schema
_K_BASE64 = 7
_K_XHTML = 8
_K_PRIMITIVE_EXT = 9  # the '_x' companion of primitive 'x': an Element (id + extension)
_K_RESOURCE_TYPE = 10  # 'resourceType', checked before the table is chosen

# Hot-loop shortcuts (see _check_object); 0 means "always take the full path".
_F_STRING = 1  # single string-like primitive checked by regex
_F_OBJECT = 2  # single complex value without a required binding
_F_OBJECT_ARRAY = 3  # repeating complex value without a required binding

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT_RANGES = {
    "integer": (_INT32_MIN, _INT32_MAX),
    "positiveInt": (1, _INT32_MAX),
    "unsignedInt": (0, _INT32_MAX),
}
_DATE_TYPES = frozenset({"date", "dateTime", "instant"})

# The schema's primitive regexes were written for ECMAScript; they are adapted so that Python
# applies the spec's meaning: fullmatch (``$`` would accept a trailing newline), ASCII ``\s``
# (XML-schema whitespace, so a no-break space inside a string is legal), and for string and
# markdown the spec's rule (no C0 control characters except tab, CR, LF) rather than the
# schema's approximation of it.
_TEXT_REGEX = r"[^\x00-\x08\x0B\x0C\x0E-\x1F]+"
_REGEX_OVERRIDES = {"string": _TEXT_REGEX, "markdown": _TEXT_REGEX}
_FORMAT_HINTS = {
    "date": "YYYY, YYYY-MM or YYYY-MM-DD",
    "dateTime": "YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss(.sss)+zz:zz",
    "instant": "YYYY-MM-DDThh:mm:ss(.sss)+zz:zz",
    "time": "hh:mm:ss(.sss)",
    "id": "1-64 characters from A-Z, a-z, 0-9, '-' and '.'",
    "code": "no leading, trailing or repeated whitespace",
    "oid": "urn:oid:<digits and dots>",
    "uuid": "urn:uuid:<lower-case UUID>",
    "uri": "no whitespace",
    "url": "no whitespace",
    "canonical": "no whitespace",
    "string": "no control characters other than tab, CR and LF",
    "markdown": "no control characters other than tab, CR and LF",
}
_DAYS_IN_MONTH = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# Properties the vendored schema carries from its npm package's own extensions: not FHIR R4
# (no R4 StructureDefinition element backs them), so they are treated as unknown elements.
_NOT_R4 = frozenset({"Reference.resource", "OperationOutcome.status", "OperationOutcome.resource"})


@dataclass(frozen=True, slots=True)
class _Binding:
    """A required binding on CodeableConcept/Coding, expanded to {system: codes}."""

    url: str
    codes: Mapping[str, frozenset[str]]


@dataclass(slots=True, eq=False)
class _Table:
    """All properties of one schema definition plus its min-cardinality rules."""

    name: str
    path: str
    elems: dict[str, _Elem] = field(default_factory=dict)
    # (element label, element path, JSON keys any of which satisfies min >= 1)
    required: tuple[tuple[str, str, frozenset[str]], ...] = ()


_NO_TABLE = _Table(name="", path="")  # placeholder for primitive elements
_ANY_TEXT = re.compile(r".+", re.DOTALL)


@dataclass(slots=True, eq=False)
class _Elem:
    """How to check one JSON property of one type (mutable only while tables are built)."""

    key: str  # JSON property name
    label: str  # FHIRPath step: 'gender', 'birthDate' for '_birthDate', 'value.ofType(Quantity)'
    where: str  # element path for messages, e.g. 'Observation.component.code'
    fhir_type: str
    kind: int
    array: bool
    regex: re.Pattern[str] = _ANY_TEXT
    codes: frozenset[str] = frozenset()
    value_set: str = ""
    binding: _Binding | None = None
    table: _Table = _NO_TABLE
    lo: int = 0
    hi: int = 0
    partner: str | None = None  # 'given' <-> '_given': nulls in one must align with the other
    choice: str | None = None  # choice group ('value' for value[x]): at most one type present
    calendar: bool = False  # date-bearing: the day must exist in the month
    fast: int = 0  # _F_* shortcut taken by the hot loop when the value has the usual shape


@dataclass(slots=True)
class _Model:
    resources: dict[str, _Table]


_LOCK = threading.Lock()
_MODEL: _Model | None = None


def _load_gz(name: str) -> Any:
    with gzip.open(_DATA_DIR / name, "rb") as fh:
        return json.loads(fh.read())


@functools.cache
def known_resource_types() -> frozenset[str]:
    """The 146 R4 resource types (the schema's ``resourceType`` discriminator)."""
    return frozenset(_load_gz("fhir.schema.json.gz")["discriminator"]["mapping"])


def _model() -> _Model:
    """Build the tables on first use; the sources (~40 MB parsed) are dropped afterwards."""
    global _MODEL
    model = _MODEL
    if model is None:
        with _LOCK:
            if _MODEL is None:
                _MODEL = _Builder().build()
            model = _MODEL
    return model


class _ValueSets:
    """Expands R4 value sets whose content is enumerable from CodeSystem concepts."""

    def __init__(self, bundle: Mapping[str, Any]) -> None:
        self._value_sets: dict[str, dict[str, Any]] = {}
        self._code_systems: dict[str, dict[str, Any]] = {}
        for entry in bundle.get("entry", []):
            res = entry.get("resource", {})
            url = res.get("url")
            if res.get("resourceType") == "ValueSet" and url:
                self._value_sets[url] = res
            elif res.get("resourceType") == "CodeSystem" and url:
                self._code_systems[url] = res
        self._cache: dict[str, dict[str, frozenset[str]] | None] = {}

    def expand(self, url: str) -> dict[str, frozenset[str]] | None:
        """{system: codes}, or None when the set is open-ended (filters, external systems)."""
        url = url.split("|", 1)[0]
        if url not in self._cache:
            self._cache[url] = None  # guards against include cycles
            self._cache[url] = self._expand(url)
        return self._cache[url]

    def _expand(self, url: str) -> dict[str, frozenset[str]] | None:
        vs = self._value_sets.get(url)
        if vs is None:
            return None
        compose = vs.get("compose")
        if not compose:
            return None
        result: dict[str, set[str]] = {}
        for inc in compose.get("include", []):
            part = self._include(inc)
            if part is None:
                return None
            for system, codes in part.items():
                result.setdefault(system, set()).update(codes)
        for exc in compose.get("exclude", []):
            part = self._include(exc)
            if part is None:
                return None
            for system, codes in part.items():
                result.get(system, set()).difference_update(codes)
        return {system: frozenset(codes) for system, codes in result.items()}

    def _include(self, inc: Mapping[str, Any]) -> dict[str, frozenset[str]] | None:
        if inc.get("filter"):
            return None
        parts: list[dict[str, frozenset[str]]] = []
        for vs_url in inc.get("valueSet", []):
            sub = self.expand(vs_url)
            if sub is None:
                return None
            parts.append(sub)
        system = inc.get("system")
        if system:
            if "concept" in inc:
                parts.append({system: frozenset(c["code"] for c in inc["concept"])})
            else:
                cs = self._code_systems.get(system)
                if cs is None or cs.get("content") != "complete":
                    return None
                parts.append({system: frozenset(_concept_codes(cs.get("concept", [])))})
        if not parts:
            return None
        merged: dict[str, frozenset[str]] = dict(parts[0])
        for extra in parts[1:]:  # several parts in one include intersect
            merged = {s: c & extra[s] for s, c in merged.items() if s in extra}
        return merged


def _concept_codes(concepts: Iterable[Mapping[str, Any]]) -> Iterable[str]:
    for concept in concepts:
        yield concept["code"]
        yield from _concept_codes(concept.get("concept", []))


class _Builder:
    """Joins schema definitions with StructureDefinition elements into ``_Table`` objects."""

    def __init__(self) -> None:
        self.defs: dict[str, Any] = _load_gz("fhir.schema.json.gz")["definitions"]
        self.elements: dict[str, dict[str, Any]] = {}
        self.children: dict[str, list[dict[str, Any]]] = {}
        # parent path -> JSON key of a choice variant -> (element definition, type code)
        self.choices: dict[str, dict[str, tuple[dict[str, Any], str]]] = {}
        self.complex_types: set[str] = set()
        for bundle_name in ("profiles-types.json.gz", "profiles-resources.json.gz"):
            for entry in _load_gz(bundle_name).get("entry", []):
                sd = entry.get("resource", {})
                if sd.get("resourceType") != "StructureDefinition":
                    continue
                if sd.get("derivation") == "constraint" or sd.get("kind") == "logical":
                    continue
                if sd.get("kind") == "complex-type":
                    self.complex_types.add(sd["id"])
                self._index(sd)
        self.value_sets = _ValueSets(_load_gz("valuesets.json.gz"))
        self.tables: dict[str, _Table] = {}
        self.regexes: dict[str, re.Pattern[str]] = {}
        # (pattern, JSON type) -> primitive name, to type an inline property with no SD element
        self.primitive_by_shape: dict[tuple[str, str], str] = {}
        for name, definition in self.defs.items():
            if "pattern" in definition:
                self.primitive_by_shape.setdefault((definition["pattern"], definition["type"]), name)
            pattern = _REGEX_OVERRIDES.get(name, definition.get("pattern"))
            if definition.get("type") == "string" and pattern:
                core = pattern.removeprefix("^").removesuffix("$")
                self.regexes[name] = re.compile(core, re.ASCII)

    def _index(self, sd: Mapping[str, Any]) -> None:
        for ed in sd.get("snapshot", {}).get("element", []):
            path: str = ed["path"]
            self.elements[path] = ed
            parent, _, name = path.rpartition(".")
            if not parent:
                continue
            self.children.setdefault(parent, []).append(ed)
            if name.endswith("[x]"):
                stem = name[:-3]
                variants = self.choices.setdefault(parent, {})
                for t in ed.get("type", []):
                    code = t["code"]
                    variants[stem + code[0].upper() + code[1:]] = (ed, code)

    def build(self) -> _Model:
        resources = {rt: self.table(rt, rt) for rt in known_resource_types()}
        return _Model(resources=resources)

    def table(self, def_name: str, sd_path: str) -> _Table:
        found = self.tables.get(def_name)
        if found is not None:
            return found
        table = _Table(name=def_name, path=sd_path)
        self.tables[def_name] = table  # registered first: Extension and Identifier recurse
        definition = self.defs[def_name]
        element_only = self._is_plain_element(sd_path)
        for key, prop in definition.get("properties", {}).items():
            if f"{sd_path}.{key}" in _NOT_R4 or (key == "modifierExtension" and element_only):
                continue
            table.elems[key] = self._elem(sd_path, key, prop)
        table.required = self._required(sd_path, table, definition.get("required", []))
        return table

    def _is_plain_element(self, sd_path: str) -> bool:
        """True for a nested element typed ``Element`` (e.g. Timing.repeat), not BackboneElement.

        R4 allows ``modifierExtension`` only on BackboneElement; the schema offers it on every
        nested definition.
        """
        ed = self.elements.get(sd_path)
        return (
            ed is not None and "." in sd_path and [t.get("code") for t in ed.get("type", [])] == ["Element"]
        )

    def _elem(self, sd_path: str, key: str, prop: Mapping[str, Any]) -> _Elem:
        is_ext = key.startswith("_")
        base = key[1:] if is_ext else key
        where = f"{sd_path}.{base}"
        array = prop.get("type") == "array"
        item = prop["items"] if array else prop
        ed = self.elements.get(where)
        choice: str | None = None
        label = base
        fhir_type = ""
        variant = self.choices.get(sd_path, {}).get(base)
        if ed is None and variant is not None:
            ed, fhir_type = variant
            choice = ed["path"].rpartition(".")[2][:-3]
            where = f"{sd_path}.{choice}[x]"
            label = f"{choice}.ofType({fhir_type})"
        if key == "resourceType" and "const" in prop:  # the discriminator, not e.g. ExampleScenario's
            return _Elem(key, label, where, "code", _K_RESOURCE_TYPE, False)
        if is_ext:
            return _Elem(
                key,
                label,
                where,
                "Element",
                _K_PRIMITIVE_EXT,
                array,
                table=self.table("Element", "Element"),
                partner=base if array else None,
                choice=choice,
            )
        ref = item.get("$ref", "").rpartition("/")[2]
        if ref:
            fhir_type = ref
        elif not fhir_type:
            shape = (item.get("pattern", ""), item.get("type", ""))
            fhir_type = "code" if "enum" in item else self.primitive_by_shape.get(shape, "string")
        elem = _Elem(key, label, where, fhir_type, _K_STRING, array, choice=choice)
        binding = (ed or {}).get("binding", {})
        strength = binding.get("strength")
        required_vs = binding.get("valueSet", "") if strength == "required" else ""
        if ref == "ResourceList":
            elem.kind, elem.fhir_type = _K_RESOURCE, "Resource"
        elif "enum" in item and strength in ("required", None):
            # The schema also enumerates one extensible binding (Expression.language): the
            # StructureDefinition's strength wins, so other codes stay legal there.
            elem.kind, elem.codes, elem.value_set = _K_CODE_ENUM, frozenset(item["enum"]), required_vs
        elif ref and ref not in self.regexes and "properties" in self.defs.get(ref, {}):
            elem.kind = _K_OBJECT
            if ref in self.complex_types:
                child_path = ref
            elif ed is not None and "contentReference" in ed:
                child_path = ed["contentReference"].lstrip("#")
            else:
                child_path = where
            elem.table = self.table(ref, child_path)
            if required_vs and ref in ("CodeableConcept", "Coding"):
                expanded = self.value_sets.expand(required_vs)
                if expanded:
                    elem.binding = _Binding(required_vs.split("|", 1)[0], expanded)
        else:
            self._primitive(elem, required_vs)
        elem.partner = f"_{key}" if array and elem.kind != _K_OBJECT else None
        if elem.kind == _K_STRING and not array:
            elem.fast = _F_STRING
        elif elem.kind == _K_OBJECT and elem.binding is None:
            elem.fast = _F_OBJECT_ARRAY if array else _F_OBJECT
        return elem

    def _primitive(self, elem: _Elem, required_vs: str) -> None:
        t = elem.fhir_type
        if t == "boolean":
            elem.kind = _K_BOOLEAN
        elif t == "decimal":
            elem.kind = _K_DECIMAL
        elif t in _INT_RANGES:
            elem.kind = _K_INTEGER
            elem.lo, elem.hi = _INT_RANGES[t]
        elif t == "base64Binary":
            elem.kind = _K_BASE64
        elif t == "xhtml":
            elem.kind = _K_XHTML
        else:
            elem.kind = _K_STRING
            elem.regex = self.regexes.get(t, self.regexes["string"])
            elem.calendar = t in _DATE_TYPES
            if required_vs and t == "code":
                # Schema enums cover the enumerable core bindings; this catches any others.
                expanded = self.value_sets.expand(required_vs)
                if expanded:
                    elem.kind = _K_CODE_ENUM
                    elem.codes = frozenset().union(*expanded.values())
                    elem.value_set = required_vs

    def _required(
        self, sd_path: str, table: _Table, schema_required: Iterable[str]
    ) -> tuple[tuple[str, str, frozenset[str]], ...]:
        rules: dict[str, tuple[str, str, frozenset[str]]] = {}
        for ed in self.children.get(sd_path, []):
            if ed.get("min", 0) < 1:
                continue
            name = ed["path"].rpartition(".")[2]
            if name.endswith("[x]"):
                stem = name[:-3]
                keys = {k for k, e in table.elems.items() if e.choice == stem}
                rules[stem] = (stem, ed["path"], frozenset(keys))
            else:
                keys = {k for k in (name, f"_{name}") if k in table.elems}
                rules[name] = (name, ed["path"], frozenset(keys))
        for name in schema_required:
            if name != "resourceType" and name not in rules:
                rules[name] = (name, f"{sd_path}.{name}", frozenset({name}))
        return tuple(rule for rule in rules.values() if rule[2])


# --------------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------------


def validate_resource(resource: dict[str, Any]) -> list[ValidationIssue]:
    """Check one resource (and anything nested in it); ``[]`` means valid.

    Never raises: malformed input of any shape is reported as issues.
    """
    issues: list[ValidationIssue] = []
    try:
        _check_resource(_model().resources, resource, "", issues)
    except RecursionError:
        issues.append(_error("structure", "Resource is nested too deeply to validate", _root_name(resource)))
    except Exception as exc:  # pragma: no cover - defensive: a validator bug must not become a 500
        issues.append(_error("invalid", f"Resource could not be validated: {exc!r}", _root_name(resource)))
    return issues


def store_issues(resource: dict[str, Any]) -> list[Issue]:
    """``validate_resource`` in the store's ``Issue`` form (what ``FhirService`` takes as validator)."""
    return [Issue(i.severity, i.code, i.diagnostics, (i.expression,)) for i in validate_resource(resource)]


def _root_name(resource: Any) -> str:
    if isinstance(resource, dict):
        rt = resource.get("resourceType")
        if isinstance(rt, str) and rt in known_resource_types():
            return rt
    return "Resource"


def _error(code: str, diagnostics: str, expression: str) -> ValidationIssue:
    return ValidationIssue("error", code, diagnostics, expression)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float | Decimal):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _check_resource(
    resources: Mapping[str, _Table], resource: Any, path: str, out: list[ValidationIssue]
) -> None:
    """Validate a top-level (``path`` '') or nested resource against its type's table."""
    where = path or "Resource"
    if not isinstance(resource, dict):
        out.append(
            _error("structure", f"A resource must be a JSON object, found {_json_type(resource)}", where)
        )
        return
    rt = resource.get("resourceType")
    if rt is None:
        out.append(_error("required", "Missing 'resourceType'", where))
        return
    if not isinstance(rt, str):
        out.append(_error("structure", f"'resourceType' must be a string, found {_json_type(rt)}", where))
        return
    table = resources.get(rt)
    if table is None:
        out.append(_error("not-supported", f"Unknown resourceType '{rt}': not an R4 resource type", where))
        return
    _check_object(resource, table, path or rt, out)


def _check_object(obj: dict[str, Any], table: _Table, path: str, out: list[ValidationIssue]) -> None:
    """Check every present key against the table, then choice and min-cardinality rules.

    This loop is the hot path. The common shapes that pass (a plain string, a nested object,
    an array of objects) return early; anything else, and every failure, goes through
    ``_check_property``, which re-checks precisely and reports.
    """
    if not obj:
        out.append(_error("structure", f"{table.path} must not be an empty object", path))
        return
    elems = table.elems
    seen_choice: dict[str, str] | None = None
    for key, value in obj.items():
        elem = elems.get(key)
        if elem is None:
            out.append(_unknown(key, table, path))
            continue
        if elem.choice is not None:
            if seen_choice is None:
                seen_choice = {}
            first = seen_choice.setdefault(elem.choice, elem.label)
            if first != elem.label:
                out.append(
                    _error(
                        "structure",
                        f"{elem.where} allows one type only, found both {first} and {elem.label}",
                        f"{path}.{elem.choice}",
                    )
                )
        fast = elem.fast
        if fast == _F_STRING:
            if (
                type(value) is str
                and elem.regex.fullmatch(value) is not None
                and (not elem.calendar or len(value) < 10 or _day_exists(value))
            ):
                continue
        elif fast == _F_OBJECT:
            if type(value) is dict:
                _check_object(value, elem.table, f"{path}.{elem.label}", out)
                continue
        elif fast == _F_OBJECT_ARRAY and type(value) is list and value:
            for index, item in enumerate(value):
                if type(item) is dict:
                    _check_object(item, elem.table, f"{path}.{elem.label}[{index}]", out)
                else:
                    _check_item(obj, elem, item, path, index, out)
            continue
        _check_property(obj, elem, value, path, out)
    for label, where, keys in table.required:
        if obj.keys().isdisjoint(keys):
            out.append(
                _error("required", f"{where} is required (min cardinality 1) but missing", f"{path}.{label}")
            )


def _check_property(
    obj: dict[str, Any], elem: _Elem, value: Any, path: str, out: list[ValidationIssue]
) -> None:
    """Full check of one JSON property: shape (array or single), then each occurrence."""
    if elem.array:
        if not isinstance(value, list):
            out.append(
                _error(
                    "structure",
                    f"{elem.where} repeats (max cardinality *) so it must be a JSON array, "
                    f"found {_json_type(value)}",
                    f"{path}.{elem.label}",
                )
            )
        elif not value:
            out.append(
                _error("structure", f"{elem.where} must not be an empty array", f"{path}.{elem.label}")
            )
        else:
            for index, item in enumerate(value):
                _check_item(obj, elem, item, path, index, out)
            if elem.kind == _K_PRIMITIVE_EXT:
                _check_alignment(obj, elem, value, path, out)
    elif isinstance(value, list):
        out.append(
            _error(
                "structure",
                f"{elem.where} has max cardinality 1 so it must not be a JSON array",
                f"{path}.{elem.label}",
            )
        )
    else:
        _check_value(elem, value, path, -1, out)


def _check_item(
    obj: dict[str, Any], elem: _Elem, item: Any, path: str, index: int, out: list[ValidationIssue]
) -> None:
    if item is None:
        _check_null(obj, elem, index, path, out)
    else:
        _check_value(elem, item, path, index, out)


def _at(path: str, elem: _Elem, index: int) -> str:
    """FHIRPath of one occurrence, built lazily: formatting it for every value is measurable."""
    return f"{path}.{elem.label}[{index}]" if index >= 0 else f"{path}.{elem.label}"


def _check_value(elem: _Elem, value: Any, path: str, index: int, out: list[ValidationIssue]) -> None:
    """Check one occurrence (``index`` -1 for a single value) of ``elem`` inside ``path``."""
    kind = elem.kind
    is_str = isinstance(value, str)
    if kind == _K_STRING:
        if not is_str:
            out.append(_wrong_type(elem, "string", value, _at(path, elem, index)))
        elif elem.regex.fullmatch(value) is None:
            out.append(_bad_format(elem, value, _at(path, elem, index)))
        elif elem.calendar and len(value) >= 10 and not _day_exists(value):
            out.append(
                _error("value", f"{elem.where}: '{value}' is not a calendar date", _at(path, elem, index))
            )
    elif kind in (_K_OBJECT, _K_PRIMITIVE_EXT):
        where = _at(path, elem, index)
        if isinstance(value, dict):
            _check_object(value, elem.table, where, out)
            if elem.binding is not None:
                _check_binding(elem, elem.binding, value, where, out)
        else:
            out.append(_wrong_type(elem, "object", value, where))
    elif kind == _K_CODE_ENUM:
        if not is_str:
            out.append(_wrong_type(elem, "string", value, _at(path, elem, index)))
        elif value not in elem.codes:
            out.append(_bad_code(elem, value, _at(path, elem, index)))
    elif kind == _K_BOOLEAN:
        if type(value) is not bool:
            out.append(_wrong_type(elem, "boolean", value, _at(path, elem, index)))
    elif kind == _K_INTEGER:
        if not isinstance(value, int) or isinstance(value, bool):
            out.append(_wrong_type(elem, "integer number", value, _at(path, elem, index)))
        elif not elem.lo <= value <= elem.hi:
            out.append(
                _error(
                    "value", f"{elem.where}: {value} is outside {elem.lo}..{elem.hi}", _at(path, elem, index)
                )
            )
    elif kind == _K_DECIMAL:
        if isinstance(value, float | Decimal):
            if not (value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)):
                out.append(
                    _error("value", f"{elem.where}: {value} is not a finite decimal", _at(path, elem, index))
                )
        elif not isinstance(value, int) or isinstance(value, bool):
            out.append(_wrong_type(elem, "number", value, _at(path, elem, index)))
    elif kind == _K_RESOURCE:
        _check_resource(_model().resources, value, _at(path, elem, index), out)
    elif kind == _K_BASE64:
        if not is_str:
            out.append(_wrong_type(elem, "string", value, _at(path, elem, index)))
        elif not _is_base64(value):
            out.append(_error("value", f"{elem.where}: not valid base64 content", _at(path, elem, index)))
    elif kind == _K_XHTML:
        if not is_str:
            out.append(_wrong_type(elem, "string", value, _at(path, elem, index)))
        elif not value.lstrip().startswith("<div"):
            out.append(
                _error(
                    "value", f"{elem.where}: narrative must be an XHTML <div> element", _at(path, elem, index)
                )
            )
    # _K_RESOURCE_TYPE: already checked when the table was chosen


def _check_null(
    obj: Mapping[str, Any], elem: _Elem, index: int, path: str, out: list[ValidationIssue]
) -> None:
    """A null array item is only a placeholder aligning a primitive array with its '_x' twin."""
    twin = obj.get(elem.partner) if elem.partner else None
    if (
        type(twin) is list
        and index < len(twin)
        and (twin[index] is not None or elem.kind == _K_PRIMITIVE_EXT)
    ):
        return  # aligned; a null/null pair is reported once, from the value side
    out.append(
        _error(
            "structure",
            f"{elem.where}: null items are only allowed to align a primitive array with its "
            "extensions, and both entries at this position are null or missing",
            f"{path}.{elem.label}[{index}]",
        )
    )


def _check_alignment(
    obj: Mapping[str, Any], elem: _Elem, value: list[Any], path: str, out: list[ValidationIssue]
) -> None:
    twin = obj.get(elem.key[1:])
    if type(twin) is list and len(twin) != len(value):
        out.append(
            _error(
                "structure",
                f"{elem.where}: '{elem.key}' has {len(value)} items but '{elem.key[1:]}' has {len(twin)}; "
                "they must align",
                f"{path}.{elem.label}",
            )
        )


def _check_binding(
    elem: _Elem, binding: _Binding, value: Mapping[str, Any], where: str, out: list[ValidationIssue]
) -> None:
    """Required binding on CodeableConcept/Coding: some coding must come from the value set."""
    codings = value.get("coding") if elem.fhir_type == "CodeableConcept" else [value]
    if type(codings) is not list:
        return  # already reported as a structure error
    for coding in codings:
        if type(coding) is dict:
            system = coding.get("system")
            allowed = binding.codes.get(system) if isinstance(system, str) else None
            if allowed is not None and coding.get("code") in allowed:
                return
    found = ", ".join(
        f"{c.get('system')}|{c.get('code')}"
        for c in codings
        if type(c) is dict and ("code" in c or "system" in c)
    )
    allowed_text = ", ".join(f"{s}|{c}" for s, cs in binding.codes.items() for c in sorted(cs))
    out.append(
        _error(
            "code-invalid",
            f"{elem.where}: no coding from the required value set {binding.url} "
            f"(found: {found or 'none'}; allowed: {allowed_text})",
            where,
        )
    )


def _day_exists(value: str) -> bool:
    """The regex allows day 31 in any month; check the day against the month (and leap years)."""
    day = value[8:10]
    if day <= "28":
        return True
    month = int(value[5:7])
    if month == 2 and day == "29":
        year = int(value[0:4])
        return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return int(day) <= _DAYS_IN_MONTH[month]


_BASE64_WS = re.compile(r"\s+")


def _is_base64(value: str) -> bool:
    try:
        binascii.a2b_base64(value, strict_mode=True)
        return True
    except (binascii.Error, ValueError):
        pass
    compact = _BASE64_WS.sub("", value)  # line-wrapped base64 is tolerated, as in the schema
    if compact == value or not compact:
        return False
    try:
        binascii.a2b_base64(compact, strict_mode=True)
        return True
    except (binascii.Error, ValueError):
        return False


def _unknown(key: Any, table: _Table, path: str) -> ValidationIssue:
    return _error(
        "structure", f"Unknown element '{key}' in {table.path} (not defined in FHIR R4)", f"{path}.{key}"
    )


def _wrong_type(elem: _Elem, expected: str, value: Any, where: str) -> ValidationIssue:
    return _error(
        "structure",
        f"{elem.where} ({elem.fhir_type}) must be a JSON {expected}, found {_json_type(value)}",
        where,
    )


def _bad_format(elem: _Elem, value: str, where: str) -> ValidationIssue:
    if not value:
        return _error("value", f"{elem.where} ({elem.fhir_type}) must not be an empty string", where)
    shown = value if len(value) <= 80 else value[:77] + "..."
    hint = _FORMAT_HINTS.get(elem.fhir_type)
    suffix = f" (expected {hint})" if hint else ""
    return _error("value", f"{elem.where}: '{shown}' is not a valid {elem.fhir_type}{suffix}", where)


def _bad_code(elem: _Elem, value: str, where: str) -> ValidationIssue:
    codes = sorted(elem.codes)
    listed = ", ".join(codes) if len(codes) <= 20 else ", ".join(codes[:20]) + ", ..."
    vs = f" {elem.value_set.split('|', 1)[0]}" if elem.value_set else ""
    return _error(
        "code-invalid",
        f"{elem.where}: '{value}' is not in the required value set{vs} (allowed: {listed})",
        where,
    )
