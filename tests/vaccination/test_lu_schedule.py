"""The Luxembourg schedule ("lu"): golden cases written from DOMAIN.md §2.2 and the YAML draft.

Each case names the line of ../shared/docs/DOMAIN.md (§2.2, "The Luxembourg national schedule")
or of the draft (src/sharedcare/vaccination/data/lu-schedule.yaml) it encodes. Dates are
computed by hand from those lines; values the draft marks [I] (or leaves out) are asserted to be
reported as unconfirmed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from sharedcare.vaccination.cdsi import (
    AdministeredDose,
    Forecast,
    GroupForecast,
    Patient,
    forecast,
    load_schedule,
)
from sharedcare.vaccination.cdsi.model import ICD10, SNOMED
from sharedcare.vaccination.operations import forecast_operation
from sharedcare.vaccination.schedules import lu
from sharedcare.vaccination.schedules.codings import record_codings
from sharedcare.vaccination.schedules.provenance import annotate

LOINC = "http://loinc.org"
ROLE = "http://terminology.hl7.org/CodeSystem/practitioner-role"
DRAFT = Path(__file__).resolve().parents[3] / "shared" / "data" / "schedules" / "lu-vaccination-schedule.yaml"

CHILD = date(2025, 1, 15)  # the brief's example child


def _run(
    birth: date,
    doses: Iterable[tuple[date, str]],
    on: date,
    *,
    gender: str = "F",
    observations: Iterable[str] = (),
    onset: date | None = None,
) -> Forecast:
    given = [AdministeredDose(str(i + 1), d, cvx) for i, (d, cvx) in enumerate(doses)]
    dated = (("170", onset),) if onset else ()
    patient = Patient(birth, gender, frozenset(observations), dated)
    schedule = load_schedule("lu")
    return annotate(schedule, forecast(schedule, patient, given, on))


def _group(result: Forecast, name: str) -> GroupForecast:
    found = result.group(name)
    assert found is not None, name
    return found


def _due(g: GroupForecast, number: int | None = None) -> GroupForecast:
    assert g.status == "Not Complete", (g.vaccine_group, g.status, g.reason)
    if number is not None:
        assert g.dose_number == number, (g.vaccine_group, g.dose_number)
    return g


# --- the schedule as data ---------------------------------------------------------------------------


def test_lu_is_registered_cached_and_named_like_the_calendar() -> None:
    """Issue 5: schedules are data, loaded from files; group names as the portal shows them."""
    first = load_schedule("lu")
    started = time.perf_counter()
    assert load_schedule("lu") is first  # parsed once per process
    assert time.perf_counter() - started < 0.01
    started = time.perf_counter()
    rebuilt = lu.build(lu.read_draft(), load_schedule("cdc"))
    assert time.perf_counter() - started < 2.0  # a fresh conversion stays cheap
    assert (
        rebuilt.vaccine_groups
        == first.vaccine_groups
        == (
            *("DTaP/Tdap/Td", "Polio", "Hib", "HepB", "Pneumococcal", "Rotavirus", "Meningococcal B"),
            *("Meningococcal ACWY", "MMR", "Varicella", "HPV", "Influenza", "Zoster", "RSV", "COVID-19"),
        )
    )
    cdc = load_schedule("cdc")
    # CDC's antigens, CVX map and live-virus conflicts apply unchanged
    assert first.groups["DTaP/Tdap/Td"] == cdc.groups["DTaP/Tdap/Td"]
    assert first.groups["Meningococcal ACWY"].antigens == ("Meningococcal",)
    assert first.cvx_antigens is cdc.cvx_antigens and first.live_conflicts is cdc.live_conflicts


def test_every_cvx_is_in_the_cdc_map_or_explained() -> None:
    """YAML antigen_codes: "Check them against the CDC CVX table" (DOMAIN §2.3)."""
    schedule, cdc = load_schedule("lu"), load_schedule("cdc")
    named = {
        v.cvx
        for a in schedule.antigens.values()
        for s in a.series
        for t in s.doses
        for v in (*t.preferable, *t.allowable)
    }
    assert named and not {c for c in named if c not in cdc.cvx_antigens}
    draft = lu.read_draft()["antigen_codes"]
    in_draft = set()
    for entry in draft.values():
        node = entry.get("cvx") or {}
        in_draft |= set(node.get("codes") or {}) | ({node["code"]} if node.get("code") else set())
    unmapped = {c for c in in_draft if c not in cdc.cvx_antigens}
    assert unmapped == set(lu.UNMAPPED_CVX) == {"19"}


def test_vendored_yaml_is_an_exact_copy_with_a_header() -> None:
    """Task: the draft vendored as an exact copy plus a header saying where it came from."""
    vendored = lu.LU_DATA.read_text(encoding="utf-8")
    assert vendored.startswith("# Vendored copy of ../shared/data/schedules/lu-vaccination-schedule.yaml")
    if not DRAFT.exists():
        pytest.skip(f"shared draft not present at {DRAFT}")
    body = vendored.split("# " + "-" * 93 + "\n", 1)[1]
    assert body == DRAFT.read_text(encoding="utf-8")


def test_every_converted_item_keeps_its_status_and_sources() -> None:
    """YAML header: "Every item carries `status`"; the conversion keeps it on every target dose."""
    schedule = load_schedule("lu")
    for antigen in schedule.antigens.values():
        for series in antigen.series:
            for dose in series.doses:
                where = f"{antigen.name} / {series.name} / dose {dose.number}"
                assert dose.status in ("V", "P", "I") and dose.sources, where
                for rule in (*dose.ages, *dose.intervals):
                    set_values = [
                        n
                        for n in ("min", "earliest_rec", "latest_rec", "max")
                        if getattr(rule, n, None) is not None
                    ]
                    assert {n for n, _ in rule.statuses} >= set(set_values), where
                    assert rule.status in (None, "V", "P", "I")
    # a verified value stays V: hexavalent "min_age_first_dose: {value: P6W, status: V}"
    first = schedule.antigens["Diphtheria"].series[0].doses[0].ages[0]
    assert dict(first.statuses)["min"] == "V" and "SPC_HEXYON" in first.sources


def test_an_inferred_item_is_listed_and_flags_the_forecast_that_uses_it() -> None:
    """YAML pneumococcal_infant dose 3: "min_interval_from_prev: {value: P8W, status: I}"."""
    schedule = load_schedule("lu")
    booster_gap = (
        "Pneumococcal / Pneumococcal LU 2+1 series / dose 3 / interval from the previous dose min = 8 weeks"
    )
    listed = {u.path: u for u in schedule.unconfirmed()}
    assert booster_gap in listed and listed[booster_gap].status == "I"
    assert "CDSi uses 8 weeks" in (listed[booster_gap].note or "")
    # a verified value is not listed: hexavalent dose 3 interval P6M (V)
    assert not [
        p for p in listed if p.startswith("Diphtheria / Diphtheria LU 2+1") and "dose 3 / interval" in p
    ]
    # the grace period and the draft's [I] general rules are listed once
    assert any(p.startswith("grace period") for p in listed)
    assert any("Live-vaccine spacing" in p for p in listed)
    # a child due for the PCV booster (doses at 2 and 4 months) is told it rests on that value
    result = _run(CHILD, [(date(2025, 3, 15), "216"), (date(2025, 5, 15), "216")], date(2025, 12, 1))
    pcv = _due(_group(result, "Pneumococcal"), 3)
    assert pcv.recommended == date(2025, 12, 15)  # 11 months [V]
    assert booster_gap in pcv.unconfirmed and "unconfirmed" in (pcv.reason or "")
    # CDC's supporting data has no statuses: nothing unconfirmed, forecasts unchanged
    cdc = load_schedule("cdc")
    assert cdc.unconfirmed() == ()
    plain = forecast(cdc, Patient(CHILD, "F"), [], date(2025, 3, 20))
    assert annotate(cdc, plain) == plain


# --- infants -------------------------------------------------------------------------------------


def test_two_months_hexavalent_rotavirus_pcv_due_and_past_due() -> None:
    """DOMAIN §2.2 "2 months [V]: Hexavalent DTaP-IPV-Hib-HepB, dose 1. Rotavirus, dose 1.
    Pneumococcal conjugate, dose 1." + YAML "min_age_first_dose: P6W" (hexavalent, rotavirus, PCV20)."""
    result = _run(CHILD, [], date(2025, 3, 20))
    for name in ("DTaP/Tdap/Td", "Polio", "Hib", "HepB", "Rotavirus", "Pneumococcal"):
        g = _due(_group(result, name), 1)
        assert g.earliest == date(2025, 2, 26)  # 6 weeks
        assert g.recommended == date(2025, 3, 15)  # 2 months: due on the assessment date
        # past due: not published, the CDSi infant pattern 2 months + 1 month + 4 weeks (I)
        assert g.past_due == date(2025, 5, 12)
        assert any(p.endswith("age latest_rec = 3 months + 4 weeks") for p in g.unconfirmed), name
    for name in ("DTaP/Tdap/Td", "Polio", "Hib", "HepB"):
        assert "146" in _group(result, name).vaccines  # one hexavalent injection
    assert "216" in _group(result, "Pneumococcal").vaccines  # PCV20 [P]
    assert {"119", "116"} <= set(_group(result, "Rotavirus").vaccines)
    assert _group(result, "COVID-19").status == "Not Recommended"  # risk groups only


