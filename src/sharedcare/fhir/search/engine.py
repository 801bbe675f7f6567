"""Run a parsed search: one SQL statement for the page, one for the total, one per include level.

Paging is by keyset: a page cursor holds the sort values and key of the row next to the page
boundary, so ``next``/``previous`` links stay correct while resources are added or removed.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Connection, Select, and_, exists, false, func, or_, select, type_coerce
from sqlalchemy.sql import FromClause

from sharedcare.fhir.errors import BadRequest
from sharedcare.fhir.search.compile import (
    AccessFilter,
    CompileContext,
    criterion,
    drives,
    driving_rows,
    on_key_only,
    param_rows,
    sort_expression,
    sort_kind,
)
from sharedcare.fhir.search.parse import Filter, Include, SearchQuery
from sharedcare.fhir.search.reference import local
from sharedcare.fhir.search.values import to_utc_naive
from sharedcare.fhir.store import Stored
from sharedcare.storage.engine import any_of, planned_once
from sharedcare.storage.tables import idx_reference, resource, resource_compartment

MAX_INCLUDE_DEPTH = 4
MAX_INCLUDED = 1000  # included resources per page, as HAPI bounds them


@dataclass
class SearchResult:
    """One page of matches, the included resources, the total and the paging cursors."""

    matches: list[Stored]
    included: list[Stored] = field(default_factory=list)
    total: int | None = None
    next_cursor: str | None = None
    previous_cursor: str | None = None
    warnings: list[str] = field(default_factory=list)


def _encode_cursor(direction: str, values: list[Any], pk: int) -> str:
    raw = orjson.dumps([direction, [v.isoformat() if isinstance(v, datetime) else v for v in values], pk])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


MAX_PK = 2**63 - 1


def _cursor_value(kind: str, value: Any) -> Any:
    """One sort value of a cursor, checked against the kind of its sort key (ValueError if not)."""
    if value is None:
        return None
    if kind == "dt" and isinstance(value, str):
        return to_utc_naive(datetime.fromisoformat(value))
    if kind == "num" and isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, int) and not -MAX_PK <= value <= MAX_PK:
            raise ValueError
        return value
    if kind == "str" and isinstance(value, str) and "\x00" not in value:
        return value
    raise ValueError


def _decode_cursor(cursor: str, kinds: list[str]) -> tuple[str, list[Any], int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = orjson.loads(raw)
        if not isinstance(decoded, list) or len(decoded) != 3:
            raise ValueError
        direction, values, pk = decoded
        if direction not in ("n", "p") or not isinstance(values, list) or len(values) != len(kinds):
            raise ValueError
        if not isinstance(pk, int) or isinstance(pk, bool) or not 0 <= pk <= MAX_PK:
            raise ValueError
        checked = [_cursor_value(kind, v) for kind, v in zip(kinds, values, strict=True)]
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise BadRequest("Invalid or expired page link (_page)") from None
    return direction, checked, pk


def _after(exprs: Sequence[tuple[Any, bool]], values: Sequence[Any], pk_col: Any, pk: int) -> Any:
    cond: Any = pk_col > pk
    for (expr, desc), value in zip(reversed(exprs), reversed(values), strict=True):
        greater: Any
        if value is None:
            greater, equal = false(), expr.is_(None)
        else:
            greater = or_(expr < value if desc else expr > value, expr.is_(None))
            equal = expr == value
        cond = or_(greater, and_(equal, cond))
    return cond


def _before(exprs: Sequence[tuple[Any, bool]], values: Sequence[Any], pk_col: Any, pk: int) -> Any:
    cond: Any = pk_col < pk
    for (expr, desc), value in zip(reversed(exprs), reversed(values), strict=True):
        if value is None:
            less, equal = expr.is_not(None), expr.is_(None)
        else:
            less = expr > value if desc else expr < value
            equal = expr == value
        cond = or_(less, and_(equal, cond))
    return cond


_CREF = idx_reference.alias("cref")


def local_compartment_link(r: FromClause, patient_id: str, base_url: str) -> ColumnElement[bool]:
    """``r`` is the patient or holds a local reference to it.

    The compartment rows are made at write time, when an absolute reference to another server's
    ``Patient/<id>`` cannot be told from a local one; this check (with the base URL known) keeps
    such a resource out of the local patient's compartment.
    """
    ref = _CREF
    return or_(
        and_(r.c.type == "Patient", r.c.id == patient_id),
        exists(
            select(1).where(
                ref.c.res_pk == r.c.pk,
                ref.c.target_type == "Patient",
                ref.c.target_id == patient_id,
                local(ref, base_url),
            )
        ),
    )


_R = resource.alias("r")
_CANDIDATE_COLUMNS = tuple(type_coerce(c, c.type).label(c.name) for c in _R.c)
"""The columns of the candidates' sub-query: the row's, as plain expressions (rendered as they
are). SQLAlchemy gives a sub-query of table columns a copy of each ``Column`` (a costly
constructor); of these it makes light ones: 70 µs instead of 160 per search. Made of ``_R``:
``_rows`` must select from ``_R`` (another alias would be joined to it, not read)."""
_T = resource.alias("t")
_P = resource.alias("rp")
_REF = idx_reference.alias("ref")


def _ordering(keys: list[tuple[Any, bool]], pk: Any, forward: bool) -> list[Any]:
    """ORDER BY terms of a page: the sort keys (missing values last), then the row key; a page
    read backwards (``previous`` link) reverses each."""
    order: list[Any] = []
    for expr, desc in keys:
        ascending = not desc if forward else desc
        order.append(
            expr.asc().nulls_last()
            if ascending and forward
            else expr.desc().nulls_last()
            if forward
            else expr.asc().nulls_first()
            if ascending
            else expr.desc().nulls_first()
        )
    order.append(pk.asc() if forward else pk.desc())
    return order


def _stored(row: Any) -> Stored:
    return Stored(row.pk, row.type, row.id, row.version, row.last_updated, row.deleted, row.content)


def _include_targets(fwd: list[Include]) -> set[str] | None:
    """The types forward includes can reach (None: any): the asked target, else the parameter's."""
    types: set[str] = set()
    for inc in fwd:
        if inc.target_type:
            types.add(inc.target_type)
        elif inc.param is not None and inc.param.targets:
            types.update(inc.param.targets)
        else:
            return None
    return types


