"""Write-time extraction of search index rows from a resource.

For each search parameter of the resource's type, the parameter's FHIRPath expression is
evaluated (fast compiled extractors, fhirpathpy for the rest, see ``fhirpath``) and each value
becomes rows of the typed index table of the parameter's type. The Patient compartment
membership comes from the compartment definition's parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from sharedcare.fhir import fhirpath
from sharedcare.fhir.definitions import Definitions, SearchParam, definitions
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


def _relative_paths(expression: str) -> tuple[tuple[str, str | None], ...] | None:
    """Parse a composite component expression: ``code``, ``value.ofType(Quantity) | value.ofType(Range)``."""
    out: list[tuple[str, str | None]] = []
    for part in expression.split("|"):
        part = part.strip()
        if "." not in part and part.isidentifier():
            out.append((part, None))
            continue
        name, _, rest = part.partition(".")
        if rest.startswith("ofType(") and rest.endswith(")") and name.isidentifier():
            out.append((name, rest[7:-1]))
        else:
            return None
    return tuple(out)


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
        self._plans: dict[str, tuple[_Plan, ...]] = {}

    def _plan(self, resource_type: str) -> tuple[_Plan, ...]:
        plans = self._plans.get(resource_type)
        if plans is not None:
            return plans
        built: list[_Plan] = []
        for code, param in sorted(self.defs.params_for(resource_type).items()):
            if not param.is_indexed:
                continue
            extract = fhirpath.compile_expression(param.expression, resource_type)
            if param.type == "composite":
                parts = self._composite_parts(param)
                if parts:
                    built.append(_Plan(code, "composite", extract, None, parts))
                continue
            built.append(_Plan(code, param.type, extract, _value_indexer(param.type, self.defs)))
        plans = tuple(built)
        self._plans[resource_type] = plans
        return plans

    def _composite_parts(self, param: SearchParam) -> tuple[_CompositePart, ...]:
        parts: list[_CompositePart] = []
        for i, comp in enumerate(param.components):
            sub = self.defs.by_url.get(comp.definition)
            paths = _relative_paths(comp.expression)
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
        for plan in self._plan(rtype):
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
        self._compartments(rtype, resource, out)
        return out

    def _compartments(self, rtype: str, resource: dict[str, Any], out: IndexRows) -> None:
        if rtype == "Patient" and resource.get("id"):
            out.patients.add(resource["id"])
        links = self.defs.patient_compartment.get(rtype)
        if not links:
            return
        for row in out.rows.get("reference", ()):
            if row["param"] in links and row.get("target_type") == "Patient" and row.get("target_id"):
                out.patients.add(row["target_id"])


@cache
def default_indexer() -> Indexer:
    """The process-wide indexer."""
    return Indexer()
