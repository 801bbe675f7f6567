"""The forecaster: evaluate, select the best series per antigen, forecast per vaccine group.

`forecast()` is a pure function of the schedule, the patient, the doses and the assessment date,
so it can run for a whole population. Steps follow the CDSi Logic Specification: organise the
history per antigen, evaluate every relevant series (standard, and risk series the patient's
observations call for), forecast each, select the best series of each antigen (scoring), then
combine antigens into the vaccine group's forecast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from .durations import DATE_MAX, DATE_MIN, Duration, add
from .evaluate import (
    INADVERTENT,
    AntigenDose,
    SeriesEvaluation,
    SeriesEvaluator,
    in_force,
    pick_age,
)
from .model import (
    AdministeredDose,
    Antigen,
    DoseEvaluation,
    Forecast,
    GroupForecast,
    LiveVirusConflict,
    Patient,
    Schedule,
    Series,
    TargetDose,
    VaccineRule,
    YearlySeason,
)
from .provenance import annotate

NOT_COMPLETE = "Not Complete"
COMPLETE = "Complete"
IMMUNE = "Immune"
CONTRAINDICATED = "Contraindicated"
AGED_OUT = "Aged Out"
NOT_RECOMMENDED = "Not Recommended"

_ONE_DAY = timedelta(days=1)
_GRACE = timedelta(days=4)


@dataclass(slots=True)
class SeriesForecast:
    """The next dose of one series (or why there is none)."""

    status: str
    dose_number: int | None = None
    earliest: date | None = None
    recommended: date | None = None
    past_due: date | None = None
    latest: date | None = None
    vaccines: tuple[str, ...] = ()
    reason: str | None = None


@dataclass(slots=True)
class AntigenResult:
    antigen: str
    evaluation: SeriesEvaluation | None
    forecast: SeriesForecast


def forecast(
    schedule: Schedule, patient: Patient, doses: Sequence[AdministeredDose], assessment_date: date
) -> Forecast:
    """Evaluate `doses` and forecast every vaccine group of `schedule` on `assessment_date`."""
    # doses after the assessment date have not been given yet (CDC data has a few): not evaluated
    given = [(i, d) for i, d in enumerate(doses) if d.date <= assessment_date]
    history = sorted(given, key=lambda item: (item[1].date, item[0]))
    all_doses = _with_live_conflicts(schedule, [AntigenDose(i, d.date, d.cvx) for i, d in history])
    per_antigen: dict[str, list[AntigenDose]] = {}
    for ad in all_doses:
        for assoc in schedule.cvx_antigens.get(ad.cvx, ()):
            if (
                add(patient.birth_date, assoc.begin_age, DATE_MIN)
                <= ad.date
                < add(patient.birth_date, assoc.end_age, DATE_MAX)
            ):
                per_antigen.setdefault(assoc.antigen, []).append(ad)

    evaluations: list[DoseEvaluation] = []
    groups: list[GroupForecast] = []
    for group in schedule.groups.values():
        results = []
        for name in group.antigens:
            antigen = schedule.antigens.get(name)
            if antigen is None:
                continue
            result = _antigen(
                antigen,
                patient,
                per_antigen.get(name, []),
                all_doses,
                assessment_date,
                schedule.live_conflicts,
            )
            results.append(result)
            if result.evaluation is not None:
                for r in result.evaluation.results:
                    src = doses[r.dose.index]
                    evaluations.append(
                        DoseEvaluation(
                            ref=src.ref,
                            date=src.date,
                            cvx=src.cvx,
                            vaccine_group=group.name,
                            antigen=name,
                            status=r.status,
                            reason=r.reason,
                            series=result.evaluation.series.name,
                            dose_number=r.target,
                        )
                    )
        if results:
            groups.append(_group_forecast(group.name, group.administer_full, results))
    evaluations.sort(key=lambda e: (e.date, e.vaccine_group, e.antigen))
    # every caller sees which recommendations rest on unconfirmed schedule data (no-op for CDC)
    return annotate(schedule, Forecast(assessment_date, tuple(evaluations), tuple(groups)))


def _with_live_conflicts(schedule: Schedule, doses: list[AntigenDose]) -> list[AntigenDose]:
    """Mark doses given inside another live vaccine's conflict window (patient level, any antigen).

    The window ends at `minConflictEndInterval` (grace) after a valid previous dose and at
    `conflictEndInterval` after a previous dose that was itself in conflict.
    """
    for i, current in enumerate(doses):
        conflicts = schedule.live_conflicts.get(current.cvx)
        if not conflicts:
            continue
        for prev in doses[:i]:
            for c in conflicts:
                if c.previous_cvx != prev.cvx:
                    continue
                end = (c.end if prev.live_conflict else c.min_end).after(prev.date)
                if c.begin.after(prev.date) <= current.date < end:
                    current.live_conflict = True
    return doses


# --- one antigen -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _SeriesFacts:
    """What the engine asks of a series again and again, computed once per series."""

    risk: bool
    indicated_by: frozenset[str]
    seasonal: bool
    group_number: int


_FACTS: dict[int, tuple[Series, _SeriesFacts]] = {}
_ORDERED: dict[int, tuple[Antigen, tuple[tuple[Series, _SeriesFacts], ...]]] = {}


def _facts(series: Series) -> _SeriesFacts:
    """The series' facts, cached by identity (schedules are built once and kept)."""
    found = _FACTS.get(id(series))
    if found is None or found[0] is not series:
        facts = _SeriesFacts(
            series.series_type.lower() == "risk",
            frozenset(i.observation for i in series.indications),
            any(t.season_start is not None for t in series.doses),
            int(series.group) if series.group.isdigit() else 99,
        )
        found = _FACTS[id(series)] = (series, facts)
    return found[1]


