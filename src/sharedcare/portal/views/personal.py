"""The holder's personal expression area (regulation art. 6(2)): notes, wishes and documents
the holder (or a representative acting for them) writes for the professionals.

Representation (standard FHIR R4 / IHE, see ``docs/portal.md``):

- a note for professionals is a DocumentReference of type ``personal-document`` with a
  ``text/plain`` attachment, filed through the MHD submission path (ITI-65) like every document,
  so it is a document of the record (viewer, timeline, lifecycle) and not a message to someone;
- advance directives and end-of-life arrangements are DocumentReferences of LOINC 42348-3
  "Advance directives" (the IPS section code), their text as ``text/plain`` and an optional
  uploaded file as a second document of the same type;
- the organ-donation wish is a ``Consent`` (scope ``adr``, category LOINC 64300-7): a
  computable permit/deny (with the organs allowed when only some are), versioned when changed
  and ``inactive`` when withdrawn;
- the agreement to keep the record longer after closure (art. 9(5)) is a dated ``Consent``
  recorded by ``access.lifecycle`` (a choice of the holder's, which no professional reads; the
  holder reads it through their own session here), ``inactive`` when withdrawn.

All three fall in the ``personal-expression`` row of the access matrix (``access.categories``):
every write goes through the holder's own session (write check, audit), and every read through
the reader's access decision, so a professional sees them only when their care relationship and
profession allow, and a record they may not open answers "not found".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import Response
from sqlalchemy import Connection

from sharedcare.access import lifecycle as record_lifecycle
from sharedcare.access.categories import DOCUMENT_TYPE_SYSTEM, LOINC, PERSONAL_DOCUMENT
from sharedcare.access.policy import authored_by
from sharedcare.documents import lifecycle
from sharedcare.documents.categories import PERSONAL, document_types
from sharedcare.documents.mhd import Content
from sharedcare.fhir.errors import FhirError
from sharedcare.fhir.service import FhirService
from sharedcare.portal import csrf, records
from sharedcare.portal.deps import holder_side, now, professional
from sharedcare.portal.i18n import N_, Translator
from sharedcare.portal.pages import flash, language, redirect, render
from sharedcare.portal.sessions import PortalError, PortalUser
from sharedcare.portal.views import documents
from sharedcare.storage.engine import writer

router = APIRouter(dependencies=[Depends(csrf.require_csrf)])

ADVANCE_DIRECTIVE = "42348-3"
ORGAN_DONATION = "64300-7"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
ORGAN_POLICY = "Loi du 25 novembre 1982 relative aux organes destinés à la transplantation"
"""Luxembourg's organ-removal law (presumed consent): the rule the wish is expressed under."""
NOTE_CODING = {
    "system": DOCUMENT_TYPE_SYSTEM,
    "code": PERSONAL_DOCUMENT,
    "display": "Document provided by the patient",
}
DIRECTIVE_CODING = {"system": LOINC, "code": ADVANCE_DIRECTIVE, "display": "Advance directives"}
MAX_TEXT = 20_000
ORGAN_CHOICES = ("yes", "no", "some")

NO_TEXT = N_("Write the text (up to 20,000 characters).")
NO_CHOICE = N_("Choose your wish on organ donation.")
NO_ORGANS = N_("Name the organs and tissues you agree to donate.")
SAVED = N_("Your personal space was updated.")
WITHDRAWN = N_("Withdrawn: professionals no longer see it as current.")
REFUSED = N_("This could not be saved: %(reason)s")
NOT_YOURS = N_("Only what you or your representatives wrote can be changed here.")
NOT_FOUND = N_("No record was found, or you have no access to it.")
NO_YEARS = N_("Choose between 1 and %(max)s extra years.")
RETENTION_SAVED = N_("Your agreement is recorded.")
RETENTION_WITHDRAWN = N_("Your agreement is withdrawn: the usual period applies again.")
RETENTION_MESSAGES = (N_("Only the holder of the record or their representative can agree to this"),)
"""The messages of ``access.lifecycle.RetentionError`` the page may show, for extraction."""


@dataclass(frozen=True, slots=True)
class Writing:
    """A current document of the personal area, as the page shows it."""

    id: str
    title: str
    kind: str
    """``note``, ``directive``, ``organ`` or ``other`` (by document type)."""
    when: datetime | None
    text: str | None
    """The text of a plain-text document, else None (a file: see the viewer)."""
    mine: bool
    """Written on the holder's side (so the holder may change or withdraw it)."""


@dataclass(frozen=True, slots=True)
class OrganWish:
    """The current organ-donation Consent."""

    id: str
    choice: str
    organs: str
    when: datetime | None