def test_menb_at_three_months() -> None:
    """DOMAIN §2.2 "3 months [V]: MenB, dose 1"; YAML meningococcal_B "min_age_first_dose: P2M"."""
    g = _due(_group(_run(CHILD, [], date(2025, 3, 20)), "Meningococcal B"), 1)
    assert (g.earliest, g.recommended) == (date(2025, 3, 15), date(2025, 4, 15))
    assert "163" in g.vaccines  # Bexsero (MenB-4C)


def test_four_months_second_doses_respect_product_intervals() -> None:
    """DOMAIN §2.2 "4 months: Hexavalent dose 2 [V]. Pneumococcal dose 2 [V]" and "3 months:
    Rotavirus, dose 2"; YAML hexavalent dose 2 "min_interval_from_prev: P8W" [P], rotavirus P4W [V]."""
    first = date(2025, 3, 15)
    result = _run(CHILD, [(first, "146"), (first, "216"), (first, "119")], date(2025, 4, 20))
    hexa = _due(_group(result, "DTaP/Tdap/Td"), 2)
    assert (hexa.earliest, hexa.recommended) == (date(2025, 5, 10), date(2025, 5, 15))
    pcv = _due(_group(result, "Pneumococcal"), 2)
    assert pcv.recommended == date(2025, 5, 15)
    rota = _due(_group(result, "Rotavirus"), 2)
    assert (rota.earliest, rota.recommended) == (date(2025, 4, 12), date(2025, 4, 15))


