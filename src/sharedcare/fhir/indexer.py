"""Write-time extraction of search index rows from a resource.

For each search parameter of the resource's type, the parameter's FHIRPath expression is
evaluated (fast compiled extractors, fhirpathpy for the rest, see ``fhirpath``) and each value
becomes rows of the typed index table of the parameter's type. The Patient compartment
membership comes from the compartment definition's parameters.

Parameters whose rows are other parameters' rows (``Definitions.layout``: ``combo-code``,
``code-value-quantity``, ``phonetic``...) are not evaluated: storing index rows is the largest
part of a write. A ``B.where(resolve() is T)`` parameter (``patient``) is evaluated, but only its
rows that ``B``'s rows pointing at ``T`` do not already give are written, and a ``B`` row pointing
at ``T`` that is not one of its rows is marked ``NOT_RESOLVED``, so that searches read it exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from sharedcare.fhir import fhirpath
from sharedcare.fhir.definitions import NOT_RESOLVED, Definitions, SearchParam, definitions, relative_paths
from sharedcare.fhir.search import date, number, quantity, reference, string, token, uri

IndexFn = Callable[[Any, "str | None"], list[dict[str, Any]]]


@dataclass(slots=True)
class IndexRows:
    """The rows one resource contributes to each index table, keyed by parameter kind."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    patients: set[str] = field(default_factory=set)

    def add(self, kind: str, row: dict[str, Any]) -> None:
        self.rows.setdefault(kind, []).append(row)


def _value_indexer(kind: str, defs: Definitions) -> IndexFn:
    known = defs.resource_types
    if kind == "reference":
        return lambda value, type_name: reference.index(value, type_name, known)
    return {
        "string": string.index,
        "token": token.index,
        "date": date.index,
        "number": number.index,
        "quantity": quantity.index,
        "uri": uri.index,
    }[kind]


@dataclass(frozen=True, slots=True)
class _CompositePart:
    kind: str
    param_name: str
    paths: tuple[tuple[str, str | None], ...]  # (element name, required type) alternatives
    fn: IndexFn


@dataclass(frozen=True, slots=True)
class _Plan:
    code: str
    kind: str
    extract: fhirpath.Extractor
    fn: IndexFn | None
    parts: tuple[_CompositePart, ...] = ()


@dataclass(frozen=True, slots=True)
class _Filtered:
    """A ``base.where(resolve() is target)`` reference parameter (see the module docstring)."""

    code: str
    base: str
    target: str
    extract: fhirpath.Extractor
    fn: IndexFn


@dataclass(frozen=True, slots=True)
class _TypePlan:
    plans: tuple[_Plan, ...]
    filtered: tuple[_Filtered, ...]
    links: frozenset[str]  # compartment parameters' stored rows...
    resolved_links: frozenset[str]  # ...and those counted only when pointing at a Patient, unmarked


_REF_KEY = ("target_type", "target_id", "url", "ident_system", "ident_value")


def _ref_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row.get(k) for k in _REF_KEY)


def _children(element: Any, name: str, type_name: str | None) -> list[tuple[Any, str | None]]:
    if not isinstance(element, dict):
        return []
    if type_name is None:
        if name in element:
            value = element[name]
            return [(v, None) for v in (value if isinstance(value, list) else [value])]
        # a choice element named without its type suffix
        for key, value in element.items():
            if key.startswith(name) and key[len(name) : len(name) + 1].isupper():
                return [(value, key[len(name) :])]
        return []
    fhir_type = type_name[0].upper() + type_name[1:]
    key = name + fhir_type
    if key in element:
        return [(element[key], "dateTime" if fhir_type == "DateTime" else type_name)]
    return []


