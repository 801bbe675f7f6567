"""Loading schedules: CDC's CDSi supporting data (XML) into the `Schedule` model.

Schedules are parsed once per process and cached (`load_schedule`). The registry maps a name
to a loader so other schedules (the Luxembourg one) plug in without touching the engine.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import date, datetime
from functools import cache
from pathlib import Path

from .durations import Duration, parse_duration
from .model import (
    CVX,
    PHINVS,
    SNOMED,
    AgeRule,
    Antigen,
    ConditionalSkip,
    Contraindication,
    CvxAntigen,
    Indication,
    IntervalRule,
    LiveVirusConflict,
    Observation,
    Schedule,
    Series,
    SkipCondition,
    SkipSet,
    TargetDose,
    VaccineGroup,
    VaccineRule,
)

CDC_DATA = Path(__file__).resolve().parent.parent / "data" / "cdsi-4.64"

_SYSTEMS = {"SNOMED": SNOMED, "CVX": CVX, "CDCPHINVS": PHINVS}

#: Known typos in CDC's coded values, corrected at load time (the vendored files stay CDC's):
#: observation 095's SNOMED CT code has a doubled leading digit.
_CODE_FIXES = {(SNOMED, "2219088009"): "219088009"}


class UnknownSchedule(ValueError):
    """No schedule of that name is registered."""


_REGISTRY: dict[str, Callable[[], Schedule]] = {}


def register_schedule(name: str, loader: Callable[[], Schedule]) -> None:
    """Make `load_schedule(name)` build the schedule with `loader` (called once, then cached)."""
    _REGISTRY[name] = loader
    _cached.cache_clear()


def load_schedule(name: str = "cdc") -> Schedule:
    """The schedule named `name` ("cdc": CDC's CDSi supporting data), parsed once per process.

    Raises `UnknownSchedule` for a name no loader is registered for.
    """
    if name not in _REGISTRY:
        raise UnknownSchedule(f"unknown schedule {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    return _cached(name)


@cache
def _cached(name: str) -> Schedule:
    return _REGISTRY[name]()


# --- XML helpers -------------------------------------------------------------------------------


def _text(el: ET.Element | None, tag: str) -> str:
    if el is None:
        return ""
    child = el.find(tag)
    return (child.text or "").strip() if child is not None else ""


def _dur(el: ET.Element | None, tag: str) -> Duration | None:
    return parse_duration(_text(el, tag))


def _date(text: str) -> date | None:
    text = text.strip()
    if not text:
        return None
    for fmt in ("%Y%m%d", "%m/%d/%Y", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise ValueError(f"not a supporting-data date: {text!r}")


def _codes(text: str) -> frozenset[str]:
    return frozenset(c.strip() for c in text.split(";") if c.strip())


# --- antigen files -----------------------------------------------------------------------------


def _vaccine(el: ET.Element, preferable: bool) -> VaccineRule:
    return VaccineRule(
        cvx=_text(el, "cvx"),
        vaccine_type=_text(el, "vaccineType"),
        begin_age=_dur(el, "beginAge"),
        end_age=_dur(el, "endAge"),
        mvx=_text(el, "mvx") or None,
        forecast=preferable and _text(el, "forecastVaccineType") == "Y",
    )


def _interval(el: ET.Element) -> IntervalRule:
    target = _text(el, "fromTargetDose")
    obs = el.find("fromRelevantObs")
    return IntervalRule(
        from_previous=_text(el, "fromPrevious") == "Y",
        from_target_dose=int(target) if target else None,
        from_most_recent=_codes(_text(el, "fromMostRecent")),
        from_observation=_text(obs, "code") or None,
        abs_min=_dur(el, "absMinInt"),
        min=_dur(el, "minInt"),
        earliest_rec=_dur(el, "earliestRecInt"),
        latest_rec=_dur(el, "latestRecInt"),
        priority=_text(el, "intervalPriority").lower() or None,
        effective=_date(_text(el, "effectiveDate")),
        cessation=_date(_text(el, "cessationDate")),
    )


def _skip(el: ET.Element) -> ConditionalSkip:
    sets = []
    for s in el.findall("set"):
        conditions = []
        for c in s.findall("condition"):
            count = _text(c, "doseCount")
            conditions.append(
                SkipCondition(
                    kind=_text(c, "conditionType").lower(),
                    start_date=_date(_text(c, "startDate")),
                    end_date=_date(_text(c, "endDate")),
                    begin_age=_dur(c, "beginAge"),
                    end_age=_dur(c, "endAge"),
                    interval=_dur(c, "interval"),
                    dose_count=int(count) if count else None,
                    dose_type=_text(c, "doseType").lower() or None,
                    dose_count_logic=_text(c, "doseCountLogic").lower() or None,
                    vaccine_types=_codes(_text(c, "vaccineTypes")),
                    series_groups=tuple(_codes(_text(c, "seriesGroups"))),
                )
            )
        sets.append(
            SkipSet(
                set_id=_text(s, "setID"),
                description=_text(s, "setDescription"),
                conditions=tuple(conditions),
                logic=(_text(s, "conditionLogic") or "AND").upper(),
                effective=_date(_text(s, "effectiveDate")),
                cessation=_date(_text(s, "cessationDate")),
            )
        )
    return ConditionalSkip(
        context=_text(el, "context"), sets=tuple(sets), set_logic=(_text(el, "setLogic") or "OR").upper()
    )


def _target_dose(el: ET.Element) -> TargetDose:
    ages = tuple(
        AgeRule(
            abs_min=_dur(a, "absMinAge"),
            min=_dur(a, "minAge"),
            earliest_rec=_dur(a, "earliestRecAge"),
            latest_rec=_dur(a, "latestRecAge"),
            max=_dur(a, "maxAge"),
            effective=_date(_text(a, "effectiveDate")),
            cessation=_date(_text(a, "cessationDate")),
        )
        for a in el.findall("age")
    )
    season = el.find("seasonalRecommendation")
    return TargetDose(
        number=int(_text(el, "doseNumber").split()[-1]),
        ages=ages or (AgeRule(),),
        intervals=tuple(_interval(i) for i in el.findall("interval") if len(i)),
        allowable_intervals=tuple(_interval(i) for i in el.findall("allowableInterval") if len(i)),
        preferable=tuple(_vaccine(v, True) for v in el.findall("preferableVaccine") if len(v)),
        allowable=tuple(_vaccine(v, False) for v in el.findall("allowableVaccine") if len(v)),
        inadvertent=frozenset(_text(v, "cvx") for v in el.findall("inadvertentVaccine") if len(v)),
        skips=tuple(_skip(s) for s in el.findall("conditionalSkip") if len(s)),
        recurring=_text(el, "recurringDose") == "Yes",
        season_start=_date(_text(season, "startDate")),
        season_end=_date(_text(season, "endDate")),
    )


_GENDERS = {"female": "F", "male": "M", "unknown": "U"}


def _series(el: ET.Element) -> Series:
    select = el.find("selectSeries")
    preference = _text(select, "seriesPreference")
    return Series(
        name=_text(el, "seriesName"),
        antigen=_text(el, "targetDisease"),
        vaccine_group=_text(el, "vaccineGroup"),
        series_type=_text(el, "seriesType"),
        doses=tuple(_target_dose(d) for d in el.findall("seriesDose")),
        default=_text(select, "defaultSeries") == "Yes",
        product_path=_text(select, "productPath") == "Yes",
        group=_text(select, "seriesGroup") or "1",
        group_name=_text(select, "seriesGroupName"),
        priority=_text(select, "seriesPriority") or "A",
        preference=int(preference) if preference else 1,
        min_age_to_start=_dur(select, "minAgeToStart"),
        max_age_to_start=_dur(select, "maxAgeToStart"),
        required_gender=frozenset(
            _GENDERS[(g.text or "").strip().lower()]
            for g in el.findall("requiredGender")
            if (g.text or "").strip()
        ),
        equivalent_groups=tuple(_codes(_text(el, "equivalentSeriesGroups"))),
        indications=tuple(
            Indication(
                observation=_text(i.find("observationCode"), "code"),
                description=_text(i, "description"),
                begin_age=_dur(i, "beginAge"),
                end_age=_dur(i, "endAge"),
            )
            for i in el.findall("indication")
            if len(i)
        ),
    )


def _antigen(path: Path) -> Antigen:
    root = ET.parse(path).getroot()
    series = tuple(_series(s) for s in root.findall("series"))
    contraindications: list[Contraindication] = []
    for c in root.findall("contraindications/vaccineGroup/contraindication"):
        contraindications.append(
            Contraindication(
                observation=_text(c, "observationCode"),
                text=_text(c, "contraindicationText"),
                begin_age=_dur(c, "beginAge"),
                end_age=_dur(c, "endAge"),
            )
        )
    for c in root.findall("contraindications/vaccine/contraindication"):
        # Ages are per contraindicated vaccine; group vaccines sharing the same age range.
        by_ages: dict[tuple[Duration | None, Duration | None], set[str]] = {}
        for v in c.findall("contraindicatedVaccine"):
            by_ages.setdefault((_dur(v, "beginAge"), _dur(v, "endAge")), set()).add(_text(v, "cvx"))
        for (begin, end), cvxs in by_ages.items():
            contraindications.append(
                Contraindication(
                    observation=_text(c, "observationCode"),
                    text=_text(c, "contraindicationText"),
                    begin_age=begin,
                    end_age=end,
                    cvx=frozenset(cvxs),
                )
            )
    immunity = root.find("immunity")
    birth = immunity.find("dateOfBirth") if immunity is not None else None
    name = series[0].antigen if series else path.stem.removeprefix("antigen-")
    return Antigen(
        name=name,
        series=series,
        contraindications=tuple(contraindications),
        immunity_observations=frozenset(
            _text(h, "guidelineCode") for h in root.findall("immunity/clinicalHistory")
        ),
        immunity_birth_date=_date(_text(birth, "immunityBirthDate")) if birth is not None else None,
        immunity_exclusions=frozenset(
            _text(x, "exclusionCode") for x in root.findall("immunity/dateOfBirth/exclusion")
        ),
    )


def _coding(el: ET.Element) -> tuple[str, str]:
    system = _SYSTEMS.get(_text(el, "codeSystem"), _text(el, "codeSystem"))
    code = _text(el, "code")
    return system, _CODE_FIXES.get((system, code), code)


def load_cdsi_supporting_data(folder: Path = CDC_DATA, name: str = "cdc") -> Schedule:
    """Parse a folder of CDSi supporting data (ScheduleSupportingData.xml + antigen-*.xml)."""
    root = ET.parse(folder / "ScheduleSupportingData.xml").getroot()
    antigens = {a.name: a for a in (_antigen(p) for p in sorted(folder.glob("antigen-*.xml")))}
    full = {
        _text(g, "name"): _text(g, "administerFullVaccineGroup") == "Yes" for g in root.iter("vaccineGroup")
    }
    groups = {
        _text(m, "name"): VaccineGroup(
            name=_text(m, "name"),
            antigens=tuple((a.text or "").strip() for a in m.findall("antigen")),
            administer_full=full.get(_text(m, "name"), False),
        )
        for m in root.iter("vaccineGroupMap")
    }
    cvx_antigens = {
        _text(m, "cvx"): tuple(
            CvxAntigen(_text(a, "antigen"), _dur(a, "associationBeginAge"), _dur(a, "associationEndAge"))
            for a in m.findall("association")
        )
        for m in root.iter("cvxMap")
    }
    conflicts: dict[str, list[LiveVirusConflict]] = {}
    for c in root.iter("liveVirusConflict"):
        conflict = LiveVirusConflict(
            previous_cvx=_text(c.find("previous"), "cvx"),
            current_cvx=_text(c.find("current"), "cvx"),
            begin=parse_duration(_text(c, "conflictBeginInterval")) or Duration(),
            min_end=parse_duration(_text(c, "minConflictEndInterval")) or Duration(),
            end=parse_duration(_text(c, "conflictEndInterval")) or Duration(),
        )
        conflicts.setdefault(conflict.current_cvx, []).append(conflict)
    observations = {
        _text(o, "observationCode"): Observation(
            code=_text(o, "observationCode"),
            title=_text(o, "observationTitle"),
            codings=tuple(_coding(v) for v in o.findall("codedValues/codedValue")),
        )
        for o in root.iter("observation")
    }
    return Schedule(
        name=name,
        antigens=antigens,
        groups=groups,
        cvx_antigens=cvx_antigens,
        live_conflicts={k: tuple(v) for k, v in conflicts.items()},
        observations=observations,
    )


register_schedule("cdc", load_cdsi_supporting_data)
