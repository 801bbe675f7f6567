"""From FHIR to the forecaster's inputs, and a stored patient's forecast read through the caller's view.

The engine (``vaccination.cdsi``) knows CVX codes and CDSi observation codes only; this module is
the one place that reads FHIR for it:

- ``Patient.birthDate`` and ``gender`` (male → M, female → F, else unknown);
- ``Immunization``: only ``completed`` doses with a dated ``occurrenceDateTime`` count
  (``entered-in-error`` and ``not-done`` are ignored; patient-reported doses count, as on paper);
  the CVX coding when there is one, else the catalogue product's CVX codes (a dTap-IPV booster
  counts as a Tdap and an IPV dose); a dose with neither is reported as not usable;
- what may name an indication (``schedules.codings.record_codings``): ``Condition`` codings (active
  or no clinical status, not refuted or entered in error), final pregnancy-status and occupation
  ``Observation`` values, and the codes of the person's active ``PractitionerRole``s (health
  workers) → ``Schedule.observations_from_codes``;
- the onset of the current pregnancy (``schedules.codings.pregnancy_onset``: last period, estimated
  delivery date, or a pregnancy Condition's onset) as the date of CDSi observation 170, from which
  the pregnancy doses' intervals run.

``stored_forecast`` reads the record through the ``FhirService`` it is given, so the caller's
access decision (and audit) applies: a dose or an Observation hidden from the caller is not in
their forecast. The person's PractitionerRoles are found through the Practitioner that carries the
Patient's matricule (``identity.matricule.MATRICULE_SYSTEM``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from sharedcare.fhir.service import FhirService
from sharedcare.fhir.session import Interaction
from sharedcare.fhir.store import Stored
from sharedcare.identity.matricule import MATRICULE_SYSTEM
from sharedcare.vaccination import cdsi
from sharedcare.vaccination.products import Catalogue, catalogue
from sharedcare.vaccination.schedules.codings import (
    FORECAST_OBSERVATIONS,
    LOINC,
    condition_codings,
    fhir_day,
    pregnancy_onset,
    record_codings,
)

_GENDERS = {"male": "M", "female": "F"}
#: CDSi observation codes: pregnant, and the onset of pregnancy (the date intervals run from)
PREGNANT, PREGNANCY_ONSET = "007", "170"

__all__ = ["InputError", "condition_codings", "forecast_inputs", "read_record", "stored_forecast"]


class InputError(ValueError):
    """The patient cannot be forecast (no birth date…); the message says why."""


@dataclass(frozen=True, slots=True)
class ForecastInputs:
    """What the engine is given, and the doses it could not be given (with the reason)."""

    patient: cdsi.Patient
    doses: tuple[cdsi.AdministeredDose, ...]
    unusable: tuple[tuple[str, str], ...]
    """(reference, reason) of completed doses that name no CVX nor a known product."""


def reference_of(res: Mapping[str, Any], index: int) -> str:
    rid = res.get("id")
    return f"{res.get('resourceType', 'Immunization')}/{rid}" if rid else f"#{index}"


def forecast_inputs(
    patient: Mapping[str, Any],
    immunizations: Sequence[Mapping[str, Any]],
    conditions: Sequence[Mapping[str, Any]],
    schedule: cdsi.Schedule,
    products: Catalogue | None = None,
    *,
    observations: Sequence[Mapping[str, Any]] = (),
    practitioner_roles: Sequence[Mapping[str, Any]] = (),
) -> ForecastInputs:
    """The engine's inputs; raises ``InputError`` when the patient has no usable birth date."""
    birth = fhir_day(patient.get("birthDate"))
    if birth is None:
        raise InputError("The patient needs a full birthDate (YYYY-MM-DD) to be forecast")
    products = products or catalogue()
    codings = record_codings(conditions, observations, practitioner_roles)
    indications = schedule.observations_from_codes(codings)
    dates: tuple[tuple[str, date], ...] = ()
    if PREGNANT in indications:

        def is_pregnancy(codings: list[tuple[str, str]]) -> bool:
            return PREGNANT in schedule.observations_from_codes(codings)

        onset = pregnancy_onset(conditions, observations, is_pregnancy)
        if onset is not None:
            dates = ((PREGNANCY_ONSET, onset),)
    person = cdsi.Patient(birth, _GENDERS.get(str(patient.get("gender"))), indications, dates)
    doses: list[cdsi.AdministeredDose] = []
    unusable: list[tuple[str, str]] = []
    for i, imm in enumerate(immunizations):
        if imm.get("status") != "completed":
            continue
        ref = reference_of(imm, i)
        given = fhir_day(imm.get("occurrenceDateTime"))
        if given is None:
            unusable.append((ref, "no full date of administration"))
            continue
        codes = products.forecast_cvx(imm.get("vaccineCode"))
        if not codes:
            unusable.append((ref, "neither a CVX code nor a catalogue product with one"))
            continue
        product = products.for_concept(imm.get("vaccineCode"))
        mvx = product.mvx if product is not None else None
        doses.extend(cdsi.AdministeredDose(ref, given, code.zfill(2), mvx) for code in codes)
    doses.sort(key=lambda d: d.date)
    return ForecastInputs(person, tuple(doses), tuple(unusable))


