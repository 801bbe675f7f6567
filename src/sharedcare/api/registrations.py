"""FHIR operations of registrations at a care facility and of the holder's objection, under ``/fhir``.

- ``POST Patient/[id]/$register`` (Parameters ``context`` = facility | emergency, optional
  ``end`` dateTime, optional ``reason``): a facility's system client, or a professional acting
  for the facility, registers the holder at its entrance or emergency department
  (``access.care.register``; Annex 1 §3). Answers the registration as ``Parameters``.
- ``POST Patient/[id]/$renew-registration`` (optional ``days``, at most
  ``access_facility_renewal_days``): the same facility prolongs its registration in force; or,
  with ``untilLabResult`` true and ``patientAgreement`` (dateTime: when the holder agreed), until
  a lab result is filed in the record, plus the filing deadline (``care.renew_until_lab_result``).
- ``POST Patient/$register`` and ``POST Patient/$renew-registration``: the same, the holder named
  by an ``identifier`` parameter (valueIdentifier, system ``MATRICULE_SYSTEM``, 13 digits or the
  pre-2014 11-digit form), as a facility's entrance knows them: 400 an invalid matricule.
- ``POST Patient/[id]/$end-care`` (optional ``end`` dateTime, at most now, default now) and
  ``POST Patient/$end-care`` (``identifier``): the facility declares the end of the holder's
  stay, or a professional acting for no facility the end of their own solo-practice care
  (``care.end_care``, art. 9(3), §A.9): each such relationship in force then ends
  ``filing_deadline_days`` after ``end`` (never later than before), the author's time to file the
  key documents (``access.filing``). Answers ``endOfCare`` and one ``registration`` part per
  relationship ended (its id, context, who, start, new end = the filing due date).
- ``POST Patient/[id]/$opt-out``: the holder's objection (§A.1) filed by the holder or by the
  Agence's tools (administrator, trusted platform client): the record is deleted for everyone.

A registration is not a FHIR resource of the record: it is the proof of a care relationship the
access decision reads (``care_relationship``), so an operation states the act and its answer
names what the decision now knows. Refusals are OperationOutcomes (403 who may not, 404 unknown
record, 422 a rule of the regulation), logged by the app's error handler like any refusal.

No existence oracle: what depends on no record (the caller, its facility's authorisation, the
parameters) is refused first; then a facility without a registration in force of the holder is
told one thing, ``REGISTER_REFUSED``, ``RENEW_REFUSED`` or ``END_CARE_REFUSED`` (404, naming
neither the record nor its state), whether no record has the matricule or id, several do, the
record is closed, or (to renew or end care) the caller has no relationship of it in force. A
facility with a registration in force (a solo professional with their relationship in force, to
end care) is in the holder's care and keeps the precise answers (closed record, emergency
registration, care already ended…).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool

from sharedcare.access import care, consent
from sharedcare.access.licence import facility_authorised
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.api.fhir import authenticate, fhir_response
from sharedcare.api.parameters import read_parameters
from sharedcare.fhir.errors import BadRequest, Forbidden, Issue, NotFound, Unprocessable, operation_outcome
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.store import utcnow
from sharedcare.identity import matricule
from sharedcare.identity.matricule import MATRICULE_SYSTEM
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer

router = APIRouter(prefix="/fhir", dependencies=[Depends(authenticate)])
CONTEXTS = ("facility", "emergency")
REGISTER_REFUSED = "No record open to registration is known for this patient"
"""A registration refused to a facility not (yet) in the holder's care, whatever the reason."""
RENEW_REFUSED = (
    "This facility has no registration of this patient in force to renew (an emergency "
    "registration is not renewed; an ended one is made again with $register)"
)
"""A renewal refused to a facility not in the holder's care, whatever the reason."""
END_CARE_REFUSED = "No care of this patient by you is in force to end"
"""An end of care refused to a caller not in the holder's care, whatever the reason."""


