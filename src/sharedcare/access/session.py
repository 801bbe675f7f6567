"""One caller's session over the FHIR store: the policy applied, the scopes enforced, the acts audited.

``PolicySession`` implements ``fhir.session.AccessSession``: the FHIR service asks it for the
read filter on every read path, hands it every write before it is applied, and tells it what
each interaction returned; the session writes the audit records just before the commit.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    FromClause,
    TextClause,
    and_,
    bindparam,
    case,
    false,
    func,
    or_,
    select,
    text,
    update,
)

from sharedcare.access import care
from sharedcare.access.models import record_status
from sharedcare.access.policy import FACTS_SECONDS, REFERENCE, AccessPolicy, CallerFacts, WriteTarget
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.access.scopes import ScopeSet, parse_cached, scope_query
from sharedcare.audit import log as audit
from sharedcare.fhir.definitions import definitions
from sharedcare.fhir.errors import BusinessRule, Forbidden, NotFound
from sharedcare.fhir.indexer import Indexer, default_indexer
from sharedcare.fhir.search.compile import CompileContext, criterion
from sharedcare.fhir.search.engine import AccessFilter
from sharedcare.fhir.search.parse import SearchQuery
from sharedcare.fhir.session import Interaction
from sharedcare.fhir.store import Classifier, Stored, Write, utcnow
from sharedcare.notify import outbox
from sharedcare.storage.tables import resource, resource_compartment

LAST_ACCESS_RESOLUTION = timedelta(hours=1)
SCOPE_ALIASES = 10_000
"""First table-alias number of the scope conditions: the search statements they are nested in
number their own aliases from 0, and an alias shared with an enclosing query would correlate."""
Conditions = tuple[SearchQuery, ...]
"""The queries of the v2 scopes that allow an interaction on a type: a resource must match one."""

_stale = or_(record_status.c.last_access.is_(None), record_status.c.last_access < bindparam("stale"))
_NOTE_ACCESS = (
    update(record_status)
    .where(record_status.c.patient_id.in_(bindparam("patients", expanding=True)), _stale)
    .values(last_access=bindparam("now"))
)
"""The inactivity clock: the records' last access, where it is older than the resolution."""
_NOTE_PROFESSIONAL_ACCESS = (
    update(record_status)
    .where(
        record_status.c.patient_id.in_(bindparam("patients", expanding=True)),
        or_(_stale, record_status.c.first_professional_access.is_(None)),
    )
    .values(
        last_access=case((_stale, bindparam("now")), else_=record_status.c.last_access),
        first_professional_access=func.coalesce(record_status.c.first_professional_access, bindparam("now")),
    )
    .returning(record_status.c.patient_id, record_status.c.first_professional_access)
)
"""The same, and the first professional access where there was none."""


def _owners_and_note(professional: bool, head: bool) -> TextClause:
    """PostgreSQL: the patients owning the acts' resources and the ``_note_access`` of their
    records (and of ``known`` patients), in one statement. Rows ``(res_pk, patient_id, NULL)``
    for the owners, ``(NULL, patient_id, first_professional_access)`` for each record dated;
    with ``head``, also the audit chain head it locked for the records (``audit.PICK_HEAD_PG``),
    as ``(NULL, NULL, NULL, chain, seq, hash)``: one round trip less per audited act."""
    stale = "last_access IS NULL OR last_access < :stale"
    if professional:
        sets = (
            f"last_access = CASE WHEN {stale} THEN :now ELSE last_access END, "
            "first_professional_access = COALESCE(first_professional_access, :now)"
        )
        where, first = f"{stale} OR first_professional_access IS NULL", "first_professional_access"
    else:
        sets, where, first = "last_access = :now", stale, "CAST(NULL AS TIMESTAMP)"
    heads = f", head AS ({audit.PICK_HEAD_PG})" if head else ""
    none = ", CAST(NULL AS SMALLINT), CAST(NULL AS BIGINT), CAST(NULL AS VARCHAR)"
    return text(
        "WITH owners AS (SELECT res_pk, patient_id FROM resource_compartment "
        "WHERE res_pk = ANY(CAST(:pks AS BIGINT[]))), "
        f"noted AS (UPDATE record_status SET {sets} WHERE patient_id IN "
        "(SELECT patient_id FROM owners UNION SELECT unnest(CAST(:known AS VARCHAR[]))) "
        f"AND ({where}) RETURNING patient_id, {first} AS first_access){heads} "
        f"SELECT res_pk, patient_id, CAST(NULL AS TIMESTAMP){none} FROM owners "
        f"UNION ALL SELECT NULL, patient_id, first_access{none} FROM noted"
        + (" UNION ALL SELECT NULL, NULL, NULL, chain, seq, hash FROM head" if head else "")
    )


