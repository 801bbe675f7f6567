"""Compile parsed search criteria into SQL over the resource table and the typed index tables.

Each criterion becomes one EXISTS sub-query correlated on the resource row, so a whole search
is one SQL statement whatever its criteria, chains and ``_has`` paths.

A parameter's rows are read where ``Definitions.layout`` says they are stored: ``combo-code``
reads the rows of ``code`` and ``component-code``, ``patient`` the ``subject`` rows pointing at a
Patient plus its own few, ``code-value-quantity`` the rows of ``code`` and ``value-quantity`` on
the same resource. A database written before the layout also holds rows under the derived
parameters' own codes: they are not read (a filtered alias's are, but they are a subset of what
it reads), so results do not change; only a reference whose literal type is not what it resolves
to (``urn:x/Patient/1``) counts for ``patient`` there until the resource is written again.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol, TypeGuard

from sqlalchemy import (
    ColumnElement,
    String,
    Table,
    and_,
    exists,
    false,
    func,
    literal_column,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.sql import FromClause

from sharedcare.fhir.definitions import Definitions, GroupSource, Source
from sharedcare.fhir.errors import BadRequest
from sharedcare.fhir.search import date, number, quantity, reference, string, token, uri
from sharedcare.fhir.search.parse import Filter, HasFilter, SortKey
from sharedcare.fhir.search.values import date_range, split_prefix, split_unescaped, unescape
from sharedcare.storage.tables import INDEX_TABLES, resource


class AccessFilter(Protocol):
    """The caller's read filter: the condition a ``resource`` row of ``r`` must meet.

    ``types``, when given, are the only resource types the rows of ``r`` can have (the statement
    selects on them): a filter may then leave out its rules about other types. PostgreSQL plans
    every clause of a statement, also those no row can meet, and searches are planned at every
    execution (``storage.engine.planned_with_values``): the professional's rules about Binaries
    and Tasks made a search of Observations cost twice its planning time.

    ``patient``, when given, is the id of the patient whose compartment holds every row the
    statement selects (it selects on it): a filter may then decide once for that patient what
    it would decide for each row. It is a promise about the rows, never a permission: a filter
    still allows only what it would allow without it.

    ``in_record``, with ``patient``: the statement's own condition keeps only rows of that
    patient's compartment (``resource_compartment``: a compartment search, ``$everything``), so
    a filter need not check it again for each row. Where the patient comes from a search
    criterion instead, the filter still checks each row's compartment."""

    def __call__(
        self,
        r: FromClause,
        types: Collection[str] | None = None,
        patient: str | None = None,
        in_record: bool = False,
    ) -> ColumnElement[bool]: ...


@dataclass(frozen=True, slots=True)
class CompileContext:
    """What compiling needs besides the query: definitions, the public base URL and the clock.

    ``aliases`` numbers the table aliases of one statement; make a new context per statement.
    """

    defs: Definitions
    base_url: str
    now: datetime
    aliases: itertools.count[int] = field(default_factory=itertools.count)
    access: AccessFilter | None = None
    """The caller's access filter, applied to every resource a chain or ``_has`` reaches: a
    criterion on a resource the caller may not see must not match, or it would reveal it."""

    def alias(self, table: Table) -> Any:
        """A table alias unique within the statement (alias objects are cached: building their
        column collections is the most expensive part of compiling a search)."""
        return _cached_alias(table, next(self.aliases))


@functools.cache
def _cached_alias(table: Table, number: int) -> Any:
    return table.alias(f"{table.name[:6]}_{number}")


def stored_rows(table: Any, rtype: str, sources: tuple[Source, ...], suffix: str = "") -> tuple[Any, ...]:
    """Conditions selecting, in an index table alias, the rows of ``sources`` of type ``rtype``
    (``suffix``: the ``:of-type`` rows of a token parameter)."""
    return _stored_rows(table, rtype, sources, suffix)


def _constant(value: str) -> ColumnElement[str]:
    """``value`` written into the SQL as a string constant."""
    return literal_column("'" + value.replace("'", "''") + "'", String)