def test_rotavirus_third_dose_only_with_a_three_dose_product() -> None:
    """DOMAIN §2.2 "Rotavirus dose 3 only with a 3-dose product [P]"; YAML "max_age_first_dose:
    P12W, applies_to RV5"."""
    two_rv1 = _run(CHILD, [(date(2025, 3, 15), "119"), (date(2025, 4, 15), "119")], date(2025, 5, 1))
    assert _group(two_rv1, "Rotavirus").status == "Complete"
    two_rv5 = _run(CHILD, [(date(2025, 3, 15), "116"), (date(2025, 4, 15), "116")], date(2025, 5, 1))
    assert _due(_group(two_rv5, "Rotavirus"), 3).recommended == date(2025, 5, 15)
    # RV5 first dose at 13 weeks: too late for RotaTeq (12 weeks), so it does not count
    late = _run(CHILD, [(date(2025, 4, 16), "116")], date(2025, 4, 20))
    assert {e.status for e in late.evaluations if e.vaccine_group == "Rotavirus"} == {"Not Valid"}


def test_hexavalent_booster_at_eleven_months_six_months_after_dose_two() -> None:
    """DOMAIN §2.2 "11 months: ... hexavalent booster [P], i.e. 2+1"; "booster at least 6 months
    after the last primary dose [V]"."""
    doses = [(date(2025, 3, 15), "146"), (date(2025, 6, 1), "146")]
    g = _due(_group(_run(CHILD, doses, date(2025, 10, 1)), "Hib"), 3)
    assert (g.earliest, g.recommended) == (date(2025, 12, 1), date(2025, 12, 15))


