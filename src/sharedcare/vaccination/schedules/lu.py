"""The Luxembourg national schedule: the YAML draft converted into the CDSi `Schedule` model.

The draft (``data/lu-schedule.yaml``, a vendored copy of ../shared/data/schedules/) describes the
calendar in prose-like items (ages, intervals, populations), each with a status V (verified), P
(partly verified) or I (inferred) and its source ids. The engine needs CDSi target doses, so this
module maps every item onto series of the CDC antigens (so CDC's CVX→antigen map and live-virus
conflicts apply unchanged) and keeps each value's status and sources on the model objects:
`Schedule.unconfirmed()` lists every [I] value, and `schedules.provenance.annotate` flags the
forecasts that rest on one. Values the draft leaves out follow its header: the strictest product
value, else a generic CDSi-style value, always marked I with the reason in the item's note.

The structure (which YAML item feeds which series and target dose) is code; the numbers are read
from the YAML, so a corrected draft flows through without touching this file unless an item is
added or renamed (see docs/vaccination-schedules.md, "Updating").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from sharedcare.vaccination.cdsi.durations import Duration
from sharedcare.vaccination.cdsi.loader import load_schedule, register_schedule
from sharedcare.vaccination.cdsi.model import (
    ICD10,
    SNOMED,
    AgeRule,
    Antigen,
    ConditionalSkip,
    Indication,
    IntervalRule,
    Observation,
    ProvenanceItem,
    Schedule,
    Series,
    SkipCondition,
    SkipSet,
    TargetDose,
    VaccineGroup,
    VaccineRule,
    YearlySeason,
)

LU_DATA = Path(__file__).resolve().parent.parent / "data" / "lu-schedule.yaml"

LOINC = "http://loinc.org"
PRACTITIONER_ROLE = "http://terminology.hl7.org/CodeSystem/practitioner-role"
ISCO08 = "http://www.ilo.org/public/english/bureau/stat/isco/isco08"

#: where a value comes from when the YAML has none (the header's "generic CDSi-style" rule)
GENERIC = "generic"
#: the CDC supporting data, where a generic value is taken from it
CDC = "CDC CDSi 4.64"

#: CVX codes of the draft that CDC's CVX→antigen map does not carry, and why that is harmless
UNMAPPED_CVX = {"19": "BCG: listed among the draft's codes but not in the calendar; CDC has no BCG antigen"}

# LU-only observation codes (CDSi-style); every other code is CDC's, so CDC's codings apply.
PREMATURE = "LU01"
HBSAG_MOTHER = "LU02"
CARE_STAFF = "LU03"
# CDC observation codes the Luxembourg schedule uses
PREGNANT, PREGNANCY_ONSET = "007", "170"
IMMUNOCOMPROMISED, HSCT, HIV, TRANSPLANT, IMMUNOSUPPRESSIVE, CHEMOTHERAPY = (
    "003",
    "004",
    "186",
    "157",
    "158",
    "168",
)
DIABETES, HEART, LUNG, ASTHMA, RENAL, CKD, ESRD = "014", "016", "017", "027", "066", "161", "114"
CSF_LEAK, COCHLEAR, ASPLENIA, SMOKER, ALCOHOL, LIVER = "010", "011", "160", "042", "043", "015"
CARDIOVASCULAR, COPD, NEUROMUSCULAR, HAEMOGLOBINOPATHY, SICKLE = "254", "214", "260", "279", "259"
ASPIRIN, MSM, HEALTH_WORKER, CANCER, LEUKEMIA, LYMPHOMA = "034", "036", "055", "198", "178", "179"
#: chronic respiratory, cardiac and renal disease, diabetes; reduced immunity (shared risk groups)
CHRONIC = (LUNG, COPD, ASTHMA, HEART, CARDIOVASCULAR, RENAL, CKD, ESRD, DIABETES)
IMMUNODEFICIENT = (IMMUNOCOMPROMISED, HIV, TRANSPLANT, IMMUNOSUPPRESSIVE)

_ISO = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?$")
_RANK = {"I": 0, "P": 1, "V": 2}


def iso(text: str) -> Duration:
    """An ISO 8601 duration of the draft ("P2M", "P6W", "P10Y", "P0D") as a CDSi calendar duration."""
    m = _ISO.match(text.strip())
    if not m or text.strip() == "P":
        raise ValueError(f"not an ISO 8601 duration the schedule uses: {text!r}")
    years, months, weeks, days = (int(g) if g else 0 for g in m.groups())
    return Duration(years, months, weeks, days)


def _plus(a: Duration, b: Duration) -> Duration:
    return Duration(a.years + b.years, a.months + b.months, a.weeks + b.weeks, a.days + b.days)


def _one_unit(d: Duration) -> Duration:
    """One of the duration's largest unit: "15-23 months" runs to the end of month 23 (24 months)."""
    if d.years:
        return Duration(years=1)
    if d.months:
        return Duration(months=1)
    return Duration(weeks=1) if d.weeks else Duration(days=1)


def _sources(node: Any) -> tuple[str, ...]:
    if node is None:
        return ()
    return tuple(str(s) for s in node) if isinstance(node, list) else (str(node),)


def weakest(statuses: Iterable[str | None]) -> str | None:
    """The weakest of V/P/I (None when no value carries a status)."""
    known = [s for s in statuses if s in _RANK]
    return min(known, key=_RANK.__getitem__) if known else None


@dataclass(frozen=True, slots=True)
class Val:
    """A value of the schedule with its provenance."""

    value: Duration
    status: str | None
    sources: tuple[str, ...] = ()
    note: str | None = None


def val(node: Any, status: str | None = None, sources: tuple[str, ...] = (), note: str | None = None) -> Val:
    """A YAML value: a bare ISO duration (status of its item) or {value, status, source, note}."""
    if isinstance(node, Mapping):
        return Val(
            iso(str(node["value"])),
            str(node.get("status") or status or "") or None,
            _sources(node.get("source")) or sources,
            node.get("note") or note,
        )
    return Val(iso(str(node)), status, sources, note)


def generic(value: str, note: str, source: str = GENERIC) -> Val:
    """A value the draft does not give (marked I, with why this value)."""
    return Val(iso(value), "I", (source,), note)


def due_after(rec: Val) -> Val:
    """Past-due age for a single recommended age: not published, so the CDSi infant pattern."""
    return Val(
        _plus(rec.value, Duration(months=1, weeks=4)),
        "I",
        (GENERIC,),
        "past-due age not published: recommended age + 1 month + 4 weeks (CDSi pattern for infant doses)",
    )


def window(node: Sequence[str], status: str | None, sources: tuple[str, ...]) -> tuple[Val, Val]:
    """A recommended age range [from, to]: recommended at `from`, past due after the `to` unit."""
    start, end = iso(str(node[0])), iso(str(node[1]))
    return Val(start, status, sources), Val(_plus(end, _one_unit(end)), status, sources)


#: a rule's note holds one "field: text" part per value (see `cdsi.model.series_provenance`)
NOTE_SEPARATOR = " | "


