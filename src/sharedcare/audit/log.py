"""The audit log: append a record in the caller's transaction, query it, verify its chains.

Every act on the shared record (read, search, write, export, login, consent change, emergency
access) is recorded *in the same transaction as the act*: if the act rolls back, so does its
record; if the record cannot be written, the act fails. Records are hash-chained: each stores
the hash of its predecessor and ``sha256(canonical content + prev_hash)``. There are
:data:`~sharedcare.audit.models.CHAINS` independent chains, so concurrent appends on
PostgreSQL lock different head rows instead of queueing on one. See ``docs/audit.md``.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any

from sqlalchemy import Connection, Engine, Row, TextClause, bindparam, func, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit.models import (
    CHAINS,
    GENESIS_HASH,
    HASHED_COLUMNS,
    REDACTION_INTERACTION,
    audit_chain_head,
    audit_log,
    audit_tombstone,
)

__all__ = [
    "AuditAction",
    "AuditEntry",
    "AuditOutcome",
    "AuditRecord",
    "ChainProblem",
    "InvalidAuditRecord",
    "Purpose",
    "VerifyResult",
    "append",
    "append_all",
    "chain_heads",
    "content_hash",
    "get",
    "query",
    "record_for",
    "split_by_patient",
    "verify",
]


class AuditAction(StrEnum):
    """What was done: the closed vocabulary of the log (mapped to BALP codes in ``auditevent``)."""

    READ = "read"
    VREAD = "vread"
    HISTORY = "history"
    SEARCH = "search"
    CREATE = "create"
    UPDATE = "update"
    PATCH = "patch"
    DELETE = "delete"
    OPERATION = "operation"
    """A FHIR operation such as ``$everything``; ``interaction`` holds its name."""
    EXPORT = "export"
    LOGIN = "login"
    LOGOUT = "logout"
    CONSENT_CHANGE = "consent-change"
    """The holder (or a representative) changed an access choice: grant, block, hide, close…"""
    EMERGENCY_ACCESS = "emergency-access"
    """A professional started the emergency override (the acts under it carry ``emergency``)."""


class AuditOutcome(IntEnum):
    """FHIR R4 ``AuditEvent.outcome`` (http://hl7.org/fhir/audit-event-outcome)."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    """The act failed and may be retried: denied access, invalid input, wrong password."""
    SERIOUS_FAILURE = 8
    """The act was terminated (e.g. a time-out)."""
    MAJOR_FAILURE = 12
    """The act made the service unavailable."""


class Purpose(StrEnum):
    """Purposes of use (http://terminology.hl7.org/CodeSystem/v3-ActReason) the platform records."""

    TREAT = "TREAT"
    ETREAT = "ETREAT"
    PATRQT = "PATRQT"
    """The patient asked (the holder acting on their own record)."""
    PWATRNY = "PWATRNY"
    """A representative acting on the holder's behalf."""
    HSYSADMIN = "HSYSADMIN"
    """Agency staff: accounts, status and traces, never clinical content."""


class InvalidAuditRecord(ValueError):
    """The record cannot be written as given (e.g. an emergency access without a reason)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    """One act, as the caller describes it. Build it with :func:`record_for` from a Principal.

    ``resources`` are the references read or written (``Type/id`` or ``Type/id/_history/v``);
    ``query`` is what a search or operation asked (kept here, in the protected record, never in
    process logs); ``recorded`` defaults to the time of :func:`append`.
    """

    action: AuditAction
    principal_kind: str
    principal_subject: str
    principal_display: str = ""
    principal_ref: str | None = None
    profession: str | None = None
    organization_id: str | None = None
    organization_display: str | None = None
    client_id: str | None = None
    token_id: str | None = None
    interaction: str | None = None
    outcome: AuditOutcome = AuditOutcome.SUCCESS
    outcome_desc: str | None = None
    patient_id: str | None = None
    resources: tuple[str, ...] = ()
    query: str | None = None
    purpose: str | None = None
    emergency: bool = False
    emergency_reason: str | None = None
    source_ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    recorded: datetime | None = None

    def __post_init__(self) -> None:
        if self.emergency and not (self.emergency_reason or "").strip():
            raise InvalidAuditRecord("an emergency access must state its reason")
        if not self.principal_subject:
            raise InvalidAuditRecord("an audit record needs the principal's subject")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """A stored record: its position in its chain and its hash. ``record.recorded`` is set (UTC)."""

    pk: int
    chain: int
    seq: int
    record: AuditRecord
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class ChainProblem:
    """The first thing wrong in one chain. ``pk`` is None when the record is missing."""

    chain: int
    seq: int
    pk: int | None
    kind: str
    """One of ``altered``, ``broken-link``, ``missing``, ``duplicate``, ``head-mismatch``,
    ``unknown-chain``, ``anchor-mismatch``, ``unannounced-tombstone``, ``redaction-mismatch``."""
    detail: str

    def __str__(self) -> str:
        where = f"pk {self.pk}" if self.pk is not None else "no row"
        return f"chain {self.chain} seq {self.seq} ({where}): {self.kind}: {self.detail}"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """What :func:`verify` found: counts, and at most one problem per chain, in chain order.

    ``records`` counts the records present, ``tombstones`` those deleted with their patient's
    record (art. 8, ``audit.retention``) of which only the hashes are left."""

    records: int
    chains: int
    problems: tuple[ChainProblem, ...] = field(default=())
    tombstones: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> ChainProblem | None:
        return self.problems[0] if self.problems else None


# --------------------------------------------------------------------------------------------
# Building records
# --------------------------------------------------------------------------------------------

_DEFAULT_PURPOSE = {
    PrincipalKind.PATIENT: Purpose.PATRQT,
    PrincipalKind.REPRESENTATIVE: Purpose.PWATRNY,
    PrincipalKind.PROFESSIONAL: Purpose.TREAT,
    PrincipalKind.SYSTEM: Purpose.TREAT,
    PrincipalKind.HELPDESK: Purpose.HSYSADMIN,
    PrincipalKind.ADMIN: Purpose.HSYSADMIN,
}
_NO_PURPOSE = {AuditAction.LOGIN, AuditAction.LOGOUT}


def record_for(
    principal: Principal,
    action: AuditAction,
    *,
    patient_id: str | None = None,
    resources: Sequence[str] = (),
    interaction: str | None = None,
    outcome: AuditOutcome = AuditOutcome.SUCCESS,
    outcome_desc: str | None = None,
    query: str | None = None,
    purpose: str | None = None,
    emergency: bool = False,
    emergency_reason: str | None = None,
    organization_display: str | None = None,
    source_ip: str | None = None,
    user_agent: str | None = None,
    request_id: str | None = None,
) -> AuditRecord:
    """The record of ``principal`` doing ``action``, with the purpose of use defaulted.

    The default purpose is ETREAT under an emergency, else by principal kind (TREAT for
    professionals and systems, PATRQT for the holder, PWATRNY for representatives, HSYSADMIN
    for agency staff). Raises :class:`InvalidAuditRecord` for an emergency without a reason.
    """
    ref: str | None = None
    if principal.kind is PrincipalKind.PROFESSIONAL and principal.practitioner_id:
        ref = f"Practitioner/{principal.practitioner_id}"
    elif principal.kind is PrincipalKind.PATIENT and principal.patient_id:
        ref = f"Patient/{principal.patient_id}"
    if purpose is None and action not in _NO_PURPOSE:
        purpose = Purpose.ETREAT if emergency else _DEFAULT_PURPOSE.get(principal.kind)
    client = principal.client_id or (principal.subject if principal.kind is PrincipalKind.SYSTEM else None)
    return AuditRecord(
        action=action,
        principal_kind=str(principal.kind),
        principal_subject=principal.subject,
        principal_display=principal.display,
        principal_ref=ref,
        profession=principal.profession,
        organization_id=principal.organization_id,
        organization_display=organization_display,
        client_id=client,
        token_id=principal.token_id,
        interaction=interaction,
        outcome=outcome,
        outcome_desc=outcome_desc,
        patient_id=patient_id,
        resources=tuple(resources),
        query=query,
        purpose=purpose,
        emergency=emergency,
        emergency_reason=emergency_reason,
        source_ip=source_ip,
        user_agent=user_agent,
        request_id=request_id,
    )


def split_by_patient(
    record: AuditRecord, resources_by_patient: Mapping[str | None, Sequence[str]]
) -> list[AuditRecord]:
    """One record per patient concerned (BALP's rule), each naming only that patient's resources.

    A search whose results span several patients thus leaves one record in each patient's
    log and reveals no other patient's identifiers to them. The ``None`` key holds resources
    of no patient (a Practitioner, a Medication…).
    """
    return [
        replace(record, patient_id=patient, resources=tuple(refs))
        for patient, refs in resources_by_patient.items()
    ]


# --------------------------------------------------------------------------------------------
# Appending
# --------------------------------------------------------------------------------------------

_STICKY = "sharedcare_audit_chain"


def append(conn: Connection, record: AuditRecord) -> int:
    """Write ``record`` in ``conn``'s current transaction; return its key.

    The chain head row stays locked until the caller's transaction ends, so append *last*,
    after the act's own writes and locks: then it never takes part in a deadlock, and the lock
    is held only for the commit. All appends of one transaction go to the same chain. On
    SQLite the transaction must be a writer one (``storage.engine.writer``).
    """
    return append_all(conn, [record])[0]


def append_all(
    conn: Connection, records: Sequence[AuditRecord], head: tuple[int, int, str] | None = None
) -> list[int]:
    """``append`` each of ``records``, in order, consecutively on one chain; return their keys.

    On PostgreSQL the chain head is locked and read, then the records are inserted and the head
    moved in one statement (``_APPEND_ONE_PG``, or ``_APPEND_PG`` per 1,000 records): two
    round trips for an act, however many patients it concerns, instead of three per record.
    SQLite inserts them one by one, then moves the head. ``head`` is a head the caller locked
    in this transaction with ``PICK_HEAD_PG`` in a statement of its own (``picks_head``): one
    round trip less.
    """
    if not records:
        return []
    rows = [_row_values(record) for record in records]
    if head is not None:
        conn.info[_STICKY] = (conn.get_transaction(), head[0])
        chain, seq, prev = head
    else:
        chain, seq, prev = _lock_head(conn)
    for row in rows:
        seq += 1
        row.update(chain=chain, seq=seq)
        digest = content_hash(row, prev)
        row.update(prev_hash=prev, hash=digest)
        prev = digest
    if conn.dialect.name == "postgresql":
        if len(rows) == 1:  # most acts: a row of values is cheaper to send than arrays
            one = {name: rows[0][name] for name in _APPENDED_COLUMNS}
            one.update(head_chain=chain, head_seq=seq, head_hash=prev)
            return [int(conn.execute(_APPEND_ONE_PG, one).scalar_one())]
        keys: list[int] = []
        for start in range(0, len(rows), _APPEND_BATCH):
            batch = rows[start : start + _APPEND_BATCH]
            params: dict[str, Any] = {name: [row[name] for row in batch] for name in _APPENDED_COLUMNS}
            params.update(head_chain=chain, head_seq=batch[-1]["seq"], head_hash=batch[-1]["hash"])
            keys.extend(int(k) for k in conn.execute(_APPEND_PG, params).scalar_one())
        return keys
    keys = [
        int(conn.execute(audit_log.insert().values(row)).inserted_primary_key[0])  # type: ignore[index]
        for row in rows
    ]
    conn.execute(_MOVE_HEAD, {"head_chain": chain, "head_seq": seq, "head_hash": prev})
    return keys


_APPENDED_COLUMNS = (*HASHED_COLUMNS, "prev_hash", "hash")
_APPEND_BATCH = 1000
"""Records per statement (PostgreSQL): each column is one array parameter."""


def _append_statement(many: bool) -> TextClause:
    """The insert of the records in a CTE, and the head's move, in one statement: ``VALUES`` for
    one record, ``SELECT * FROM unnest(<one array per column>)`` for several (one statement, so
    one parsed and planned form, whatever their number)."""
    dialect = postgresql.dialect()
    columns = [audit_log.c[name] for name in _APPENDED_COLUMNS]
    names = ", ".join(c.name for c in columns)
    if many:
        arrays = ", ".join(f"CAST(:{c.name} AS {c.type.compile(dialect=dialect)}[])" for c in columns)
        rows, keys = f"SELECT * FROM unnest({arrays})", "array_agg(pk ORDER BY pk)"
    else:
        rows, keys = "VALUES (" + ", ".join(f":{c.name}" for c in columns) + ")", "pk"
    return text(
        f"WITH appended AS (INSERT INTO audit_log ({names}) {rows} RETURNING pk) "
        "UPDATE audit_chain_head SET seq = :head_seq, hash = :head_hash WHERE chain = :head_chain "
        f"RETURNING (SELECT {keys} FROM appended)"
    )


_APPEND_ONE_PG = _append_statement(many=False)
_APPEND_PG = _append_statement(many=True)
_MOVE_HEAD = (
    update(audit_chain_head)
    .where(audit_chain_head.c.chain == bindparam("head_chain"))
    .values(seq=bindparam("head_seq"), hash=bindparam("head_hash"))
)


def content_hash(values: Mapping[Any, Any], prev_hash: str) -> str:
    """``sha256(canonical JSON of the hashed columns + prev_hash)``, hex.

    Canonical: sorted keys, no spaces, UTF-8, timestamps as ``YYYY-MM-DDTHH:MM:SS.ffffff``
    (UTC), integers and booleans as JSON numbers and booleans.
    """
    content = {name: _canonical(values[name]) for name in HASHED_COLUMNS}
    data = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((data + prev_hash).encode("utf-8")).hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.%f")
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    return str(value)


def _clean(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; replace it before hashing so the stored row hashes alike.
    return value.replace("\x00", "\ufffd") if value is not None else None


def _row_values(record: AuditRecord) -> dict[str, Any]:
    recorded = record.recorded or datetime.now(UTC)
    if recorded.tzinfo is not None:
        recorded = recorded.astimezone(UTC).replace(tzinfo=None)
    return {
        "recorded": recorded,
        "action": str(AuditAction(record.action)),
        "interaction": _clean(record.interaction),
        "outcome": int(AuditOutcome(record.outcome)),
        "outcome_desc": _clean(record.outcome_desc),
        "principal_kind": str(record.principal_kind),
        "principal_subject": _clean(record.principal_subject),
        "principal_display": _clean(record.principal_display) or "",
        "principal_ref": _clean(record.principal_ref),
        "profession": _clean(record.profession),
        "organization_id": _clean(record.organization_id),
        "organization_display": _clean(record.organization_display),
        "client_id": _clean(record.client_id),
        "token_id": _clean(record.token_id),
        "patient_id": _clean(record.patient_id),
        "resources": json.dumps([_clean(r) for r in record.resources], separators=(",", ":")),
        "query": _clean(record.query),
        "purpose": _clean(record.purpose),
        "emergency": bool(record.emergency),
        "emergency_reason": _clean(record.emergency_reason),
        "source_ip": _clean(record.source_ip),
        "user_agent": _clean(record.user_agent),
        "request_id": _clean(record.request_id),
    }


_RELOCK = select(audit_chain_head).where(audit_chain_head.c.chain == bindparam("chain")).with_for_update()
_PICK = select(audit_chain_head).where(audit_chain_head.c.chain < CHAINS).order_by(func.random()).limit(1)
_PICK_FREE = _PICK.with_for_update(skip_locked=True)


PICK_HEAD_PG = str(_PICK_FREE.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
"""PostgreSQL: lock a free chain's head and read it (``_PICK_FREE``), for a caller that reads
it in a statement of its own, as a ``WITH`` query, before it appends (``append_all(head=…)``).
It never waits for a lock, so it may come before the act's other locks in that statement.
Where it finds no row (every chain busy, heads not made yet), ``append_all`` locks one itself."""


def picks_head(conn: Connection) -> bool:
    """The next append in ``conn``'s transaction picks a chain: the transaction holds none yet
    (its appends all go to the first one it locked)."""
    txn = conn.get_transaction()
    sticky = conn.info.get(_STICKY)
    return conn.dialect.name == "postgresql" and not (
        txn is not None and sticky is not None and sticky[0] is txn
    )


def _lock_head(conn: Connection) -> tuple[int, int, str]:
    """Lock one chain's head row for this transaction; return (chain, seq, hash)."""
    head = audit_chain_head
    postgres = conn.dialect.name == "postgresql"
    txn = conn.get_transaction()
    sticky = conn.info.get(_STICKY)
    row: Row[Any] | None = None
    if txn is not None and sticky is not None and sticky[0] is txn:
        row = conn.execute(_RELOCK, {"chain": sticky[1]}).first()
    if row is None:
        # Any free chain will do: chains are interchangeable, so skip those other appends hold.
        row = conn.execute(_PICK_FREE if postgres else _PICK).first()
    if row is None:
        present = conn.execute(select(func.count()).select_from(head)).scalar_one()
        if present < CHAINS:
            _create_heads(conn)
        chain = random.randrange(CHAINS)
        row = conn.execute(select(head).where(head.c.chain == chain).with_for_update()).first()
        if row is None:
            raise RuntimeError(f"audit chain head {chain} is missing and could not be created")
    conn.info[_STICKY] = (conn.get_transaction(), row.chain)  # the autobegun one, if it was not begun
    return int(row.chain), int(row.seq), str(row.hash)


def _create_heads(conn: Connection) -> None:
    # ON CONFLICT DO NOTHING: concurrent first appends both succeed, whoever inserts first.
    rows = [{"chain": c, "seq": 0, "hash": GENESIS_HASH} for c in range(CHAINS)]
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    conn.execute(insert(audit_chain_head).values(rows).on_conflict_do_nothing(index_elements=["chain"]))


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

MAX_QUERY_LIMIT = 1000


def query(
    conn: Connection,
    *,
    patient_id: str | None = None,
    principal_subject: str | None = None,
    actions: Iterable[AuditAction] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    emergency: bool | None = None,
    before: int | None = None,
    limit: int = 50,
) -> list[AuditEntry]:
    """Entries matching every filter given, newest first.

    ``since`` is inclusive, ``until`` exclusive (UTC). Page with ``before``: pass the ``pk`` of
    the last entry of a page to get the next one (keyset; stable while records are added).
    ``limit`` is capped at :data:`MAX_QUERY_LIMIT`.
    """
    t = audit_log.c
    stmt = select(audit_log)
    if patient_id is not None:
        stmt = stmt.where(t.patient_id == patient_id)
    if principal_subject is not None:
        stmt = stmt.where(t.principal_subject == principal_subject)
    if actions is not None:
        stmt = stmt.where(t.action.in_([str(AuditAction(a)) for a in actions]))
    if since is not None:
        stmt = stmt.where(t.recorded >= _utc_naive(since))
    if until is not None:
        stmt = stmt.where(t.recorded < _utc_naive(until))
    if emergency is not None:
        stmt = stmt.where(t.emergency == emergency)
    if before is not None:
        stmt = stmt.where(t.pk < before)
    stmt = stmt.order_by(t.pk.desc()).limit(max(0, min(limit, MAX_QUERY_LIMIT)))
    return [_entry(row) for row in conn.execute(stmt)]


def get(conn: Connection, pk: int) -> AuditEntry | None:
    """The entry with key ``pk`` (the AuditEvent id), or None."""
    row = conn.execute(select(audit_log).where(audit_log.c.pk == pk)).first()
    return _entry(row) if row is not None else None


def _utc_naive(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo is not None else value


def _entry(row: Row[Any]) -> AuditEntry:
    m = row._mapping
    record = AuditRecord(
        action=AuditAction(m["action"]),
        principal_kind=m["principal_kind"],
        principal_subject=m["principal_subject"],
        principal_display=m["principal_display"],
        principal_ref=m["principal_ref"],
        profession=m["profession"],
        organization_id=m["organization_id"],
        organization_display=m["organization_display"],
        client_id=m["client_id"],
        token_id=m["token_id"],
        interaction=m["interaction"],
        outcome=AuditOutcome(m["outcome"]),
        outcome_desc=m["outcome_desc"],
        patient_id=m["patient_id"],
        resources=tuple(json.loads(m["resources"])),
        query=m["query"],
        purpose=m["purpose"],
        emergency=bool(m["emergency"]),
        emergency_reason=m["emergency_reason"],
        source_ip=m["source_ip"],
        user_agent=m["user_agent"],
        request_id=m["request_id"],
        recorded=m["recorded"].replace(tzinfo=UTC),
    )
    return AuditEntry(
        pk=int(m["pk"]),
        chain=int(m["chain"]),
        seq=int(m["seq"]),
        record=record,
        prev_hash=m["prev_hash"],
        hash=m["hash"],
    )


# --------------------------------------------------------------------------------------------
# Verifying
# --------------------------------------------------------------------------------------------


def chain_heads(conn: Connection) -> dict[int, tuple[int, str]]:
    """Each chain's last ``(seq, hash)``: publish these elsewhere to anchor the log (see verify)."""
    rows = conn.execute(select(audit_chain_head).order_by(audit_chain_head.c.chain))
    return {int(r.chain): (int(r.seq), str(r.hash)) for r in rows}


def verify(engine: Engine, *, anchors: Mapping[int, tuple[int, str]] | None = None) -> VerifyResult:
    """Walk every chain in order and report the first problem of each.

    Checks, per chain: sequence numbers without gaps from 1, each ``prev_hash`` equal to the
    previous record's hash, each hash equal to the hash of the record's content, and the head
    row equal to the last record. ``anchors`` (chain → ``(seq, hash)`` as once returned by
    :func:`chain_heads` and kept outside the database) must still be in the chain: without
    them a writer who recomputes every hash after the tampered record goes unnoticed.

    A tombstone (a record deleted with its patient's record, art. 8) takes its record's place:
    its content is gone, so its own hash cannot be recomputed, but its links are checked like
    any record's; and every tombstone must be announced by a ``delete-traces`` record whose
    count matches, so a record cannot be turned into a tombstone unnoticed.
    Runs in one snapshot, so appends committed meanwhile do not disturb it.
    """
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            heads = chain_heads(conn)
            live = select(audit_log).order_by(audit_log.c.chain, audit_log.c.seq)
            dead = select(audit_tombstone).order_by(audit_tombstone.c.chain, audit_tombstone.c.seq)
            rows = heapq.merge(
                ((row, False) for row in conn.execute(live.execution_options(yield_per=2000))),
                ((row, True) for row in conn.execute(dead.execution_options(yield_per=2000))),
                key=lambda item: (item[0].chain, item[0].seq),
            )
            walk = _Walk(heads, dict(anchors or {}))
            for row, tombstone in rows:
                walk.step(row._mapping, tombstone)
            return walk.result()


@dataclass(slots=True)
class _ChainState:
    seq: int = 0
    hash: str = GENESIS_HASH
    pk: int | None = None
    tombstone: bool = False


@dataclass(slots=True)
class _Announced:
    """The tombstones naming one ``delete-traces`` record: how many, and the first of them."""

    count: int
    first: tuple[int, int, int]


class _Walk:
    """The state of :func:`verify`'s single pass over the merged records and tombstones."""

    def __init__(self, heads: dict[int, tuple[int, str]], anchors: dict[int, tuple[int, str]]) -> None:
        self.heads = heads
        self.anchors = anchors
        self.states: dict[int, _ChainState] = {}
        self.problems: dict[int, ChainProblem] = {}
        self.records = 0
        self.tombstones = 0
        self.announced: dict[int, _Announced] = {}
        self.redactions: dict[int, tuple[int, int, str | None]] = {}

    def step(self, m: Mapping[Any, Any], tombstone: bool) -> None:
        chain, seq, pk = int(m["chain"]), int(m["seq"]), int(m["pk"])
        if tombstone:
            self.tombstones += 1
            by = int(m["redacted_by"])
            seen = self.announced.get(by)
            if seen is None:
                self.announced[by] = _Announced(1, (chain, seq, pk))
            else:
                seen.count += 1
        else:
            self.records += 1
            if m["interaction"] == REDACTION_INTERACTION:
                self.redactions[pk] = (chain, seq, m["query"])
        if chain in self.problems:
            return
        state = self.states.setdefault(chain, _ChainState())
        problem = _check_row(chain, seq, pk, m, tombstone, state, self.heads, self.anchors)
        if problem is not None:
            self.problems[chain] = problem
            return
        state.seq, state.hash, state.pk, state.tombstone = seq, m["hash"], pk, tombstone

    def result(self) -> VerifyResult:
        for chain in sorted(self.heads.keys() | self.states.keys()):
            if chain in self.problems:
                continue
            state = self.states.get(chain, _ChainState())
            problem = _check_end(chain, state, self.heads.get(chain), self.anchors.get(chain))
            if problem is not None:
                self.problems[chain] = problem
        for problem in _check_announcements(self.announced, self.redactions):
            self.problems.setdefault(problem.chain, problem)
        return VerifyResult(
            records=self.records,
            chains=len(self.heads.keys() | self.states.keys()),
            problems=tuple(self.problems[c] for c in sorted(self.problems)),
            tombstones=self.tombstones,
        )


def _check_announcements(
    announced: dict[int, _Announced], redactions: dict[int, tuple[int, int, str | None]]
) -> list[ChainProblem]:
    """Each tombstone names a ``delete-traces`` record (``redactions``: key → chain, seq,
    query), and each such record announces as many deletions as there are tombstones naming
    it: a record turned into a tombstone, or a deleted one put back, does not go unnoticed."""
    problems: list[ChainProblem] = []
    for key, seen in announced.items():
        if key not in redactions:
            chain, seq, pk = seen.first
            problems.append(
                ChainProblem(
                    chain,
                    seq,
                    pk,
                    "unannounced-tombstone",
                    f"the tombstone names pk {key}, which is no record of a deletion of traces",
                )
            )
    for key, (chain, seq, query) in redactions.items():
        count = announced[key].count if key in announced else 0
        if _announced_count(query) != count:
            problems.append(
                ChainProblem(
                    chain,
                    seq,
                    key,
                    "redaction-mismatch",
                    f"the deletion of traces announced {query!r} but {count} tombstones name it",
                )
            )
    return sorted(problems, key=lambda p: (p.chain, p.seq))


def _announced_count(query: str | None) -> int | None:
    value = (query or "").removeprefix("records=")
    return int(value) if value.isdigit() and query != value else None


def _check_row(
    chain: int,
    seq: int,
    pk: int,
    m: Mapping[Any, Any],
    tombstone: bool,
    state: _ChainState,
    heads: dict[int, tuple[int, str]],
    anchors: dict[int, tuple[int, str]],
) -> ChainProblem | None:
    if chain not in heads:
        return ChainProblem(chain, seq, pk, "unknown-chain", "record of a chain that has no head row")
    expected = state.seq + 1
    if seq < expected:
        return ChainProblem(
            chain, seq, pk, "duplicate", f"seq {seq} is held twice: by pk {state.pk} and by this one"
        )
    if seq != expected:
        after = f"after seq {state.seq} (pk {state.pk})" if state.pk is not None else "at the start"
        return ChainProblem(
            chain,
            expected,
            None,
            "missing",
            f"records {expected}..{seq - 1} are missing {after}; next present is seq {seq} (pk {pk})",
        )
    if m["prev_hash"] != state.hash:
        if state.tombstone and not tombstone and content_hash(m, m["prev_hash"]) == m["hash"]:
            # This record is intact, so its prev_hash is what was written: the tombstone changed.
            return ChainProblem(
                chain,
                state.seq,
                state.pk,
                "altered",
                f"the tombstone's hash is not the prev_hash of the intact record after it (pk {pk})",
            )
        what = "the tombstone's prev_hash" if tombstone else "prev_hash"
        before = "the tombstone of " if state.tombstone else ""
        return ChainProblem(
            chain,
            seq,
            pk,
            "broken-link",
            f"{what} does not match the hash of {before}seq {state.seq}: a record before it was "
            "removed, inserted, reordered or re-hashed",
        )
    if not tombstone and content_hash(m, m["prev_hash"]) != m["hash"]:
        return ChainProblem(chain, seq, pk, "altered", "the content no longer matches its hash")
    if seq > heads[chain][0]:
        return ChainProblem(
            chain,
            seq,
            pk,
            "head-mismatch",
            f"record beyond the chain head (seq {heads[chain][0]}): written outside the audit API",
        )
    anchor = anchors.get(chain)
    if anchor is not None and anchor[0] == seq and anchor[1] != m["hash"]:
        return ChainProblem(chain, seq, pk, "anchor-mismatch", "hash differs from the published anchor")
    return None


def _check_end(
    chain: int, state: _ChainState, head: tuple[int, str] | None, anchor: tuple[int, str] | None
) -> ChainProblem | None:
    if head is None:
        return ChainProblem(chain, state.seq, state.pk, "head-mismatch", "chain has records but no head row")
    if anchor is not None and anchor[0] > state.seq:
        return ChainProblem(
            chain,
            state.seq + 1,
            None,
            "missing",
            f"anchored seq {anchor[0]} is beyond the last record (seq {state.seq})",
        )
    head_seq, head_hash = head
    if head_seq > state.seq:
        return ChainProblem(
            chain,
            state.seq + 1,
            None,
            "missing",
            f"records {state.seq + 1}..{head_seq} are missing at the end (head says seq {head_seq})",
        )
    if head_seq < state.seq or head_hash != state.hash:
        return ChainProblem(
            chain,
            state.seq,
            state.pk,
            "head-mismatch",
            f"head (seq {head_seq}) does not match the last record (seq {state.seq})",
        )
    return None
