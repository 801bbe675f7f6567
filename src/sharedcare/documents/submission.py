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

Blobs are content-addressed per record, so one blob may be named by several Binaries, and the
expiry of an unclaimed upload (``expire_unclaimed``) deletes its blob only when no other Binary
names it. That check and the deletion would race with a write naming the same bytes (an upload
or a submission of the same content, whose ``put`` found or rewrote the blob before the check and
whose Binary commits after it): its content would be lost. Both sides therefore meet on one lock
per record and digest (``blob_lock``): the expiry checks and deletes while holding it, and every
write transaction that records a Binary naming a blob takes it too and checks, under it, that
the blob is there (``hold_blobs``). Either the writer commits first (the expiry then sees its
Binary and keeps the blob) or the expiry deletes first (the writer then finds no blob and is
refused with 409, nothing written: send the content again). No accepted write can so name a
missing blob. A refusal was preferred to writing the bytes again under the lock: a streamed
upload's body is consumed by then, and on SQLite the store may need a transaction of its own
(a record's data key) that the writer's transaction would block.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, select

from sharedcare.access.categories import CATEGORY_SYSTEM, DataCategory, classify
from sharedcare.access.policy import RESTRICTED, VERY_RESTRICTED, WriteTarget
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.access.requests import is_pending
from sharedcare.access.session import PolicySession
from sharedcare.audit import log as audit
from sharedcare.documents import lifecycle
from sharedcare.documents.categories import document_types
from sharedcare.documents.content import (
    UPLOADER_EXTENSION,
    pending_binary,
    pending_upload,
    pointer_of,
    security_codings,
    stored_binary,
    strictest,
    tag_category,
)
from sharedcare.documents.mhd import Content, Submission, SubmissionRejected, literal, read
from sharedcare.fhir.bundle import BundleProcessor, parse_entries
from sharedcare.fhir.errors import BadRequest, Conflict, Issue, NotFound, PayloadTooLarge
from sharedcare.fhir.service import ID_RE, FhirService, WriteOutcome, serialize, serialize_many
from sharedcare.fhir.session import Interaction
from sharedcare.fhir.store import CONFIDENTIALITY_SYSTEM, Stored, Write, confidentiality_of, instant, utcnow
from sharedcare.notify import outbox
from sharedcare.settings import Settings
from sharedcare.storage.blobstore import CHUNK, BlobNotFound, BlobStore, BlobTooLarge
from sharedcare.storage.engine import writer
from sharedcare.storage.tables import resource as resource_table
from sharedcare.storage.tables import resource_version


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
    claims: list[Write] = field(default_factory=list)
    """Uploaded Binaries the documents claim: updated to point at them (written apart: their
    uploader, a system, may not read them, and the write check decides)."""


def provide(
    svc: FhirService,
    blobs: BlobStore,
    bundle: dict[str, Any],
    *,
    base_url: str,
    max_size: int | None = None,
    uploads: Mapping[str, Content] | None = None,
) -> dict[str, Any]:
    """File a Provide Document Bundle as the caller of ``svc``; the transaction-response Bundle.

    An attachment ``url`` may name content obtained apart: a key of ``uploads`` (a stream, such
    as the portal's spooled upload), or ``Binary/[id]`` of a Binary the caller uploaded into the
    patient's record (``upload``) that no document claims yet: its stored size and hash are checked,
    and it becomes the document's Binary.

    Raises ``SubmissionRejected`` (422, every problem), ``PayloadTooLarge`` (413) for content over
    ``max_size`` bytes, or the write check's ``Forbidden``/``BusinessRule``: nothing is stored then.
    """
    found = {**_uploaded(svc, bundle, base_url), **(uploads or {})}
    submission = read(bundle, base_url=base_url, validator=svc.validator, uploads=found)
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
        _claim(svc, conn, plan.claims, submission)
        named = [a.content.sha256 for d in submission.documents for a in d.attachments]
        hold_blobs(conn, blobs, submission.patient_id, named)
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


def _uploaded(svc: FhirService, bundle: Any, base_url: str) -> dict[str, Content]:
    """The Binaries the bundle's documents name by ``attachment.url`` = ``Binary/[id]`` that the
    caller uploaded into the document's patient record and no document claims yet; other urls are
    left to ``mhd.read`` to refuse."""
    wanted: dict[str, tuple[str, str]] = {}  # url → (Binary id, the document's patient)
    for entry in bundle.get("entry") or () if isinstance(bundle, dict) else ():
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict) or res.get("resourceType") != "DocumentReference":
            continue
        patient = literal((res.get("subject") or {}).get("reference"), base_url)
        for content in res.get("content") or ():
            att = content.get("attachment") if isinstance(content, dict) else None
            url = att.get("url") if isinstance(att, dict) else None
            target = literal(url, base_url)
            if target is not None and target[0] == "Binary" and patient is not None:
                wanted[str(url)] = (target[1], patient[1])
    if not wanted:
        return {}
    me = _uploader(svc)
    found: dict[str, Content] = {}
    with svc.engine.connect() as conn:
        for url, (binary_id, patient_id) in wanted.items():
            current = svc.store.current(conn, "Binary", binary_id)
            if current is None or current.deleted:  # the uploader may not read it (a system):
                continue  # being its uploader is the right to claim it, the write check decides
            resource = current.resource()
            pending = pending_upload(resource)
            if pending is None or pending[1] != me or pending[0].patient_id != patient_id:
                continue
            pointer = pending[0]
            assert pointer.sha1 is not None
            found[url] = Content(
                pointer.digest,
                pointer.sha1,
                pointer.size,
                binary_id=binary_id,
                binary_version=current.version,
                content_type=str(resource.get("contentType")),
            )
    return found