def _ordered_series(antigen: Antigen) -> tuple[tuple[Series, _SeriesFacts], ...]:
    """The antigen's series in series-group order (stable) with their facts, cached by identity."""
    found = _ORDERED.get(id(antigen))
    if found is None or found[0] is not antigen:
        ordered = tuple((s, _facts(s)) for s in sorted(antigen.series, key=_group_number))
        found = _ORDERED[id(antigen)] = (antigen, ordered)
    return found[1]


def _relevant_series(antigen: Antigen, patient: Patient, on: date) -> list[Series]:
    """The antigen's relevant series, in series-group order."""
    relevant = []
    gender = patient.gender or "U"
    observations = patient.observations
    for s, facts in _ordered_series(antigen):
        if s.required_gender and gender not in s.required_gender:
            continue
        # a risk series needs an indication the patient has and has not outgrown (a child who is
        # not yet old enough is forecast for the age it starts at)
        if facts.risk and not (
            observations & facts.indicated_by
            and any(
                i.observation in observations and on < add(patient.birth_date, i.end_age, DATE_MAX)
                for i in s.indications
            )
        ):
            continue
        relevant.append(s)
    return relevant


def _antigen(
    antigen: Antigen,
    patient: Patient,
    doses: list[AntigenDose],
    all_doses: list[AntigenDose],
    on: date,
    live_conflicts: dict[str, tuple[LiveVirusConflict, ...]],
) -> AntigenResult:
    evaluator = SeriesEvaluator(patient, doses, all_doses, live_conflicts)
    candidates = []
    # series groups in order, so a risk series can ask whether the standard one was completed
    for series in _relevant_series(antigen, patient, on):
        ev = evaluator.evaluate(series)
        fc = _series_forecast(evaluator, ev, patient, on)
        candidates.append((ev, fc))
        if fc.status == COMPLETE:
            done = _completion(ev)
            known = evaluator.completed_groups.get(series.group)
            evaluator.completed_groups[series.group] = done if known is None else min(known, done)
    if not candidates:
        return AntigenResult(antigen.name, None, SeriesForecast(NOT_RECOMMENDED, reason="No series applies"))
    ev, fc = _select(candidates, patient, on)
    obs = patient.observations
    immune = bool(obs & antigen.immunity_observations) or (
        antigen.immunity_birth_date is not None
        and patient.birth_date < antigen.immunity_birth_date
        and not (obs & antigen.immunity_exclusions)
    )
    if immune:
        fc = SeriesForecast(IMMUNE, reason="Evidence of immunity")
    elif obs:  # every contraindication is an observation: none without any
        for c in antigen.contraindications:
            if c.observation in obs and not c.cvx and _age_between(patient, on, c.begin_age, c.end_age):
                fc = SeriesForecast(CONTRAINDICATED, reason=c.text or "Contraindicated")
                break
        else:
            if fc.status == NOT_COMPLETE and fc.vaccines:
                blocked = {
                    cvx
                    for c in antigen.contraindications
                    if c.cvx and c.observation in obs and _age_between(patient, on, c.begin_age, c.end_age)
                    for cvx in c.cvx
                }
                if blocked:
                    # a contraindicated product is not recommended; another product may still be
                    fc.vaccines = tuple(v for v in fc.vaccines if v not in blocked)
    return AntigenResult(antigen.name, ev, fc)


