"""Tables of the vaccination module (migrations 0015 and 0017).

The reminder job keeps one forecast state row per patient so that a daily run recomputes only
the patients whose record changed or whose next date has come (``vaccination.reminders``).
"""

from __future__ import annotations

from sqlalchemy import Column, Date, DateTime, Index, String, Table, Text

from sharedcare.storage.tables import metadata

forecast_state = Table(
    "vaccination_forecast_state",
    metadata,
    Column("patient_id", String(64), primary_key=True),
    Column("computed_at", DateTime(timezone=False), nullable=False),
    Column("inputs", String(80), nullable=False),
    Column("due", Text, nullable=False),
    Column("next_check", Date, nullable=False),
    Index("ix_vaccination_forecast_state_next_check", "next_check"),
)
"""The last forecast of one patient for the reminder job. ``inputs`` fingerprints what the
forecast read (count, sum of versions and newest ``last_updated`` of the patient's current
Patient, Immunization and Condition rows): any write in the compartment changes it, since every
write raises a version. ``due`` is JSON: per vaccine group not complete, the next dose number
and its recommended and past-due dates. ``next_check`` is the first day a reminder may become
due without any write (a recommended date entering the lead time, a past-due date passing)."""

reminder_item = Table(
    "vaccination_reminder_item",
    metadata,
    Column("dedupe", String(160), primary_key=True),
    Column("patient_id", String(64), nullable=False),
    Column("queued", DateTime(timezone=False), nullable=False),
)
"""One reminder already queued (migration 0017): ``dedupe`` is
``vaccination-reminder:<patient>:<group>:<dose>:<due kind>`` (``reminders.dedupe_key``). A person's
reminders of one run go in one outbox message; this row, written in the same transaction, is what
makes each (patient, group, dose, due kind) reminded exactly once across runs and crashes."""