def _claim(svc: FhirService, conn: Connection, claims: list[Write], submission: Submission) -> None:
    """Point the claimed uploads at their documents, in the write transaction: each must still be
    the unclaimed upload that was checked (a concurrent submission claiming it loses here)."""
    if not claims:
        return
    serialize_many(conn, [f"Binary/{c.id}" for c in claims])
    versions = {
        a.content.binary_id: a.content.binary_version for d in submission.documents for a in d.attachments
    }
    writes = []
    for claim in claims:
        current = svc.store.current(conn, "Binary", claim.id)
        if current is None or current.deleted or current.version != versions.get(claim.id):
            raise Conflict(f"Binary/{claim.id} changed or was claimed meanwhile; submit again")
        writes.append(replace(claim, current=current))
    _write_upload(svc, conn, writes, [w.resource for w in writes])


def _as_filed(write: Write, resource: dict[str, Any] | None) -> Write:
    """What the write check decides for a write of an upload: ``resource``, the content as it is
    (or will be) filed, created in the record. The stored upload is ``unfiled``, a category no
    column of the matrix writes, so a check on it would refuse every professional and holder;
    being its uploader (``pending_upload``) is checked apart."""
    return replace(write, method="POST", resource=resource, current=None)


def _write_upload(
    svc: FhirService, conn: Connection, writes: list[Write], filed: list[dict[str, Any] | None]
) -> list[Stored]:
    """Write uploads (``upload``) or their claims (``_claim``): the caller's write check on each
    as filed (``_as_filed``: ``filed`` in step with ``writes``), the store's write, the caller's
    audit record of it."""
    session = svc.session
    if session is not None:
        for w in writes:
            if w.current is not None:
                session.require(w.type, "u")
        session.check_writes(conn, [_as_filed(w, r) for w, r in zip(writes, filed, strict=True)])
    results = svc.for_session(None).apply_writes(conn, writes)
    if session is not None:
        for w, stored in zip(writes, results, strict=True):
            session.record(conn, Interaction("create" if w.current is None else "update", w.type, [stored]))
    return results


def _uploader(svc: FhirService) -> str:
    """Who uploads, as a pending Binary records it: the principal (its kind and subject)."""
    session = svc.session
    if isinstance(session, PolicySession):
        return f"{session.principal.kind.value}:{session.principal.subject}"
    return "platform"