def test_premature_infants_get_a_three_month_hexavalent_dose() -> None:
    """DOMAIN §2.2 "Premature infants (<33 weeks or <1500 g) also get a hexavalent dose here (3+1)";
    YAML variant "min_interval_between_primary_doses: P4W" [V]; ICD-10-CM P07.34 = 31 weeks."""
    schedule = load_schedule("lu")
    assert schedule.observations_from_codes([(ICD10, "P07.34")]) == {lu.PREMATURE}
    result = _run(CHILD, [(date(2025, 3, 15), "146")], date(2025, 3, 20), observations=[lu.PREMATURE])
    g = _due(_group(result, "Polio"), 2)
    assert (g.earliest, g.recommended, g.series) == (
        date(2025, 4, 12),
        date(2025, 4, 15),
        "Polio LU premature 3+1 series",
    )
    term = _due(_group(_run(CHILD, [(date(2025, 3, 15), "146")], date(2025, 3, 20)), "Polio"), 2)
    assert term.recommended == date(2025, 5, 15)  # 4 months for term infants


# --- toddlers and children -------------------------------------------------------------------------


def test_mmr_and_varicella_at_twelve_months() -> None:
    """DOMAIN §2.2 "12 months: MMR dose 1 + varicella dose 1 (separately or as MMRV) [V]"; YAML
    MMR "min_age_first_dose: P12M" [V]."""
    birth = date(2024, 1, 10)
    result = _run(birth, [], date(2025, 1, 10))
    for name in ("MMR", "Varicella"):
        g = _due(_group(result, name), 1)
        assert g.earliest == g.recommended == date(2025, 1, 10)
        assert "94" in g.vaccines  # MMRV covers both
    # a dose at 11 months does not count (9-11 months only in special situations)
    early = _run(birth, [(date(2024, 12, 10), "03")], date(2025, 1, 10))
    assert _due(_group(early, "MMR"), 1).recommended == date(2025, 1, 10)


def test_second_mmr_varicella_between_fifteen_and_twenty_three_months() -> None:
    """DOMAIN §2.2 "15-23 months: MMR dose 2 + varicella dose 2 [V]"; YAML dose 2
    "min_interval_from_prev: P4W" [V]."""
    birth = date(2024, 1, 10)
    result = _run(birth, [(date(2025, 1, 10), "94")], date(2025, 1, 20))
    for name in ("MMR", "Varicella"):
        g = _due(_group(result, name), 2)
        assert g.earliest == date(2025, 2, 7)  # 4 weeks after dose 1
        assert g.recommended == date(2025, 4, 10)  # 15 months
        assert g.past_due == date(2026, 1, 9)  # after the 23rd month


def test_menacwy_at_thirteen_months_and_adolescent_booster() -> None:
    """DOMAIN §2.2 "13 months: MenACWY [P]"; "MenACWY booster at 12-14 years [P]"; YAML
    "min_age: P12M" (Nimenrix) [V]."""
    birth = date(2024, 1, 10)
    g = _due(_group(_run(birth, [], date(2025, 1, 1)), "Meningococcal ACWY"), 1)
    assert (g.earliest, g.recommended) == (date(2025, 1, 10), date(2025, 2, 10))
    teen = _due(_group(_run(birth, [(date(2025, 2, 10), "203")], date(2030, 1, 1)), "Meningococcal ACWY"), 2)
    assert (teen.recommended, teen.past_due) == (date(2036, 1, 10), date(2039, 1, 9))


def test_hpv_two_doses_six_months_apart_from_nine_years() -> None:
    """DOMAIN §2.2 "9-14 years: HPV (9-valent), girls and boys, 2 doses 6 months apart [V]"; YAML
    HPV dose 2 "min_interval_from_prev: P5M" [V]."""
    birth = date(2014, 6, 1)
    before = _due(_group(_run(birth, [], date(2023, 1, 1), gender="M"), "HPV"), 1)
    assert (before.earliest, before.past_due) == (date(2023, 6, 1), date(2029, 5, 31))  # 9 to 14 years
    one = _run(birth, [(date(2024, 7, 1), "165")], date(2024, 8, 1), gender="M")
    g = _due(_group(one, "HPV"), 2)
    assert (g.earliest, g.recommended) == (date(2024, 12, 1), date(2025, 1, 1))
    both = _run(birth, [(date(2024, 7, 1), "165"), (date(2025, 1, 1), "165")], date(2025, 2, 1), gender="M")
    assert _group(both, "HPV").status == "Complete"


