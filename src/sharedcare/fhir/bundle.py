"""Batch and transaction Bundles.

A transaction is atomic: ``urn:uuid`` and conditional references are resolved, entries are
processed in the order the specification sets (DELETE, POST, PUT/PATCH, GET), and either all
entries are applied or none. Plain creates are written in one bulk step, which is what makes
large patient bundles fast. A batch applies each entry in its own transaction and reports
each entry's status.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from sqlalchemy import Connection

from sharedcare.fhir.errors import BadRequest, FhirError, Issue, MultipleMatches, NotFound, operation_outcome
from sharedcare.fhir.service import ID_RE, FhirService, WriteOutcome, same_content, serialize_many
from sharedcare.fhir.store import Stored, Write, instant

log = logging.getLogger(__name__)
STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}
GetHandler = Callable[[str, str, Connection], tuple[int, Any]]  # (url, base_url, conn) -> (status, body)


@dataclass
class _Entry:
    index: int
    method: str
    url: str
    resource: dict[str, Any] | None
    full_url: str | None
    if_none_exist: str | None
    if_match: str | None
    rtype: str = ""
    rid: str | None = None
    query: str | None = None
    assigned_id: str | None = None
    """The id a plain POST gets, chosen by the caller before the transaction (``documents`` points
    attachments at Binaries this way); None: a new server id."""


Entry = _Entry
"""A parsed Bundle entry (what ``transaction_in`` takes)."""


def parse_entries(bundle: dict[str, Any]) -> list[_Entry]:
    """The entries of a batch or transaction Bundle, parsed and checked (400 on malformed ones)."""
    return _parse_entries(bundle)


def _parse_entries(bundle: dict[str, Any]) -> list[_Entry]:
    entries = []
    raw_entries = bundle.get("entry") or []
    if not isinstance(raw_entries, list):
        raise BadRequest("Bundle.entry must be an array", ("Bundle.entry",))
    for i, raw in enumerate(raw_entries):
        request = raw.get("request") if isinstance(raw, dict) else None
        if not isinstance(request, dict) or "method" not in request or "url" not in request:
            raise BadRequest(
                f"Bundle entry {i} has no request.method and request.url", (f"Bundle.entry[{i}]",)
            )
        method = str(request["method"]).upper()
        if method not in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
            raise BadRequest(f"Bundle entry {i}: unknown method {method!r}", (f"Bundle.entry[{i}].request",))
        url = str(request["url"])
        res = raw.get("resource")
        entry = _Entry(
            i, method, url, res, raw.get("fullUrl"), request.get("ifNoneExist"), request.get("ifMatch")
        )
        path, _, query = url.partition("?")
        parts = [p for p in path.split("/") if p]
        entry.rtype = parts[0] if parts else ""
        entry.rid = parts[1] if len(parts) > 1 else None
        entry.query = query or None
        if method in ("POST", "PUT") and not isinstance(res, dict):
            raise BadRequest(f"Bundle entry {i} ({method} {url}) has no resource", (f"Bundle.entry[{i}]",))
        if res is not None and not isinstance(res, dict):
            raise BadRequest(
                f"Bundle entry {i}: resource must be an object", (f"Bundle.entry[{i}].resource",)
            )
        if method == "PATCH":
            data = res.get("data") if isinstance(res, dict) and res.get("resourceType") == "Binary" else None
            try:
                entry.resource = {
                    "patch": orjson.loads(
                        base64.b64decode(data or "", validate=True) if isinstance(data, str) else b""
                    )
                }
            except (ValueError, TypeError, orjson.JSONDecodeError):
                raise BadRequest(
                    f"Bundle entry {i}: a PATCH entry needs a Binary resource holding a JSON Patch",
                    (f"Bundle.entry[{i}].resource",),
                ) from None
        entries.append(entry)
    return entries


def _reference_holders(node: Any, out: list[dict[str, Any]]) -> None:
    """Collect every object with a string ``reference`` (one walk serves lookup and rewrite)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                out.append(node)
            elif isinstance(value, (dict, list)):
                _reference_holders(value, out)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, (dict, list)):
                _reference_holders(item, out)


def _is_conditional(reference: str) -> bool:
    head, sep, _query = reference.partition("?")
    return bool(sep) and "/" not in head