def read_own_upload(svc: FhirService, conn: Connection, binary_id: str) -> Stored | None:
    """``Binary/[binary_id]`` when it is an upload no document claims yet that the caller of
    ``svc`` uploaded and may read back (``AccessPolicy.reads_own_upload``: who may replace it),
    its read recorded in the caller's audit trail; None otherwise (the caller's ordinary read
    decision stands: "not known"). For ITI-68, after the ordinary read refused it."""
    session = svc.session
    if not isinstance(session, PolicySession):
        return None
    current = svc.store.current(conn, "Binary", binary_id)
    if current is None or current.deleted:
        return None
    resource = current.resource()
    pending = pending_upload(resource)
    if pending is None:
        return None
    pointer, uploader = pending
    meta = resource.get("meta") or {}
    untagged = [
        t for t in meta.get("tag") or () if not (isinstance(t, dict) and t.get("system") == CATEGORY_SYSTEM)
    ]
    holder = session.principal.kind in (PrincipalKind.PATIENT, PrincipalKind.REPRESENTATIVE)
    filed = (
        DataCategory.PERSONAL_EXPRESSION.value
        if holder
        else session.classify({**resource, "meta": {**meta, "tag": untagged}})
    )  # as ``upload``'s write check decides on it: the content as it will be filed
    target = WriteTarget(frozenset({pointer.patient_id}), filed)
    if not session.policy.reads_own_upload(conn, session.principal, uploader, target, session.now):
        return None
    session.record(conn, Interaction("read", "Binary", [current]))
    return current


def upload(
    svc: FhirService,
    blobs: BlobStore,
    chunks: Iterable[bytes],
    *,
    patient_id: str,
    content_type: str,
    max_size: int | None,
    binary_id: str | None = None,
) -> WriteOutcome:
    """Store a document's content ahead of its Provide Document Bundle (``POST [base]/Binary``, or
    ``PUT [base]/Binary/[id]`` replacing the caller's own unclaimed upload).

    The patient and the caller's write check come first, before a byte of ``chunks`` is consumed;
    then the bytes stream into the blob store (hashed and encrypted as they pass, never whole in
    memory) and the Binary is written through the caller's session (checked again, audited).
    ``PayloadTooLarge`` past ``max_size`` and any failure while streaming leave no blob."""
    holder = isinstance(svc.session, PolicySession) and svc.session.principal.kind in (
        PrincipalKind.PATIENT,
        PrincipalKind.REPRESENTATIVE,
    )
    if binary_id is not None and not ID_RE.fullmatch(binary_id):
        raise BadRequest(f"Invalid resource id {binary_id!r}")
    rid = binary_id or str(uuid.uuid4())

    def binary(digest: str, size: int, sha1: bytes, *, stored: bool = True) -> dict[str, Any]:
        """The upload as stored (``unfiled``), or as the write check decides on it: the content
        as it will be filed (the holder's side: their personal area; others: the type's default)."""
        filed = DataCategory.PERSONAL_EXPRESSION.value if holder else None
        return pending_binary(
            binary_id=rid,
            content_type=content_type,
            patient_id=patient_id,
            uploader=_uploader(svc),
            category=DataCategory.UNFILED.value if stored else filed,
            digest=digest,
            size=size,
            sha1=sha1,
        )

    with svc.engine.connect() as conn:
        patient = svc.store.current(conn, "Patient", patient_id)
        if patient is None or patient.deleted:  # as ITI-65 says it; the write check decides the rest
            raise NotFound(f"Patient/{patient_id} is not known: the content has no record to go to")
        current = svc.store.current(conn, "Binary", rid) if binary_id else None
        if binary_id is not None:  # PUT replaces an upload: no create with a client's id
            if current is None or current.deleted:
                raise NotFound(f"Resource Binary/{rid} is not known")
            pending = pending_upload(current.resource())
            if pending is None or pending[1] != _uploader(svc):
                raise Conflict(f"Binary/{rid} is not an unclaimed upload of yours: its content cannot change")
        if svc.session is not None:
            if current is not None:
                svc.session.require("Binary", "u")
            draft = binary("0" * 64, 0, b"", stored=False)
            svc.session.check_writes(conn, [_as_filed(Write("POST", "Binary", rid, draft, None), draft)])
    try:
        info = blobs.put(patient_id, _nonempty(chunks), max_size=max_size)
    except BlobTooLarge:
        raise PayloadTooLarge(f"The content exceeds the limit of {max_size} bytes: nothing kept") from None
    resource = binary(info.digest, info.size, info.sha1)
    filed = binary(info.digest, info.size, info.sha1, stored=False)
    with svc.transaction() as conn:
        # written apart from ``create_in``/``update_in``: the write check decides on the content
        # as filed, and no professional reads an unfiled upload (its uploader: ``read_own_upload``)
        serialize(conn, f"Binary/{rid}")
        hold_blobs(conn, blobs, patient_id, [info.digest])
        now = svc.store.current(conn, "Binary", rid)
        if binary_id is None:
            if now is not None:
                raise Conflict(f"Binary/{rid} exists already; upload again")
            svc.check_resource(resource)
            stored = _write_upload(svc, conn, [Write("POST", "Binary", rid, resource, None)], [filed])[0]
            return WriteOutcome(stored, 201, created=True)
        if now is None or current is None or now.version != current.version:
            raise Conflict(f"Binary/{rid} changed meanwhile; upload again")
        stored = _write_upload(svc, conn, [Write("PUT", "Binary", rid, resource, now)], [filed])[0]
        return WriteOutcome(stored, 200)


