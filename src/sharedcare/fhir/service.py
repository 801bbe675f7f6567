"""FHIR interactions over the store: create, read, vread, update, patch, delete, history, search.

This is the Python API the HTTP layer, the bundle processor, the importer and the other
domain modules call. Each public method runs in its own database transaction; the ``*_in``
variants take an open connection so that a transaction Bundle can group them.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jsonpatch
import orjson
from sqlalchemy import Connection, Engine, and_, func, or_, select, text

from sharedcare.fhir.definitions import Definitions, definitions
from sharedcare.fhir.errors import (
    BadRequest,
    Issue,
    MultipleMatches,
    NotFound,
    PreconditionFailed,
    Unprocessable,
)
from sharedcare.fhir.operations.everything import EverythingPage, everything
from sharedcare.fhir.search.compile import CompileContext
from sharedcare.fhir.search.engine import AccessFilter, SearchEngine, SearchResult
from sharedcare.fhir.search.parse import RESULT_PARAMS, QueryParser, SearchQuery
from sharedcare.fhir.search.values import date_range
from sharedcare.fhir.session import AccessSession, Interaction
from sharedcare.fhir.store import Classifier, ResourceStore, Stored, Write, stored_from_row, utcnow
from sharedcare.storage.engine import planned_with_values, writer
from sharedcare.storage.groupcommit import group_commit
from sharedcare.storage.tables import resource, resource_version

ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
Validator = Callable[[dict[str, Any]], list[Issue]]
WriteRule = Callable[[Write, AccessSession | None], None]
"""A resource type's own rule on its writes, run by ``apply_writes`` (so every write path: REST,
bundles, operations). A rule run before the session's access check may set server-owned elements of
``Write.resource`` (a tag the client may not choose); one run after it checks the content, so that
a caller without the right gets 403 before any content error. Either raises a ``FhirError``."""
_WRITE_RULES: dict[tuple[str, bool], list[WriteRule]] = {}


def register_write_rule(rtype: str, rule: WriteRule, *, after_access: bool = False) -> None:
    """Apply ``rule`` to every write of ``rtype`` (once, however often it is registered)."""
    rules = _WRITE_RULES.setdefault((rtype, after_access), [])
    if rule not in rules:
        rules.append(rule)


WriteEffect = Callable[[Connection, Write, Stored], None]
"""What a stored write of a resource type changes beyond the store, in the write's transaction (a
record closed when its Patient is written deceased); run by ``apply_writes`` after the store."""
_WRITE_EFFECTS: dict[str, list[WriteEffect]] = {}


def register_write_effect(rtype: str, effect: WriteEffect) -> None:
    """Run ``effect`` after every stored write of ``rtype`` (once, however often registered)."""
    effects = _WRITE_EFFECTS.setdefault(rtype, [])
    if effect not in effects:
        effects.append(effect)


@dataclass(slots=True)
class WriteOutcome:
    """What a write did: the resulting version and the HTTP status it implies."""

    stored: Stored
    status: int  # 200 updated/unchanged/found, 201 created
    created: bool = False


@dataclass(slots=True)
class HistoryPage:
    """One page of versions, newest first."""

    versions: list[Stored]
    total: int | None
    next_cursor: str | None


def _strip_meta(res: dict[str, Any]) -> dict[str, Any]:
    copy = dict(res)
    meta = dict(copy.get("meta") or {})
    meta.pop("versionId", None)
    meta.pop("lastUpdated", None)
    if meta:
        copy["meta"] = meta
    else:
        copy.pop("meta", None)
    return copy


def serialize(conn: Connection, key: str) -> None:
    """Serialise writers on ``key`` until the transaction ends.

    PostgreSQL takes a transaction-scoped advisory lock; SQLite writers are serialised already
    (they take the database lock at BEGIN).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})


def serialize_many(conn: Connection, keys: list[str]) -> None:
    """``serialize`` for many keys in one round trip (in sorted order, so writers cannot deadlock)."""
    if conn.dialect.name == "postgresql" and keys:
        conn.execute(
            text(
                "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest(CAST(:keys AS text[])) AS k"
            ),
            {"keys": sorted(set(keys))},
        )


def same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """True when two versions differ at most in ``meta.versionId``/``meta.lastUpdated``."""
    return _strip_meta(a) == _strip_meta(b)