def _age_between(patient: Patient, on: date, begin: Duration | None, end: Duration | None) -> bool:
    """Whether the patient's age on `on` is in [begin, end) (no bound when None)."""
    return add(patient.birth_date, begin, DATE_MIN) <= on < add(patient.birth_date, end, DATE_MAX)


def _series_forecast(
    evaluator: SeriesEvaluator, ev: SeriesEvaluation, patient: Patient, on: date
) -> SeriesForecast:
    """The next dose of a series: skip target doses whose forecast skip applies at their earliest date."""
    targets = ev.series.doses
    after_assessment = on + _ONE_DAY  # doses given on the assessment date count
    for target in targets[ev.next_target :]:
        season = target.yearly_season
        if season is not None and target.recurring:
            current = season.current(on)
            if current is not None and any(current[0] <= r.dose.date <= on for r in ev.valid_doses):
                return SeriesForecast(
                    COMPLETE,
                    reason=f"Given this season ({current[0]} to {current[1]}); "
                    f"next season from {season.next_start(current[1])}",
                )
        # Skips are checked at the assessment date and again at the dose's earliest date ("not
        # required for those 12 months or older at the earliest forecasted date"); the first
        # check needs no forecast, so a skipped dose is not forecast at all.
        if target.skips and evaluator.skipped(ev, target, on, "Forecast", after_assessment):
            continue
        fc = _target_forecast(evaluator, ev, target, patient, on)
        if (
            target.skips
            and fc.earliest
            and fc.earliest > on
            and evaluator.skipped(ev, target, fc.earliest, "Forecast", after_assessment)
        ):
            continue
        return fc
    return SeriesForecast(COMPLETE, reason="Series complete")


def _target_forecast(
    evaluator: SeriesEvaluator, ev: SeriesEvaluation, target: TargetDose, patient: Patient, on: date
) -> SeriesForecast:
    series = ev.series
    birth = patient.birth_date
    age = pick_age(target, on)
    latest = age.max.after(birth) - _ONE_DAY if age.max is not None else None
    if latest is not None and on > latest:  # aged out whatever the other dates (adults' infant doses)
        return SeriesForecast(
            AGED_OUT, dose_number=_dose_number(ev, target), reason="Past the maximum age for the next dose"
        )
    earliest = add(birth, age.min, birth)
    age_rec = age.earliest_rec.after(birth) if age.earliest_rec is not None else None
    age_due = age.latest_rec.after(birth) - _ONE_DAY if age.latest_rec is not None else None
    int_rec: list[date] = []
    int_due: list[date] = []
    for rule in target.intervals:
        if not in_force(rule, on):
            continue
        if rule.from_previous:
            ref = next((r.dose.date for r in reversed(ev.results) if r.reason != INADVERTENT), None)
        else:
            ref = evaluator.reference_date(ev, rule, on + _ONE_DAY)
        if ref is None:
            continue
        earliest = max(earliest, add(ref, rule.min, ref))
        if rule.earliest_rec is not None:
            int_rec.append(rule.earliest_rec.after(ref))
        if rule.latest_rec is not None:
            int_due.append(rule.latest_rec.after(ref) - _ONE_DAY)
    if ev.results:  # never before the last dose given, even one that did not count (inadvertent)
        earliest = max(earliest, ev.results[-1].dose.date)
    vaccines = _forecast_vaccines(target.preferable, birth, max(earliest, on))
    earliest = max(earliest, _live_conflict_end(evaluator, vaccines))
    if target.season_start is not None:
        earliest = max(earliest, target.season_start)
    season_note = ""
    if target.yearly_season is not None:
        earliest, season_note = _in_season(target.yearly_season, earliest, on)
    # Age-based dates come first; intervals give them when the dose has no such age. (The
    # intervals' "override" priority is not applied: CDC's cases expect the age-based dates.)
    recommended = max(age_rec or max(int_rec, default=earliest), earliest)
    past_due = age_due or max(int_due, default=None)
    if past_due is not None:
        past_due = max(past_due, earliest)
    if latest is not None and earliest > latest:
        return SeriesForecast(
            AGED_OUT,
            dose_number=_dose_number(ev, target),
            reason="Past the maximum age for the next dose",
        )
    basis = "interval" if any(in_force(r, on) for r in target.intervals) and ev.results else "age"
    return SeriesForecast(
        NOT_COMPLETE,
        dose_number=_dose_number(ev, target),
        earliest=earliest,
        recommended=recommended,
        past_due=past_due,
        latest=latest,
        vaccines=vaccines,
        reason=f"Dose {target.number} of the {series.name}, recommended based on {basis}{season_note}",
    )


