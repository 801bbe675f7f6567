"""The official FHIR R4 definitions the server is driven by: resource types, search parameters,
and the Patient compartment. Loaded once from the vendored HL7 files in ``fhir/data``."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"

# Parameters the store answers from its own columns instead of index tables.
COLUMN_PARAMS = frozenset({"_id", "_lastUpdated"})
# Parameters of the specification this server does not implement (listed honestly nowhere).
UNSUPPORTED_PARAMS = frozenset({"_text", "_content", "_query", "_list", "_filter", "near"})
INDEXED_TYPES = frozenset({"string", "token", "date", "number", "quantity", "reference", "uri", "composite"})


@dataclass(frozen=True, slots=True)
class Component:
    """One part of a composite search parameter."""

    definition: str
    expression: str


@dataclass(frozen=True, slots=True)
class SearchParam:
    """A search parameter as defined by HL7 (one entry of search-parameters.json)."""

    code: str
    type: str
    expression: str
    base: tuple[str, ...]
    targets: tuple[str, ...]
    url: str
    description: str
    components: tuple[Component, ...] = ()

    @property
    def is_indexed(self) -> bool:
        """True when values come from the index tables (not a resource column)."""
        return self.code not in COLUMN_PARAMS and self.type in INDEXED_TYPES and bool(self.expression)


def _load_json(name: str) -> Any:
    path = DATA / name
    if name.endswith(".gz"):
        with gzip.open(path, "rb") as fh:
            return json.load(fh)
    return json.loads(path.read_text(encoding="utf-8"))


class Definitions:
    """Lookup tables over the R4 definitions; one shared instance via ``definitions()``."""

    def __init__(self) -> None:
        schema = _load_json("fhir.schema.json.gz")
        self.resource_types: frozenset[str] = frozenset(schema["discriminator"]["mapping"])
        bundle = _load_json("search-parameters.json.gz")
        self.by_url: dict[str, SearchParam] = {}
        self._by_type: dict[str, dict[str, SearchParam]] = {}
        generic: dict[str, SearchParam] = {}
        for entry in bundle["entry"]:
            res = entry["resource"]
            param = SearchParam(
                code=res["code"],
                type=res["type"],
                expression=res.get("expression", ""),
                base=tuple(res.get("base", ())),
                targets=tuple(res.get("target", ())),
                url=res["url"],
                description=res.get("description", ""),
                components=tuple(
                    Component(c["definition"], c["expression"]) for c in res.get("component", ())
                ),
            )
            self.by_url[param.url] = param
            if param.code in UNSUPPORTED_PARAMS:
                continue
            for base in param.base:
                if base in ("Resource", "DomainResource"):
                    generic[param.code] = param
                else:
                    self._by_type.setdefault(base, {})[param.code] = param
        self._generic = generic
        compartment = _load_json("compartmentdefinition-patient.json")
        self.patient_compartment: dict[str, tuple[str, ...]] = {
            r["code"]: tuple(r.get("param", ())) for r in compartment["resource"] if r.get("param")
        }

    def params_for(self, resource_type: str) -> dict[str, SearchParam]:
        """Every supported search parameter of ``resource_type``, the common ones included."""
        own = self._by_type.get(resource_type, {})
        if resource_type == "DomainResource" or resource_type in self.resource_types:
            return {**self._generic, **own}
        return dict(own)

    def param(self, resource_type: str, code: str) -> SearchParam | None:
        """The parameter ``code`` of ``resource_type``, or None when there is none."""
        own = self._by_type.get(resource_type)
        if own and code in own:
            return own[code]
        return self._generic.get(code)

    def common_params(self) -> dict[str, SearchParam]:
        """Parameters valid on every resource type (for whole-system search)."""
        return dict(self._generic)


@cache
def definitions() -> Definitions:
    """The process-wide definitions, loaded on first use."""
    return Definitions()
