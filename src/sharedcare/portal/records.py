"""What the portal shows of a record, read through the caller's access decision.

Record content is only ever read through ``FhirService.for_session(PolicySession(...))``: the
same filter as the FHIR API, so a page can never show more than the API would, and the read is
in the record's access log. Directory entries (Practitioner, Organization: reference data that
every signed-in person may read) are looked up with the unrestricted service, which writes no
audit record for them: naming a professional is not reading anyone's record.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import Request

from sharedcare.access.policy import category_of
from sharedcare.access.requests import is_pending
from sharedcare.access.session import PolicySession, RequestInfo
from sharedcare.fhir.errors import FhirError
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.store import Stored
from sharedcare.portal.sessions import PortalUser

ITEMS_LIMIT = 500
"""Items read for one page: the summary and the "hide an item" list show the newest of these."""
NOT_ITEMS = frozenset({"Patient", "Consent", "Provenance", "AuditEvent", "RelatedPerson"})
"""Compartment resources that are not items of care (identity, the holder's own choices)."""
_PARTIAL_DATE = re.compile(r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?$")
_DATE_FIELDS = (
    "effectiveDateTime",
    "effectivePeriod.start",
    "effectiveInstant",
    "occurrenceDateTime",
    "performedDateTime",
    "performedPeriod.start",
    "issued",
    "date",
    "recordedDate",
    "authoredOn",
    "whenHandedOver",
    "dateAsserted",
    "onsetDateTime",
    "started",
    "created",
    "period.start",
    "meta.lastUpdated",
)
_TITLE_FIELDS = (
    "title",
    "description",
    "code.text",
    "code.coding",
    "medicationCodeableConcept.text",
    "medicationCodeableConcept.coding",
    "vaccineCode.text",
    "vaccineCode.coding",
    "type.text",
    "type.coding",
    "content.0.attachment.title",
    "category.0.text",
    "category.0.coding",
    "class.display",
    "name",
)


@dataclass(frozen=True, slots=True)
class Item:
    """One item of a record as lists show it: never more than what the reader may see."""

    reference: str
    type: str
    title: str
    when: datetime | None
    pending: bool = False
    """Held back for a consultation d'annonce (only professionals ever see such an item)."""


def view(request: Request, user: PortalUser) -> FhirService:
    """The FHIR service as ``user`` sees it: filtered by the access decision, every read audited."""
    client = request.client
    session = PolicySession(
        user.principal,
        request.app.state.policy,
        category_of,
        enforce_scopes=False,
        info=RequestInfo(
            source_ip=client.host if client else None,
            user_agent=request.headers.get("user-agent"),
            request_id=request.headers.get("x-request-id"),
        ),
    )
    service: FhirService = request.app.state.fhir.for_session(session)
    return service


def _path(res: Any, path: str) -> Any:
    value = res
    for part in path.split("."):
        if isinstance(value, list):
            value = value[int(part)] if part.isdigit() and int(part) < len(value) else None
        elif isinstance(value, dict):
            value = value.get(part)
        else:
            return None
        if value is None:
            return None
    return value


def parse_when(value: Any) -> datetime | None:
    """A FHIR date, dateTime or instant (partial dates included) as aware UTC; None if unreadable."""
    if not isinstance(value, str) or not value:
        return None
    match = _PARTIAL_DATE.match(value)
    if match:
        year, month, day = (int(g) if g else 1 for g in match.groups())
        try:
            return datetime(year, month, day, tzinfo=UTC)
        except ValueError:
            return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def title_of(res: dict[str, Any]) -> str:
    """A short human title for a resource: its title, text or first coding's display."""
    for path in _TITLE_FIELDS:
        value = _path(res, path)
        if isinstance(value, list):
            value = next((c.get("display") for c in value if isinstance(c, dict) and c.get("display")), None)
        if isinstance(value, str) and value.strip():
            return value.strip()[:200]
    return ""


def when_of(res: dict[str, Any]) -> datetime | None:
    for path in _DATE_FIELDS:
        when = parse_when(_path(res, path))
        if when is not None:
            return when
    return None


def items_of(matches: Iterable[Stored]) -> list[Item]:
    """The items of care among stored resources, newest first."""
    items = []
    for stored in matches:
        if stored.type in NOT_ITEMS or stored.deleted:
            continue
        res = stored.resource()
        when = when_of(res) or stored.last_updated.replace(tzinfo=UTC)
        items.append(Item(f"{stored.type}/{stored.id}", stored.type, title_of(res), when, is_pending(res)))
    items.sort(key=lambda i: i.when or datetime.min.replace(tzinfo=UTC), reverse=True)
    return items


def record_items(service: FhirService, patient_id: str, limit: int = ITEMS_LIMIT) -> list[Item]:
    """The record's items the caller may see, newest first (one audited ``$everything`` read).

    Returns [] when the caller may not see the record at all (unknown, closed, no access).
    """
    try:
        page = service.everything(patient_id, count=limit)
    except FhirError:
        return []
    return items_of(page.matches)


def titles(service: FhirService, references: Iterable[str], types: Iterable[str]) -> dict[str, str]:
    """Titles of the referenced resources of ``types`` the caller may see (one search per type)."""
    by_type: dict[str, set[str]] = {}
    for ref in references:
        rtype, _, rest = ref.partition("/")
        rid = rest.split("/", 1)[0]
        if rtype in types and rid:
            by_type.setdefault(rtype, set()).add(rid)
    found: dict[str, str] = {}
    for rtype, ids in sorted(by_type.items()):
        for chunk in _chunks(sorted(ids), 100):
            query = service.parse_search(rtype, [("_id", ",".join(chunk)), ("_count", "100")], strict=True)
            for stored in service.search(query).matches:
                found[f"{rtype}/{stored.id}"] = title_of(stored.resource())
    return found


def _chunks(values: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def human_name(res: dict[str, Any]) -> str:
    """The first name of a Patient or Practitioner, or an Organization's name."""
    name = res.get("name")
    if isinstance(name, str):
        return name
    if isinstance(name, list) and name:
        first = next((n for n in name if isinstance(n, dict) and n.get("use") == "official"), name[0])
        if isinstance(first, dict):
            if first.get("text"):
                return str(first["text"])
            parts = [*first.get("prefix", []), *first.get("given", []), first.get("family", "")]
            return " ".join(str(p) for p in parts if p)
    return ""


def directory_names(request: Request, references: Iterable[str]) -> dict[str, str]:
    """``Practitioner/id`` and ``Organization/id`` → name, from the national directory."""
    service: FhirService = request.app.state.fhir
    ids: dict[str, set[str]] = {}
    for ref in references:
        rtype, _, rid = ref.partition("/")
        if rtype in ("Practitioner", "Organization") and rid:
            ids.setdefault(rtype, set()).add(rid)
    names: dict[str, str] = {}
    for rtype, wanted in ids.items():
        for chunk in _chunks(sorted(wanted), 100):
            query = service.parse_search(rtype, [("_id", ",".join(chunk)), ("_count", "100")], strict=True)
            for stored in service.search(query).matches:
                names[f"{rtype}/{stored.id}"] = human_name(stored.resource())
    return names


def find_practitioners(request: Request, words: list[str], limit: int = 20) -> list[tuple[str, str]]:
    """Active professionals of the directory whose names start with every word: ``(id, name)``."""
    service: FhirService = request.app.state.fhir
    params = [*(("name", w) for w in words), ("_count", str(limit)), ("_sort", "family")]
    try:
        found = service.search(service.parse_search("Practitioner", params, strict=True)).matches
    except FhirError:  # text the search grammar refuses: nothing matches it
        return []
    out = []
    for stored in found:
        res = stored.resource()
        if res.get("active", True) is not False:
            out.append((stored.id, human_name(res)))
    return out


def patient_summary(res: dict[str, Any]) -> dict[str, str]:
    """Name, birth date and gender of a Patient, for lists and headers."""
    return {
        "name": human_name(res),
        "birth_date": str(res.get("birthDate") or ""),
        "gender": str(res.get("gender") or ""),
    }
