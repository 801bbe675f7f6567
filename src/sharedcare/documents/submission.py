"""ITI-65 Provide Document Bundle: filing a submission's documents into a patient's record.

The order is what keeps a refused submission from leaving anything behind:

1. ``mhd.read`` checks the bundle without the database (metadata, FHIR validity, sizes and
   hashes against the decoded bytes);
2. the patient and the documents it relates to are checked (they exist, belong to the same
   record, allow the status change); every problem so far is reported in one OperationOutcome
   (422). The resources to write are prepared: ids chosen, the ``Binary`` entries without
   ``data`` pointing at their blob (``documents.content``), each attachment's ``url`` at its
   Binary; and the caller's write check is asked about all of them (rights, closed record,
   authorship of replaced documents): a refusal stops here;
3. the bytes are written to the blob store (outside any write transaction: the store creates a
   record's data key in a transaction of its own, which SQLite could not open meanwhile);
4. one write transaction checks step 2 again, writes the resources through the transaction
   Bundle processor (``fhir.bundle``: the write check again, the audit records) and marks
   replaced documents ``superseded``.

A refused submission so writes no blob. When step 4 fails (a race with a closure or the end of
a care relationship, a database error), the blobs of step 3 are unreachable: no Binary points at
them, the store is content-addressed (the same bytes submitted again reuse them), and they are
removed with their record's namespace.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from sharedcare.access.categories import classify
from sharedcare.access.policy import RESTRICTED, VERY_RESTRICTED
from sharedcare.access.principals import PrincipalKind
from sharedcare.access.requests import is_pending
from sharedcare.access.session import PolicySession
from sharedcare.documents import lifecycle
from sharedcare.documents.categories import document_types
from sharedcare.documents.content import security_codings, stored_binary, strictest, tag_category
from sharedcare.documents.mhd import Content, Submission, SubmissionRejected, literal, read
from sharedcare.fhir.bundle import BundleProcessor, parse_entries
from sharedcare.fhir.errors import Conflict, Issue, PayloadTooLarge
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.store import CONFIDENTIALITY_SYSTEM, Write, confidentiality_of, instant, utcnow
from sharedcare.notify import outbox
from sharedcare.storage.blobstore import CHUNK, BlobStore, BlobTooLarge


@dataclass(slots=True)
class _Plan:
    """What the checked submission writes."""

    bundle: dict[str, Any]
    """The bundle to process: the request's entries but the status updates, then the Binaries of
    inline content."""
    positions: list[int]
    """For each entry of ``bundle`` from the request, its index in the request."""
    ids: dict[int, str]
    """Position in ``bundle`` → the id its POST creates."""
    statuses: dict[str, str]
    """Stored document id → its new status (replaced: superseded; updates of the request)."""
    contents: list[Content] = field(default_factory=list)


def provide(
    svc: FhirService,
    blobs: BlobStore,
    bundle: dict[str, Any],
    *,
    base_url: str,
    max_size: int | None = None,
) -> dict[str, Any]:
    """File a Provide Document Bundle as the caller of ``svc``; the transaction-response Bundle.

    Raises ``SubmissionRejected`` (422, every problem), ``PayloadTooLarge`` (413) for content over
    ``max_size`` bytes, or the write check's ``Forbidden``/``BusinessRule``: nothing is stored then.
    """
    submission = read(bundle, base_url=base_url, validator=svc.validator)
    if max_size is not None:
        for doc in submission.documents:
            for att in doc.attachments:
                if att.content.size > max_size:
                    raise PayloadTooLarge(
                        f"The content of a document exceeds the limit of {max_size} bytes",
                        (f"Bundle.entry[{doc.entry}].resource.content[{att.position}]",),
                    )
    with svc.engine.connect() as conn:
        statuses = _check_stored(svc, conn, submission, base_url)
        plan = _plan(submission, statuses, base_url)
        _check_writes(svc, conn, plan)
    _store(blobs, submission.patient_id, plan.contents, max_size)
    with svc.transaction() as conn:
        lifecycle.lock(conn, submission.targets())
        if _check_stored(svc, conn, submission, base_url) != statuses:
            raise Conflict("A document the submission relates to changed meanwhile; submit again")
        entries = parse_entries(plan.bundle)
        for position, entry in enumerate(entries):
            entry.assigned_id = plan.ids.get(position)
        processed = BundleProcessor(svc).transaction_in(conn, entries, base_url)
        changed = lifecycle.apply_statuses(svc, conn, plan.statuses)
        _notify(svc, conn, submission.patient_id, plan)
    responses: dict[int, dict[str, Any]] = dict(zip(plan.positions, processed, strict=False))
    for update in submission.updates:
        stored = changed[update.document_id]
        responses[update.entry] = {
            "response": {
                "status": "200 OK",
                "location": f"DocumentReference/{stored.id}/_history/{stored.version}",
                "etag": stored.etag,
                "lastModified": instant(stored.last_updated),
            }
        }
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [responses[i] for i in range(len(bundle["entry"]))],
    }


def _notify(svc: FhirService, conn: Connection, patient_id: str, plan: _Plan) -> None:
    """Queue the holder's "new document" notice, in the write transaction (it exists exactly
    when the documents do), once per submission set. Not for what the holder or a representative
    files themselves, nor for documents held back for a consultation d'annonce (the notice would
    disclose them). Its parameters name the patient category only: never a title or a type."""
    session = svc.session
    if isinstance(session, PolicySession) and session.principal.kind in (
        PrincipalKind.PATIENT,
        PrincipalKind.REPRESENTATIVE,
    ):
        return
    created = [
        (position, entry["resource"])
        for position, entry in enumerate(plan.bundle["entry"])
        if entry["request"]["method"] == "POST"
    ]
    documents = [
        res for _, res in created if res["resourceType"] == "DocumentReference" and not is_pending(res)
    ]
    if not documents:
        return
    key = next((plan.ids[p] for p, res in created if res["resourceType"] == "List"), None)
    category = document_types().category_of(documents[0])
    outbox.queue(
        conn,
        patient_id,
        outbox.NEW_DOCUMENT,
        utcnow(),
        dedupe=f"{outbox.NEW_DOCUMENT}:{key or plan.ids[created[0][0]]}",
        category=category.code if category else None,
        documents=len(documents),
    )


def _check_stored(
    svc: FhirService, conn: Connection, submission: Submission, base_url: str
) -> dict[str, str]:
    """Check what the submission says of stored resources; the status changes it implies."""
    issues: list[Issue] = []

    def problem(code: str, text: str, expression: str) -> None:
        issues.append(Issue("error", code, text, (expression,)))

    pid = submission.patient_id
    patient = svc.store.current(conn, "Patient", pid)
    if patient is None or patient.deleted:
        where = f"Bundle.entry[{submission.submission_set}].resource.subject"
        problem("not-found", f"Patient/{pid} is not known: the document has no record to go to", where)
    relations = submission.relations()
    statuses: dict[str, str] = {}
    replaced_by: dict[str, int] = {}
    for doc, k, code, target in relations:
        where = f"Bundle.entry[{doc.entry}].resource.relatesTo[{k}].target"
        current = lifecycle.known_document(svc, conn, target)
        if current is None:
            problem("not-found", f"DocumentReference/{target} is not known", where)
            continue
        stored = current.resource()
        if literal((stored.get("subject") or {}).get("reference"), base_url) != ("Patient", pid):
            problem("invariant", f"DocumentReference/{target} is a document of another patient", where)
        if code != "replaces":
            continue
        if target in replaced_by:
            problem("invariant", f"DocumentReference/{target} is replaced twice in the submission", where)
        replaced_by[target] = doc.entry
        reason = lifecycle.transition_problem(stored, "superseded")
        if reason is not None:
            problem("business-rule", f"DocumentReference/{target} cannot be replaced: {reason}", where)
        statuses[target] = "superseded"
    for update in submission.updates:
        where = f"Bundle.entry[{update.entry}].resource.status"
        current = lifecycle.known_document(svc, conn, update.document_id)
        if current is None:
            problem("not-found", f"DocumentReference/{update.document_id} is not known", where)
            continue
        stored = current.resource()
        if literal((stored.get("subject") or {}).get("reference"), base_url) != ("Patient", pid):
            problem(
                "invariant", f"DocumentReference/{update.document_id} is a document of another patient", where
            )
        wanted = statuses.get(update.document_id)
        if wanted is not None and wanted != update.status:
            problem("invariant", "A replaced document becomes 'superseded'", where)
        elif wanted is None:
            reason = lifecycle.transition_problem(stored, update.status)
            if reason is not None:
                problem("business-rule", f"DocumentReference/{update.document_id}: {reason}", where)
        statuses[update.document_id] = update.status
    if issues:
        raise SubmissionRejected(issues)
    return statuses


def _check_writes(svc: FhirService, conn: Connection, plan: _Plan) -> None:
    """Ask the caller's write check about every write of the plan before any blob is stored
    (the processor asks again when it writes them)."""
    if svc.session is None:
        return
    writes: list[Write] = []
    for position, entry in enumerate(plan.bundle["entry"]):
        res = {**entry["resource"], "id": plan.ids[position]}
        writes.append(Write("POST", res["resourceType"], res["id"], res, None))
    for document_id in sorted(plan.statuses):
        current = svc.store.current(conn, "DocumentReference", document_id)
        if current is not None:
            resource = {**current.resource(), "status": plan.statuses[document_id]}
            writes.append(Write("PUT", "DocumentReference", document_id, resource, current))
    svc.session.check_writes(conn, writes)


def _plan(submission: Submission, statuses: dict[str, str], base_url: str) -> _Plan:
    """The bundle to write: ids chosen, Binaries without data, attachments pointing at them."""
    source = copy.deepcopy(submission.bundle)
    skip = {u.entry for u in submission.updates}
    positions = [i for i in range(len(source["entry"])) if i not in skip]
    position_of = {index: p for p, index in enumerate(positions)}
    entries = [source["entry"][i] for i in positions]
    # the updates are written apart (``lifecycle``): references to their fullUrl name them directly
    renamed = {
        source["entry"][u.entry].get("fullUrl"): f"DocumentReference/{u.document_id}"
        for u in submission.updates
    }
    renamed.pop(None, None)
    if renamed:
        for entry in entries:
            _rename(entry["resource"], renamed)
    ids: dict[int, str] = {}
    plan = _Plan(
        {"resourceType": "Bundle", "type": "transaction", "entry": entries}, positions, ids, statuses
    )
    pid = submission.patient_id
    categories: list[str] = []
    labels: list[dict[str, Any]] = []  # the documents' confidentiality: the lists take the strictest
    for doc in submission.documents:
        document_id = str(uuid.uuid4())
        ids[position_of[doc.entry]] = document_id
        resource = source["entry"][doc.entry]["resource"]
        category = classify(resource) or "care-reports"
        categories.append(category)
        security = security_codings(resource)
        labels.extend(security)
        for att in doc.attachments:
            binary_id = str(uuid.uuid4())
            attachment = resource["content"][att.position]["attachment"]
            binary = stored_binary(
                binary_id=binary_id,
                content_type=str(attachment["contentType"]),
                document_id=document_id,
                patient_id=pid,
                category=category,
                content=att.content,
                security=security,
            )
            if att.binary_entry is not None:
                source["entry"][att.binary_entry]["resource"] = binary
                ids[position_of[att.binary_entry]] = binary_id
            else:
                entries.append(
                    {
                        "fullUrl": f"urn:uuid:{binary_id}",
                        "resource": binary,
                        "request": {"method": "POST", "url": "Binary"},
                    }
                )
                ids[len(entries) - 1] = binary_id
                attachment.pop("data", None)
            attachment["url"] = f"{base_url}/Binary/{binary_id}"
            plan.contents.append(att.content)
    for position, entry in enumerate(entries):
        if entry["request"]["method"] == "POST":
            ids.setdefault(position, str(uuid.uuid4()))  # the same ids for the write check and the write
        if entry["resource"]["resourceType"] == "List" and categories:
            tag_category(entry["resource"], strictest(categories))
            level = confidentiality_of({"meta": {"security": labels}})
            if level in (RESTRICTED, VERY_RESTRICTED):
                meta = entry["resource"].setdefault("meta", {})
                meta["security"] = [
                    *meta.get("security", ()),
                    {"system": CONFIDENTIALITY_SYSTEM, "code": level},
                ]
    return plan


def _rename(node: Any, names: dict[Any, str]) -> None:
    """Replace the references named in ``names`` anywhere in ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and value in names:
                node[key] = names[value]
            elif isinstance(value, (dict, list)):
                _rename(value, names)
    elif isinstance(node, list):
        for item in node:
            _rename(item, names)


def _chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


def _store(blobs: BlobStore, patient_id: str, contents: list[Content], max_size: int | None) -> None:
    """Write the bytes to the blob store (each checked against the digests of ``mhd.read``)."""
    for content in contents:
        try:
            info = blobs.put(patient_id, _chunks(content.data), max_size=max_size)
        except BlobTooLarge as exc:
            raise PayloadTooLarge(str(exc)) from None
        if (info.digest, info.size, info.sha1) != (content.sha256, content.size, content.sha1):
            raise RuntimeError(f"the blob store stored {info.digest} for content {content.sha256}")