def _provenance(values: Mapping[str, Val | None]) -> dict[str, Any]:
    present = {k: v for k, v in values.items() if v is not None}
    sources = tuple(dict.fromkeys(s for v in present.values() for s in v.sources))
    notes = [f"{k}: {v.note}" for k, v in present.items() if v.note]
    return {
        "status": weakest(v.status for v in present.values()),
        "sources": sources,
        "statuses": tuple((k, v.status) for k, v in present.items() if v.status),
        "note": NOTE_SEPARATOR.join(notes) or None,
    }


def age(
    min: Val | None = None, rec: Val | None = None, due: Val | None = None, max: Val | None = None
) -> AgeRule:
    """An age rule; the absolute minimum is the minimum less the CDSi 4-day grace (an assumption)."""
    abs_min = None
    if min is not None:
        abs_min = Val(
            _plus(min.value, Duration(days=-4)) if min.value != Duration() else min.value, min.status
        )
    values = {"abs_min": abs_min, "min": min, "earliest_rec": rec, "latest_rec": due, "max": max}
    return AgeRule(
        abs_min=abs_min.value if abs_min else None,
        min=min.value if min else None,
        earliest_rec=rec.value if rec else None,
        latest_rec=due.value if due else None,
        max=max.value if max else None,
        **_provenance({k: v for k, v in values.items() if k != "abs_min"}),
    )


def interval(
    min: Val | None = None,
    rec: Val | None = None,
    due: Val | None = None,
    *,
    from_observation: str | None = None,
) -> IntervalRule:
    """An interval from the previous dose (or from the date of an observation)."""
    values = {"min": min, "earliest_rec": rec, "latest_rec": due}
    return IntervalRule(
        from_previous=from_observation is None,
        from_observation=from_observation,
        abs_min=_plus(min.value, Duration(days=-4)) if min else None,
        min=min.value if min else None,
        earliest_rec=rec.value if rec else None,
        latest_rec=due.value if due else None,
        **_provenance(values),
    )


def _count_skip(description: str, more_than: int, begin_age: Duration | None = None) -> ConditionalSkip:
    """Skip the dose when more than `more_than` valid doses were given from `begin_age` on."""
    condition = SkipCondition(
        kind="vaccine count by age",
        begin_age=begin_age,
        dose_count=more_than,
        dose_type="valid",
        dose_count_logic="greater than",
    )
    return ConditionalSkip("Both", (SkipSet("1", description, (condition,)),), "n/a")


def _rv1_skip() -> ConditionalSkip:
    condition = SkipCondition(
        kind="vaccine count by age",
        dose_count=1,
        dose_type="valid",
        dose_count_logic="greater than",
        vaccine_types=frozenset({"119"}),
    )
    text = "Dose 3 only with a 3-dose product: not needed after two RV1 (Rotarix) doses"
    return ConditionalSkip("Both", (SkipSet("1", text, (condition,)),), "n/a")


_MONTH_NAMES: tuple[str, ...] = ("january", "february", "march", "april", "may", "june", "july")
_MONTH_NAMES += ("august", "september", "october", "november", "december")
_SEASON = re.compile(r"\b([A-Za-z]+)\s*-\s*([A-Za-z]+)\b")


def yearly_season(text: str, status: str | None, sources: tuple[str, ...]) -> YearlySeason:
    """The season named in the draft's text ("October-March", "RSV season (September-February)"):
    from the first day of the first month to the last day of the second, every year."""
    for first, last in _SEASON.findall(text):
        if first.lower() in _MONTH_NAMES and last.lower() in _MONTH_NAMES:
            start = (_MONTH_NAMES.index(first.lower()) + 1, 1)
            return YearlySeason(start, (_MONTH_NAMES.index(last.lower()) + 1, 31), status, sources)
    raise ValueError(f"no season (Month-Month) in {text!r}")


class _Draft:
    """The parsed YAML with lookups by item id and product key."""

    def __init__(self, data: Mapping[str, Any], cdc: Schedule) -> None:
        self.data = data
        self.items: dict[str, Mapping[str, Any]] = {i["id"]: i for i in data["schedule"]}
        self.codes: Mapping[str, Any] = data["antigen_codes"]
        self.cdc = cdc

    def dose(self, item: str, number: int) -> Mapping[str, Any]:
        return next(d for d in self.items[item]["doses"] if d["dose"] == number)

    def dose_meta(self, item: str, number: int) -> dict[str, Any]:
        d = self.dose(item, number)
        return {"status": d.get("status"), "sources": _sources(d.get("source")), "note": d.get("note")}

    def cvx(self, product: str) -> list[tuple[str, str, str | None]]:
        """(CVX, label, status) of a product key of `antigen_codes` (none for EU-only products)."""
        node = self.codes[product].get("cvx") or {}
        status = node.get("status")
        if node.get("codes"):
            return [(str(c), f"{product}: {label}", status) for c, label in node["codes"].items()]
        return [(str(node["code"]), product, status)] if node.get("code") else []

    def vaccines(
        self,
        antigen: str,
        products: Sequence[str],
        *,
        crosswalk: Sequence[tuple[str, str]] = (),
        cdc_dose: tuple[int, int] | None = (0, 0),
    ) -> dict[str, Any]:
        """Preferable: the Luxembourg products that carry `antigen` (CDC's CVX map decides);
        `crosswalk`: (CVX, why) for an EU product with no CVX of its own (status I); allowable:
        the vaccines CDC accepts for the same antigen's dose `cdc_dose` (series, dose index), so a
        dose given abroad or with an older product still counts."""
        preferable: list[VaccineRule] = []
        for product in products:
            for code, label, status in self.cvx(product):
                if any(a.antigen == antigen for a in self.cdc.cvx_antigens.get(code, ())):
                    preferable.append(
                        VaccineRule(
                            code, label, forecast=True, status=status, sources=(f"antigen_codes.{product}",)
                        )
                    )
        for code, why in crosswalk:
            preferable.append(VaccineRule(code, why, forecast=True, status="I", sources=(GENERIC,)))
        seen = {v.cvx for v in preferable}
        allowable: list[VaccineRule] = []
        if cdc_dose is not None:
            series = self.cdc.antigens[antigen].series[cdc_dose[0]]
            target = series.doses[min(cdc_dose[1], len(series.doses) - 1)]
            for rule in (*target.preferable, *target.allowable):
                if rule.cvx not in seen:
                    seen.add(rule.cvx)
                    allowable.append(replace(rule, forecast=False, sources=(CDC,)))
        return {"preferable": tuple(preferable), "allowable": tuple(allowable)}


def _series(
    antigen: str,
    name: str,
    group: str,
    doses: Sequence[TargetDose],
    *,
    series_type: str = "Standard",
    series_group: str = "1",
    priority: str = "A",
    min_start: Duration | None = None,
    max_start: Duration | None = None,
    indications: Sequence[Indication] = (),
    gender: frozenset[str] = frozenset(),
    equivalent: tuple[str, ...] = (),
    sources: tuple[str, ...] = (),
    status: str | None = None,
    note: str | None = None,
    default: bool = True,
) -> Series:
    return Series(
        name=name,
        antigen=antigen,
        vaccine_group=group,
        series_type=series_type,
        doses=tuple(doses),
        default=default,
        group=series_group,
        priority=priority,
        min_age_to_start=min_start,
        max_age_to_start=max_start,
        required_gender=gender,
        equivalent_groups=equivalent,
        indications=tuple(indications),
        status=status,
        sources=sources,
        note=note,
    )