def test_hpv_three_doses_from_fifteen_years() -> None:
    """DOMAIN §2.2 "From 15 years: 3 doses at 0, 2 and 6 months"; "Catch-up is possible from 15 to
    20 years [V]"; YAML three_dose_rule "dose2_after_dose1: P1M" [V]."""
    birth = date(2008, 6, 1)
    start = _due(_group(_run(birth, [], date(2024, 8, 1)), "HPV"), 1)
    assert start.series == "HPV LU 3-dose catch-up series"
    g = _due(_group(_run(birth, [(date(2024, 8, 1), "165")], date(2024, 8, 10)), "HPV"), 2)
    assert (g.earliest, g.recommended) == (date(2024, 9, 1), date(2024, 10, 1))


# --- adults ------------------------------------------------------------------------------------------

CHILDHOOD = [
    (date(1985, 3, 1), "146"),
    (date(1985, 5, 1), "146"),
    (date(1985, 12, 1), "146"),
    (date(1990, 3, 1), "130"),
    (date(2000, 3, 1), "115"),
]


def test_adult_diphtheria_tetanus_booster_every_ten_years() -> None:
    """DOMAIN §2.2 "Adults: Diphtheria-tetanus(-pertussis-polio) booster every 10 years [V]";
    YAML dT_booster_adult "recurrence: {every: P10Y, status: V}"."""
    result = _run(date(1985, 1, 1), [*CHILDHOOD, (date(2020, 5, 1), "139")], date(2025, 6, 1), gender="M")
    g = _due(_group(result, "DTaP/Tdap/Td"))
    assert g.recommended == date(2030, 5, 1)
    assert g.earliest == date(2025, 5, 1)  # CDC's 5-year minimum: inferred
    assert set(g.vaccines) >= {"115", "139"}
    assert any("interval from the previous dose min = 5 years" in p for p in g.unconfirmed)


def test_influenza_every_year_from_sixty_five() -> None:
    """DOMAIN §2.2 "Influenza every year (October-March) for people aged 65 and over [V]"."""
    birth = date(1955, 2, 1)
    none = _due(_group(_run(birth, [], date(2025, 11, 1)), "Influenza"), 1)
    # due since 65, but a yearly dose is due from this season's start (not overdue since 2020)
    assert none.recommended == date(2025, 10, 1) and "88" in none.vaccines
    this_season = _run(birth, [(date(2025, 10, 15), "88")], date(2026, 1, 10))
    assert _group(this_season, "Influenza").status == "Complete"
    assert "next season from 2026-10-01" in (_group(this_season, "Influenza").reason or "")
    next_season = _due(_group(_run(birth, [(date(2025, 10, 15), "88")], date(2026, 10, 5)), "Influenza"))
    assert next_season.recommended == date(2026, 10, 1)  # the next season's start
    younger = _due(_group(_run(date(1965, 2, 1), [], date(2025, 11, 1)), "Influenza"))
    assert younger.earliest == date(2030, 2, 1)  # healthy at 60: not before 65


def test_influenza_for_a_diabetic_adult_from_a_coded_condition() -> None:
    """DOMAIN §2.2 influenza for "people with chronic respiratory, cardiovascular, renal or metabolic
    disease"; YAML influenza_adult "chronic ... diabetes" [V]; the Condition is coded ICD-10 E11.9."""
    schedule = load_schedule("lu")
    condition = {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "code": {"coding": [{"system": ICD10, "code": "E11.9"}]},
    }
    observations = schedule.observations_from_codes(record_codings(conditions=[condition]))
    assert observations == {"014"}
    g = _due(_group(_run(date(1985, 1, 1), [], date(2025, 11, 1), observations=observations), "Influenza"), 1)
    assert g.series == "Influenza LU risk groups yearly series"
    assert g.recommended is not None and g.recommended <= date(2025, 11, 1)


