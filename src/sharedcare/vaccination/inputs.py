"""From FHIR to the forecaster's inputs, and a stored patient's forecast read through the caller's view.

The engine (``vaccination.cdsi``) knows CVX codes and CDSi observation codes only; this module is
the one place that reads FHIR for it:

- ``Patient.birthDate`` and ``gender`` (male → M, female → F, else unknown);
- ``Immunization``: only ``completed`` doses with a dated ``occurrenceDateTime`` count
  (``entered-in-error`` and ``not-done`` are ignored; patient-reported doses count, as on paper);
  the CVX coding when there is one, else the catalogue product's CVX codes (a dTap-IPV booster
  counts as a Tdap and an IPV dose); a dose with neither is reported as not usable;
- ``Condition`` codings (active or no clinical status, not refuted or entered in error) →
  ``Schedule.observations_from_codes``.

``stored_forecast`` reads the record through the ``FhirService`` it is given, so the caller's
access decision (and audit) applies: a dose hidden from the caller is not in their forecast.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from sharedcare.fhir.service import FhirService
from sharedcare.fhir.session import Interaction
from sharedcare.fhir.store import Stored
from sharedcare.vaccination import cdsi
from sharedcare.vaccination.products import Catalogue, catalogue

_GENDERS = {"male": "M", "female": "F"}
_INACTIVE = frozenset({"inactive", "resolved", "remission"})
_NOT_TRUE = frozenset({"refuted", "entered-in-error"})


class InputError(ValueError):
    """The patient cannot be forecast (no birth date…); the message says why."""


@dataclass(frozen=True, slots=True)
class ForecastInputs:
    """What the engine is given, and the doses it could not be given (with the reason)."""

    patient: cdsi.Patient
    doses: tuple[cdsi.AdministeredDose, ...]
    unusable: tuple[tuple[str, str], ...]
    """(reference, reason) of completed doses that name no CVX nor a known product."""


def _day(value: Any) -> date | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _codings(concept: Any) -> Iterable[tuple[str, str]]:
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    for c in codings if isinstance(codings, list) else []:
        if isinstance(c, Mapping) and isinstance(c.get("system"), str) and isinstance(c.get("code"), str):
            yield c["system"], c["code"]


def _status_code(concept: Any) -> str | None:
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    for c in codings if isinstance(codings, list) else []:
        if isinstance(c, Mapping) and isinstance(c.get("code"), str):
            return str(c["code"])
    return None


def condition_codings(conditions: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """The (system, code) pairs of the conditions that hold."""
    out: list[tuple[str, str]] = []
    for c in conditions:
        if _status_code(c.get("clinicalStatus")) in _INACTIVE:
            continue
        if _status_code(c.get("verificationStatus")) in _NOT_TRUE:
            continue
        out.extend(_codings(c.get("code")))
    return out


def reference_of(res: Mapping[str, Any], index: int) -> str:
    rid = res.get("id")
    return f"{res.get('resourceType', 'Immunization')}/{rid}" if rid else f"#{index}"


def forecast_inputs(
    patient: Mapping[str, Any],
    immunizations: Sequence[Mapping[str, Any]],
    conditions: Sequence[Mapping[str, Any]],
    schedule: cdsi.Schedule,
    products: Catalogue | None = None,
) -> ForecastInputs:
    """The engine's inputs; raises ``InputError`` when the patient has no usable birth date."""
    birth = _day(patient.get("birthDate"))
    if birth is None:
        raise InputError("The patient needs a full birthDate (YYYY-MM-DD) to be forecast")
    products = products or catalogue()
    observations = schedule.observations_from_codes(condition_codings(conditions))
    person = cdsi.Patient(birth, _GENDERS.get(str(patient.get("gender"))), observations)
    doses: list[cdsi.AdministeredDose] = []
    unusable: list[tuple[str, str]] = []
    for i, imm in enumerate(immunizations):
        if imm.get("status") != "completed":
            continue
        ref = reference_of(imm, i)
        given = _day(imm.get("occurrenceDateTime"))
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
    service: FhirService, patient_id: str, types: Sequence[str], *, operation: str
) -> PatientRecord:
    """The Patient and its resources of ``types`` that the caller's session shows (an unknown or
    hidden Patient raises ``NotFound``); the reads are audited as the operation ``operation``."""
    found: dict[str, list[Stored]] = {t: [] for t in types}
    with service.reading() as conn:
        patient = service.read_in(conn, "Patient", patient_id)
        for rtype in types:
            params = [("patient", patient_id), ("_count", str(service.max_page_size))]
            while True:
                result = service.search_in(conn, service.parse_search(rtype, params, strict=True))
                found[rtype].extend(result.matches)
                if not result.next_cursor:
                    break
                params = [*params[:2], ("_page", result.next_cursor)]
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


def stored_forecast(service: FhirService, patient_id: str, as_of: date, schedule_name: str) -> StoredForecast:
    """The forecast of ``Patient/patient_id`` on ``as_of`` from the Patient, Immunizations and
    Conditions the caller may see (through ``service``'s session), with ``schedule_name``."""
    schedule = cdsi.load_schedule(schedule_name)
    record = read_record(service, patient_id, ("Immunization", "Condition"), operation="immds-forecast")
    inputs = forecast_inputs(
        record.patient, record.resources["Immunization"], record.resources["Condition"], schedule
    )
    result = cdsi.forecast(schedule, inputs.patient, inputs.doses, as_of)
    return StoredForecast(result, inputs, record, schedule)
