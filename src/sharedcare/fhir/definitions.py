"""The official FHIR R4 definitions the server is driven by: resource types, search parameters,
and the Patient compartment. Loaded once from the vendored HL7 files in ``fhir/data``.

It also works out, per resource type, which parameters need no index rows of their own because
their rows are, by construction of their FHIRPath expressions, those of other parameters
(:class:`Layout`): the indexer skips them and searches read their sources' rows instead.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"

LOCAL_DEFINITIONS = "search-parameters-local.json"
"""This platform's own search parameters (IHE MHD's, and the record link of document content,
``docs/documents.md``) and compartment links, in the form of HL7's files, added to theirs."""
# Parameters the store answers from its own columns instead of index tables.
COLUMN_PARAMS = frozenset({"_id", "_lastUpdated"})
# Parameters of the specification this server does not implement (listed honestly nowhere).
UNSUPPORTED_PARAMS = frozenset({"_text", "_content", "_query", "_list", "_filter", "near"})
INDEXED_TYPES = frozenset({"string", "token", "date", "number", "quantity", "reference", "uri", "composite"})
# Value types that never give index rows of a parameter type, so a path to them adds nothing to a
# parameter: a SampledData is not a quantity (``quantity.index`` ignores it).
NO_ROWS: dict[str, frozenset[str]] = {"quantity": frozenset({"SampledData"})}
# The row ``grp`` of a reference row whose literal type is not what ``resolve()`` answers (say
# ``urn:x/Patient/1``): such a row must not stand in for a ``where(resolve() is Patient)`` alias.
NOT_RESOLVED = 0


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


@dataclass(frozen=True, slots=True)
class Source:
    """Stored rows that belong to a parameter: the rows written under ``param``, or, when
    ``target_type`` is set, only those of them pointing at that type (and not marked
    ``NOT_RESOLVED``), for a parameter that is ``param`` filtered by ``where(resolve() is T)``."""

    param: str
    target_type: str | None = None


