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

import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import (
    BindParameter,
    Boolean,
    ColumnElement,
    FromClause,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    case,
    exists,
    false,
    literal,
    literal_column,
    or_,
    select,
    true,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.visitors import InternalTraversal, iterate

from sharedcare.access.categories import (
    REFERENCE_DATA,
    VACCINATION_CATEGORIES,
    DataCategory,
    category_by_type,
    classify,
)
from sharedcare.access.matrix import AccessMatrix, load_matrix
from sharedcare.access.minors import delegation_in_force
from sharedcare.access.models import (
    access_restriction,
    care_relationship,
    delegation,
    filing_objection,
    record_request,
    record_status,
)
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.access.requests import ADDRESSED, DISCLOSURE_SYSTEM, NOT_OBJECTABLE, PENDING_DISCLOSURE
from sharedcare.fhir.definitions import definitions
from sharedcare.fhir.search.engine import AccessFilter
from sharedcare.fhir.store import utcnow
from sharedcare.settings import Settings
from sharedcare.storage.tables import (
    idx_reference,
    idx_token,
    resource,
    resource_compartment,
    resource_version,
)

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
PROFESSION = "profession"
"""The kind of the care contexts of ``PROFESSIONAL_CONTEXTS``: they give the profession's column
(``REFERENT`` gives the ``mr`` column; ``OVERRIDE`` is the emergency override's own)."""
OVERRIDE = "override"

RESTRICTED = "R"
VERY_RESTRICTED = "V"
"""v3-Confidentiality codes that narrow the readers of an item (``resource.confidentiality``,
set by the store): the author's restriction on top of the matrix and the holder's masks. R: only
professionals whose relationship gives their column the full (read and write) right on the item's
category; V: only the item's author side and the holder's referring physician. The holder's side
reads both; trusted platform clients (the Agence, the controller) too."""

AUTHORED_TYPES = frozenset({"DocumentReference"})
"""Types whose stored versions only their author's side may change (``AccessPolicy.change_denial``)."""


def _author_references(res: Mapping[str, Any]) -> set[str]:
    """``Type/id`` of the authors of a document: ``author`` references, relative or absolute, and
    the practitioner and organisation of a contained PractitionerRole author."""
    contained = {
        f"#{c.get('id')}": c for c in res.get("contained") or () if isinstance(c, dict) and c.get("id")
    }
    refs: set[str] = set()
    authors = res.get("author")
    for author in authors if isinstance(authors, list) else ():
        value = author.get("reference") if isinstance(author, dict) else None
        if not isinstance(value, str):
            continue
        inner = contained.get(value)
        if inner is not None:
            for name in ("practitioner", "organization"):
                ref = inner.get(name)
                if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
                    refs.add("/".join(ref["reference"].split("/")[-2:]))
            continue
        parts = value.split("/")
        if len(parts) >= 4 and parts[-2] == "_history":
            parts = parts[:-2]
        if len(parts) >= 2:
            refs.add(f"{parts[-2]}/{parts[-1]}")
    return refs


def authored_by(p: Principal, res: Mapping[str, Any]) -> bool:
    """Whether ``p`` is on the author's side of ``res``: its professional (Practitioner or
    PractitionerRole), the organisation the professional or system acts for, or the holder (or a
    representative acting for them) when the holder wrote it."""
    refs = _author_references(res)
    mine = {
        f"Practitioner/{p.practitioner_id}" if p.practitioner_id else "",
        f"PractitionerRole/{p.practitioner_role_id}" if p.practitioner_role_id else "",
        f"Organization/{p.organization_id}" if p.organization_id else "",
    }
    if p.kind in (PrincipalKind.PATIENT, PrincipalKind.REPRESENTATIVE):
        mine |= {f"Patient/{pid}" for pid in (p.patient_id, *p.acting_for) if pid}
    return bool(refs & (mine - {""}))


# The read filter's own names for the tables it reads (short: it joins every statement).
_CR = care_relationship.alias("acr")
_AC = resource_compartment.alias("ac")
_AR = access_restriction.alias("aar")
_RS = record_status.alias("ars")
_LR = resource.alias("alr")
_LT = idx_token.alias("alt")
_ONE: ColumnElement[int] = literal_column("1")
_ZERO: ColumnElement[int] = literal_column("0")
"""0 written in (no bound parameter): ``OFFSET 0`` makes a sub-query PostgreSQL plans on its own."""
_PT = idx_token.alias("apt")
_PV = resource_version.alias("apv")
_PD = resource.alias("apd")
_FO = filing_objection.alias("afo")
_RQ = record_request.alias("arq")


_CX = idx_reference.alias("acx")
_AU = idx_reference.alias("aau")
_AX = idx_reference.alias("aax")
_AD = resource.alias("aad")
_AA = idx_reference.alias("aaa")
_OR = resource.alias("aor")
_OT = idx_token.alias("aot")


def _authorised(
    organization: ColumnElement[str] | str, r: FromClause = _OR, t: FromClause = _OT
) -> ColumnElement[bool]:
    """The facility's directory entry is not inactive: a withdrawn authorisation (the directory
    sets ``Organization.active`` to false) ends every registration at the facility at once, as a
    withdrawn licence ends a professional's relationships (``access.licence``)."""
    return _in_directory("Organization", organization, r, t)


def _in_directory(
    rtype: str, rid: ColumnElement[str] | str, r: FromClause, t: FromClause
) -> ColumnElement[bool]:
    """The directory does not mark ``rtype/rid`` inactive (``active`` = false): a licence or an
    authorisation stands until the directory withdraws it."""
    return ~exists(
        select(_ONE)
        .select_from(r.join(t, t.c.res_pk == r.c.pk))
        .where(
            r.c.type == _sql(rtype),
            r.c.id == rid,
            r.c.deleted.is_(False),
            t.c.param == _sql("active"),
            t.c.code == _sql("false"),
        )
    )


def ordinary_confidentiality(r: FromClause) -> ColumnElement[bool]:
    """The row is neither restricted (R) nor very restricted (V)."""
    return or_(
        r.c.confidentiality.is_(None),
        r.c.confidentiality.not_in(_sql_list((RESTRICTED, VERY_RESTRICTED))),
    )


@dataclass(frozen=True, slots=True)
class _Rows:
    """Which type-specific rules can concern the rows a filter is asked about: those of Binaries
    (their document's restrictions and authors decide) and those of Tasks (the holder's record
    requests); whether they can have authors (index rows ``_authored`` reads); and the category
    they all have, where their types alone decide it (a Patient's is identity). A statement on
    other types leaves out what cannot concern its rows: PostgreSQL plans every sub-query of a
    statement, also one no row reaches, and a search is planned at each execution."""

    binary: bool = True
    task: bool = True
    authored: bool = True
    category: str | None = None

    @classmethod
    def of(cls, types: Collection[str] | None) -> _Rows:
        if types is None:
            return _ANY_ROWS
        fixed = {category_by_type(t) for t in types}
        return cls(
            "Binary" in types,
            "Task" in types,
            any(_authors_indexed(t) for t in types),
            fixed.pop() if len(fixed) == 1 else None,
        )

    @property
    def shape(self) -> str:
        """What the SQL built for these rows depends on."""
        return f"{self.binary:d}{self.task:d}{self.authored:d}{self.category or ''}"

    def category_in(self, r: FromClause, categories: tuple[str, ...]) -> _Cond:
        """Row ``r``'s category is one of ``categories``: the check a way to read the row makes
        itself. Where the rows' types fix their category, one comparison (or none: False)."""
        if self.category is None:
            if len(categories) == 1:
                return r.c.category == _sql(categories[0])
            return r.c.category.in_(_sql_list(categories))
        return r.c.category == _sql(self.category) if self.category in categories else False

    def category_known_in(
        self, r: FromClause, categories: tuple[str, ...], *, negated: bool = False
    ) -> _Cond:
        """The same (or its negation), within a way to read the row that checked
        ``category_in`` already: where the types fix the category, decided here (a bool, which
        ``_any`` and ``_all`` fold into the enclosing condition)."""
        if self.category is None:
            listed = _sql_list(categories)
            return r.c.category.not_in(listed) if negated else r.c.category.in_(listed)
        return (self.category in categories) != negated


_Cond = ColumnElement[bool] | bool
"""A condition, or its value where it was decided when the statement was built."""


def _any(*parts: _Cond) -> _Cond:
    """OR of ``parts``, those decided folded in."""
    if any(p is True for p in parts):
        return True
    rest = [p for p in parts if not isinstance(p, bool)]
    return or_(*rest) if rest else False


def _all(*parts: _Cond) -> _Cond:
    """AND of ``parts``, those decided folded in."""
    if any(p is False for p in parts):
        return False
    rest = [p for p in parts if not isinstance(p, bool)]
    return and_(*rest) if rest else True


def _as_sql(condition: _Cond) -> ColumnElement[bool]:
    if isinstance(condition, bool):
        return true() if condition else false()
    return condition


@cache
def _authors_indexed(rtype: str) -> bool:
    """Rows of ``rtype`` may have the index rows ``_authored`` reads: an ``author`` parameter
    (rows are indexed under a parameter of their own type only), or a List's ``source``."""
    if rtype == "List":
        return True
    param = definitions().param(rtype, "author")
    return param is not None and param.is_indexed


_ANY_ROWS = _Rows()


def _restricts(
    r: FromClause, table: FromClause, *conditions: ColumnElement[bool], rows: _Rows = _ANY_ROWS
) -> ColumnElement[bool]:
    """A row of ``table`` (keyed by ``resource_type``, ``resource_id``) meeting ``conditions``
    restricts row ``r``: one on the item itself, or, for a Binary, one on the document its
    ``securityContext`` names (FHIR's proxy for access control), so a mask or an objection hides
    the content with its document. Two EXISTS, each answered by an index (one ``OR`` inside a
    single EXISTS made PostgreSQL scan the restrictions and hash every Binary's link)."""
    t, x = table, _CX
    own = exists(
        select(_ONE)
        .select_from(t)
        .where(t.c.resource_type == r.c.type, t.c.resource_id == r.c.id, *conditions)
    )
    if not rows.binary:
        return own
    of_document = exists(
        select(_ONE)
        .select_from(x)
        .join(t, and_(t.c.resource_type == x.c.target_type, t.c.resource_id == x.c.target_id))
        .where(
            x.c.res_pk == r.c.pk,
            x.c.rtype == _sql("Binary"),
            x.c.param == _sql("security-context"),
            *conditions,
        )
    )
    return or_(own, and_(r.c.type == _sql("Binary"), of_document))


def _reference_only(
    r: FromClause,
    types: Collection[str] | None = None,
    patient: str | None = None,
    in_record: bool = False,
) -> ColumnElement[bool]:
    """The filter of callers who read reference data only (staff, unidentified professionals)."""
    return r.c.category == REFERENCE


def _sql(value: str) -> ColumnElement[str]:
    """A constant written into the SQL (the statement stays the same from request to request, and
    has fewer parameters: drivers and PostgreSQL then reuse its parsed and planned forms)."""
    return literal_column("'" + value.replace("'", "''") + "'", String)


@cache
def _sql_list(values: tuple[str, ...]) -> list[ColumnElement[str]]:
    return [_sql(v) for v in values]


_PARTS_KEPT = 1024
"""Professionals whose read-filter parts a policy keeps (SQL only: no right is kept)."""


@dataclass(frozen=True, slots=True)
class CallerFacts:
    """What no row changes in a professional's read filter, read once when a request starts (in
    the statement that checks the token's revocation: ``AccessPolicy.caller_facts_columns``):
    the request's statements then leave out the sub-queries these facts decide. PostgreSQL plans
    every sub-query of a search at each execution, and these were a quarter of the professional's
    planning. They stand for ``FACTS_SECONDS`` after they were read (``access.session``), as a
    statement run then would have read the same; a session without them (portal pages, jobs,
    exports) or past that time reads them in every statement."""

    licensed: bool
    """The directory does not mark the professional inactive."""
    restricted: bool
    """Some holder blocks the professional or masks an item from them."""
    patient: str | None = None
    """The patient the request names (``[type]?patient=``, ``Patient/[id]/…``), if any."""
    cares: frozenset[str] = frozenset()
    """The kinds (``PROFESSION``, ``REFERENT``) of the professional's relationships with
    ``patient`` that give access now: in force, the record open to professionals, not blocked
    (empty where they were not read: no patient named, or emergency overrides enabled)."""
    any_referent: bool = False
    """The professional has a referring physician's relationship not ended nor revoked, with
    any holder (``patient`` included; begun or not)."""
    read_at: float = field(default_factory=time.monotonic, compare=False)
    """When they were read (``time.monotonic``): not part of what they say."""

    def kinds_for(self, patient: str | None) -> frozenset[str] | None:
        """The kinds of care that decide, alone, what a statement reading only rows of
        ``patient``'s compartment may return (None: the full filter must decide).

        A row of the patient's record may also be in another holder's compartment, and the
        professional's relationship with that holder may give more: the other kind's column of
        the matrix. Hence the answer holds only where the professional has no relationship of a
        kind missing here: every relationship gives what its kind gives (its own validity
        aside), and those with ``patient`` are checked valid. The professional's kind must be
        among them (every professional has one: a referring physician's alone is left to the
        statements, which read every relationship)."""
        if patient is None or patient != self.patient or PROFESSION not in self.cares:
            return None
        if self.any_referent and REFERENT not in self.cares:
            return None
        return self.cares


FACTS_SECONDS = 2.0
"""How long after they were read a caller's facts stand in for the statements' own checks. A
request reads its data within milliseconds of its token check; one that runs longer (a body sent
slowly, a long batch) must not miss a block or a withdrawn licence that came meanwhile. For a
named patient the facts include the relationships' own validity (their end or revocation, the
record's closure or activation window, the facility's authorisation, a block): a change of
these reaches the statements of a request at most this long after its token check."""


def _now() -> datetime:
    return utcnow()


@dataclass(frozen=True, slots=True)
class _Shortcut:
    """A statement reads only rows of the record of ``patient`` (bound), with whom the
    professional's relationships in force are of ``kinds`` (``CallerFacts.kinds_for``);
    ``in_record``: the statement's own condition keeps only the rows of that record (an
    ``AccessFilter`` promise), so the filter does not check it again."""

    patient: BindParameter[str]
    kinds: frozenset[str]
    in_record: bool = False


def _patient_bind(patient: str) -> BindParameter[str]:
    return bindparam("access_patient", patient, type_=_AC.c.patient_id.type)


@dataclass(frozen=True, slots=True)
class _ProfessionalParts:
    """A professional's read filter, as SQL that holds no right: the relationships, the records'
    status, the blocks, the masks and the licence are all read by each statement, as of the
    moment it runs. Kept by the policy per professional, so that a request does not build them
    again (building these SQLAlchemy constructs cost more than running them). The statements
    keep the same text from request to request, with constants written in and the
    professional's identifiers bound once each: PostgreSQL and the driver reuse their plans."""

    practitioner: BindParameter[str]
    organization: BindParameter[str] | None
    role: BindParameter[str] | None
    """The PractitionerRole the professional signed in with (author of very restricted items)."""
    binds: tuple[BindParameter[Any], ...]
    """Every parameter of the filter (the professional's ids, the clock): nothing else is bound."""
    shape: str
    """What the filter's SQL text depends on besides the row's table (part of its cache key)."""
    licensed: ColumnElement[bool]
    who: ColumnElement[bool]
    """A relationship ``_CR`` is the professional's, or their authorised organisation's."""
    valid: tuple[ColumnElement[bool], ...]
    """Conditions on ``_CR``: the relationship is the professional's, in force now, with a
    record open to professionals (its context and the blocks aside)."""
    unblocked: ColumnElement[bool]
    """The holder of ``_CR`` does not block the professional."""
    not_ended: ColumnElement[bool]
    """The relationship ``_CR`` has no end, or one still to come."""
    cared: tuple[ColumnElement[bool], ...]
    """Conditions on ``_AC`` joined to ``_CR``: an active relationship of one of the contexts
    of care, with a record open to professionals, and not blocked."""
    overridden: tuple[ColumnElement[bool], ...] | None
    """The same for an emergency override (blocks do not apply); None: no overrides."""
    restricted: ColumnElement[bool] | None
    """Some holder blocks or masks something from the professional (uncorrelated: PostgreSQL
    tests it once per statement, and looks for each relationship's block and each row's mask
    only when it holds); None: the request's facts say none does."""
    anyone_restricts: ColumnElement[bool]
    """The same condition, whatever the facts say (for the facts themselves)."""
    either: tuple[str, ...]
    readable: tuple[str, ...]
    referent_readable: tuple[str, ...]
    only_profession: tuple[str, ...]
    only_referent: tuple[str, ...]
    full_profession: tuple[str, ...]
    """Categories the profession's column reads and writes: its restricted (R) items are readable."""
    full_referent: tuple[str, ...]
    """The same for the referring physician's column."""

    @classmethod
    def build(
        cls, policy: AccessPolicy, p: Principal, facts: CallerFacts | None = None
    ) -> _ProfessionalParts:
        """The parts for ``p``; with ``facts`` (licensed), those the facts decide left out."""
        assert p.practitioner_id and p.profession
        readable, referent_readable = policy._readable(p.profession)
        cr, ar, status = _CR, _AR, _RS
        practitioner = bindparam("access_practitioner", p.practitioner_id, type_=cr.c.practitioner_id.type)
        # the clock is read when a statement runs; each value is one parameter, however often named
        now = bindparam("access_now", callable_=_now, type_=cr.c.starts.type)
        days = timedelta(days=policy.settings.activation_window_days)
        window = bindparam("access_window", callable_=lambda: _now() - days, type_=status.c.letter_sent.type)
        who = cr.c.practitioner_id == practitioner
        if p.organization_id:
            organization = bindparam(
                "access_organization", p.organization_id, type_=cr.c.organization_id.type
            )
            who = or_(
                who,
                and_(
                    cr.c.practitioner_id.is_(None),
                    cr.c.organization_id == organization,
                    _authorised(organization),
                ),
            )
        role = (
            bindparam("access_role", p.practitioner_role_id, type_=_AU.c.target_id.type)
            if p.practitioner_role_id
            else None
        )
        not_ended = or_(cr.c.ends.is_(None), cr.c.ends > now)
        valid = (
            who,
            cr.c.starts <= now,
            not_ended,
            cr.c.revoked_at.is_(None),
            ~exists(
                select(_ONE)
                .select_from(status)
                .where(
                    status.c.patient_id == cr.c.patient_id,
                    or_(
                        status.c.status != _sql("open"),
                        and_(
                            status.c.activated_at.is_(None),
                            status.c.letter_sent.is_not(None),
                            status.c.letter_sent > window,
                        ),
                    ),
                )
            ),
        )
        relationship = (_AC.c.patient_id == cr.c.patient_id, *valid)
        # blocks and masks are rare: their per-row checks run only when the professional has one
        # (known from the request's facts, or tested once by the statement)
        anyone_restricts = exists(
            select(_ONE)
            .select_from(ar)
            .where(ar.c.practitioner_id == practitioner, ar.c.removed_at.is_(None))
        )
        restricted: ColumnElement[bool] | None = anyone_restricts
        blocked = exists(
            select(_ONE)
            .select_from(ar)
            .where(
                ar.c.patient_id == cr.c.patient_id,
                ar.c.practitioner_id == practitioner,
                ar.c.kind == _sql("block"),
                ar.c.removed_at.is_(None),
            )
        )
        binds = (
            (practitioner, now, window)
            + ((organization,) if p.organization_id else ())
            + ((role,) if role is not None else ())
        )
        full_profession, full_referent = policy._full(p.profession)
        either = tuple(sorted(set(readable) | set(referent_readable)))
        only_profession = tuple(sorted(set(readable) - set(referent_readable)))
        only_referent = tuple(sorted(set(referent_readable) - set(readable)))
        override = policy.settings.emergency_override
        unrestricted = facts is not None and not facts.restricted
        if unrestricted:
            restricted = None
        shape = repr(
            (
                either,
                tuple(readable),
                only_profession,
                only_referent,
                tuple(referent_readable),
                bool(p.organization_id),
                override,
                full_profession,
                full_referent,
                role is not None,
                facts is None,
                unrestricted,
            )
        )
        parts = cls(
            practitioner=practitioner,
            organization=organization if p.organization_id else None,
            role=role,
            binds=binds,
            shape=shape,
            licensed=_in_directory("Practitioner", practitioner, _LR, _LT) if facts is None else true(),
            who=who,
            valid=valid,
            unblocked=~blocked,
            not_ended=not_ended,
            cared=(
                cr.c.context.in_(_sql_list((*PROFESSIONAL_CONTEXTS, REFERENT))),
                *relationship,
                *(() if restricted is None else (~and_(restricted, blocked),)),
            ),
            overridden=(cr.c.context == _sql(OVERRIDE), *relationship)
            if policy.settings.emergency_override
            else None,
            restricted=restricted,
            anyone_restricts=anyone_restricts,
            either=either,
            readable=tuple(readable),
            referent_readable=tuple(referent_readable),
            only_profession=only_profession,
            only_referent=only_referent,
            full_profession=full_profession,
            full_referent=full_referent,
        )
        parts._check_binds()
        return parts

    def _check_binds(self) -> None:
        """The cached statements take every value from ``binds`` (see ``_ProfessionalFilter``):
        a value bound anywhere else in the filter would be reused from another request."""
        patient = _patient_bind("")
        known = {id(b) for b in (*self.binds, patient)}
        stray = [
            b
            for condition in (
                self.condition(resource),
                self.condition(resource, _ANY_ROWS, _Shortcut(patient, frozenset((PROFESSION, REFERENT)))),
                *self.facts_sql(patient),
            )
            for b in iterate(condition)
            if isinstance(b, BindParameter) and id(b) not in known
        ]
        if stray:
            raise RuntimeError(f"the professional read filter binds values outside its parameters: {stray}")

    def facts_sql(self, patient: BindParameter[str] | None) -> tuple[ColumnElement[bool], ...]:
        """The ``CallerFacts`` as SQL: the directory lists the professional; some holder
        restricts them; and with ``patient``: a relationship of the profession's kind with
        ``patient`` gives access now; one of the referring physician's does; the professional
        has a referring physician's relationship not ended, with anyone (its other conditions
        aside: the answer may only be larger than the filter's)."""
        said = (_in_directory("Practitioner", self.practitioner, _LR, _LT), self.anyone_restricts)
        if patient is None:
            return said
        cr = _CR
        with_patient = (cr.c.patient_id == patient, *self.valid, self.unblocked)
        return (
            *said,
            exists(
                select(_ONE)
                .select_from(cr)
                .where(cr.c.context.in_(_sql_list(PROFESSIONAL_CONTEXTS)), *with_patient)
            ),
            exists(select(_ONE).select_from(cr).where(cr.c.context == _sql(REFERENT), *with_patient)),
            exists(
                select(_ONE)
                .select_from(cr)
                .where(
                    cr.c.context == _sql(REFERENT),
                    self.who,
                    cr.c.revoked_at.is_(None),
                    self.not_ended,
                )
            ),
        )

    def filter(
        self, r: FromClause, types: Collection[str] | None = None, shortcut: _Shortcut | None = None
    ) -> ColumnElement[bool]:
        """The filter on ``r``, as a construct whose SQL SQLAlchemy caches by its shape."""
        return _ProfessionalFilter(self, r, _Rows.of(types), shortcut)

    def condition(
        self, r: FromClause, rows: _Rows = _ANY_ROWS, shortcut: _Shortcut | None = None
    ) -> ColumnElement[bool]:
        """The filter on the ``resource`` rows of ``r`` (of the kinds ``rows``); with a
        ``shortcut``, on rows of one holder's record whose relationships the request read."""
        ar = _AR
        allowed = self._cared(r, rows) if shortcut is None else self._cared_for(r, rows, shortcut)
        if self.restricted is not None:
            mask = _restricts(
                r,
                ar,
                ar.c.kind == _sql("mask"),
                ar.c.practitioner_id == self.practitioner,
                ar.c.removed_at.is_(None),
                rows=rows,
            )
            allowed = and_(allowed, ~and_(self.restricted, mask))
        if self.overridden is not None:
            # the override lifts the holder's restrictions, never the author's (nor the matrix)
            overridden = exists(
                select(_ONE)
                .select_from(_AC, _CR)
                .where(_AC.c.res_pk == r.c.pk, *self.overridden, ordinary_confidentiality(r))
            )
            allowed = _as_sql(_any(allowed, _all(rows.category_in(r, self.readable), overridden)))
        # the holder's objections to filing and requests on items (``access.requests``): an
        # objected item is in no professional's view; a request's Task only in its author's
        withheld = AccessPolicy._filed(r, rows)
        reference = rows.category_in(r, (REFERENCE,))
        if not rows.task:
            return _as_sql(_any(reference, _all(self.licensed, allowed, withheld)))
        withheld = _all(withheld, ~AccessPolicy._record_request(r))
        authors = [_RQ.c.author_practitioner_id == self.practitioner]
        if self.organization is not None:
            authors.append(_RQ.c.owner_organization_id == self.organization)
        owned = AccessPolicy._record_request(r, _RQ.c.kind.in_(_sql_list(ADDRESSED)), or_(*authors))
        return _as_sql(_any(reference, and_(self.licensed, or_(_as_sql(_all(allowed, withheld)), owned))))

    def _cared(self, r: FromClause, rows: _Rows) -> ColumnElement[bool]:
        """Some relationship of the professional in force with a holder of row ``r`` lets them
        read it (its category and confidentiality)."""
        cr = _CR
        # a relationship opens its own column's categories (``either`` is checked on the row)
        category: list[_Cond] = []
        if self.only_profession:
            category.append(
                _any(
                    cr.c.context != _sql(REFERENT),
                    rows.category_known_in(r, self.only_profession, negated=True),
                )
            )
        if self.only_referent:
            category.append(
                _any(
                    cr.c.context == _sql(REFERENT),
                    rows.category_known_in(r, self.only_referent, negated=True),
                )
            )
        # nested, each behind OFFSET 0: PostgreSQL then plans the record's rows and the
        # relationships as two one-table sub-plans, instead of a join (and a hashed alternative
        # of it) to plan at every statement: planning the filter took longer than running it
        relationship = (
            select(_ONE)
            .select_from(cr)
            .where(*self.cared, _as_sql(_all(*category, self._confidential(r, rows))))
            .offset(_ZERO)
            .correlate(r, _AC)
        )
        cared = exists(
            select(_ONE)
            .select_from(_AC)
            .where(_AC.c.res_pk == r.c.pk, exists(relationship))
            .offset(_ZERO)
            .correlate(r)
        )
        return _as_sql(_all(rows.category_in(r, self.either), cared))

    def _cared_for(self, r: FromClause, rows: _Rows, shortcut: _Shortcut) -> ColumnElement[bool]:
        """``_cared`` for rows of one holder's record, where the request read which kinds of
        relationship with that holder are in force (``CallerFacts.kinds_for``): the row is in the
        holder's record, and one of those kinds lets the professional read it. The same answer,
        without joining the relationships, their records' status and the blocks for each row."""
        grants = []
        if PROFESSION in shortcut.kinds:
            grants.append(
                _all(rows.category_in(r, self.readable), self._confidential(r, rows, referent=False))
            )
        if REFERENT in shortcut.kinds:
            grants.append(
                _all(rows.category_in(r, self.referent_readable), self._confidential(r, rows, referent=True))
            )
        in_record: _Cond = shortcut.in_record or exists(
            select(_ONE)
            .select_from(_AC)
            .where(_AC.c.res_pk == r.c.pk, _AC.c.patient_id == shortcut.patient)
            .offset(_ZERO)
        )
        return _as_sql(_all(in_record, _any(*grants)))

    def _confidential(self, r: FromClause, rows: _Rows, referent: bool | None = None) -> _Cond:
        """The relationship ``_CR`` (or, given, one of the referring physician or not) lets the
        professional read row ``r`` at its confidentiality: any for N, L, M, U (or none); R when
        the relationship's column reads and writes the row's category; V when it is the
        referring physician's, or the professional is on the author's side of the item (of its
        document, for a Binary). Within a way to read the row that checked its category
        (``_Rows.category_known_in``)."""
        cr = _CR
        full: _Cond
        very: _Cond
        if referent is None:
            if self.full_referent == self.full_profession:  # both columns alike: a shorter statement
                full = rows.category_known_in(r, self.full_profession)
            else:
                full = _any(
                    _all(cr.c.context == _sql(REFERENT), rows.category_known_in(r, self.full_referent)),
                    _all(cr.c.context != _sql(REFERENT), rows.category_known_in(r, self.full_profession)),
                )
            very = _any(cr.c.context == _sql(REFERENT), self._authored(r, rows))
        else:
            full = rows.category_known_in(r, self.full_referent if referent else self.full_profession)
            very = True if referent else self._authored(r, rows)
        return _any(
            ordinary_confidentiality(r),
            _all(r.c.confidentiality == _sql(RESTRICTED), full),
            _all(r.c.confidentiality == _sql(VERY_RESTRICTED), very),
        )

    def _authored(self, r: FromClause, rows: _Rows) -> _Cond:
        """The professional, their PractitionerRole or the organisation they act for is an
        ``author`` of row ``r`` (by its index rows; a List's ``source``: a submission set), or of
        the document a Binary's ``securityContext`` names. A DocumentReference's author named
        through a contained PractitionerRole is indexed as that role's practitioner and
        organisation (``fhir.indexer``); any other contained author is not recognised (the
        decision fails closed)."""

        def me(a: FromClause) -> ColumnElement[bool]:
            who = [and_(a.c.target_type == _sql("Practitioner"), a.c.target_id == self.practitioner)]
            if self.role is not None:
                who.append(and_(a.c.target_type == _sql("PractitionerRole"), a.c.target_id == self.role))
            if self.organization is not None:
                who.append(and_(a.c.target_type == _sql("Organization"), a.c.target_id == self.organization))
            return or_(*who)

        au, x, d, aa = _AU, _AX, _AD, _AA
        # nested in the relationship's EXISTS: correlated to the row explicitly (SQLAlchemy
        # correlates automatically with the immediately enclosing statement only). Behind
        # OFFSET 0, as the record check of ``_cared_for``: PostgreSQL would otherwise plan a
        # hashed alternative of each (over the whole index table, never the one it runs). Rows
        # of types without authors (a Patient) have none to look for
        own: _Cond = False
        if rows.authored:
            own = exists(
                select(_ONE)
                .select_from(au)
                .where(
                    au.c.res_pk == r.c.pk,
                    or_(
                        au.c.param == _sql("author"),
                        and_(au.c.rtype == _sql("List"), au.c.param == _sql("source")),
                    ),
                    me(au),
                )
                .offset(_ZERO)
                .correlate(r)
            )
        if not rows.binary:
            return own
        # the Binary's link, its document, the document's author: nested rather than joined,
        # three one-table sub-plans (planning the three-table join cost 0.3 ms a statement)
        authored = (
            select(_ONE)
            .select_from(aa)
            .where(aa.c.res_pk == d.c.pk, aa.c.param == _sql("author"), me(aa))
            .offset(_ZERO)
            .correlate(d)
        )
        document = (
            select(_ONE)
            .select_from(d)
            .where(d.c.type == x.c.target_type, d.c.id == x.c.target_id, exists(authored))
            .offset(_ZERO)
            .correlate(x)
        )
        of_document = exists(
            select(_ONE)
            .select_from(x)
            .where(
                x.c.res_pk == r.c.pk,
                x.c.rtype == _sql("Binary"),
                x.c.param == _sql("security-context"),
                exists(document),
            )
            .offset(_ZERO)
            .correlate(r)
        )
        return _any(own, and_(r.c.type == _sql("Binary"), of_document))


class _Shaped(ColumnElement[Any]):
    """An element standing for SQL of a professional's ``_ProfessionalParts``, built when it is
    compiled.

    SQLAlchemy caches a statement's SQL under a key it computes from every element of the
    statement, at every execution: for the filter's full construct, computing that key (and
    building the construct) cost more than running the statement in PostgreSQL. The key of
    this element is its ``shape`` (what the SQL text depends on) and its bound parameters, so
    the SQL is compiled once per shape and each execution only binds its values (matched by
    position to the parameters of the cached SQL: hence every value of the SQL is one of
    ``binds``, which the parts check when they are built)."""

    inherit_cache = False
    _traverse_internals = [
        ("shape", InternalTraversal.dp_string),
        ("binds", InternalTraversal.dp_clauseelement_tuple),
    ]
    shape: str
    binds: tuple[BindParameter[Any], ...]

    @property
    def _from_objects(self) -> list[FromClause]:
        return []


class _ProfessionalFilter(_Shaped):
    """A professional's read filter on the rows of ``r``, compiled from its parts' ``condition``
    (its key: the shape, the row's table, the bound parameters)."""

    __visit_name__ = "sharedcare_professional_filter"
    inherit_cache = True  # (SQLAlchemy keys it by its class and its traversal, ``r`` added)
    type = Boolean()
    _traverse_internals = [*_Shaped._traverse_internals, ("r", InternalTraversal.dp_clauseelement)]

    def __init__(
        self, parts: _ProfessionalParts, r: FromClause, rows: _Rows, shortcut: _Shortcut | None = None
    ) -> None:
        self.parts = parts
        self.r = r
        self.rows = rows
        self.shortcut = shortcut
        kinds = ""
        self.binds = parts.binds
        if shortcut is not None:
            kinds = ",".join(sorted(shortcut.kinds))
            if shortcut.in_record:
                kinds += "@"  # no record check: the patient's id is not bound
            else:
                self.binds = (*parts.binds, shortcut.patient)
        self.shape = f"{parts.shape}{rows.shape}{kinds}"

    @property
    def _from_objects(self) -> list[FromClause]:
        return [self.r]


@compiles(_ProfessionalFilter)
def _compile_professional_filter(element: _ProfessionalFilter, compiler: Any, **kw: Any) -> str:
    # in parentheses: the enclosing statement takes the element for a single term
    condition = element.parts.condition(element.r, element.rows, element.shortcut)
    return "(" + str(compiler.process(condition, **kw)) + ")"


class _CallerFacts(_Shaped):
    """The ``CallerFacts`` (``_ProfessionalParts.facts_sql``) as one integer, a bit per fact
    (``_FACT_BITS``): the token check of each request selects it (computing the cache key of
    the whole construct, or of one element per fact, cost more than PostgreSQL took to answer)."""

    __visit_name__ = "sharedcare_caller_facts"
    inherit_cache = True  # (SQLAlchemy keys it by its class and the base's traversal)
    type = Integer()

    def __init__(self, parts: _ProfessionalParts, patient: BindParameter[str] | None) -> None:
        self.parts = parts
        self.patient = patient
        self.shape = f"facts{patient is not None:d}{parts.shape}"
        self.binds = parts.binds if patient is None else (*parts.binds, patient)


_FACT_BITS = ("licensed", "restricted", PROFESSION, REFERENT, "any_referent")
"""What each bit of ``_CallerFacts`` says, from the lowest (``facts_sql`` in this order)."""


@compiles(_CallerFacts)
def _compile_caller_facts(element: _CallerFacts, compiler: Any, **kw: Any) -> str:
    bits = [
        case((fact, literal_column(str(1 << i))), else_=_ZERO)
        for i, fact in enumerate(element.parts.facts_sql(element.patient))
    ]
    return "(" + " + ".join(str(compiler.process(b, **kw)) for b in bits) + ")"


_PartsKey = tuple[str, str | None, str, str | None, tuple[bool, bool] | None]


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
        self._parts: dict[_PartsKey, _ProfessionalParts] = {}

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
            who = or_(
                who,
                and_(
                    cr.c.practitioner_id.is_(None),
                    cr.c.organization_id == p.organization_id,
                    _authorised(p.organization_id, resource.alias("cor"), idx_token.alias("cot")),
                ),
            )
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
    def read_filter(
        self, p: Principal, now: datetime, facts: CallerFacts | None = None
    ) -> AccessFilter | None:
        """The SQL condition a ``resource`` row must meet to be read by ``p``; None: no restriction.
        ``facts``: those of ``caller_facts`` read at the start of the request, if any."""
        if p.kind is PrincipalKind.SYSTEM:
            return None if self.is_trusted(p) else self._system_filter(p, now)
        if p.is_staff:
            return _reference_only
        if p.kind in (PrincipalKind.PATIENT, PrincipalKind.REPRESENTATIVE):
            return self._holder_filter(p, now)
        if p.kind is PrincipalKind.PROFESSIONAL:
            return self._professional_filter(p, now, facts)
        return lambda r, types=None, patient=None, in_record=False: false()

    def caller_facts_columns(
        self, p: Principal, patient: str | None = None
    ) -> tuple[ColumnElement[Any], ...]:
        """SQL reading the ``CallerFacts`` of ``p`` (none but for a professional of the
        directory): the token check selects them with the revocation list, in one statement.
        ``patient``: the patient the request names, whose care by ``p`` they then include."""
        if p.kind is not PrincipalKind.PROFESSIONAL or not p.practitioner_id or not p.profession:
            return ()
        parts = self._professional_parts(p)  # kept: the facts are SQL of the parts, no right
        if patient is None or self.settings.emergency_override:
            # (under overrides, every statement checks the relationships itself)
            return (_CallerFacts(parts, None),)
        return (_CallerFacts(parts, _patient_bind(patient)),)

    @staticmethod
    def caller_facts(values: Sequence[Any], patient: str | None = None) -> CallerFacts | None:
        """The facts of the values ``caller_facts_columns`` selected for ``patient`` (None: no
        facts)."""
        if len(values) != 1:
            return None
        said = {name for i, name in enumerate(_FACT_BITS) if int(values[0]) >> i & 1}
        cares = frozenset(said & {PROFESSION, REFERENT})
        return CallerFacts(
            licensed="licensed" in said,
            restricted="restricted" in said,
            patient=patient,
            cares=cares,
            any_referent="any_referent" in said,
        )

    @staticmethod
    def is_trusted(p: Principal) -> bool:
        """Platform clients (the demo/operator client, imports) act for the agency itself."""
        return p.kind is PrincipalKind.SYSTEM and p.trusted

    def _holder_filter(self, p: Principal, now: datetime) -> AccessFilter:
        delegated = self.holder_patients(p, now)
        c = resource_compartment
        s = record_status

        def flt(
            r: FromClause,
            types: Collection[str] | None = None,
            patient: str | None = None,
            in_record: bool = False,
        ) -> ColumnElement[bool]:
            mine: list[ColumnElement[bool]] = [c.c.patient_id.in_(delegated)]
            if p.patient_id:
                mine.append(c.c.patient_id == p.patient_id)
            return or_(
                r.c.category == REFERENCE,
                and_(
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
                    ~self._pending_disclosure(r, _Rows.of(types)),
                    # an upload no document claims is not an item of the record yet: the
                    # document that files it may hold it back for a consultation d'annonce
                    # (its own uploader reads it back: ``reads_own_upload``)
                    or_(r.c.category.is_(None), r.c.category != _sql(DataCategory.UNFILED.value)),
                ),
            )

        return flt

    def _professional_filter(self, p: Principal, now: datetime, facts: CallerFacts | None) -> AccessFilter:
        """Reference data; while the professional's licence stands, the categories their
        profession reads of the records of holders in their care, and those of the ``mr``
        column where they are the referring physician, but for the items the holders mask from
        them; under an emergency override, the categories the profession reads, masks lifted.

        The relationships are checked as of the moment each statement runs (the clock is bound
        when it executes), so the filter's parts are built once per professional and kept
        (``_professional_parts``); only the conditions on the row itself are built for each
        statement."""
        if not p.practitioner_id or not p.profession or (facts is not None and not facts.licensed):
            return _reference_only
        parts = self._professional_parts(p, facts)

        def flt(
            r: FromClause,
            types: Collection[str] | None = None,
            patient: str | None = None,
            in_record: bool = False,
        ) -> ColumnElement[bool]:
            kinds = None if facts is None or parts.overridden is not None else facts.kinds_for(patient)
            if kinds is None or patient is None:  # (kinds_for gives None without a patient)
                return parts.filter(r, types)
            return parts.filter(r, types, _Shortcut(_patient_bind(patient), kinds, in_record))

        return flt

    def _professional_parts(self, p: Principal, facts: CallerFacts | None = None) -> _ProfessionalParts:
        """The parts of ``p``'s filter: built at the first request of ``p`` (with such facts) and
        kept (SQL, no right)."""
        said = None if facts is None else (facts.licensed, facts.restricted)  # all ``build`` reads
        key: _PartsKey = (
            p.practitioner_id or "",
            p.organization_id,
            p.profession or "",
            p.practitioner_role_id,
            said,
        )
        parts = self._parts.get(key)
        if parts is None:
            if len(self._parts) >= _PARTS_KEPT:
                self._parts.clear()
            parts = self._parts[key] = _ProfessionalParts.build(self, p, facts)
        return parts

    def _readable(self, profession: str) -> tuple[list[str], list[str]]:
        """Categories the profession's column reads, and those the referring physician reads."""
        column = self.matrix.column_for_profession(profession) or profession
        readable = sorted(self.matrix.readable_categories(column) | {IDENTITY})
        referent_readable = sorted(self.matrix.readable_categories("mr") | {IDENTITY})
        return readable, referent_readable

    def _full(self, profession: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Categories the profession's column reads and writes, and those of the referring
        physician's: their restricted (R) items are readable. Identity counts as full for every
        party in care, as for writing (``writable_patients``)."""
        column = self.matrix.column_for_profession(profession) or profession
        full = self.matrix.writable_categories(column) & self.matrix.readable_categories(column)
        referent = self.matrix.writable_categories("mr") & self.matrix.readable_categories("mr")
        return tuple(sorted(full | {IDENTITY})), tuple(sorted(referent | {IDENTITY}))

    def _system_filter(self, p: Principal, now: datetime) -> AccessFilter:
        if not p.organization_id:
            return _reference_only
        cr = care_relationship
        registered = select(cr.c.patient_id).where(
            cr.c.organization_id == p.organization_id,
            cr.c.context.in_(list(PROFESSIONAL_CONTEXTS)),
            self._active(cr, now),
            self._open(cr.c.patient_id),
            _authorised(cr.c.organization_id, resource.alias("sor"), idx_token.alias("sot")),
        )
        owned = (_RQ.c.kind.in_(_sql_list(ADDRESSED)), _RQ.c.owner_organization_id == p.organization_id)

        def flt(
            r: FromClause,
            types: Collection[str] | None = None,
            patient: str | None = None,
            in_record: bool = False,
        ) -> ColumnElement[bool]:
            rows = _Rows.of(types)
            identity = and_(
                r.c.category == IDENTITY,
                self._in_compartment(r, registered),
                _as_sql(self._filed(r, rows, IDENTITY)),
                or_(r.c.confidentiality.is_(None), r.c.confidentiality != VERY_RESTRICTED),
            )
            if not rows.task:
                return or_(r.c.category == REFERENCE, identity)
            return or_(r.c.category == REFERENCE, identity, self._record_request(r, *owned))

        return flt

    # -- the holder's rights on items (``access.requests``) -----------------------------------
    @staticmethod
    def _pending_disclosure(r: FromClause, rows: _Rows = _ANY_ROWS) -> ColumnElement[bool]:
        """The item waits for its consultation d'annonce: its ``_security`` index holds the
        pending code (the store indexes every write). A deleted item has no index rows: its
        last live version's content decides, so its history stays hidden too."""
        t, v = _PT, _PV
        tagged = exists(
            select(_ONE)
            .select_from(t)
            .where(
                t.c.rtype == r.c.type,
                t.c.param == _sql("_security"),
                t.c.code == _sql(PENDING_DISCLOSURE),
                t.c.system == _sql(DISCLOSURE_SYSTEM),
                t.c.res_pk == r.c.pk,
            )
        )
        was_tagged = exists(
            select(_ONE)
            .select_from(v)
            .where(
                v.c.res_pk == r.c.pk,
                v.c.version == r.c.version - 1,
                v.c.content.like(_sql(f'%"code":"{PENDING_DISCLOSURE}"%')),
            )
        )
        if not rows.binary:
            return or_(tagged, and_(r.c.deleted, was_tagged))
        x, d = _CX, _PD
        document_tagged = and_(
            r.c.type == _sql("Binary"),
            exists(
                select(_ONE)
                .select_from(x)
                .join(d, and_(d.c.type == x.c.target_type, d.c.id == x.c.target_id))
                .join(t, and_(t.c.res_pk == d.c.pk, t.c.rtype == d.c.type))
                .where(
                    x.c.res_pk == r.c.pk,
                    x.c.rtype == _sql("Binary"),
                    x.c.param == _sql("security-context"),
                    t.c.param == _sql("_security"),
                    t.c.code == _sql(PENDING_DISCLOSURE),
                    t.c.system == _sql(DISCLOSURE_SYSTEM),
                )
            ),
        )
        return or_(tagged, and_(r.c.deleted, was_tagged), document_tagged)

    @staticmethod
    def _filed(r: FromClause, rows: _Rows = _ANY_ROWS, category: str | None = None) -> _Cond:
        """The holder has not objected to the item being filed (an objected item is in no
        professional's or system's view). Items of a category no objection can be about
        (``requests.NOT_OBJECTABLE``: identity, traces…) have none to look for: decided here
        where the rows' types, or the enclosing condition (``category``), fix the category. Both
        are categories of types alone (``categories.category_by_type``; no content gives them),
        so such an item never had another category an objection could have been made for."""
        known = category or rows.category
        if known is not None and known in NOT_OBJECTABLE:
            return True
        return ~_restricts(r, _FO, _FO.c.removed_at.is_(None), rows=rows)

    @staticmethod
    def _record_request(r: FromClause, *conditions: ColumnElement[bool]) -> ColumnElement[bool]:
        """The row is the Task of a holder's rectification or erasure request (meeting
        ``conditions`` on its ``record_request`` row)."""
        return and_(
            r.c.type == _sql("Task"),
            exists(select(_ONE).select_from(_RQ).where(_RQ.c.id == r.c.id, *conditions)),
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
            if target.category not in (PERSONAL, DataCategory.VACCINATION_REPORTED):
                return "holders write only in their personal expression area and the doses they report"
            return None  # the patients are checked against own_patients by the caller
        if p.kind in (PrincipalKind.SYSTEM, PrincipalKind.PROFESSIONAL) and p.organization_id:
            # a withdrawn authorisation (the directory marks the Organization inactive) stops
            # the facility's system and whoever acts through it from writing, as from reading
            db: Any = conn  # a Connection (typed ``object`` in the signature)
            if not db.execute(select(_authorised(p.organization_id))).scalar():
                return (
                    f"the authorisation of the care facility Organization/{p.organization_id} is "
                    "withdrawn (inactive in the directory): nothing may be written on its behalf"
                )
        if p.kind is PrincipalKind.SYSTEM:
            return None if p.organization_id else "a system client must act for an organisation"
        if p.kind is PrincipalKind.PROFESSIONAL:
            if not p.practitioner_id or not p.profession:
                return "the professional is not in the national directory"
            return None  # relationships and matrix: checked in SQL by ``writable_patients``
        return "not allowed"

    def change_denial(self, p: Principal, current: Mapping[str, Any]) -> str | None:
        """Why ``p`` may not change or delete the stored resource ``current`` although its category
        and record allow writing (None: allowed). A document is replaced, deprecated or marked in
        error only by its author's side (IHE MHD, ``docs/documents.md``): ``authored_by``."""
        if self.is_trusted(p) or current.get("resourceType") not in AUTHORED_TYPES:
            return None
        if authored_by(p, current):
            return None
        return "only the author of a document (its professional or organisation) may change it"

    def writable_patients(self, p: Principal, category: str, now: datetime) -> Select:
        """Patients whose record ``p`` may write data of ``category`` into (professionals)."""
        column = self.matrix.column_for_profession(p.profession or "") or (p.profession or "")
        parts: list[Select] = []
        if category in VACCINATION_CATEGORIES and not self.matrix.vaccinates(p.profession or ""):
            return select(care_relationship.c.patient_id).where(false())  # the CVE's own rights
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
        return select(d.c.patient_id).where(d.c.account_id == p.subject, delegation_in_force(d, now))

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

    # -- raw uploads (``documents.submission.upload``) ---------------------------------------------
    def reads_own_upload(
        self, conn: object, p: Principal, uploader: str, upload: WriteTarget, now: datetime
    ) -> bool:
        """Whether ``p`` reads back a raw upload no document claims yet, which ``read_filter``
        hides from every professional and system (category ``unfiled``: no column reads it).
        Only its uploader (``uploader``, the principal as ``documents.submission`` records it:
        kind and subject) does, and only while it could still write that content (``upload``:
        the record, and the category the content will be filed as) into the open record: who may
        replace the upload reads back the bytes it sent, and learns nothing else. Nobody else
        does: not even the holder's side, for others' uploads (``_holder_filter``)."""
        if p.is_staff:
            return False
        if uploader != f"{p.kind.value}:{p.subject}" or len(upload.patients) != 1 or not upload.category:
            return False
        if p.kind in (PrincipalKind.PATIENT, PrincipalKind.REPRESENTATIVE):
            (own,) = upload.patients
            db_: Any = conn  # a Connection (typed ``object`` as in ``write_denial``)
            mine = own == p.patient_id or own in set(db_.execute(self.holder_patients(p, now)).scalars())
            return mine and bool(db_.execute(select(self._open(literal(own)))).scalar())
        if p.kind not in (PrincipalKind.SYSTEM, PrincipalKind.PROFESSIONAL):
            return False
        if self.write_denial(conn, p, upload, now) is not None:
            return False
        (patient_id,) = upload.patients
        db: Any = conn  # a Connection (typed ``object`` as in ``write_denial``)
        if not db.execute(select(self._open(literal(patient_id)))).scalar():
            return False
        if p.kind is PrincipalKind.PROFESSIONAL:  # a system's right is its organisation's (above)
            allowed = self.writable_patients(p, upload.category, now).subquery()
            found = select(allowed.c.patient_id).where(allowed.c.patient_id == patient_id)
            return db.execute(found).first() is not None
        return True
