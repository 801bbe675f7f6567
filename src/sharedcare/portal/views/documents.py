"""The document viewer: one DocumentReference's metadata and its content, shown in the page.

``/portal/documents/[id]`` (holder side) and ``/portal/pro/patients/[pid]/documents/[id]``
(professional) read the DocumentReference through the reader's own access decision
(``records.view``), and the content route streams the bytes through ``documents.retrieve`` with
the same session: the Binary read is decided and audited like the API's ITI-68. A document the
reader may not see, one of another record, one held back for a consultation d'annonce (holder
side) and an unknown id all answer the same "not found" page.

Only PDF, images and plain text are served ``inline`` (PDF in an ``<iframe>``, images as
``<img>``, text in a ``<pre>``); anything else is a download, sandboxed, so no content a
submitter sent ever runs as a page of the portal's origin.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import uuid
from collections.abc import Container, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import Response, StreamingResponse

from sharedcare.access.categories import DOCUMENT_TYPE_SYSTEM, PERSONAL_DOCUMENT
from sharedcare.access.policy import authored_by
from sharedcare.access.requests import is_pending
from sharedcare.api.fhir import base_url
from sharedcare.documents import lifecycle, submission
from sharedcare.documents.categories import PERSONAL, DocumentType, document_types
from sharedcare.documents.mhd import Content, literal
from sharedcare.documents.retrieve import retrieve
from sharedcare.fhir.errors import FhirError
from sharedcare.fhir.service import FhirService
from sharedcare.portal import csrf, records
from sharedcare.portal.deps import holder_side, professional
from sharedcare.portal.i18n import N_, Translator
from sharedcare.portal.pages import SECURITY_HEADERS, flash, language, redirect, render
from sharedcare.portal.sessions import PortalError, PortalUser
from sharedcare.storage.blobstore import CHUNK, BlobCorrupted, BlobNotFound, BlobTooLarge, Hashing

router = APIRouter(dependencies=[Depends(csrf.require_csrf)])
NOT_FOUND = N_("This document was not found, or you have no access to it.")
UNREADABLE = N_("The content of this document cannot be read at the moment.")
INLINE_TYPES = frozenset({"application/pdf", "image/jpeg", "image/png", "text/plain"})
"""Types shown in the page; everything else is offered as a download."""
TEXT_LIMIT = 512 * 1024
"""Plain text up to this size is shown in the page itself; longer text in its frame."""
PAGE_CSP = SECURITY_HEADERS["Content-Security-Policy"] + "; frame-src 'self'"
"""The portal's policy, plus frames of this site (the PDF viewer) for the document page only."""
CONFIDENTIALITY = {
    "N": N_("Normal"),
    "R": N_("Restricted"),
    "V": N_("Very restricted"),
    "L": N_("Low"),
    "M": N_("Moderate"),
    "U": N_("Unrestricted"),
}
UPLOAD_TYPES = {
    "application/pdf": b"%PDF-",
    "image/jpeg": b"\xff\xd8\xff",
    "image/png": b"\x89PNG\r\n\x1a\n",
    "text/plain": b"",
}
"""Types a document may be uploaded as, and the first bytes that content of the type starts with."""
MAX_TITLE = 200
NO_FILE = N_("Choose the file to upload.")
NO_TITLE = N_("Give the document a title (up to 200 characters).")
BAD_TYPE = N_("Only PDF, JPEG, PNG and plain text files can be uploaded.")
TOO_LARGE = N_("The file is too large: the limit is %(limit)s.")
REFUSED = N_("The document could not be filed: %(reason)s")
UPLOADED = N_("The document was added to the record.")
MHD_CLASS = "urn:oid:1.3.6.1.4.1.19376.1.2.6.1"
MHD_FORMAT = "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode"
MHD_PROFILE = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.Comprehensive.ProvideBundle"
LIST_TYPES = "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes"
STATUSES = {
    "current": N_("Current"),
    "superseded": N_("Replaced or withdrawn by its author"),
    "entered-in-error": N_("Entered in error"),
}