def _indications(
    codes: Iterable[str], text: str, begin: Duration | None = None, end: Duration | None = None
) -> list[Indication]:
    return [Indication(code, text, begin, end) for code in codes]


# --- the series, one builder per part of the calendar -------------------------------------------------


def _hexavalent_doses(
    d: _Draft, antigen: str, first_max: Val | None = None, products: Sequence[str] = ()
) -> list[TargetDose]:
    """Doses 1-3 of the 2+1 hexavalent schedule (2, 4 and 11 months), for one of its six antigens."""
    item = d.items["hexavalent"]
    min_age = val(item["min_age_first_dose"])
    product = ["hexavalent_DTaP_IPV_Hib_HepB", *products]
    max_age = None
    if antigen == "Hib":
        max_age = generic(
            "P5Y", "no Luxembourg upper age for Hib: CDC's 5 years (Hexyon is licensed to 24 months)", CDC
        )
    doses = []
    for n in (1, 2, 3):
        meta = d.dose_meta("hexavalent", n)
        spec = d.dose("hexavalent", n)
        rec = val(spec["recommended_age"], meta["status"], meta["sources"])
        intervals = () if n == 1 else (interval(val(spec["min_interval_from_prev"])),)
        doses.append(
            TargetDose(
                number=n,
                ages=(
                    age(
                        min_age if n == 1 else None,
                        rec,
                        due_after(rec),
                        (first_max if n == 1 else None) or max_age,
                    ),
                ),
                intervals=intervals,
                **d.vaccines(antigen, product, cdc_dose=(0, n - 1)),
                **meta,
            )
        )
    return doses


def _dtp_polio_series(d: _Draft, antigen: str, group: str) -> list[Series]:
    """Diphtheria, tetanus, pertussis and polio: hexavalent 2+1, boosters at 5-6 and 15-16 years,
    and (diphtheria, tetanus) the adult booster every 10 years."""
    doses = _hexavalent_doses(d, antigen)
    pre = d.items["DTaP_IPV_preschool_booster"]
    meta = d.dose_meta("DTaP_IPV_preschool_booster", 1)
    rec, due = window(
        d.dose("DTaP_IPV_preschool_booster", 1)["recommended_age_range"], meta["status"], meta["sources"]
    )
    min_age = Val(iso("P4Y"), "V", ("SPC_BOOSTRIX",), pre["min_age_by_product"]["note"])
    booster_gap = generic(
        "P6M",
        "minimum interval before the preschool booster not published: CDC's DTaP dose 5 (6 months)",
        CDC,
    )
    doses.append(
        TargetDose(
            number=4,
            ages=(age(min_age, rec, due),),
            intervals=(interval(booster_gap),),
            **d.vaccines(antigen, ["DTaP_IPV", "Tdap_adult"], cdc_dose=(0, 4)),
            **meta,
        )
    )
    teen = d.dose_meta("dTaP_IPV_adolescent_booster", 1)
    rec, due = window(
        d.dose("dTaP_IPV_adolescent_booster", 1)["recommended_age_range"], teen["status"], teen["sources"]
    )
    five_years = generic(
        "P5Y", "minimum interval not published: CDC's Td/Tdap booster minimum (5 years)", CDC
    )
    crosswalk = (
        [("10", "IPV: crosswalk for the polio part of dTaP-IPV/dT-IPV (no CVX of their own)")]
        if antigen == "Polio"
        else []
    )
    adult_products = ["Tdap_adult"] if antigen == "Pertussis" else ["Tdap_adult", "Td_adult"]
    doses.append(
        TargetDose(
            number=5,
            ages=(age(None, rec, due),),
            intervals=(interval(five_years),),
            **d.vaccines(
                antigen, [] if antigen == "Polio" else adult_products, crosswalk=crosswalk, cdc_dose=(0, 5)
            ),
            **teen,
        )
    )
    if antigen in ("Diphtheria", "Tetanus"):
        item = d.items["dT_booster_adult"]
        every = val(
            item["recurrence"]["every"], item["recurrence"]["status"], _sources(item["recurrence"]["source"])
        )
        late = generic(
            "P10Y4W", "past-due interval not published: CDC's Td booster (10 years + 4 weeks)", CDC
        )
        doses.append(
            TargetDose(
                number=6,
                ages=(AgeRule(),),
                intervals=(interval(five_years, every, late),),
                recurring=True,
                **d.vaccines(antigen, adult_products, cdc_dose=(0, 99)),
                status=item["recurrence"]["status"],
                sources=every.sources,
                note=item.get("note"),
            )
        )
    name = {
        "Diphtheria": "Diphtheria LU 2+1, boosters and every 10 years series",
        "Tetanus": "Tetanus LU 2+1, boosters and every 10 years series",
        "Pertussis": "Pertussis LU 2+1 and boosters series",
        "Polio": "Polio LU 2+1 and boosters series",
    }[antigen]
    note = None
    if antigen in ("Pertussis", "Polio"):
        note = (
            "the adult 10-year booster is 'diphtheria-tetanus(-pertussis-polio)': pertussis, polio optional"
        )
    series = [_series(antigen, name, group, doses, sources=("S1", "S2", "S3"), note=note)]
    series.append(_premature_series(d, antigen, group, doses))
    if antigen == "Pertussis":
        series.append(_pregnancy_pertussis(d, group, doses))
    return series


def _premature_series(
    d: _Draft, antigen: str, group: str, standard: Sequence[TargetDose], item: str = "hexavalent"
) -> Series:
    """Premature infants (<33 weeks or <1500 g): 3+1, an extra primary dose at 3 months."""
    variant = d.items[item]["variants"][0]
    if "min_interval_between_primary_doses" in variant:
        gap = val(variant["min_interval_between_primary_doses"])
    else:
        gap = Val(
            iso("P4W"), "V", ("SPC_PREVENAR20",), "SmPC: preterm, 3 primary doses at least 4 weeks apart"
        )
    extra = Val(iso(variant["extra_dose_age"]), variant["status"], _sources(variant["source"]))
    first, second, booster, *rest = standard
    three = TargetDose(
        number=2,
        ages=(age(None, extra, due_after(extra), _max_of(first.ages[0])),),
        intervals=(interval(gap),),
        preferable=first.preferable,
        allowable=first.allowable,
        status=variant["status"],
        sources=extra.sources,
    )
    second = replace(second, number=3, intervals=(interval(gap),))
    doses = [first, three, second, *(replace(t, number=t.number + 1) for t in (booster, *rest))]
    return _series(
        antigen,
        f"{antigen} LU premature 3+1 series",
        group,
        doses,
        series_type="Risk",
        series_group="2",
        indications=_indications([PREMATURE], variant["population"]),
        status=variant["status"],
        sources=extra.sources,
    )


