"""Compile parsed search criteria into SQL over the resource table and the typed index tables.

Each criterion becomes one EXISTS sub-query correlated on the resource row, so a whole search
is one SQL statement whatever its criteria, chains and ``_has`` paths.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, exists, false, func, not_, or_, select, true
from sqlalchemy.sql import FromClause

from sharedcare.fhir.definitions import Definitions
from sharedcare.fhir.errors import BadRequest
from sharedcare.fhir.search import date, number, quantity, reference, string, token, uri
from sharedcare.fhir.search.parse import Filter, HasFilter, SortKey
from sharedcare.fhir.search.values import date_range, split_prefix, split_unescaped, unescape
from sharedcare.storage.tables import INDEX_TABLES, resource


@dataclass(frozen=True, slots=True)
class CompileContext:
    """What compiling needs besides the query: definitions, the public base URL and the clock.

    ``aliases`` numbers the table aliases of one statement; make a new context per statement.
    """

    defs: Definitions
    base_url: str
    now: datetime
    aliases: itertools.count[int] = field(default_factory=itertools.count)

    def alias(self, table: Table) -> Any:
        """A table alias unique within the statement (alias objects are cached: building their
        column collections is the most expensive part of compiling a search)."""
        return _cached_alias(table, next(self.aliases))


@functools.cache
def _cached_alias(table: Table, number: int) -> Any:
    return table.alias(f"{table.name[:6]}_{number}")


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
    base = [table.c.res_pk == r.c.pk, table.c.rtype == rtype]
    param_name = flt.code + (token.OF_TYPE_SUFFIX if flt.modifier == "of-type" else "")
    base.append(table.c.param == param_name)
    if flt.modifier == "missing":
        present = exists(select(1).select_from(table).where(*base))
        return not_(present) if flt.values[0] == "true" else present
    modifier = None if flt.modifier == "not" else flt.modifier
    conds = [value_condition(flt.type, table, v, modifier, ctx) for v in flt.values]
    match = exists(select(1).select_from(table).where(*base, or_(*conds)))
    return not_(match) if flt.modifier == "not" else match


def _composite(r: FromClause, rtype: str, flt: Filter, ctx: CompileContext) -> ColumnElement[bool]:
    assert flt.param is not None
    kinds = []
    for comp in flt.param.components:
        sub = ctx.defs.by_url.get(comp.definition)
        if sub is None:
            raise BadRequest(f"Composite parameter {flt.code} has an unknown component")
        kinds.append(sub.type)
    if flt.modifier == "missing":  # before the values, which are true/false here, not a$b pairs
        table = INDEX_TABLES[kinds[0]].alias()
        present = exists(
            select(1).where(
                table.c.res_pk == r.c.pk, table.c.rtype == rtype, table.c.param == f"{flt.code}#0"
            )
        )
        return not_(present) if flt.values[0] == "true" else present
    alternatives = []
    for value in flt.values:
        parts = split_unescaped(value, "$")
        if len(parts) != len(kinds):
            raise BadRequest(f"Composite {flt.code} expects {len(kinds)} values joined by '$', got {value!r}")
        tables = [ctx.alias(INDEX_TABLES[k]) for k in kinds]
        first = tables[0]
        where: list[Any] = [first.c.res_pk == r.c.pk]
        for i, (kind, table, part) in enumerate(zip(kinds, tables, parts, strict=True)):
            where += [table.c.rtype == rtype, table.c.param == f"{flt.code}#{i}"]
            if i:
                where += [table.c.res_pk == first.c.res_pk, table.c.grp == first.c.grp]
            where.append(value_condition(kind, table, part, None, ctx))
        alternatives.append(exists(select(1).select_from(*tables).where(*where)))
    return or_(*alternatives)


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
    ref = ctx.alias(INDEX_TABLES["reference"])
    target = ctx.alias(resource)
    branches = [and_(target.c.type == t, _chained(target, t, flt, hop + 1, ctx)) for t in targets]
    return exists(
        select(1)
        .select_from(ref)
        .join(target, and_(target.c.type == ref.c.target_type, target.c.id == ref.c.target_id))
        .where(
            ref.c.res_pk == r.c.pk,
            ref.c.rtype == rtype,
            ref.c.param == code,
            reference.local(ref, ctx.base_url),
            target.c.deleted.is_(False),
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
                ref.c.rtype == flt.source_type,
                ref.c.param == flt.ref_param.code,
                ref.c.target_type == rtype,
                ref.c.target_id == r.c.id,
                reference.local(ref, ctx.base_url),
                source.c.deleted.is_(False),
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
        .where(table.c.res_pk == r.c.pk, table.c.rtype == rtype, table.c.param == key.code)
        .scalar_subquery()
    )


def sort_kind(key: SortKey) -> str:
    """How a sort value is carried in a page cursor: 'dt', 'num' or 'str'."""
    if key.code == "_lastUpdated" or key.type == "date":
        return "dt"
    if key.type in ("number", "quantity"):
        return "num"
    return "str"


__all__ = ["CompileContext", "criterion", "sort_expression", "sort_kind", "value_condition"]
