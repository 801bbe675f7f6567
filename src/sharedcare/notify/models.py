"""The notification outbox: written in the transaction of the event it announces."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, String, Table, Text

from sharedcare.storage.tables import PK, metadata

notification = Table(
    "notification",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("patient_id", String(64), nullable=False),
    Column("kind", String(40), nullable=False),
    Column("params", Text, nullable=False),  # JSON: what the message template needs, no health data
    Column("dedupe", String(160), nullable=True, unique=True),
    Column("created", DateTime(timezone=False), nullable=False),
    Column("read_at", DateTime(timezone=False), nullable=True),
    Column("sent_at", DateTime(timezone=False), nullable=True),
    Index("ix_notification_patient", "patient_id", "pk"),
)
"""One message to a holder (and their representatives). ``dedupe`` makes once-only messages
(the first professional access of §A.1) idempotent under concurrency."""