def _max_of(rule: AgeRule) -> Val | None:
    """A rule's maximum age with its provenance (to reuse it on another dose)."""
    if rule.max is None:
        return None
    parts = (rule.note or "").split(NOTE_SEPARATOR)
    note = next((p.removeprefix("max: ") for p in parts if p.startswith("max: ")), None)
    return Val(rule.max, dict(rule.statuses).get("max"), rule.sources, note)


def _pregnancy_pertussis(d: _Draft, group: str, standard: Sequence[TargetDose]) -> Series:
    """The standard doses, then one dose at every pregnancy (recurring), so earlier doses keep
    their childhood evaluation and only the pregnancy dose is new."""
    item = d.items["pregnancy_pertussis"]
    meta = d.dose_meta("pregnancy_pertussis", 1)
    # gestational timing when the pregnancy's onset date (CDC observation 170) is known
    from_onset = interval(
        None,
        Val(iso("P13W"), "P", ("S3",), "ECDC gives weeks 13-26; santesecu 'preferably 2nd trimester'"),
        Val(iso("P27W"), "V", ("S1",), "up to gestational week 26"),
        from_observation=PREGNANCY_ONSET,
    )
    this_pregnancy = generic(
        "P40W",
        "'every pregnancy': without pregnancy episodes in the engine, a dose in the last 40 weeks "
        "is taken as this pregnancy's",
    )
    dose = TargetDose(
        number=len(standard) + 1,
        ages=(AgeRule(),),
        intervals=(interval(this_pregnancy), from_onset),
        recurring=True,
        **d.vaccines("Pertussis", item["product"], cdc_dose=(0, 99)),
        **meta,
    )
    return _series(
        "Pertussis",
        "Pertussis LU pregnancy series",
        group,
        [*standard, dose],
        series_type="Risk",
        series_group="3",
        indications=_indications([PREGNANT], item["population"]),
        gender=frozenset({"F"}),
        status=meta["status"],
        sources=meta["sources"],
        note=item.get("note"),
    )


def _hib_series(d: _Draft) -> list[Series]:
    doses = _hexavalent_doses(d, "Hib")
    return [
        _series("Hib", "Hib LU 2+1 series", "Hib", doses, sources=("S1", "S2", "S3")),
        _premature_series(d, "Hib", "Hib", doses),
    ]


def _hepb_series(d: _Draft) -> list[Series]:
    catch_up = d.items["hepB_catch_up"]["doses"][0]
    limit = generic(
        "P19Y", "catch-up for 'adolescents': the age limit is not published (until 18 years inclusive)"
    )
    hepb_products = ["hepatitis_B"]
    standard = _hexavalent_doses(d, "HepB", limit, hepb_products)
    doses = _hexavalent_doses(d, "HepB", None, hepb_products)
    birth = d.items["hepb_birth_dose"]
    meta = d.dose_meta("hepb_birth_dose", 0)
    at_birth = TargetDose(
        number=1,
        ages=(
            age(
                Val(iso("P0D"), meta["status"], meta["sources"]),
                Val(iso("P0D"), meta["status"], meta["sources"]),
                generic("P1W", "'birth dose': past due after the first week (not published)"),
            ),
        ),
        **d.vaccines("HepB", hepb_products, cdc_dose=(0, 0)),
        **meta,
    )
    risk = [at_birth, *(replace(t, number=t.number + 1) for t in doses)]
    return [
        _series(
            "HepB",
            "HepB LU 2+1 series",
            "HepB",
            standard,
            sources=("S1", "S2", "S3"),
            note=f"adolescent catch-up: {catch_up.get('note')}",
        ),
        _premature_series(d, "HepB", "HepB", standard),
        _series(
            "HepB",
            "HepB LU birth dose series",
            "HepB",
            risk,
            series_type="Risk",
            series_group="3",
            indications=_indications([HBSAG_MOTHER], birth["population"], None, iso("P1Y")),
            status=meta["status"],
            sources=meta["sources"],
        ),
    ]


def _rotavirus_series(d: _Draft) -> list[Series]:
    item = d.items["rotavirus"]
    min_age = val(item["min_age_first_dose"])
    max_first_rv5 = val(item["max_age_first_dose"])
    max_last_rv1 = val(item["max_age_last_dose"])
    day = Duration(days=1)  # "by 12 weeks": a dose on the day it turns 12 weeks still counts
    max_first_rv5 = replace(max_first_rv5, value=_plus(max_first_rv5.value, day))
    max_last_rv1 = replace(max_last_rv1, value=_plus(max_last_rv1.value, day))
    rv1_first = Val(
        iso("P20W1D"),
        max_last_rv1.status,
        max_last_rv1.sources,
        "RV1: completion by 24 weeks less the 4-week interval (the draft's note)",
    )
    rv5_last = Val(iso("P32W1D"), "V", ("AU_RV_TABLE",), "RV5 (RotaTeq): last dose by 32 weeks")
    products = ["rotavirus"]

    def by_product(rules: dict[str, Any], ends: Mapping[str, Duration]) -> dict[str, Any]:
        return {k: tuple(replace(r, end_age=ends.get(r.cvx, r.end_age)) for r in v) for k, v in rules.items()}

    doses = []
    for n in (1, 2, 3):
        meta = d.dose_meta("rotavirus", n)
        spec = d.dose("rotavirus", n)
        rec = val(spec["recommended_age"], meta["status"], meta["sources"])
        if n == 1:
            ages = age(min_age, rec, due_after(rec), rv1_first)
            ends = {"116": max_first_rv5.value, "119": rv1_first.value, "122": max_first_rv5.value}
        else:
            ages = age(None, rec, due_after(rec), rv5_last)
            ends = {"116": rv5_last.value, "119": max_last_rv1.value, "122": max_last_rv1.value}
        doses.append(
            TargetDose(
                number=n,
                ages=(ages,),
                intervals=() if n == 1 else (interval(val(spec["min_interval_from_prev"])),),
                skips=(_rv1_skip(),) if n == 3 else (),
                note=(
                    "unknown product (CVX 122): the strictest limits apply" if n < 3 else spec.get("only_if")
                ),
                **by_product(d.vaccines("Rotavirus", products, cdc_dose=(0, n - 1)), ends),
                **{k: v for k, v in meta.items() if k != "note"},
            )
        )
    return [_series("Rotavirus", "Rotavirus LU series", "Rotavirus", doses, sources=("S2", "S3"))]


#: CNS list of pneumococcal risk groups (pneumococcal_adult)
PCV_RISK_GROUPS = [
    *(LUNG, COPD, ASTHMA, HEART, CARDIOVASCULAR, RENAL, CKD, ESRD, SMOKER, ALCOHOL, LIVER),
    *(CSF_LEAK, COCHLEAR, ASPLENIA, SICKLE, HAEMOGLOBINOPATHY, IMMUNOCOMPROMISED, HIV, TRANSPLANT),
    IMMUNOSUPPRESSIVE,
]