def _kind(resource: dict[str, Any]) -> str:
    found = document_types().type_of(resource)
    if found is None:
        return "other"
    if found.system == LOINC and found.code == ADVANCE_DIRECTIVE:
        return "directive"
    if found.system == LOINC and found.code == ORGAN_DONATION:
        return "organ"
    return "note" if found.code == PERSONAL_DOCUMENT else "other"


def _text(
    request: Request, service: FhirService, rid: str, resource: dict[str, Any], base: str
) -> str | None:
    """The text of a short plain-text document, read through the reader's session (ITI-68)."""
    content = (resource.get("content") or [{}])[0].get("attachment") or {}
    if documents.bare_type(str(content.get("contentType") or "")) != "text/plain":
        return None
    if isinstance(content.get("size"), int) and content["size"] > documents.TEXT_LIMIT:
        return None
    try:
        response = documents.content_response(request, documents.Opened(service, rid, resource, base))
    except PortalError:
        return None
    body = getattr(response, "body", None)
    return bytes(body).decode("utf-8", errors="replace") if isinstance(body, bytes | bytearray) else None


def writings(
    request: Request, user: PortalUser, service: FhirService, patient_id: str, base: str
) -> list[Writing]:
    """The record's current personal-area documents the reader may see, newest first."""
    params = [
        ("patient", f"Patient/{patient_id}"),
        ("status", "current"),
        ("_sort", "-date"),
        ("_count", "200"),
    ]
    query = service.parse_search("DocumentReference", params, strict=True)
    types = document_types()
    found: list[Writing] = []
    for stored in service.search(query).matches:
        res = stored.resource()
        category = types.category_of(res)
        if category is None or category.code != PERSONAL:
            continue
        found.append(
            Writing(
                stored.id,
                records.title_of(res),
                _kind(res),
                records.when_of(res),
                _text(request, service, stored.id, res, base),
                authored_by(user.principal, res),
            )
        )
    return found


def organ_wish(service: FhirService, patient_id: str) -> OrganWish | None:
    """The newest active organ-donation Consent the reader may see, or None."""
    params = [
        ("patient", f"Patient/{patient_id}"),
        ("category", f"{LOINC}|{ORGAN_DONATION}"),
        ("status", "active"),
        ("_sort", "-_lastUpdated"),
        ("_count", "1"),
    ]
    matches = service.search(service.parse_search("Consent", params, strict=True)).matches
    if not matches:
        return None
    res = matches[0].resource()
    provision = res.get("provision") or {}
    nested = provision.get("provision") or []
    if provision.get("type") == "permit":
        choice, organs = "yes", ""
    elif nested:
        choice = "some"
        organs = " ".join(str(c.get("text") or "") for p in nested for c in p.get("code") or ())
    else:
        choice, organs = "no", ""
    return OrganWish(matches[0].id, choice, organs, records.parse_when(res.get("dateTime")))


def organ_consent(patient_id: str, choice: str, organs: str) -> dict[str, Any]:
    """The wish as a Consent: ``permit`` (yes), ``deny`` (no), or ``deny`` except a nested
    ``permit`` naming the organs and tissues given (some)."""
    provision: dict[str, Any] = {"type": "permit" if choice == "yes" else "deny"}
    if choice == "some":
        provision["provision"] = [{"type": "permit", "code": [{"text": organs}]}]
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "adr", "display": "Advanced Care Directive"}]},
        "category": [
            {"coding": [{"system": LOINC, "code": ORGAN_DONATION, "display": "Organ donation consent"}]}
        ],
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "performer": [{"reference": f"Patient/{patient_id}"}],
        "policyRule": {"text": ORGAN_POLICY},
        "provision": provision,
    }


def _page(
    request: Request,
    user: PortalUser,
    service: FhirService,
    patient_id: str,
    base: str,
    *,
    editable: bool,
    error: str | None = None,
    status: int = 200,
) -> Response:
    found = writings(request, user, service, patient_id, base)
    settings = request.app.state.settings
    context = {
        "base": base,
        "editable": editable,
        "error": error,
        "notes": [w for w in found if w.kind in ("note", "other")],
        "directives": [w for w in found if w.kind == "directive"],
        "organ_documents": [w for w in found if w.kind == "organ"],
        "wish": organ_wish(service, patient_id),
        "accept": ",".join(documents.UPLOAD_TYPES),
        "max_text": MAX_TEXT,
        "retention": record_lifecycle.retention_agreement(service, patient_id) if editable else None,
        "retention_base": settings.delete_after_closure_years,
        "retention_max": settings.retention_extension_max_years,
    }
    return render(request, "personal.html", context, user=user, status=status)


def _clean_text(text: str) -> str:
    return text.replace("\r\n", "\n").strip()