@dataclass(frozen=True, slots=True)
class GroupSource:
    """Stored rows that hold values of a composite parameter: groups of rows ``param#i`` sharing a
    ``grp``; or, when ``param`` is None, for a composite on the resource itself (whose one group is
    the whole resource), the rows of each component's own parameter (``components[i]``)."""

    param: str | None
    components: tuple[tuple[Source, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the index rows of the parameters of one resource type are.

    A parameter not named here is stored under its own code. ``filtered`` maps a reference
    parameter ``P = B.where(resolve() is T)`` to ``(B, T)``: its rows are those of ``B`` pointing
    at ``T``, plus the few it is written with itself (see the indexer).
    """

    sources: dict[str, tuple[Source, ...]]
    groups: dict[str, tuple[GroupSource, ...]]
    filtered: dict[str, tuple[str, str]]

    def sources_of(self, code: str) -> tuple[Source, ...]:
        """The stored rows of the non-composite parameter ``code``."""
        return self.sources.get(code) or (Source(code),)

    def groups_of(self, code: str) -> tuple[GroupSource, ...]:
        """The stored rows of the composite parameter ``code``."""
        return self.groups.get(code) or (GroupSource(code),)

    def is_derived(self, code: str) -> bool:
        """True when the indexer need not evaluate ``code`` at all: every row is another's."""
        if code in self.filtered:
            return False
        if code in self.groups:
            return self.groups[code] != (GroupSource(code),)
        return code in self.sources and self.sources[code] != (Source(code),)


def _strip_parens(text: str) -> str:
    while text.startswith("(") and text.endswith(")"):
        depth = 0
        for i, ch in enumerate(text):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(text) - 1:
                return text  # ``(a).b(c)``: the first parenthesis closes before the end
        text = text[1:-1].strip()
    return text


_TOP_LEVEL_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def union_parts(expression: str) -> list[str] | None:
    """The top-level ``|`` parts of a FHIRPath expression, whitespace-normalised, without enclosing
    parentheses; None unless every part is a plain path (``A.b.where(...).c``), the only form
    whose parts can be compared as text."""
    parts: list[str] = []
    depth, start, quote, escaped = 0, 0, "", False
    for i, ch in enumerate(expression):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                return None
        elif ch == "|" and depth == 0:
            parts.append(expression[start:i])
            start = i + 1
    if depth or quote:
        return None
    parts.append(expression[start:])
    out = []
    for part in parts:
        part = _strip_parens(" ".join(part.split()))
        # outside parentheses, only names and dots: no operator, literal or variable at the top
        top, depth = [], 0
        for ch in part:
            depth += ch == "("
            if depth == 0:
                top.append(ch)
            depth -= ch == ")"
        if not part or part[0] == "(" or not _TOP_LEVEL_PATH.fullmatch("".join(top)):
            return None
        out.append(part)
    return out


def applicable_parts(expression: str, rtype: str) -> frozenset[str] | None:
    """The parts of ``expression`` that apply to ``rtype`` (as ``fhirpath`` selects them: rooted at
    the type or at Resource/DomainResource); None when they cannot be told."""
    parts = union_parts(expression)
    if parts is None:
        return None
    out = set()
    for part in parts:
        root = re.split(r"[.(]", part, maxsplit=1)[0]
        if root == rtype or root in ("Resource", "DomainResource"):
            out.add(part)
        elif not root[0].isupper():
            return None  # relative to something: not comparable
    return frozenset(out) or None


def relative_paths(expression: str) -> tuple[tuple[str, str | None], ...] | None:
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


_RESOLVE_FILTER = re.compile(r"(.+)\.where\(resolve\(\) is ([A-Z][A-Za-z]*)\)")
_ELEMENT = re.compile(r"([a-z][A-Za-z0-9]*)(?:\.ofType\(([A-Za-z]+)\))?")


def _typed(name: str, type_name: str | None) -> tuple[str, str | None]:
    return name, type_name[0].upper() + type_name[1:] if type_name else None


def _layout(params: dict[str, SearchParam], by_url: dict[str, SearchParam], rtype: str) -> Layout:
    """Find the parameters of ``rtype`` whose rows are other parameters' rows, by their expressions.

    * union: the parts of the expression (split at the top-level ``|``) are all parts of other
      parameters of the same type (``combo-code`` = ``code`` | ``component-code``; ``phonetic`` =
      ``name``): its rows are theirs, as each part is evaluated on its own;
    * filtered: a reference parameter ``B.where(resolve() is T)`` for a parameter ``B``;
    * composites on the resource itself (``code-value-quantity``, expression ``Observation``) whose
      components are exactly other parameters' expressions: the one group is the whole resource, so
      a value matches when each component parameter has a matching row on the resource;
    * composite unions (``combo-code-value-quantity`` = ``Observation | Observation.component``):
      the union of the composites over each part that have the same components.
    """
    plain = {c: p for c, p in params.items() if p.type != "composite"}
    terms = {c: t for c, p in plain.items() if (t := applicable_parts(p.expression, rtype))}
    direct: dict[str, tuple[str, ...]] = {}
    seen: list[str] = []
    for code in sorted(terms, key=lambda c: (len(terms[c]), c)):
        mine, kind = terms[code], plain[code].type
        within = tuple(o for o in seen if plain[o].type == kind and terms[o] <= mine)
        if within and frozenset().union(*(terms[o] for o in within)) == mine:
            direct[code] = within
        seen.append(code)
    filtered: dict[str, tuple[str, str]] = {}
    for code, mine in terms.items():
        matches = [_RESOLVE_FILTER.fullmatch(t) for t in mine]
        if code in direct or plain[code].type != "reference" or not all(matches):
            continue
        targets = {m[2] for m in matches if m}
        base_terms = frozenset(m[1] for m in matches if m)
        bases = sorted(
            o
            for o, t in terms.items()
            if t == base_terms and plain[o].type == "reference" and o not in direct and o != code
        )
        if len(targets) == 1 and bases and not _RESOLVE_FILTER.fullmatch(bases[0]):
            filtered[code] = (bases[0], targets.pop())
    filtered = {c: (b, t) for c, (b, t) in filtered.items() if b not in filtered}

    def expand(code: str) -> tuple[Source, ...]:
        if code in direct:
            return tuple(dict.fromkeys(s for o in direct[code] for s in expand(o)))
        if code in filtered:
            base, target = filtered[code]
            return (Source(base, target), Source(code))
        return (Source(code),)

    sources = {c: expand(c) for c in plain}
    # the (element, type) pairs each plain parameter reads on the resource itself, if that is all
    elements: dict[str, frozenset[tuple[str, str | None]]] = {}
    for code, mine in terms.items():
        pairs = [_ELEMENT.fullmatch(t.removeprefix(rtype + ".")) for t in mine if t.startswith(rtype + ".")]
        if len(pairs) == len(mine) and all(pairs):
            typed = {_typed(m[1], m[2]) for m in pairs if m}
            elements[code] = frozenset(p for p in typed if p[1] not in NO_ROWS.get(plain[code].type, ()))
    composites = {c: p for c, p in params.items() if p.type == "composite"}
    signatures: dict[str, tuple[tuple[str, frozenset[tuple[str, str | None]]], ...]] = {}
    for code, param in composites.items():
        parts = []
        for comp in param.components:
            sub, paths = by_url.get(comp.definition), relative_paths(comp.expression)
            if sub is None or paths is None:
                break
            parts.append((sub.type, frozenset(_typed(n, t) for n, t in paths)))
        else:
            signatures[code] = tuple(parts)
    groups: dict[str, tuple[GroupSource, ...]] = {}
    for code, sig in signatures.items():
        if applicable_parts(composites[code].expression, rtype) != frozenset({rtype}):
            continue
        found = []
        for kind, wanted in sig:
            same = sorted(c for c, e in elements.items() if e == wanted and plain[c].type == kind)
            if not same:
                break
            found.append(sources[same[0]])
        else:
            groups[code] = (GroupSource(None, tuple(found)),)
    for code, sig in signatures.items():
        spans = applicable_parts(composites[code].expression, rtype)
        if code in groups or not spans or len(spans) < 2:
            continue
        union: list[GroupSource] = []
        for term in sorted(spans):
            same = sorted(
                c
                for c, s in signatures.items()
                if c != code and s == sig and applicable_parts(composites[c].expression, rtype) == {term}
            )
            if not same:
                break
            union.extend(groups.get(same[0], (GroupSource(same[0]),)))
        else:
            groups[code] = tuple(union)
    return Layout(
        {c: s for c, s in sources.items() if s != (Source(c),)},
        groups,
        filtered,
    )


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
        local = _load_json(LOCAL_DEFINITIONS)
        self.by_url: dict[str, SearchParam] = {}
        self._by_type: dict[str, dict[str, SearchParam]] = {}
        generic: dict[str, SearchParam] = {}
        for entry in bundle["entry"] + local["entry"]:
            res = entry["resource"]
            if res["resourceType"] != "SearchParameter":
                continue
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
        for entry in local["entry"]:  # the platform's additions to the compartment
            if entry["resource"]["resourceType"] == "CompartmentDefinition":
                for r in entry["resource"]["resource"]:
                    self.patient_compartment[r["code"]] = tuple(r["param"])
        self._layouts: dict[str, Layout] = {}

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

    def layout(self, resource_type: str) -> Layout:
        """Which parameters of ``resource_type`` have their rows stored under other parameters."""
        layout = self._layouts.get(resource_type)
        if layout is None:
            params = {c: p for c, p in self.params_for(resource_type).items() if p.is_indexed}
            layout = self._layouts[resource_type] = _layout(params, self.by_url, resource_type)
        return layout

    def common_params(self) -> dict[str, SearchParam]:
        """Parameters valid on every resource type (for whole-system search)."""
        return dict(self._generic)


@cache
def definitions() -> Definitions:
    """The process-wide definitions, loaded on first use."""
    return Definitions()