@dataclass(frozen=True, slots=True)
class Opened:
    """A document the reader may see, with the service that read it (for its content)."""

    service: FhirService
    id: str
    resource: dict[str, Any]
    base: str
    """The address of the record's pages for this reader."""


def bare_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def open_document(request: Request, user: PortalUser, document_id: str, patient_id: str | None) -> Opened:
    """The DocumentReference as ``user`` sees it, in the record the page is about; else 404."""
    service = records.view(request, user)
    record = user.record if patient_id is None else patient_id
    try:
        resource = service.read("DocumentReference", document_id).resource()
    except FhirError:
        raise PortalError(404, NOT_FOUND) from None
    subject = literal((resource.get("subject") or {}).get("reference"))
    if record is None or subject != ("Patient", record) or (patient_id is None and is_pending(resource)):
        raise PortalError(404, NOT_FOUND)
    base = "/portal" if patient_id is None else f"/portal/pro/patients/{patient_id}"
    return Opened(service, document_id, resource, base)


def _attachment(resource: dict[str, Any]) -> dict[str, Any]:
    for content in resource.get("content") or ():
        if isinstance(content, dict) and isinstance(content.get("attachment"), dict):
            attachment: dict[str, Any] = content["attachment"]
            return attachment
    return {}


def _binary_id(attachment: dict[str, Any]) -> str | None:
    url = attachment.get("url")
    if isinstance(url, str) and "/Binary/" in url:
        return url.rsplit("/Binary/", 1)[1].split("?")[0] or None
    return None


def _content_headers(content_type: str, size: int) -> dict[str, str]:
    """Headers of the bytes: inline (framed by our own page only) or a sandboxed download."""
    inline = bare_type(content_type) in INLINE_TYPES
    return {
        "Content-Type": content_type,
        "Content-Length": str(size),
        "Content-Disposition": "inline" if inline else "attachment",
        "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
        "frame-ancestors 'self'" + ("" if inline else "; sandbox"),
        "X-Frame-Options": "SAMEORIGIN",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }


def content_response(request: Request, opened: Opened) -> Response:
    """The document's first attachment: its Binary through ``documents.retrieve`` (the reader's
    access decision and audit), or the inline ``data`` of a document filed without a Binary."""
    attachment = _attachment(opened.resource)
    binary_id = _binary_id(attachment)
    if binary_id is None:
        try:
            data = base64.b64decode(str(attachment.get("data") or ""), validate=True)
        except (binascii.Error, ValueError):
            data = b""
        if not data:
            raise PortalError(404, NOT_FOUND)
        content_type = str(attachment.get("contentType") or "application/octet-stream")
        return Response(data, headers=_content_headers(content_type, len(data)))
    try:
        doc = retrieve(opened.service, request.app.state.blobs, binary_id)
    except FhirError:
        raise PortalError(404, NOT_FOUND) from None
    except (BlobCorrupted, BlobNotFound):
        raise PortalError(500, UNREADABLE) from None
    headers = _content_headers(doc.content_type, doc.size)
    if doc.body is not None:
        return Response(doc.body, headers=headers)

    def chunks() -> Iterator[bytes]:
        yield from doc.stream()

    return StreamingResponse(chunks(), headers=headers)


def _text_of(request: Request, opened: Opened, attachment: dict[str, Any]) -> str | None:
    """Short plain text, read (through the same checks) to be shown in a ``<pre>``."""
    size = attachment.get("size")
    if isinstance(size, int) and size > TEXT_LIMIT:
        return None
    response = content_response(request, opened)
    body = getattr(response, "body", None)
    if not isinstance(body, bytes | bytearray) or len(body) > TEXT_LIMIT:
        return None
    return bytes(body).decode("utf-8", errors="replace")


