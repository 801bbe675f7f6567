"""The schedule model (what a schedule says) and the engine's inputs and outputs.

A `Schedule` is plain data, independent of where it came from: the CDC supporting data is
parsed into it by `loader.py`, and a national schedule (Luxembourg) is converted into the same
classes. Names follow the CDSi supporting data so the Logic Specification reads directly on
them. Durations are `Duration` objects (calendar units); `None` means "not set" and takes the
CDSi default (no minimum, no maximum).
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

from .durations import Duration

# ---------------------------------------------------------------------------------------------
# Schedule data
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VaccineRule:
    """A vaccine (CVX) a target dose accepts, between two ages (preferable or allowable)."""

    cvx: str
    vaccine_type: str
    begin_age: Duration | None = None
    end_age: Duration | None = None
    mvx: str | None = None
    #: preferable vaccines only: whether to name this vaccine in the forecast
    forecast: bool = False
    #: provenance of a converted schedule (Luxembourg): V/P/I as the source marks it, source ids
    status: str | None = None
    sources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AgeRule:
    """Ages of a target dose; several may exist, each valid between effective/cessation dates."""

    abs_min: Duration | None = None
    min: Duration | None = None
    earliest_rec: Duration | None = None
    latest_rec: Duration | None = None
    max: Duration | None = None
    effective: date | None = None
    cessation: date | None = None
    #: provenance of a converted schedule (Luxembourg): V/P/I as the source marks it, source ids
    status: str | None = None
    sources: tuple[str, ...] = ()
    #: status of each value that has one ("min", "V"), ("latest_rec", "I")…; `status` is the weakest
    statuses: tuple[tuple[str, str], ...] = ()
    note: str | None = None


@dataclass(frozen=True, slots=True)
class IntervalRule:
    """An interval a dose must respect, from one reference point.

    Exactly one reference is set: the previous dose (`from_previous`), the dose that satisfied
    target dose n (`from_target_dose`, 1-based), the most recent dose of some vaccines
    (`from_most_recent`, CVX codes) or the date of an observation (`from_observation`).
    """

    from_previous: bool = False
    from_target_dose: int | None = None
    from_most_recent: frozenset[str] = frozenset()
    from_observation: str | None = None
    abs_min: Duration | None = None
    min: Duration | None = None
    earliest_rec: Duration | None = None
    latest_rec: Duration | None = None
    #: "override": this interval replaces the age-based recommended/past-due dates
    priority: str | None = None
    effective: date | None = None
    cessation: date | None = None
    #: provenance of a converted schedule (Luxembourg): V/P/I as the source marks it, source ids
    status: str | None = None
    sources: tuple[str, ...] = ()
    #: status of each value that has one ("min", "V"), ("latest_rec", "I")…; `status` is the weakest
    statuses: tuple[tuple[str, str], ...] = ()
    note: str | None = None


@dataclass(frozen=True, slots=True)
class SkipCondition:
    """One condition of a conditional-skip set.

    `kind`: "age", "interval", "vaccine count by age", "vaccine count by date", "completed series".
    """

    kind: str
    start_date: date | None = None
    end_date: date | None = None
    begin_age: Duration | None = None
    end_age: Duration | None = None
    interval: Duration | None = None
    dose_count: int | None = None
    #: "valid" or "total"
    dose_type: str | None = None
    #: "greater than", "equal to", "less than"
    dose_count_logic: str | None = None
    vaccine_types: frozenset[str] = frozenset()
    series_groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SkipSet:
    """Conditions combined with AND/OR; the set is met when its conditions are."""

    set_id: str
    description: str
    conditions: tuple[SkipCondition, ...]
    logic: str = "AND"
    effective: date | None = None
    cessation: date | None = None


@dataclass(frozen=True, slots=True)
class ConditionalSkip:
    """When a target dose is skipped; `context` is Evaluation, Forecast or Both."""

    context: str
    sets: tuple[SkipSet, ...]
    #: how sets combine: "AND" or "OR" ("n/a" with a single set)
    set_logic: str = "OR"


@dataclass(frozen=True, slots=True)
class YearlySeason:
    """A season that comes back every year between two days of the year (influenza October to
    March, RSV September to February), as national schedules state it; CDC's supporting data
    instead republishes absolute dates (`TargetDose.season_start`/`season_end`) every year.

    `start` and `end` are (month, day), both inclusive; an end before the start in the year means
    the season runs into the next year, and an end day past the month's length is its last day
    (29 February in a leap year only)."""

    start: tuple[int, int]
    end: tuple[int, int]
    #: provenance of a converted schedule (Luxembourg): V/P/I as the source marks it, source ids
    status: str | None = None
    sources: tuple[str, ...] = ()

    def starting_in(self, year: int) -> tuple[date, date]:
        """The season that starts in `year`: (first day, last day)."""
        first = _day_of(year, self.start)
        last = _day_of(year if self.end >= self.start else year + 1, self.end)
        return first, last

    def current(self, on: date) -> tuple[date, date] | None:
        """The season `on` falls in, if any."""
        for year in (on.year, on.year - 1):
            first, last = self.starting_in(year)
            if first <= on <= last:
                return first, last
        return None

    def next_start(self, on: date) -> date:
        """The first day of the first season that starts after `on`."""
        first = _day_of(on.year, self.start)
        return first if first > on else _day_of(on.year + 1, self.start)

    def __str__(self) -> str:
        (sm, sd), (em, ed) = self.start, self.end
        last = ed >= calendar.monthrange(2000, em)[1]  # 2000: a leap year
        end = f"end of {_MONTHS[em - 1]}" if last else f"{_MONTHS[em - 1]} {ed}"
        return f"{_MONTHS[sm - 1]} {sd} to {end}"


_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def _day_of(year: int, month_day: tuple[int, int]) -> date:
    month, day = month_day
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


@dataclass(frozen=True, slots=True)
class TargetDose:
    """One dose of a series: what makes an administered dose count for it."""

    number: int
    ages: tuple[AgeRule, ...]
    intervals: tuple[IntervalRule, ...] = ()
    allowable_intervals: tuple[IntervalRule, ...] = ()
    preferable: tuple[VaccineRule, ...] = ()
    allowable: tuple[VaccineRule, ...] = ()
    inadvertent: frozenset[str] = frozenset()
    skips: tuple[ConditionalSkip, ...] = ()
    #: the dose repeats (annual influenza, boosters) once reached
    recurring: bool = False
    season_start: date | None = None
    season_end: date | None = None
    #: a season that recurs every year: the dose is due from its start, one given in it completes
    #: a recurring dose until the next season (national schedules; CDC's data uses the dates above)
    yearly_season: YearlySeason | None = None
    #: provenance of a converted schedule (Luxembourg): V/P/I as the source marks it, source ids
    status: str | None = None
    sources: tuple[str, ...] = ()
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Indication:
    """A risk series applies to patients with this observation between two ages."""

    observation: str
    description: str
    begin_age: Duration | None = None
    end_age: Duration | None = None


@dataclass(frozen=True, slots=True)
class Series:
    """A way to be protected against one antigen (standard or risk series)."""

    name: str
    antigen: str
    vaccine_group: str
    series_type: str
    doses: tuple[TargetDose, ...]
    default: bool = False
    product_path: bool = False
    group: str = "1"
    group_name: str = ""
    priority: str = "A"
    preference: int = 1
    min_age_to_start: Duration | None = None
    max_age_to_start: Duration | None = None
    #: "F", "M" or "U" (unknown); empty: any
    required_gender: frozenset[str] = frozenset()
    equivalent_groups: tuple[str, ...] = ()
    indications: tuple[Indication, ...] = ()
    #: provenance of a converted schedule (Luxembourg): V/P/I as the source marks it, source ids
    status: str | None = None
    sources: tuple[str, ...] = ()
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Contraindication:
    """An observation that contraindicates the antigen (`cvx` empty) or some of its vaccines."""

    observation: str
    text: str
    begin_age: Duration | None = None
    end_age: Duration | None = None
    cvx: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Antigen:
    """An antigen's series, contraindications and evidence of immunity."""

    name: str
    series: tuple[Series, ...]
    contraindications: tuple[Contraindication, ...] = ()
    #: observations that prove immunity (laboratory evidence, disease history)
    immunity_observations: frozenset[str] = frozenset()
    #: born before this date: immune (e.g. measles, 1957), unless an exclusion observation applies
    immunity_birth_date: date | None = None
    immunity_exclusions: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class LiveVirusConflict:
    """A live vaccine given within [begin, end) of another live vaccine is not valid."""

    previous_cvx: str
    current_cvx: str
    begin: Duration
    min_end: Duration
    end: Duration


