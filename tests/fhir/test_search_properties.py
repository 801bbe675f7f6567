"""Property: for generated resources and queries, SQL search returns exactly what a straightforward
in-memory evaluation of the same query returns, on SQLite and on PostgreSQL.

Data: 5-22 Patients (names with accents, mixed case and a ``use``; gender; birthDate at year,
month or day precision; active; identifiers with or without a system; a city; a link to another
patient) and Observations (code with 1-2 codings and/or a text; status; a subject that is
relative, versioned, absolute on this server or on another one, dangling, a Group, or only an
identifier with ``type`` Patient;
effectiveDateTime at every precision in several zones, or a Period with an open end; value[x] as
Quantity, CodeableConcept, string, dateTime or Period; blood-pressure components), written in a
random order, then some updated or deleted. Queries take their values mostly from the data
(re-cased, unaccented, cut, re-zoned, at another precision) so that they hit: each parameter type
with its modifiers and prefixes, OR (commas) and AND, ``:missing``, ``_id``, chains of one and two
hops, ``_has``, composites (and their ``:missing``), and ``_sort`` with ``_count`` pages followed
to the end and back. Parameters whose rows are other parameters' (``combo-*``, ``patient``,
``phonetic``, ``code-value-*``) are queried like the others: the oracle knows nothing of that.

The oracle is deliberately independent of the code it checks:

* values are extracted with ``fallback_extractor`` (fhirpathpy), not the compiled extractors the
  indexer uses, and nothing is read back from the index tables;
* the comparisons are written here from the FHIR R4 search page, in a different form from the
  server's (half-open date ranges, ``Decimal`` arithmetic, normalisation in another order); none
  of the search modules' ``matches`` twins is used.

Assumptions shared with the server (choices the spec leaves open): a date without a zone is UTC;
text matching folds case with ``casefold`` and strips accents by NFKD; number/quantity
``gt``/``lt``/``ge``/``le``/``sa``/``eb`` compare with the exact stated value and ``ap`` is +/-10 %;
a reference is local when relative or under the base URL, whatever its version; a multi-valued sort
key uses its lowest value ascending and highest descending (for a date range, its start ascending
and its end descending), resources without one last, ties in insertion order; strings sort by code
point (the test databases use the C collation). Not generated, because the server deliberately
departs from the spec or the spec is unclear there: whitespace inside or around string search
values (the server collapses it), ``system|code`` on ``code``-typed elements (indexed without their
implicit system), date ``ap`` (depends on "now"), exponent notation in numbers, and elements that
are present but not searchable (a Reference with only a display) under ``:missing``.

``SHAREDCARE_PROPERTY_EXAMPLES=2000`` runs a longer search for counterexamples.
"""

from __future__ import annotations

import calendar
import copy
import os
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sharedcare.fhir.definitions import definitions
from sharedcare.fhir.errors import BadRequest
from sharedcare.fhir.fhirpath import fallback_extractor
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.store import Write
from sharedcare.storage.engine import make_engine
from sharedcare.storage.tables import INDEX_TABLES, resource, resource_compartment, resource_version

Resource = dict[str, Any]
Param = tuple[str, str]

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
OTHER_UNITS = "http://units.example/other"
MRN = "http://hospital.example/mrn"
OID = "urn:oid:1.2.3"
OTHER_SERVER = "http://other.example/fhir"
BASE = "http://sharedcare.test/fhir"  # the base URL searches run under
IDENTIFIED = "identifier"  # a subject drawn as this is an identifier-only Reference typed Patient