def document_page(
    request: Request, user: PortalUser, opened: Opened, error: str | None = None, status: int = 200
) -> Response:
    t = Translator(language(request, user))
    res = opened.resource
    attachment = _attachment(res)
    content_type = bare_type(str(attachment.get("contentType") or ""))
    types = document_types()
    found = types.type_of(res)
    category = types.category_of(res)
    authors = [a.get("reference") for a in res.get("author") or () if isinstance(a, dict)]
    names = records.directory_names(request, [a for a in authors if isinstance(a, str)])
    codes = [
        c.get("code")
        for label in res.get("securityLabel") or ()
        for c in (label.get("coding") or () if isinstance(label, dict) else ())
        if isinstance(c, dict) and c.get("code") in CONFIDENTIALITY
    ]
    kind = (
        "pdf"
        if content_type == "application/pdf"
        else "image"
        if content_type in ("image/jpeg", "image/png")
        else "text"
        if content_type == "text/plain"
        else "download"
    )
    text = _text_of(request, opened, attachment) if kind == "text" else None
    address = f"{opened.base}/documents/{opened.id}"
    replaceable = _replaceable(user, opened)
    levels = [(code, CONFIDENTIALITY[code]) for code in PRO_CONFIDENTIALITY]  # the forms' choices
    level = next((c for c in codes if c in PRO_CONFIDENTIALITY), "N")
    context = {
        "title": records.title_of(res) or t.gettext("Document"),
        "type": found.display if found else records.title_of({"type": res.get("type")}),
        "category": category.label(t.lang) if category else None,
        "authors": [
            names.get(a) or (t.gettext("The patient") if a.startswith("Patient/") else a)
            for a in authors
            if isinstance(a, str)
        ],
        "when": records.when_of(res),
        "status": t.gettext(STATUSES.get(str(res.get("status")), str(res.get("status") or ""))),
        "confidentiality": [t.gettext(CONFIDENTIALITY[str(c)]) for c in codes],
        "kind": kind,
        "text": text,
        "content_url": f"{address}/content",
        "back": f"{opened.base}/timeline",
        "error": error,
        "actions": _status_actions(user, opened),
        "status_url": f"{address}/status",
        "relabel": {"url": f"{address}/confidentiality", "levels": levels, "confidentiality": level}
        if _relabelable(user, opened)
        else None,
        "holder_side": opened.base == "/portal",
        "replace": {
            "url": f"{address}/replace",
            "title": records.title_of(res) or "",
            "levels": levels,
            "confidentiality": level,
            "accept": ",".join(UPLOAD_TYPES),
        }
        if replaceable
        else None,
    }
    return render(
        request,
        "document.html",
        context,
        user=user,
        status=status,
        headers={"Content-Security-Policy": PAGE_CSP},
    )


def _status_actions(user: PortalUser, opened: Opened) -> list[tuple[str, str]]:
    """The status changes the page offers to the document's author side, those its status allows
    (the write check decides again when the button is used): a professional deprecates or marks
    in error; the holder (or a representative) withdraws a personal document they added, the
    only documents they author."""
    if not authored_by(user.principal, opened.resource):
        return []
    allowed = lifecycle.TRANSITIONS.get(str(opened.resource.get("status")), frozenset())
    offered = HOLDER_ACTIONS if opened.base == "/portal" else STATUS_ACTIONS
    return [(status, label) for status, label in offered.items() if status in allowed]


def _replaceable(user: PortalUser, opened: Opened) -> bool:
    """A professional on the author's side may replace a current document by a new version."""
    return (
        opened.base != "/portal"
        and opened.resource.get("status") == "current"
        and authored_by(user.principal, opened.resource)
    )


def _relabelable(user: PortalUser, opened: Opened) -> bool:
    """A professional on the author's side may change a document's confidentiality, whatever
    its status (a withdrawn document stays in the record, and its level still decides who reads
    it)."""
    return opened.base != "/portal" and authored_by(user.principal, opened.resource)


# -- professional upload and status changes (before the document routes: ``new`` is no id) -------