def _text_bundle(
    request: Request,
    user: PortalUser,
    title: str,
    text: str,
    coding: dict[str, str],
    replaces: str | None = None,
) -> dict[str, Any]:
    """An ITI-65 bundle of ``text`` as a plain-text document written by the holder's side."""
    assert user.record is not None
    return documents.provide_bundle(
        user.record,
        f"Patient/{user.record}",
        text.encode("utf-8"),
        "text/plain; charset=utf-8",
        title,
        coding,
        lang=language(request, user),
        replaces=replaces,
    )


def _holder_page(request: Request, user: PortalUser, error: str | None = None, status: int = 200) -> Response:
    assert user.record is not None
    service = records.view(request, user)
    return _page(request, user, service, user.record, "/portal", editable=True, error=error, status=status)


@router.get("/personal")
def personal_space(request: Request, user: PortalUser = Depends(holder_side)) -> Response:
    return _holder_page(request, user)


@router.post("/personal/writings")
def add_writing(
    request: Request,
    kind: Annotated[str, Form()] = "note",
    title: Annotated[str, Form()] = "",
    text: Annotated[str, Form()] = "",
    file: Annotated[UploadFile | None, File()] = None,
    user: PortalUser = Depends(holder_side),
) -> Response:
    """A note for professionals, or advance directives / end-of-life arrangements (text, and an
    optional file filed as a second document of the same type)."""
    t = Translator(language(request, user))
    if kind not in ("note", "directive"):
        return _holder_page(request, user, t.gettext(documents.NO_TYPE), 400)
    coding = DIRECTIVE_CODING if kind == "directive" else NOTE_CODING
    title, text = " ".join(title.split()), _clean_text(text)
    if not title or len(title) > documents.MAX_TITLE:
        return _holder_page(request, user, t.gettext(documents.NO_TITLE), 400)
    if not text or len(text) > MAX_TEXT:
        return _holder_page(request, user, t.gettext(NO_TEXT), 400)
    upload: tuple[Content, str] | None = None  # streamed from the spooled file when filed
    if kind == "directive" and file is not None and file.filename:
        try:
            upload = documents.read_upload(file, request.app.state.settings.max_content_bytes)
        except documents.UploadRefused as exc:
            message, params = exc.args
            return _holder_page(request, user, t.gettext(message, **params), 400)
    assert user.record is not None
    bundle = _text_bundle(request, user, title, text, coding)
    uploads: list[Content] = []
    if upload is not None:  # the signed file: a second document of the same submission (atomic)
        data, content_type = upload
        author = f"Patient/{user.record}"
        second = documents.provide_bundle(user.record, author, data, content_type, title, coding, lang=t.lang)
        document = second["entry"][1]
        bundle["entry"].append(document)
        bundle["entry"][0]["resource"]["entry"].append({"item": {"reference": document["fullUrl"]}})
        uploads.append(data)
    try:
        documents.file_document(request, user, bundle, *uploads)
    except FhirError as exc:
        return _holder_page(request, user, t.gettext(REFUSED, reason=str(exc)), 400)
    flash(request, SAVED)
    return redirect("/portal/personal")


def _own_document(request: Request, user: PortalUser, document_id: str) -> documents.Opened:
    """A current personal-area document of the holder's record written on the holder's side."""
    opened = documents.open_document(request, user, document_id, None)
    category = document_types().category_of(opened.resource)
    if category is None or category.code != PERSONAL or not authored_by(user.principal, opened.resource):
        raise PortalError(403, NOT_YOURS)
    return opened


@router.post("/personal/writings/{document_id}")
def change_writing(
    request: Request,
    document_id: str,
    title: Annotated[str, Form()] = "",
    text: Annotated[str, Form()] = "",
    user: PortalUser = Depends(holder_side),
) -> Response:
    """A new version of a text the holder wrote: an ITI-65 replacement (``relatesTo`` replaces)."""
    t = Translator(language(request, user))
    opened = _own_document(request, user, document_id)
    found = document_types().type_of(opened.resource)
    title, text = " ".join(title.split()), _clean_text(text)
    if not title or len(title) > documents.MAX_TITLE:
        return _holder_page(request, user, t.gettext(documents.NO_TITLE), 400)
    if not text or len(text) > MAX_TEXT:
        return _holder_page(request, user, t.gettext(NO_TEXT), 400)
    coding = {"system": found.system, "code": found.code, "display": found.display} if found else NOTE_CODING
    bundle = _text_bundle(request, user, title, text, coding, document_id)
    return _change(request, user, lambda: documents.file_document(request, user, bundle), SAVED)


def _change(request: Request, user: PortalUser, act: Callable[[], object], done: str) -> Response:
    """Make one change of the holder's space through their session: a refusal (its write check)
    shows the page again with the reason; a success goes back to it with ``done`` said."""
    try:
        act()
    except FhirError as exc:
        t = Translator(language(request, user))
        return _holder_page(request, user, t.gettext(REFUSED, reason=str(exc)), exc.status)
    flash(request, done)
    return redirect("/portal/personal")