def test_zoster_per_the_draft() -> None:
    """YAML zoster: 65+ "interval_range: [P2M, P6M]"; immunodeficient 18+ "interval_range: [P1M,
    P2M]"; "min_interval_dose2: {standard: P2M, immunocompromised: P1M}" [V]."""
    older = _run(date(1959, 1, 1), [(date(2025, 9, 1), "187")], date(2025, 10, 1))
    g = _due(_group(older, "Zoster"), 2)
    assert (g.earliest, g.recommended, g.past_due) == (date(2025, 11, 1), date(2025, 11, 1), date(2026, 3, 1))
    immuno = _run(date(1985, 1, 1), [(date(2025, 9, 1), "187")], date(2025, 9, 15), observations=["003"])
    g = _due(_group(immuno, "Zoster"), 2)
    assert (g.earliest, g.past_due) == (date(2025, 10, 1), date(2025, 11, 1))
    assert _due(_group(_run(date(1985, 1, 1), [], date(2025, 9, 15)), "Zoster")).earliest == date(2050, 1, 1)


def test_pregnant_womans_pertussis_at_every_pregnancy() -> None:
    """DOMAIN §2.2 "Pregnancy [V]: Pertussis (dTap or dTap-IPV) at every pregnancy: preferably in the
    2nd trimester, up to week 26"; pregnancy coded SNOMED CT 77386006."""
    schedule = load_schedule("lu")
    pregnant = schedule.observations_from_codes([(SNOMED, "77386006")])
    history = [(date(1995, 3, 1), "146"), (date(1995, 5, 1), "146"), (date(1995, 12, 1), "146")]
    history += [(date(2000, 3, 1), "130"), (date(2010, 3, 1), "115"), (date(2021, 3, 1), "139")]
    on = date(2025, 6, 1)
    g = _due(_group(_run(date(1995, 1, 1), history, on, observations=pregnant), "DTaP/Tdap/Td"))
    assert g.series == "Pertussis LU pregnancy series" and "115" in g.vaccines
    assert g.recommended is not None and g.recommended <= on
    not_pregnant = _group(_run(date(1995, 1, 1), history, on), "DTaP/Tdap/Td")
    assert not_pregnant.recommended == date(2031, 3, 1)  # only the 10-year booster
    # with the pregnancy's onset known: recommended from week 13, past due after week 26
    timed = _group(
        _run(date(1995, 1, 1), history, on, observations=pregnant, onset=date(2025, 5, 1)), "DTaP/Tdap/Td"
    )
    assert (timed.recommended, timed.past_due) == (date(2025, 7, 31), date(2025, 11, 5))
    # vaccinated in this pregnancy: nothing more now
    done = _run(date(1995, 1, 1), [*history, (date(2025, 5, 20), "115")], on, observations=pregnant)
    assert _group(done, "DTaP/Tdap/Td").earliest == date(2026, 2, 24)


def test_health_workers_influenza_from_their_role() -> None:
    """DOMAIN §2.2 influenza for "... and health and care staff [V]"; the person's PractitionerRole
    (practitioner-role "nurse") or occupation names it."""
    schedule = load_schedule("lu")
    role = {
        "resourceType": "PractitionerRole",
        "active": True,
        "code": [{"coding": [{"system": ROLE, "code": "nurse"}]}],
    }
    worker = schedule.observations_from_codes(record_codings(practitioner_roles=[role]))
    assert worker == {"055"}
    g = _due(_group(_run(date(1995, 1, 1), [], date(2025, 11, 1), observations=worker), "Influenza"), 1)
    assert g.series == "Influenza LU risk groups yearly series"
    healthy = _due(_group(_run(date(1995, 1, 1), [], date(2025, 11, 1)), "Influenza"))
    assert healthy.earliest == date(2060, 1, 1)


def test_mmr_catch_up_only_for_adults_born_after_1980() -> None:
    """DOMAIN §2.2 "MMR catch-up for adults born after 1980 with fewer than 2 doses [V]"."""
    assert _group(_run(date(1975, 5, 1), [], date(2025, 6, 1)), "MMR").status == "Immune"
    assert _due(_group(_run(date(1985, 5, 1), [(date(1986, 6, 1), "03")], date(2025, 6, 1)), "MMR"), 2)


# --- coded data to observations ----------------------------------------------------------------------


