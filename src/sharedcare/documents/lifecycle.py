"""A document's life after it is filed: replaced, appended, transformed, deprecated, in error.

IHE MHD (ITI-65, from XDS) expresses the life cycle with ``DocumentReference.status`` and
``relatesTo``:

- **replace**: a new document ``relatesTo`` ``replaces`` the old one, which becomes
  ``superseded`` in the same transaction;
- **append**, **transform**, **signs**: the new document points at the old one; both stay
  ``current``;
- **deprecate**: the author sets the status to ``superseded`` without a replacement;
- **entered in error**: the author sets ``entered-in-error``.

Status changes go through the caller's session (``FhirService.apply_writes``): its write check
lets only the author's side of a document change it (``access.policy.change_denial``), refuses a
closed record (422), and the changes are audited as updates. A stored document the caller may
neither see nor has authored is "not known", whether it exists or not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection

from sharedcare.access.policy import authored_by
from sharedcare.access.session import PolicySession
from sharedcare.fhir.errors import BusinessRule, NotFound
from sharedcare.fhir.service import FhirService, serialize, serialize_many
from sharedcare.fhir.store import CONFIDENTIALITY_ORDER, CONFIDENTIALITY_SYSTEM, Stored, Write

TRANSITIONS: Mapping[str, frozenset[str]] = {
    "current": frozenset({"superseded", "entered-in-error"}),
    "superseded": frozenset({"entered-in-error"}),
    "entered-in-error": frozenset(),
}
"""The status changes a document may go through (XDS: Approved → Deprecated; any → error)."""


def known_document(svc: FhirService, conn: Connection, document_id: str) -> Stored | None:
    """The stored DocumentReference if the caller may see it or is on its author's side (a
    facility system files documents it cannot read back), else None."""
    current = svc.store.current(conn, "DocumentReference", document_id)
    if current is None or current.deleted:
        return None
    session = svc.session
    if session is None or svc.visible(conn, current):
        return current
    if isinstance(session, PolicySession) and authored_by(session.principal, current.resource()):
        return current
    return None


def set_confidentiality(svc: FhirService, document_id: str, code: str) -> Stored:
    """Give one stored document the confidentiality ``code`` (v3-Confidentiality), as the
    caller: its ``securityLabel`` then names that level alone, and a level in ``meta.security``
    is dropped (the row keeps the strictest of both: ``store.confidentiality_of``), other labels
    kept. Its content (the Binary) follows (``ResourceStore._inherit_document_labels``). The
    caller's write check decides as for a status change: only the author's side, not a closed
    record; NotFound when the caller may not know the document."""
    if len(code) != 1 or code not in CONFIDENTIALITY_ORDER:
        raise BusinessRule(f"Unknown confidentiality code {code!r}", ("DocumentReference.securityLabel",))
    with svc.transaction() as conn:
        current = _locked(svc, conn, document_id)
        resource = current.resource()
        labels = [_without_level(label) for label in resource.get("securityLabel") or ()]
        level = {"coding": [{"system": CONFIDENTIALITY_SYSTEM, "code": code}]}
        resource["securityLabel"] = [level, *(label for label in labels if label)]
        meta = resource.get("meta")
        if isinstance(meta, dict) and meta.get("security"):
            kept = [c for c in meta["security"] if not _is_level(c)]
            if kept:
                meta["security"] = kept
            else:
                del meta["security"]
        svc.check_resource(resource, "DocumentReference")
        write = Write("PUT", "DocumentReference", document_id, resource, current)
        return svc.apply_writes(conn, [write])[0]


def _locked(svc: FhirService, conn: Connection, document_id: str) -> Stored:
    """The stored document, its changes serialised until the transaction ends; NotFound when
    the caller may not know it (``known_document``)."""
    serialize(conn, f"DocumentReference/{document_id}")
    current = known_document(svc, conn, document_id)
    if current is None:
        raise NotFound(f"Resource DocumentReference/{document_id} is not known")
    return current


def _is_level(coding: Any) -> bool:
    return isinstance(coding, dict) and coding.get("system") == CONFIDENTIALITY_SYSTEM


def _without_level(label: Any) -> dict[str, Any] | None:
    """A ``securityLabel`` concept without its confidentiality codings (None when nothing is left)."""
    if not isinstance(label, dict):
        return None
    codings = [c for c in label.get("coding") or () if not _is_level(c)]
    rest = {k: v for k, v in label.items() if k != "coding"}
    if codings:
        rest["coding"] = codings
    return rest if codings or rest.get("text") else None


def transition_problem(current: Mapping[str, Any], status: str) -> str | None:
    """Why a document of ``current``'s status cannot become ``status`` (None: it can)."""
    now = str(current.get("status"))
    if status in TRANSITIONS.get(now, frozenset()):
        return None
    return f"a document with status {now!r} cannot become {status!r}"


def lock(conn: Connection, document_ids: list[str]) -> None:
    """Serialise concurrent changes of these documents until the transaction ends."""
    serialize_many(conn, [f"DocumentReference/{i}" for i in document_ids])


def apply_statuses(svc: FhirService, conn: Connection, changes: Mapping[str, str]) -> dict[str, Stored]:
    """Write the status changes ``document id → status`` (already checked) as updates, through
    the caller's write check; returns the new versions."""
    writes: list[Write] = []
    for document_id, status in sorted(changes.items()):
        current = svc.store.current(conn, "DocumentReference", document_id)
        assert current is not None
        resource = current.resource()
        resource["status"] = status
        svc.check_resource(resource, "DocumentReference")
        writes.append(Write("PUT", "DocumentReference", document_id, resource, current))
    stored = svc.apply_writes(conn, writes)
    return {w.id: s for w, s in zip(writes, stored, strict=True)}


def change_status(svc: FhirService, document_id: str, status: str) -> Stored:
    """Deprecate (``superseded``) or mark in error (``entered-in-error``) one stored document, as
    the caller (the portal's buttons, and any Python caller): NotFound when the caller may not
    know it, BusinessRule for a change its status does not allow, Forbidden for a non-author."""
    with svc.transaction() as conn:
        current = _locked(svc, conn, document_id)
        problem = transition_problem(current.resource(), status)
        if problem is not None:
            raise BusinessRule(f"DocumentReference/{document_id}: {problem}", ("DocumentReference.status",))
        return apply_statuses(svc, conn, {document_id: status})[document_id]
