"""A few CDSi evaluation and forecast rules on the CDC supporting data, checked one at a time."""

from __future__ import annotations

from datetime import date

import pytest

from sharedcare.vaccination.cdsi import (
    AdministeredDose,
    Forecast,
    Patient,
    UnknownSchedule,
    forecast,
    load_schedule,
)

SNOMED = "http://snomed.info/sct"
CVX = "http://hl7.org/fhir/sid/cvx"


def _status(result: Forecast, group: str, ref: str) -> set[tuple[str, str | None]]:
    return {(e.status, e.reason) for e in result.evaluations if e.vaccine_group == group and e.ref == ref}


def _run(birth: date, doses: list[tuple[date, str]], on: date, gender: str = "F") -> Forecast:
    given = [AdministeredDose(str(i + 1), d, cvx) for i, (d, cvx) in enumerate(doses)]
    return forecast(load_schedule(), Patient(birth, gender), given, on)


def test_schedule_names_and_registry() -> None:
    schedule = load_schedule("cdc")
    assert load_schedule() is schedule  # parsed once
    for name in ("DTaP/Tdap/Td", "Polio", "MMR", "HepB", "Pneumococcal", "Meningococcal B"):
        assert name in schedule.vaccine_groups
    with pytest.raises(UnknownSchedule, match="unknown schedule 'xx'"):
        load_schedule("xx")


def test_observations_from_codes_and_titles() -> None:
    schedule = load_schedule()
    found = schedule.observations_from_codes([(SNOMED, "370388006"), (SNOMED, "0000"), ("urn:x", "1")])
    assert found == {"003"}
    assert schedule.observation_title("003") == "Immunocompromised"
    assert schedule.observation_title("nope") == "nope"


def test_newborn_dtap_forecast_dates() -> None:
    result = _run(date(2025, 11, 10), [], date(2025, 11, 10))
    dtap = result.group("DTaP/Tdap/Td")
    assert dtap is not None
    assert (dtap.status, dtap.dose_number) == ("Not Complete", 1)
    # minimum age 6 weeks, recommended 2 months, past due 3 months + 4 weeks - 1 day
    assert (dtap.earliest, dtap.recommended, dtap.past_due) == (
        date(2025, 12, 22),
        date(2026, 1, 10),
        date(2026, 3, 9),
    )
    assert "20" in dtap.vaccines


def test_four_day_grace_period_on_age() -> None:
    birth = date(2025, 9, 1)
    # dose 2 minimum age is 10 weeks; 10 weeks - 4 days is valid, 10 weeks - 5 days is not
    first = date(2025, 10, 13)  # 6 weeks
    ok = _run(birth, [(first, "20"), (date(2025, 11, 6), "20")], date(2025, 11, 20))
    assert _status(ok, "DTaP/Tdap/Td", "2") == {("Valid", None)}
    too_young = _run(birth, [(first, "20"), (date(2025, 11, 5), "20")], date(2025, 11, 20))
    assert _status(too_young, "DTaP/Tdap/Td", "2") == {("Not Valid", "Age: Too Young")}


def test_minimum_interval_and_forecast_from_an_invalid_dose() -> None:
    birth = date(2025, 1, 1)
    result = _run(birth, [(date(2025, 3, 1), "10"), (date(2025, 3, 20), "10")], date(2025, 3, 20))
    assert _status(result, "Polio", "2") == {("Not Valid", "Interval: too Soon")}
    polio = result.group("Polio")
    assert polio is not None
    # the next dose counts its 4 weeks from the invalid dose
    assert (polio.dose_number, polio.earliest) == (2, date(2025, 4, 17))


def test_inadvertent_vaccine_is_not_valid() -> None:
    # Tdap (115) given to an infant is inadvertent for the DTaP series
    result = _run(date(2025, 1, 1), [(date(2025, 3, 1), "115")], date(2025, 3, 1))
    assert ("Not Valid", "Inadvertent Vaccine") in _status(result, "DTaP/Tdap/Td", "1")


def test_live_virus_conflict() -> None:
    birth = date(2020, 1, 1)
    doses = [(date(2021, 1, 10), "03"), (date(2021, 1, 25), "21")]  # varicella 15 days after MMR
    result = _run(birth, doses, date(2021, 2, 1))
    assert _status(result, "Varicella", "2") == {("Not Valid", "Live Virus Conflict")}


def test_forecast_waits_for_the_end_of_a_live_virus_conflict() -> None:
    result = _run(date(2020, 1, 1), [(date(2021, 1, 10), "03")], date(2021, 1, 20))
    varicella = result.group("Varicella")
    assert varicella is not None
    assert varicella.earliest == date(2021, 2, 7)  # 28 days after the MMR, not the 12-month minimum age


def test_complete_series_and_extraneous_dose() -> None:
    doses = [(date(2021, 1, 1), "83"), (date(2021, 7, 1), "83"), (date(2022, 1, 1), "83")]
    result = _run(date(2020, 1, 1), doses, date(2022, 6, 1))
    hepa = result.group("HepA")
    assert hepa is not None and hepa.status == "Complete"
    assert (hepa.earliest, hepa.dose_number) == (None, None)
    assert _status(result, "HepA", "3") == {("Extraneous", "Series Already Complete")}


def test_doses_after_the_assessment_date_are_ignored() -> None:
    result = _run(date(2025, 1, 1), [(date(2026, 1, 1), "20")], date(2025, 6, 1))
    assert not [e for e in result.evaluations if e.ref == "1"]


def test_contraindication_from_observation() -> None:
    schedule = load_schedule()
    patient = Patient(date(2020, 1, 1), "F", frozenset({"080"}))  # adverse reaction to a vaccine component
    result = forecast(schedule, patient, [], date(2021, 1, 1))
    dtap = result.group("DTaP/Tdap/Td")
    assert dtap is not None and dtap.status == "Contraindicated"


def test_aged_out() -> None:
    # rotavirus dose 1 has a maximum age of 15 weeks
    result = _run(date(2025, 1, 1), [], date(2025, 6, 1))
    rota = result.group("Rotavirus")
    assert rota is not None and rota.status == "Aged Out"


def test_snomed_typo_in_cdc_data_is_corrected() -> None:
    # CDC's ScheduleSupportingData codes observation 095 as SNOMED 2219088009 (one digit too many)
    schedule = load_schedule()
    assert "095" in schedule.observations_from_codes([(SNOMED, "219088009")])
    assert not schedule.observations_from_codes([(SNOMED, "2219088009")])
