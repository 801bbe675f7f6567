"""Tables of the access module: the facts the access decision reads.

The holder's choices are FHIR ``Consent`` resources (the record of truth, versioned and
audited like any resource); these tables are their projection, written in the same
transaction, so that the decision is one indexed SQL filter instead of a scan of Consents.
Care relationships are facts from the care process (a code handed over, a registration).
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, String, Table, Text, UniqueConstraint, text

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
    # a facility stay renewed, with the holder's agreement, until a lab result arrives (§A.3):
    Column("patient_agreement", DateTime(timezone=False), nullable=True),  # when the holder agreed
    Column("lab_wait_since", DateTime(timezone=False), nullable=True),  # results filed from then count
    Column("lab_wait_floor", DateTime(timezone=False), nullable=True),  # end before: never shortened
    Column("lab_wait_days", Integer, nullable=True),  # access after the result (art. 9(3) deadline)
    Column("lab_result_at", DateTime(timezone=False), nullable=True),  # the result came: ``ends`` set
    Index("ix_care_relationship_practitioner", "practitioner_id", "patient_id"),
    Index("ix_care_relationship_organization", "organization_id", "patient_id"),
    Index("ix_care_relationship_patient", "patient_id"),
    # the few referring-physician designations, found at once by ``AccessPolicy.caller_facts_columns``
    Index(
        "ix_care_relationship_referent",
        "practitioner_id",
        "organization_id",
        postgresql_where=text("context = 'referent'"),
        sqlite_where=text("context = 'referent'"),
    ),
)
"""Who takes part in a holder's care and until when: one row per proof of care (code handed
over, registration, emergency registration), permanent grant, referring-physician designation
or emergency override. Facility registrations name the organisation, not one professional. A
registration waiting for a lab result keeps ``ends`` at its safety cap until the result is filed
(``access.labwait`` then sets it), so the access decision stays a filter on ``ends``."""

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

licence_withdrawal = Table(
    "licence_withdrawal",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("practitioner_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("withdrawn_at", DateTime(timezone=False), nullable=False),
    Column("detected_at", DateTime(timezone=False), nullable=False),
    Column("restored_at", DateTime(timezone=False), nullable=True),
    Column("holders", Integer, nullable=False),
    UniqueConstraint("practitioner_id", "version"),
)
"""Withdrawals of a licence to practise the life-cycle job has seen (§A.3, art. 7(4)): the
directory version that made the professional inactive, when, and how many holders were told.
A restored licence ends the row, so a later withdrawal is a new one (``access.licence``)."""

facility_withdrawal = Table(
    "facility_withdrawal",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("organization_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("withdrawn_at", DateTime(timezone=False), nullable=False),
    Column("detected_at", DateTime(timezone=False), nullable=False),
    Column("restored_at", DateTime(timezone=False), nullable=True),
    Column("holders", Integer, nullable=False),
    UniqueConstraint("organization_id", "version"),
)
"""Withdrawals of a care facility's authorisation (its ``Organization`` made inactive in the
directory) the life-cycle job has seen: as ``licence_withdrawal``, for the holders registered at
the facility (``access.licence``)."""

filing_objection = Table(
    "filing_objection",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("patient_id", String(64), nullable=False),
    Column("resource_type", String(64), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("created", DateTime(timezone=False), nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("removed_at", DateTime(timezone=False), nullable=True),
    Column("consent_id", String(64), nullable=True),
    Index("ix_filing_objection_resource", "resource_type", "resource_id"),
    Index("ix_filing_objection_patient", "patient_id"),
)
"""The holder's objections to an item being filed (§A.4, art. 6(3)): while a row is not
removed, the item is in no professional's or facility system's view (``access.requests``)."""

record_request = Table(
    "record_request",
    metadata,
    Column("id", String(64), primary_key=True),  # the id of the request's FHIR Task
    Column("patient_id", String(64), nullable=False),
    Column("kind", String(8), nullable=False),  # rectify | erase | file
    Column("resource_type", String(64), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("item_version", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # requested | accepted | rejected | completed | cancelled
    Column("author_practitioner_id", String(64), nullable=True),
    Column("owner_organization_id", String(64), nullable=True),
    Column("reason", Text, nullable=True),
    Column("decision_reason", Text, nullable=True),
    Column("created", DateTime(timezone=False), nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("decided_at", DateTime(timezone=False), nullable=True),
    Column("decided_by", String(64), nullable=True),
    # an overdue filing request's notices (``access.filing_notices``, migration 0021): when the
    # holder's message was queued, when the professional asked was told (each once)
    Column("overdue_holder_notice_at", DateTime(timezone=False), nullable=True),
    Column("overdue_owner_notice_at", DateTime(timezone=False), nullable=True),
    Index("ix_record_request_patient", "patient_id"),
    Index("ix_record_request_practitioner", "author_practitioner_id"),
    Index("ix_record_request_organization", "owner_organization_id"),
    Index("ix_record_request_resource", "resource_type", "resource_id"),
    Index("ix_record_request_kind_status", "kind", "status"),
)
"""The holder's requests for rectification (to the item's author, art. 6(5)), erasure (to the
Agence, GDPR art. 17) and filing (to a professional of their care, art. 9(2)), projected from
their FHIR Tasks: who may see and decide them, and whether an overdue filing request was
announced."""

minor_autonomy = Table(
    "minor_autonomy",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("patient_id", String(64), nullable=False),
    Column("practitioner_id", String(64), nullable=False),
    Column("organization_id", String(64), nullable=True),
    Column("decided_at", DateTime(timezone=False), nullable=False),
    Column("consent_id", String(64), nullable=True),
    Column("withdrawn_at", DateTime(timezone=False), nullable=True),
    Column("withdrawn_by", String(64), nullable=True),  # professional | minor
    Index("ix_minor_autonomy_patient", "patient_id"),
)
"""A professional in the minor's care admitted them to exercise their rights alone (§A.7, law of
24 July 2014 art. 13): who decided and when, projected from its FHIR Consent; withdrawn (by the
professional who recorded it, or by the minor) when ``withdrawn_at`` is set."""

minor_objection = Table(
    "minor_objection",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("patient_id", String(64), nullable=False),
    Column("created", DateTime(timezone=False), nullable=False),
    Column("removed_at", DateTime(timezone=False), nullable=True),
    Column("consent_id", String(64), nullable=True),
    Index("ix_minor_objection_patient", "patient_id"),
)
"""An autonomous minor objects to their parents' access: while a row is not removed, and the holder
is under 18, the delegations of parents and guardians to the record are suspended (not ended)."""

filing_deadline = Table(
    "filing_deadline",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("relationship_id", String(64), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("practitioner_id", String(64), nullable=True),  # a solo professional's own care
    Column("organization_id", String(64), nullable=True),  # a facility's registration
    Column("context", String(16), nullable=False),  # solo | facility | emergency
    Column("care_start", DateTime(timezone=False), nullable=False),
    Column("care_end", DateTime(timezone=False), nullable=False),
    Column("due", DateTime(timezone=False), nullable=False),  # the relationship's end since
    Column("created", DateTime(timezone=False), nullable=False),
    Column("created_by", String(64), nullable=False),
    UniqueConstraint("relationship_id"),
    Index("ix_filing_deadline_practitioner", "practitioner_id", "due"),
    Index("ix_filing_deadline_organization", "organization_id", "due"),
    Index("ix_filing_deadline_patient", "patient_id"),
)
"""A declared end of care (``access.care.end_care``, §A.9, art. 9(3)): the author files the key
documents by ``due``, ``filing_deadline_days`` after ``care_end``, which is when the relationship
now ends (never later than before). One row per relationship: its care ends once. Relationships
that simply ran out have no row; ``access.filing`` derives their end of care."""
