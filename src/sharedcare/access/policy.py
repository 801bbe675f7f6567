"""THE access decision: may this principal read or write this patient's data, now.

Every read path of the platform asks ``read_filter`` for a SQL condition on a ``resource``
row, so that a denied resource is never read, counted, included or revealed by a different
error; every write asks ``check_write``. The rules are those of the Luxembourg regulation
(LAW-AND-CROSSBORDER.md Part A):

- the holder and their representatives read the whole record while it is open (§A.4, §A.7) and
  write only in the personal expression area;
- a professional reads and writes only the records of holders whose care they take part in,
  for the duration of that care (a care relationship), within the default matrix of their
  profession (§A.3, §A.5); a "referring physician" designation gives the ``mr`` column;
- the holder's blocks ("privé") and masks ("restreint") win over every relationship and grant,
  and are invisible: a masked item is simply absent (§A.4);
- a record not yet activated is closed to professionals during the activation window; a
  closed record is closed to everyone and refuses new data (§A.1, §A.2);
- the emergency override (EHDS), when the setting allows it, lifts blocks and masks for a
  limited time; it never lifts closure or the matrix (§A.6);
- agency staff never see clinical content (§A.8); trusted platform clients are unrestricted;
  facility systems file data into open records and see the identity of the holders
  registered at their facility.

SMART scopes only narrow this decision (``access.session``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, FromClause, Select, and_, exists, false, literal, or_, select

from sharedcare.access.categories import REFERENCE_DATA, classify
from sharedcare.access.matrix import AccessMatrix, load_matrix
from sharedcare.access.models import access_restriction, care_relationship, delegation, record_status
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.fhir.search.engine import AccessFilter
from sharedcare.settings import Settings
from sharedcare.storage.tables import idx_token, resource, resource_compartment

IDENTITY = "identity"
"""Category of the holder's demographics (Patient, RelatedPerson): needed to read any record."""
PERSONAL = "personal-expression"
"""The holder's personal expression area: the only category holders write."""

UNCLASSIFIED = "unclassified"
"""Data no rule of the matrix places, or not open to everyone (a Group lists patients): readable
only by trusted systems, and by the holder when it is in their record."""

TRACES = "access-traces"
PROFESSIONAL_CONTEXTS = ("solo", "facility", "emergency", "permanent")


REFERENCE = "reference"
"""Directory, terminology and conformance resources: not patient data, readable by every
signed-in principal. A resource stored without a category (NULL) is *not* reference data: the
decision fails closed and only trusted systems see it."""


def category_of(res: Mapping[str, Any]) -> str:
    """The category the store records for a resource (the store's classifier)."""
    category = classify(res)
    if category is None:
        return REFERENCE if res.get("resourceType") in REFERENCE_DATA else UNCLASSIFIED
    return category


REFERENT = "referent"
OVERRIDE = "override"


@dataclass(frozen=True, slots=True)
class WriteTarget:
    """What a write touches: the patients whose records it belongs to and its data category."""

    patients: frozenset[str]
    category: str | None