@functools.lru_cache(maxsize=8192)
def _stored_rows(table: Any, rtype: str, sources: tuple[Source, ...], suffix: str) -> tuple[Any, ...]:
    # cached like the aliases it is made on: building clauses is most of the cost of a search
    names = [s.param + suffix for s in sources]
    conds = [
        table.c.rtype == rtype,
        # several names as constants in the SQL: an expanding parameter makes SQLAlchemy rewrite
        # the whole statement's text at each execution (the names come from the definitions)
        table.c.param == names[0] if len(names) == 1 else table.c.param.in_([_constant(n) for n in names]),
    ]
    if any(s.target_type for s in sources):
        alternatives: list[Any] = [
            and_(table.c.param == s.param, table.c.target_type == s.target_type, table.c.grp.is_(None))
            if s.target_type
            else table.c.param == s.param + suffix
            for s in sources
        ]
        conds.append(or_(*alternatives))
    return tuple(conds)


def param_rows(table: Any, rtype: str, code: str, defs: Definitions, suffix: str = "") -> tuple[Any, ...]:
    """Conditions selecting, in an index table alias, the rows of parameter ``code`` of ``rtype``."""
    return stored_rows(table, rtype, defs.layout(rtype).sources_of(code), suffix)


def value_condition(kind: str, table: Any, value: str, modifier: str | None, ctx: CompileContext) -> Any:
    """The condition of one value of one parameter kind on its index table alias."""
    if kind == "string":
        return string.condition(table, value, modifier)
    if kind == "token":
        return token.condition(table, value, modifier)
    if kind == "date":
        return date.condition(table, value, modifier, ctx.now)
    if kind == "number":
        return number.condition(table, value, modifier)
    if kind == "quantity":
        return quantity.condition(table, value, modifier)
    if kind == "reference":
        return reference.condition(table, value, modifier, ctx.base_url, ctx.defs.resource_types)
    if kind == "uri":
        return uri.condition(table, value, modifier)
    raise BadRequest(f"Unsupported parameter type {kind}")


def _special(r: FromClause, flt: Filter, ctx: CompileContext) -> ColumnElement[bool]:
    if flt.code == "_id":
        ids = [unescape(v) for v in flt.values]
        if flt.modifier == "missing":
            return false() if flt.values[0] == "true" else true()
        clause = r.c.id.in_(ids)
        return not_(clause) if flt.modifier == "not" else clause
    if flt.modifier == "missing":
        return false() if flt.values[0] == "true" else true()
    conds = []
    for value in flt.values:
        prefix, rest = split_prefix(value)
        try:
            low, high = date_range(rest)
        except ValueError:
            raise BadRequest(f"Invalid date {value!r} for _lastUpdated") from None
        conds.append(date.range_condition(r.c.last_updated, r.c.last_updated, prefix, low, high, ctx.now))
    return or_(*conds)


def _indexed(r: FromClause, rtype: str, flt: Filter, ctx: CompileContext) -> ColumnElement[bool]:
    assert flt.param is not None
    if flt.type == "composite":
        return _composite(r, rtype, flt, ctx)
    table = ctx.alias(INDEX_TABLES[flt.type])
    if flt.modifier == "missing":
        rows = param_rows(table, rtype, flt.code, ctx.defs)
        present = exists(select(1).select_from(table).where(table.c.res_pk == r.c.pk, *rows))
        return not_(present) if flt.values[0] == "true" else present
    match = exists(
        select(1).select_from(table).where(table.c.res_pk == r.c.pk, *_matching_rows(table, rtype, flt, ctx))
    )
    return not_(match) if flt.modifier == "not" else match


def _matching_rows(table: Any, rtype: str, flt: Filter, ctx: CompileContext) -> list[Any]:
    """Conditions selecting the rows of ``table`` (an alias of ``flt``'s index table) by which a
    resource matches ``flt`` (``:not`` left to the caller, who negates their existence): the
    one statement of them for ``_indexed``'s EXISTS and ``driving_rows``'s keys."""
    suffix = token.OF_TYPE_SUFFIX if flt.modifier == "of-type" else ""
    modifier = None if flt.modifier == "not" else flt.modifier
    conds = [value_condition(flt.type, table, v, modifier, ctx) for v in flt.values]
    return [*param_rows(table, rtype, flt.code, ctx.defs, suffix), or_(*conds)]


def drives(flt: Filter | HasFilter) -> TypeGuard[Filter]:
    """``flt`` matches a resource by rows of one index table that it must have (an indexed
    parameter, no chain, composite, ``:missing`` or ``:not``): its rows may stand for the
    resources (``driving_rows``)."""
    return (
        isinstance(flt, Filter)
        and flt.param is not None
        and flt.param.type == flt.type
        and not flt.chain
        and flt.type != "composite"
        and flt.modifier not in ("missing", "not")
    )