PRO_EXCLUDED = frozenset({PERSONAL, "patient-summary"})
"""Patient categories a professional does not file by hand: the holder's own documents, and
summaries (an IPS document is generated and signed through ``crossborder.ips``)."""
PRO_CONFIDENTIALITY = ("N", "R", "V")
NO_TYPE = N_("Choose the type of the document.")
NO_CONFIDENTIALITY = N_("Choose the confidentiality of the document.")
STATUS_CHANGED = N_("The status of the document was changed.")
STATUS_REFUSED = N_("The status could not be changed: %(reason)s")
STATUS_ACTIONS = {
    "superseded": N_("Deprecate (withdraw without a replacement)"),
    "entered-in-error": N_("Mark as entered in error"),
}
HOLDER_ACTIONS = {"superseded": N_("Withdraw this document")}
"""What the holder side may do to a personal document it added (MHD deprecate)."""
REPLACED = N_("The new version replaced the document.")
RELABELLED = N_("The confidentiality of the document was changed.")
RELABEL_REFUSED = N_("The confidentiality could not be changed: %(reason)s")
NOT_RELABELABLE = N_("Only the author of a document can change its confidentiality.")
NOT_REPLACEABLE = N_("Only the author of a current document can replace it.")


def pro_types(lang: str) -> list[tuple[str, str, str]]:
    """The types a professional may choose: ``(value, label, category)`` sorted by category."""
    found = [
        (f"{t.system}|{t.code}", t.display, t.category.label(lang))
        for t in document_types().types.values()
        if t.category.code not in PRO_EXCLUDED
    ]
    return sorted(found, key=lambda x: (x[2], x[1]))


def pro_upload_page(
    request: Request,
    user: PortalUser,
    patient_id: str,
    typed: dict[str, str],
    error: str | None,
    status: int = 200,
) -> Response:
    lang = language(request, user)
    context = {
        "typed": typed,
        "error": error,
        "accept": ",".join(UPLOAD_TYPES),
        "types": pro_types(lang),
        "levels": [(code, CONFIDENTIALITY[code]) for code in PRO_CONFIDENTIALITY],
        "patient_id": patient_id,
    }
    return render(request, "pro_upload.html", context, user=user, status=status)


def _pro_patient(request: Request, user: PortalUser, patient_id: str) -> None:
    """404 unless the professional may open the record (read through their access decision)."""
    try:
        records.view(request, user).read("Patient", patient_id)
    except FhirError:
        raise PortalError(404, N_("No record was found, or you have no access to it.")) from None


@router.get("/pro/patients/{patient_id}/documents/new")
def pro_upload_form(request: Request, patient_id: str, user: PortalUser = Depends(professional)) -> Response:
    _pro_patient(request, user, patient_id)
    return pro_upload_page(request, user, patient_id, {"title": "", "type": "", "confidentiality": "N"}, None)


@router.post("/pro/patients/{patient_id}/documents/new")
def pro_upload(
    request: Request,
    patient_id: str,
    title: Annotated[str, Form()] = "",
    doc_type: Annotated[str, Form(alias="type")] = "",
    confidentiality: Annotated[str, Form()] = "",
    file: Annotated[UploadFile | None, File()] = None,
    user: PortalUser = Depends(professional),
) -> Response:
    """A professional files a document for a patient, as its author, with its confidentiality;
    the write check (their profession's rights on the type's category, the care relationship, a
    closed record) decides, and a refusal stores nothing."""
    _pro_patient(request, user, patient_id)
    t = Translator(language(request, user))
    title = " ".join(title.split())
    typed = {"title": title, "type": doc_type, "confidentiality": confidentiality}

    def refuse(message: str) -> Response:
        return pro_upload_page(request, user, patient_id, typed, message, 400)

    system, _, code = doc_type.partition("|")
    found = document_types().get(system, code)
    if found is None or found.category.code in PRO_EXCLUDED:
        return refuse(t.gettext(NO_TYPE))
    try:
        bundle, data = _pro_bundle(request, user, patient_id, found, title, confidentiality, file, t.lang)
    except UploadRefused as exc:
        message, params = exc.args
        return refuse(t.gettext(message, **params))
    try:
        document_id = file_document(request, user, bundle, data)
    except FhirError as exc:
        return refuse(_refusal(t, exc))
    flash(request, UPLOADED)
    return redirect(f"/portal/pro/patients/{patient_id}/documents/{document_id}")


