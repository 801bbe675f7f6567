"""SMART on FHIR scopes, v1 and v2: parse them, check them, narrow them to what a client may have.

Scopes only ever narrow the access decision of ``access.policy``; they never grant by themselves.
A resource scope is ``<context>/<type>.<permissions>[?<query>]``:

- context ``patient`` (the patient in context), ``user`` (what the user may see), ``system``;
- type a FHIR resource type or ``*``;
- permissions v1 ``read`` (= ``rs``), ``write`` (= ``cud``), ``*`` (= ``cruds``), or v2 a subset
  of ``cruds`` in that order (create, read, update, delete, search);
- v2 may add a query (``patient/Observation.rs?category=laboratory``): kept verbatim, returned
  by ``ScopeSet.conditions``, and applied by ``access.session`` as a search filter compiled by
  the FHIR search compiler (``scope_query``). A query the server cannot run as a search of that
  type (unknown parameter, bad value, result parameters such as ``_count``, or any query on
  ``*``) makes the scope malformed: it is kept aside and never granted, as SMART App Launch 2
  lets a server ignore scopes it does not support (a narrowing it cannot apply must not widen).

Other scopes (``openid fhirUser launch launch/patient offline_access online_access``…) are kept
as names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import unquote

from sharedcare.fhir.definitions import definitions
from sharedcare.fhir.errors import FhirError
from sharedcare.fhir.search.compile import CompileContext, criterion
from sharedcare.fhir.search.parse import RESULT_PARAMS, QueryParser, SearchQuery
from sharedcare.fhir.store import utcnow
from sharedcare.storage.tables import resource

INTERACTIONS = "cruds"
"""create, read, update, delete, search: the v2 permission letters, in their mandatory order."""

CONTEXTS = ("patient", "user", "system")

LAUNCH_SCOPES = frozenset(
    {"openid", "fhirUser", "profile", "launch", "launch/patient", "offline_access", "online_access"}
)
"""The non-resource scopes this server knows (``profile`` and ``launch`` are parsed, not granted)."""

_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_V2 = re.compile(r"^c?r?u?d?s?$")
_RESOURCE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]*)\.([^?]+)(?:\?(.*))?$")
_LOOKS_LIKE_RESOURCE = re.compile(r"^(patient|user|system)/")

Params = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ResourceScope:
    """One resource scope, v1 or v2, with its permissions as a set of ``cruds`` letters."""

    context: str
    resource_type: str
    """A resource type, or ``*`` for all."""
    interactions: frozenset[str]
    params: Params = ()
    """v2 query parameters as (name, value) pairs, verbatim: the scope applies only to matches."""
    raw: str = ""

    @classmethod
    def parse(cls, text: str) -> ResourceScope | None:
        """The scope, or None when ``text`` is not a well-formed resource scope."""
        match = _RESOURCE.match(text)
        if not match:
            return None
        context, rtype, perms, query = match.groups()
        letters = _V1.get(perms, perms)
        if not letters or not _V2.match(letters):
            return None
        params: Params = ()
        if query is not None:
            pairs = [part.partition("=") for part in query.split("&") if part]
            if not pairs or any(not name or not sep for name, sep, _ in pairs):
                return None
            params = tuple((name, value) for name, _, value in pairs)
            if scope_query(rtype, params) is None:
                return None
        return cls(context, rtype, frozenset(letters), params, text)

    def applies_to(self, resource_type: str, interaction: str) -> bool:
        """True when this scope allows ``interaction`` on ``resource_type`` (parameters aside)."""
        return self.resource_type in ("*", resource_type) and interaction in self.interactions

    def covers(self, other: ResourceScope) -> bool:
        """True when everything ``other`` allows, this scope allows too."""
        return (
            self.context == other.context
            and self.resource_type in ("*", other.resource_type)
            and other.interactions <= self.interactions
            and set(self.params) <= set(other.params)
        )

    def intersect(self, other: ResourceScope) -> ResourceScope | None:
        """What both scopes allow together (None when nothing): used to grant less than asked."""
        if self.context != other.context:
            return None
        if self.resource_type == "*":
            rtype = other.resource_type
        elif other.resource_type in ("*", self.resource_type):
            rtype = self.resource_type
        else:
            return None
        letters = self.interactions & other.interactions
        if not letters:
            return None
        params = tuple(dict.fromkeys(self.params + other.params))
        text = f"{self.context}/{rtype}.{''.join(c for c in INTERACTIONS if c in letters)}"
        if params:
            text += "?" + "&".join(f"{k}={v}" for k, v in params)
        return ResourceScope(self.context, rtype, letters, params, text)

    def describe(self) -> str:
        """A short English sentence for a consent page."""
        verbs = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
        what = "all data" if self.resource_type == "*" else f"{self.resource_type} resources"
        whose = {
            "patient": "of the patient in context",
            "user": "you may access",
            "system": "on the platform",
        }[self.context]
        actions = ", ".join(verbs[c] for c in INTERACTIONS if c in self.interactions)
        condition = f" where {'&'.join(f'{k}={v}' for k, v in self.params)}" if self.params else ""
        return f"{actions} {what} {whose}{condition}"


@dataclass(frozen=True, slots=True)
class ScopeSet:
    """A set of granted or requested scopes."""

    resources: tuple[ResourceScope, ...] = ()
    other: frozenset[str] = field(default_factory=frozenset)
    """Non-resource scopes (``openid``, ``launch/patient``…), including unknown names."""
    invalid: tuple[str, ...] = ()
    """Malformed resource scopes (``patient/Observation.rc``): never granted."""
    names: tuple[str, ...] = ()
    """Every valid scope as written, in order, without duplicates."""

    @classmethod
    def parse(cls, raw: str | Iterable[str] | None) -> ScopeSet:
        """Parse a space-separated scope string (or an iterable of scopes); never raises."""
        items = raw.split() if isinstance(raw, str) else list(raw or ())
        resources: list[ResourceScope] = []
        other: list[str] = []
        invalid: list[str] = []
        for item in dict.fromkeys(items):
            scope = ResourceScope.parse(item)
            if scope is not None:
                resources.append(scope)
            elif _LOOKS_LIKE_RESOURCE.match(item):
                invalid.append(item)
            else:
                other.append(item)
        names = tuple(s.raw for s in resources) + tuple(other)
        return cls(tuple(resources), frozenset(other), tuple(invalid), names)

    def __str__(self) -> str:
        return " ".join(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __bool__(self) -> bool:
        return bool(self.names)

    @property
    def contexts(self) -> frozenset[str]:
        """The contexts (``patient``, ``user``, ``system``) of the resource scopes present."""
        return frozenset(s.context for s in self.resources)

    def permits(self, resource_type: str, interaction: str, context: str | None = None) -> bool:
        """True when some scope (of ``context``, if given) allows the interaction on the type.

        ``interaction`` is one letter of ``cruds``. A scope with query parameters counts: apply
        ``conditions`` to restrict the result to the resources it names.
        """
        return self.conditions(resource_type, interaction, context) is not None

    def conditions(
        self, resource_type: str, interaction: str, context: str | None = None
    ) -> list[Params] | None:
        """None: not permitted. ``[]``: permitted without condition. Otherwise permitted for the
        resources matching any one of the parameter sets returned (each a conjunction)."""
        if len(interaction) != 1 or interaction not in INTERACTIONS:
            raise ValueError(f"interaction must be one of {INTERACTIONS!r}, not {interaction!r}")
        found: list[Params] = []
        for scope in self.resources:
            if (context is None or scope.context == context) and scope.applies_to(resource_type, interaction):
                if not scope.params:
                    return []
                found.append(scope.params)
        return found or None

    def restrict_to(self, allowed: ScopeSet | str | Iterable[str]) -> ScopeSet:
        """The part of these (requested) scopes that ``allowed`` permits.

        A requested scope covered by an allowed one is kept as written; one only partly covered
        is narrowed to the overlap, written in v2 syntax; the rest is dropped, as SMART lets the
        server grant less than asked. Non-resource scopes are kept only if allowed by name.
        """
        allowed = allowed if isinstance(allowed, ScopeSet) else ScopeSet.parse(allowed)
        kept: list[str] = []
        for scope in self.resources:
            if any(a.covers(scope) for a in allowed.resources):
                kept.append(scope.raw)
                continue
            for a in allowed.resources:
                narrowed = scope.intersect(a)
                if narrowed is not None:
                    kept.append(narrowed.raw)
        kept.extend(name for name in self.names if name in allowed.other)
        return ScopeSet.parse(kept)

    def only_contexts(self, *contexts: str) -> ScopeSet:
        """These scopes without the resource scopes of other contexts."""
        return ScopeSet.parse(
            [s.raw for s in self.resources if s.context in contexts]
            + [n for n in self.names if n in self.other]
        )

    def without(self, *names: str) -> ScopeSet:
        """These scopes without the named ones."""
        return ScopeSet.parse([n for n in self.names if n not in names])


@lru_cache(maxsize=4096)
def parse_cached(scopes: frozenset[str]) -> ScopeSet:
    """``ScopeSet.parse`` memoised for the scopes of a principal (parsed on every request)."""
    return ScopeSet.parse(sorted(scopes))


@lru_cache(maxsize=1024)
def scope_query(resource_type: str, params: Params) -> SearchQuery | None:
    """The search a v2 scope's query stands for (its criteria are AND-ed); None when it is not a
    search this server can run on ``resource_type``. The query is parsed strictly and compiled
    once here, so that a value the compiler refuses (a malformed date, say) is found now, not
    at the first request. Names and values may be percent-encoded. The result is shared: do not
    change it."""
    defs = definitions()
    if resource_type not in defs.resource_types:
        return None
    pairs = [(unquote(name), unquote(value)) for name, value in params]
    if any(name.partition(":")[0] in RESULT_PARAMS for name, _ in pairs):
        return None
    try:
        query = QueryParser(defs, strict=True, max_count=1).parse(resource_type, pairs)
        ctx = CompileContext(defs, "", utcnow())
        for flt in query.filters:
            criterion(resource, resource_type, flt, ctx)
    except (FhirError, ValueError):
        return None
    return query if query.filters else None