class AccessPolicy:
    """The rules, parameterised by the settings of §A.11 and the matrix of §A.5."""

    def __init__(self, settings: Settings, matrix: AccessMatrix | None = None) -> None:
        self.settings = settings
        self.matrix = matrix or load_matrix()

    # -- building blocks ----------------------------------------------------------------------
    def _open_for_professionals(self, patient_id: ColumnElement[str], now: datetime) -> ColumnElement[bool]:
        """The record is open and past its activation window (or activated)."""
        s = record_status
        window = now - timedelta(days=self.settings.activation_window_days)
        return ~exists(
            select(s.c.patient_id).where(
                s.c.patient_id == patient_id,
                or_(
                    s.c.status != "open",
                    and_(s.c.activated_at.is_(None), s.c.letter_sent.is_not(None), s.c.letter_sent > window),
                ),
            )
        )

    @staticmethod
    def _open(patient_id: ColumnElement[str]) -> ColumnElement[bool]:
        s = record_status
        return ~exists(select(s.c.patient_id).where(s.c.patient_id == patient_id, s.c.status != "open"))

    @staticmethod
    def _active(table: FromClause, now: datetime) -> ColumnElement[bool]:
        c = table.c
        return and_(c.starts <= now, or_(c.ends.is_(None), c.ends > now), c.revoked_at.is_(None))

    def _care_patients(self, p: Principal, contexts: Iterable[str], now: datetime, *, blocks: bool) -> Select:
        """Patients with whom ``p`` has an active relationship of one of ``contexts``."""
        cr = care_relationship
        who = cr.c.practitioner_id == p.practitioner_id
        if p.organization_id:
            who = or_(who, and_(cr.c.practitioner_id.is_(None), cr.c.organization_id == p.organization_id))
        conds: list[ColumnElement[bool]] = [who, cr.c.context.in_(list(contexts)), self._active(cr, now)]
        conds.append(self._open_for_professionals(cr.c.patient_id, now))
        if p.practitioner_id:
            conds.append(self._licensed(p.practitioner_id))
        if blocks:
            b = access_restriction
            conds.append(
                ~exists(
                    select(b.c.id).where(
                        b.c.patient_id == cr.c.patient_id,
                        b.c.practitioner_id == p.practitioner_id,
                        b.c.kind == "block",
                        b.c.removed_at.is_(None),
                    )
                )
            )
        return select(cr.c.patient_id).where(*conds)

    @staticmethod
    def _licensed(practitioner_id: str) -> ColumnElement[bool]:
        """The professional's directory entry is not inactive: a withdrawn licence (the
        directory sets ``Practitioner.active`` to false) ends every right at once (§A.3)."""
        r, t = resource, idx_token
        return ~exists(
            select(r.c.pk).where(
                r.c.type == "Practitioner",
                r.c.id == practitioner_id,
                r.c.deleted.is_(False),
                exists(
                    select(t.c.res_pk).where(t.c.res_pk == r.c.pk, t.c.param == "active", t.c.code == "false")
                ),
            )
        )

    @staticmethod
    def _in_compartment(r: FromClause, patients: Select) -> ColumnElement[bool]:
        c = resource_compartment
        return exists(select(c.c.res_pk).where(c.c.res_pk == r.c.pk, c.c.patient_id.in_(patients)))

    @staticmethod
    def _masked(r: FromClause, p: Principal) -> ColumnElement[bool]:
        m = access_restriction
        return exists(
            select(m.c.id).where(
                m.c.kind == "mask",
                m.c.resource_type == r.c.type,
                m.c.resource_id == r.c.id,
                m.c.practitioner_id == p.practitioner_id,
                m.c.removed_at.is_(None),
            )
        )

    # -- reads --------------------------------------------------------------------------------
    def read_filter(self, p: Principal, now: datetime) -> AccessFilter | None:
        """The SQL condition a ``resource`` row must meet to be read by ``p``; None: no restriction."""
        if p.kind is PrincipalKind.SYSTEM:
            return None if self.is_trusted(p) else self._system_filter(p, now)
        if p.is_staff:
            return lambda r: r.c.category == REFERENCE
        if p.kind in (PrincipalKind.PATIENT, PrincipalKind.REPRESENTATIVE):
            return self._holder_filter(p, now)
        if p.kind is PrincipalKind.PROFESSIONAL:
            return self._professional_filter(p, now)
        return lambda r: false()

    @staticmethod
    def is_trusted(p: Principal) -> bool:
        """Platform clients (the demo/operator client, imports) act for the agency itself."""
        return p.kind is PrincipalKind.SYSTEM and p.trusted

    def _holder_filter(self, p: Principal, now: datetime) -> AccessFilter:
        d = delegation
        delegated = select(d.c.patient_id).where(d.c.account_id == p.subject, self._active(d, now))
        c = resource_compartment
        s = record_status

        def flt(r: FromClause) -> ColumnElement[bool]:
            mine: list[ColumnElement[bool]] = [c.c.patient_id.in_(delegated)]
            if p.patient_id:
                mine.append(c.c.patient_id == p.patient_id)
            return or_(
                r.c.category == REFERENCE,
                exists(
                    select(c.c.res_pk).where(
                        c.c.res_pk == r.c.pk,
                        or_(*mine),
                        ~exists(
                            select(s.c.patient_id).where(
                                s.c.patient_id == c.c.patient_id, s.c.status != "open"
                            )
                        ),
                    )
                ),
            )

        return flt

    def _professional_filter(self, p: Principal, now: datetime) -> AccessFilter:
        if not p.practitioner_id or not p.profession:
            return lambda r: r.c.category == REFERENCE
        column = self.matrix.column_for_profession(p.profession) or p.profession
        readable = sorted(self.matrix.readable_categories(column) | {IDENTITY})
        referent_readable = sorted(self.matrix.readable_categories("mr") | {IDENTITY})
        in_care = self._care_patients(p, PROFESSIONAL_CONTEXTS, now, blocks=True)
        referent = self._care_patients(p, (REFERENT,), now, blocks=True)
        override = (
            self._care_patients(p, (OVERRIDE,), now, blocks=False)
            if self.settings.emergency_override
            else None
        )

        def flt(r: FromClause) -> ColumnElement[bool]:
            allowed = [
                and_(r.c.category.in_(readable), self._in_compartment(r, in_care), ~self._masked(r, p)),
                and_(
                    r.c.category.in_(referent_readable),
                    self._in_compartment(r, referent),
                    ~self._masked(r, p),
                ),
            ]
            if override is not None:
                allowed.append(and_(r.c.category.in_(readable), self._in_compartment(r, override)))
            return or_(r.c.category == REFERENCE, *allowed)

        return flt

    def _system_filter(self, p: Principal, now: datetime) -> AccessFilter:
        if not p.organization_id:
            return lambda r: r.c.category == REFERENCE
        cr = care_relationship
        registered = select(cr.c.patient_id).where(
            cr.c.organization_id == p.organization_id,
            cr.c.context.in_(list(PROFESSIONAL_CONTEXTS)),
            self._active(cr, now),
            self._open(cr.c.patient_id),
        )
        return lambda r: or_(
            r.c.category == REFERENCE, and_(r.c.category == IDENTITY, self._in_compartment(r, registered))
        )

    # -- writes -------------------------------------------------------------------------------
    def write_denial(self, conn: object, p: Principal, target: WriteTarget, now: datetime) -> str | None:
        """Why ``p`` may not write data of ``target`` (None: allowed). Closure is checked apart."""
        if target.category == REFERENCE:
            if p.kind is PrincipalKind.ADMIN or self.is_trusted(p):
                return None
            return "only the agency maintains directory and terminology resources"
        if self.is_trusted(p):
            return None
        if p.is_staff:
            return "agency staff have no access to clinical content"
        if not target.patients:
            return "patient data must belong to a patient's record"
        if p.kind in (PrincipalKind.PATIENT, PrincipalKind.REPRESENTATIVE):
            if target.category not in (PERSONAL,):
                return "holders write only in their personal expression area"
            return None  # the patients are checked against own_patients by the caller
        if p.kind is PrincipalKind.SYSTEM:
            return None if p.organization_id else "a system client must act for an organisation"
        if p.kind is PrincipalKind.PROFESSIONAL:
            if not p.practitioner_id or not p.profession:
                return "the professional is not in the national directory"
            return None  # relationships and matrix: checked in SQL by ``writable_patients``
        return "not allowed"

    def writable_patients(self, p: Principal, category: str, now: datetime) -> Select:
        """Patients whose record ``p`` may write data of ``category`` into (professionals)."""
        column = self.matrix.column_for_profession(p.profession or "") or (p.profession or "")
        parts: list[Select] = []
        if category == IDENTITY or category in self.matrix.writable_categories(column):
            parts.append(self._care_patients(p, PROFESSIONAL_CONTEXTS, now, blocks=True))
        if category == IDENTITY or category in self.matrix.writable_categories("mr"):
            parts.append(self._care_patients(p, (REFERENT,), now, blocks=True))
        if self.settings.emergency_override and (
            category == IDENTITY or category in self.matrix.writable_categories(column)
        ):
            parts.append(self._care_patients(p, (OVERRIDE,), now, blocks=False))
        if not parts:
            return select(care_relationship.c.patient_id).where(false())
        query = parts[0]
        for part in parts[1:]:
            query = query.union(part)  # type: ignore[assignment]
        return query

    def holder_patients(self, p: Principal, now: datetime) -> Select:
        """Patients a representative acts for through an active delegation."""
        d = delegation
        delegated = select(d.c.patient_id).where(d.c.account_id == p.subject, self._active(d, now))
        return delegated

    # -- the access log ------------------------------------------------------------------------
    def trace_patients(self, p: Principal, now: datetime) -> Select | None:
        """Whose access logs ``p`` may read (None: everyone's).

        The holder and their representatives read their record's log (§A.4, art. 8); agency
        staff read traces for support (§A.8); professionals only where their column reads
        the "tableau de bord des traces" (the referring physician); other systems none.
        """
        if p.is_staff or self.is_trusted(p):
            return None
        if p.kind in (PrincipalKind.PATIENT, PrincipalKind.REPRESENTATIVE):
            own = self.holder_patients(p, now)
            if p.patient_id:
                own = own.union(select(literal(p.patient_id)))  # type: ignore[assignment]
            return own
        if p.kind is PrincipalKind.PROFESSIONAL and p.practitioner_id and p.profession:
            column = self.matrix.column_for_profession(p.profession) or p.profession
            parts: list[Select] = []
            if TRACES in self.matrix.readable_categories(column):
                parts.append(self._care_patients(p, PROFESSIONAL_CONTEXTS, now, blocks=True))
            if TRACES in self.matrix.readable_categories("mr"):
                parts.append(self._care_patients(p, (REFERENT,), now, blocks=True))
            if parts:
                query = parts[0]
                for part in parts[1:]:
                    query = query.union(part)  # type: ignore[assignment]
                return query
        return select(care_relationship.c.patient_id).where(false())