def on_key_only(flt: Filter | HasFilter) -> bool:
    """``criterion`` of ``flt`` reads only the key (``pk``) of the resource row it is given:
    every indexed or chained criterion; not ``_id``, ``_lastUpdated`` nor ``_has`` (which read
    the row's id and time)."""
    return isinstance(flt, Filter) and (flt.param is not None or bool(flt.chain))


def driving_rows(rtype: str, flt: Filter, ctx: CompileContext) -> Any:
    """The keys of the resources of type ``rtype`` that ``flt`` (``drives``) matches, read from
    its index table alone: a sub-query with one column, ``pk``.

    A search usually reads far more candidates than it returns (a patient's 500 documents to
    sort and count them); correlated on the resource rows, each candidate cost a look-up of its
    row (a third of the execution of ``DocumentReference?patient&_sort=-date`` among a million
    documents). The index rows suffice: they are written for live resources only, of their
    type (``rtype``), and removed when a resource is deleted or changed (``store.apply``)."""
    table = ctx.alias(INDEX_TABLES[flt.type])
    rows = _matching_rows(table, rtype, flt, ctx)
    return select(table.c.res_pk.label("pk")).where(*rows).distinct().subquery("dr")


def _composite(r: FromClause, rtype: str, flt: Filter, ctx: CompileContext) -> ColumnElement[bool]:
    assert flt.param is not None
    kinds = []
    for comp in flt.param.components:
        sub = ctx.defs.by_url.get(comp.definition)
        if sub is None:
            raise BadRequest(f"Composite parameter {flt.code} has an unknown component")
        kinds.append(sub.type)
    groups = ctx.defs.layout(rtype).groups_of(flt.code)
    if flt.modifier == "missing":  # before the values, which are true/false here, not a$b pairs
        present = or_(*(_group_present(r, rtype, group, kinds, ctx) for group in groups))
        return not_(present) if flt.values[0] == "true" else present
    alternatives: list[ColumnElement[bool]] = []
    for value in flt.values:
        parts = split_unescaped(value, "$")
        if len(parts) != len(kinds):
            raise BadRequest(f"Composite {flt.code} expects {len(kinds)} values joined by '$', got {value!r}")
        alternatives.extend(_group_match(r, rtype, group, kinds, parts, ctx) for group in groups)
    return or_(*alternatives)


def _group_present(
    r: FromClause, rtype: str, group: GroupSource, kinds: list[str], ctx: CompileContext
) -> ColumnElement[bool]:
    """The resource has a value of the composite in ``group``'s rows."""
    if group.param is not None:
        table = ctx.alias(INDEX_TABLES[kinds[0]])
        where = [table.c.res_pk == r.c.pk, table.c.rtype == rtype, table.c.param == f"{group.param}#0"]
        return exists(select(1).select_from(table).where(*where))
    conds = []
    for kind, sources in zip(kinds, group.components, strict=True):
        table = ctx.alias(INDEX_TABLES[kind])
        conds.append(
            exists(
                select(1)
                .select_from(table)
                .where(table.c.res_pk == r.c.pk, *stored_rows(table, rtype, sources))
            )
        )
    return and_(*conds)


def _group_match(
    r: FromClause, rtype: str, group: GroupSource, kinds: list[str], parts: list[str], ctx: CompileContext
) -> ColumnElement[bool]:
    """The components of one value of the composite (``parts``) match in ``group``'s rows: rows of
    one ``grp``, or for a composite on the whole resource, rows of each component's parameter."""
    tables = [ctx.alias(INDEX_TABLES[k]) for k in kinds]
    if group.param is None:
        conds = []
        for kind, table, sources, part in zip(kinds, tables, group.components, parts, strict=True):
            where = [table.c.res_pk == r.c.pk, *stored_rows(table, rtype, sources)]
            conds.append(
                exists(
                    select(1).select_from(table).where(*where, value_condition(kind, table, part, None, ctx))
                )
            )
        return and_(*conds)
    first = tables[0]
    joined: list[Any] = [first.c.res_pk == r.c.pk]
    for i, (kind, table, part) in enumerate(zip(kinds, tables, parts, strict=True)):
        joined += [table.c.rtype == rtype, table.c.param == f"{group.param}#{i}"]
        if i:
            joined += [table.c.res_pk == first.c.res_pk, table.c.grp == first.c.grp]
        joined.append(value_condition(kind, table, part, None, ctx))
    return exists(select(1).select_from(*tables).where(*joined))


