"""Evaluation of one patient series: each administered dose against the series' target doses.

This follows the CDSi Logic Specification's evaluation process (chapter 6): conditional skip,
inadvertent vaccine, age, preferable and allowable intervals, live-virus conflict, preferable
and allowable vaccine, gender. A dose that passes satisfies the target dose; a dose that fails
leaves it open for the next dose; doses after the last target dose are extraneous.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from .durations import DATE_MAX, DATE_MIN, add
from .model import (
    AgeRule,
    IntervalRule,
    LiveVirusConflict,
    Patient,
    Series,
    SkipCondition,
    SkipSet,
    TargetDose,
    VaccineRule,
)

VALID = "Valid"
NOT_VALID = "Not Valid"
EXTRANEOUS = "Extraneous"

TOO_YOUNG = "Age: Too Young"
TOO_OLD = "Age: Too Old"
TOO_SOON = "Interval: too Soon"
INADVERTENT = "Inadvertent Vaccine"
LIVE_CONFLICT = "Live Virus Conflict"
NOT_ALLOWABLE = "Not a preferable or allowable vaccine"
SERIES_COMPLETE = "Series Already Complete"
GENDER = "Gender"

# The 4-day grace period is in the data (absolute minimum = minimum - 4 days): a dose given on
# or after the absolute minimum age or interval is valid. CDC's test cases expect this even
# after a previous dose that was itself too young or too soon.


@dataclass(slots=True)
class AntigenDose:
    """An administered dose as it counts for one antigen (the spec's "antigen administered record")."""

    index: int  # position in the patient's history (for the caller's ref)
    date: date
    cvx: str
    live_conflict: bool = False  # given inside a live-virus conflict window (patient-level)


@dataclass(slots=True)
class DoseResult:
    dose: AntigenDose
    status: str
    reason: str | None
    target: int | None  # 1-based target dose number it was evaluated against
    preferable: bool = False


@dataclass(slots=True)
class SeriesEvaluation:
    """The outcome of evaluating one series: per-dose results and the target doses' state."""

    series: Series
    results: list[DoseResult] = field(default_factory=list)
    #: satisfied (valid) dose for each target dose index; None for skipped
    satisfied: dict[int, AntigenDose | None] = field(default_factory=dict)
    next_target: int = 0  # index of the first unsatisfied target dose
    complete: bool = False
    #: the valid doses, kept once the evaluation is over (the selection asks many times)
    final_valid: list[DoseResult] | None = None

    @property
    def valid_doses(self) -> list[DoseResult]:
        if self.final_valid is not None:
            return self.final_valid
        return [r for r in self.results if r.status == VALID]


def pick_age(dose: TargetDose, on: date) -> AgeRule:
    """The age rule in force on `on` (rules may change at an effective/cessation date)."""
    for rule in dose.ages:
        if (rule.effective is None or on >= rule.effective) and (
            rule.cessation is None or on <= rule.cessation
        ):
            return rule
    return dose.ages[0]


def in_force(rule: IntervalRule, on: date) -> bool:
    return (rule.effective is None or on >= rule.effective) and (
        rule.cessation is None or on <= rule.cessation
    )


def vaccine_matches(rules: tuple[VaccineRule, ...], cvx: str, birth: date, on: date) -> bool:
    """Whether `cvx` is one of `rules` at the patient's age on `on` (begin inclusive, end exclusive)."""
    for rule in rules:
        if rule.cvx == cvx and add(birth, rule.begin_age, DATE_MIN) <= on < add(
            birth, rule.end_age, DATE_MAX
        ):
            return True
    return False


class SeriesEvaluator:
    """Evaluates the doses of one antigen against one series (chapter 6 of the Logic Specification)."""

    def __init__(
        self,
        patient: Patient,
        doses: list[AntigenDose],
        all_doses: list[AntigenDose],
        live_conflicts: dict[str, tuple[LiveVirusConflict, ...]],
    ) -> None:
        self.patient = patient
        self.live_conflicts = live_conflicts
        #: series group → date its series was completed (for "Completed Series" skip conditions)
        self.completed_groups: dict[str, date] = {}
        self.doses = doses
        self.all_doses = all_doses  # every dose of the patient (for "most recent of these vaccines")

    def evaluate(self, series: Series) -> SeriesEvaluation:
        ev = SeriesEvaluation(series)
        targets = series.doses
        birth = self.patient.birth_date
        t = 0
        for dose in self.doses:
            while t < len(targets) and self.skipped(ev, targets[t], dose.date, "Evaluation"):
                ev.satisfied[t] = None
                t += 1
            if t >= len(targets):
                ev.results.append(DoseResult(dose, EXTRANEOUS, SERIES_COMPLETE, None))
                continue
            target = targets[t]
            status, reason, preferable = self.evaluate_dose(ev, target, dose, birth)
            ev.results.append(DoseResult(dose, status, reason, target.number, preferable))
            if status == VALID:
                ev.satisfied[t] = dose
                if not target.recurring:
                    t += 1
        ev.next_target = t
        ev.complete = t >= len(targets)
        ev.final_valid = [r for r in ev.results if r.status == VALID]
        return ev

    # -- one dose ------------------------------------------------------------------------------

    def previous(self, ev: SeriesEvaluation) -> DoseResult | None:
        """The immediate previous dose that counts as a reference (not inadvertent)."""
        for r in reversed(ev.results):
            if r.reason not in (INADVERTENT,):
                return r
        return None

    def evaluate_dose(
        self, ev: SeriesEvaluation, target: TargetDose, dose: AntigenDose, birth: date
    ) -> tuple[str, str | None, bool]:
        if dose.cvx in target.inadvertent:
            return NOT_VALID, INADVERTENT, False
        age = pick_age(target, dose.date)
        if dose.date < add(birth, age.abs_min, DATE_MIN):
            return NOT_VALID, TOO_YOUNG, False
        if dose.date >= add(birth, age.max, DATE_MAX):
            return EXTRANEOUS, TOO_OLD, False
        if not self.intervals_ok(ev, target, dose):
            return NOT_VALID, TOO_SOON, False
        if dose.live_conflict:
            return NOT_VALID, LIVE_CONFLICT, False
        preferable = vaccine_matches(target.preferable, dose.cvx, birth, dose.date)
        if not preferable and not vaccine_matches(target.allowable, dose.cvx, birth, dose.date):
            return NOT_VALID, NOT_ALLOWABLE, False
        if ev.series.required_gender and (self.patient.gender or "U") not in ev.series.required_gender:
            return NOT_VALID, GENDER, False
        return VALID, None, preferable

    def reference_date(self, ev: SeriesEvaluation, rule: IntervalRule, before: date) -> date | None:
        """The date an interval runs from (None: the interval does not apply)."""
        if rule.from_previous:
            prev = self.previous(ev)
            return prev.dose.date if prev else None
        if rule.from_target_dose is not None:
            sat = ev.satisfied.get(rule.from_target_dose - 1)
            return sat.date if sat else None
        if rule.from_most_recent:
            dates = [d.date for d in self.all_doses if d.cvx in rule.from_most_recent and d.date < before]
            return max(dates) if dates else None
        if rule.from_observation is not None:
            seen = self.patient.observation_date(rule.from_observation)
            return seen if seen is not None and seen < before else None
        return None

    def intervals_ok(self, ev: SeriesEvaluation, target: TargetDose, dose: AntigenDose) -> bool:
        ok = True
        for rule in target.intervals:
            if not in_force(rule, dose.date):
                continue
            ref = self.reference_date(ev, rule, dose.date)
            if ref is None:
                continue
            if dose.date < add(ref, rule.abs_min, DATE_MIN):
                ok = False
                break
        if ok or not target.allowable_intervals:
            return ok
        for rule in target.allowable_intervals:
            ref = self.reference_date(ev, rule, dose.date)
            if ref is not None and in_force(rule, dose.date) and dose.date < add(ref, rule.abs_min, DATE_MIN):
                return False
        return True

    # -- conditional skip ----------------------------------------------------------------------

    def skipped(
        self, ev: SeriesEvaluation, target: TargetDose, on: date, context: str, until: date | None = None
    ) -> bool:
        """Whether a conditional skip of `context` (Evaluation/Forecast) applies on `on`.

        Ages and intervals are measured on `on` (the dose's date; in a forecast, the earliest
        date of the next dose); doses are counted before `until` (default `on`).
        """
        until = until or on
        for skip in target.skips:
            if skip.context not in (context, "Both"):
                continue
            sets = [s for s in skip.sets if _set_in_force(s, on)]
            if not sets:
                continue
            # conditions are pure, so AND stops at the first set not met and OR at the first met
            met = (self.set_met(ev, s.conditions, s.logic, on, until) for s in sets)
            if all(met) if skip.set_logic == "AND" else any(met):
                return True
        return False

    def set_met(
        self, ev: SeriesEvaluation, conditions: tuple[SkipCondition, ...], logic: str, on: date, until: date
    ) -> bool:
        values = (self.condition_met(ev, c, on, until) for c in conditions)
        return any(values) if logic == "OR" else all(values)

    def condition_met(self, ev: SeriesEvaluation, c: SkipCondition, on: date, until: date) -> bool:
        birth = self.patient.birth_date
        if c.kind == "age":
            return add(birth, c.begin_age, DATE_MIN) <= on < add(birth, c.end_age, DATE_MAX)
        if c.kind == "interval":
            prev = [r.dose.date for r in ev.results if r.dose.date < until and r.reason != INADVERTENT]
            return bool(prev) and on >= add(max(prev), c.interval, DATE_MIN)
        if c.kind.startswith("vaccine count"):
            if c.dose_type == "valid":
                candidates = [r.dose for r in ev.results if r.status == VALID]
            elif c.vaccine_types:  # named vaccines may not carry this antigen (Td for pertussis)
                candidates = self.all_doses
            else:
                candidates = [r.dose for r in ev.results]
            count = 0
            for d in candidates:
                if d.date >= until:
                    continue
                if c.vaccine_types and d.cvx not in c.vaccine_types:
                    continue
                if not (add(birth, c.begin_age, DATE_MIN) <= d.date < add(birth, c.end_age, DATE_MAX)):
                    continue
                if c.start_date and d.date < c.start_date:
                    continue
                if c.end_date and d.date >= c.end_date:
                    continue
                count += 1
            target = c.dose_count or 0
            logic = c.dose_count_logic or "greater than"
            if logic.startswith("greater"):
                return count > target
            if logic.startswith("less"):
                return count < target
            return count == target
        if c.kind == "completed series":
            done = self.completed_groups
            return any(g in done and done[g] < until for g in c.series_groups)
        return False


def _set_in_force(s: SkipSet, on: date) -> bool:
    return (s.effective is None or on >= s.effective) and (s.cessation is None or on <= s.cessation)