def parse_etag(value: str) -> int:
    """The version number in an ETag/If-Match header (``W/"3"``)."""
    m = re.fullmatch(r'\s*(?:W/)?"?(\d+)"?\s*', value)
    if not m:
        raise BadRequest(f'Invalid If-Match header {value!r}: expected W/"<version>"')
    return int(m.group(1))


class FhirService:
    """The FHIR R4 interactions, generic over every resource type."""

    def __init__(
        self,
        engine: Engine,
        *,
        validator: Validator | None = None,
        default_page_size: int = 20,
        max_page_size: int = 1000,
        default_total: str = "accurate",
        defs: Definitions | None = None,
        classify: Classifier | None = None,
    ) -> None:
        self.engine = engine
        self.write_engine = writer(engine)
        self.defs = defs or definitions()
        self.store = ResourceStore(classify=classify)
        self.session: AccessSession | None = None
        self.validator = validator
        self.default_page_size = default_page_size
        self.max_page_size = max_page_size
        self.default_total = default_total

    # -- access --------------------------------------------------------------------------------
    def for_session(self, session: AccessSession | None) -> FhirService:
        """This service as seen by one caller: every read filtered, every write checked, every
        interaction recorded by ``session`` (None: the unrestricted internal service)."""
        bound = copy.copy(self)
        bound.session = session
        return bound

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for a read interaction. An audited read answers only once its audit
        records are committed: they are written after the read, with those of concurrent reads,
        in one transaction (``storage.groupcommit``), so a busy server commits once for many
        reads instead of once per read. The read itself runs outside any write transaction
        (autocommit on PostgreSQL: each statement its own snapshot, as in the default READ
        COMMITTED transaction, without the BEGIN and ROLLBACK round trips)."""
        if self.session is None:
            with self.engine.connect() as conn:
                yield conn
            return
        session = self.session
        try:
            with self.engine.connect() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execution_options(isolation_level="AUTOCOMMIT")
                yield conn
            group_commit(self.engine).run(session.flush)
        finally:
            session.discard()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction; the session's audit records are written last, just before the
        commit, so that the audit chain's lock is never held while the act waits for others."""
        try:
            with self.write_engine.begin() as conn:
                yield conn
                if self.session is not None:
                    self.session.flush(conn)
        finally:
            if self.session is not None:
                self.session.discard()  # committed (records written) or rolled back (acts undone)

    def access_filter(self, extra: AccessFilter | None = None) -> AccessFilter | None:
        """The session's read filter, combined with ``extra``."""
        own = self.session.read_filter() if self.session is not None else None
        if own is None or extra is None:
            return own or extra
        return lambda r, types=None, patient=None, in_record=False: and_(
            own(r, types, patient, in_record), extra(r, types, patient, in_record)
        )

    def _require(self, rtype: str | None, interaction: str) -> None:
        if self.session is not None:
            self.session.require(rtype, interaction)

    def _record(self, conn: Connection, interaction: Interaction) -> None:
        if self.session is not None:
            self.session.record(conn, interaction)

    def visible(self, conn: Connection, stored: Stored) -> bool:
        """Whether the caller may see the resource of ``stored`` (its current row decides)."""
        flt = self.access_filter()
        if flt is None:
            return True
        return (
            conn.execute(
                select(resource.c.pk).where(
                    resource.c.pk == stored.pk, resource.c.type == stored.type, flt(resource, (stored.type,))
                )
            ).first()
            is not None
        )

    def apply_writes(self, conn: Connection, writes: Sequence[Write]) -> list[Stored]:
        """The one door of every write: the session checks it, the store applies it, the
        session records it."""
        for w in writes:
            for rule in _WRITE_RULES.get((w.type, False), ()):
                rule(w, self.session)
        if self.session is not None:
            self.session.check_writes(conn, writes)
        for w in writes:
            for rule in _WRITE_RULES.get((w.type, True), ()):
                rule(w, self.session)
        results = self.store.apply(conn, writes)
        if _WRITE_EFFECTS:
            for w, stored in zip(writes, results, strict=True):
                for effect in _WRITE_EFFECTS.get(w.type, ()):
                    effect(conn, w, stored)
        if self.session is not None:
            by_name: dict[tuple[str, str], list[Stored]] = {}
            for w, stored in zip(writes, results, strict=True):
                name = _WRITE_NAMES[w.method] if w.current is not None or w.method != "PUT" else "create"
                by_name.setdefault((name, w.type), []).append(stored)
            for (name, rtype), stored_list in by_name.items():
                self.session.record(conn, Interaction(name, rtype, stored_list))
        return results

    # -- helpers ---------------------------------------------------------------------------
    def check_type(self, rtype: str) -> None:
        """Refuse unknown resource types with 404, as HAPI does for unknown endpoints."""
        if rtype not in self.defs.resource_types:
            raise NotFound(f"Unknown resource type {rtype!r}")

    def check_resource(self, res: Any, rtype: str | None = None) -> dict[str, Any]:
        """Basic shape checks, then the validator; raises Unprocessable with every issue found."""
        if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
            raise BadRequest("The body is not a FHIR resource (no resourceType)")
        if rtype is not None and res["resourceType"] != rtype:
            raise BadRequest(
                f"Resource type {res['resourceType']!r} in the body does not match the URL type {rtype!r}"
            )
        self.check_type(res["resourceType"])
        if self.validator is not None:
            issues = [i for i in self.validator(res) if i.severity in ("error", "fatal")]
            if issues:
                raise Unprocessable(
                    f"{res['resourceType']} failed validation: {issues[0].diagnostics}", issues=issues
                )
        return res

    def parser(self, strict: bool) -> QueryParser:
        return QueryParser(self.defs, strict, self.max_page_size)

    def engine_for(self, base_url: str) -> SearchEngine:
        return SearchEngine(CompileContext(self.defs, base_url, utcnow(), access=self.access_filter()))

    def _match(self, conn: Connection, rtype: str, query_string: str, base_url: str) -> list[Stored]:
        """Resources matching a conditional-interaction query (strict: unknown params are errors).

        Only real criteria count (result parameters such as ``_count`` or ``_summary`` are
        refused), and the query is locked for the rest of the transaction, so that two
        concurrent conditional creates of the same thing cannot both create it.
        """
        params = parse_qsl(query_string.removeprefix(f"{rtype}?"), keep_blank_values=True)
        if any(key.partition(":")[0] in RESULT_PARAMS for key, _ in params):
            raise BadRequest(f"Conditional criteria {query_string!r} may not use result parameters")
        query = self.parser(strict=True).parse(rtype, params)
        if not query.filters:
            raise BadRequest("A conditional interaction needs search criteria")
        serialize(conn, f"{rtype}?{urlencode(sorted(params))}")
        query.total = "none"
        result = self.engine_for(base_url).search(conn, query, page_size=2, access=self.access_filter())
        return result.matches

    # -- create ----------------------------------------------------------------------------
    def create(
        self, res: dict[str, Any], *, if_none_exist: str | None = None, base_url: str = ""
    ) -> WriteOutcome:
        with self.transaction() as conn:
            return self.create_in(conn, res, if_none_exist=if_none_exist, base_url=base_url)

    def create_in(
        self,
        conn: Connection,
        res: dict[str, Any],
        *,
        if_none_exist: str | None = None,
        base_url: str = "",
        new_id: str | None = None,
    ) -> WriteOutcome:
        """Create with a server-assigned id (any id in the body is ignored, as the spec says)."""
        self.check_resource(res)
        rtype = res["resourceType"]
        if if_none_exist:
            found = self._match(conn, rtype, if_none_exist, base_url)
            if len(found) > 1:
                raise MultipleMatches(f"If-None-Exist {if_none_exist!r} matches more than one {rtype}")
            if found:
                return WriteOutcome(found[0], 200)
        res = dict(res)
        res["id"] = new_id or str(uuid.uuid4())
        stored = self.apply_writes(conn, [Write("POST", rtype, res["id"], res, None)])[0]
        return WriteOutcome(stored, 201, created=True)

    # -- read ------------------------------------------------------------------------------
    def read(self, rtype: str, rid: str) -> Stored:
        with self.reading() as conn:
            return self.read_in(conn, rtype, rid)

    def read_in(self, conn: Connection, rtype: str, rid: str) -> Stored:
        """The current version; a resource the caller may not see is reported as unknown."""
        self.check_type(rtype)
        self._require(rtype, "r")
        stored = self._current_visible(conn, rtype, rid)
        if stored.deleted:
            self.store.read(conn, rtype, rid)  # raises Gone
        self._record(conn, Interaction("read", rtype, [stored]))
        return stored

    def current_visible(self, conn: Connection, rtype: str, rid: str) -> Stored | None:
        """The current row of a resource the caller may see, deleted or not; None else. One
        statement with the access filter (``visible`` after ``store.current`` cost a second
        round trip to every read by a restricted caller)."""
        flt = self.access_filter()
        if flt is None:
            return self.store.current(conn, rtype, rid)
        r = resource
        row = conn.execute(select(r).where(r.c.type == rtype, r.c.id == rid, flt(r, (rtype,)))).first()
        return stored_from_row(row) if row else None

    def _current_visible(self, conn: Connection, rtype: str, rid: str) -> Stored:
        current = self.current_visible(conn, rtype, rid)
        if current is None:
            raise NotFound(f"Resource {rtype}/{rid} is not known")
        return current

    def vread(self, rtype: str, rid: str, version: str) -> Stored:
        with self.reading() as conn:
            return self.vread_in(conn, rtype, rid, version)

    def vread_in(self, conn: Connection, rtype: str, rid: str, version: str) -> Stored:
        self.check_type(rtype)
        self._require(rtype, "r")
        if not version.isdigit():
            raise NotFound(f"Version {version!r} of {rtype}/{rid} is not known")
        self._current_visible(conn, rtype, rid)
        stored = self.store.vread(conn, rtype, rid, int(version))
        self._record(conn, Interaction("vread", rtype, [stored]))
        return stored

    # -- update ----------------------------------------------------------------------------
    def update(
        self, rtype: str, rid: str, res: dict[str, Any], *, if_match: str | None = None
    ) -> WriteOutcome:
        with self.transaction() as conn:
            return self.update_in(conn, rtype, rid, res, if_match=if_match)

    def update_in(
        self,
        conn: Connection,
        rtype: str,
        rid: str,
        res: dict[str, Any],
        *,
        if_match: str | None = None,
        method: str = "PUT",
    ) -> WriteOutcome:
        """Update (or create with the client's id); a no-change update keeps the current version."""
        self.check_type(rtype)
        if not isinstance(res, dict) or res.get("id") is None:
            raise BadRequest("An update needs the resource id in the body")
        if res.get("id") != rid:
            raise BadRequest(f"The id in the body ({res.get('id')!r}) does not match the URL id ({rid!r})")
        if not ID_RE.fullmatch(rid):
            raise BadRequest(f"Invalid resource id {rid!r}")
        self.check_resource(res, rtype)
        serialize(conn, f"{rtype}/{rid}")
        current = self.store.current(conn, rtype, rid)
        if current is not None and not self.visible(conn, current):
            raise NotFound(f"Resource {rtype}/{rid} is not known")
        if if_match is not None:
            wanted = parse_etag(if_match)
            if current is None or current.deleted or current.version != wanted:
                have = "none" if current is None or current.deleted else current.version
                raise PreconditionFailed(
                    f"Version conflict on {rtype}/{rid}: If-Match asks for version {wanted}, "
                    f"current is {have}"
                )
        if current is not None and not current.deleted and same_content(current.resource(), res):
            return WriteOutcome(current, 200)
        stored = self.apply_writes(conn, [Write(method, rtype, rid, dict(res), current)])[0]
        created = current is None or current.deleted
        return WriteOutcome(stored, 201 if created else 200, created=created)

    def conditional_update(
        self, rtype: str, query_string: str, res: dict[str, Any], *, base_url: str = ""
    ) -> WriteOutcome:
        with self.transaction() as conn:
            return self.conditional_update_in(conn, rtype, query_string, res, base_url=base_url)

    def conditional_update_in(
        self, conn: Connection, rtype: str, query_string: str, res: dict[str, Any], *, base_url: str = ""
    ) -> WriteOutcome:
        """PUT Type?criteria: update the single match, create when none, 412 when several."""
        self.check_resource(res, rtype)
        found = self._match(conn, rtype, query_string, base_url)
        if len(found) > 1:
            raise MultipleMatches(f"Conditional update {query_string!r} matches more than one {rtype}")
        if found:
            target = found[0]
            if res.get("id") not in (None, target.id):
                raise BadRequest(f"The id in the body does not match the resource found ({target.id})")
            return self.update_in(conn, rtype, target.id, {**res, "id": target.id})
        if res.get("id"):
            return self.update_in(conn, rtype, res["id"], res)
        return self.create_in(conn, res, base_url=base_url)

    # -- patch -----------------------------------------------------------------------------
    def patch(self, rtype: str, rid: str, patch: Any, *, if_match: str | None = None) -> WriteOutcome:
        with self.transaction() as conn:
            return self.patch_in(conn, rtype, rid, patch, if_match=if_match)

    def patch_in(
        self, conn: Connection, rtype: str, rid: str, patch: Any, *, if_match: str | None = None
    ) -> WriteOutcome:
        """Apply a JSON Patch (RFC 6902) to the current version."""
        serialize(conn, f"{rtype}/{rid}")
        if rtype not in self.defs.resource_types:
            raise NotFound(f"Unknown resource type {rtype!r}")
        self._current_visible(conn, rtype, rid)
        current = self.store.read(conn, rtype, rid)
        if not isinstance(patch, list):
            raise BadRequest("A JSON Patch body is an array of operations")
        try:
            patched = jsonpatch.JsonPatch(patch).apply(current.resource())
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, KeyError) as exc:
            raise Unprocessable(f"The JSON Patch could not be applied: {exc}") from None
        if patched.get("resourceType") != rtype or patched.get("id") != rid:
            raise Unprocessable("A patch may not change the resource type or id")
        return self.update_in(conn, rtype, rid, patched, if_match=if_match, method="PATCH")

    def conditional_patch(
        self, rtype: str, query_string: str, patch: Any, *, base_url: str = ""
    ) -> WriteOutcome:
        with self.transaction() as conn:
            found = self._match(conn, rtype, query_string, base_url)
            if not found:
                raise NotFound(f"Conditional patch {query_string!r} matches no {rtype}")
            if len(found) > 1:
                raise MultipleMatches(f"Conditional patch {query_string!r} matches more than one {rtype}")
            return self.patch_in(conn, rtype, found[0].id, patch)

    # -- delete ----------------------------------------------------------------------------
    def delete(self, rtype: str, rid: str) -> Stored | None:
        with self.transaction() as conn:
            return self.delete_in(conn, rtype, rid)

    def delete_in(self, conn: Connection, rtype: str, rid: str) -> Stored | None:
        """Delete: a new version marks the deletion; deleting a deleted resource changes nothing."""
        self.check_type(rtype)
        serialize(conn, f"{rtype}/{rid}")
        current = self._current_visible(conn, rtype, rid)
        assert current is not None
        if current.deleted:
            return None
        return self.apply_writes(conn, [Write("DELETE", rtype, rid, None, current)])[0]

    def conditional_delete(self, rtype: str, query_string: str, *, base_url: str = "") -> Stored | None:
        with self.transaction() as conn:
            return self.conditional_delete_in(conn, rtype, query_string, base_url=base_url)

    def conditional_delete_in(
        self, conn: Connection, rtype: str, query_string: str, *, base_url: str = ""
    ) -> Stored | None:
        """DELETE Type?criteria: delete the single match; none is a no-op; several is 412."""
        self.check_type(rtype)
        found = self._match(conn, rtype, query_string, base_url)
        if len(found) > 1:
            raise MultipleMatches(f"Conditional delete {query_string!r} matches more than one {rtype}")
        if not found:
            return None
        return self.delete_in(conn, rtype, found[0].id)

    # -- search ----------------------------------------------------------------------------
    def parse_search(self, rtype: str, params: list[tuple[str, str]], *, strict: bool) -> SearchQuery:
        self.check_type(rtype)
        return self.parser(strict).parse(rtype, params)

    def search(
        self,
        query: SearchQuery,
        *,
        base_url: str = "",
        access: AccessFilter | None = None,
        compartment: str | None = None,
    ) -> SearchResult:
        """Run a parsed search (one page)."""
        with self.reading() as conn:
            return self.search_in(conn, query, base_url=base_url, access=access, compartment=compartment)

    def search_in(
        self,
        conn: Connection,
        query: SearchQuery,
        *,
        base_url: str = "",
        access: AccessFilter | None = None,
        compartment: str | None = None,
    ) -> SearchResult:
        """Run a parsed search on an open connection (a transaction sees its own writes)."""
        size = self.default_page_size if query.count is None else query.count
        self._require(query.resource_type, "s")
        if compartment is not None:
            patient = self._current_visible(conn, "Patient", compartment)
            if patient is not None and patient.deleted:
                self.store.read(conn, "Patient", compartment)  # raises Gone
        with planned_with_values(conn):
            result = self.engine_for(base_url).search(
                conn,
                query,
                size,
                access=self.access_filter(access),
                compartment=compartment,
                default_total=self.default_total,
            )
        self._record(
            conn,
            Interaction(
                "search",
                query.resource_type,
                [*result.matches, *result.included],
                query=query.source or None,
            ),
        )
        return result

    # -- $everything ------------------------------------------------------------------------
    def everything(
        self,
        patient_id: str,
        *,
        count: int | None = None,
        since: str | None = None,
        types: tuple[str, ...] = (),
        page: str | None = None,
        base_url: str = "",
        access: AccessFilter | None = None,
    ) -> EverythingPage:
        """One page of ``Patient/[id]/$everything`` (see ``operations.everything``)."""
        for rtype in types:
            self.check_type(rtype)
        size = min(self.default_page_size if count is None else count, self.max_page_size)
        start = _instant_param(since, "_since")[0] if since else None
        self._require("Patient", "r")
        with self.reading() as conn:
            self._current_visible(conn, "Patient", patient_id)
            with planned_with_values(conn):
                result = everything(
                    conn,
                    self.store,
                    patient_id,
                    count=size,
                    since=start,
                    types=types,
                    page=page,
                    access=self.access_filter(access),
                    base_url=base_url,
                )
            self._record(
                conn,
                Interaction(
                    "operation",
                    "Patient",
                    [*result.matches, *result.included],
                    operation="everything",
                    query=f"Patient/{patient_id}/$everything",
                ),
            )
            return result

    # -- history ---------------------------------------------------------------------------
    def history(
        self,
        rtype: str | None = None,
        rid: str | None = None,
        *,
        since: str | None = None,
        at: str | None = None,
        count: int | None = None,
        page: str | None = None,
    ) -> HistoryPage:
        """Versions newest first, for one resource, one type or the whole system.

        ``_since``: versions changed at or after the instant; ``_at``: versions that were current
        at some time within the given (possibly partial) date.
        """
        if rtype is not None:
            self.check_type(rtype)
        self._require(rtype, "r")
        size = min(self.default_page_size if count is None else count, self.max_page_size)
        v = resource_version
        conds: list[Any] = []
        flt = self.access_filter()
        if flt is not None:
            typed = [resource.c.type == rtype] if rtype is not None else []
            conds.append(
                v.c.res_pk.in_(
                    select(resource.c.pk).where(
                        *typed, flt(resource, (rtype,) if rtype is not None else None)
                    )
                )
            )
        if rtype is not None:
            conds.append(v.c.type == rtype)
        if rid is not None:
            conds.append(v.c.id == rid)
        if since:
            conds.append(v.c.last_updated >= _instant_param(since, "_since")[0])
        if at:
            low, high = _instant_param(at, "_at")
            nxt = v.alias("nxt")
            next_change = (
                select(func.min(nxt.c.last_updated))
                .where(nxt.c.res_pk == v.c.res_pk, nxt.c.version > v.c.version)
                .scalar_subquery()
            )
            conds += [v.c.last_updated <= high, or_(next_change.is_(None), next_change > low)]
        with self.reading() as conn:
            if rid is not None and rtype is not None:
                self._current_visible(conn, rtype, rid)
            total = None
            if page is None:
                total = int(conn.execute(select(func.count()).select_from(v).where(*conds)).scalar_one())
            if page is not None:
                try:
                    conds.append(v.c.vpk < int(page))
                except ValueError:
                    raise BadRequest("Invalid history page link") from None
            rows = list(conn.execute(select(v).where(*conds).order_by(v.c.vpk.desc()).limit(size + 1)))
            more = len(rows) > size
            rows = rows[:size]
            versions = [stored_from_row(r) for r in rows]
            query = "&".join(f"{k}={x}" for k, x in (("_since", since), ("_at", at)) if x)
            self._record(conn, Interaction("history", rtype, versions, query=query or None))
        return HistoryPage(versions, total, str(rows[-1].vpk) if more and rows else None)


def _instant_param(value: str, name: str) -> tuple[datetime, datetime]:
    try:
        return date_range(value)
    except ValueError:
        raise BadRequest(f"Invalid {name} value {value!r}: expected a FHIR instant or date") from None


def _raise_not_found(rtype: str, rid: str) -> Stored:
    raise NotFound(f"Resource {rtype}/{rid} is not known")


__all__ = ["FhirService", "HistoryPage", "WriteOutcome", "orjson", "parse_etag"]


_WRITE_NAMES = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
