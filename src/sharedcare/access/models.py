"""Tables of the access module: the facts the access decision reads.

The holder's choices are FHIR ``Consent`` resources (the record of truth, versioned and
audited like any resource); these tables are their projection, written in the same
transaction, so that the decision is one indexed SQL filter instead of a scan of Consents.
Care relationships are facts from the care process (a code handed over, a registration).
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, String, Table, Text

from sharedcare.storage.tables import PK, metadata

record_status = Table(
    "record_status",
    metadata,
    Column("patient_id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),  # open | closed
    Column("letter_sent", DateTime(timezone=False), nullable=True),
    Column("activated_at", DateTime(timezone=False), nullable=True),
    Column("closed_at", DateTime(timezone=False), nullable=True),
    Column("closed_reason", String(16), nullable=True),  # holder | death | inactivity | agency
    Column("first_professional_access", DateTime(timezone=False), nullable=True),
    Column("last_access", DateTime(timezone=False), nullable=True),
)
"""One row per record whose life cycle is known; a record without a row is open and past its
activation window (imported data)."""

care_relationship = Table(
    "care_relationship",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("patient_id", String(64), nullable=False),
    Column("practitioner_id", String(64), nullable=True),
    Column("organization_id", String(64), nullable=True),
    Column(
        "context", String(16), nullable=False
    ),  # solo | facility | emergency | permanent | referent | override
    Column("starts", DateTime(timezone=False), nullable=False),
    Column("ends", DateTime(timezone=False), nullable=True),  # NULL: until revoked
    Column("revoked_at", DateTime(timezone=False), nullable=True),
    Column("reason", Text, nullable=True),
    Column("consent_id", String(64), nullable=True),
    Column("created_by", String(64), nullable=False),
    Index("ix_care_relationship_practitioner", "practitioner_id", "patient_id"),
    Index("ix_care_relationship_organization", "organization_id", "patient_id"),
    Index("ix_care_relationship_patient", "patient_id"),
)
"""Who takes part in a holder's care and until when: one row per proof of care (code handed
over, registration, emergency registration), permanent grant, referring-physician designation
or emergency override. Facility registrations name the organisation, not one professional."""

access_restriction = Table(
    "access_restriction",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("patient_id", String(64), nullable=False),
    Column("practitioner_id", String(64), nullable=False),
    Column("kind", String(8), nullable=False),  # block | mask
    Column("resource_type", String(64), nullable=True),
    Column("resource_id", String(64), nullable=True),
    Column("created", DateTime(timezone=False), nullable=False),
    Column("removed_at", DateTime(timezone=False), nullable=True),
    Column("consent_id", String(64), nullable=True),
    Index("ix_access_restriction_practitioner", "practitioner_id", "patient_id"),
    Index("ix_access_restriction_resource", "resource_type", "resource_id"),
)
"""The holder's "privé" (block: the whole record) and "restreint" (mask: one item) choices
against named professionals (§A.4)."""

delegation = Table(
    "delegation",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("patient_id", String(64), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # parent | guardian | trusted | assistant
    Column("legal_basis", Text, nullable=True),
    Column("starts", DateTime(timezone=False), nullable=False),
    Column("ends", DateTime(timezone=False), nullable=True),
    Column("revoked_at", DateTime(timezone=False), nullable=True),
    Column("consent_id", String(64), nullable=True),
    Column("related_person_id", String(64), nullable=True),
    Index("ix_delegation_account", "account_id"),
    Index("ix_delegation_patient", "patient_id"),
)
"""Representatives acting on behalf of a holder (§A.7): time-bounded, with their legal basis."""

connection_code = Table(
    "connection_code",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("code_hash", String(128), nullable=False, unique=True),
    Column("patient_id", String(64), nullable=False),
    Column("created", DateTime(timezone=False), nullable=False),
    Column("expires", DateTime(timezone=False), nullable=False),
    Column("used_at", DateTime(timezone=False), nullable=True),
    Column("used_by", String(64), nullable=True),
)
"""One-time connection codes the holder hands over in a solo-practice consultation (§A.3)."""
