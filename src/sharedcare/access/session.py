"""One caller's session over the FHIR store: the policy applied, the scopes enforced, the acts audited.

``PolicySession`` implements ``fhir.session.AccessSession``: the FHIR service asks it for the
read filter on every read path, hands it every write before it is applied, and tells it what
each interaction returned; the session writes the audit records just before the commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, FromClause, and_, or_, select, update

from sharedcare.access import care
from sharedcare.access.models import record_status
from sharedcare.access.policy import REFERENCE, AccessPolicy, WriteTarget
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.access.scopes import ScopeSet, parse_cached
from sharedcare.audit import log as audit
from sharedcare.fhir.errors import BusinessRule, Forbidden, NotFound
from sharedcare.fhir.indexer import Indexer, default_indexer
from sharedcare.fhir.search.engine import AccessFilter
from sharedcare.fhir.session import Interaction
from sharedcare.fhir.store import Classifier, Stored, Write, utcnow
from sharedcare.notify import outbox
from sharedcare.storage.tables import resource, resource_compartment

LAST_ACCESS_RESOLUTION = timedelta(hours=1)

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
    _pending: list[audit.AuditRecord] = field(default_factory=list)
    _filter: AccessFilter | None = None
    _filter_built: bool = False
    _scopes: ScopeSet | None = None

    # -- scopes ----------------------------------------------------------------------------
    @property
    def scopes(self) -> ScopeSet:
        if self._scopes is None:
            self._scopes = parse_cached(self.principal.scopes)
        return self._scopes

    def _readable_types(self) -> frozenset[str] | None:
        """Resource types some scope lets the caller read (None: every type)."""
        types = {s.resource_type for s in self.scopes.resources if "r" in s.interactions}
        return None if "*" in types else frozenset(types)

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
        if not self._filter_built:
            self._filter = self._build_filter()
            self._filter_built = True
        return self._filter

    def _build_filter(self) -> AccessFilter | None:
        base = self.policy.read_filter(self.principal, self.now)
        readable = None if self.principal.is_staff or not self.enforce_scopes else self._readable_types()
        launch = self.principal.launch_patient
        if readable is None and launch is None:
            return base
        c = resource_compartment

        def flt(r: FromClause) -> object:
            conds = [] if base is None else [base(r)]
            if readable is not None:
                conds.append(r.c.type.in_(sorted(readable)))
            if launch is not None:
                in_launch = select(c.c.res_pk).where(c.c.res_pk == r.c.pk, c.c.patient_id == launch).exists()
                conds.append((r.c.category == REFERENCE) | in_launch)
            return and_(*conds)

        return flt  # type: ignore[return-value]

    # -- writes ----------------------------------------------------------------------------
    def check_writes(self, conn: Connection, writes: Sequence[Write]) -> None:
        p = self.principal
        trusted = self.policy.is_trusted(p)
        for w in writes:
            if w.type == "AuditEvent":
                raise Forbidden(
                    "AuditEvents are recorded by the platform itself; the access log cannot be written"
                )
            letter = "d" if w.method == "DELETE" else ("c" if w.current is None or w.current.deleted else "u")
            self.require(w.type, letter)
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
            closed = conn.execute(
                select(s.c.patient_id).where(
                    s.c.patient_id.in_(sorted(target.patients)), s.c.status != "open"
                )
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
        refs_by_patient: dict[str | None, list[str]] = {}
        pks = [s.pk for s in interaction.resources]
        owners: dict[int, list[str | None]] = {}
        if pks:
            c = resource_compartment
            for start in range(0, len(pks), 500):
                chunk = pks[start : start + 500]
                for row in conn.execute(select(c.c.res_pk, c.c.patient_id).where(c.c.res_pk.in_(chunk))):
                    owners.setdefault(row.res_pk, []).append(row.patient_id)
        for s in interaction.resources:
            ref = f"{s.type}/{s.id}/_history/{s.version}"
            for patient in owners.get(s.pk) or [None]:
                refs_by_patient.setdefault(patient, []).append(ref)
        if not refs_by_patient:
            refs_by_patient[None] = []
        base = audit.record_for(
            self.principal,
            _ACTIONS[interaction.name],
            interaction=interaction.operation or interaction.name,
            query=interaction.query,
            source_ip=self.info.source_ip,
            user_agent=self.info.user_agent,
            request_id=self.info.request_id,
        )
        self._pending.extend(audit.split_by_patient(base, refs_by_patient))

    def flush(self, conn: Connection) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        p = self.principal
        touched = sorted({r.patient_id for r in pending if r.patient_id})
        if touched:
            self._note_access(conn, touched)
        if (
            p.kind is PrincipalKind.PROFESSIONAL
            and self.policy.settings.emergency_override
            and p.practitioner_id
        ):
            pending = self._flag_emergencies(conn, p.practitioner_id, pending)
        for rec in pending:
            audit.append(conn, rec)

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

    def _note_access(self, conn: Connection, patients: list[str]) -> None:
        """Date the record's last access (the inactivity clock of §A.2, to the hour: a busy record
        must not turn every read into a write of the same row) and its first professional access
        (the holder is told of it, §A.1). Records without a life-cycle row have neither."""
        s = record_status
        stale = self.now - LAST_ACCESS_RESOLUTION
        conn.execute(
            update(s)
            .where(s.c.patient_id.in_(patients), or_(s.c.last_access.is_(None), s.c.last_access < stale))
            .values(last_access=self.now)
        )
        p = self.principal
        if p.kind is not PrincipalKind.PROFESSIONAL:
            return
        first = conn.execute(
            update(s)
            .where(s.c.patient_id.in_(patients), s.c.first_professional_access.is_(None))
            .values(first_professional_access=self.now)
            .returning(s.c.patient_id)
        ).scalars()
        for patient_id in sorted(first):
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