class SearchEngine:
    """Executes searches; the access filter, when given, applies to matches and includes alike."""

    def __init__(self, ctx: CompileContext) -> None:
        self.ctx = ctx

    def where(
        self, r: FromClause, query: SearchQuery, access: AccessFilter | None, compartment: str | None
    ) -> list[Any]:
        """Every condition a matching row must meet."""
        conds: list[Any] = [r.c.type == query.resource_type, r.c.deleted.is_(False)]
        if compartment is not None:
            conds.append(
                r.c.pk.in_(
                    select(resource_compartment.c.res_pk).where(
                        resource_compartment.c.patient_id == compartment
                    )
                )
            )
            conds.append(local_compartment_link(r, compartment, self.ctx.base_url))
        conds.extend(criterion(r, query.resource_type, f, self.ctx) for f in query.filters)
        if access is not None:
            conds.append(access(r, (query.resource_type,)))
        return conds

    def _rows(
        self, query: SearchQuery, access: AccessFilter | None, compartment: str | None
    ) -> tuple[FromClause, list[Any]]:
        """The rows a search reads, and the conditions on them.

        With an access filter, the search's own criteria pick the candidates in a sub-query the
        planner may not merge into the statement (``OFFSET 0``), and the filter applies to those
        only. Merged, PostgreSQL checked the caller's access where it read the rows: for
        ``Observation?patient&code`` on each of the patient's 217 Observations before the code
        kept 12 of them, a third of the statement's time."""
        driver = self._driver(query, compartment)
        if driver is None:
            r: FromClause = _R
            conds = self.where(r, query, None, compartment)
            if access is None:
                return r, conds
            candidates = select(*_CANDIDATE_COLUMNS).where(*conds).offset(0).subquery("rc")
        else:
            rtype = query.resource_type
            keys = driving_rows(rtype, driver, self.ctx)
            rest = [criterion(keys, rtype, f, self.ctx) for f in query.filters if f is not driver]
            if access is None:
                return keys, rest
            live = [_R.c.type == rtype, _R.c.deleted.is_(False)]  # what the keys imply
            candidates = (
                select(*_CANDIDATE_COLUMNS)
                .select_from(keys.join(_R, _R.c.pk == keys.c.pk))
                .where(*live, *rest)
                .offset(0)
                .subquery("rc")
            )
        patient = compartment or self.searched_patient(query)
        # a compartment search's own condition (``where``) keeps the patient's compartment rows
        flt = access(candidates, (query.resource_type,), patient=patient, in_record=compartment is not None)
        return candidates, [flt]

    @staticmethod
    def _driver(query: SearchQuery, compartment: str | None) -> Filter | None:
        """The criterion whose index rows give the candidates (``compile.driving_rows``), where
        the whole search can be said on resource keys alone: every criterion and sort key reads
        only the row's key (no ``_id``, ``_lastUpdated``, ``_has``, compartment). Its matches are
        the same; PostgreSQL may still read the other criteria's rows first (their ``EXISTS``
        on the keys is a semi-join it can turn around)."""
        if compartment is not None or any(k.code in ("_id", "_lastUpdated") for k in query.sort):
            return None
        if not all(on_key_only(f) for f in query.filters):
            return None
        return next((f for f in query.filters if drives(f)), None)

    def searched_patient(self, query: SearchQuery) -> str | None:
        """The patient whose compartment holds every match of ``query``, where one of its
        criteria says so: one reference, ``Patient/[id]`` (or a plain id for ``patient``), on a
        parameter of the type's Patient compartment, or on ``patient`` where it reads the rows
        of such a parameter (``subject``), without chain or modifier. The access filter may then
        decide once for that patient (``AccessFilter``)."""
        for f in query.filters:
            if (
                not isinstance(f, Filter)
                or f.type != "reference"
                or f.chain
                or f.modifier is not None
                or len(f.values) != 1
                or not self._in_compartment(query.resource_type, f.code)
            ):
                continue
            kind, _, rid = f.values[0].rpartition("/")
            if rid and (kind == "Patient" or (not kind and f.code == "patient")):
                return rid
        return None

    def _in_compartment(self, resource_type: str, code: str) -> bool:
        """A reference on ``code`` to a Patient puts the resource in their compartment: ``code``
        is one of the compartment's parameters, or reads only their index rows (as ``patient``
        reads ``subject``'s, ``Definitions.layout``)."""
        links = self.ctx.defs.patient_compartment.get(resource_type, ())
        if code in links:
            return True
        layout = self.ctx.defs.layout(resource_type)
        feeding = {s.param for link in links for s in layout.sources_of(link)}
        read = {s.param for s in layout.sources_of(code)} - {code}
        return bool(read) and read <= feeding

    def count(
        self,
        conn: Connection,
        query: SearchQuery,
        access: AccessFilter | None = None,
        compartment: str | None = None,
    ) -> int:
        """How many resources match (the accurate total)."""
        return self._count(conn, *self._rows(query, access, compartment))

    @staticmethod
    def _count(conn: Connection, r: FromClause, conds: list[Any]) -> int:
        return int(conn.execute(select(func.count()).select_from(r).where(*conds)).scalar_one())

    def search(
        self,
        conn: Connection,
        query: SearchQuery,
        page_size: int,
        access: AccessFilter | None = None,
        compartment: str | None = None,
        default_total: str = "accurate",
    ) -> SearchResult:
        """Run ``query`` and return one page (``page_size`` 0 returns no matches, only the total)."""
        r, conds = self._rows(query, access, compartment)
        total_mode = query.total or default_total
        want_total = total_mode != "none" and not query.page
        if page_size == 0 or query.summary == "count":
            return SearchResult([], total=self._count(conn, r, conds) if want_total else None)
        keys = [(sort_expression(r, query.resource_type, k, self.ctx), k.descending) for k in query.sort]
        kinds = [sort_kind(k) for k in query.sort]
        direction = "n"
        if query.page:
            direction, values, pk = _decode_cursor(query.page, kinds)
            boundary = _after if direction == "n" else _before
            conds.append(boundary(keys, values, r.c.pk, pk))
        forward = direction == "n"
        labels = [e.label(f"s{i}") for i, (e, _d) in enumerate(keys)]
        if want_total or "content" not in r.c:  # keys only (``_driver``): the page joins its rows
            stmt = self._page(r, conds, keys, labels, page_size, forward, want_total)
        else:
            columns = [r.c.pk, r.c.type, r.c.id, r.c.version, r.c.last_updated, r.c.deleted, r.c.content]
            stmt = (
                select(*columns, *labels)
                .select_from(r)
                .where(*conds)
                .order_by(*_ordering(keys, r.c.pk, forward))
                .limit(page_size + 1)
            )
        rows = list(conn.execute(stmt))
        more = len(rows) > page_size
        rows = rows[:page_size]
        if not forward:
            rows.reverse()
        total = (int(rows[0].total_) if rows else 0) if want_total else None
        result = SearchResult([_stored(row) for row in rows], total=total)
        if rows:
            first, last = rows[0], rows[-1]
            n = len(keys)
            if (forward and more) or not forward:
                result.next_cursor = _encode_cursor("n", [last._mapping[f"s{i}"] for i in range(n)], last.pk)
            if (forward and query.page) or (not forward and more):
                result.previous_cursor = _encode_cursor(
                    "p", [first._mapping[f"s{i}"] for i in range(n)], first.pk
                )
        elif query.page:
            # an empty page past a boundary (everything after it was deleted): offer the way back
            _d, values, pk = _decode_cursor(query.page, kinds)
            result.previous_cursor = _encode_cursor("p", values, min(pk + 1, MAX_PK)) if forward else None
        if query.includes or query.revincludes:
            result.included = self.includes(
                conn, result.matches, query.includes, query.revincludes, access, result.warnings
            )
        return result

    @staticmethod
    def _page(
        r: FromClause,
        conds: list[Any],
        keys: list[tuple[Any, bool]],
        labels: list[Any],
        page_size: int,
        forward: bool,
        counted: bool,
    ) -> Select[Any]:
        """A page of matches selected on their keys and sort values, which then joins the rows'
        content; ``counted``, with the number of all matches (``total_``) in the same statement:
        the window counts every match before the LIMIT, over the keys only (not the resources'
        content). A count statement of its own planned the search a second time and ran its
        access filter on every match again."""
        counts = (func.count().over().label("total_"),) if counted else ()
        page = (
            select(r.c.pk, *labels, *counts)
            .select_from(r)
            .where(*conds)
            .order_by(*_ordering(keys, r.c.pk, forward))
            .limit(page_size + 1)
            .subquery("pg")
        )
        c = _P
        sorted_by = [(page.c[f"s{i}"], desc) for i, (_e, desc) in enumerate(keys)]
        return (
            select(
                c.c.pk,
                c.c.type,
                c.c.id,
                c.c.version,
                c.c.last_updated,
                c.c.deleted,
                c.c.content,
                *(page.c[f"s{i}"] for i in range(len(keys))),
                *((page.c.total_,) if counted else ()),
            )
            .select_from(page.join(c, and_(c.c.pk == page.c.pk, c.c.deleted.is_(False))))
            .order_by(*_ordering(sorted_by, page.c.pk, forward))
        )

    def includes(
        self,
        conn: Connection,
        page: list[Stored],
        includes: list[Include],
        revincludes: list[Include],
        access: AccessFilter | None,
        truncated: list[str],
    ) -> list[Stored]:
        """Resources reached by ``_include``/``_revinclude`` (``:iterate`` repeated up to a depth).

        At most ``MAX_INCLUDED`` per page; when cut, a message is appended to ``truncated``.
        """
        seen = {s.pk for s in page}
        found: list[Stored] = []
        sources = page
        for depth in range(MAX_INCLUDE_DEPTH + 1):
            fwd = [i for i in includes if depth == 0 or i.iterate]
            rev = [i for i in revincludes if depth == 0 or i.iterate]
            if not sources or not (fwd or rev):
                break
            new: list[Stored] = []
            for stmt in self._include_statements(sources, fwd, rev, access, conn.dialect.name):
                room = MAX_INCLUDED - len(found) - len(new)
                with planned_once(conn):  # by the page's keys: one plan serves every page
                    rows = list(conn.execute(stmt.limit(room + 1)))
                for row in rows:
                    if row.pk in seen:
                        continue
                    if len(found) + len(new) == MAX_INCLUDED:
                        truncated.append(
                            f"Only the first {MAX_INCLUDED} included resources are returned; "
                            "use a smaller _count or search the included type directly"
                        )
                        found.extend(new)
                        return found
                    seen.add(row.pk)
                    new.append(_stored(row))
            found.extend(new)
            sources = new
        return found

    def _include_rows(self, ref: FromClause, inc: Include) -> list[Any]:
        """Conditions selecting the reference rows an include follows."""
        if inc.source_type == "*":
            return []
        if inc.param is None:
            return [ref.c.rtype == inc.source_type]
        return list(param_rows(ref, inc.source_type, inc.param.code, self.ctx.defs))

    def _include_statements(
        self,
        sources: list[Stored],
        fwd: list[Include],
        rev: list[Include],
        access: AccessFilter | None,
        dialect: str,
    ) -> list[Select[Any]]:
        statements: list[Select[Any]] = []
        pks = [s.pk for s in sources]
        t, ref = _T, _REF
        cols = [t.c.pk, t.c.type, t.c.id, t.c.version, t.c.last_updated, t.c.deleted, t.c.content]
        if fwd:
            alts = []
            for inc in fwd:
                cond = self._include_rows(ref, inc)
                if inc.target_type:
                    cond.append(ref.c.target_type == inc.target_type)
                alts.append(and_(*cond) if cond else ref.c.res_pk.is_not(None))
            where = [
                any_of(ref.c.res_pk, pks, dialect),
                or_(*alts),
                local(ref, self.ctx.base_url),
                t.c.deleted.is_(False),
            ]
            if access is not None:
                types = _include_targets(fwd)
                if types is not None:  # said in SQL too: the filter's narrowing relies on it
                    where.append(t.c.type.in_(sorted(types)))
                where.append(access(t, types))
            statements.append(
                select(*cols)
                .distinct()
                .select_from(ref)
                .join(t, and_(t.c.type == ref.c.target_type, t.c.id == ref.c.target_id))
                .where(*where)
            )
        if rev:
            by_type: dict[str, list[str]] = {}
            for s in sources:
                by_type.setdefault(s.type, []).append(s.id)
            targets = or_(
                *(
                    and_(ref.c.target_type == k, any_of(ref.c.target_id, v, dialect))
                    for k, v in sorted(by_type.items())
                )
            )
            alts = []
            for inc in rev:
                cond = self._include_rows(ref, inc)
                alts.append(and_(*cond) if cond else ref.c.res_pk.is_not(None))
            where = [targets, or_(*alts), local(ref, self.ctx.base_url), t.c.deleted.is_(False)]
            if access is not None:
                pointing = {inc.source_type for inc in rev}
                if "*" in pointing:  # ``_revinclude=*``: any type may point at the page
                    where.append(access(t))
                else:  # said in SQL too: the filter's narrowing relies on it
                    where += [t.c.type.in_(sorted(pointing)), access(t, pointing)]
            statements.append(
                select(*cols).distinct().select_from(ref).join(t, t.c.pk == ref.c.res_pk).where(*where)
            )
        return statements