def _in_season(season: YearlySeason, earliest: date, on: date) -> tuple[date, str]:
    """A seasonal dose's earliest date (from the start of the season it is given in) and a note.

    In season, the dose is due from this season's start (a dose missed last season is not
    overdue from then); outside, from the next season's start; a date still to come moves to
    the start of the season it falls in or of the next one."""
    current = season.current(on)
    if earliest <= on:
        if current is not None:
            return max(earliest, current[0]), f"; season {current[0]} to {current[1]}"
        start = season.next_start(on)
        return start, f"; outside the season ({season}): next season starts {start}"
    later = season.current(earliest)
    if later is not None:
        return earliest, f"; season {later[0]} to {later[1]}"
    start = season.next_start(earliest)
    return start, f"; next season starts {start}"


def _dose_number(ev: SeriesEvaluation, target: TargetDose) -> int:
    """The next dose's number as CDC's test cases count it: valid doses + 1 (catch-up target doses
    are not counted), or for a seasonal recurring dose, its number within the season."""
    if target.recurring and target.season_start is not None:
        return 1 + sum(1 for r in ev.valid_doses if r.dose.date >= target.season_start)
    if target.recurring and target.number == 1:
        return 1
    if _facts(ev.series).seasonal:  # a seasonal series (COVID-19)
        return target.number
    return len(ev.valid_doses) + 1


def _forecast_vaccines(rules: tuple[VaccineRule, ...], birth: date, on: date) -> tuple[str, ...]:
    """The preferable vaccines flagged for forecasting at the patient's age on `on`, else any
    preferable vaccine of that age, else all (each age window is checked once)."""
    found = _WINDOWS.get(id(rules))
    if found is None or found[0] is not rules:
        distinct = list(dict.fromkeys((id(r.begin_age), id(r.end_age)) for r in rules))
        ages = {(id(r.begin_age), id(r.end_age)): (r.begin_age, r.end_age) for r in rules}
        where = tuple(distinct.index((id(r.begin_age), id(r.end_age))) for r in rules)
        found = _WINDOWS[id(rules)] = (rules, tuple(ages[k] for k in distinct), where)
    _, windows, where = found
    fits = [add(birth, begin, DATE_MIN) <= on < add(birth, end, DATE_MAX) for begin, end in windows]
    fitting = [r for r, w in zip(rules, where, strict=True) if fits[w]]
    chosen = [r for r in fitting if r.forecast] or fitting or list(rules)
    return tuple(dict.fromkeys(r.cvx for r in chosen))


#: per tuple of vaccine rules (by identity): its distinct age windows and each rule's window
_WINDOWS: dict[
    int, tuple[tuple[VaccineRule, ...], tuple[tuple[Duration | None, Duration | None], ...], tuple[int, ...]]
] = {}


def _live_conflict_end(evaluator: SeriesEvaluator, vaccines: tuple[str, ...]) -> date:
    """The end of any live-virus conflict window the next dose would fall in."""
    end = DATE_MIN
    if not evaluator.all_doses:
        return end
    for cvx in vaccines:
        for c in evaluator.live_conflicts.get(cvx, ()):
            for prev in evaluator.all_doses:
                if prev.cvx == c.previous_cvx:
                    end = max(end, c.end.after(prev.date))  # a forecast uses the full window
    return end


