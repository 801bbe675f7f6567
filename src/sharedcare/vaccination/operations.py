"""The vaccination record's FHIR operations, as Python calls on a caller-bound ``FhirService``.

``api.vaccination`` only parses HTTP and renders what these return:

- ``$parse-datamatrix`` (``parse_datamatrix``): a pack's code → a draft Immunization, nothing stored;
- ``Immunization/[id]/$validate-reported`` (``validate_reported``): a vaccinator validates a dose
  the holder reported; an update through the normal write path (rights, audit);
- ``Patient/[id]/$vaccination-certificate`` (``certificate``): the PDF, read through the caller's view;
- ``$immds-forecast`` (``forecast_operation``, ``stored_forecast_operation``): HL7's Immunization
  Decision Support Forecast operation; see ``forecast_parameters`` for the answer's shape.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.fhir.errors import BadRequest, Conflict, Forbidden, NotFound
from sharedcare.fhir.service import FhirService, serialize
from sharedcare.fhir.session import Interaction
from sharedcare.fhir.store import Stored
from sharedcare.vaccination import cdsi
from sharedcare.vaccination.certificate import LANGUAGES, certificate_pdf
from sharedcare.vaccination.gs1 import DataMatrixError, draft_immunization
from sharedcare.vaccination.inputs import InputError, forecast_inputs, read_record, stored_forecast
from sharedcare.vaccination.products import CVX_SYSTEM, catalogue
from sharedcare.vaccination.record import (
    LOCAL_TIME,
    PATIENT_REPORTED,
    VALIDATED,
    VERIFICATION_SYSTEM,
    validation_extension,
    verification,
)

LOINC = "http://loinc.org"
DATE_CRITERIA = (
    ("earliest", "30981-5", "Earliest date to give"),
    ("recommended", "30980-7", "Date vaccine due"),
    ("past_due", "59778-1", "Date when overdue for immunization"),
    ("latest", "59777-3", "Latest date to give immunization"),
)
"""``GroupForecast`` dates and their LOINC codes in ``dateCriterion`` (ImmDS guide)."""
RECOMMENDATION_STATUS = "http://terminology.hl7.org/CodeSystem/immunization-recommendation-status"
CDSI_STATUS = "https://sharedcare.lu/fhir/CodeSystem/cdsi-forecast-status"
"""The CDSi forecast status as the specification names it ("Not Complete", "Aged Out"…)."""
DOSE_STATUS = "http://terminology.hl7.org/CodeSystem/immunization-evaluation-dose-status"
CDSI_DOSE_STATUS = "https://sharedcare.lu/fhir/CodeSystem/cdsi-dose-status"
UNCONFIRMED_EXTENSION = "https://sharedcare.lu/fhir/StructureDefinition/unconfirmed-schedule-data"
"""On a recommendation entry, once per unconfirmed ([I]) schedule item it rests on (valueString: its path)."""
_HL7_STATUS = {"Complete": "complete", "Immune": "immune", "Contraindicated": "contraindicated"}


def today() -> date:
    """The Luxembourg day: the default assessment date and the certificate's date of issue."""
    return datetime.now(UTC).astimezone(LOCAL_TIME).date()


# --- parameters -----------------------------------------------------------------------------------------


def parameters(body: Any) -> list[Mapping[str, Any]]:
    """The ``parameter`` list of a ``Parameters`` body; ``BadRequest`` otherwise."""
    if not isinstance(body, Mapping) or body.get("resourceType") != "Parameters":
        raise BadRequest("The operation takes a Parameters resource")
    params = body.get("parameter") or []
    if not isinstance(params, list) or not all(
        isinstance(p, Mapping) and isinstance(p.get("name"), str) for p in params
    ):
        raise BadRequest("Each parameter of the Parameters resource needs a name")
    return params


def _single(params: Sequence[Mapping[str, Any]], name: str, value_key: str) -> Any:
    found = [p for p in params if p["name"] == name]
    if len(found) > 1:
        raise BadRequest(f"Parameter {name!r} is given more than once")
    if not found:
        return None
    value = found[0].get(value_key)
    if value is None:
        raise BadRequest(f"Parameter {name!r} needs a {value_key}")
    return value


def _resources(params: Sequence[Mapping[str, Any]], name: str, rtype: str) -> list[dict[str, Any]]:
    out = []
    for p in params:
        if p["name"] != name:
            continue
        res = p.get("resource")
        if not isinstance(res, dict) or res.get("resourceType") != rtype:
            raise BadRequest(f"Parameter {name!r} must hold a {rtype} resource")
        out.append(res)
    return out


def parse_date(value: str | None, name: str = "assessmentDate") -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be a date (YYYY-MM-DD), not {value!r}") from None