def _text(params: dict[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"Parameter {name!r} takes a code or string")
    return value


def _instant(params: dict[str, Any], name: str) -> datetime | None:
    """A dateTime parameter with its time zone, as the stored naive UTC."""
    value = _text(params, name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise BadRequest(f"Parameter {name!r} must be a dateTime with a time zone, e.g. 2026-01-31T18:00:00Z")
    return moment.astimezone(UTC).replace(tzinfo=None)


def _flag(params: dict[str, Any], name: str) -> bool:
    value = params.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"Parameter {name!r} takes a boolean (valueBoolean)")
    return value


def _matricule(params: dict[str, Any]) -> str:
    """The 13-digit matricule of the ``identifier`` parameter (the 11-digit form upgraded)."""
    value = params.get("identifier")
    if value is None:
        raise BadRequest(
            f"Name the patient by an 'identifier' parameter (valueIdentifier, system {MATRICULE_SYSTEM})"
        )
    if not isinstance(value, dict) or not isinstance(value.get("value"), str):
        raise BadRequest("Parameter 'identifier' takes a valueIdentifier with a system and a value")
    if value.get("system") != MATRICULE_SYSTEM:
        raise BadRequest(f"Parameter 'identifier' takes a matricule: its system is {MATRICULE_SYSTEM}")
    try:
        return matricule.normalize(value["value"])
    except matricule.InvalidMatricule as exc:
        raise BadRequest(f"The identifier is not a valid matricule: {exc}") from None


def _records_of(conn: Connection, service: FhirService, number: str) -> list[str]:
    """The ids of the records of the matricule (at most two: one, or a duplicate to merge), found
    in the directory of records (not through the caller's view: a facility registers a holder it
    cannot see yet). A record kept under the 11-digit form is found too."""
    directory = service.for_session(None)
    wanted = f"{MATRICULE_SYSTEM}|{number},{MATRICULE_SYSTEM}|{number[: matricule.LEGACY_LENGTH]}"
    query = directory.parse_search("Patient", [("identifier", wanted), ("_count", "2")], strict=True)
    return [found.id for found in directory.search_in(conn, query).matches]


InCare = Callable[[str], bool]
"""Whether the caller takes part in the care of the record of this id (may be told more of it)."""


def _patient_of(conn: Connection, service: FhirService, number: str, in_care: InCare, refused: str) -> str:
    """The record of the matricule; ``refused`` (404) when there is none, or several and the
    caller is in the care of none of them (a duplicate is news only to a facility in the
    holder's care)."""
    found = _records_of(conn, service, number)
    if len(found) > 1 and any(in_care(pid) for pid in found):
        raise Unprocessable("Several records have this matricule: the Agence must merge them first")
    if len(found) != 1:
        raise NotFound(refused)
    return found[0]


def _days(params: dict[str, Any], default: int) -> int:
    value = params.get("days", default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest("Parameter 'days' takes an integer (valuePositiveInt)")
    return value


def _stamp(moment: datetime | None) -> str | None:
    return None if moment is None else moment.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def _answer(request: Request, rel: care.Relationship) -> Response:
    """The registration as the access decision now knows it."""
    parameters: list[dict[str, Any]] = [
        {"name": "registration", "valueString": rel.id},
        {"name": "context", "valueCode": rel.context},
        {"name": "organization", "valueReference": {"reference": f"Organization/{rel.organization_id}"}},
        {"name": "start", "valueDateTime": _stamp(rel.starts)},
        {"name": "end", "valueDateTime": _stamp(rel.ends)},
    ]
    if rel.reason:
        parameters.append({"name": "reason", "valueString": rel.reason})
    if rel.lab_wait_since is not None:
        parameters += [
            {"name": "untilLabResult", "valueBoolean": rel.waiting_for_lab_result},
            {"name": "patientAgreement", "valueDateTime": _stamp(rel.patient_agreement)},
        ]
    if rel.lab_result_at is not None:
        parameters.append({"name": "labResult", "valueDateTime": _stamp(rel.lab_result_at)})
    return fhir_response(request, {"resourceType": "Parameters", "parameter": parameters})


def _caller(request: Request) -> tuple[FhirService, Principal, Settings]:
    service: FhirService = request.state.fhir
    return service, request.state.principal, request.app.state.settings


def _require_write(service: FhirService) -> None:
    """A registration changes who reads the record: the token must allow writing Patient
    (``system/Patient.u``, ``user/*.cruds``…); scopes only ever narrow the decision."""
    if service.session is not None:
        service.session.require("Patient", "u")


def _facility_of(conn: Connection, service: FhirService, who: Principal, act: str) -> str:
    """The facility the caller acts for: listed in the directory and authorised (its ``active``
    flag; ``care`` checks it again), before any record is looked up; a professional's own
    licence must stand too. ``act`` (e.g. "register patients") completes the refusal."""
    if who.kind not in (PrincipalKind.SYSTEM, PrincipalKind.PROFESSIONAL) or not who.organization_id:
        raise Forbidden(
            "Only a care facility's system or a professional acting for a facility registers patients"
        )
    listed = service.store.current(conn, "Organization", who.organization_id)
    if listed is None or listed.deleted:
        raise Forbidden(
            f"Organization/{who.organization_id} is not a care facility of the national directory"
        )
    if who.kind is PrincipalKind.PROFESSIONAL:
        own = service.store.current(conn, "Practitioner", who.practitioner_id or "")
        if own is None or own.deleted or own.resource().get("active") is False:
            raise Forbidden(
                "Only a professional listed as active in the national directory registers patients"
            )
    if not facility_authorised(conn, who.organization_id):
        raise Forbidden(f"The facility's authorisation is withdrawn: it cannot {act}")
    return who.organization_id


def _record(
    conn: Connection,
    service: FhirService,
    patient_id: str,
    refused: str | None = None,
    closed: str = "no registration can be made",
) -> None:
    """The record exists and is open (a closed one takes nothing new, as for data). With
    ``refused``, the caller may not know more: every one of these answers is ``refused`` (404).
    ``closed`` completes the answer about a closed record."""
    found = service.store.current(conn, "Patient", patient_id)
    state = consent.status(conn, patient_id)
    if found is None or found.deleted or state == "deleted":
        raise NotFound(refused or f"Resource Patient/{patient_id} is not known")
    if state == "closed" and refused:
        raise NotFound(refused)
    if state == "closed":
        raise Unprocessable(f"The record of Patient/{patient_id} is closed: {closed}")


def _open_record(
    conn: Connection,
    service: FhirService,
    in_care: InCare,
    patient_id: str | None,
    number: str | None,
    refused: str,
    *,
    in_care_only: bool,
    closed: str = "no registration can be made",
) -> str:
    """The open record named by its id or matricule (``number``) that the caller may act on: one
    in the holder's care (``in_care``: for a facility, a registration of it in force) is told
    precisely why not; any other is ``refused`` (404), and also when the act is for those in the
    holder's care only."""
    if patient_id is None:
        patient_id = _patient_of(conn, service, number or "", in_care, refused)
    known = in_care(patient_id)
    if in_care_only and not known:
        raise NotFound(refused)
    _record(conn, service, patient_id, None if known else refused, closed)
    return patient_id


def _registered(conn: Connection, organization: str, now: datetime) -> InCare:
    """``in_care`` of a facility: it holds a registration of the record in force."""
    return lambda pid: care.holds_registration(conn, pid, organization, now)


def _care_refusal(exc: care.CareError) -> Exception:
    if isinstance(exc, care.NotAllowed):
        return Forbidden(str(exc))
    return Unprocessable(str(exc))


def _holder(params: dict[str, Any], patient_id: str | None) -> str | None:
    """The matricule naming the holder at the type level (None at the instance level, where the
    URL names the record and an ``identifier`` would name it twice)."""
    if patient_id is None:
        return _matricule(params)
    if "identifier" in params:
        raise BadRequest(
            "The URL names the patient: 'identifier' is taken by Patient/$register, "
            "Patient/$renew-registration and Patient/$end-care only"
        )
    return None


def _register(
    service: FhirService, who: Principal, settings: Settings, patient_id: str | None, params: dict[str, Any]
) -> care.Relationship:
    number = _holder(params, patient_id)
    context = _text(params, "context")
    if context not in CONTEXTS:
        raise BadRequest("$register needs a 'context' parameter: facility or emergency")
    ends = _instant(params, "end")
    reason = _text(params, "reason")
    now = utcnow()
    with writer(service.engine).begin() as conn:
        organization = _facility_of(conn, service, who, "register patients")
        try:  # the end is checked before the record is looked up: its refusal tells nothing of it
            care.registration_end(settings, now, emergency=context == "emergency", ends=ends)
        except care.CareError as exc:
            raise _care_refusal(exc) from None
        in_care = _registered(conn, organization, now)
        patient_id = _open_record(
            conn, service, in_care, patient_id, number, REGISTER_REFUSED, in_care_only=False
        )
        try:
            return care.register(
                conn,
                settings,
                who,
                patient_id,
                emergency=context == "emergency",
                now=now,
                organization_id=organization,
                ends=ends,
                reason=reason,
            )
        except care.CareError as exc:
            raise _care_refusal(exc) from None


def _renew(
    service: FhirService, who: Principal, settings: Settings, patient_id: str | None, params: dict[str, Any]
) -> care.Relationship:
    number = _holder(params, patient_id)
    until_lab_result = _flag(params, "untilLabResult")
    agreed = _instant(params, "patientAgreement")
    if until_lab_result and "days" in params:
        raise BadRequest("A renewal lasts either 'days' or 'untilLabResult', not both")
    if agreed is not None and not until_lab_result:
        raise Unprocessable(
            "'patientAgreement' is the agreement to access until a lab result: give 'untilLabResult' true"
        )
    days = _days(params, settings.access_facility_renewal_days)
    now = utcnow()
    with writer(service.engine).begin() as conn:
        organization = _facility_of(conn, service, who, "renew registrations")
        in_care = _registered(conn, organization, now)
        patient_id = _open_record(
            conn, service, in_care, patient_id, number, RENEW_REFUSED, in_care_only=True
        )
        current = care.current_registration(conn, patient_id, organization, "facility", now)
        if current is None:  # the facility holds an emergency registration: it may know more
            raise Unprocessable(
                f"Organization/{organization} has no registration of Patient/{patient_id} in force "
                "to renew (an emergency registration is not renewed; an ended one is made again "
                "with $register)"
            )
        try:
            if until_lab_result:
                return care.renew_until_lab_result(conn, settings, who, current.id, agreed, now)
            return care.renew(conn, settings, who, current.id, days, now)
        except care.CareError as exc:
            raise _care_refusal(exc) from None


def _solo_professional(conn: Connection, service: FhirService, who: Principal) -> str:
    """A professional acting for no facility ends only their own solo-practice care: listed as
    active in the directory (their licence standing), checked before any record is looked up."""
    if who.kind is not PrincipalKind.PROFESSIONAL or not who.practitioner_id:
        raise Forbidden(
            "Only a care facility's system or professional, or a professional in solo practice, "
            "declares the end of care"
        )
    own = service.store.current(conn, "Practitioner", who.practitioner_id)
    if own is None or own.deleted or own.resource().get("active") is False:
        raise Forbidden(
            "Only a professional listed as active in the national directory declares the end of care"
        )
    return who.practitioner_id


def _treating(conn: Connection, practitioner: str, now: datetime) -> InCare:
    """``in_care`` of a solo professional: their own solo-practice relationship is in force."""
    return lambda pid: care.holds_solo(conn, pid, practitioner, now)


def _end_care(
    service: FhirService, who: Principal, settings: Settings, patient_id: str | None, params: dict[str, Any]
) -> tuple[datetime, list[care.Relationship]]:
    number = _holder(params, patient_id)
    now = utcnow()
    end = _instant(params, "end") or now
    if end > now:  # depends on no record: refused before one is looked up
        raise Unprocessable("The end of care cannot be in the future")
    with writer(service.engine).begin() as conn:
        if who.organization_id:
            in_care = _registered(conn, _facility_of(conn, service, who, "end care"), now)
        else:
            in_care = _treating(conn, _solo_professional(conn, service, who), now)
        patient_id = _open_record(
            conn,
            service,
            in_care,
            patient_id,
            number,
            END_CARE_REFUSED,
            in_care_only=True,
            closed="no end of care can be declared",
        )
        try:
            return end, care.end_care(conn, settings, who, patient_id, end, now)
        except care.CareError as exc:
            raise _care_refusal(exc) from None


def _ended_answer(request: Request, end: datetime, ended: list[care.Relationship]) -> Response:
    """The end of care and, per relationship ended, its new end: the filing due date."""
    parameters: list[dict[str, Any]] = [{"name": "endOfCare", "valueDateTime": _stamp(end)}]
    for rel in ended:
        who = (
            {"name": "organization", "valueReference": {"reference": f"Organization/{rel.organization_id}"}}
            if rel.organization_id and not rel.practitioner_id
            else {
                "name": "practitioner",
                "valueReference": {"reference": f"Practitioner/{rel.practitioner_id}"},
            }
        )
        part = [
            {"name": "registration", "valueString": rel.id},
            {"name": "context", "valueCode": rel.context},
            who,
            {"name": "start", "valueDateTime": _stamp(rel.starts)},
            {"name": "end", "valueDateTime": _stamp(rel.ends)},
        ]
        parameters.append({"name": "registration", "part": part})
    return fhir_response(request, {"resourceType": "Parameters", "parameter": parameters})


async def _ending(request: Request, pid: str | None) -> Response:
    service, who, settings = _caller(request)
    _require_write(service)
    params = await read_parameters(request)
    end, ended = await run_in_threadpool(_end_care, service, who, settings, pid, params)
    return _ended_answer(request, end, ended)


def _opt_out(service: FhirService, who: Principal, patient_id: str, blobs: Any) -> int:
    own = who.kind is PrincipalKind.PATIENT and who.patient_id == patient_id
    if not (own or who.trusted or who.kind is PrincipalKind.ADMIN):
        raise Forbidden("Only the holder or the Agence (an administrator) files an objection to a record")
    with writer(service.engine).begin() as conn:
        _record(conn, service, patient_id)
        return care.honour_objection(conn, who, patient_id, utcnow(), blobs)


_Act = Callable[[FhirService, Principal, Settings, str | None, dict[str, Any]], care.Relationship]


async def _registration(request: Request, pid: str | None, act: _Act) -> Response:
    """Registering and renewing alike, by record id or by matricule (``pid`` None): a write,
    the body's parameters, the registration."""
    service, who, settings = _caller(request)
    _require_write(service)
    params = await read_parameters(request)
    rel = await run_in_threadpool(act, service, who, settings, pid, params)
    return _answer(request, rel)


@router.post("/Patient/$register")
async def register_by_matricule(request: Request) -> Response:
    return await _registration(request, None, _register)


@router.post("/Patient/$renew-registration")
async def renew_registration_by_matricule(request: Request) -> Response:
    return await _registration(request, None, _renew)


@router.post("/Patient/$end-care")
async def end_care_by_matricule(request: Request) -> Response:
    return await _ending(request, None)


@router.post("/Patient/{pid}/$register")
async def register(request: Request, pid: str) -> Response:
    return await _registration(request, pid, _register)


@router.post("/Patient/{pid}/$renew-registration")
async def renew_registration(request: Request, pid: str) -> Response:
    return await _registration(request, pid, _renew)


@router.post("/Patient/{pid}/$end-care")
async def end_care(request: Request, pid: str) -> Response:
    return await _ending(request, pid)


@router.post("/Patient/{pid}/$opt-out")
async def opt_out(request: Request, pid: str) -> Response:
    service, who, _settings = _caller(request)
    if service.session is not None:  # deleting the record: a token must allow deleting Patient
        service.session.require("Patient", "d")
    await read_parameters(request)  # none taken, but a malformed body is still refused
    count = await run_in_threadpool(_opt_out, service, who, pid, request.app.state.blobs)
    text = f"The record of Patient/{pid} is deleted at the holder's objection ({count} resources)"
    return fhir_response(request, operation_outcome([Issue("information", "informational", text)]))
