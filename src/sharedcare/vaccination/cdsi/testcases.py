"""Running CDC's CDSi test cases (JSON conversions of the XLSX workbooks) against a schedule.

Shared by the test (tests/vaccination/test_cdsi_cases.py) and the report script
(benchmarks/cdsi_report.py): a case passes when the vaccine group's series status, forecast dose
number and earliest/recommended/past-due dates match, and every expected dose evaluation does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from .engine import forecast
from .model import AdministeredDose, Forecast, Patient, Schedule

#: the test files' vaccine-group spellings → the supporting data's names
GROUP_NAMES = {
    "dtap": "DTaP/Tdap/Td",
    "pol": "Polio",
    "ipol": "Polio",
    "hib": "Hib",
    "pcv": "Pneumococcal",
    "var": "Varicella",
    "rota": "Rotavirus",
    "mcv": "Meningococcal",
    "menb": "Meningococcal B",
    "flu": "Influenza",
}


@dataclass(frozen=True, slots=True)
class CaseResult:
    case_id: str
    group: str
    differences: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.differences


def load_cases(path: Path) -> list[dict[str, Any]]:
    """The cases of one JSON file, with the column spellings normalised."""
    cases = json.loads(path.read_text())["cases"]
    for case in cases:
        if "Gender" in case and "gender" not in case:
            case["gender"] = case["Gender"]
        if "Date_added" in case and "Date_Added" not in case:
            case["Date_Added"] = case["Date_added"]
        number = case.get("Forecast_#")
        case["Forecast_#"] = int(number) if number not in (None, "", "-") and str(number).isdigit() else None
    return cases


def group_name(schedule: Schedule, raw: str) -> str:
    """The schedule's name for a test file's vaccine group ("DTAP" → "DTaP/Tdap/Td")."""
    mapped = GROUP_NAMES.get(raw.lower())
    if mapped:
        return mapped
    for name in schedule.vaccine_groups:
        if name.lower() == raw.lower():
            return name
    raise KeyError(f"unknown vaccine group in test case: {raw!r}")


def _date(text: str | None) -> date | None:
    return date.fromisoformat(text[:10]) if text else None


def case_input(case: dict[str, Any]) -> tuple[Patient, list[AdministeredDose], date]:
    observations = frozenset(
        str(case[f"Observation_Code_{i}"]).strip() for i in (1, 2, 3) if case.get(f"Observation_Code_{i}")
    )
    dated = tuple(
        (str(case[f"Observation_Code_{i}"]).strip(), date.fromisoformat(case[f"Observation_Date_{i}"][:10]))
        for i in (1, 2, 3)
        if case.get(f"Observation_Code_{i}") and case.get(f"Observation_Date_{i}")
    )
    gender = (case.get("gender") or "").strip().upper()[:1] or None
    patient = Patient(
        date.fromisoformat(case["DOB"][:10]), gender if gender in ("M", "F") else None, observations, dated
    )
    doses = [
        AdministeredDose(
            ref=str(d["n"]),
            date=date.fromisoformat(d["Date_Administered"][:10]),
            cvx=str(d["CVX"]).zfill(2),
            mvx=d.get("MVX"),
        )
        for d in case["_doses"]
    ]
    return patient, doses, date.fromisoformat(case["Assessment_Date"][:10])


def dose_status(result: Forecast, group: str, ref: str) -> str | None:
    """One status per dose for the vaccine group (antigens of a group may disagree)."""
    statuses = [e.status for e in result.evaluations if e.vaccine_group == group and e.ref == ref]
    if not statuses:  # a dose of another group in the case's history (varicella in an MMR case)
        statuses = [e.status for e in result.evaluations if e.ref == ref]
    if not statuses:
        return None
    if "Not Valid" in statuses:
        return "Not Valid"
    if all(s == "Extraneous" for s in statuses):
        return "Extraneous"
    return "Valid" if "Valid" in statuses else statuses[0]


def run_case(schedule: Schedule, case: dict[str, Any]) -> CaseResult:
    """Run one case; the differences say what did not match (empty: passed)."""
    group = group_name(schedule, case["Vaccine_Group"])
    patient, doses, assessment = case_input(case)
    result = forecast(schedule, patient, doses, assessment)
    diffs: list[str] = []
    fc = result.group(group)
    expected_status = (case["Series_Status"] or "").strip().lower()
    got_status = fc.status.lower() if fc else "missing"
    if got_status != expected_status:
        diffs.append(f"status {got_status!r} != {expected_status!r}")
    if fc is not None and expected_status == "not complete":
        if fc.dose_number != case["Forecast_#"]:
            diffs.append(f"dose# {fc.dose_number} != {case['Forecast_#']}")
        for label, got, column in (
            ("earliest", fc.earliest, "Earliest_Date"),
            ("recommended", fc.recommended, "Recommended_Date"),
            ("past due", fc.past_due, "Past_Due_Date"),
        ):
            want = _date(case.get(column))
            if got != want:
                diffs.append(f"{label} {got} != {want}")
    for d in case["_doses"]:
        want_status = d.get("Evaluation_Status")
        if not want_status:
            continue
        got_dose = dose_status(result, group, str(d["n"]))
        if (got_dose or "").lower() != want_status.strip().lower():
            where = f"dose {d['n']} (cvx {d['CVX']}, {d['Date_Administered']})"
            diffs.append(f"{where} {got_dose} != {want_status}")
    return CaseResult(case["CDC_Test_ID"], group, tuple(diffs))