@router.post("/personal/writings/{document_id}/withdraw")
def withdraw_writing(request: Request, document_id: str, user: PortalUser = Depends(holder_side)) -> Response:
    """Withdraw a document the holder wrote (MHD deprecate: ``superseded``)."""
    opened = _own_document(request, user, document_id)
    return _change(
        request, user, lambda: lifecycle.change_status(opened.service, document_id, "superseded"), WITHDRAWN
    )


@router.post("/personal/organ-donation")
def record_organ_wish(
    request: Request,
    choice: Annotated[str, Form()] = "",
    organs: Annotated[str, Form()] = "",
    user: PortalUser = Depends(holder_side),
) -> Response:
    """Record or change the organ-donation wish: a new Consent, or a new version of the current one."""
    t = Translator(language(request, user))
    organs = " ".join(organs.split())
    if choice not in ORGAN_CHOICES:
        return _holder_page(request, user, t.gettext(NO_CHOICE), 400)
    if choice == "some" and not (0 < len(organs) <= documents.MAX_TITLE):
        return _holder_page(request, user, t.gettext(NO_ORGANS), 400)
    record = user.record
    assert record is not None
    service = records.view(request, user)
    consent = organ_consent(record, choice, organs if choice == "some" else "")

    def save() -> None:
        current = organ_wish(service, record)
        if current is None:
            service.create(consent)
        else:
            service.update("Consent", current.id, {**consent, "id": current.id})

    return _change(request, user, save, SAVED)


@router.post("/personal/organ-donation/withdraw")
def withdraw_organ_wish(request: Request, user: PortalUser = Depends(holder_side)) -> Response:
    """Withdraw the wish: the Consent becomes ``inactive`` (its history stays in the record)."""
    record = user.record
    assert record is not None
    service = records.view(request, user)

    def withdraw() -> None:
        current = organ_wish(service, record)
        if current is not None:
            res = service.read("Consent", current.id).resource()
            service.update("Consent", current.id, {**res, "status": "inactive"})

    return _change(request, user, withdraw, WITHDRAWN)


@router.post("/personal/retention")
def agree_retention(
    request: Request,
    years: Annotated[str, Form()] = "",
    user: PortalUser = Depends(holder_side),
    at: datetime = Depends(now),
) -> Response:
    """Record the holder's agreement that their record is kept ``years`` longer after closure
    (a new agreement replaces the current one)."""
    t = Translator(language(request, user))
    settings = request.app.state.settings
    most = settings.retention_extension_max_years
    count = int(years) if years.strip().isdigit() else 0
    if not 1 <= count <= most:
        return _holder_page(request, user, t.gettext(NO_YEARS, max=most), 400)
    record = user.record
    assert record is not None
    fhir = request.app.state.fhir

    def agree(conn: Connection) -> object:
        return record_lifecycle.agree_retention_extension(
            conn, fhir, settings, user.principal, record, count, at
        )

    return _retention_change(request, user, agree, RETENTION_SAVED)


@router.post("/personal/retention/withdraw")
def withdraw_retention(
    request: Request, user: PortalUser = Depends(holder_side), at: datetime = Depends(now)
) -> Response:
    """Withdraw the agreement: the record is deleted at the end of the usual period again."""
    record = user.record
    assert record is not None
    fhir = request.app.state.fhir

    def withdraw(conn: Connection) -> object:
        return record_lifecycle.withdraw_retention_extension(conn, fhir, user.principal, record, at)

    return _retention_change(request, user, withdraw, RETENTION_WITHDRAWN)


def _retention_change(
    request: Request, user: PortalUser, act: Callable[[Connection], object], done: str
) -> Response:
    """One change of the agreement in a writer transaction; a refusal changes nothing and shows why."""
    try:
        with writer(request.app.state.engine).begin() as conn:
            act(conn)
    except record_lifecycle.RetentionError as exc:
        t = Translator(language(request, user))
        return _holder_page(request, user, t.gettext(str(exc)), 403)
    flash(request, done)
    return redirect("/portal/personal")


@router.get("/pro/patients/{patient_id}/personal")
def pro_personal_space(
    request: Request, patient_id: str, user: PortalUser = Depends(professional)
) -> Response:
    """The patient's personal area as this professional may read it (their access decision)."""
    service = records.view(request, user)
    try:
        service.read("Patient", patient_id)
    except FhirError:
        raise PortalError(404, NOT_FOUND) from None
    base = f"/portal/pro/patients/{patient_id}"
    return _page(request, user, service, patient_id, base, editable=False)