def _pneumococcal_series(d: _Draft) -> list[Series]:
    item = d.items["pneumococcal_infant"]
    min_age = val(item["min_age_first_dose"])
    limit = Val(
        iso("P5Y"), "V", ("SPC_PREVENAR20",), "catch-up by product: 1 dose from 2 to <5 years; none after"
    )
    catch_up = {c.get("age_at_first_dose"): c for c in item["catch_up_by_product"]}
    from_two = _count_skip(f"First dose from 2 years: {catch_up['2-<5 years']['regimen']}", 0, iso("P2Y"))
    from_one = _count_skip(f"Started at 12-23 months: {catch_up['12-23 months']['regimen']}", 1, iso("P12M"))
    doses = []
    for n in (1, 2, 3):
        meta = d.dose_meta("pneumococcal_infant", n)
        spec = d.dose("pneumococcal_infant", n)
        rec = val(spec["recommended_age"], meta["status"], meta["sources"])
        skips: tuple[ConditionalSkip, ...] = ()
        if n == 2:
            skips = (from_two,)
        elif n == 3:
            skips = (from_two, from_one)
        doses.append(
            TargetDose(
                number=n,
                ages=(age(min_age if n == 1 else None, rec, due_after(rec), limit),),
                intervals=() if n == 1 else (interval(val(spec["min_interval_from_prev"])),),
                skips=skips,
                **d.vaccines("Pneumococcal", ["pneumococcal_conjugate"], cdc_dose=(0, n - 1)),
                **meta,
            )
        )
    adult = d.items["pneumococcal_adult"]
    over_65 = adult["population"][0]
    risk = adult["population"][1]
    regimen = adult["regimen_current"]
    single = {"status": regimen["status"], "sources": _sources(over_65["source"]), "note": regimen["note"]}
    vaccines = d.vaccines("Pneumococcal", ["pneumococcal_conjugate"], cdc_dose=None)
    pcv20 = tuple(v for v in vaccines["preferable"] if v.cvx == "216")
    others = tuple(replace(v, forecast=False) for v in vaccines["preferable"] if v.cvx != "216")
    ppsv = d.vaccines("Pneumococcal", ["pneumococcal_polysaccharide"], cdc_dose=None)["preferable"]
    one_dose = TargetDose(
        number=1,
        ages=(age(Val(iso("P65Y"), over_65["status"], _sources(over_65["source"]))),),
        preferable=pcv20,
        allowable=others + tuple(replace(v, forecast=False) for v in ppsv),
        **single,
    )
    risk_dose = replace(
        one_dose,
        ages=(
            age(generic("P5Y", "risk groups from 5 years: below, the infant series and its catch-up apply")),
        ),
    )
    return [
        _series(
            "Pneumococcal",
            "Pneumococcal LU 2+1 series",
            "Pneumococcal",
            doses,
            priority="B",
            sources=("S2", "S3pcv"),
        ),
        _premature_series(d, "Pneumococcal", "Pneumococcal", doses, "pneumococcal_infant"),
        _series(
            "Pneumococcal",
            "Pneumococcal LU 65 years+ series",
            "Pneumococcal",
            [one_dose],
            series_group="3",
            min_start=iso("P65Y"),
            status=weakest([over_65["status"], regimen["status"]]),
            sources=_sources(over_65["source"]),
            note=over_65.get("note"),
        ),
        _series(
            "Pneumococcal",
            "Pneumococcal LU risk series",
            "Pneumococcal",
            [risk_dose],
            series_type="Risk",
            series_group="4",
            indications=_indications(PCV_RISK_GROUPS, risk["group"]),
            status=weakest([risk["status"], regimen["status"]]),
            sources=_sources(risk["source"]),
            note=risk.get("note"),
        ),
    ]


def _menb_series(d: _Draft) -> list[Series]:
    item = d.items["meningococcal_B"]
    min_age = val(item["min_age_first_dose"])
    limit = generic(
        "P5Y", "the programme is for infants; the draft gives no upper catch-up age (CDC's infant limit)", CDC
    )
    from_two = _count_skip(
        f"First dose from 2 years: {item['catch_up_by_product'][2]['regimen']}", 0, iso("P2Y")
    )
    doses = []
    for n in (1, 2, 3):
        meta = d.dose_meta("meningococcal_B", n)
        spec = d.dose("meningococcal_B", n)
        rec = val(spec["recommended_age"], meta["status"], meta["sources"])
        due = due_after(rec)
        if n == 3:
            rng = spec["recommended_age_range_by_product"]
            due = window(rng["value"], rng["status"], _sources(rng["source"]))[1]
        doses.append(
            TargetDose(
                number=n,
                ages=(age(min_age if n == 1 else None, rec, due, limit),),
                intervals=() if n == 1 else (interval(val(spec["min_interval_from_prev"])),),
                skips=(from_two,) if n == 3 else (),
                **d.vaccines("Meningococcal B", ["meningococcal_B"], cdc_dose=None),
                **meta,
            )
        )
    return [
        _series(
            "Meningococcal B",
            "Meningococcal B LU 2+1 series",
            "Meningococcal B",
            doses,
            sources=("S2", "S3", "S16"),
        )
    ]


def _menacwy_series(d: _Draft) -> list[Series]:
    item = d.items["meningococcal_ACWY"]
    catch_up = item["catch_up"]
    limit = Val(iso("P19Y"), catch_up["status"], _sources(catch_up["source"]), catch_up["description"])
    meta1 = d.dose_meta("meningococcal_ACWY", 1)
    spec1 = d.dose("meningococcal_ACWY", 1)
    rec1 = val(spec1["recommended_age"], meta1["status"], meta1["sources"])
    meta2 = d.dose_meta("meningococcal_ACWY", 2)
    rec2, due2 = window(
        d.dose("meningococcal_ACWY", 2)["recommended_age_range"], meta2["status"], meta2["sources"]
    )
    gap = generic(
        "P8W", "minimum interval before the adolescent booster not published: CDC's MenACWY (8 weeks)", CDC
    )
    teen = _count_skip("A dose given from 12 years serves as the adolescent dose", 0, iso("P12Y"))
    vaccines = d.vaccines("Meningococcal", ["meningococcal_ACWY"], cdc_dose=None)
    doses = [
        TargetDose(1, (age(val(spec1["min_age"]), rec1, due_after(rec1), limit),), **vaccines, **meta1),
        TargetDose(2, (age(None, rec2, due2, limit),), (interval(gap),), skips=(teen,), **vaccines, **meta2),
    ]
    return [
        _series(
            "Meningococcal",
            "Meningococcal ACWY LU series",
            "Meningococcal ACWY",
            doses,
            sources=("S3", "S16"),
        )
    ]


def _two_dose_child(
    d: _Draft, item_id: str, antigen: str, group: str, products: list[str], max_age: Val | None
) -> Series:
    item = d.items[item_id]
    min_age = val(item["min_age_first_dose"])
    meta1, meta2 = d.dose_meta(item_id, 1), d.dose_meta(item_id, 2)
    rec1 = val(d.dose(item_id, 1)["recommended_age"], meta1["status"], meta1["sources"])
    spec2 = d.dose(item_id, 2)
    rec2, due2 = window(spec2["recommended_age_range"], meta2["status"], meta2["sources"])
    vaccines = d.vaccines(antigen, products, cdc_dose=(0, 0))
    doses = [
        TargetDose(1, (age(min_age, rec1, due_after(rec1), max_age),), **vaccines, **meta1),
        TargetDose(
            2,
            (age(None, rec2, due2, max_age),),
            (interval(val(spec2["min_interval_from_prev"])),),
            **vaccines,
            **meta2,
        ),
    ]
    return _series(
        antigen,
        f"{antigen} LU 2-dose series",
        group,
        doses,
        sources=_sources(d.dose(item_id, 1).get("source")),
    )


