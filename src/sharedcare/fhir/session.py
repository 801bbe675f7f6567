"""The hook through which a caller's access rights and audit trail reach the FHIR service.

``fhir`` knows nothing of policy: it asks an ``AccessSession`` (implemented by ``access``)
for a SQL filter on every read path, lets it veto every write before it is applied, and tells
it what each interaction returned or changed so it can be audited in the same transaction.
A service without a session is the unrestricted internal service (import, demo loading).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import Connection

from sharedcare.fhir.search.engine import AccessFilter
from sharedcare.fhir.store import Stored, Write


@dataclass(slots=True)
class Interaction:
    """One FHIR interaction as the audit trail records it."""

    name: str
    """read, vread, search, history, create, update, patch, delete, operation."""
    resource_type: str | None = None
    resources: Sequence[Stored] = ()
    """What was returned (reads) or written (writes)."""
    query: str | None = None
    """The search or history query, or the operation name with its parameters."""
    operation: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


class AccessSession(Protocol):
    """A caller's view of the store: what they may see and write; where their acts are recorded."""

    def require(self, resource_type: str | None, interaction: str) -> None:
        """Raise ``Forbidden`` when the caller's scopes do not allow ``interaction``
        (one of ``c r u d s``) on ``resource_type`` (None: several types)."""

    def read_filter(self) -> AccessFilter | None:
        """A condition on a ``resource`` row; None when nothing is hidden from the caller."""

    def check_writes(self, conn: Connection, writes: Sequence[Write]) -> None:
        """Raise ``Forbidden`` (or another ``FhirError``) unless every write is allowed."""

    def record(self, conn: Connection, interaction: Interaction) -> None:
        """Note the audit record of a successful interaction of the current transaction."""

    def flush(self, conn: Connection) -> None:
        """Write the noted audit records, last thing before the transaction commits. They stay
        noted until ``discard``: a flush whose transaction rolled back can be run again."""

    def discard(self) -> None:
        """Forget the noted records: written and committed, or rolled back with their acts."""
