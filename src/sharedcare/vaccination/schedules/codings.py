"""What the record knows about a person, as the (system, code) pairs a schedule's observations map.

`Schedule.observations_from_codes` turns codings into CDSi observation codes (risk groups,
pregnancy, health workers). This module gathers those codings from the FHIR resources that carry
them, so personalised recommendations use the whole record, not only Conditions:

- ``Condition``: its code (SNOMED CT, ICD-10), when it holds (not inactive, refuted or in error);
- ``Observation`` pregnancy status (LOINC 82810-3): its value (LOINC answer LA15173-0 "Pregnant",
  or a SNOMED CT concept), when final/amended/corrected;
- ``Observation`` occupation (LOINC 11341-5 "History of Occupation", the ODH "PastOrPresentJob"
  code): its value (ISCO-08, SNOMED CT occupation) when the job has not ended;
- ``PractitionerRole`` of the person (a professional is also a patient): its ``code`` codings
  (practitioner-role "doctor", "nurse", "pharmacist"…) while active.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, timedelta
from typing import Any

LOINC = "http://loinc.org"
PREGNANCY_STATUS = "82810-3"
OCCUPATION = frozenset({"11341-5", "85658-3"})  # history of occupation; occupation [type]
#: first day of the last menstrual period: the onset of pregnancy as obstetrics counts it
LAST_PERIOD = "8665-2"
#: estimated delivery date (clinical estimate, by ovulation date, by last period): onset = date - 280 days
DELIVERY_DATE = frozenset({"11778-8", "11779-6", "11780-4"})
#: the LOINC codes of the Observations a forecast reads (so a stored record is searched for these only)
FORECAST_OBSERVATIONS = (PREGNANCY_STATUS, *sorted(OCCUPATION), LAST_PERIOD, *sorted(DELIVERY_DATE))
_PREGNANCY = timedelta(days=280)
_FINAL = frozenset({"final", "amended", "corrected"})
_INACTIVE = frozenset({"inactive", "resolved", "remission"})
_NOT_TRUE = frozenset({"refuted", "entered-in-error"})


def _codings(concept: Any) -> list[tuple[str, str]]:
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    return [
        (c["system"], c["code"])
        for c in (codings if isinstance(codings, list) else [])
        if isinstance(c, Mapping) and isinstance(c.get("system"), str) and isinstance(c.get("code"), str)
    ]


def _status_code(concept: Any) -> str | None:
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    for c in codings if isinstance(codings, list) else []:
        if isinstance(c, Mapping) and isinstance(c.get("code"), str):
            return str(c["code"])
    return None


def _holds(condition: Mapping[str, Any]) -> bool:
    return (
        _status_code(condition.get("clinicalStatus")) not in _INACTIVE
        and _status_code(condition.get("verificationStatus")) not in _NOT_TRUE
    )


def fhir_day(value: Any) -> date | None:
    """The calendar day of a FHIR date or dateTime (its first ten characters); None if not one."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def condition_codings(conditions: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """The (system, code) pairs of the conditions that hold (active or no clinical status, not
    refuted or entered in error)."""
    out: list[tuple[str, str]] = []
    for c in conditions:
        if _holds(c):
            out.extend(_codings(c.get("code")))
    return out


def pregnancy_onset(
    conditions: Iterable[Mapping[str, Any]],
    observations: Iterable[Mapping[str, Any]],
    is_pregnancy: Any,
) -> date | None:
    """The onset of the current pregnancy, for intervals that run from it (CDSi observation 170):
    the latest of a final last-period date (LOINC 8665-2), an estimated delivery date less 280 days
    (LOINC 11778-8, 11779-6, 11780-4) and the onset of a pregnancy Condition that holds
    (``is_pregnancy(codings)`` says which Conditions are pregnancies). None when the record has none."""
    found: list[date] = []
    for obs in observations:
        if obs.get("status") not in _FINAL:
            continue
        codes = {code for system, code in _codings(obs.get("code")) if system == LOINC}
        value = fhir_day(obs.get("valueDateTime"))
        if value is None:
            continue
        if LAST_PERIOD in codes:
            found.append(value)
        elif codes & DELIVERY_DATE:
            found.append(value - _PREGNANCY)
    for c in conditions:
        onset = fhir_day(c.get("onsetDateTime"))
        if onset is not None and _holds(c) and is_pregnancy(_codings(c.get("code"))):
            found.append(onset)
    return max(found, default=None)


def observation_codings(observations: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Pregnancy status and occupation values of final Observations (other Observations: none)."""
    found: list[tuple[str, str]] = []
    for obs in observations:
        if obs.get("status") not in _FINAL:
            continue
        codes = {code for system, code in _codings(obs.get("code")) if system == LOINC}
        if PREGNANCY_STATUS in codes:
            found.extend(_codings(obs.get("valueCodeableConcept")))
        elif codes & OCCUPATION:
            period = obs.get("effectivePeriod")
            if isinstance(period, Mapping) and period.get("end"):
                continue  # a past job
            found.extend(_codings(obs.get("valueCodeableConcept")))
    return found


def role_codings(roles: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """The codes of active PractitionerRoles (a health worker's own vaccination indications)."""
    found: list[tuple[str, str]] = []
    for role in roles:
        if role.get("active") is False:
            continue
        period = role.get("period")
        if isinstance(period, Mapping) and period.get("end"):
            continue
        for concept in role.get("code") or []:
            found.extend(_codings(concept))
    return found


def record_codings(
    conditions: Iterable[Mapping[str, Any]] = (),
    observations: Iterable[Mapping[str, Any]] = (),
    practitioner_roles: Iterable[Mapping[str, Any]] = (),
) -> list[tuple[str, str]]:
    """Every coding of the record that may name an indication, for `Schedule.observations_from_codes`."""
    return [
        *condition_codings(conditions),
        *observation_codings(observations),
        *role_codings(practitioner_roles),
    ]