def _hpv_series(d: _Draft) -> list[Series]:
    item = d.items["HPV"]
    meta1, meta2 = d.dose_meta("HPV", 1), d.dose_meta("HPV", 2)
    rec1, due1 = window(d.dose("HPV", 1)["recommended_age_range"], meta1["status"], meta1["sources"])
    spec2 = d.dose("HPV", 2)
    rec_gap = val(spec2["recommended_interval_from_prev"], meta2["status"], meta2["sources"])
    vaccines = d.vaccines("HPV", ["HPV9"], cdc_dose=(0, 0))
    youngest = Val(rec1.value, rec1.status, rec1.sources, "licensed and recommended from 9 years")
    two_dose = [
        TargetDose(
            1, (age(youngest, rec1, due1, Val(due1.value, rec1.status, rec1.sources)),), **vaccines, **meta1
        ),
        TargetDose(
            2,
            (AgeRule(),),
            (
                interval(
                    val(spec2["min_interval_from_prev"]),
                    rec_gap,
                    Val(
                        iso("P13M1D"),
                        "V",
                        ("PI_GARDASIL9_CA",),
                        "Gardasil 9 2-dose schedule: second dose 5-13 months after the first",
                    ),
                ),
            ),
            **vaccines,
            **meta2,
        ),
    ]
    three = item["three_dose_rule"]
    gaps = three["min_intervals"]
    status3, src3 = three["status"], _sources(three["source"])
    catch = item["catch_up"]
    start3, end3 = window(catch["recommended_age_range"], catch["status"], _sources(catch["source"]))

    def three_doses(first_age: AgeRule) -> list[TargetDose]:
        return [
            TargetDose(1, (first_age,), **vaccines, status=status3, sources=src3),
            TargetDose(
                2,
                (AgeRule(),),
                (
                    interval(
                        val(gaps["dose2_after_dose1"], gaps["status"], _sources(gaps["source"])),
                        Val(iso("P2M"), status3, src3),
                    ),
                ),
                **vaccines,
                status=status3,
                sources=src3,
            ),
            TargetDose(
                3,
                (AgeRule(),),
                (
                    interval(
                        val(gaps["dose3_after_dose2"], gaps["status"], _sources(gaps["source"])),
                        Val(iso("P4M"), status3, src3),
                    ),
                ),
                **vaccines,
                status=status3,
                sources=src3,
            ),
        ]

    return [
        _series(
            "HPV",
            "HPV LU 2-dose series",
            "HPV",
            two_dose,
            max_start=due1.value,
            equivalent=("2",),
            sources=rec1.sources,
        ),
        _series(
            "HPV",
            "HPV LU 3-dose catch-up series",
            "HPV",
            three_doses(age(start3, start3, end3, end3)),
            series_group="2",
            min_start=start3.value,
            equivalent=("1",),
            status=catch["status"],
            sources=_sources(catch["source"]),
            note=catch.get("note"),
        ),
        _series(
            "HPV",
            "HPV LU risk 3-dose series",
            "HPV",
            three_doses(age(youngest)),
            series_type="Risk",
            series_group="3",
            indications=_indications(
                [IMMUNOCOMPROMISED, HIV, TRANSPLANT, IMMUNOSUPPRESSIVE, MSM],
                "immunocompromised persons and men who have sex with men",
            ),
            status=status3,
            sources=src3,
        ),
    ]


def _influenza_series(d: _Draft) -> list[Series]:
    item = d.items["influenza_adult"]
    groups = item["population"]
    rec = item["recurrence"]
    # "every P1Y" is the yearly season itself: due from its start, a dose in it completes it
    season = yearly_season(rec["season"], rec["status"], _sources(rec["source"]))
    gap = generic("P4W", "minimum interval between influenza doses not published: CDC's 4 weeks", CDC)
    vaccines = d.vaccines("Influenza", ["influenza_inactivated"], cdc_dose=(0, 0))

    def dose(min_age: Val | None, status: str | None, sources: tuple[str, ...]) -> TargetDose:
        return TargetDose(
            1,
            (age(min_age),),
            (interval(gap),),
            recurring=True,
            yearly_season=season,
            status=status,
            sources=sources,
            note=f"once per season ({rec['season']}, every {rec['every']}): due from the season's start; "
            "a dose in the season completes it until the next one",
            **vaccines,
        )

    over_65 = groups[0]
    from_six_months = groups[6]
    six = Val(iso("P6M"), from_six_months["status"], (GENERIC,), from_six_months.get("note"))
    risk_codes = {
        1: [PREGNANT],
        2: [*CHRONIC, *IMMUNODEFICIENT, CHEMOTHERAPY],
        3: [NEUROMUSCULAR, HAEMOGLOBINOPATHY, SICKLE],
        4: [HEALTH_WORKER, CARE_STAFF],
    }
    indications = [i for n, codes in risk_codes.items() for i in _indications(codes, groups[n]["group"])]
    indications += _indications([ASPIRIN], groups[5]["group"], None, iso("P18Y"))
    return [
        _series(
            "Influenza",
            "Influenza LU 65 years+ yearly series",
            "Influenza",
            [
                dose(
                    val("P65Y", over_65["status"], _sources(over_65["source"])),
                    over_65["status"],
                    _sources(over_65["source"]),
                )
            ],
            min_start=iso("P65Y"),
            status=over_65["status"],
            sources=_sources(over_65["source"]),
        ),
        _series(
            "Influenza",
            "Influenza LU risk groups yearly series",
            "Influenza",
            [dose(six, "V", ("S6", "S15"))],
            series_type="Risk",
            series_group="2",
            indications=indications,
            status="V",
            sources=("S1", "S6", "S15"),
            note="pregnant women, chronic disease, reduced immunity, aspiration risk, haemoglobinopathy, "
            "aspirin under 18, health and care staff; from 6 months of age ([I])",
        ),
    ]