_OWNERS_AND_NOTE = {(p, h): _owners_and_note(p, h) for p in (False, True) for h in (False, True)}


@dataclass(slots=True)
class _Recorded:
    """An interaction noted for the audit trail whose resources' patients are not read yet."""

    base: audit.AuditRecord
    resources: list[tuple[int, str]]
    """(key, ``Type/id/_history/version``) of each resource returned or written."""


_ACTIONS = {
    "read": audit.AuditAction.READ,
    "vread": audit.AuditAction.VREAD,
    "history": audit.AuditAction.HISTORY,
    "search": audit.AuditAction.SEARCH,
    "create": audit.AuditAction.CREATE,
    "update": audit.AuditAction.UPDATE,
    "patch": audit.AuditAction.PATCH,
    "delete": audit.AuditAction.DELETE,
    "operation": audit.AuditAction.OPERATION,
}


@dataclass(slots=True)
class RequestInfo:
    """Where a request came from, for the audit trail."""

    source_ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


@dataclass(slots=True)
class PolicySession:
    """The access decision, the SMART scopes and the audit trail, for one principal and request."""

    principal: Principal
    policy: AccessPolicy
    classify: Classifier
    indexer: Indexer = field(default_factory=default_indexer)
    info: RequestInfo = field(default_factory=RequestInfo)
    now: datetime = field(default_factory=utcnow)
    enforce_scopes: bool = True
    """False for portal sessions: a signed-in person has no token scopes to narrow the decision."""
    facts: CallerFacts | None = None
    """The decision's facts about the caller read with the token (``AccessPolicy.caller_facts``)."""
    _pending: list[audit.AuditRecord] = field(default_factory=list)
    _recorded: list[_Recorded] = field(default_factory=list)
    _filter: AccessFilter | None = None
    _filter_built: bool = False
    _scopes: ScopeSet | None = None
    _write_checks: dict[tuple[str, str], Conditions] = field(default_factory=dict)
    """Resources being written under conditional scopes: checked once written (``record``)."""

    # -- scopes ----------------------------------------------------------------------------
    @property
    def scopes(self) -> ScopeSet:
        if self._scopes is None:
            self._scopes = parse_cached(self.principal.scopes)
        return self._scopes

    def _readable_types(self) -> tuple[frozenset[str] | None, dict[str, Conditions]]:
        """Resource types some scope lets the caller read without condition (None: every type),
        and for the other types the queries of the v2 scopes that let the caller read them:
        a resource of such a type is readable when it matches one of them (scopes are OR-ed)."""
        plain: set[str] = set()
        conditional: dict[str, list[SearchQuery]] = {}
        for s in self.scopes.resources:
            if "r" not in s.interactions:
                continue
            if not s.params:
                plain.add(s.resource_type)
                continue
            query = scope_query(s.resource_type, s.params)
            if query is not None:  # a query the server cannot run grants nothing
                conditional.setdefault(s.resource_type, []).append(query)
        if "*" in plain:
            return None, {}
        return frozenset(plain), {t: tuple(q) for t, q in conditional.items() if t not in plain}

    def _write_conditions(self, resource_type: str, interaction: str) -> Conditions | None:
        """The queries a resource written by ``interaction`` must match (None: no condition)."""
        if self.principal.is_staff or not self.enforce_scopes:
            return None
        found = self.scopes.conditions(resource_type, interaction)
        if not found:
            return None
        return tuple(q for q in (scope_query(resource_type, params) for params in found) if q is not None)

    def _scope_context(self, access: AccessFilter | None) -> CompileContext:
        """A compile context for scope conditions, its aliases apart from the statement's own;
        a chain in a scope's query reaches only resources the access decision shows."""
        base_url = str(self.policy.settings.base_url or "").rstrip("/")
        return CompileContext(
            definitions(), base_url, self.now, aliases=itertools.count(SCOPE_ALIASES), access=access
        )

    @staticmethod
    def _matching(
        r: FromClause, resource_type: str, conditions: Conditions, ctx: CompileContext
    ) -> ColumnElement[bool]:
        """SQL: the row ``r`` (of ``resource_type``) matches one of the scopes' queries."""
        if not conditions:
            return false()
        return or_(*(and_(*(criterion(r, resource_type, f, ctx) for f in q.filters)) for q in conditions))

    def _matches(self, conn: Connection, pk: int, resource_type: str, conditions: Conditions) -> bool:
        """The stored resource ``pk`` matches one of the scopes' queries (its index rows decide)."""
        ctx = self._scope_context(self.policy.read_filter(self.principal, self.now))
        r = resource
        found = conn.execute(
            select(r.c.pk).where(r.c.pk == pk, self._matching(r, resource_type, conditions, ctx))
        ).first()
        return found is not None

    def require(self, resource_type: str | None, interaction: str) -> None:
        """SMART scopes narrow the decision: refuse an interaction no granted scope covers."""
        if self.principal.is_staff or not self.enforce_scopes:
            return
        if resource_type is None:
            if not any(interaction in s.interactions for s in self.scopes.resources):
                raise Forbidden(f"The granted scopes do not allow '{interaction}' on any resource type")
            return
        if not self.scopes.permits(resource_type, interaction):
            raise Forbidden(f"The granted scopes do not allow '{interaction}' on {resource_type}")

    # -- reads -----------------------------------------------------------------------------
    def read_filter(self) -> AccessFilter | None:
        if self.facts is not None and time.monotonic() - self.facts.read_at > FACTS_SECONDS:
            # too old to stand for what a statement run now would read: read it again in each
            self.facts = None
            self._filter_built = False
        if not self._filter_built:
            self._filter = self._build_filter()
            self._filter_built = True
        return self._filter

    def _build_filter(self) -> AccessFilter | None:
        base = self.policy.read_filter(self.principal, self.now, self.facts)
        readable: frozenset[str] | None = None
        conditional: dict[str, Conditions] = {}
        if not self.principal.is_staff and self.enforce_scopes:
            readable, conditional = self._readable_types()
        launch = self.principal.launch_patient
        if readable is None and launch is None:
            return base
        c = resource_compartment

        def flt(
            r: FromClause,
            types: Collection[str] | None = None,
            patient: str | None = None,
            in_record: bool = False,
        ) -> ColumnElement[bool]:
            conds = [] if base is None else [base(r, types, patient, in_record)]
            if readable is not None:
                ctx = self._scope_context(base)
                allowed: list[ColumnElement[bool]] = [r.c.type.in_(sorted(readable))] if readable else []
                allowed += [
                    and_(r.c.type == rtype, self._matching(r, rtype, queries, ctx))
                    for rtype, queries in sorted(conditional.items())
                    if types is None or rtype in types
                ]
                conds.append(or_(*allowed) if allowed else false())
            if launch is not None:
                in_launch = select(c.c.res_pk).where(c.c.res_pk == r.c.pk, c.c.patient_id == launch).exists()
                conds.append((r.c.category == REFERENCE) | in_launch)
            return and_(*conds)

        return flt

    # -- writes ----------------------------------------------------------------------------
    def check_writes(self, conn: Connection, writes: Sequence[Write]) -> None:
        if self._recorded:  # the audit names the patients of what was read before these writes
            self._pending.extend(self._split(self._owners(conn, self._recorded_keys())))
            self._recorded.clear()
        p = self.principal
        trusted = self.policy.is_trusted(p)
        for w in writes:
            if w.type == "AuditEvent":
                raise Forbidden(
                    "AuditEvents are recorded by the platform itself; the access log cannot be written"
                )
            letter = "d" if w.method == "DELETE" else ("c" if w.current is None or w.current.deleted else "u")
            self.require(w.type, letter)
            self._check_scope_conditions(conn, w, letter)
            if w.current is None and w.method != "POST" and not trusted:
                # no update-as-create with client ids outside the agency: a PUT on an id the
                # caller cannot see must look the same whether or not the resource exists
                raise NotFound(f"Resource {w.type}/{w.id} is not known")
            targets = []
            if w.resource is not None:
                targets.append(self._target_of(w.resource))
            if w.current is not None and not w.current.deleted:
                targets.append(self._stored_target(conn, w.current))
            for target in targets:
                self._check_target(conn, target, w)
            if w.current is not None and not w.current.deleted:
                reason = self.policy.change_denial(p, w.current.resource())
                if reason is not None:
                    raise Forbidden(f"{w.type}/{w.id}: {reason}")

    def _check_scope_conditions(self, conn: Connection, w: Write, letter: str) -> None:
        """Under v2 scopes with a query, a write touches only matching resources: the stored
        version it changes or deletes is checked now, in SQL; what it writes is checked once
        written, in the same transaction, by the same SQL on its new index rows (``record``),
        so that the check is the search itself; a mismatch raises and rolls everything back."""
        conditions = self._write_conditions(w.type, letter)
        if conditions is None:
            return
        changed = w.current is not None and not w.current.deleted
        if changed and w.current is not None and not self._matches(conn, w.current.pk, w.type, conditions):
            raise Forbidden(f"{w.type}/{w.id}: {self._outside_scopes(letter)}")
        if w.resource is not None:
            self._write_checks[(w.type, w.id)] = conditions

    @staticmethod
    def _outside_scopes(letter: str) -> str:
        verb = {"c": "create", "u": "update", "d": "delete"}[letter]
        return f"the granted scopes allow to {verb} only resources matching their query"

    def _target_of(self, res: dict[str, Any]) -> WriteTarget:
        rows = self.indexer.index(res)
        return WriteTarget(frozenset(rows.patients), self.classify(res))

    @staticmethod
    def _stored_target(conn: Connection, stored: Stored) -> WriteTarget:
        category = conn.execute(select(resource.c.category).where(resource.c.pk == stored.pk)).scalar()
        c = resource_compartment
        patients = conn.execute(select(c.c.patient_id).where(c.c.res_pk == stored.pk)).scalars()
        return WriteTarget(frozenset(patients), category)

    def _check_target(self, conn: Connection, target: WriteTarget, w: Write) -> None:
        p = self.principal
        if target.patients:
            s = record_status
            from sharedcare.access.death import closed_in_this_transaction

            still_open = target.patients - closed_in_this_transaction(conn)
            closed = conn.execute(
                select(s.c.patient_id).where(s.c.patient_id.in_(sorted(still_open)), s.c.status != "open")
            ).first()
            if closed is not None:
                raise BusinessRule(
                    f"The shared record of patient {closed.patient_id} is closed: it accepts no new data"
                )
        reason = self.policy.write_denial(conn, p, target, self.now)
        if reason is not None:
            raise Forbidden(f"{w.type}/{w.id}: {reason}")
        if self.policy.is_trusted(p) or target.category == REFERENCE or not target.patients:
            return
        if p.kind in (PrincipalKind.PATIENT, PrincipalKind.REPRESENTATIVE):
            own = set(conn.execute(self.policy.holder_patients(p, self.now)).scalars())
            if p.patient_id:
                own.add(p.patient_id)
            if not target.patients <= own:
                raise Forbidden(f"{w.type}/{w.id}: a holder writes only in their own record")
        elif p.kind is PrincipalKind.PROFESSIONAL:
            assert target.category is not None
            allowed = self.policy.writable_patients(p, target.category, self.now).subquery()
            found = set(
                conn.execute(
                    select(allowed.c.patient_id).where(allowed.c.patient_id.in_(sorted(target.patients)))
                ).scalars()
            )
            if found != set(target.patients):
                raise Forbidden(
                    f"{w.type}/{w.id}: no care relationship allows writing '{target.category}' data "
                    "into this record"
                )

    # -- audit -----------------------------------------------------------------------------
    def record(self, conn: Connection, interaction: Interaction) -> None:
        """Note an interaction's audit record; the patients it concerns (one record each) are
        read with the records' dating, at ``flush`` (or before the next writes). Resources just
        written under a conditional scope must match it (``_check_scope_conditions``)."""
        for stored in interaction.resources:
            conditions = self._write_checks.pop((stored.type, stored.id), None)
            if conditions is None or stored.deleted:
                continue
            if not self._matches(conn, stored.pk, stored.type, conditions):
                letter = "c" if interaction.name == "create" else "u"
                raise Forbidden(f"{stored.type}/{stored.id}: {self._outside_scopes(letter)}")
        base = audit.record_for(
            self.principal,
            _ACTIONS[interaction.name],
            interaction=interaction.operation or interaction.name,
            query=interaction.query,
            source_ip=self.info.source_ip,
            user_agent=self.info.user_agent,
            request_id=self.info.request_id,
        )
        self._recorded.append(
            _Recorded(base, [(s.pk, f"{s.type}/{s.id}/_history/{s.version}") for s in interaction.resources])
        )

    def _recorded_keys(self) -> list[int]:
        return sorted({pk for recorded in self._recorded for pk, _ in recorded.resources})

    @staticmethod
    def _owners(conn: Connection, pks: list[int]) -> dict[int, list[str]]:
        owners: dict[int, list[str]] = {}
        c = resource_compartment
        for start in range(0, len(pks), 500):
            chunk = pks[start : start + 500]
            for row in conn.execute(select(c.c.res_pk, c.c.patient_id).where(c.c.res_pk.in_(chunk))):
                owners.setdefault(row.res_pk, []).append(row.patient_id)
        return owners

    def _split(self, owners: dict[int, list[str]]) -> list[audit.AuditRecord]:
        """The noted interactions' records, one per patient concerned (BALP)."""
        split: list[audit.AuditRecord] = []
        for recorded in self._recorded:
            refs_by_patient: dict[str | None, list[str]] = {}
            for pk, ref in recorded.resources:
                patients: list[str | None] = [*owners.get(pk, ())] or [None]
                for patient in patients:
                    refs_by_patient.setdefault(patient, []).append(ref)
            if not refs_by_patient:
                refs_by_patient[None] = []
            split.extend(audit.split_by_patient(recorded.base, refs_by_patient))
        return split

    def flush(self, conn: Connection) -> None:
        """Write the noted records in ``conn``'s transaction. They stay noted until ``discard``
        (called once the transaction committed), so a batch that failed can flush them again."""
        if not self._recorded and not self._pending:
            return
        p = self.principal
        professional = p.kind is PrincipalKind.PROFESSIONAL
        head: tuple[int, int, str] | None = None
        if conn.dialect.name == "postgresql":
            owners: dict[int, list[str]] = {}
            first: list[str] = []
            known = sorted({r.patient_id for r in self._pending if r.patient_id})
            pks = self._recorded_keys()
            if pks or known:
                values = {
                    "pks": pks,
                    "known": known,
                    "now": self.now,
                    "stale": self.now - LAST_ACCESS_RESOLUTION,
                }
                statement = _OWNERS_AND_NOTE[professional, audit.picks_head(conn)]
                for res_pk, patient_id, first_access, chain, seq, digest in conn.execute(statement, values):
                    if chain is not None:
                        head = (int(chain), int(seq), str(digest))
                    elif res_pk is not None:
                        owners.setdefault(res_pk, []).append(patient_id)
                    elif professional and first_access == self.now:  # dated by this statement
                        first.append(patient_id)
            pending = [*self._pending, *self._split(owners)]
        else:
            pending = [*self._pending, *self._split(self._owners(conn, self._recorded_keys()))]
            touched = sorted({r.patient_id for r in pending if r.patient_id})
            first = self._note_access(conn, touched) if touched else []
        self._notify_first_access(conn, first)
        if professional and self.policy.settings.emergency_override and p.practitioner_id:
            pending = self._flag_emergencies(conn, p.practitioner_id, pending)
        audit.append_all(conn, pending, head=head)

    def _flag_emergencies(
        self, conn: Connection, practitioner_id: str, pending: list[audit.AuditRecord]
    ) -> list[audit.AuditRecord]:
        """Acts on a record under an emergency override are flagged with its reason."""
        overrides = care.active_overrides(conn, practitioner_id, self.now)
        if not overrides:
            return pending
        return [
            replace(r, emergency=True, emergency_reason=overrides[r.patient_id], purpose=audit.Purpose.ETREAT)
            if r.patient_id in overrides
            else r
            for r in pending
        ]

    def discard(self) -> None:
        self._pending.clear()
        self._recorded.clear()
        self._write_checks.clear()

    def _note_access(self, conn: Connection, patients: list[str]) -> list[str]:
        """Date the record's last access (the inactivity clock of §A.2, to the hour: a busy record
        must not turn every read into a write of the same row) and its first professional access
        (the holder is told of it, §A.1), in one statement; return the records whose first
        professional access this dated. Records without a life-cycle row have neither."""
        values = {"patients": patients, "now": self.now, "stale": self.now - LAST_ACCESS_RESOLUTION}
        if self.principal.kind is not PrincipalKind.PROFESSIONAL:
            conn.execute(_NOTE_ACCESS, values)
            return []
        # a row this statement dated first holds this session's time (RETURNING gives new values)
        return [
            row.patient_id
            for row in conn.execute(_NOTE_PROFESSIONAL_ACCESS, values)
            if row.first_professional_access == self.now
        ]

    def _notify_first_access(self, conn: Connection, patients: list[str]) -> None:
        p = self.principal
        for patient_id in sorted(set(patients)):
            outbox.queue(
                conn,
                patient_id,
                outbox.FIRST_PROFESSIONAL_ACCESS,
                self.now,
                dedupe=f"{outbox.FIRST_PROFESSIONAL_ACCESS}:{patient_id}",
                practitioner_id=p.practitioner_id,
                display=p.display,
                organization_id=p.organization_id,
            )