def test_observation_codings_for_lu_and_cdc_unchanged() -> None:
    """Task 3: SNOMED CT / ICD-10 conditions, pregnancy status, occupation → LU observation codes."""
    schedule, cdc = load_schedule("lu"), load_schedule("cdc")
    cases: list[tuple[list[tuple[str, str]], set[str]]] = [
        ([(ICD10, "J44.1")], {"017"}),
        ([("http://hl7.org/fhir/sid/icd-10-cm", "N18.30")], {"066"}),
        ([(ICD10, "D84.9")], {"003"}),
        ([(LOINC, "LA15173-0")], {"007"}),
        ([(lu.ISCO08, "2221")], set()),  # ISCO unit groups are listed explicitly, no prefix match
        ([(lu.ISCO08, "222")], {"055"}),
        ([(lu.ISCO08, "5311")], {lu.CARE_STAFF}),
        ([(SNOMED, "370388006")], {"003"}),  # CDC's own coding still works
    ]
    for codings, expected in cases:
        assert schedule.observations_from_codes(codings) == expected, codings
    assert cdc.observations_from_codes([(ICD10, "E11.9"), (LOINC, "LA15173-0")]) == set()


def test_record_codings_read_only_what_holds() -> None:
    """Refuted conditions, pregnancy status not final, past jobs and inactive roles say nothing."""
    condition = {"code": {"coding": [{"system": ICD10, "code": "J45.0"}]}}
    refuted = {
        "verificationStatus": {"coding": [{"code": "refuted"}]},
        "code": {"coding": [{"system": ICD10, "code": "E10.1"}]},
    }
    pregnancy: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "82810-3"}]},
        "valueCodeableConcept": {"coding": [{"system": LOINC, "code": "LA15173-0"}]},
    }
    preliminary = {**pregnancy, "status": "preliminary"}
    job = {
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "11341-5"}]},
        "valueCodeableConcept": {"coding": [{"system": lu.ISCO08, "code": "22"}]},
    }
    past_job = {**job, "effectivePeriod": {"start": "2001-01-01", "end": "2010-01-01"}}
    role = {"active": False, "code": [{"coding": [{"system": ROLE, "code": "doctor"}]}]}
    schedule = load_schedule("lu")
    assert schedule.observations_from_codes(
        record_codings([condition, refuted], [pregnancy, job], [role])
    ) == {"017", "007", "055"}
    assert (
        schedule.observations_from_codes(record_codings([refuted], [preliminary, past_job], [role])) == set()
    )


def test_immds_forecast_operation_runs_the_lu_schedule() -> None:
    """Issue 5: `$immds-forecast` with `schedule` = `lu` names each vaccine group as the schedule
    does; a pregnancy Condition (SNOMED CT 77386006) makes the pertussis dose due."""
    history = [("1995-03-01", "146"), ("1995-05-01", "146"), ("1995-12-01", "146"), ("2000-03-01", "130")]
    history += [("2010-03-01", "115"), ("2021-03-01", "139")]
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "assessmentDate", "valueDate": "2025-06-01"},
            {"name": "schedule", "valueString": "lu"},
            {
                "name": "patient",
                "resource": {"resourceType": "Patient", "birthDate": "1995-01-01", "gender": "female"},
            },
            *(
                {
                    "name": "immunization",
                    "resource": {
                        "resourceType": "Immunization",
                        "status": "completed",
                        "occurrenceDateTime": when,
                        "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": cvx}]},
                    },
                }
                for when, cvx in history
            ),
            {
                "name": "condition",
                "resource": {
                    "resourceType": "Condition",
                    "code": {"coding": [{"system": SNOMED, "code": "77386006"}]},
                },
            },
        ],
    }
    answer = forecast_operation(body, "cdc")
    recommendation = next(p["resource"] for p in answer["parameter"] if p["name"] == "recommendation")
    assert recommendation["authority"]["display"] == "schedule lu"
    entries = {e["vaccineCode"][0]["text"]: e for e in recommendation["recommendation"]}
    assert tuple(entries) == load_schedule("lu").vaccine_groups
    dtp = entries["DTaP/Tdap/Td"]
    assert dtp["series"] == "Pertussis LU pregnancy series"
    assert dtp["forecastStatus"]["coding"][0]["code"] == "due"