EXPIRY = Principal(
    PrincipalKind.SYSTEM, "sharedcare-upload-expiry", display="SharedCare upload expiry", trusted=True
)
"""Who deletes expired uploads in the access log: the platform itself."""
_EXPIRY_BATCH = 200


def expire_unclaimed(
    engine: Engine, settings: Settings, now: datetime, blobs: BlobStore | None = None
) -> int:
    """Delete the uploads (``upload``) no document claimed within ``unclaimed_upload_hours`` of
    their last write; returns how many. Each is a FHIR delete in its own transaction, rechecked
    under its lock (a claim racing the expiry wins or loses whole), traced as the platform's act
    in the record's access log; then its content goes from ``blobs`` (by default the settings'
    store), every version's blob that no other Binary names (the store is content-addressed)."""
    from sharedcare.access.policy import category_of
    from sharedcare.storage.content import make_blob_store

    svc = FhirService(engine, classify=category_of)
    cutoff = now - timedelta(hours=settings.unclaimed_upload_hours)
    r = resource_table
    expired, last = 0, 0
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                select(r.c.pk, r.c.id)
                .where(
                    r.c.type == "Binary",
                    r.c.deleted.is_(False),
                    r.c.last_updated < cutoff,
                    r.c.content.like(f"%{UPLOADER_EXTENSION}%"),
                    r.c.pk > last,
                )
                .order_by(r.c.pk)
                .limit(_EXPIRY_BATCH)
            ).all()
        if not rows:
            return expired
        last = rows[-1].pk
        for row in rows:
            gone = _expire(svc, row.id, cutoff)
            if gone is None:
                continue
            expired += 1
            blobs = blobs or make_blob_store(settings, engine)
            _remove_blobs(engine, blobs, row.pk, gone)


def _expire(svc: FhirService, binary_id: str, cutoff: datetime) -> tuple[str, set[str]] | None:
    """Delete one expired upload, audited; its patient and the blobs its versions named (None:
    claimed, replaced or deleted meanwhile)."""
    with svc.transaction() as conn:
        serialize(conn, f"Binary/{binary_id}")
        current = svc.store.current(conn, "Binary", binary_id)
        if current is None or current.deleted or current.last_updated >= cutoff:
            return None
        pending = pending_upload(current.resource())
        if pending is None:
            return None
        patient_id = pending[0].patient_id
        versions = conn.execute(
            select(resource_version.c.content).where(
                resource_version.c.res_pk == current.pk, resource_version.c.content.is_not(None)
            )
        ).scalars()
        digests = {p.digest for c in versions if (p := pointer_of(orjson.loads(c))) is not None}
        deleted = svc.delete_in(conn, "Binary", binary_id)
        assert deleted is not None
        audit.append(
            conn,
            audit.record_for(
                EXPIRY,
                audit.AuditAction.DELETE,
                patient_id=patient_id,
                resources=[f"Binary/{binary_id}/_history/{deleted.version}"],
                interaction="expire-unclaimed-upload",
            ),
        )
    return patient_id, digests