def schedule_named(name: str) -> cdsi.Schedule:
    try:
        return cdsi.load_schedule(name)
    except cdsi.UnknownSchedule as exc:
        raise BadRequest(f"Unknown or unavailable schedule: {exc}") from None


# --- $parse-datamatrix ----------------------------------------------------------------------------------


def parse_datamatrix(body: Any, data_dir: Any = None) -> dict[str, Any]:
    """``Parameters`` in (``code`` valueString, optional ``patient`` valueReference) → ``Parameters``
    out with the draft ``immunization`` and each ``warning`` (valueString)."""
    params = parameters(body)
    code = _single(params, "code", "valueString")
    if not isinstance(code, str):
        raise BadRequest("$parse-datamatrix needs the scanned code in the 'code' parameter (valueString)")
    patient = _single(params, "patient", "valueReference")
    reference = patient.get("reference") if isinstance(patient, Mapping) else None
    try:
        draft = draft_immunization(code, catalogue(data_dir), patient=reference, today=today())
    except DataMatrixError as exc:
        raise BadRequest(str(exc)) from None
    out: list[dict[str, Any]] = [{"name": "immunization", "resource": draft.immunization}]
    out += [{"name": "warning", "valueString": w} for w in draft.warnings]
    return {"resourceType": "Parameters", "parameter": out}


# --- $validate-reported ---------------------------------------------------------------------------------


def validate_reported(service: FhirService, who: Principal, immunization_id: str) -> Stored:
    """A vaccinator validates a dose the holder reported: the tag becomes ``validated`` and the
    server records the validator (``record.VALIDATION_EXTENSION``), through the normal update
    (so the caller's write rights decide, and the access log has the update and the operation)."""
    if who.kind is not PrincipalKind.PROFESSIONAL or not who.practitioner_id:
        raise Forbidden("Only a vaccinating professional validates a reported dose")
    with service.transaction() as conn:
        serialize(conn, f"Immunization/{immunization_id}")
        current = service.current_visible(conn, "Immunization", immunization_id)
        if current is None or current.deleted:
            raise NotFound(f"Resource Immunization/{immunization_id} is not known")
        res = current.resource()
        if verification(res) != PATIENT_REPORTED:
            raise Conflict("This dose is not waiting for validation: it was not reported by the patient")
        tags = [t for t in res["meta"].get("tag", []) if t.get("system") != VERIFICATION_SYSTEM]
        res["meta"]["tag"] = [*tags, {"system": VERIFICATION_SYSTEM, "code": VALIDATED}]
        res["extension"] = [
            *(res.get("extension") or []),
            validation_extension(who.practitioner_id, datetime.now(UTC)),
        ]
        outcome = service.update_in(conn, "Immunization", immunization_id, res)
        if service.session is not None:
            service.session.record(
                conn,
                Interaction(
                    "operation",
                    "Immunization",
                    [outcome.stored],
                    query=f"Immunization/{immunization_id}/$validate-reported",
                    operation="validate-reported",
                ),
            )
    return outcome.stored


# --- $vaccination-certificate ---------------------------------------------------------------------------


def certificate(service: FhirService, patient_id: str, lang: str) -> bytes:
    """The certificate of ``Patient/patient_id`` from what the caller may see (audited)."""
    if lang not in LANGUAGES:
        raise BadRequest(f"lang must be one of {', '.join(LANGUAGES)}, not {lang!r}")
    record = read_record(service, patient_id, ("Immunization",), operation="vaccination-certificate")
    return certificate_pdf(record.patient, record.resources["Immunization"], lang, today())


# --- $immds-forecast ------------------------------------------------------------------------------------


def forecast_operation(body: Any, default_schedule: str) -> dict[str, Any]:
    """``POST /fhir/$immds-forecast``: the forecast of the Patient, Immunizations and Conditions
    in the request, plus this server's ``observation`` (pregnancy status, occupation, last period,
    delivery date) and ``practitionerRole`` (the person's own, health workers) parameters; nothing
    is read from or written to the store."""
    params = parameters(body)
    as_of = parse_date(_single(params, "assessmentDate", "valueDate")) or today()
    schedule = schedule_named(_single(params, "schedule", "valueString") or default_schedule)
    patients = _resources(params, "patient", "Patient")
    if len(patients) != 1:
        raise BadRequest("$immds-forecast needs exactly one 'patient' parameter holding a Patient")
    immunizations = _resources(params, "immunization", "Immunization")
    conditions = _resources(params, "condition", "Condition")
    observations = _resources(params, "observation", "Observation")
    roles = _resources(params, "practitionerRole", "PractitionerRole")
    try:
        inputs = forecast_inputs(
            patients[0],
            immunizations,
            conditions,
            schedule,
            observations=observations,
            practitioner_roles=roles,
        )
    except InputError as exc:
        raise BadRequest(str(exc)) from None
    result = cdsi.forecast(schedule, inputs.patient, inputs.doses, as_of)
    return forecast_parameters(result, _patient_reference(patients[0]), schedule, inputs.unusable)