@router.post("/pro/patients/{patient_id}/documents/{document_id}/status")
def pro_change_status(
    request: Request,
    patient_id: str,
    document_id: str,
    status: Annotated[str, Form()] = "",
    user: PortalUser = Depends(professional),
) -> Response:
    """The author deprecates a document or marks it in error (``lifecycle.change_status``, with
    the professional's session: only the author's side may, and it is audited as an update)."""
    opened = open_document(request, user, document_id, patient_id)
    where = f"/portal/pro/patients/{patient_id}/documents/{document_id}"
    return _change_status(request, user, opened, document_id, status, STATUS_ACTIONS, where)


@router.post("/pro/patients/{patient_id}/documents/{document_id}/replace")
def pro_replace(
    request: Request,
    patient_id: str,
    document_id: str,
    title: Annotated[str, Form()] = "",
    confidentiality: Annotated[str, Form()] = "",
    file: Annotated[UploadFile | None, File()] = None,
    user: PortalUser = Depends(professional),
) -> Response:
    """The author files a new version of a current document: an ITI-65 submission whose document
    ``relatesTo`` ``replaces`` the old one, which becomes ``superseded`` in the same transaction
    (``documents.submission``; the write check lets only the author's side change the old one)."""
    opened = open_document(request, user, document_id, patient_id)
    t = Translator(language(request, user))

    def refuse(message: str, status: int = 400) -> Response:
        return document_page(request, user, opened, message, status)

    found = document_types().type_of(opened.resource)
    if not _replaceable(user, opened) or found is None:
        return refuse(t.gettext(NOT_REPLACEABLE), 403)
    title = " ".join(title.split())
    try:
        bundle, data = _pro_bundle(
            request, user, patient_id, found, title, confidentiality, file, t.lang, replaces=document_id
        )
    except UploadRefused as exc:
        message, params = exc.args
        return refuse(t.gettext(message, **params))
    try:
        new_id = file_document(request, user, bundle, data)
    except FhirError as exc:
        return refuse(_refusal(t, exc), exc.status)
    flash(request, REPLACED)
    return redirect(f"/portal/pro/patients/{patient_id}/documents/{new_id}")


@router.post("/pro/patients/{patient_id}/documents/{document_id}/confidentiality")
def pro_relabel(
    request: Request,
    patient_id: str,
    document_id: str,
    confidentiality: Annotated[str, Form()] = "",
    user: PortalUser = Depends(professional),
) -> Response:
    """The author sets the confidentiality of a document (``lifecycle.set_confidentiality``,
    with the professional's session: only the author's side may, audited as an update); its
    content follows, and who may read it changes at once."""
    opened = open_document(request, user, document_id, patient_id)
    t = Translator(language(request, user))
    if confidentiality not in PRO_CONFIDENTIALITY:
        return document_page(request, user, opened, t.gettext(NO_CONFIDENTIALITY), 400)
    if not _relabelable(user, opened):
        return document_page(request, user, opened, t.gettext(NOT_RELABELABLE), 403)
    try:
        lifecycle.set_confidentiality(opened.service, document_id, confidentiality)
    except FhirError as exc:
        return document_page(request, user, opened, t.gettext(RELABEL_REFUSED, reason=str(exc)), exc.status)
    flash(request, RELABELLED)
    return redirect(f"/portal/pro/patients/{patient_id}/documents/{document_id}")