@dataclass(frozen=True, slots=True)
class CvxAntigen:
    """A CVX code counts for an antigen when given between two ages."""

    antigen: str
    begin_age: Duration | None = None
    end_age: Duration | None = None


@dataclass(frozen=True, slots=True)
class Observation:
    """A CDSi observation (indication, contraindication, immunity evidence) and its codings."""

    code: str
    title: str
    #: (system URI, code) pairs that mean this observation
    codings: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class VaccineGroup:
    """Antigens forecast together; `administer_full` (MMR): always give every antigen."""

    name: str
    antigens: tuple[str, ...]
    administer_full: bool = False


@dataclass(frozen=True, slots=True)
class ProvenanceItem:
    """A schedule item and how far its source supports it (V verified, P partly, I inferred)."""

    path: str
    status: str
    sources: tuple[str, ...] = ()
    note: str | None = None


@dataclass(frozen=True)
class Schedule:
    """A whole schedule: antigens, vaccine groups, CVX map, live-virus conflicts, observations."""

    name: str
    antigens: dict[str, Antigen]
    groups: dict[str, VaccineGroup]
    cvx_antigens: dict[str, tuple[CvxAntigen, ...]]
    live_conflicts: dict[str, tuple[LiveVirusConflict, ...]]
    observations: dict[str, Observation]
    _by_coding: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict, repr=False)
    #: schedule-wide provenance (grace period, live-virus spacing, CVX crosswalk…) of a converted schedule
    assumptions: tuple[ProvenanceItem, ...] = ()

    def __post_init__(self) -> None:
        index: dict[tuple[str, str], set[str]] = {}
        for obs in self.observations.values():
            for system, code in obs.codings:
                index.setdefault((system, code.strip()), set()).add(obs.code)
        self._by_coding.update({k: frozenset(v) for k, v in index.items()})

    @property
    def vaccine_groups(self) -> tuple[str, ...]:
        """Vaccine-group names exactly as the schedule spells them."""
        return tuple(self.groups)

    def observations_from_codes(self, codings: Iterable[tuple[str, str]]) -> frozenset[str]:
        """CDSi observation codes meant by (system, code) pairs (SNOMED CT, ICD-10, CVX, PHIN VS)."""
        found: set[str] = set()
        for system, code in codings:
            for canonical in _SYSTEM_ALIASES.get(system, (system,)):
                found |= self._by_coding.get((canonical, code.strip()), frozenset())
                if canonical in _SYSTEM_ALIASES and "." in code:
                    # an ICD-10 subcode ("E11.65") also means its category ("E11.6", "E11")
                    stem = code.strip()
                    while "." in stem:
                        stem = stem[:-1].rstrip(".")
                        found |= self._by_coding.get((canonical, stem), frozenset())
        return frozenset(found)

    def observation_title(self, code: str) -> str:
        """The observation's title ("Smoke cigarettes"); the code itself if unknown."""
        obs = self.observations.get(code)
        return obs.title if obs else code

    def unconfirmed(self, statuses: Iterable[str] = ("I",)) -> tuple[ProvenanceItem, ...]:
        """Every item whose source status is in `statuses` (default: inferred, to be confirmed),
        with its path, so unconfirmed data stays visible (empty for CDC's supporting data)."""
        wanted = frozenset(statuses)
        items = [a for a in self.assumptions if a.status in wanted]
        for antigen in self.antigens.values():
            for series in antigen.series:
                items.extend(series_provenance(antigen.name, series, wanted))
        return tuple(items)