def _claim(identities: set[tuple[str, str]], e: _Entry) -> None:
    """Record that ``e`` changes ``rtype/rid``; a second entry changing the same resource is a 400."""
    assert e.rid is not None
    key = (e.rtype, e.rid)
    if key in identities:
        raise BadRequest(
            f"Bundle entry {e.index}: {e.rtype}/{e.rid} is changed by more than one entry of the transaction",
            (f"Bundle.entry[{e.index}]",),
        )
    identities.add(key)


def _claim_literal(entries: list[_Entry]) -> set[tuple[str, str]]:
    """Refuse duplicate ``fullUrl``s and entries changing the same ``Type/id`` (FHIR R4 3.1.0.11.2)."""
    identities: set[tuple[str, str]] = set()
    full_urls: set[str] = set()
    for e in entries:
        if e.full_url and e.method in ("POST", "PUT"):
            if e.full_url in full_urls:
                raise BadRequest(
                    f"Bundle entry {e.index}: fullUrl {e.full_url!r} appears twice in the transaction",
                    (f"Bundle.entry[{e.index}].fullUrl",),
                )
            full_urls.add(e.full_url)
        if e.method in ("PUT", "DELETE", "PATCH") and e.rid:
            _claim(identities, e)
    return identities


def _response(status: int, stored: Stored | None) -> dict[str, Any]:
    response: dict[str, Any] = {"status": STATUS_TEXT.get(status, str(status))}
    if stored is not None:
        response["location"] = f"{stored.type}/{stored.id}/_history/{stored.version}"
        response["etag"] = stored.etag
        response["lastModified"] = instant(stored.last_updated)
    return response