@router.post("/documents/{document_id}/status")
def holder_change_status(
    request: Request,
    document_id: str,
    status: Annotated[str, Form()] = "",
    user: PortalUser = Depends(holder_side),
) -> Response:
    """The holder (or a representative) withdraws a personal document they added: deprecated
    (``superseded``) through their own session, whose write check allows only the author's side."""
    opened = open_document(request, user, document_id, None)
    where = f"/portal/documents/{document_id}"
    return _change_status(request, user, opened, document_id, status, HOLDER_ACTIONS, where)


def _change_status(
    request: Request,
    user: PortalUser,
    opened: Opened,
    document_id: str,
    status: str,
    allowed: Container[str],
    where: str,
) -> Response:
    """The status change both sides share: only the side's ``allowed`` statuses, through the
    opened document's session (its write check decides); a refusal shows the page again."""
    t = Translator(language(request, user))
    if status not in allowed:
        return document_page(request, user, opened, t.gettext(STATUS_REFUSED, reason=status or "—"), 400)
    try:
        lifecycle.change_status(opened.service, document_id, status)
    except FhirError as exc:
        return document_page(request, user, opened, t.gettext(STATUS_REFUSED, reason=str(exc)), exc.status)
    flash(request, STATUS_CHANGED)
    return redirect(where)


@router.get("/documents/{document_id}")
def holder_document(request: Request, document_id: str, user: PortalUser = Depends(holder_side)) -> Response:
    return document_page(request, user, open_document(request, user, document_id, None))


@router.get("/documents/{document_id}/content")
def holder_content(request: Request, document_id: str, user: PortalUser = Depends(holder_side)) -> Response:
    return content_response(request, open_document(request, user, document_id, None))


@router.get("/pro/patients/{patient_id}/documents/{document_id}")
def pro_document(
    request: Request, patient_id: str, document_id: str, user: PortalUser = Depends(professional)
) -> Response:
    return document_page(request, user, open_document(request, user, document_id, patient_id))


@router.get("/pro/patients/{patient_id}/documents/{document_id}/content")
def pro_content(
    request: Request, patient_id: str, document_id: str, user: PortalUser = Depends(professional)
) -> Response:
    return content_response(request, open_document(request, user, document_id, patient_id))


# -- upload ----------------------------------------------------------------------------------------


class UploadRefused(ValueError):
    """An upload the page refuses before anything is stored; ``args``: msgid and parameters."""


def _pro_bundle(
    request: Request,
    user: PortalUser,
    patient_id: str,
    found: DocumentType,
    title: str,
    confidentiality: str,
    file: UploadFile | None,
    lang: str,
    *,
    replaces: str | None = None,
) -> tuple[dict[str, Any], Content]:
    """A professional's file with its form, checked alike for a new document and a new version
    (the confidentiality, the normalised title, then the file itself: ``read_upload``), as the
    ITI-65 bundle the professional files, and its content; ``UploadRefused`` says what is wrong."""
    if confidentiality not in PRO_CONFIDENTIALITY:
        raise UploadRefused(NO_CONFIDENTIALITY, {})
    if not title or len(title) > MAX_TITLE:
        raise UploadRefused(NO_TITLE, {})
    data, content_type = read_upload(file, request.app.state.settings.max_content_bytes)
    author = f"Practitioner/{user.principal.practitioner_id}"
    coding = {"system": found.system, "code": found.code, "display": found.display}
    bundle = provide_bundle(
        patient_id, author, data, content_type, title, coding, confidentiality, lang, replaces=replaces
    )
    return bundle, data


def _size_words(size: int) -> str:
    for unit, factor in (("GB", 1024**3), ("MB", 1024**2), ("kB", 1024)):
        if size >= factor:
            return f"{size / factor:.3g} {unit}"
    return f"{size} B"


