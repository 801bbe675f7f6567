"""Parse FHIR search query parameters into a ``SearchQuery``.

The parser knows every parameter from the official definitions; it validates names, modifiers,
chains and ``_has`` paths, and collects what it could not use so that strict handling can refuse
it (400) and lenient handling can report it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlencode

from sharedcare.fhir.definitions import Definitions, SearchParam
from sharedcare.fhir.errors import BadRequest, TooCostly
from sharedcare.fhir.search import date, number, quantity, reference, string, token, uri
from sharedcare.fhir.search.values import split_unescaped

RESULT_PARAMS = frozenset(
    {
        "_sort",
        "_count",
        "_total",
        "_summary",
        "_elements",
        "_include",
        "_revinclude",
        "_page",
        "_format",
        "_pretty",
        "_contained",
        "_containedType",
    }
)
SPECIAL = {"_id": "token", "_lastUpdated": "date"}
MODIFIERS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "string": string.MODIFIERS,
    "token": token.MODIFIERS,
    "date": date.MODIFIERS,
    "number": number.MODIFIERS,
    "quantity": quantity.MODIFIERS,
    "reference": ("identifier", "missing"),
    "uri": uri.MODIFIERS,
    "composite": ("missing",),
}
_ = reference  # the reference module validates values at compile time
# Bounds on what one search may ask for, so that no request can demand unbounded work.
MAX_CHAIN_DEPTH = 4
MAX_HAS_DEPTH = 4
MAX_VALUES = 100
MAX_CRITERIA = 50


@dataclass(frozen=True, slots=True)
class Filter:
    """One search criterion: ``param[:modifier]=v1,v2`` (OR), possibly reached through a chain."""

    param: SearchParam | None  # None for _id and _lastUpdated
    code: str
    type: str
    modifier: str | None
    values: tuple[str, ...]
    chain: tuple[tuple[str, str | None], ...] = ()  # (reference parameter, type modifier) hops


@dataclass(frozen=True, slots=True)
class HasFilter:
    """Reverse chain: resources of ``source_type`` whose ``ref_param`` points here match ``inner``."""

    source_type: str
    ref_param: SearchParam
    inner: Filter | HasFilter


@dataclass(frozen=True, slots=True)
class Include:
    """``_include``/``_revinclude`` = ``Source:param[:Target]``, optionally ``:iterate``."""

    source_type: str
    param: SearchParam | None  # None for the wildcard ``*``
    target_type: str | None
    iterate: bool


@dataclass(frozen=True, slots=True)
class SortKey:
    """One ``_sort`` key."""

    code: str
    type: str
    param: SearchParam | None
    descending: bool


@dataclass
class SearchQuery:
    """A parsed search."""

    resource_type: str
    filters: list[Filter | HasFilter] = field(default_factory=list)
    sort: list[SortKey] = field(default_factory=list)
    count: int | None = None
    total: str | None = None
    summary: str | None = None
    elements: tuple[str, ...] = ()
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    page: str | None = None
    ignored: list[str] = field(default_factory=list)  # parameters not used (lenient handling)
    source: str = ""  # the parameters as received, for the audit trail


class QueryParser:
    """Turns query parameters into a ``SearchQuery`` for one resource type."""

    def __init__(self, defs: Definitions, strict: bool, max_count: int) -> None:
        self.defs = defs
        self.strict = strict
        self.max_count = max_count

    def parse(self, resource_type: str, params: list[tuple[str, str]]) -> SearchQuery:
        query = SearchQuery(resource_type, source=urlencode(params))
        if len(params) > MAX_CRITERIA:
            raise TooCostly(f"A search may have at most {MAX_CRITERIA} parameters")
        for key, value in params:
            try:
                self._one(query, key, value)
            except _Unknown as unknown:
                if self.strict:
                    raise BadRequest(str(unknown)) from None
                query.ignored.append(f"{key}: {unknown}")
        return query

    def _one(self, query: SearchQuery, key: str, value: str) -> None:
        name, _, modifier = key.partition(":")
        if name in RESULT_PARAMS:
            self._result_param(query, name, modifier, value)
            return
        if name == "_has":
            query.filters.append(self._has(query.resource_type, key, value))
            return
        query.filters.append(self._filter(query.resource_type, key, value))

    def _filter(self, resource_type: str, key: str, value: str) -> Filter:
        chain_parts = key.split(".")
        if len(chain_parts) - 1 > MAX_CHAIN_DEPTH:
            raise TooCostly(f"Chains may have at most {MAX_CHAIN_DEPTH} links: {key!r}")
        hops: list[tuple[str, str | None]] = []
        current = [resource_type]
        for part in chain_parts[:-1]:
            code, _, type_mod = part.partition(":")
            if type_mod and type_mod not in self.defs.resource_types:
                raise BadRequest(f"Unknown resource type {type_mod!r} in chain {key!r}")
            reached: list[str] = []
            for rtype in current:
                param = self.defs.param(rtype, code)
                if param is None or param.type != "reference":
                    continue
                targets = (
                    [type_mod] if type_mod else [t for t in param.targets if t in self.defs.resource_types]
                )
                reached.extend(t for t in targets if t not in reached)
            if not reached:
                raise _Unknown(f"Unknown chained reference parameter {code!r} in {key!r}")
            hops.append((code, type_mod or None))
            current = reached
        code, _, modifier = chain_parts[-1].partition(":")
        values = tuple(split_unescaped(value, ","))
        if len(values) > MAX_VALUES:
            raise TooCostly(f"A parameter may have at most {MAX_VALUES} values: {key!r}")
        if code in SPECIAL:
            ptype = SPECIAL[code]
            if (
                modifier
                and modifier not in ("missing", "not")
                and not (code == "_id" and modifier == "exact")
            ):
                raise _Unknown(f"Modifier :{modifier} is not supported on {code}")
            if modifier == "missing" and values not in (("true",), ("false",)):
                raise BadRequest(f":missing takes true or false, not {value!r}")
            return Filter(None, code, ptype, modifier or None, values, tuple(hops))
        candidates = [
            p for p in (self.defs.param(t, code) for t in current) if p is not None and p.is_indexed
        ]
        if not candidates:
            raise _Unknown(f"Unknown or unsupported search parameter {code!r} on {', '.join(current)}")
        param = candidates[0]
        if any(p.type != param.type for p in candidates):
            raise BadRequest(f"Chain {key!r} reaches parameters {code!r} of different types; name the type")
        if modifier:
            allowed = MODIFIERS_BY_TYPE.get(param.type, ())
            ok = modifier in allowed or (param.type == "reference" and modifier in self.defs.resource_types)
            if not ok:
                raise _Unknown(f"Modifier :{modifier} is not supported on {param.type} parameter {code!r}")
        if modifier == "missing" and values not in (("true",), ("false",)):
            raise BadRequest(f":missing takes true or false, not {value!r}")
        if any(v == "" for v in values):
            raise BadRequest(f"Empty value in {key}={value!r}")
        return Filter(param, code, param.type, modifier or None, values, tuple(hops))

    def _has(self, resource_type: str, key: str, value: str) -> HasFilter:
        # _has:Observation:patient:code=x  or nested _has:A:p1:_has:B:p2:code=x
        parts = key.split(":")
        if key.count("_has:") > MAX_HAS_DEPTH:
            raise TooCostly(f"_has may be nested at most {MAX_HAS_DEPTH} deep")
        if len(parts) < 4:
            raise BadRequest(f"Invalid _has parameter {key!r}: expected _has:Type:reference:parameter")
        source, ref_code = parts[1], parts[2]
        if source not in self.defs.resource_types:
            raise BadRequest(f"Unknown resource type {source!r} in {key!r}")
        ref = self.defs.param(source, ref_code)
        if ref is None or ref.type != "reference":
            raise BadRequest(f"{ref_code!r} is not a reference parameter of {source}")
        if ref.targets and resource_type not in ref.targets:
            raise BadRequest(f"{source}.{ref_code} cannot point at {resource_type}")
        rest = ":".join(parts[3:])
        inner: Filter | HasFilter = (
            self._has(source, rest, value) if rest.startswith("_has:") else self._filter(source, rest, value)
        )
        return HasFilter(source, ref, inner)

    def _result_param(self, query: SearchQuery, name: str, modifier: str, value: str) -> None:
        if name == "_count":
            try:
                count = int(value)
            except ValueError:
                raise BadRequest(f"_count must be a whole number, not {value!r}") from None
            if count < 0:
                raise BadRequest("_count must not be negative")
            query.count = min(count, self.max_count)
        elif name == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise BadRequest(f"_total must be none, estimate or accurate, not {value!r}")
            query.total = value
        elif name == "_summary":
            if value not in ("true", "false", "count", "data", "text"):
                raise BadRequest(f"_summary must be true, false, count, data or text, not {value!r}")
            query.summary = None if value == "false" else value
        elif name == "_elements":
            query.elements = tuple(e.strip() for e in value.split(",") if e.strip())
        elif name == "_sort":
            query.sort = [
                self._sort_key(query.resource_type, k.strip()) for k in value.split(",") if k.strip()
            ]
        elif name in ("_include", "_revinclude"):
            include = self._include(value, modifier == "iterate", name)
            (query.includes if name == "_include" else query.revincludes).append(include)
        elif name == "_page":
            query.page = value
        elif name == "_contained" and value not in ("false", ""):
            raise _Unknown("_contained is not supported")

    def _sort_key(self, resource_type: str, key: str) -> SortKey:
        descending = key.startswith("-")
        code = key.lstrip("-")
        if code in SPECIAL:
            return SortKey(code, SPECIAL[code], None, descending)
        param = self.defs.param(resource_type, code)
        if param is None or not param.is_indexed or param.type == "composite":
            raise _Unknown(f"Cannot sort by {code!r} on {resource_type}")
        return SortKey(code, param.type, param, descending)

    def _include(self, value: str, iterate: bool, name: str) -> Include:
        parts = value.split(":")
        if parts[0] == "*":
            return Include("*", None, None, iterate)
        if len(parts) not in (2, 3) or parts[0] not in self.defs.resource_types:
            raise BadRequest(f"Invalid {name} {value!r}: expected Type:parameter[:TargetType]")
        if parts[1] == "*":
            return Include(parts[0], None, parts[2] if len(parts) == 3 else None, iterate)
        param = self.defs.param(parts[0], parts[1])
        if param is None or param.type != "reference":
            raise BadRequest(f"{parts[1]!r} is not a reference parameter of {parts[0]} in {name}")
        target = parts[2] if len(parts) == 3 else None
        if target and target not in self.defs.resource_types:
            raise BadRequest(f"Unknown target type {target!r} in {name}")
        return Include(parts[0], param, target, iterate)


class _Unknown(Exception):
    """A parameter the server cannot use: 400 in strict handling, ignored and reported in lenient."""
