"""Pages of health professionals: find a patient, open access with the patient's code, read the
record summary, the emergency override when the platform enables it, and the filings due after
the end of care (art. 9(3): ``access.filing``).

Every read goes through the professional's own access decision: the search shows only patients
whose record they may open, a record they may not open answers exactly like an unknown one, and
each read is in the patient's access log. Names and matricules travel in POST bodies only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from sharedcare.access import care, filing
from sharedcare.fhir.errors import FhirError
from sharedcare.identity import matricule as matricules
from sharedcare.identity.matricule import MATRICULE_SYSTEM
from sharedcare.portal import csrf, records, throttle
from sharedcare.portal.deps import now, professional
from sharedcare.portal.i18n import N_, Translator
from sharedcare.portal.messages import domain_error, lockout
from sharedcare.portal.pages import language, redirect, render
from sharedcare.portal.sessions import PortalError, PortalUser
from sharedcare.portal.views import autonomy
from sharedcare.portal.views.patient import record_overview
from sharedcare.storage.engine import writer

router = APIRouter(prefix="/pro", dependencies=[Depends(csrf.require_csrf)])
Text = Annotated[str, Form()]
RESULTS = 20
NAMES_PER_SEARCH = 100


def _page(request: Request, user: PortalUser, status: int = 200, **context: object) -> Response:
    values: dict[str, object] = {
        "query": "",
        "results": None,
        "code_error": None,
        "emergency_error": None,
        "reason": "",
        "back": "/portal/pro",
    }
    values.update(context)
    return render(request, "pro.html", values, user=user, status=status)


@router.get("")
def pro_home(request: Request, user: PortalUser = Depends(professional)) -> Response:
    return _page(request, user)


def _matricule(text: str) -> str | None:
    try:
        return matricules.normalize(text)
    except matricules.InvalidMatricule:
        return None


@router.post("/search")
def search(request: Request, query: Text = "", user: PortalUser = Depends(professional)) -> Response:
    """Patients matching a name or a matricule, among those the professional may access."""
    text = query.strip()
    t = Translator(language(request, user))
    if not text:
        return _page(request, user, results=[])
    if not any(c.isalpha() for c in text):
        number = _matricule(text)
        if number is None:
            error = t.gettext("This matricule is not valid. A matricule has 13 digits.")
            return _page(request, user, 400, query=query, results=[], error=error)
        params = [("identifier", f"{MATRICULE_SYSTEM}|{number}")]
    else:
        params = [("name", word) for word in text.split()[:5]]
    service = records.view(request, user)
    try:
        query_ = service.parse_search("Patient", [*params, ("_count", str(RESULTS))], strict=True)
        found = service.search(query_).matches
    except FhirError:  # text the search grammar refuses: nothing matches it
        found = []
    results = [{"id": s.id, **records.patient_summary(s.resource())} for s in found]
    return _page(request, user, query=query, results=results)


@router.post("/code")
def open_with_code(
    request: Request, code: Text = "", user: PortalUser = Depends(professional), at: datetime = Depends(now)
) -> Response:
    """A solo-practice care relationship from the code the patient gives during the consultation."""
    t = Translator(language(request, user))
    settings = request.app.state.settings
    engine = request.app.state.engine
    with writer(engine).begin() as conn:
        until = throttle.locked_until(conn, user.account.id, at)
    if until is not None:
        return _page(request, user, 429, code_error=lockout(t, until, at))
    try:
        with writer(engine).begin() as conn:
            relationship = care.open_with_code(conn, settings, user.principal, code, at)
            throttle.clear(conn, user.account.id)
    except care.InvalidConnectionCode as exc:
        with writer(engine).begin() as conn:
            until = throttle.failure(conn, settings, user.account.id, at)
        message = lockout(t, until, at) if until else domain_error(t, exc)
        return _page(request, user, 429 if until else 400, code_error=message)
    except care.CareError as exc:
        return _page(request, user, 403, code_error=domain_error(t, exc))
    return redirect(f"/portal/pro/patients/{relationship.patient_id}")


@router.post("/emergency")
def emergency(
    request: Request,
    matricule: Text = "",
    reason: Text = "",
    understood: Text = "",
    user: PortalUser = Depends(professional),
    at: datetime = Depends(now),
) -> Response:
    """The EHDS emergency override (off unless the setting allows it): reason required, flagged
    in the patient's log, limited in time; it lifts the patient's blocks and masks."""
    t = Translator(language(request, user))
    settings = request.app.state.settings
    if not settings.emergency_override:
        raise PortalError(404, N_("The emergency override is not enabled on this platform"))

    def refuse(message: str, status: int = 400) -> Response:
        return _page(request, user, status, emergency_error=message, reason=reason)

    if understood != "yes":
        return refuse(
            t.gettext("Confirm that this is an emergency and that the patient will see this access.")
        )
    if not reason.strip():
        return refuse(t.gettext("The emergency override needs a reason"))
    number = _matricule(matricule)
    if number is None:
        return refuse(t.gettext("This matricule is not valid. A matricule has 13 digits."))
    directory = request.app.state.fhir  # the patient is identified by the agency, not by the access decision
    query = directory.parse_search(
        "Patient", [("identifier", f"{MATRICULE_SYSTEM}|{number}"), ("_count", "2")], strict=True
    )
    found = directory.search(query).matches
    if len(found) != 1:
        return refuse(t.gettext("No record has this matricule."), 404)
    try:
        with writer(request.app.state.engine).begin() as conn:
            care.emergency_override(conn, settings, user.principal, found[0].id, reason, at)
    except care.CareError as exc:
        return refuse(domain_error(t, exc), 403)
    return redirect(f"/portal/pro/patients/{found[0].id}")


KIND_LABELS = {
    filing.KeyDocument.LAB_RESULTS: N_("Lab results"),
    filing.KeyDocument.DISCHARGE_REPORT: N_("Clinical summary or discharge report"),
    filing.KeyDocument.IMAGING_REPORT: N_("Imaging report"),
    filing.KeyDocument.PATIENT_SUMMARY: N_("Patient summary"),
}
"""The four key documents of art. 9(3), in the order the page lists them."""


@router.get("/filing")
def filings(
    request: Request, user: PortalUser = Depends(professional), at: datetime = Depends(now)
) -> Response:
    """The page "Filing after end of care": the professional's own ended cares and their facility's,
    due date, overdue, and the key documents filed (``access.filing.due_filings``), all read
    through the professional's own access decision: a care is listed only while they may read
    its record, and only items they may read count as filed. The patients' names are then read
    through the same decision (audited), and a line whose name that read does not return (the
    decision changed meanwhile) is left out: no line ever names a record by its id alone."""
    service = records.view(request, user)
    readable = service.access_filter()  # None only for an unrestricted service: never a person's
    worklist = filing.Worklist([], False)
    if readable is not None:
        with request.app.state.engine.connect() as conn:
            worklist = filing.due_filings(conn, user.principal, at, readable, request.app.state.settings)
    names: dict[str, str] = {}
    wanted = sorted({f.patient_id for f in worklist.cares})
    for start in range(0, len(wanted), NAMES_PER_SEARCH):
        chunk = wanted[start : start + NAMES_PER_SEARCH]
        params = [("_id", ",".join(chunk)), ("_count", str(len(chunk)))]
        found = service.search(service.parse_search("Patient", params, strict=True)).matches
        names.update((s.id, records.human_name(s.resource())) for s in found)
    t = Translator(language(request, user))
    context = {
        "filings": [f for f in worklist.cares if f.patient_id in names],
        "more": worklist.more,
        "listed_max": filing.LISTED_MAX,
        "names": names,
        "kinds": [(kind, t.gettext(label)) for kind, label in KIND_LABELS.items()],
        "deadline_days": request.app.state.settings.filing_deadline_days,
    }
    return render(request, "pro_filing.html", context, user=user)


@router.get("/patients/{patient_id}")
def patient_record(
    request: Request, patient_id: str, user: PortalUser = Depends(professional), at: datetime = Depends(now)
) -> Response:
    """The summary of a record the professional may open; any other id is "not found"."""
    service = records.view(request, user)
    try:
        patient, items = record_overview(service, patient_id)
    except FhirError:
        patient, items = None, []
    if patient is None:
        raise PortalError(404, N_("No record was found, or you have no access to it."))
    with request.app.state.engine.connect() as conn:
        mine = [
            r
            for r in care.of_patient(conn, patient_id, at)
            if r.practitioner_id == user.principal.practitioner_id
            or (r.organization_id and r.organization_id == user.principal.organization_id)
        ]
    context = {
        "patient": patient,
        "items": items,
        "pending": [i for i in items if i.pending],  # held back from the patient: "release" (views.items)
        "relationships": mine,
        "minor": autonomy.pro_section(request, user, patient_id, at),
    }
    return render(request, "pro_patient.html", context, user=user)