def _leaf(r: FromClause, rtype: str, flt: Filter, ctx: CompileContext) -> ColumnElement[bool]:
    if flt.param is None:
        return _special(r, flt, ctx)
    param = ctx.defs.param(rtype, flt.code) if flt.chain else flt.param
    if param is None or param.type != flt.type:
        return false()
    if param is not flt.param:
        flt = replace(flt, param=param)
    return _indexed(r, rtype, flt, ctx)


def _chained(r: FromClause, rtype: str, flt: Filter, hop: int, ctx: CompileContext) -> ColumnElement[bool]:
    """Follow the chain one hop: the reference must point at a live resource matching the rest.

    Without a type modifier every target type of the reference parameter is tried (OR).
    """
    if hop == len(flt.chain):
        return _leaf(r, rtype, flt, ctx)
    code, type_mod = flt.chain[hop]
    param = ctx.defs.param(rtype, code)
    if param is None or param.type != "reference":
        return false()
    targets = [type_mod] if type_mod else [t for t in param.targets if t in ctx.defs.resource_types]
    if not targets:  # a parameter naming no known type reaches nothing (an empty OR would match all)
        return false()
    ref = ctx.alias(INDEX_TABLES["reference"])
    target = ctx.alias(resource)
    branches = [and_(target.c.type == t, _chained(target, t, flt, hop + 1, ctx)) for t in targets]
    return exists(
        select(1)
        .select_from(ref)
        .join(target, and_(target.c.type == ref.c.target_type, target.c.id == ref.c.target_id))
        .where(
            ref.c.res_pk == r.c.pk,
            *param_rows(ref, rtype, code, ctx.defs),
            reference.local(ref, ctx.base_url),
            target.c.deleted.is_(False),
            *((ctx.access(target, targets),) if ctx.access is not None else ()),
            or_(*branches),
        )
    )


def criterion(r: FromClause, rtype: str, flt: Filter | HasFilter, ctx: CompileContext) -> ColumnElement[bool]:
    """The SQL condition of one criterion on resource alias ``r`` of type ``rtype``."""
    if isinstance(flt, HasFilter):
        ref = ctx.alias(INDEX_TABLES["reference"])
        source = ctx.alias(resource)
        return exists(
            select(1)
            .select_from(ref)
            .join(source, source.c.pk == ref.c.res_pk)
            .where(
                *param_rows(ref, flt.source_type, flt.ref_param.code, ctx.defs),
                ref.c.target_type == rtype,
                ref.c.target_id == r.c.id,
                reference.local(ref, ctx.base_url),
                source.c.deleted.is_(False),
                source.c.type == flt.source_type,  # said in SQL: the filter's narrowing relies on it
                *((ctx.access(source, (flt.source_type,)),) if ctx.access is not None else ()),
                criterion(source, flt.source_type, flt.inner, ctx),
            )
        )
    return _chained(r, rtype, flt, 0, ctx)


def sort_expression(r: FromClause, rtype: str, key: SortKey, ctx: CompileContext) -> Any:
    """A scalar SQL expression to order by: the smallest (ascending) or largest (descending) value."""
    if key.code == "_id":
        return r.c.id
    if key.code == "_lastUpdated":
        return r.c.last_updated
    table = ctx.alias(INDEX_TABLES[key.type])
    column = {
        "string": "norm",
        "token": "code",
        "date": "high" if key.descending else "low",
        "number": "value",
        "quantity": "value",
        "reference": "target_id",
        "uri": "value",
    }[key.type]
    agg = func.max if key.descending else func.min
    return (
        select(agg(table.c[column]))
        .where(table.c.res_pk == r.c.pk, *param_rows(table, rtype, key.code, ctx.defs))
        .scalar_subquery()
    )


def sort_kind(key: SortKey) -> str:
    """How a sort value is carried in a page cursor: 'dt', 'num' or 'str'."""
    if key.code == "_lastUpdated" or key.type == "date":
        return "dt"
    if key.type in ("number", "quantity"):
        return "num"
    return "str"


__all__ = [
    "CompileContext",
    "criterion",
    "drives",
    "driving_rows",
    "on_key_only",
    "param_rows",
    "sort_expression",
    "sort_kind",
    "stored_rows",
    "value_condition",
]