def series_provenance(
    antigen: str, series: Series, wanted: frozenset[str], doses: Iterable[TargetDose] | None = None
) -> list[ProvenanceItem]:
    """The items of `series` (or of some of its `doses` only) whose status is in `wanted`."""
    base = f"{antigen} / {series.name}"
    found: list[ProvenanceItem] = []
    if series.status in wanted:
        found.append(ProvenanceItem(base, series.status or "", series.sources, series.note))
    for dose in series.doses if doses is None else doses:
        at = f"{base} / dose {dose.number}"
        if dose.status in wanted:
            found.append(ProvenanceItem(at, dose.status or "", dose.sources, dose.note))
        rules: list[tuple[str, AgeRule | IntervalRule]] = [("age", a) for a in dose.ages]
        rules += [(_interval_label(i), i) for i in dose.intervals]
        for label, rule in rules:
            for name, status in rule.statuses:
                if status in wanted:
                    path = f"{at} / {label} {name} = {getattr(rule, name)}"
                    found.append(ProvenanceItem(path, status, rule.sources, _note_for(rule.note, name)))
    return found


def _note_for(note: str | None, name: str) -> str | None:
    """The part of a rule's note about one value ("latest_rec: …" among parts joined by " | ")."""
    parts = (note or "").split(" | ")
    return next((p.removeprefix(f"{name}: ") for p in parts if p.startswith(f"{name}: ")), note)