def read_upload(upload: UploadFile | None, limit: int) -> tuple[Content, str]:
    """The uploaded file's content and type, checked (size, allow-list, the type's first bytes,
    UTF-8 text) in one chunkwise pass over Starlette's spooled file: it is never whole in memory,
    and ``documents.submission`` streams it into the content store from the same file."""
    if upload is None or not upload.filename:
        raise UploadRefused(NO_FILE, {})
    content_type = bare_type(upload.content_type or "")
    if content_type not in UPLOAD_TYPES:
        raise UploadRefused(BAD_TYPE, {})
    source = upload.file
    hashing = Hashing(limit)
    text = codecs.getincrementaldecoder("utf-8")() if content_type == "text/plain" else None
    head = b""
    source.seek(0)
    try:
        while chunk := source.read(CHUNK):
            hashing.feed(chunk)
            if len(head) < 16:
                head += chunk[:16]
            if text is not None:
                text.decode(chunk)
        if text is not None:
            text.decode(b"", final=True)
    except BlobTooLarge:
        raise UploadRefused(TOO_LARGE, {"limit": _size_words(limit)}) from None
    except UnicodeDecodeError:
        raise UploadRefused(BAD_TYPE, {}) from None
    if not hashing.size:
        raise UploadRefused(NO_FILE, {})
    if not head.startswith(UPLOAD_TYPES[content_type]):
        raise UploadRefused(BAD_TYPE, {})

    def chunks() -> Iterator[bytes]:
        source.seek(0)
        while chunk := source.read(CHUNK):
            yield chunk

    content = Content(hashing.digest(), hashing.sha1.digest(), hashing.size, chunks=chunks)
    return content, content_type


def upload_url(content: Content) -> str:
    """The ``attachment.url`` naming a portal upload in its Provide Document Bundle."""
    return f"urn:uuid:{uuid.UUID(content.sha256[:32])}"


