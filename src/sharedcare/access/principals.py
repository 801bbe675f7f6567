"""Who is asking: the principal every access decision and audit record is about.

A principal is built once per request from a validated access token (or a portal session)
and passed explicitly to every domain call. It carries identity, not rights: what the
principal may do is decided by ``access.policy`` from the patient's record, and the token's
SMART scopes only ever narrow that decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class PrincipalKind(StrEnum):
    """The kinds of principal of the regulation (LAW-AND-CROSSBORDER.md §A.3, §A.7, §A.8)."""

    PATIENT = "patient"
    """The holder of a record (titulaire)."""
    REPRESENTATIVE = "representative"
    """Parent, guardian, trusted person or DSP assistant acting on behalf of holders."""
    PROFESSIONAL = "professional"
    """A health professional listed in the national directory."""
    SYSTEM = "system"
    """Certified software of a hospital, laboratory or pharmacy (SMART Backend Services)."""
    HELPDESK = "helpdesk"
    """Agency helpdesk agent: accounts, status and traces, never clinical content."""
    ADMIN = "admin"
    """Agency administrator: same clinical restriction as the helpdesk."""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    ``subject`` is the account id (people) or the OAuth client id (systems); ``scopes`` are the
    raw granted OAuth scopes (SMART v1 or v2 syntax), interpreted by ``access.scopes``.
    """

    kind: PrincipalKind
    subject: str
    display: str = ""
    patient_id: str | None = None
    """The holder's own Patient id (patients)."""
    acting_for: tuple[str, ...] = ()
    """Patient ids a representative may act for (resolved from the delegations when the session starts)."""
    practitioner_id: str | None = None
    """The professional's Practitioner id in the national directory."""
    practitioner_role_id: str | None = None
    organization_id: str | None = None
    """The organisation the professional or system acts for."""
    profession: str | None = None
    """The professional's column of the access matrix (``med``, ``pha``, ``inf``…)."""
    client_id: str | None = None
    """The OAuth client the request came through."""
    scopes: frozenset[str] = field(default_factory=frozenset)
    launch_patient: str | None = None
    """The patient in context of a SMART ``launch/patient`` token."""
    token_id: str | None = None
    """The access token's ``jti``, for audit and revocation."""
    trusted: bool = False
    """A platform client of the agency itself (operators' scripts, imports): not restricted."""

    @property
    def is_staff(self) -> bool:
        """Agency staff have no access to clinical content at all."""
        return self.kind in (PrincipalKind.HELPDESK, PrincipalKind.ADMIN)