PROPERTY_SETTINGS = settings(
    max_examples=int(os.environ.get("SHAREDCARE_PROPERTY_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- value pools (small, so that queries hit) -----------------------------------------------------
FAMILIES = ["Müller", "Muller", "MÜLLER", "Mueller", "Møller", "Straße", "de la Cruz", "O'Brien", "Smith,Jr"]
GIVENS = ["Ann", "Anna", "Änne", "anne", "José", "JOSE", "Émile", "Zoë", "Bob"]
PREFIXES_NAME = ["Dr.", "Mme", "Prof"]
CITIES = ["Zürich", "Zurich", "Genève", "Geneva", "Bern", "bern", "São Paulo"]
GENDERS = ["male", "female", "other", "unknown"]
IDENT_SYSTEMS = [OID, MRN]
IDENT_VALUES = ["123", "456", "A-1", "a-1"]
STATUSES = ["final", "preliminary", "amended", "cancelled"]
# (system, code, display) of Observation.code codings
CODINGS: list[tuple[str | None, str, str]] = [
    (LOINC, "8867-4", "Heart rate"),
    (SNOMED, "364075005", "Heart rate"),
    (None, "8867-4", "Pulse rate"),
    (LOINC, "29463-7", "Body weight"),
    (SNOMED, "27113001", "Body weight"),
    (LOINC, "85354-9", "Blood pressure panel"),
]
COMPONENT_CODINGS: list[tuple[str | None, str, str]] = [
    (LOINC, "8480-6", "Systolic blood pressure"),
    (LOINC, "8462-4", "Diastolic blood pressure"),
    (SNOMED, "271649006", "Systolic"),
]
CONCEPT_TEXTS = ["Heart rate", "Pulse", "Poids corporel", "Blutdruck", "Fréquence cardiaque"]
# valueCodeableConcept codings and texts, valueString values
VALUE_CODINGS: list[tuple[str | None, str, str]] = [
    (SNOMED, "260385009", "Negative"),
    (SNOMED, "10828004", "Positive"),
    (None, "POS", "Positif"),
]
VALUE_STRINGS = ["Positive", "négatif", "Trace amounts", "NORMAL"]
TOKEN_SYSTEMS = [LOINC, SNOMED, "http://unknown.example"]
TOKEN_CODES = sorted({c for _s, c, _d in CODINGS + COMPONENT_CODINGS} | {"unknown"})
TEXTS = sorted(set(CONCEPT_TEXTS) | {d for _s, _c, d in CODINGS + COMPONENT_CODINGS + VALUE_CODINGS})
QUANTITY_VALUES: list[int | float] = [0, 0.04, 4.96, 5, 5.4, 5.45, 5.5, 60, 72, 72.5, 100, 100.4, 120.5, -1.5]
QUANTITY_UNITS = [("mg", "mg"), ("kg", "kilogram"), ("/min", "beats/minute"), ("mm[Hg]", "mmHg")]
SEARCH_NUMBERS = [
    "0",
    "0.0",
    "5",
    "5.0",
    "5.4",
    "5.40",
    "5.5",
    "60",
    "72",
    "72.5",
    "100",
    "120",
    "120.50",
    "-1.5",
]
SEARCH_UNITS = ["mg", "kg", "/min", "mm[Hg]", "mmHg", "kilogram"]
DATE_PREFIXES = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"]
NUMBER_PREFIXES = [*DATE_PREFIXES, "ap"]
TIMEZONES = ["Z", "+00:00", "+02:00", "-05:00", "+05:30", "+14:00", "-12:00"]
MAX_PATIENTS = 6

DEFS = definitions()


# ==================================================================================================
# The oracle: FHIR R4 search semantics over plain Python values
# ==================================================================================================


def norm(text: str) -> str:
    """Case- and accent-insensitive form: case-folded, decomposed, combining marks dropped."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def unescape(value: str) -> str:
    """Undo FHIR search escaping (``\\,`` ``\\|`` ``\\$`` ``\\\\``)."""
    return re.sub(r"\\(.)", r"\1", value)


def escape(value: str) -> str:
    """FHIR search escaping of a literal string value."""
    return re.sub(r"([\\,|$])", r"\\\1", value)


_DATE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def instant_range(text: str) -> tuple[datetime, datetime]:
    """The half-open UTC interval [start, end) a date/dateTime denotes at its precision."""
    m = _DATE.fullmatch(text)
    assert m, text
    year, month, day, hour, minute, second, frac, tz = m.groups()
    y = int(year)
    if month is None:
        return datetime(y, 1, 1), datetime(y + 1, 1, 1)
    mo = int(month)
    if day is None:
        return datetime(y, mo, 1), datetime(y + mo // 12, mo % 12 + 1, 1)
    if hour is None:
        start = datetime(y, mo, int(day))
        return start, start + timedelta(days=1)
    if second is None:
        width = timedelta(minutes=1)
    elif frac is None:
        width = timedelta(seconds=1)
    else:
        width = timedelta(microseconds=10 ** (7 - len(frac)))
    micro = int(frac[1:].ljust(6, "0")) if frac else 0
    local = datetime(y, mo, int(day), int(hour), int(minute), int(second or 0), micro)
    offset = timedelta(0)
    if tz and tz != "Z":
        offset = timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])) * (1 if tz[0] == "+" else -1)
    start = local - offset
    return start, start + width


def value_range(value: Any) -> tuple[datetime, datetime] | None:
    """[start, end) of a date/dateTime string or a Period (a missing end is unbounded)."""
    if isinstance(value, str):
        return instant_range(value)
    if isinstance(value, dict) and ("start" in value or "end" in value):
        start = instant_range(value["start"])[0] if "start" in value else datetime.min
        end = instant_range(value["end"])[1] if "end" in value else datetime.max
        return start, end
    return None


def split_prefix(value: str, allowed: Sequence[str]) -> tuple[str, str]:
    """(prefix, rest) of a date/number search value; no prefix means ``eq``."""
    if value[:2] in allowed and value[:2]:
        return value[:2], value[2:]
    return "eq", value


def string_parts(value: Any) -> list[str]:
    """The strings a string parameter searches in one value (every part of a HumanName/Address)."""
    if isinstance(value, str):
        return [value]
    out: list[str] = []
    if isinstance(value, dict):
        for key in ("family", "given", "prefix", "suffix", "text", "line", "city", "state", "country"):
            item = value.get(key)
            out.extend(item if isinstance(item, list) else [item] if isinstance(item, str) else [])
    return out


def string_match(value: Any, query: str, modifier: str | None) -> bool:
    """String search: prefix (default), ``:exact`` (whole, case-sensitive), ``:contains``."""
    text = unescape(query)
    for s in string_parts(value):
        if modifier == "exact" and s == text:
            return True
        if modifier == "contains" and norm(text) in norm(s):
            return True
        if modifier is None and norm(s).startswith(norm(text)):
            return True
    return False


def token_codes(value: Any) -> tuple[list[tuple[str | None, str]], list[str]]:
    """((system, code) pairs, texts) of a token value: code, boolean, CodeableConcept, Identifier."""
    if isinstance(value, bool):
        return [(None, "true" if value else "false")], []
    if isinstance(value, str):
        return [(None, value)], []
    if not isinstance(value, dict):
        return [], []
    if "coding" in value or "text" in value:
        codings = value.get("coding", [])
        pairs = [(c.get("system"), c["code"]) for c in codings if "code" in c]
        texts = [value["text"]] if "text" in value else []
        texts += [c["display"] for c in codings if "display" in c]
        return pairs, texts
    if "value" in value:  # Identifier
        return [(value.get("system"), value["value"])], []
    return [], []


def token_match(value: Any, query: str, modifier: str | None) -> bool:
    """Token search: ``code``, ``system|code``, ``|code`` (no system), ``system|``, ``:text``."""
    pairs, texts = token_codes(value)
    if modifier == "text":
        return any(norm(t).startswith(norm(unescape(query))) for t in texts)
    if "|" not in query:
        return any(code == query for _system, code in pairs)
    system, code = query.split("|")
    if not system:
        return any(s is None and c == code for s, c in pairs)
    if not code:
        return any(s == system for s, _c in pairs)
    return (system, code) in pairs


def date_match(value: Any, query: str, modifier: str | None) -> bool:
    """Date search: the R4 prefix table over the value's range and the search value's range."""
    target = value_range(value)
    if target is None:
        return False
    t_start, t_end = target
    prefix, rest = split_prefix(query, DATE_PREFIXES)
    s_start, s_end = instant_range(rest)
    contained = s_start <= t_start and t_end <= s_end
    return {
        "eq": contained,
        "ne": not contained,
        "gt": t_end > s_end,  # the range above the search value overlaps the target
        "lt": t_start < s_start,
        "ge": t_end > s_end or contained,
        "le": t_start < s_start or contained,
        "sa": t_start >= s_end,  # the target lies wholly above the search range
        "eb": t_end <= s_start,
    }[prefix]


def number_match(stored: Any, query: str) -> bool:
    """Number comparison; ``eq``/``ne`` use the precision the search value was written with."""
    prefix, rest = split_prefix(query, NUMBER_PREFIXES)
    v, n = Decimal(str(stored)), Decimal(rest)
    exponent = n.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal("0.5") * Decimal(10) ** exponent
    within = n - half <= v < n + half
    return {
        "eq": within,
        "ne": not within,
        "gt": v > n,
        "sa": v > n,
        "lt": v < n,
        "eb": v < n,
        "ge": v >= n,
        "le": v <= n,
        "ap": abs(v - n) <= abs(n) / 10,
    }[prefix]


def quantity_match(value: Any, query: str, modifier: str | None) -> bool:
    """Quantity search: ``number``, ``number||code`` (code or unit), ``number|system|code``."""
    if not isinstance(value, dict) or "value" not in value:
        return False
    number, *units = query.split("|")
    if not number_match(value["value"], number):
        return False
    if not units:
        return True
    system, code = units
    if system:
        return bool(value.get("system") == system and value.get("code") == code)
    return code in (value.get("code"), value.get("unit"))


def parse_local(ref: str) -> tuple[str, str] | None:
    """(type, id) of a reference into this server (relative, or absolute under ``BASE``); any
    ``/_history/n`` version is ignored. None for other servers."""
    if ref.startswith(BASE + "/"):
        ref = ref[len(BASE) + 1 :]
    elif "://" in ref:
        return None
    parts = ref.split("/")
    if len(parts) == 4 and parts[2] == "_history":
        parts = parts[:2]
    return (parts[0], parts[1]) if len(parts) == 2 else None


def reference_match(value: Any, query: str, modifier: str | None) -> bool:
    """Reference search: ``Type/id``, ``id`` (any type), an absolute URL, or ``:Type`` with an id."""
    ref = value.get("reference") if isinstance(value, dict) else None
    if not isinstance(ref, str):
        return False
    if "://" in query and not query.startswith(BASE + "/"):
        return ref == query  # another server's resource: by its URL
    local = parse_local(ref)
    if local is None:
        return False
    if "/" in query:
        return local == parse_local(query)
    return local[1] == query and (modifier is None or local[0] == modifier)


MATCHERS = {
    "string": string_match,
    "token": token_match,
    "date": date_match,
    "quantity": quantity_match,
    "reference": reference_match,
}


class World:
    """The live resources (in insertion order) that the oracle evaluates queries over."""

    def __init__(self, resources: list[Resource]) -> None:
        self.resources = resources
        self.by_key = {(r["resourceType"], r["id"]): r for r in resources}
        self._values: dict[tuple[str, str, str], list[Any]] = {}

    def of_type(self, rtype: str) -> list[Resource]:
        return [r for r in self.resources if r["resourceType"] == rtype]

    def values(self, res: Resource, code: str) -> list[Any]:
        """The values of search parameter ``code`` in ``res``, extracted by fhirpathpy."""
        key = (res["resourceType"], res["id"], code)
        if key not in self._values:
            param = DEFS.param(res["resourceType"], code)
            assert param is not None, code
            extract = fallback_extractor(param.expression, res["resourceType"])
            self._values[key] = [t.value for t in extract(res)]
        return self._values[key]

    def target(self, value: Any) -> Resource | None:
        """The live resource a Reference value points at on this server, if any."""
        ref = value.get("reference") if isinstance(value, dict) else None
        local = parse_local(ref) if isinstance(ref, str) else None
        return self.by_key.get(local) if local else None


# -- criteria: each renders one query parameter and evaluates it in memory ------------------------
@dataclass(frozen=True)
class Leaf:
    """``code[:modifier]=v1,v2`` on a resource type (values in search syntax, strings unescaped)."""

    rtype: str
    code: str
    kind: str
    values: tuple[str, ...]
    modifier: str | None = None

    def param(self) -> Param:
        key = self.code + (f":{self.modifier}" if self.modifier else "")
        return key, ",".join(escape(v) if self.kind == "string" else v for v in self.values)

    def holds(self, res: Resource, world: World) -> bool:
        if self.code == "_id":  # every resource has an id
            if self.modifier == "missing":
                return self.values == ("false",)
            return (res["id"] in self.values) != (self.modifier == "not")
        found = world.values(res, self.code)
        if self.modifier == "missing":
            return (not found) == (self.values == ("true",))
        modifier = None if self.modifier == "not" else self.modifier
        hit = any(MATCHERS[self.kind](v, q, modifier) for v in found for q in self.values)
        return not hit if self.modifier == "not" else hit


@dataclass(frozen=True)
class Chain:
    """``ref[:Type](.ref[:Type])*.leaf``: following the references (each to a live resource on
    this server, of the modifier's type if given) reaches a resource on which ``leaf`` holds."""

    hops: tuple[tuple[str, str | None], ...]
    leaf: Leaf

    def param(self) -> Param:
        key, value = self.leaf.param()
        path = "".join(f"{ref}{':' + mod if mod else ''}." for ref, mod in self.hops)
        return path + key, value

    def holds(self, res: Resource, world: World, hop: int = 0) -> bool:
        if hop == len(self.hops):
            return res["resourceType"] == self.leaf.rtype and self.leaf.holds(res, world)
        ref, modifier = self.hops[hop]
        for value in world.values(res, ref):
            target = world.target(value)
            if target is None or (modifier and target["resourceType"] != modifier):
                continue
            if self.holds(target, world, hop + 1):
                return True
        return False


@dataclass(frozen=True)
class Has:
    """``_has:Type:ref:leaf``: some live resource matching ``leaf`` refers to the resource by ``ref``."""

    ref: str
    leaf: Leaf

    def param(self) -> Param:
        key, value = self.leaf.param()
        return f"_has:{self.leaf.rtype}:{self.ref}:{key}", value

    def holds(self, res: Resource, world: World) -> bool:
        me = (res["resourceType"], res["id"])
        return any(
            any(
                isinstance(v, dict) and parse_local(str(v.get("reference"))) == me
                for v in world.values(src, self.ref)
            )
            and self.leaf.holds(src, world)
            for src in world.of_type(self.leaf.rtype)
        )


@dataclass(frozen=True)
class Composite:
    """``[component-|combo-]code-value-x``: the code and the value of the same element match.

    Elements are navigated directly (the Observation, its components, or both) rather than via
    the composite's component expressions.
    """

    code: str
    pairs: tuple[tuple[str, str], ...]

    def param(self) -> Param:
        return self.code, ",".join(f"{t}${v}" for t, v in self.pairs)

    def holds(self, res: Resource, world: World) -> bool:
        keys, match = COMPOSITE_VALUES[self.code.rsplit("-", 1)[1]]
        return any(
            "code" in el
            and token_match(el["code"], t, None)
            and any(match(el[k], v, None) for k in keys if k in el)
            for el in composite_elements(self.code, res)
            for t, v in self.pairs
        )


@dataclass(frozen=True)
class CompositeMissing:
    """``[component-|combo-]code-value-x:missing``: no element has both a code and such a value
    (every generated code and value is searchable)."""

    code: str
    missing: bool

    def param(self) -> Param:
        return f"{self.code}:missing", "true" if self.missing else "false"

    def holds(self, res: Resource, world: World) -> bool:
        keys, _match = COMPOSITE_VALUES[self.code.rsplit("-", 1)[1]]
        present = any(
            "code" in el and any(k in el for k in keys) for el in composite_elements(self.code, res)
        )
        return present != self.missing


def composite_elements(code: str, res: Resource) -> list[Resource]:
    """The elements a ``code-value-x`` composite reads: the Observation, its components, or both."""
    components: list[Resource] = res.get("component", [])
    if code.startswith("code-"):
        return [res]
    return [res, *components] if code.startswith("combo-") else components


# the value elements and the comparison of each kind of composite value
COMPOSITE_VALUES = {
    "quantity": (("valueQuantity",), quantity_match),
    "concept": (("valueCodeableConcept",), token_match),
    "string": (("valueString",), string_match),
    "date": (("valueDateTime", "valuePeriod"), date_match),
}


Criterion = Leaf | Chain | Has | Composite | CompositeMissing


@dataclass(frozen=True)
class Sort:
    """``_sort=[-]code``."""

    code: str
    kind: str
    descending: bool

    def param(self) -> Param:
        return "_sort", ("-" if self.descending else "") + self.code

    def key(self, res: Resource, world: World) -> Any:
        """The resource's sort value (lowest ascending, highest descending), or None."""
        if self.code == "_id":
            return res["id"]
        keys: list[Any] = []
        for value in world.values(res, self.code):
            if self.kind == "string":
                keys += [norm(s) for s in string_parts(value)]
            elif self.kind == "token":
                keys += [code for _s, code in token_codes(value)[0]]
            elif self.kind == "date":
                r = value_range(value)
                if r is not None:
                    keys.append(r[1] if self.descending else r[0])
            elif self.kind == "quantity" and isinstance(value, dict) and "value" in value:
                keys.append(Decimal(str(value["value"])))
        if not keys:
            return None
        return max(keys) if self.descending else min(keys)


def expected_ids(world: World, rtype: str, criteria: Sequence[Criterion]) -> list[str]:
    """Ids of the live resources of ``rtype`` on which every criterion holds, in insertion order."""
    return [r["id"] for r in world.of_type(rtype) if all(c.holds(r, world) for c in criteria)]


def expected_order(world: World, rtype: str, criteria: Sequence[Criterion], sort: Sort) -> list[str]:
    """The matches ordered by ``sort``: no value last, ties in insertion order."""
    matches = [r for r in world.of_type(rtype) if all(c.holds(r, world) for c in criteria)]
    keyed = [(sort.key(r, world), r["id"]) for r in matches]
    with_key = [kv for kv in keyed if kv[0] is not None]
    with_key.sort(key=lambda kv: kv[0], reverse=sort.descending)  # stable: ties keep insertion order
    return [rid for _k, rid in with_key] + [rid for k, rid in keyed if k is None]


# ==================================================================================================
# Generated resources
# ==================================================================================================


def _date_grid(precision: str) -> list[str]:
    """Every date/dateTime of one precision on a small grid near day, month and year edges."""
    days = sorted(
        {
            f"{y:04d}-{mo:02d}-{min(d, calendar.monthrange(y, mo)[1]):02d}"
            for y in (2019, 2020, 2021)
            for mo in (1, 2, 6, 12)
            for d in (1, 15, 28, 29, 31)
        }
    )
    if precision in ("year", "month", "day"):
        return sorted({d[: {"year": 4, "month": 7, "day": 10}[precision]] for d in days})
    seconds = [""] if precision == "minute" else [":00", ":59"]
    fractions = [".5", ".999999"] if precision == "fraction" else [""]
    return [
        f"{d}T{h}:{m}{sec}{frac}{tz}"
        for d in days
        for h in ("00", "12", "23")
        for m in ("00", "59")
        for sec in seconds
        for frac in fractions
        for tz in TIMEZONES
    ]


DATE_GRID = {p: _date_grid(p) for p in ("year", "month", "day", "minute", "second", "fraction")}


@st.composite
def fhir_date(draw: st.DrawFn, precisions: Sequence[str]) -> str:
    """A date/dateTime at a drawn precision; times always carry a zone (two draws, for speed)."""
    return draw(st.sampled_from(DATE_GRID[draw(st.sampled_from(precisions))]))


RESOURCE_DATE = ["year", "month", "day", "second", "fraction"]  # FHIR dateTime: seconds when timed
SEARCH_DATE = ["year", "month", "day", "minute", "second", "fraction"]

# Strategies are built once: building them inside composites costs more than drawing from them.
_RESOURCE_DATE = fhir_date(RESOURCE_DATE)
_MAYBE_RESOURCE_DATE = st.none() | _RESOURCE_DATE
_BIRTH_DATE = fhir_date(["year", "month", "day"])
_BOOL = st.booleans()
_QUARTER = st.integers(0, 3)
_FAMILY = st.none() | st.sampled_from(FAMILIES)
_GIVENS = st.lists(st.sampled_from(GIVENS), max_size=2)
_PREFIX = st.none() | st.sampled_from(PREFIXES_NAME)
_GENDER = st.none() | st.sampled_from(GENDERS)
_ACTIVE = st.none() | st.booleans()
_CITY = st.none() | st.sampled_from(CITIES)
_IDENTIFIER = st.builds(
    lambda system, value: {"system": system, "value": value} if system else {"value": value},
    st.none() | st.sampled_from(IDENT_SYSTEMS),
    st.sampled_from(IDENT_VALUES),
)
_IDENTIFIERS = st.lists(_IDENTIFIER, max_size=2)
_STATUS = st.sampled_from(STATUSES)
_CONCEPT_TEXT = st.sampled_from(CONCEPT_TEXTS)
_QUANTITY_VALUE = st.sampled_from(QUANTITY_VALUES)
_QUANTITY_UNIT = st.sampled_from(QUANTITY_UNITS)
_QUANTITY_SYSTEM = st.sampled_from([None, UCUM, UCUM, UCUM, OTHER_UNITS])
_PATIENT_NUMBER = st.integers(0, MAX_PATIENTS)
_SUBJECT = st.one_of(
    st.none(),
    st.builds("Patient/p{}".format, _PATIENT_NUMBER),
    st.builds("Patient/p{}".format, _PATIENT_NUMBER),
    st.builds(f"{BASE}/Patient/p{{}}".format, _PATIENT_NUMBER),
    st.builds("Patient/p{}/_history/1".format, _PATIENT_NUMBER),
    st.sampled_from(["Group/g1", f"{OTHER_SERVER}/Patient/p0", IDENTIFIED]),
)
_NAME_USE = st.none() | st.sampled_from(["official", "usual", "maiden"])
_LINK = st.none() | st.builds("Patient/p{}".format, _PATIENT_NUMBER)
_EFFECTIVE = st.sampled_from(["none", "dateTime", "Period"])


@st.composite
def human_names(draw: st.DrawFn) -> Resource:
    """A HumanName with a family and/or given names, sometimes a prefix and a text."""
    family, given, prefix = draw(_FAMILY), draw(_GIVENS), draw(_PREFIX)
    if not family and not given:
        family = FAMILIES[0]
    name: Resource = {"family": family} if family else {}
    if use := draw(_NAME_USE):
        name["use"] = use  # not a searchable part of the name
    if given:
        name["given"] = given
    if prefix:
        name["prefix"] = [prefix]
    if draw(_QUARTER) == 0:
        name["text"] = " ".join([*given, *([family] if family else [])])
    return name


_NAMES = st.lists(human_names(), max_size=2)


@st.composite
def patients(draw: st.DrawFn) -> Resource:
    """A Patient (id set by the scenario): names, gender, birthDate, active, identifiers, city, link."""
    res: Resource = {"resourceType": "Patient"}
    fields = {
        "name": draw(_NAMES) or None,
        "gender": draw(_GENDER),
        "birthDate": draw(_BIRTH_DATE) if draw(_BOOL) else None,
        "active": draw(_ACTIVE),
        "identifier": draw(_IDENTIFIERS) or None,
        "address": [{"use": "home", "city": city}] if (city := draw(_CITY)) else None,
        "link": [{"other": {"reference": link}, "type": "seealso"}] if (link := draw(_LINK)) else None,
    }
    res.update((k, v) for k, v in fields.items() if v is not None)
    return res


@st.composite
def concepts(
    draw: st.DrawFn, pool: st.SearchStrategy[list[tuple[str | None, str, str]]], texts: st.SearchStrategy[str]
) -> Resource:
    """A CodeableConcept: 0-2 codings from ``pool`` (display optional) and/or a text."""
    codings = []
    for system, code, display in draw(pool):
        coding: Resource = {"system": system, "code": code} if system else {"code": code}
        if draw(_BOOL):
            coding["display"] = display
        codings.append(coding)
    concept: Resource = {"coding": codings} if codings else {}
    if not codings or draw(_QUARTER) == 0:
        concept["text"] = draw(texts)
    return concept


_CODE = concepts(st.lists(st.sampled_from(CODINGS), max_size=2), _CONCEPT_TEXT)
_COMPONENT_CODE = concepts(st.lists(st.sampled_from(COMPONENT_CODINGS), max_size=2), _CONCEPT_TEXT)
_VALUE_STRING = st.sampled_from(VALUE_STRINGS)
_VALUE_CONCEPT = concepts(st.lists(st.sampled_from(VALUE_CODINGS), max_size=2), _VALUE_STRING)
_VALUE_KIND = st.sampled_from(
    ["none", "Quantity", "Quantity", "CodeableConcept", "string", "dateTime", "Period"]
)


@st.composite
def quantities(draw: st.DrawFn) -> Resource:
    """A Quantity with a value and optional system, code and unit."""
    q: Resource = {"value": draw(_QUANTITY_VALUE)}
    code, unit = draw(_QUANTITY_UNIT)
    if draw(_QUARTER):
        q["unit"] = unit
    if system := draw(_QUANTITY_SYSTEM):
        q["system"] = system
    if draw(_QUARTER):
        q["code"] = code
    return q


_QUANTITY = quantities()
_COMPONENTS = st.lists(
    st.fixed_dictionaries({"code": _COMPONENT_CODE, "valueQuantity": _QUANTITY}), max_size=2
)


@st.composite
def periods(draw: st.DrawFn) -> Resource:
    """A Period with a start and/or an end (start not after end)."""
    start = draw(_MAYBE_RESOURCE_DATE)
    end = draw(_RESOURCE_DATE) if start is None else draw(_MAYBE_RESOURCE_DATE)
    if start and end and instant_range(start)[0] > instant_range(end)[0]:
        start, end = end, start
    return {k: v for k, v in (("start", start), ("end", end)) if v}


_PERIOD = periods()


@st.composite
def observations(draw: st.DrawFn) -> Resource:
    """An Observation (id set by the scenario): code, status, subject, effective[x], values."""
    res: Resource = {"resourceType": "Observation", "status": draw(_STATUS), "code": draw(_CODE)}
    if subject := draw(_SUBJECT):
        typed = {"identifier": {"system": MRN, "value": "123"}, "type": "Patient"}
        res["subject"] = typed if subject == IDENTIFIED else {"reference": subject}
    effective = draw(_EFFECTIVE)
    if effective == "dateTime":
        res["effectiveDateTime"] = draw(_RESOURCE_DATE)
    elif effective == "Period":
        res["effectivePeriod"] = draw(_PERIOD)
    value = draw(_VALUE_KIND)
    if value == "Quantity":
        res["valueQuantity"] = draw(_QUANTITY)
    elif value == "CodeableConcept":
        res["valueCodeableConcept"] = draw(_VALUE_CONCEPT)
    elif value == "string":
        res["valueString"] = draw(_VALUE_STRING)
    elif value == "dateTime":
        res["valueDateTime"] = draw(_RESOURCE_DATE)
    elif value == "Period":
        res["valuePeriod"] = draw(_PERIOD)
    if components := draw(_COMPONENTS):
        res["component"] = components
    return res


_PATIENT = patients()
_OBSERVATION = observations()


def _with_id(res: Resource, rid: str, n_patients: int) -> Resource:
    """``res`` under id ``rid``, its references to patients pointing at one of p0..p<n_patients>
    (the last one dangling)."""

    def renumber(reference: dict[str, Any]) -> dict[str, Any]:
        ref = reference.get("reference")
        if ref is None or ref.startswith(OTHER_SERVER):
            return reference
        return {"reference": re.sub(r"(?<=Patient/p)\d+", lambda m: str(int(m[0]) % (n_patients + 1)), ref)}

    res = {**res, "id": rid}
    if "subject" in res:
        res["subject"] = renumber(res["subject"])
    if "link" in res:
        res["link"] = [{**link, "other": renumber(link["other"])} for link in res["link"]]
    return res


@dataclass
class Scenario:
    """Resources written in order (their keys give the tie order), then later versions/deletes."""

    initial: list[Resource]
    changes: list[tuple[int, Resource | None]] = field(default_factory=list)

    def live(self) -> list[Resource]:
        """The current version of every live resource, in first-insertion order."""
        state: list[Resource | None] = list(self.initial)
        for i, new in self.changes:
            state[i] = new
        return [r for r in state if r is not None]


_N_PATIENTS = st.integers(1, MAX_PATIENTS)
_N_OBSERVATIONS = st.integers(4, 16)
_N_CHANGES = st.integers(0, 3)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """5-22 Patients and Observations in a random insertion order, some then updated or deleted."""
    n_patients, n_observations = draw(_N_PATIENTS), draw(_N_OBSERVATIONS)
    resources = [_with_id(draw(_PATIENT), f"p{i}", n_patients) for i in range(n_patients)]
    resources += [_with_id(draw(_OBSERVATION), f"o{i}", n_patients) for i in range(n_observations)]
    initial = draw(st.permutations(resources))
    changes: list[tuple[int, Resource | None]] = []
    for _ in range(draw(_N_CHANGES)):
        i = draw(st.integers(0, len(initial) - 1))
        old = initial[i]
        if draw(_BOOL):
            changes.append((i, None))
        else:
            new = draw(_PATIENT if old["resourceType"] == "Patient" else _OBSERVATION)
            changes.append((i, _with_id(new, old["id"], n_patients)))
    return Scenario(list(initial), changes)


# ==================================================================================================
# Generated queries (values mostly taken from the generated data, so that queries hit)
# ==================================================================================================


@dataclass
class Pools:
    """Search values present in the scenario under test (any version, deleted ones included).

    Query strategies are built once, at import (building strategies per example costs more than
    running the example); they pick from the pools of the current scenario by index, see ``pick``.
    """

    patient_ids: list[str] = field(default_factory=list)
    name: list[str] = field(default_factory=list)
    family: list[str] = field(default_factory=list)
    given: list[str] = field(default_factory=list)
    city: list[str] = field(default_factory=list)
    idents: list[tuple[str | None, str]] = field(default_factory=list)
    codes: list[tuple[str | None, str]] = field(default_factory=list)  # Observation and components
    texts: list[str] = field(default_factory=list)
    birth_dates: list[str] = field(default_factory=list)
    effective_dates: list[str] = field(default_factory=list)  # dateTimes and Period ends
    value_dates: list[str] = field(default_factory=list)
    numbers: list[str] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    quantity_codes: list[tuple[str | None, str]] = field(default_factory=list)
    value_codes: list[tuple[str | None, str]] = field(default_factory=list)
    value_strings: list[str] = field(default_factory=list)
    # (code, value) of the same element, per kind of value
    pairs_quantity: list[tuple[str, str]] = field(default_factory=list)
    pairs_concept: list[tuple[str, str]] = field(default_factory=list)
    pairs_string: list[tuple[str, str]] = field(default_factory=list)
    pairs_date: list[tuple[str, str]] = field(default_factory=list)


CURRENT = Pools()


def use_pools(scenario: Scenario) -> None:
    """Collect the values of every written version of ``scenario`` into ``CURRENT``."""
    p = Pools()
    n_patients = sum(r["resourceType"] == "Patient" for r in scenario.initial)
    p.patient_ids = [f"p{i}" for i in range(n_patients + 1)]  # the last one does not exist
    for res in scenario.initial + [r for _i, r in scenario.changes if r is not None]:
        for name in res.get("name", []):
            parts = (name.get("family"), *name.get("given", []), *name.get("prefix", []), name.get("text"))
            p.name += [x for x in parts if x]
            p.family += [name["family"]] if "family" in name else []
            p.given += name.get("given", [])
        p.city += [a["city"] for a in res.get("address", [])]
        p.idents += [(i.get("system"), i["value"]) for i in res.get("identifier", [])]
        p.birth_dates += [res["birthDate"]] if "birthDate" in res else []
        for pool, prefix in ((p.effective_dates, "effective"), (p.value_dates, "value")):
            period = res.get(f"{prefix}Period", {})
            dates = (res.get(f"{prefix}DateTime"), period.get("start"), period.get("end"))
            pool += [d for d in dates if d]
        for element in [res, *res.get("component", [])] if res["resourceType"] == "Observation" else []:
            codings = element["code"].get("coding", [])
            p.codes += [(c.get("system"), c["code"]) for c in codings]
            p.texts += [c["display"] for c in codings if "display" in c]
            p.texts += [element["code"]["text"]] if "text" in element["code"] else []
            tokens = [f"{c['system']}|{c['code']}" if "system" in c else c["code"] for c in codings]
            value_codings = element.get("valueCodeableConcept", {}).get("coding", [])
            p.value_codes += [(c.get("system"), c["code"]) for c in value_codings]
            p.value_strings += [element[k] for k in ("valueString",) if k in element]
            p.value_strings += [
                element[k]["text"] for k in ("valueCodeableConcept",) if "text" in element.get(k, {})
            ]
            p.pairs_concept += [(t, c["code"]) for t in tokens for c in value_codings]
            p.pairs_string += [(t, element["valueString"]) for t in tokens if "valueString" in element]
            if "valueDateTime" in element:
                p.pairs_date += [(t, element["valueDateTime"]) for t in tokens]
            if q := element.get("valueQuantity"):
                p.numbers.append(str(q["value"]))
                p.units += [q[k] for k in ("code", "unit") if k in q]
                p.quantity_codes += [(q.get("system"), q["code"])] if "code" in q else []
                p.pairs_quantity += [(t, str(q["value"])) for t in tokens]
    for name, values in vars(p).items():
        setattr(CURRENT, name, list(dict.fromkeys(values)))


_INDEX = st.integers(0, 255)
_THIRDS = st.integers(0, 2)


def pick(pool: str, fallback: Sequence[Any]) -> st.SearchStrategy[Any]:
    """A value of ``CURRENT.<pool>`` (two times in three, when there is one) or of ``fallback``."""

    def choose(i: int, third: int, other: Any) -> Any:
        values = getattr(CURRENT, pool)
        return values[i % len(values)] if values and third else other

    return st.builds(choose, _INDEX, _THIRDS, st.sampled_from(list(fallback)))


def strip_accents(text: str) -> str:
    """``text`` without combining marks (é -> e; ø and ß stay)."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


_VARIANT = st.integers(0, 4)
_CUT = st.integers(1, 40)
_QUARTERS = st.integers(0, 3)
_NUMBER_PREFIX = st.sampled_from(NUMBER_PREFIXES)
_DATE_PREFIX = st.sampled_from(DATE_PREFIXES)
_SEARCH_DATE = fhir_date(SEARCH_DATE)
_DATE_CUT = st.sampled_from([0, 4, 7, 10])
_MISSING = st.sampled_from(["true", "false"])


@st.composite
def string_queries(draw: st.DrawFn, values: st.SearchStrategy[str], modifier: str | None) -> str:
    """A string search value: a value re-cased or unaccented, cut to a prefix (or a substring)."""
    base = draw(values)
    if modifier == "exact":
        return [base, base, base.lower(), strip_accents(base), base[:-1] or base][draw(_VARIANT)]
    text = [base, base, base.lower(), base.upper(), strip_accents(base)][draw(_VARIANT)]
    start = draw(_CUT) % len(text) if modifier == "contains" else 0
    cut = text[start : start + draw(_CUT)]
    # no leading/trailing whitespace: the server collapses whitespace (a deliberate choice)
    return cut if cut.strip() == cut else base


@st.composite
def token_queries(draw: st.DrawFn, pairs: st.SearchStrategy[tuple[str | None, str]]) -> str:
    """``code``, ``|code``, ``system|code`` or ``system|`` for a drawn (system, code)."""
    system, code = draw(pairs)
    forms = [code, f"|{code}", *([f"{system}|{code}", f"{system}|"] if system else [])]
    return forms[draw(_VARIANT) % len(forms)]


_ZONE = st.sampled_from(TIMEZONES)
_DATE_VARIANT = st.sampled_from(["same", "year", "month", "day", "minute", "zone"])


@st.composite
def date_queries(draw: st.DrawFn, present: st.SearchStrategy[str]) -> str:
    """``[prefix]date``: often a present date as is, cut to a coarser precision or with the same
    local time in another zone; otherwise a new one."""
    prefix = draw(_DATE_PREFIX)
    if not draw(_QUARTERS):
        return prefix + draw(_SEARCH_DATE)
    base, variant = draw(present), draw(_DATE_VARIANT)
    local = re.sub(r"(Z|[+-]\d\d:\d\d)$", "", base)
    if variant == "zone":
        return prefix + (local + draw(_ZONE) if "T" in base else base)
    cut = {"year": 4, "month": 7, "day": 10, "minute": 16}.get(variant, len(local))
    if cut >= len(local):
        return prefix + base
    return prefix + local[:cut] + (draw(_ZONE) if cut == 16 else "")


_NUMBER = pick("numbers", SEARCH_NUMBERS)
_UNIT = pick("units", SEARCH_UNITS)
_UNIT_CODE = pick("quantity_codes", [(UCUM, u) for u in SEARCH_UNITS])


@st.composite
def quantity_queries(draw: st.DrawFn) -> str:
    """``[prefix]number`` with no unit, ``||unit`` (code or unit) or ``|system|code``."""
    number = draw(_NUMBER)
    variant = draw(_QUARTERS)
    if variant == 1 and "." in number:
        number += "0"  # a finer precision: 5.4 -> 5.40
    elif variant == 2 and "." in number:
        number = number[:-1].rstrip(".")  # a coarser one: 5.45 -> 5.4, 72.5 -> 72
    number = draw(_NUMBER_PREFIX) + number
    system, code = draw(_UNIT_CODE)
    forms = [number, number, f"{number}||{draw(_UNIT)}", f"{number}|{system or OTHER_UNITS}|{code}"]
    return forms[draw(_QUARTERS)]


def values_of(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[str, ...]]:
    """1-2 values (OR)."""
    return st.lists(strategy, min_size=1, max_size=2).map(tuple)


KINDS = {
    "Patient": {
        "name": "string",
        "phonetic": "string",
        "family": "string",
        "given": "string",
        "address-city": "string",
        "gender": "token",
        "active": "token",
        "identifier": "token",
        "birthdate": "date",
        "link": "reference",
        "_id": "token",
    },
    "Observation": {
        "code": "token",
        "combo-code": "token",
        "component-code": "token",
        "status": "token",
        "date": "date",
        "value-quantity": "quantity",
        "component-value-quantity": "quantity",
        "combo-value-quantity": "quantity",
        "value-concept": "token",
        "combo-value-concept": "token",
        "value-string": "string",
        "value-date": "date",
        "subject": "reference",
        "patient": "reference",
        "_id": "token",
    },
}
SORTS = {
    "Patient": [
        "family",
        "given",
        "name",
        "phonetic",
        "address-city",
        "birthdate",
        "gender",
        "active",
        "identifier",
        "_id",
    ],
    "Observation": [
        "date",
        "value-quantity",
        "component-value-quantity",
        "combo-value-quantity",
        "value-date",
        "value-string",
        "code",
        "combo-code",
        "status",
        "_id",
    ],
}


def leaves(
    rtype: str,
    codes: Sequence[str],
    values: st.SearchStrategy[tuple[str, ...]],
    modifiers: Sequence[str | None],
) -> st.SearchStrategy[Leaf]:
    """Criteria on one of ``codes`` (all of one kind) with one of ``modifiers``."""
    kind = KINDS[rtype][codes[0]]
    return st.builds(
        lambda code, v, modifier: Leaf(rtype, code, kind, v, modifier),
        st.sampled_from(list(codes)),
        values,
        st.sampled_from(list(modifiers)),
    )


def missing(rtype: str) -> st.SearchStrategy[Leaf]:
    """``code:missing=true|false`` on any parameter of ``rtype`` but ``_id``."""
    codes = sorted(set(KINDS[rtype]) - {"_id"})
    return st.builds(
        lambda c, v: Leaf(rtype, c, KINDS[rtype][c], (v,), "missing"), st.sampled_from(codes), _MISSING
    )


_PATIENT_ID = pick("patient_ids", ["p0"])
_STRING_LEAVES = [
    leaves("Patient", [code], values_of(string_queries(pick(pool, fallback), modifier)), [modifier])
    for code, pool, fallback in (
        ("name", "name", FAMILIES + GIVENS + PREFIXES_NAME),
        ("phonetic", "name", FAMILIES + GIVENS + PREFIXES_NAME),
        ("family", "family", FAMILIES),
        ("given", "given", GIVENS),
        ("address-city", "city", CITIES),
    )
    for modifier in (None, "exact", "contains")
]
PATIENT_LEAF: st.SearchStrategy[Leaf] = st.one_of(
    *_STRING_LEAVES,
    leaves("Patient", ["gender"], values_of(st.sampled_from(GENDERS)), [None, None, "not"]),
    leaves("Patient", ["active"], values_of(st.sampled_from(["true", "false"])), [None, "not"]),
    leaves(
        "Patient",
        ["identifier"],
        values_of(token_queries(pick("idents", [(s, v) for s in IDENT_SYSTEMS for v in IDENT_VALUES]))),
        [None, None, "not"],
    ),
    leaves("Patient", ["birthdate"], values_of(date_queries(pick("birth_dates", DATE_GRID["day"]))), [None]),
    leaves("Patient", ["link"], values_of(_PATIENT_ID.map("Patient/{}".format)), [None]),
    leaves("Patient", ["_id"], values_of(_PATIENT_ID), [None, "not"]),
    leaves("Patient", ["_id"], _MISSING.map(lambda v: (v,)), ["missing"]),
    missing("Patient"),
)

_CODE_QUERY = token_queries(pick("codes", [(s, c) for s in TOKEN_SYSTEMS for c in TOKEN_CODES]))
_CONCEPT_CODES = ["code", "combo-code", "component-code"]
_VALUE_CODE_QUERY = token_queries(pick("value_codes", [(s, c) for s, c, _d in VALUE_CODINGS]))
_PRESENT_VALUE_STRING = pick("value_strings", VALUE_STRINGS)
_REFERENCE = st.one_of(
    _PATIENT_ID.map("Patient/{}".format),
    _PATIENT_ID,
    _PATIENT_ID.map(f"{BASE}/Patient/{{}}".format),
    st.sampled_from(["Group/g1", "g1", f"{OTHER_SERVER}/Patient/p0"]),
)
_DATE_LEAF = leaves(
    "Observation", ["date"], values_of(date_queries(pick("effective_dates", DATE_GRID["day"]))), [None]
)
_VALUE_DATE = date_queries(pick("value_dates", DATE_GRID["day"]))
_QUANTITY_LEAF = leaves(
    "Observation",
    ["value-quantity", "component-value-quantity", "combo-value-quantity"],
    values_of(quantity_queries()),
    [None],
)
OBSERVATION_LEAF: st.SearchStrategy[Leaf] = st.one_of(
    leaves("Observation", _CONCEPT_CODES, values_of(_CODE_QUERY), [None, None, "not"]),
    leaves("Observation", _CONCEPT_CODES, values_of(string_queries(pick("texts", TEXTS), None)), ["text"]),
    leaves("Observation", ["status"], values_of(st.sampled_from(STATUSES)), [None, "not"]),
    leaves("Observation", ["subject", "patient"], values_of(_REFERENCE), [None]),
    leaves("Observation", ["subject", "patient"], values_of(_PATIENT_ID), ["Patient"]),
    _DATE_LEAF,
    _DATE_LEAF,
    _QUANTITY_LEAF,
    _QUANTITY_LEAF,
    leaves(
        "Observation", ["value-concept", "combo-value-concept"], values_of(_VALUE_CODE_QUERY), [None, "not"]
    ),
    leaves(
        "Observation", ["value-concept"], values_of(string_queries(_PRESENT_VALUE_STRING, None)), ["text"]
    ),
    *(
        leaves("Observation", ["value-string"], values_of(string_queries(_PRESENT_VALUE_STRING, m)), [m])
        for m in (None, "exact", "contains")
    ),
    leaves("Observation", ["value-date"], values_of(_VALUE_DATE), [None]),
    leaves("Observation", ["_id"], values_of(st.builds("o{}".format, st.integers(0, 16))), [None, "not"]),
    leaves("Observation", ["_id"], _MISSING.map(lambda v: (v,)), ["missing"]),
    missing("Observation"),
)
# Observation: subject[:Patient].x, patient.x, and the same through a Patient.link, for a Patient
# criterion x; Patient: link[:Patient].x, link.link.x
_LINK_HOP = st.tuples(st.just("link"), st.sampled_from([None, "Patient"]))
_LINK_HOPS = st.lists(_LINK_HOP, max_size=1)
CHAIN = st.builds(
    lambda first, more, leaf: Chain((first, *more), leaf),
    st.sampled_from([("subject", None), ("subject", "Patient"), ("patient", None)]),
    _LINK_HOPS,
    PATIENT_LEAF,
)
PATIENT_CHAIN = st.builds(
    lambda first, more, leaf: Chain((first, *more), leaf), _LINK_HOP, _LINK_HOPS, PATIENT_LEAF
)
# _has:Observation:subject|patient:x for an Observation criterion x; _has:Patient:link:y
HAS = st.one_of(
    st.builds(Has, st.sampled_from(["subject", "patient"]), OBSERVATION_LEAF),
    st.builds(Has, st.just("link"), PATIENT_LEAF),
)
_COMPARISON = st.sampled_from(["", "ne", "gt", "lt", "ge", "le"])


def composites(
    kind: str, codes: list[str], values: st.SearchStrategy[str], fallback: str, prefixed: bool
) -> st.SearchStrategy[Composite]:
    """``code$value`` composites of one value kind: often the code and the value of one element
    (with a comparison prefix for ordered kinds), otherwise any code and value."""
    present = st.builds(
        lambda pair, prefix: (pair[0], (prefix if prefixed else "") + pair[1]),
        pick(f"pairs_{kind}", [("8867-4", fallback)]),
        _COMPARISON,
    )
    pair = st.one_of(present, present, st.tuples(_CODE_QUERY, values))
    return st.builds(Composite, st.sampled_from(codes), st.lists(pair, min_size=1, max_size=2).map(tuple))


_WITH_PARTS = ["code-value-{}", "component-code-value-{}", "combo-code-value-{}"]
COMPOSITE = st.one_of(
    composites("quantity", [c.format("quantity") for c in _WITH_PARTS], quantity_queries(), "72", True),
    composites("quantity", [c.format("quantity") for c in _WITH_PARTS], quantity_queries(), "72", True),
    composites("concept", [c.format("concept") for c in _WITH_PARTS], _VALUE_CODE_QUERY, "POS", False),
    composites("string", ["code-value-string"], string_queries(_PRESENT_VALUE_STRING, None), "Pos", False),
    composites("date", ["code-value-date"], _VALUE_DATE, "2020", True),
    st.builds(
        CompositeMissing,
        st.sampled_from(
            [c.format(k) for c in _WITH_PARTS for k in ("quantity", "concept")]
            + ["code-value-string", "code-value-date"]
        ),
        _BOOL,
    ),
)


@dataclass(frozen=True)
class Query:
    """A search on one resource type: criteria ANDed, optionally sorted and paged."""

    rtype: str
    criteria: tuple[Criterion, ...]
    sort: Sort | None = None
    count: int | None = None

    def params(self) -> list[Param]:
        params = [c.param() for c in self.criteria]
        if self.sort:
            params.append(self.sort.param())
        if self.count is not None:
            params.append(("_count", str(self.count)))
        return params


def queries(
    patient: st.SearchStrategy[Criterion], observation: st.SearchStrategy[Criterion], size: int
) -> st.SearchStrategy[list[Query]]:
    """About ``size`` queries (cheap next to loading the data), each of 1-2 criteria (ANDed)."""
    query = st.one_of(
        st.builds(Query, st.just("Patient"), st.lists(patient, min_size=1, max_size=2).map(tuple)),
        st.builds(Query, st.just("Observation"), st.lists(observation, min_size=1, max_size=2).map(tuple)),
    )
    return st.lists(query, min_size=size, max_size=size + size // 2)


def _sorted_query(rtype: str) -> st.SearchStrategy[Query]:
    sort = st.builds(lambda c, d: Sort(c, KINDS[rtype][c], d), st.sampled_from(SORTS[rtype]), _BOOL)
    leaf = PATIENT_LEAF if rtype == "Patient" else OBSERVATION_LEAF
    return st.builds(Query, st.just(rtype), st.lists(leaf, max_size=1).map(tuple), sort, st.integers(1, 8))


# sorted by one key, paged by 1-8, with at most one criterion
SORTED_QUERIES = st.lists(
    st.one_of(_sorted_query("Patient"), _sorted_query("Observation")), min_size=3, max_size=5
)


# ==================================================================================================
# Running against the server
# ==================================================================================================


@pytest.fixture
def svc(db_url: str) -> Iterator[FhirService]:
    """A service (no validation) on the session database of each kind."""
    engine = make_engine(db_url)
    yield FhirService(engine, validator=None)
    engine.dispose()


def load(svc: FhirService, scenario: Scenario) -> World:
    """Empty the database, write the scenario and return the oracle's view of the result.

    Tables are emptied with DELETE rather than ``support.truncate``: on PostgreSQL a TRUNCATE of
    every table costs about 0.25 s, far more than the rest of an example. The first versions are
    written in one batch (as the importer does), the later ones through the service.
    """
    with svc.write_engine.begin() as conn:
        # the FHIR store's tables only: other modules' tables share the MetaData, and the audit
        # log refuses DELETE on PostgreSQL (append-only)
        for table in (*INDEX_TABLES.values(), resource_compartment, resource_version, resource):
            conn.execute(table.delete())
        writes = [Write("PUT", r["resourceType"], r["id"], copy.deepcopy(r), None) for r in scenario.initial]
        svc.store.apply(conn, writes)
        for i, new in scenario.changes:
            old = scenario.initial[i]
            if new is None:
                svc.delete_in(conn, old["resourceType"], old["id"])
            else:
                svc.update_in(conn, old["resourceType"], old["id"], copy.deepcopy(new))
    return World(scenario.live())


def server_ids(svc: FhirService, query: Query) -> list[str]:
    """Ids of one unsorted search, checked to be complete (one page) and the total accurate."""
    parsed = svc.parse_search(query.rtype, [*query.params(), ("_count", "1000")], strict=True)
    result = svc.search(parsed, base_url=BASE)
    ids = [s.id for s in result.matches]
    assert result.next_cursor is None
    assert result.total == len(ids), f"{query.params()}: total {result.total} for {ids}"
    return ids


def all_pages(svc: FhirService, query: Query, world_size: int) -> list[str]:
    """Every match in order, following ``next`` cursors; then checks ``previous`` walks back."""
    parsed = svc.parse_search(query.rtype, query.params(), strict=True)
    first = svc.search(parsed, base_url=BASE)
    total, pages, result = first.total, [first.matches], first
    while result.next_cursor:
        assert len(pages) <= world_size + 1, "paging does not terminate"
        parsed.page = result.next_cursor
        result = svc.search(parsed, base_url=BASE)
        assert result.matches, "a next link led to an empty page"
        pages.append(result.matches)
    forward = [s.id for page in pages for s in page]
    assert total == len(forward), f"{query.params()}: total {total} for {forward}"
    backward = [s.id for s in result.matches]
    while result.previous_cursor:
        assert len(backward) <= world_size, "previous links do not terminate"
        parsed.page = result.previous_cursor
        result = svc.search(parsed, base_url=BASE)
        backward = [s.id for s in result.matches] + backward
    assert backward == forward, f"{query.params()}: previous links give {backward}, next links {forward}"
    return forward


def check_filters(svc: FhirService, world: World, drawn: list[Query]) -> None:
    """Each query's matches (as a set: unsorted order is unspecified) equal the oracle's."""
    for query in drawn:
        expected = expected_ids(world, query.rtype, query.criteria)
        got = server_ids(svc, query)
        assert sorted(got) == sorted(expected), f"{query.params()}: server {got}, expected {expected}"


# ==================================================================================================
# The properties
# ==================================================================================================


@PROPERTY_SETTINGS
@given(scenario=scenarios(), data=st.data())
def test_parameters_match_in_memory_evaluation(
    svc: FhirService, scenario: Scenario, data: st.DataObject
) -> None:
    """string/token/date/quantity/reference/_id/:missing criteria, alone, ANDed and ORed."""
    use_pools(scenario)
    drawn = data.draw(queries(PATIENT_LEAF, OBSERVATION_LEAF, 16), label="queries")
    check_filters(svc, load(svc, scenario), drawn)


@PROPERTY_SETTINGS
@given(scenario=scenarios(), data=st.data())
def test_chains_has_and_composites_match_in_memory_evaluation(
    svc: FhirService, scenario: Scenario, data: st.DataObject
) -> None:
    """Chained parameters, ``_has`` and composite ``code-value-quantity`` (mixed with plain ones)."""
    use_pools(scenario)
    patient = st.one_of(HAS, HAS, PATIENT_CHAIN, PATIENT_LEAF)
    observation = st.one_of(CHAIN, COMPOSITE, COMPOSITE, OBSERVATION_LEAF)
    drawn = data.draw(queries(patient, observation, 16), label="queries")
    check_filters(svc, load(svc, scenario), drawn)


@PROPERTY_SETTINGS
@given(scenario=scenarios(), data=st.data())
def test_sorted_pages_match_in_memory_sort(svc: FhirService, scenario: Scenario, data: st.DataObject) -> None:
    """``_sort`` by one key with ``_count`` paging: all pages in order equal the in-memory sort."""
    use_pools(scenario)
    drawn = data.draw(SORTED_QUERIES, label="queries")
    world = load(svc, scenario)
    for query in drawn:
        assert query.sort is not None
        expected = expected_order(world, query.rtype, query.criteria, query.sort)
        got = all_pages(svc, query, len(world.resources))
        assert got == expected, f"{query.params()}: server {got}, expected {expected}"


# ==================================================================================================
# Regressions found by the properties
# ==================================================================================================


def test_missing_on_special_parameters_takes_one_boolean(svc: FhirService) -> None:
    """``_id:missing=false,true`` was accepted and read as its first value; like every other
    ``:missing`` it is now refused (the parser skipped the check for ``_id``/``_lastUpdated``)."""
    for key in ("_id:missing", "_lastUpdated:missing"):
        with pytest.raises(BadRequest, match=":missing takes true or false"):
            svc.parse_search("Observation", [(key, "false,true")], strict=True)
    load(
        svc, Scenario([{"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}}])
    )
    for value, expected in (("true", []), ("false", ["o1"])):
        query = Query("Observation", (Leaf("Observation", "_id", "token", (value,), "missing"),))
        assert server_ids(svc, query) == expected