def _zoster_series(d: _Draft) -> list[Series]:
    item = d.items["zoster"]
    over_65, immuno = item["population"][0], item["population"][1]
    min_gap = item["min_interval_dose2"]
    vaccines = d.vaccines("Zoster", ["zoster_recombinant"], cdc_dose=(0, 0))

    def doses(
        start: Val, gap: Val, window_: Sequence[str], status: str, sources: tuple[str, ...]
    ) -> list[TargetDose]:
        rec, due = (
            Val(iso(window_[0]), status, sources),
            Val(_plus(iso(window_[1]), Duration(days=1)), status, sources),
        )
        return [
            TargetDose(1, (age(start),), **vaccines, status=status, sources=sources),
            TargetDose(
                2, (AgeRule(),), (interval(gap, rec, due),), **vaccines, status=status, sources=sources
            ),
        ]

    src65, srci = _sources(over_65["source"]), _sources(immuno["source"])
    gap_src = _sources(min_gap["source"])
    return [
        _series(
            "Zoster",
            "Zoster LU 65 years+ series",
            "Zoster",
            doses(
                Val(iso("P65Y"), over_65["status"], src65),
                Val(iso(min_gap["standard"]), min_gap["status"], gap_src),
                over_65["interval_range"],
                over_65["status"],
                src65,
            ),
            min_start=iso("P65Y"),
            status=over_65["status"],
            sources=src65,
        ),
        _series(
            "Zoster",
            "Zoster LU immunocompromised 18 years+ series",
            "Zoster",
            doses(
                Val(iso("P18Y"), immuno["status"], srci),
                Val(iso(min_gap["immunocompromised"]), min_gap["status"], gap_src),
                immuno["interval_range"],
                immuno["status"],
                srci,
            ),
            series_type="Risk",
            series_group="2",
            indications=_indications(
                [IMMUNOCOMPROMISED, HIV, HSCT, TRANSPLANT, IMMUNOSUPPRESSIVE, CHEMOTHERAPY],
                immuno["group"],
                iso("P18Y"),
            ),
            status=immuno["status"],
            sources=srci,
        ),
    ]


def _rsv_series(d: _Draft) -> list[Series]:
    newborn = d.items["newborn_rsv_passive"]
    nb_meta = d.dose_meta("newborn_rsv_passive", 1)
    first_season = generic(
        "P8M",
        "'entering their first RSV season': CDC's nirsevimab limit of 8 months (a child born "
        "outside the season is due at its start while younger than that)",
        CDC,
    )
    # "if born in/entering RSV season September-February"
    season = yearly_season(newborn["doses"][0]["when"], nb_meta["status"], nb_meta["sources"])
    passive = d.vaccines("RSV", ["RSV_nirsevimab_passive"], cdc_dose=None)
    pregnancy = d.items["pregnancy_rsv"]
    pr_meta = d.dose_meta("pregnancy_rsv", 1)
    vaccine = d.vaccines("RSV", ["RSV_vaccine"], cdc_dose=None)
    older = d.items["rsv_older_adults"]
    old_meta = d.dose_meta("rsv_older_adults", 1)
    weeks = Val(iso("P32W"), pr_meta["status"], pr_meta["sources"], "gestational weeks 32-36")
    return [
        _series(
            "RSV",
            "RSV LU newborn passive immunisation series",
            "RSV",
            [
                TargetDose(
                    1,
                    (
                        age(
                            Val(iso("P0D"), nb_meta["status"], nb_meta["sources"]),
                            Val(iso("P0D"), nb_meta["status"], nb_meta["sources"]),
                            None,
                            first_season,
                        ),
                    ),
                    yearly_season=season,
                    **passive,
                    **nb_meta,
                )
            ],
            priority="B",
            status=nb_meta["status"],
            sources=nb_meta["sources"],
            note=newborn["doses"][0]["when"],
        ),
        _series(
            "RSV",
            "RSV LU 75 years+ series",
            "RSV",
            [
                TargetDose(
                    1,
                    (
                        age(
                            Val(
                                iso("P75Y"),
                                older["population"][0]["status"],
                                _sources(older["population"][0]["source"]),
                            )
                        ),
                    ),
                    **vaccine,
                    **old_meta,
                )
            ],
            series_group="2",
            min_start=iso("P75Y"),
            status=older["population"][0]["status"],
            sources=_sources(older["population"][0]["source"]),
        ),
        _series(
            "RSV",
            "RSV LU pregnancy series",
            "RSV",
            [
                TargetDose(
                    1,
                    (AgeRule(),),
                    (
                        interval(
                            weeks,
                            weeks,
                            Val(iso("P37W"), pr_meta["status"], pr_meta["sources"]),
                            from_observation=PREGNANCY_ONSET,
                        ),
                    ),
                    **vaccine,
                    **pr_meta,
                )
            ],
            series_type="Risk",
            series_group="3",
            indications=_indications([PREGNANT], pregnancy["population"]),
            gender=frozenset({"F"}),
            status=pr_meta["status"],
            sources=pr_meta["sources"],
            note=pregnancy.get("note"),
        ),
        _series(
            "RSV",
            "RSV LU 65 years+ risk series",
            "RSV",
            [
                TargetDose(
                    1,
                    (
                        age(
                            Val(
                                iso("P65Y"),
                                older["population"][1]["status"],
                                _sources(older["population"][1]["source"]),
                            )
                        ),
                    ),
                    **vaccine,
                    **old_meta,
                )
            ],
            series_type="Risk",
            series_group="4",
            indications=_indications(
                [LUNG, COPD, HEART, CARDIOVASCULAR, *IMMUNODEFICIENT, CANCER, LEUKEMIA, LYMPHOMA],
                older["population"][1]["group"],
                iso("P65Y"),
            ),
            status=older["population"][1]["status"],
            sources=_sources(older["population"][1]["source"]),
        ),
    ]


def _covid_series(d: _Draft) -> list[Series]:
    item = d.items["covid19_adult"]
    group = item["population"][0]
    yearly = generic("P1Y", "'per current recommendation': a yearly dose is assumed")
    dose = TargetDose(
        1,
        (age(generic("P6M", "lowest age of the COVID-19 vaccines (not in the draft)")),),
        (interval(generic("P8W", "minimum interval not in the draft: CDSi-style 8 weeks", CDC), yearly),),
        recurring=True,
        status="I",
        sources=(GENERIC,),
        note="the draft names risk groups 'per current recommendation' without a regimen",
        **d.vaccines("COVID-19", ["COVID19"], cdc_dose=None),
    )
    codes = [LUNG, COPD, HEART, CARDIOVASCULAR, RENAL, CKD, DIABETES, *IMMUNODEFICIENT, CANCER]
    preg = d.items["pregnancy_covid19"]
    return [
        _series(
            "COVID-19",
            "COVID-19 LU risk groups series",
            "COVID-19",
            [dose],
            series_type="Risk",
            indications=_indications(codes, f"{group['group']} [I: the influenza medical risk groups]"),
            status=group["status"],
            sources=_sources(group["source"]),
            note=f"pregnancy: {preg['population']} (a pregnant woman qualifies through her risk factor)",
        )
    ]


# --- observations ------------------------------------------------------------------------------------


def _icd(*codes: str) -> tuple[tuple[str, str], ...]:
    return tuple((ICD10, c) for c in codes)


def _sct(*codes: str) -> tuple[tuple[str, str], ...]:
    return tuple((SNOMED, c) for c in codes)


