"""The notification outbox: written in the transaction of the event it announces."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Index, Integer, String, Table, Text

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
    # e-mail delivery (``notify.delivery``, migration 0007)
    Column("delivery", String(16), nullable=True),  # NULL: to deliver | sent | portal-only | failed
    Column("attempts", Integer, nullable=False, default=0, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=False), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("delivered_to", Text, nullable=True),  # JSON list of the account ids that got the e-mail
    Index("ix_notification_patient", "patient_id", "pk"),
    Index("ix_notification_due", "delivery", "next_attempt_at"),
)
"""One message to a holder (and their representatives). ``dedupe`` makes once-only messages
(the first professional access of §A.1) idempotent under concurrency. ``delivery`` is the state
of the e-mail: NULL while the worker still has to send it (``next_attempt_at``: not before),
``sent`` (``sent_at``), ``portal-only`` (nobody with an e-mail address to tell) or ``failed``
(gave up after ``attempts``; ``last_error`` says why). The message itself is always in the
portal."""

notification_preference = Table(
    "notification_preference",
    metadata,
    Column("account_id", String(32), primary_key=True),
    Column("channel", String(16), nullable=False),  # email | portal
    Column("language", String(2), nullable=True),  # NULL: the account's portal language
    Column("vaccination_reminders", Boolean, nullable=False),
    Column("new_documents", Boolean, nullable=False),
    Column("updated", DateTime(timezone=False), nullable=False),
)
"""How one account (a holder or a representative) wants to be told (``notify.preferences``,
migration 0015). No row: the defaults (e-mail and portal, the account's language, every kind).
Per account, not per record: a parent's choice covers every child they represent. Opting out of
a kind stops its e-mails; the message itself stays in the portal."""
