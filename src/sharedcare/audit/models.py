"""Audit tables: the append-only log and the heads of its hash chains.

The schema is created by migration ``0004_audit``; these definitions are what the code reads
and writes. A record concerns at most one patient (``patient_id``): BALP asks for one
AuditEvent per patient, and it keeps a patient's "who accessed my record" view free of other
patients' identifiers. Acts touching several patients write one record per patient.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from sharedcare.storage.tables import PK, metadata

CHAINS = 16
"""Number of independent hash chains: appends on different chains never wait for each other."""

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first record of every chain (and the hash of an empty chain's head)."""

audit_log = Table(
    "audit_log",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("chain", SmallInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("recorded", DateTime(timezone=False), nullable=False),  # UTC
    Column("action", String(32), nullable=False),
    Column("interaction", Text, nullable=True),
    Column("outcome", SmallInteger, nullable=False),
    Column("outcome_desc", Text, nullable=True),
    Column("principal_kind", String(16), nullable=False),
    Column("principal_subject", Text, nullable=False),
    Column("principal_display", Text, nullable=False),
    Column("principal_ref", Text, nullable=True),
    Column("profession", Text, nullable=True),
    Column("organization_id", Text, nullable=True),
    Column("organization_display", Text, nullable=True),
    Column("client_id", Text, nullable=True),
    Column("token_id", Text, nullable=True),
    Column("patient_id", String(64), nullable=True),
    Column("resources", Text, nullable=False),  # JSON list of "Type/id[/_history/v]"
    Column("query", Text, nullable=True),
    Column("purpose", String(32), nullable=True),
    Column("emergency", Boolean, nullable=False),
    Column("emergency_reason", Text, nullable=True),
    Column("source_ip", Text, nullable=True),
    Column("user_agent", Text, nullable=True),
    Column("request_id", Text, nullable=True),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("chain", "seq"),
    Index("ix_audit_log_patient", "patient_id", "pk"),
    Index("ix_audit_log_principal", "principal_subject", "pk"),
    Index("ix_audit_log_recorded", "recorded"),
)

audit_chain_head = Table(
    "audit_chain_head",
    metadata,
    Column("chain", SmallInteger, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

audit_tombstone = Table(
    "audit_tombstone",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=False),
    Column("chain", SmallInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("redacted_by", BigInteger, nullable=False),
    UniqueConstraint("chain", "seq"),
)
"""What is left of a record deleted with its patient's record (art. 8): its key, its place in
its chain and its hashes, so the chain still verifies; ``redacted_by`` is the key of the
``delete-traces`` record that announced the deletion. Written only by ``audit.retention``."""

REDACTION_INTERACTION = "delete-traces"
"""``interaction`` of the record announcing a deletion of traces; its ``query`` is
``records=<number deleted>``, which ``log.verify`` checks against the tombstones naming it."""

HASHED_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in audit_log.columns if c.name not in ("pk", "prev_hash", "hash")
)
"""The content a record's hash covers (``prev_hash`` is appended to it). ``chain`` and ``seq``
are part of it, so moving a record within or between chains breaks its hash."""