# --- reading a stored record through the caller's view ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class PatientRecord:
    """The parts of a patient's record an operation read, as the caller may see them."""

    patient: dict[str, Any]
    resources: dict[str, list[dict[str, Any]]]


def read_record(
    service: FhirService,
    patient_id: str,
    types: Sequence[str],
    *,
    operation: str,
    criteria: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> PatientRecord:
    """The Patient and its resources of ``types`` that the caller's session shows (an unknown or
    hidden Patient raises ``NotFound``); the reads are audited as the operation ``operation``.
    ``criteria`` adds search parameters per type (only the Observations a forecast reads)."""
    found: dict[str, list[Stored]] = {t: [] for t in types}
    with service.reading() as conn:
        patient = service.read_in(conn, "Patient", patient_id)
        for rtype in types:
            first = [
                ("patient", patient_id),
                *(criteria or {}).get(rtype, ()),
                ("_count", str(service.max_page_size)),
            ]
            params = first
            while True:
                result = service.search_in(conn, service.parse_search(rtype, params, strict=True))
                found[rtype].extend(result.matches)
                if not result.next_cursor:
                    break
                params = [*first, ("_page", result.next_cursor)]
        if service.session is not None:
            everything = [patient, *(s for stored in found.values() for s in stored)]
            service.session.record(
                conn,
                Interaction(
                    "operation",
                    "Patient",
                    everything,
                    operation=operation,
                    query=f"Patient/{patient_id}/${operation}",
                ),
            )
    return PatientRecord(
        patient.resource(), {t: [s.resource() for s in stored] for t, stored in found.items()}
    )


@dataclass(frozen=True, slots=True)
class StoredForecast:
    """A stored patient's forecast with what it was computed from."""

    forecast: cdsi.Forecast
    inputs: ForecastInputs
    record: PatientRecord
    schedule: cdsi.Schedule


#: what a stored forecast reads: the Observations only of the codes it uses (not every vital sign)
FORECAST_CRITERIA = {"Observation": [("code", ",".join(f"{LOINC}|{c}" for c in FORECAST_OBSERVATIONS))]}


def practitioner_roles(service: FhirService, patient: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The active PractitionerRoles of the person (a professional is also a patient): those of the
    Practitioner carrying one of the Patient's matricules, searched through the caller's service."""
    matricules = [
        i["value"]
        for i in patient.get("identifier") or []
        if isinstance(i, Mapping) and i.get("system") == MATRICULE_SYSTEM and isinstance(i.get("value"), str)
    ]
    if not matricules:
        return []
    value = ",".join(f"{MATRICULE_SYSTEM}|{m}" for m in matricules)
    params = [("practitioner.identifier", value), ("active", "true"), ("_count", str(service.max_page_size))]
    with service.reading() as conn:
        result = service.search_in(conn, service.parse_search("PractitionerRole", params, strict=True))
    return [s.resource() for s in result.matches]


def stored_forecast(service: FhirService, patient_id: str, as_of: date, schedule_name: str) -> StoredForecast:
    """The forecast of ``Patient/patient_id`` on ``as_of`` from the Patient, Immunizations,
    Conditions, pregnancy and occupation Observations the caller may see (through ``service``'s
    session) and the person's PractitionerRoles, with ``schedule_name``."""
    schedule = cdsi.load_schedule(schedule_name)
    record = read_record(
        service,
        patient_id,
        ("Immunization", "Condition", "Observation"),
        operation="immds-forecast",
        criteria=FORECAST_CRITERIA,
    )
    inputs = forecast_inputs(
        record.patient,
        record.resources["Immunization"],
        record.resources["Condition"],
        schedule,
        observations=record.resources["Observation"],
        practitioner_roles=practitioner_roles(service, record.patient),
    )
    result = cdsi.forecast(schedule, inputs.patient, inputs.doses, as_of)
    return StoredForecast(result, inputs, record, schedule)