# --- selection ---------------------------------------------------------------------------------


def _select(
    candidates: list[tuple[SeriesEvaluation, SeriesForecast]], patient: Patient, on: date
) -> tuple[SeriesEvaluation, SeriesForecast]:
    by_group: dict[str, list[tuple[SeriesEvaluation, SeriesForecast]]] = {}
    for c in candidates:
        by_group.setdefault(c[0].series.group, []).append(c)
    best = [_best_in_group(items, patient, on) for items in by_group.values()]
    if len(best) == 1:
        return best[0]
    best = [c for c in best if c[1].status != AGED_OUT] or best
    # a series group the patient is too young to start (the 50+ series of a child) does not compete
    best = [
        c
        for c in best
        if _is_risk(c[0].series) or add(patient.birth_date, c[0].series.min_age_to_start, DATE_MIN) <= on
    ] or best
    complete_groups = {ev.series.group for ev, fc in best if fc.status == COMPLETE}
    remaining = [
        (ev, fc)
        for ev, fc in best
        if fc.status == COMPLETE or not (set(ev.series.equivalent_groups) & complete_groups)
    ]
    if any(c[1].status != COMPLETE for c in remaining):
        # a group still needing a dose: the patient's risk series (complete or not) comes first
        return min(remaining, key=lambda c: (not _is_risk(c[0].series), c[0].series.priority, _gnum(c)))
    # every group complete: the one that counted the most doses, then priority
    return min(remaining, key=lambda c: (-len(c[0].valid_doses), c[0].series.priority, _gnum(c)))


def _best_in_group(
    items: list[tuple[SeriesEvaluation, SeriesForecast]], patient: Patient, on: date
) -> tuple[SeriesEvaluation, SeriesForecast]:
    if len(items) == 1:
        return items[0]
    # a risk series the patient is still too young to start does not compete (a 2-year-old's
    # 6-18 years series), unless nothing else is left
    items = [
        c
        for c in items
        if not _is_risk(c[0].series) or _age_between(patient, on, c[0].series.min_age_to_start, None)
    ] or items
    items = [c for c in items if c[0].valid_doses] or items  # series the history already counts for
    # ... and that the patient did not start too late (a 15-month-old's first dose does not start
    # the "start at 2 months" series; starting early is allowed: HPV 3-dose)
    items = [c for c in items if not c[0].valid_doses or _started_in_time(patient, c[0])] or items
    top = min(c[0].series.priority for c in items)  # then the group's highest-priority series
    items = [c for c in items if c[0].series.priority == top]
    complete = [c for c in items if c[0].complete or c[1].status == COMPLETE]
    if complete:
        # most valid doses, then the earliest completion, then the schedule's preference
        return min(
            complete, key=lambda c: (-len(c[0].valid_doses), _completion(c[0]), c[0].series.preference)
        )
    in_process = [c for c in items if c[0].valid_doses]
    if in_process:
        # an in-process series counts if it was started inside its age window
        started = [c for c in in_process if _started_in_window(patient, c[0])]
        pool = started or in_process
        scores = {id(c): 0 for c in pool}
        most_valid = max(len(c[0].valid_doses) for c in pool)
        fewest_left = min(_remaining(c[0]) for c in pool)
        earliest = min((c[1].earliest or DATE_MAX) for c in pool)
        for c in pool:
            if len(c[0].valid_doses) == most_valid:
                scores[id(c)] += 1
            if _remaining(c[0]) == fewest_left:
                scores[id(c)] += 1
            if (c[1].earliest or DATE_MAX) == earliest:
                scores[id(c)] += 1
            scores[id(c)] += 1 if c[1].status != AGED_OUT else -1  # can still finish
            if c[0].series.product_path:  # a product series counts only if the doses were that product
                products = set.intersection(*({v.cvx for v in t.preferable} for t in c[0].series.doses))
                scores[id(c)] += 1 if all(r.dose.cvx in products for r in c[0].results) else -1
        return max(pool, key=lambda c: (scores[id(c)], -c[0].series.preference))
    # no valid dose: the default series, else the most preferred one; among risk series, one the
    # patient's age allows to start
    eligible = [
        c
        for c in items
        if _is_risk(c[0].series) and _age_between(patient, on, None, c[0].series.max_age_to_start)
    ]
    return min(eligible or items, key=lambda c: (not c[0].series.default, c[0].series.preference))


