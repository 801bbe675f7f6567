"""``/fhir/AuditEvent``: the access log as FHIR AuditEvents (IHE BALP), read through the policy.

The log is written only by the platform (every act records itself); this endpoint reads it:
the holder their record's log, agency staff for support, professionals where their column
of the matrix reads the traces. The traces of a closed record are archived (art. 8,
``audit.retention``): only the holder's side, agency staff and trusted clients still read them.
Writes answer 405.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from sharedcare.access import traces
from sharedcare.access.principals import Principal
from sharedcare.api.fhir import authenticate, base_url, fhir_response
from sharedcare.audit import retention
from sharedcare.audit.auditevent import to_audit_event
from sharedcare.fhir.errors import BadRequest, MethodNotAllowed, NotFound
from sharedcare.fhir.search.values import date_range
from sharedcare.fhir.store import utcnow

router = APIRouter(prefix="/fhir/AuditEvent", dependencies=[Depends(authenticate)])
MAX_COUNT = 200


def _principal(request: Request) -> Principal:
    principal: Principal = request.state.principal
    return principal


def _date_bounds(values: list[str]) -> tuple[datetime | None, datetime | None]:
    since: datetime | None = None
    until: datetime | None = None
    for value in values:
        prefix, text = (
            (value[:2], value[2:]) if value[:2] in ("ge", "gt", "le", "lt", "eq") else ("eq", value)
        )
        try:
            low, high = date_range(text)
        except ValueError:
            raise BadRequest(f"Invalid date {value!r}", ("AuditEvent.recorded",)) from None
        if prefix in ("ge", "eq"):
            since = low
        if prefix == "gt":
            since = high
        if prefix in ("lt",):
            until = low
        if prefix in ("le", "eq"):
            until = high
    return since, until


@router.get("")
async def search_audit_events(request: Request) -> Response:
    params = list(request.query_params.multi_items())
    known = {"patient", "date", "_count", "_page"}
    unknown = sorted({k for k, _ in params if k not in known})
    if unknown:
        raise BadRequest(f"Unsupported AuditEvent search parameter(s): {', '.join(unknown)}")
    q = dict(params)
    patient = q.get("patient", "").removeprefix("Patient/") or None
    since, until = _date_bounds([v for k, v in params if k == "date"])
    count = min(int(q["_count"]), MAX_COUNT) if q.get("_count", "").isdigit() else 50
    before = int(q["_page"]) if q.get("_page", "").isdigit() else None
    app = request.app

    def run() -> list[Any]:
        with app.state.engine.connect() as conn:
            found = traces.search(
                conn,
                app.state.policy,
                _principal(request),
                utcnow(),
                patient_id=patient,
                since=since,
                until=until,
                before=before,
                limit=count + 1,
            )
            # A caller restricted to some records reads one record's log per search, so this
            # drops a whole page or nothing: the paging stays right.
            return retention.readable(conn, _principal(request), found)

    entries = await run_in_threadpool(run)
    base = base_url(request)
    more = len(entries) > count
    entries = entries[:count]
    links = [{"relation": "self", "url": f"{base}/AuditEvent?{urlencode(params)}"}]
    if more and entries:
        nxt = [(k, v) for k, v in params if k != "_page"] + [("_page", str(entries[-1].pk))]
        links.append({"relation": "next", "url": f"{base}/AuditEvent?{urlencode(nxt)}"})
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [
            {
                "fullUrl": f"{base}/AuditEvent/{e.pk}",
                "resource": to_audit_event(e, server_url=base),
                "search": {"mode": "match"},
            }
            for e in entries
        ],
    }
    return fhir_response(request, bundle)


@router.get("/{entry_id}")
async def read_audit_event(request: Request, entry_id: str) -> Response:
    app = request.app

    def run() -> Any:
        with app.state.engine.connect() as conn:
            entry = traces.read(conn, app.state.policy, _principal(request), utcnow(), entry_id)
            if not retention.readable(conn, _principal(request), [entry]):
                raise NotFound(f"Resource AuditEvent/{entry_id} is not known")
            return entry

    entry = await run_in_threadpool(run)
    return fhir_response(request, to_audit_event(entry, server_url=base_url(request)))


@router.api_route("", methods=["POST", "PUT", "PATCH", "DELETE"])
@router.api_route("/{entry_id}", methods=["POST", "PUT", "PATCH", "DELETE"])
async def refuse_writes(request: Request) -> Response:
    raise MethodNotAllowed(
        "AuditEvents are recorded by the platform itself; the access log cannot be written"
    )
