"""Reading and checking an IHE MHD Provide Document Bundle (ITI-65) before anything is stored.

A Document Source posts a FHIR transaction holding one SubmissionSet ``List``, the
``DocumentReference``s it publishes, their content (``Binary`` entries or inline attachment
data), optional Folder ``List``s and the ``PUT``s that mark replaced documents superseded (MHD's
UpdateDocumentRefs slice). ``read`` checks everything that needs no database: the MHD metadata
(patient, type from the accepted value set, category, author, date, confidentiality, attachment
contentType, language, size and SHA-1 hash against the decoded bytes, or against the recorded
digests of content uploaded apart, format), FHIR validity, and
the bundle's structure. Every problem becomes one ``Issue`` with the FHIRPath of the element, so
the submission is refused with one OperationOutcome that names them all (``SubmissionRejected``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sharedcare.documents.categories import DocumentTypes, document_types
from sharedcare.fhir.errors import FhirError, Issue

MHD_PROFILES = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/"
LIST_TYPES = "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes"
SOURCE_ID = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-sourceId"
DESIGNATION_TYPE = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-designationType"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
CONFIDENTIALITY_CODES = frozenset({"U", "L", "M", "N", "R", "V"})
RELATIONS = frozenset({"replaces", "transforms", "signs", "appends"})
UPDATE_STATUSES = frozenset({"superseded", "entered-in-error"})
"""What a ``PUT DocumentReference`` entry of a submission may set (deprecate, mark in error)."""

Validator = Callable[[dict[str, Any]], list[Issue]]


class SubmissionRejected(FhirError):
    """A Provide Document Bundle that fails validation: 422 with one issue per problem."""

    def __init__(self, issues: list[Issue]) -> None:
        count = len(issues)
        first = issues[0].diagnostics if issues else ""
        text = (
            f"The Provide Document Bundle was rejected ({count} problem{'s' if count > 1 else ''}): {first}"
        )
        FhirError.__init__(self, text, (), issues, 422, "processing")


@dataclass(slots=True)
class Content:
    """The content of one document, with the digests the store and FHIR need: decoded bytes
    (inline or Binary ``data``), a stream read again when stored (a portal upload, spooled to
    disk), or bytes already in the store (a Binary uploaded by ``POST [base]/Binary``)."""

    sha256: str
    sha1: bytes
    size: int
    data: bytes | None = None
    chunks: Callable[[], Iterator[bytes]] | None = None
    """Opens the stream again; ``documents.submission`` stores it chunk by chunk."""
    binary_id: str | None = None
    """An uploaded Binary the submission claims: its bytes are stored already."""
    binary_version: int | None = None
    content_type: str | None = None
    """The uploaded Binary's type, which the attachment's must equal."""

    @classmethod
    def of(cls, data: bytes) -> Content:
        return cls(hashlib.sha256(data).hexdigest(), hashlib.sha1(data).digest(), len(data), data=data)


@dataclass(slots=True)
class Attachment:
    """``content[position]`` of a submitted document, with its bytes."""

    position: int
    content: Content
    binary_entry: int | None
    """The Binary entry holding the bytes; None when they are inline (``attachment.data``)."""


@dataclass(slots=True)
class SubmittedDocument:
    """A DocumentReference the submission creates."""

    entry: int
    resource: dict[str, Any]
    attachments: list[Attachment] = field(default_factory=list)


@dataclass(slots=True)
class StatusUpdate:
    """A ``PUT DocumentReference/[id]`` entry: a status change of a stored document."""

    entry: int
    document_id: str
    status: str


@dataclass(slots=True)
class Submission:
    """A checked Provide Document Bundle."""

    bundle: dict[str, Any]
    patient_id: str
    submission_set: int
    documents: list[SubmittedDocument]
    binaries: list[int]
    updates: list[StatusUpdate]

    def targets(self) -> list[str]:
        """Ids of the stored documents the submission relates to or changes."""
        return sorted({t for *_, t in self.relations()} | {u.document_id for u in self.updates})

    def relations(self) -> list[tuple[SubmittedDocument, int, str, str]]:
        """(document, position in ``relatesTo``, code, target id) of every relation submitted."""
        out = []
        for doc in self.documents:
            for i, rel in enumerate(doc.resource.get("relatesTo") or ()):
                target = literal(rel["target"]["reference"])
                assert target is not None  # checked by ``read``
                out.append((doc, i, rel["code"], target[1]))
        return out


def is_provide_bundle(body: Any) -> bool:
    """A transaction that claims an MHD Provide Bundle profile, or holds a SubmissionSet List."""
    if not isinstance(body, dict) or body.get("type") != "transaction":
        return False
    meta = body.get("meta")
    profiles = meta.get("profile") if isinstance(meta, dict) else None
    if isinstance(profiles, list) and any(
        isinstance(p, str) and p.startswith(MHD_PROFILES) and "ProvideBundle" in p for p in profiles
    ):
        return True
    entries = body.get("entry")
    return isinstance(entries, list) and any(
        isinstance(e, dict) and _list_kind(e.get("resource")) == "submissionset" for e in entries
    )


def literal(reference: Any, base_url: str = "") -> tuple[str, str] | None:
    """``(type, id)`` of a literal reference to a resource of this server (``Type/id`` or
    ``[base]/Type/id``), else None."""
    if not isinstance(reference, str) or not reference:
        return None
    if base_url and reference.startswith(base_url.rstrip("/") + "/"):
        reference = reference[len(base_url.rstrip("/")) + 1 :]
    parts = reference.split("/")
    if len(parts) != 2 or not parts[0][:1].isupper() or not parts[1]:
        return None
    return parts[0], parts[1]


def _list_kind(res: Any) -> str | None:
    if not isinstance(res, dict) or res.get("resourceType") != "List":
        return None
    code = res.get("code")
    for coding in code.get("coding") or () if isinstance(code, dict) else ():
        if isinstance(coding, dict) and coding.get("system") == LIST_TYPES:
            kind = coding.get("code")
            return kind if isinstance(kind, str) else None
    return None


def _codings(value: Any) -> list[dict[str, Any]]:
    concepts = value if isinstance(value, list) else [value]
    return [
        c
        for concept in concepts
        if isinstance(concept, dict)
        for c in concept.get("coding") or ()
        if isinstance(c, dict) and c.get("system") and c.get("code")
    ]


def _decode(text: Any) -> bytes | None:
    if not isinstance(text, str):
        return None
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


class _Reader:
    """One pass over the bundle, collecting issues instead of stopping at the first."""

    def __init__(
        self,
        bundle: dict[str, Any],
        base_url: str,
        types: DocumentTypes,
        validator: Validator | None,
        uploads: Mapping[str, Content] | None = None,
    ) -> None:
        self.bundle = bundle
        self.uploads = uploads or {}
        self.base_url = base_url
        self.types = types
        self.validator = validator
        self.issues: list[Issue] = []

    def issue(self, code: str, text: str, expression: str) -> None:
        self.issues.append(Issue("error", code, text, (expression,)))

    def read(self) -> Submission | None:
        entries = self.bundle.get("entry")
        if not isinstance(entries, list) or not entries:
            self.issue("required", "A Provide Document Bundle needs entries", "Bundle.entry")
            return None
        sets: list[int] = []
        folders: list[int] = []
        documents: list[int] = []
        binaries: dict[str, int] = {}
        updates: list[StatusUpdate] = []
        for i, entry in enumerate(entries):
            where = f"Bundle.entry[{i}]"
            res = entry.get("resource") if isinstance(entry, dict) else None
            request = entry.get("request") if isinstance(entry, dict) else None
            method = request.get("method") if isinstance(request, dict) else None
            rtype = res.get("resourceType") if isinstance(res, dict) else None
            if not isinstance(res, dict) or not isinstance(request, dict):
                self.issue("structure", "Each entry needs a resource and a request", where)
                continue
            self._validate_fhir(res, f"{where}.resource")
            if rtype == "DocumentReference" and method == "PUT":
                update = self._update(i, res, request)
                if update is not None:
                    updates.append(update)
            elif method != "POST":
                self.issue(
                    "not-supported",
                    f"A Provide Document Bundle creates its resources (POST), not {method!r} "
                    "(only a PUT of a DocumentReference may deprecate it or mark it in error)",
                    f"{where}.request.method",
                )
            elif rtype == "List" and _list_kind(res) == "submissionset":
                sets.append(i)
            elif rtype == "List" and _list_kind(res) == "folder":
                folders.append(i)
            elif rtype == "DocumentReference":
                documents.append(i)
            elif rtype == "Binary":
                full_url = entry.get("fullUrl")
                if not isinstance(full_url, str) or not full_url:
                    self.issue(
                        "required", "A Binary entry needs a fullUrl to be pointed at", f"{where}.fullUrl"
                    )
                else:
                    binaries[full_url] = i
            elif rtype == "Patient":
                self.issue(
                    "not-supported",
                    "The patient must already have a shared record: reference it as Patient/[id]",
                    f"{where}.resource",
                )
            else:
                self.issue(
                    "not-supported",
                    f"A Provide Document Bundle holds a SubmissionSet, DocumentReferences, Binaries and "
                    f"Folders, not a {rtype}",
                    f"{where}.resource",
                )
        if len(sets) != 1:
            self.issue(
                "required" if not sets else "structure",
                f"A Provide Document Bundle holds exactly one SubmissionSet List, not {len(sets)}",
                "Bundle.entry",
            )
            return None
        patient_id = self._submission_set(sets[0], documents)
        for i in folders:
            self._folder(i, patient_id)
        submitted = [self._document(i, patient_id, binaries) for i in documents]
        uses = [a.binary_entry for d in submitted for a in d.attachments if a.binary_entry is not None]
        used = set(uses)
        for i in sorted(used):
            if uses.count(i) > 1:
                self.issue(
                    "invalid",
                    "A Binary is the content of one attachment only (its securityContext is one document)",
                    f"Bundle.entry[{i}]",
                )
        for full_url, i in binaries.items():
            if i not in used:
                self.issue(
                    "invalid",
                    f"Binary {full_url} is not the content of any DocumentReference of the bundle",
                    f"Bundle.entry[{i}]",
                )
        if not documents and not updates:
            self.issue("required", "The submission publishes no DocumentReference", "Bundle.entry")
        if self.issues or patient_id is None:
            return None
        return Submission(self.bundle, patient_id, sets[0], submitted, sorted(binaries.values()), updates)

    def _validate_fhir(self, res: dict[str, Any], where: str) -> None:
        if self.validator is None:
            return
        rtype = str(res.get("resourceType"))
        for found in self.validator(res):
            if found.severity not in ("error", "fatal"):
                continue
            paths = tuple(
                where + e[len(rtype) :] if e.startswith(rtype) else f"{where}.{e}" for e in found.expression
            )
            self.issues.append(Issue("error", found.code, found.diagnostics, paths or (where,)))

    def _patient(self, res: dict[str, Any], where: str) -> str | None:
        subject = res.get("subject")
        if not isinstance(subject, dict) or not subject.get("reference"):
            self.issue(
                "required", "The patient is missing: subject must reference Patient/[id]", f"{where}.subject"
            )
            return None
        target = literal(subject.get("reference"), self.base_url)
        if target is None or target[0] != "Patient":
            self.issue(
                "value",
                f"subject {subject.get('reference')!r} is not a reference to a Patient of this platform",
                f"{where}.subject",
            )
            return None
        return target[1]

    def _submission_set(self, i: int, documents: list[int]) -> str | None:
        entries = self.bundle["entry"]
        res = entries[i]["resource"]
        where = f"Bundle.entry[{i}].resource"
        if res.get("status") != "current":
            self.issue("value", "A SubmissionSet's status is 'current'", f"{where}.status")
        if res.get("mode") != "working":
            self.issue("value", "A SubmissionSet's mode is 'working'", f"{where}.mode")
        if not res.get("date"):
            self.issue("required", "The SubmissionSet needs its date of submission", f"{where}.date")
        extensions = [e for e in res.get("extension") or () if isinstance(e, dict)]
        if not res.get("source") and not any(e.get("url") == SOURCE_ID for e in extensions):
            self.issue(
                "required",
                "The SubmissionSet needs its source: List.source (its author) or the ihe-sourceId extension",
                f"{where}.source",
            )
        patient_id = self._patient(res, where)
        listed: set[str] = set()
        items = res.get("entry")
        if not isinstance(items, list) or not items:
            self.issue("required", "The SubmissionSet lists no DocumentReference", f"{where}.entry")
            items = []
        targets = {entries[j].get("fullUrl"): j for j in range(len(entries)) if isinstance(entries[j], dict)}
        for k, item in enumerate(items):
            ref = (item.get("item") or {}).get("reference") if isinstance(item, dict) else None
            j = targets.get(ref)
            if j is None or j == i:
                self.issue(
                    "invalid",
                    f"SubmissionSet entry {ref!r} names no DocumentReference or Folder of the bundle",
                    f"{where}.entry[{k}].item",
                )
            else:
                listed.add(str(ref))
        for j in documents:
            if entries[j].get("fullUrl") not in listed:
                self.issue(
                    "invalid",
                    "Every DocumentReference of the submission must be listed in the SubmissionSet",
                    f"Bundle.entry[{j}].fullUrl",
                )
        return patient_id

    def _folder(self, i: int, patient_id: str | None) -> None:
        res = self.bundle["entry"][i]["resource"]
        where = f"Bundle.entry[{i}].resource"
        if res.get("status") != "current" or res.get("mode") != "working":
            self.issue("value", "A Folder's status is 'current' and its mode 'working'", where)
        found = self._patient(res, where)
        if found is not None and patient_id is not None and found != patient_id:
            self.issue(
                "invariant", "The Folder is about another patient than the SubmissionSet", f"{where}.subject"
            )

    def _update(self, i: int, res: dict[str, Any], request: dict[str, Any]) -> StatusUpdate | None:
        where = f"Bundle.entry[{i}]"
        target = literal(request.get("url"))
        if target is None or target[0] != "DocumentReference" or res.get("id") != target[1]:
            self.issue(
                "invalid",
                "A DocumentReference update names it in request.url (DocumentReference/[id]) and in its id",
                f"{where}.request.url",
            )
            return None
        status = res.get("status")
        if status not in UPDATE_STATUSES:
            self.issue(
                "value",
                "A submission changes a stored document only to 'superseded' (deprecate, replace) or "
                "'entered-in-error'",
                f"{where}.resource.status",
            )
            return None
        return StatusUpdate(i, target[1], str(status))

    def _document(self, i: int, patient_id: str | None, binaries: dict[str, int]) -> SubmittedDocument:
        res = self.bundle["entry"][i]["resource"]
        where = f"Bundle.entry[{i}].resource"
        doc = SubmittedDocument(i, res)
        if not self.bundle["entry"][i].get("fullUrl"):
            self.issue("required", "A DocumentReference entry needs a fullUrl", f"Bundle.entry[{i}].fullUrl")
        if res.get("status") != "current":
            self.issue("value", "A new document's status is 'current'", f"{where}.status")
        found = self._patient(res, where)
        if found is not None and patient_id is not None and found != patient_id:
            self.issue(
                "invariant",
                f"The document is about Patient/{found}, the SubmissionSet about Patient/{patient_id}: "
                "one submission is about one patient",
                f"{where}.subject",
            )
        if not res.get("type"):
            self.issue("required", "The document type is missing (a LOINC code)", f"{where}.type")
        elif self.types.type_of(res) is None:
            codes = ", ".join(f"{c.get('system')}|{c.get('code')}" for c in _codings(res.get("type")))
            self.issue(
                "code-invalid",
                f"Unknown document type {codes or 'without a coding'}: not in the platform's document "
                "types (docs/documents.md)",
                f"{where}.type",
            )
        if not _codings(res.get("category")):
            self.issue(
                "required", "The document class is missing (category with a coding)", f"{where}.category"
            )
        authors = res.get("author")
        if not isinstance(authors, list) or not any(
            isinstance(a, dict) and a.get("reference") for a in authors
        ):
            self.issue("required", "The document needs its author (a reference)", f"{where}.author")
        if not res.get("date"):
            self.issue("required", "The document needs its date", f"{where}.date")
        labels = [c for c in _codings(res.get("securityLabel")) if c.get("system") == CONFIDENTIALITY]
        if not labels:
            self.issue(
                "required",
                f"The document needs its confidentiality: a securityLabel of {CONFIDENTIALITY}",
                f"{where}.securityLabel",
            )
        elif any(c.get("code") not in CONFIDENTIALITY_CODES for c in labels):
            self.issue(
                "code-invalid", "Unknown confidentiality code (U, L, M, N, R, V)", f"{where}.securityLabel"
            )
        for k, rel in enumerate(res.get("relatesTo") or ()):
            if not isinstance(rel, dict) or rel.get("code") not in RELATIONS:
                self.issue(
                    "code-invalid",
                    "relatesTo.code is one of replaces, transforms, signs, appends",
                    f"{where}.relatesTo[{k}].code",
                )
            target = literal(((rel or {}).get("target") or {}).get("reference"), self.base_url)
            if target is None or target[0] != "DocumentReference":
                self.issue(
                    "invalid",
                    "relatesTo.target references a stored DocumentReference/[id]",
                    f"{where}.relatesTo[{k}].target",
                )
        contents = res.get("content")
        if not isinstance(contents, list) or not contents:
            self.issue("required", "The document has no content", f"{where}.content")
            return doc
        for k, content in enumerate(contents):
            attachment = self._attachment(content, f"{where}.content[{k}]", k, binaries)
            if attachment is not None:
                doc.attachments.append(attachment)
        return doc

    def _attachment(
        self, content: Any, where: str, position: int, binaries: dict[str, int]
    ) -> Attachment | None:
        att = content.get("attachment") if isinstance(content, dict) else None
        if not isinstance(att, dict):
            self.issue("required", "The content needs an attachment", f"{where}.attachment")
            return None
        here = f"{where}.attachment"
        fmt = content.get("format")
        if not isinstance(fmt, dict) or not fmt.get("system") or not fmt.get("code"):
            self.issue("required", "The content needs its format (formatCode)", f"{where}.format")
        if not att.get("contentType"):
            self.issue("required", "The attachment needs its contentType", f"{here}.contentType")
        if not att.get("language"):
            self.issue("required", "The attachment needs its language", f"{here}.language")
        url, inline = att.get("url"), att.get("data")
        binary_entry: int | None = None
        if (url is None) == (inline is None):
            self.issue(
                "invalid",
                "The attachment carries its content either inline (data) or as a Binary of the bundle (url)",
                here,
            )
            return None
        uploaded = self.uploads.get(url) if isinstance(url, str) else None
        if uploaded is not None:  # content stored before: checked against its recorded digests
            if uploaded.content_type is not None and uploaded.content_type != att.get("contentType"):
                self.issue(
                    "invariant",
                    f"The uploaded Binary's contentType {uploaded.content_type!r} differs from the "
                    "attachment's",
                    f"{here}.contentType",
                )
            return self._digests(att, here, uploaded, Attachment(position, uploaded, None))
        if url is not None:
            binary_entry = binaries.get(url)
            if binary_entry is None:
                self.issue(
                    "invalid",
                    f"attachment.url {url!r} names no Binary of the bundle, nor a Binary/[id] this "
                    "client uploaded into the patient's record and no document claims yet",
                    f"{here}.url",
                )
                return None
            binary = self.bundle["entry"][binary_entry]["resource"]
            if binary.get("contentType") != att.get("contentType"):
                self.issue(
                    "invariant",
                    f"The Binary's contentType {binary.get('contentType')!r} differs from the attachment's",
                    f"{here}.contentType",
                )
            inline = binary.get("data")
            source = f"Bundle.entry[{binary_entry}].resource.data"
        else:
            source = f"{here}.data"
        data = _decode(inline)
        if data is None:
            self.issue("invalid", "The content is not valid base64", source)
            return None
        if not data:
            self.issue("invalid", "The document content is empty", source)
            return None
        found = Content.of(data)
        return self._digests(att, here, found, Attachment(position, found, binary_entry))

    def _digests(self, att: dict[str, Any], here: str, found: Content, attachment: Attachment) -> Attachment:
        """Check ``size`` and ``hash`` against the content (decoded, streamed or stored)."""
        size = att.get("size")
        if size is None:
            self.issue("required", "attachment.size is missing", f"{here}.size")
        elif size != found.size:
            self.issue(
                "invalid", f"attachment.size is {size} but the content has {found.size} bytes", f"{here}.size"
            )
        given = att.get("hash")
        expected = base64.b64encode(found.sha1).decode()
        if given is None:
            self.issue("required", "attachment.hash (base64 SHA-1 of the content) is missing", f"{here}.hash")
        elif given != expected:
            self.issue(
                "invalid",
                f"attachment.hash {given!r} does not match the content (base64 SHA-1 {expected!r})",
                f"{here}.hash",
            )
        return attachment


def read(
    bundle: dict[str, Any],
    *,
    base_url: str = "",
    validator: Validator | None = None,
    types: DocumentTypes | None = None,
    uploads: Mapping[str, Content] | None = None,
) -> Submission:
    """The checked submission; raises ``SubmissionRejected`` with every problem found.
    ``uploads``: attachment ``url`` → content obtained apart from the bundle (an uploaded Binary,
    a portal upload), whose size and hash are checked instead of decoded bytes."""
    reader = _Reader(bundle, base_url, types or document_types(), validator, uploads)
    submission = reader.read()
    if reader.issues or submission is None:
        raise SubmissionRejected(reader.issues)
    return submission


def require(checks: Mapping[str, str | None]) -> None:
    """Raise ``SubmissionRejected`` for the failed ``expression → message`` checks (None: passed)."""
    issues = [Issue("error", "business-rule", text, (expr,)) for expr, text in checks.items() if text]
    if issues:
        raise SubmissionRejected(issues)