class Indexer:
    """Builds and caches one extraction plan per resource type."""

    def __init__(self, defs: Definitions | None = None) -> None:
        self.defs = defs or definitions()
        self._plans: dict[str, _TypePlan] = {}

    def _plan(self, resource_type: str) -> _TypePlan:
        plan = self._plans.get(resource_type)
        if plan is not None:
            return plan
        layout = self.defs.layout(resource_type)
        built: list[_Plan] = []
        filtered: list[_Filtered] = []
        for code, param in sorted(self.defs.params_for(resource_type).items()):
            if not param.is_indexed or layout.is_derived(code):
                continue
            extract = fhirpath.compile_expression(param.expression, resource_type)
            if code in layout.filtered:
                base, target = layout.filtered[code]
                filtered.append(
                    _Filtered(code, base, target, extract, _value_indexer("reference", self.defs))
                )
                continue
            if param.type == "composite":
                parts = self._composite_parts(param)
                if parts:
                    built.append(_Plan(code, "composite", extract, None, parts))
                continue
            built.append(_Plan(code, param.type, extract, _value_indexer(param.type, self.defs)))
        sources = [
            s
            for link in self.defs.patient_compartment.get(resource_type, ())
            for s in layout.sources_of(link)
        ]
        plan = _TypePlan(
            tuple(built),
            tuple(filtered),
            frozenset(s.param for s in sources if s.target_type is None),
            frozenset(s.param for s in sources if s.target_type == "Patient"),
        )
        self._plans[resource_type] = plan
        return plan

    def _composite_parts(self, param: SearchParam) -> tuple[_CompositePart, ...]:
        parts: list[_CompositePart] = []
        for i, comp in enumerate(param.components):
            sub = self.defs.by_url.get(comp.definition)
            paths = relative_paths(comp.expression)
            if (
                sub is None
                or paths is None
                or sub.type not in ("token", "quantity", "date", "string", "number", "reference", "uri")
            ):
                return ()
            parts.append(
                _CompositePart(sub.type, f"{param.code}#{i}", paths, _value_indexer(sub.type, self.defs))
            )
        return tuple(parts)

    def index(self, resource: dict[str, Any]) -> IndexRows:
        """All index rows and compartment patients of ``resource`` (which must have its final id)."""
        rtype = resource["resourceType"]
        out = IndexRows()
        group = 0
        type_plan = self._plan(rtype)
        for plan in type_plan.plans:
            values = plan.extract(resource)
            if not values:
                continue
            if plan.fn is not None:
                bucket = out.rows.setdefault(plan.kind, [])
                code = plan.code
                for typed in values:
                    for row in plan.fn(typed.value, typed.type):
                        row["param"] = code + row.pop("param_suffix") if "param_suffix" in row else code
                        bucket.append(row)
                continue
            for typed in values:
                # a composite value exists only when every component has one
                group_rows: list[tuple[str, dict[str, Any]]] = []
                # the last component (the value) is the one most often absent: test it first
                for part in reversed(plan.parts):
                    part_rows = [
                        row
                        for name, type_name in part.paths
                        for value, vtype in _children(typed.value, name, type_name)
                        for row in part.fn(value, vtype)
                    ]
                    if not part_rows:
                        group_rows = []
                        break
                    group_rows.extend((part.kind, {**row, "param": part.param_name}) for row in part_rows)
                if group_rows:
                    group += 1
                    for kind, row in group_rows:
                        row.pop("param_suffix", None)
                        row["grp"] = group
                        out.add(kind, row)
        for filtered in type_plan.filtered:
            self._filtered(filtered, resource, out)
        if rtype == "DocumentReference":
            self._contained_authors(resource, out)
        self._compartments(type_plan, resource, out)
        return out

    def _contained_authors(self, resource: dict[str, Any], out: IndexRows) -> None:
        """Index a DocumentReference ``author`` that names a contained PractitionerRole
        (``#role``, as IHE MHD documents often carry it) as ``author`` rows of that role's
        ``practitioner`` and ``organization``: the local reference itself gives no row, so
        without these neither an ``author`` search nor the access decision (V: only the
        author's side reads) would recognise the professional or organisation."""
        roles = {
            c.get("id"): c
            for c in resource.get("contained") or ()
            if isinstance(c, dict) and c.get("resourceType") == "PractitionerRole" and c.get("id")
        }
        authors = resource.get("author")
        if not roles or not isinstance(authors, list):
            return
        bucket = out.rows.setdefault("reference", [])
        seen = {_ref_key(row) for row in bucket if row["param"] == "author"}
        for author in authors:
            ref = author.get("reference") if isinstance(author, dict) else None
            role = roles.get(ref[1:]) if isinstance(ref, str) and ref.startswith("#") else None
            if role is None:
                continue
            for name, target in (("practitioner", "Practitioner"), ("organization", "Organization")):
                for row in reference.index(role.get(name), None, self.defs.resource_types):
                    if row["target_type"] == target and _ref_key(row) not in seen:
                        seen.add(_ref_key(row))
                        bucket.append({**row, "param": "author"})

    def _filtered(self, plan: _Filtered, resource: dict[str, Any], out: IndexRows) -> None:
        """Write the rows of ``plan.code`` that its base's rows pointing at the target do not give,
        and mark the base's rows pointing at the target that are not its rows."""
        mine = {_ref_key(r): r for typed in plan.extract(resource) for r in plan.fn(typed.value, typed.type)}
        bucket = out.rows.setdefault("reference", [])
        given = set()
        for row in bucket:
            if row["param"] == plan.base and row["target_type"] == plan.target:
                key = _ref_key(row)
                if key in mine:
                    given.add(key)
                else:
                    row["grp"] = NOT_RESOLVED
        for key, row in mine.items():
            if key not in given:
                row["param"] = plan.code
                bucket.append(row)

    def _compartments(self, plan: _TypePlan, resource: dict[str, Any], out: IndexRows) -> None:
        if resource["resourceType"] == "Patient" and resource.get("id"):
            out.patients.add(resource["id"])
        if not plan.links and not plan.resolved_links:
            return
        for row in out.rows.get("reference", ()):
            if row.get("target_type") == "Patient" and row.get("target_id"):
                param = row["param"]
                if param in plan.links or (param in plan.resolved_links and row.get("grp") is None):
                    out.patients.add(row["target_id"])


@cache
def default_indexer() -> Indexer:
    """The process-wide indexer."""
    return Indexer()