def stored_forecast_operation(
    service: FhirService, patient_id: str, as_of: date | None, schedule_name: str
) -> dict[str, Any]:
    """``Patient/[id]/$immds-forecast``: the stored record as the caller sees it."""
    schedule_named(schedule_name)
    try:
        found = stored_forecast(service, patient_id, as_of or today(), schedule_name)
    except InputError as exc:
        raise BadRequest(str(exc)) from None
    return forecast_parameters(
        found.forecast, {"reference": f"Patient/{patient_id}"}, found.schedule, found.inputs.unusable
    )


def _patient_reference(patient: Mapping[str, Any]) -> dict[str, Any]:
    if patient.get("id"):
        return {"reference": f"Patient/{patient['id']}"}
    return {"display": "The patient of the request"}


def forecast_parameters(
    result: cdsi.Forecast,
    patient: dict[str, Any],
    schedule: cdsi.Schedule,
    unusable: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """The ImmDS answer: one ``evaluation`` (ImmunizationEvaluation) per dose and antigen it counts
    for, one ``recommendation`` (ImmunizationRecommendation) with an entry per vaccine group."""
    moment = result.assessment_date.isoformat()
    out: list[dict[str, Any]] = [
        {"name": "evaluation", "resource": _evaluation(e, patient, moment)} for e in result.evaluations
    ]
    recommendation = {
        "resourceType": "ImmunizationRecommendation",
        "id": str(uuid.uuid4()),
        "patient": patient,
        "date": moment,
        "authority": {"display": f"schedule {schedule.name}"},
        "recommendation": [_entry(g, result.assessment_date) for g in result.groups],
    }
    out.append({"name": "recommendation", "resource": recommendation})
    out += [
        {"name": "warning", "valueString": f"{ref} is not used by the forecast: {why}"}
        for ref, why in unusable
    ]
    return {"resourceType": "Parameters", "parameter": out}


def _evaluation(e: cdsi.DoseEvaluation, patient: dict[str, Any], moment: str) -> dict[str, Any]:
    code = "valid" if e.status == "Valid" else "notvalid"
    res: dict[str, Any] = {
        "resourceType": "ImmunizationEvaluation",
        "id": str(uuid.uuid4()),
        "status": "completed",
        "patient": patient,
        "date": moment,
        "targetDisease": {"text": e.antigen},
        "immunizationEvent": {"reference": e.ref} if "/" in e.ref else {"display": e.ref},
        "doseStatus": {
            "coding": [
                {"system": DOSE_STATUS, "code": code},
                {"system": CDSI_DOSE_STATUS, "code": e.status},
            ],
            "text": e.status,
        },
        "description": f"{e.vaccine_group}: CVX {e.cvx} on {e.date.isoformat()}",
    }
    if e.reason:
        res["doseStatusReason"] = [{"text": e.reason}]
    if e.series:
        res["series"] = e.series
    if e.dose_number:
        res["doseNumberPositiveInt"] = e.dose_number
    return res


def _entry(g: cdsi.GroupForecast, on: date) -> dict[str, Any]:
    status: list[dict[str, str]] = [{"system": CDSI_STATUS, "code": g.status}]
    hl7 = _HL7_STATUS.get(g.status)
    if g.status == "Not Complete":
        hl7 = "overdue" if g.past_due is not None and on >= g.past_due else "due"
    if hl7 is not None:
        status.insert(0, {"system": RECOMMENDATION_STATUS, "code": hl7})
    vaccine: dict[str, Any] = {"text": g.vaccine_group}
    if g.vaccines:
        vaccine["coding"] = [{"system": CVX_SYSTEM, "code": cvx} for cvx in g.vaccines]
    entry: dict[str, Any] = {
        "vaccineCode": [vaccine],
        "forecastStatus": {"coding": status, "text": g.status},
    }
    if g.reason:
        entry["forecastReason"] = [{"text": g.reason}]
    if g.unconfirmed:
        entry["extension"] = [{"url": UNCONFIRMED_EXTENSION, "valueString": path} for path in g.unconfirmed]
        entry["description"] = "Rests on unconfirmed schedule data: " + "; ".join(g.unconfirmed)
    criteria = [
        {"code": {"coding": [{"system": LOINC, "code": code, "display": display}]}, "value": when.isoformat()}
        for attr, code, display in DATE_CRITERIA
        if (when := getattr(g, attr)) is not None
    ]
    if criteria:
        entry["dateCriterion"] = criteria
    if g.dose_number:
        entry["doseNumberPositiveInt"] = g.dose_number
    if g.series:
        entry["series"] = g.series
    return entry