def provide_bundle(
    patient_id: str,
    author: str,
    data: bytes | Content,
    content_type: str,
    title: str,
    type_coding: dict[str, str],
    confidentiality: str = "N",
    lang: str = "fr",
    *,
    replaces: str | None = None,
) -> dict[str, Any]:
    """An ITI-65 Provide Document Bundle of one document, with its content inline (bytes) or named
    by ``upload_url`` (an upload, which ``file_document`` is given); with ``replaces``, a new
    version of that stored DocumentReference (``relatesTo`` replaces)."""
    content = data if isinstance(data, Content) else Content.of(data)
    carried = (
        {"url": upload_url(content)}
        if isinstance(data, Content)
        else {"data": base64.b64encode(data).decode()}
    )
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    key = uuid.uuid4()
    document = {
        "resourceType": "DocumentReference",
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{key}"},
        "status": "current",
        "type": {"coding": [type_coding]},
        "category": [{"coding": [{"system": MHD_CLASS, "code": "REPORTS"}]}],
        "subject": {"reference": f"Patient/{patient_id}"},
        "date": now,
        "author": [{"reference": author}],
        "description": title,
        "securityLabel": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                        "code": confidentiality,
                    }
                ]
            }
        ],
        "content": [
            {
                "attachment": {
                    "contentType": content_type,
                    "language": lang,
                    **carried,
                    "size": content.size,
                    "hash": base64.b64encode(content.sha1).decode(),
                    "title": title,
                    "creation": now,
                },
                "format": {"system": MHD_FORMAT, "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient"},
            }
        ],
    }
    if replaces is not None:
        document["relatesTo"] = [
            {"code": "replaces", "target": {"reference": f"DocumentReference/{replaces}"}}
        ]
    submission_set = {
        "resourceType": "List",
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"}],
        "status": "current",
        "mode": "working",
        "code": {"coding": [{"system": LIST_TYPES, "code": "submissionset"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "date": now,
        "source": {"reference": author},
        "entry": [{"item": {"reference": f"urn:uuid:{key}"}}],
    }
    return {
        "resourceType": "Bundle",
        "meta": {"profile": [MHD_PROFILE]},
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:submission-set",
                "resource": submission_set,
                "request": {"method": "POST", "url": "List"},
            },
            {
                "fullUrl": f"urn:uuid:{key}",
                "resource": document,
                "request": {"method": "POST", "url": "DocumentReference"},
            },
        ],
    }


def file_document(request: Request, user: PortalUser, bundle: dict[str, Any], *uploads: Content) -> str:
    """File ``bundle`` through the documents module as ``user`` (their write check, the audit),
    streaming the ``uploads`` it names into the content store; the new DocumentReference's id.
    ``FhirError`` when refused: nothing is stored then."""
    settings = request.app.state.settings
    result = submission.provide(
        records.view(request, user),
        request.app.state.blobs,
        bundle,
        base_url=base_url(request),
        max_size=settings.max_content_bytes,
        uploads={upload_url(u): u for u in uploads},
    )
    for entry in result["entry"]:
        location = str(entry.get("response", {}).get("location", ""))
        if location.startswith("DocumentReference/"):
            return location.split("/")[1]
    raise AssertionError("the submission created no DocumentReference")


def _refusal(t: Translator, exc: FhirError) -> str:
    return t.gettext(REFUSED, reason=str(exc))


HOLDER_TYPES: dict[str, tuple[str, str, str]] = {
    "note": (N_("Personal note"), DOCUMENT_TYPE_SYSTEM, PERSONAL_DOCUMENT),
    "directive": (N_("Advance directives or end-of-life arrangements"), "http://loinc.org", "42348-3"),
    "organ": (N_("Organ donation wishes"), "http://loinc.org", "64300-7"),
    "other": (N_("Other personal document"), DOCUMENT_TYPE_SYSTEM, PERSONAL_DOCUMENT),
}
"""The holder's choice of document type: label, then the type's system and code (the LOINC
document types of the personal expression area; LOINC has none for a note, our local type then)."""


def upload_page(
    request: Request, user: PortalUser, typed: dict[str, str], error: str | None, status: int = 200
) -> Response:
    kinds = [(key, label) for key, (label, _, _) in HOLDER_TYPES.items()]
    context = {"typed": typed, "error": error, "accept": ",".join(UPLOAD_TYPES), "kinds": kinds}
    return render(request, "upload.html", context, user=user, status=status)


@router.get("/documents/upload/new")
def upload_form(request: Request, user: PortalUser = Depends(holder_side)) -> Response:
    return upload_page(request, user, {"title": "", "kind": "other"}, None)


@router.post("/documents/upload/new")
def upload(
    request: Request,
    title: Annotated[str, Form()] = "",
    kind: Annotated[str, Form()] = "other",
    file: Annotated[UploadFile | None, File()] = None,
    user: PortalUser = Depends(holder_side),
) -> Response:
    """The holder (or a representative) files a personal document of the chosen type."""
    t = Translator(language(request, user))
    title = " ".join(title.split())
    typed = {"title": title, "kind": kind}
    if kind not in HOLDER_TYPES:
        return upload_page(request, user, typed, t.gettext(NO_TYPE), 400)
    if not title or len(title) > MAX_TITLE:
        return upload_page(request, user, typed, t.gettext(NO_TITLE), 400)
    try:
        data, content_type = read_upload(file, request.app.state.settings.max_content_bytes)
    except UploadRefused as exc:
        message, params = exc.args
        return upload_page(request, user, typed, t.gettext(message, **params), 400)
    assert user.record is not None
    author = f"Patient/{user.record}"  # a personal document of the record (representatives too)
    _, system, code = HOLDER_TYPES[kind]
    coding = {"system": system, "code": code}
    bundle = provide_bundle(user.record, author, data, content_type, title, coding, lang=t.lang)
    try:
        document_id = file_document(request, user, bundle, data)
    except FhirError as exc:
        return upload_page(request, user, typed, _refusal(t, exc), 400)
    flash(request, UPLOADED)
    return redirect(f"/portal/documents/{document_id}")