#: codings the Luxembourg schedule adds to CDC's observations (ICD-10 categories match their
#: subcodes, see `Schedule.observations_from_codes`); all from background knowledge, status I.
EXTRA_CODINGS: dict[str, tuple[tuple[str, str], ...]] = {
    PREGNANT: (*_icd("Z33", "Z34", "Z35", "O09"), (LOINC, "LA15173-0")),
    DIABETES: (*_icd("E10", "E11", "E12", "E13", "E14"), *_sct("44054006", "46635009")),
    LUNG: _icd("J41", "J42", "J43", "J44", "J45", "J47", "J84", "E84"),
    HEART: (
        *_icd("I05", "I06", "I07", "I08", "I09", "I11", "I20", "I25", "I42", "I50", "Q20", "Q21", "Q24"),
        *_sct("84114007", "53741008"),
    ),
    RENAL: _icd("N18", "N19"),
    IMMUNOCOMPROMISED: (
        *_icd("D80", "D81", "D82", "D83", "D84", "B20", "B21", "B22", "B23", "B24", "Z94"),
        *_sct("234532001"),
    ),
    NEUROMUSCULAR: _icd("G12", "G70", "G71"),
    HAEMOGLOBINOPATHY: _icd("D56", "D57", "D58"),
    ASPLENIA: _icd("Q89.0", "D73.0"),
    HEALTH_WORKER: (
        *_sct("158965000", "106292003", "46255001"),
        *((PRACTITIONER_ROLE, c) for c in ("doctor", "nurse", "pharmacist")),
        *((ISCO08, c) for c in ("22", "221", "222", "226", "32", "321", "322")),
    ),
}

LU_OBSERVATIONS = (
    Observation(
        PREMATURE,
        "Premature infant (born before 33 weeks or under 1500 g)",
        _icd("P07.0", "P07.2", "P07.31", "P07.32", "P07.33", "P07.34", "P07.35"),
    ),
    Observation(HBSAG_MOTHER, "Born to an HBsAg-positive mother"),
    Observation(
        CARE_STAFF,
        "Care-home, nursery or home-care staff",
        tuple((ISCO08, c) for c in ("5311", "5321", "5322")),
    ),
)


def _observations(cdc: Schedule) -> dict[str, Observation]:
    table = dict(cdc.observations)
    for code, extra in EXTRA_CODINGS.items():
        table[code] = replace(table[code], codings=table[code].codings + extra)
    table.update({o.code: o for o in LU_OBSERVATIONS})
    return table


# --- the schedule ------------------------------------------------------------------------------------

#: vaccine groups as the Luxembourg calendar and the portal name them, in calendar order; a
#: name CDC also uses takes CDC's group (antigens, "administer full" for MMR); the one LU-only
#: name maps to CDC antigens.
GROUPS: tuple[str, ...] = (
    *("DTaP/Tdap/Td", "Polio", "Hib", "HepB", "Pneumococcal", "Rotavirus", "Meningococcal B"),
    *("Meningococcal ACWY", "MMR", "Varicella", "HPV", "Influenza", "Zoster", "RSV", "COVID-19"),
)
LU_ONLY_GROUPS = {"Meningococcal ACWY": VaccineGroup("Meningococcal ACWY", ("Meningococcal",))}


def _assumptions(d: _Draft) -> tuple[ProvenanceItem, ...]:
    items = [
        ProvenanceItem(
            f"general rule: {r['rule']}", str(r["status"]), _sources(r.get("source")), r.get("note")
        )
        for r in d.data["meta"]["general_rules"]
    ]
    items.append(
        ProvenanceItem(
            "grace period: every minimum age and interval less 4 days (absolute minimum)",
            "I",
            (GENERIC,),
            "no Luxembourg grace-period rule found; the CDSi 4 days apply",
        )
    )
    for key, codes in d.codes.items():
        node = codes.get("cvx") or {}
        for code, label, status in d.cvx(key):
            items.append(
                ProvenanceItem(
                    f"CVX {code} = {label}", str(status or ""), (f"antigen_codes.{key}",), node.get("note")
                )
            )
    items.append(
        ProvenanceItem(
            "observation codings: ICD-10, extra SNOMED CT, LOINC, practitioner-role and ISCO-08 codes "
            "mapped to CDSi observations",
            "I",
            (GENERIC,),
            "mapping from background knowledge (schedules/lu.py EXTRA_CODINGS); CDC's own codings are V",
        )
    )
    return tuple(items)


def build(data: Mapping[str, Any], cdc: Schedule, name: str = "lu") -> Schedule:
    """The Luxembourg schedule from the parsed draft, on CDC's CVX map and live-virus conflicts."""
    d = _Draft(data, cdc)
    series: list[Series] = []
    for antigen in ("Diphtheria", "Pertussis", "Tetanus"):
        series += _dtp_polio_series(d, antigen, "DTaP/Tdap/Td")
    series += _dtp_polio_series(d, "Polio", "Polio")
    series += _hib_series(d) + _hepb_series(d) + _rotavirus_series(d) + _pneumococcal_series(d)
    series += _menb_series(d) + _menacwy_series(d)
    mmr = d.items["MMR"]
    for antigen in ("Measles", "Mumps", "Rubella"):
        series.append(_two_dose_child(d, "MMR", antigen, "MMR", ["MMR", "MMRV"], None))
    child_only = generic("P18Y", "the draft lists varicella for children only (no adult catch-up)")
    series.append(
        _two_dose_child(d, "varicella", "Varicella", "Varicella", ["varicella", "MMRV"], child_only)
    )
    series += _hpv_series(d) + _influenza_series(d) + _zoster_series(d) + _rsv_series(d) + _covid_series(d)

    by_antigen: dict[str, list[Series]] = {}
    for s in series:
        by_antigen.setdefault(s.antigen, []).append(s)
    antigens: dict[str, Antigen] = {}
    for name_, items in by_antigen.items():
        cdc_antigen = cdc.antigens[name_]
        born_before: date | None = None
        if name_ in ("Measles", "Mumps", "Rubella"):
            # "adults born after 1980 with fewer than 2 doses": born before 1981 counts as protected
            born_before = date(1981, 1, 1)
        antigens[name_] = Antigen(
            name=name_,
            series=tuple(items),
            immunity_observations=cdc_antigen.immunity_observations,
            immunity_birth_date=born_before,
            immunity_exclusions=cdc_antigen.immunity_exclusions if born_before else frozenset(),
        )
    assumptions = list(_assumptions(d))
    assumptions.append(
        ProvenanceItem(
            "MMR: persons born before 1981 are treated as protected (immune)",
            str(mmr["catch_up"][0]["status"]),
            _sources(mmr["catch_up"][0]["source"]),
            mmr["catch_up"][0]["population"],
        )
    )
    groups = {g: LU_ONLY_GROUPS[g] if g in LU_ONLY_GROUPS else cdc.groups[g] for g in GROUPS}
    return Schedule(
        name=name,
        antigens=antigens,
        groups=groups,
        cvx_antigens=cdc.cvx_antigens,
        live_conflicts=cdc.live_conflicts,
        observations=_observations(cdc),
        assumptions=tuple(assumptions),
    )


@cache
def read_draft(path: Path = LU_DATA) -> dict[str, Any]:
    """The YAML draft, parsed (C loader when available)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open(encoding="utf-8") as f:
        data: dict[str, Any] = yaml.load(f, Loader=loader)  # a safe loader
    return data


def load_lu_schedule() -> Schedule:
    """The "lu" schedule (registered with `load_schedule`, which caches it per process)."""
    return build(read_draft(), load_schedule("cdc"))


register_schedule("lu", load_lu_schedule)