def blob_lock(patient_id: str, digest: str) -> str:
    """The lock key of one blob of a record: taken by the expiry deleting it and by every write
    transaction recording a Binary that names it (module docstring)."""
    return f"blob/{patient_id}/{digest}"


def hold_blobs(conn: Connection, blobs: BlobStore, patient_id: str, digests: Iterable[str]) -> None:
    """In a write transaction recording Binaries that name ``digests`` (blobs of ``patient_id``'s
    record): take their locks until the commit, so no expiry deletes them meanwhile, and check
    they are there. Raises ``Conflict`` (409; the transaction then writes nothing) when an expiry
    deleted one after this write stored it: the content must be sent again."""
    wanted = sorted(set(digests))
    serialize_many(conn, [blob_lock(patient_id, d) for d in wanted])  # SQLite: BEGIN IMMEDIATE did
    for digest in wanted:
        try:
            blobs.size(patient_id, digest)
        except BlobNotFound:
            raise Conflict(
                "The content was removed meanwhile (an expired upload held the same bytes): "
                "nothing was stored; send it again"
            ) from None


def _remove_blobs(engine: Engine, blobs: BlobStore, res_pk: int, gone: tuple[str, set[str]]) -> None:
    """Delete the expired upload's blobs that no version of another Binary of the record names
    (after the delete's commit: a crash in between leaves an unreachable blob, as a refused
    submission does, removed with its record's namespace). Each is checked and deleted in a write
    transaction holding its ``blob_lock``: a writer naming the same bytes either committed before
    (its Binary is seen, the blob kept) or waits and then finds it gone (``hold_blobs``: 409)."""
    patient_id, digests = gone
    v = resource_version
    for digest in sorted(digests):
        with writer(engine).begin() as conn:
            serialize(conn, blob_lock(patient_id, digest))
            shared = conn.execute(
                select(v.c.res_pk)
                .where(v.c.type == "Binary", v.c.res_pk != res_pk, v.c.content.like(f"%{digest}%"))
                .limit(1)
            ).first()
            if shared is None:
                blobs.delete(patient_id, digest)


def _nonempty(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """``chunks`` but empty ones; an empty content fails inside the store's put (nothing kept)."""
    seen = False
    for chunk in chunks:
        if chunk:
            seen = True
            yield chunk
    if not seen:
        raise BadRequest("The request has no content: send the document's bytes as the body")


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
    for claim in plan.claims:
        writes.append(_as_filed(claim, claim.resource))
        if svc.store.current(conn, "Binary", claim.id) is not None:
            svc.session.require("Binary", "u")
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
            if att.content.binary_id is not None:  # an upload claimed: its Binary now points here
                binary_id = att.content.binary_id
                binary["id"] = binary_id
                plan.claims.append(Write("PUT", "Binary", binary_id, binary, None))
                attachment["url"] = f"{base_url}/Binary/{binary_id}"
                continue
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
        if content.chunks is not None:
            chunks = content.chunks()
        else:
            assert content.data is not None
            chunks = _chunks(content.data)
        try:
            info = blobs.put(patient_id, chunks, max_size=max_size)
        except BlobTooLarge as exc:
            raise PayloadTooLarge(str(exc)) from None
        if (info.digest, info.size, info.sha1) != (content.sha256, content.size, content.sha1):
            raise RuntimeError(f"the blob store stored {info.digest} for content {content.sha256}")