def _interval_label(rule: IntervalRule) -> str:
    if rule.from_previous:
        return "interval from the previous dose"
    if rule.from_target_dose is not None:
        return f"interval from dose {rule.from_target_dose}"
    if rule.from_observation is not None:
        return f"interval from observation {rule.from_observation}"
    return "interval from the most recent " + "/".join(sorted(rule.from_most_recent))


SNOMED = "http://snomed.info/sct"
CVX = "http://hl7.org/fhir/sid/cvx"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
PHINVS = "urn:oid:2.16.840.1.114222.4.5.274"  # CDC PHIN VS (vaccination contraindications, VXC…)

#: ICD-10 and ICD-10-CM codes are looked up under both systems.
_SYSTEM_ALIASES: dict[str, tuple[str, ...]] = {ICD10: (ICD10, ICD10CM), ICD10CM: (ICD10CM, ICD10)}

# ---------------------------------------------------------------------------------------------
# Engine inputs and outputs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Patient:
    """What the engine needs to know of a person (gender "M"/"F"/None; CDSi observation codes)."""

    birth_date: date
    gender: str | None
    observations: frozenset[str] = frozenset()
    #: dates of observations that intervals run from ("171": date of the stem cell transplant)
    observation_dates: tuple[tuple[str, date], ...] = ()

    def observation_date(self, code: str) -> date | None:
        """When the observation `code` was made, if known."""
        return next((d for c, d in self.observation_dates if c == code), None)


@dataclass(frozen=True, slots=True)
class AdministeredDose:
    """A dose given (`ref` identifies it in the caller's data, e.g. an Immunization id)."""

    ref: str
    date: date
    cvx: str
    mvx: str | None = None


@dataclass(frozen=True, slots=True)
class DoseEvaluation:
    """How one dose counted for one antigen: Valid, Not Valid, Extraneous or Sub standard."""

    ref: str
    date: date
    cvx: str
    vaccine_group: str
    antigen: str
    status: str
    reason: str | None
    series: str | None
    dose_number: int | None


@dataclass(frozen=True, slots=True)
class GroupForecast:
    """The forecast for one vaccine group (status, next dose number and dates)."""

    vaccine_group: str
    status: str
    dose_number: int | None
    earliest: date | None
    recommended: date | None
    past_due: date | None
    latest: date | None
    vaccines: tuple[str, ...]
    series: str | None
    reason: str | None
    #: paths of unconfirmed schedule data (status I) this forecast rests on (see `Schedule.unconfirmed`)
    unconfirmed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Forecast:
    """Every dose evaluation and every vaccine group's forecast at the assessment date."""

    assessment_date: date
    evaluations: tuple[DoseEvaluation, ...]
    groups: tuple[GroupForecast, ...]

    def group(self, name: str) -> GroupForecast | None:
        """The forecast of the vaccine group named `name`, if the schedule has it."""
        return next((g for g in self.groups if g.vaccine_group == name), None)