class BundleProcessor:
    """Processes batch and transaction Bundles against a ``FhirService``."""

    def __init__(self, service: FhirService, get_handler: GetHandler | None = None) -> None:
        self.service = service
        self.get_handler = get_handler

    def process(self, bundle: Any, base_url: str = "") -> dict[str, Any]:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise BadRequest("Expected a Bundle resource")
        kind = bundle.get("type")
        if kind == "transaction":
            return self.transaction(bundle, base_url)
        if kind == "batch":
            return self.batch(bundle, base_url)
        raise BadRequest(f"Bundle type must be batch or transaction, not {kind!r}", ("Bundle.type",))

    # -- transaction -------------------------------------------------------------------------
    def transaction(self, bundle: dict[str, Any], base_url: str = "") -> dict[str, Any]:
        entries = _parse_entries(bundle)
        with self.service.transaction() as conn:
            responses = self.transaction_in(conn, entries, base_url)
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": responses}

    def transaction_in(self, conn: Connection, entries: list[_Entry], base_url: str) -> list[dict[str, Any]]:
        svc = self.service
        mapping: dict[str, str] = {}
        outcomes: dict[int, dict[str, Any]] = {}
        existing_creates: dict[int, WriteOutcome] = {}
        conditional_creates: dict[tuple[str, str], _Entry] = {}
        twins: dict[int, int] = {}  # entry index -> the earlier identical conditional create
        identities = _claim_literal(entries)
        for e in entries:
            # Step 1, DELETE, runs first: the look-ups of the later steps must not find what it deletes.
            if e.method == "DELETE":
                conditional_delete = e.rid is None
                try:
                    outcomes[e.index] = self._apply_one(conn, e, base_url)
                except FhirError as err:
                    err.diagnostics = f"Bundle entry {e.index} ({e.method} {e.url}): {err.diagnostics}"
                    raise
                if conditional_delete and e.rid:
                    _claim(identities, e)
        for e in entries:
            if e.method == "POST":
                assert e.resource is not None
                svc.check_resource(e.resource, e.rtype or None)
                target_id: str | None = None
                same = conditional_creates.get((e.rtype, e.if_none_exist or ""))
                if e.if_none_exist and same is not None:
                    # the same conditional create twice in one transaction makes one resource
                    e.rid = same.rid
                    twins[e.index] = same.index
                    if e.full_url:
                        mapping[e.full_url] = f"{e.rtype}/{e.rid}"
                    continue
                if e.if_none_exist:
                    conditional_creates[(e.rtype, e.if_none_exist)] = e
                    found = svc._match(conn, e.rtype, e.if_none_exist, base_url)
                    if len(found) > 1:
                        raise MultipleMatches(
                            f"Bundle entry {e.index}: ifNoneExist matches several resources"
                        )
                    if found:
                        existing_creates[e.index] = WriteOutcome(found[0], 200)
                        target_id = found[0].id
                e.rid = target_id or e.assigned_id or str(uuid.uuid4())
                if e.full_url:
                    mapping[e.full_url] = f"{e.resource['resourceType']}/{e.rid}"
            elif e.method == "PUT" and e.query and not e.rid:
                svc.check_type(e.rtype)
                found = svc._match(conn, e.rtype, e.query, base_url)
                if len(found) > 1:
                    raise MultipleMatches(
                        f"Bundle entry {e.index}: conditional update matches several resources"
                    )
                e.rid = found[0].id if found else (e.resource or {}).get("id") or str(uuid.uuid4())
                e.query = None
                _claim(identities, e)
                if e.full_url:
                    mapping[e.full_url] = f"{e.rtype}/{e.rid}"
            elif e.method == "PUT" and e.full_url and e.rid:
                mapping[e.full_url] = f"{e.rtype}/{e.rid}"
        holders: list[dict[str, Any]] = []
        for e in entries:
            if e.resource is not None and e.method != "PATCH":
                _reference_holders(e.resource, holders)
        conditional = {h["reference"] for h in holders if _is_conditional(h["reference"])}
        # A conditional reference may name a conditional create of this transaction (as HAPI allows).
        pending = {
            f"{e.rtype}?{e.if_none_exist}": e for e in entries if e.method == "POST" and e.if_none_exist
        }
        for ref in sorted(conditional):
            if ref in pending:
                mapping[ref] = f"{pending[ref].rtype}/{pending[ref].rid}"
                continue
            rtype, _, query = ref.partition("?")
            svc.check_type(rtype)
            found = svc._match(conn, rtype, query, base_url)
            if len(found) != 1:
                raise (MultipleMatches if found else NotFound)(
                    f"Conditional reference {ref!r} matches {len(found)} resources; it must match exactly one"
                )
            mapping[ref] = f"{rtype}/{found[0].id}"
        for holder in holders:
            target = mapping.get(holder["reference"])
            if target is not None:
                holder["reference"] = target
            elif holder["reference"].startswith("urn:uuid:"):
                raise BadRequest(
                    f"Reference {holder['reference']!r} does not name any entry (fullUrl) of the transaction"
                )
        order = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
        creates: list[_Entry] = []
        puts: list[_Entry] = []
        for e in sorted(entries, key=lambda x: order[x.method]):
            if e.method == "DELETE":
                continue  # done above
            try:
                if e.method == "POST":
                    if e.index in twins:
                        continue  # answered after its twin, below
                    if e.index in existing_creates:
                        found_outcome = existing_creates[e.index]
                        outcomes[e.index] = {"response": _response(200, found_outcome.stored)}
                    else:
                        creates.append(e)
                    continue
                if creates:
                    self._bulk_create(conn, creates, outcomes)
                    creates = []
                if e.method == "PUT" and e.rid and not e.if_match:
                    puts.append(e)
                    continue
                if puts:
                    self._bulk_put(conn, puts, outcomes)
                    puts = []
                outcomes[e.index] = self._apply_one(conn, e, base_url)
            except FhirError as err:
                err.diagnostics = f"Bundle entry {e.index} ({e.method} {e.url}): {err.diagnostics}"
                raise
        if creates:
            self._bulk_create(conn, creates, outcomes)
        if puts:
            self._bulk_put(conn, puts, outcomes)
        for index, twin in twins.items():
            first = outcomes[twin]["response"]
            outcomes[index] = {"response": {**first, "status": STATUS_TEXT[200]}}
        return [outcomes[e.index] for e in entries]

    def _bulk_put(self, conn: Connection, puts: list[_Entry], outcomes: dict[int, dict[str, Any]]) -> None:
        """Plain updates (no If-Match) in one bulk write; unchanged resources keep their version."""
        svc = self.service
        for e in puts:
            assert e.resource is not None and e.rid
            if not ID_RE.fullmatch(e.rid):
                raise BadRequest(f"Bundle entry {e.index}: invalid resource id {e.rid!r}")
            if e.resource.get("id", e.rid) != e.rid:
                raise BadRequest(f"Bundle entry {e.index}: the id in the body does not match {e.url}")
            if e.resource.get("resourceType") != e.rtype:
                raise BadRequest(f"Bundle entry {e.index}: the resource type does not match {e.url}")
            svc.check_resource(e.resource, e.rtype)
        keys = [(e.rtype, e.rid) for e in puts if e.rid]
        serialize_many(conn, [f"{t}/{i}" for t, i in keys])
        current = svc.store.current_many(conn, keys)
        writes: list[Write] = []
        written: list[_Entry] = []
        for e in puts:
            assert e.resource is not None and e.rid
            res = {**e.resource, "id": e.rid}
            now = current.get((e.rtype, e.rid))
            if now is not None and not svc.visible(conn, now):
                raise NotFound(f"Bundle entry {e.index}: resource {e.rtype}/{e.rid} is not known")
            if now is not None and not now.deleted and same_content(now.resource(), res):
                outcomes[e.index] = {"response": _response(200, now)}
                continue
            writes.append(Write("PUT", e.rtype, e.rid, res, now))
            written.append(e)
        for e, stored, w in zip(written, svc.apply_writes(conn, writes), writes, strict=True):
            created = w.current is None or w.current.deleted
            outcomes[e.index] = {"response": _response(201 if created else 200, stored)}

    def _bulk_create(
        self, conn: Connection, creates: list[_Entry], outcomes: dict[int, dict[str, Any]]
    ) -> None:
        writes = []
        for e in creates:
            assert e.resource is not None and e.rid is not None
            res = dict(e.resource)
            res["id"] = e.rid
            writes.append(Write("POST", res["resourceType"], e.rid, res, None))
        for e, stored in zip(creates, self.service.apply_writes(conn, writes), strict=True):
            outcomes[e.index] = {"response": _response(201, stored)}

    def _apply_one(self, conn: Connection, e: _Entry, base_url: str) -> dict[str, Any]:
        svc = self.service
        if e.method == "DELETE":
            if e.query and not e.rid:
                deleted = svc.conditional_delete_in(conn, e.rtype, e.query, base_url=base_url)
                e.rid = deleted.id if deleted else None
            elif e.rid:
                with contextlib.suppress(NotFound):  # deleting what is not there: same end state
                    svc.delete_in(conn, e.rtype, e.rid)
            else:
                raise BadRequest("DELETE needs Type/id or Type?criteria")
            return {"response": {"status": "204 No Content"}}
        if e.method == "PUT":
            assert e.resource is not None and e.rid
            res = {**e.resource, "id": e.resource.get("id", e.rid)}
            outcome = svc.update_in(conn, e.rtype, e.rid, res, if_match=e.if_match)
            return {"response": _response(outcome.status, outcome.stored)}
        if e.method == "PATCH":
            patch = (e.resource or {}).get("patch")
            if e.query and not e.rid:
                found = svc._match(conn, e.rtype, e.query, base_url)
                if len(found) != 1:
                    raise (MultipleMatches if found else NotFound)(f"Conditional patch matches {len(found)}")
                e.rid = found[0].id
            assert e.rid
            outcome = svc.patch_in(conn, e.rtype, e.rid, patch, if_match=e.if_match)
            return {"response": _response(outcome.status, outcome.stored)}
        if self.get_handler is None:
            raise BadRequest("GET entries are not supported here")
        status, body = self.get_handler(e.url, base_url, conn)
        return {"resource": body, "response": {"status": STATUS_TEXT.get(status, str(status))}}

    # -- batch -------------------------------------------------------------------------------
    def batch(self, bundle: dict[str, Any], base_url: str = "") -> dict[str, Any]:
        entries = _parse_entries(bundle)
        responses = []
        for e in entries:
            try:
                with self.service.transaction() as conn:
                    if e.method == "POST":
                        assert e.resource is not None
                        if e.resource.get("resourceType") != e.rtype:
                            raise BadRequest(
                                f"Resource type {e.resource.get('resourceType')!r} does not match {e.url!r}"
                            )
                        outcome = self.service.create_in(
                            conn, e.resource, if_none_exist=e.if_none_exist, base_url=base_url
                        )
                        responses.append({"response": _response(outcome.status, outcome.stored)})
                    else:
                        responses.append(self._apply_one(conn, e, base_url))
            except FhirError as err:
                responses.append({"response": {"status": str(err.status), "outcome": err.outcome()}})
            except Exception as exc:  # one entry's failure must not hide the others' results
                log.exception("batch entry %s failed", e.index)
                failure = operation_outcome(
                    [Issue("error", "exception", f"Internal error: {type(exc).__name__}")]
                )
                responses.append({"response": {"status": "500", "outcome": failure}})
        return {"resourceType": "Bundle", "type": "batch-response", "entry": responses}


def error_entry(issue: Issue) -> dict[str, Any]:
    """An OperationOutcome for one failed entry (used by importers that keep going)."""
    return operation_outcome([issue])


__all__ = ["BundleProcessor", "Entry", "error_entry", "parse_entries", "parse_qsl", "urlsplit"]
