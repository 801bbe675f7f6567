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
from typing import Any

from sharedcare.vaccination.inputs import condition_codings

LOINC = "http://loinc.org"
PREGNANCY_STATUS = "82810-3"
OCCUPATION = frozenset({"11341-5", "85658-3"})  # history of occupation; occupation [type]
_FINAL = frozenset({"final", "amended", "corrected"})


def _codings(concept: Any) -> list[tuple[str, str]]:
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    return [
        (c["system"], c["code"])
        for c in (codings if isinstance(codings, list) else [])
        if isinstance(c, Mapping) and isinstance(c.get("system"), str) and isinstance(c.get("code"), str)
    ]


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