def _started_in_window(patient: Patient, ev: SeriesEvaluation) -> bool:
    """Whether the series' first valid dose fell in its age window to start (the minimum with
    the 4-day grace: Heplisav-B at 18 years - 4 days starts the 18+ series)."""
    first = ev.valid_doses[0].dose.date
    return _age_between(patient, first + _GRACE, ev.series.min_age_to_start, None) and _age_between(
        patient, first, None, ev.series.max_age_to_start
    )


def _started_in_time(patient: Patient, ev: SeriesEvaluation) -> bool:
    return _age_between(patient, ev.valid_doses[0].dose.date, None, ev.series.max_age_to_start)


def _completion(ev: SeriesEvaluation) -> date:
    valid = ev.valid_doses
    return valid[-1].dose.date if valid else DATE_MIN


def _remaining(ev: SeriesEvaluation) -> int:
    return len(ev.series.doses) - ev.next_target


# --- vaccine group -----------------------------------------------------------------------------


def _group_forecast(name: str, administer_full: bool, results: list[AntigenResult]) -> GroupForecast:
    first = results[0]
    if len(results) == 1:
        fc = first.forecast
        return GroupForecast(
            name,
            fc.status,
            fc.dose_number,
            fc.earliest,
            fc.recommended,
            fc.past_due,
            fc.latest,
            fc.vaccines,
            first.evaluation.series.name if first.evaluation else None,
            fc.reason,
        )
    statuses = [r.forecast.status for r in results]
    due = [r for r in results if r.forecast.status == NOT_COMPLETE]
    if due:
        # The antigen due first leads the group's dates (after DT, Pertussis; after Td, Diphtheria),
        # never before the group's last dose; the dose number counts the most-vaccinated antigen.
        lead = min(due, key=lambda r: r.forecast.earliest or DATE_MAX)
        fc = lead.forecast
        vaccines = tuple(dict.fromkeys(v for r in due for v in r.forecast.vaccines))
        number = max(
            (r.forecast.dose_number for r in due if r.forecast.dose_number is not None), default=None
        )
        last = max(
            (r.evaluation.results[-1].dose.date for r in results if r.evaluation and r.evaluation.results),
            default=DATE_MIN,
        )
        earliest = max(fc.earliest, last) if fc.earliest else None
        recommended = max(fc.recommended, earliest) if fc.recommended and earliest else fc.recommended
        past_due = max(fc.past_due, earliest) if fc.past_due and earliest else fc.past_due
        if administer_full and len(due) > 1:
            # one product gives every antigen (MMR): the dose comes when all antigens may have it
            # and is due as soon as any antigen is
            fcs = [r.forecast for r in due]
            number = min(f.dose_number for f in fcs if f.dose_number is not None)
            earliest = max(f.earliest for f in fcs if f.earliest is not None)
            recommended = max(earliest, min(f.recommended for f in fcs if f.recommended is not None))
            dues = [f.past_due for f in fcs if f.past_due is not None]
            past_due = max(earliest, min(dues)) if dues else None
        return GroupForecast(
            name,
            NOT_COMPLETE,
            number,
            earliest,
            recommended,
            past_due,
            fc.latest,
            vaccines,
            lead.evaluation.series.name if lead.evaluation else None,
            fc.reason,
        )
    for status in (CONTRAINDICATED, COMPLETE, AGED_OUT, IMMUNE, NOT_RECOMMENDED):
        if status in statuses:
            r = results[statuses.index(status)]
            return GroupForecast(
                name,
                status,
                r.forecast.dose_number,
                None,
                None,
                None,
                None,
                (),
                r.evaluation.series.name if r.evaluation else None,
                r.forecast.reason,
            )
    return GroupForecast(name, statuses[0], None, None, None, None, None, (), None, first.forecast.reason)


def _gnum(c: tuple[SeriesEvaluation, SeriesForecast]) -> int:
    return _group_number(c[0].series)


def _is_risk(series: Series) -> bool:
    return _facts(series).risk


def _group_number(series: Series) -> int:
    return _facts(series).group_number
