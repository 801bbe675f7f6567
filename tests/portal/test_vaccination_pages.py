"""The vaccination pages (both databases): the parent's view of the child's card and forecast, a
past dose the holder adds, a dose a paediatrician records from the pack's DataMatrix, validation of
reported doses, the read-only card of a non-vaccinator, "not found" for a professional without
access, the certificate, and the pages in French and German."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import pytest
from fastapi.testclient import TestClient
from portal_http import post, sign_in
from portal_world import World
from sqlalchemy import func, select
from vaccination_world import (
    DTAP,
    EXPIRY,
    KID_PAGE,
    PACK,
    SCAN,
    VaccinationWorld,
    add_vaccination_world,
    next_due,
    shown,
)

from sharedcare.audit.models import audit_log
from sharedcare.identity import accounts
from sharedcare.portal.i18n import Translator
from sharedcare.portal.views.vaccination import badge_of, build_card, reason_words
from sharedcare.storage.tables import resource
from sharedcare.vaccination import cdsi
from sharedcare.vaccination.operations import today
from sharedcare.vaccination.products import GTIN_SYSTEM, catalogue
from sharedcare.vaccination.record import (
    PATIENT_REPORTED,
    SERIAL_EXTENSION,
    VALIDATED,
    VALIDATION_EXTENSION,
    verification,
)

Browser = Callable[[], TestClient]
HOLDER_PAGE = "/portal/vaccinations"


@pytest.fixture
def vw(world: World) -> VaccinationWorld:
    return add_vaccination_world(world)


def immunizations(world: World, patient: str) -> list[dict[str, Any]]:
    """The patient's stored Immunizations (unrestricted: what the pages wrote)."""
    fhir = world.app.state.fhir
    query = fhir.parse_search("Immunization", [("patient", patient), ("_count", "100")], strict=True)
    return [s.resource() for s in fhir.search(query).matches]


def count(world: World) -> int:
    with world.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(resource).where(resource.c.type == "Immunization")
            ).scalar_one()
        )


def group_card(page: str, group: str) -> str:
    """The HTML of one vaccine group's card."""
    start = page.index(f'>{group} <strong class="badge')
    return page[start : page.index("</section>", start)]


def signed_in(browser: Browser, person: Any) -> TestClient:
    c = browser()
    sign_in(c, person)
    return c


def test_the_parent_sees_the_childs_card_and_next_due_date(
    world: World, vw: VaccinationWorld, browser: Browser
) -> None:
    jean = signed_in(browser, world.representative)  # his only record: Tom's, chosen for him
    assert 'href="/portal/vaccinations"' in jean.get("/portal/home").text
    page = jean.get(HOLDER_PAGE)
    assert page.status_code == 200, page.text[:500]
    text = page.text
    assert "Tom Muller" in text and "Engerix B (paediatric)" in text and "HB-001" in text
    hepb = group_card(text, "HepB")
    assert "Engerix B (paediatric)" in hepb and "dose 2" in hepb
    dtap = group_card(text, DTAP)
    assert 'class="badge overdue">Overdue' in dtap  # four months old, no DTaP yet
    assert shown(next_due(world)) in dtap and "Hexyon" in dtap  # the engine's date, and what to give
    assert "Dose 1 of the series" in dtap
    with world.engine.connect() as conn:  # the card was read through the parent's access decision
        queries = conn.execute(
            select(audit_log.c.query).where(
                audit_log.c.patient_id == "kid",
                audit_log.c.principal_subject == world.representative.account_id,
            )
        ).scalars()
        assert "Patient/kid/$immds-forecast" in list(queries)


def test_the_holder_adds_a_past_dose_marked_patient_reported(
    world: World, vw: VaccinationWorld, browser: Browser
) -> None:
    marie = signed_in(browser, world.patient)
    before = count(world)
    refused = post(
        marie, f"{HOLDER_PAGE}/doses", {"date": "1986-05-10", "product": "", "name": ""}, HOLDER_PAGE
    )
    assert refused.status_code == 400 and "Choose the vaccine from the list" in refused.text
    future = post(marie, f"{HOLDER_PAGE}/doses", {"date": "2999-01-01", "product": "priorix"}, HOLDER_PAGE)
    assert (
        future.status_code == 400 and "The date of the dose is in the future." in future.text
    )  # the server's rule
    no_code = post(marie, f"{HOLDER_PAGE}/doses", {"date": "1986-05-10", "name": "Rouvax"}, HOLDER_PAGE)
    assert (
        no_code.status_code == 400 and "Choose the vaccine from the list" in no_code.text
    )  # no CVX: refused
    assert count(world) == before  # nothing stored
    done = post(
        marie,
        f"{HOLDER_PAGE}/doses",
        {"date": "1986-05-10", "product": "priorix", "lot": "P-77"},
        HOLDER_PAGE,
    )
    assert done.status_code == 303 and done.headers["location"] == HOLDER_PAGE
    (dose,) = immunizations(world, "pa")
    assert verification(dose) == PATIENT_REPORTED and dose["primarySource"] is False
    assert dose["lotNumber"] == "P-77" and dose["occurrenceDateTime"] == "1986-05-10"
    page = marie.get(HOLDER_PAGE).text
    assert "reported by you until a professional validates it" in page  # the notice
    mmr = group_card(page, "MMR")
    assert "Priorix" in mmr and "Reported by the patient, not validated" in mmr
    free = post(
        marie, f"{HOLDER_PAGE}/doses", {"date": "1990-03-01", "name": "Typhim Vi", "cvx": "101"}, HOLDER_PAGE
    )
    assert free.status_code == 303
    assert "Typhim Vi" in marie.get(HOLDER_PAGE).text


def test_a_vaccinator_validates_a_reported_dose(world: World, vw: VaccinationWorld, browser: Browser) -> None:
    marie = signed_in(browser, world.patient)
    post(marie, f"{HOLDER_PAGE}/doses", {"date": "1986-05-10", "product": "priorix"}, HOLDER_PAGE)
    (dose,) = immunizations(world, "pa")
    gp = signed_in(browser, world.gp)  # in Marie's care, a vaccinating profession
    page = "/portal/pro/patients/pa/vaccinations"
    assert "Validate this dose" in gp.get(page).text
    done = post(gp, f"{page}/{dose['id']}/validate", {}, page)
    assert done.status_code == 303, done.text[:800]
    (dose,) = immunizations(world, "pa")
    assert verification(dose) == VALIDATED
    assert any(e["url"] == VALIDATION_EXTENSION for e in dose["extension"])
    assert "Validate this dose" not in gp.get(page).text
    assert "validated by a professional" in marie.get(HOLDER_PAGE).text
    again = post(gp, f"{page}/{dose['id']}/validate", {}, page)
    assert again.status_code == 409 and "not waiting for validation" in again.text


def test_a_paediatrician_records_a_dose_from_the_datamatrix(
    world: World, vw: VaccinationWorld, browser: Browser
) -> None:
    doctor = signed_in(browser, vw.paediatrician)
    page = doctor.get(KID_PAGE)
    assert page.status_code == 200 and "Record a dose" in page.text
    read = post(doctor, f"{KID_PAGE}/doses", {"action": "scan", "datamatrix": SCAN}, KID_PAGE)
    assert read.status_code == 200 and "The code was read" in read.text
    assert '<option value="hexyon" selected>' in read.text  # the product from the pack's GTIN
    assert (
        'value="AB-12"' in read.text
        and f'value="{EXPIRY.isoformat()}"' in read.text
        and 'value="SER9"' in read.text
    )
    bad = post(
        doctor, f"{KID_PAGE}/doses", {"action": "scan", "datamatrix": "01095060001343531728123110X"}, KID_PAGE
    )
    assert bad.status_code == 400 and "The DataMatrix code could not be read" in bad.text
    no_lot = post(
        doctor,
        f"{KID_PAGE}/doses",
        {"action": "record", "product": "hexyon", "date": today().isoformat()},
        KID_PAGE,
    )
    assert no_lot.status_code == 400
    assert "The lot number of the pack is required for a dose you gave." in no_lot.text  # the server's rule
    assert "The expiry date of the pack is required for a dose you gave." in no_lot.text
    assert [i["id"] for i in immunizations(world, "kid")] == ["hepb-birth"]  # nothing stored
    before = next_due(world)
    fields = {
        "action": "record",
        "datamatrix": SCAN,
        "date": today().isoformat(),
        "site": "LT",
        "route": "IM",
    }
    done = post(doctor, f"{KID_PAGE}/doses", {**fields, "dose_number": "1"}, KID_PAGE)
    assert done.status_code == 303 and done.headers["location"] == KID_PAGE, done.text[:800]
    (dose,) = [i for i in immunizations(world, "kid") if i["id"] != "hepb-birth"]
    assert dose["lotNumber"] == "AB-12" and dose["expirationDate"] == EXPIRY.isoformat()
    assert {"system": GTIN_SYSTEM, "code": PACK} in dose["vaccineCode"]["coding"]
    assert {"url": SERIAL_EXTENSION, "valueString": "SER9"} in dose["extension"]
    assert [p["actor"]["reference"] for p in dose["performer"]] == ["Practitioner/paed", "Organization/hosp"]
    assert dose["primarySource"] is True and verification(dose) is None
    assert dose["site"]["coding"][0]["code"] == "LT" and dose["protocolApplied"] == [
        {"doseNumberPositiveInt": 1}
    ]
    after = next_due(world)
    assert after != before
    card = group_card(doctor.get(KID_PAGE).text, DTAP)
    assert "Hexyon" in card and "AB-12" in card and shown(after) in card
    jean = signed_in(browser, world.representative)  # the parent sees the updated card
    dtap = group_card(jean.get(HOLDER_PAGE).text, DTAP)
    assert "Hexyon" in dtap and shown(after) in dtap and shown(before) not in dtap


def test_a_non_vaccinating_professional_cannot_record(
    world: World, vw: VaccinationWorld, browser: Browser
) -> None:
    physio = signed_in(browser, vw.physiotherapist)
    page = physio.get(KID_PAGE)
    assert page.status_code == 200 and "Engerix B (paediatric)" in page.text  # reads the card
    assert "Record a dose" not in page.text and "the card is read-only" in page.text
    fields = {"action": "record", "datamatrix": SCAN, "date": today().isoformat()}
    refused = post(physio, f"{KID_PAGE}/doses", fields, KID_PAGE)
    assert refused.status_code == 403 and "You may not record vaccinations in this record." in refused.text
    assert [i["id"] for i in immunizations(world, "kid")] == ["hepb-birth"]
    jean = signed_in(browser, world.representative)
    post(jean, f"{HOLDER_PAGE}/doses", {"date": vw.born.isoformat(), "product": "beyfortus"}, HOLDER_PAGE)
    (reported,) = [i for i in immunizations(world, "kid") if i["id"] != "hepb-birth"]
    assert "Validate this dose" not in physio.get(KID_PAGE).text
    denied = post(physio, f"{KID_PAGE}/{reported['id']}/validate", {}, KID_PAGE)
    assert denied.status_code == 403 and "You may not record vaccinations in this record." in denied.text
    (still,) = [i for i in immunizations(world, "kid") if i["id"] != "hepb-birth"]
    assert (
        verification(still) == PATIENT_REPORTED
        and still["meta"]["versionId"] == reported["meta"]["versionId"]
    )


def test_a_record_without_birth_date_shows_the_doses_without_forecast(
    world: World, vw: VaccinationWorld, browser: Browser
) -> None:
    kid = world.app.state.fhir.read("Patient", "kid").resource()
    del kid["birthDate"]
    world.app.state.fhir.update("Patient", "kid", kid)
    page = signed_in(browser, world.representative).get(HOLDER_PAGE)
    assert page.status_code == 200
    assert "The forecast needs the full date of birth" in page.text
    other = page.text[page.text.index('id="other"') :]
    assert "Engerix B (paediatric)" in other and "HB-001" in other


def test_badges_follow_the_forecast_dates() -> None:
    on = date(2026, 6, 1)

    def group(status: str, **dates: date) -> cdsi.GroupForecast:
        fields: dict[str, Any] = {"earliest": None, "recommended": None, "past_due": None, "latest": None}
        fields.update(dates)
        return cdsi.GroupForecast("MMR", status, 1, vaccines=(), series=None, reason=None, **fields)

    later, earlier = date(2026, 7, 1), date(2026, 5, 1)
    assert (
        badge_of(group("Not Complete", earliest=earlier, recommended=later, past_due=later), on)
        == "not-complete"
    )
    assert badge_of(group("Not Complete", earliest=earlier, recommended=on, past_due=later), on) == "due"
    assert (
        badge_of(group("Not Complete", earliest=earlier, recommended=earlier, past_due=on), on) == "overdue"
    )
    assert badge_of(group("Not Complete", earliest=on), on) == "due"  # no due date: the earliest one
    assert badge_of(group("Aged Out"), on) == "aged-out" and badge_of(group("Immune"), on) == "immune"
    assert badge_of(group("Contraindicated"), on) == "contraindicated"
    t = Translator("fr")
    assert reason_words(t, "Dose 2 of the MMR 2-dose series, recommended based on interval") == (
        "Dose 2 de la série « MMR 2-dose series », prévue après l'intervalle depuis la dose précédente."
    )
    assert reason_words(t, "Series complete") == "La série est complète."
    assert reason_words(t, "Some schedule text") == "Some schedule text"  # the schedule's own words
    unconfirmed = cdsi.GroupForecast(
        "MMR", "Not Complete", 1, on, on, None, None, (), None, None, unconfirmed=("lu/mmr/1",)
    )
    card = build_card(
        t, catalogue(), {"birthDate": "2025-05-01"}, [], cdsi.Forecast(on, (), (unconfirmed,)), on
    )
    assert [(g.name, g.badge, g.unconfirmed) for g in card.next_doses] == [("MMR", "due", True)]


def test_a_professional_without_access_gets_not_found(
    world: World, vw: VaccinationWorld, browser: Browser
) -> None:
    for person in (world.stranger, world.gp):  # the GP is in Marie's care, not Tom's
        c = signed_in(browser, person)
        for resp in (
            c.get(KID_PAGE),
            c.get(f"{KID_PAGE}/certificate"),
            post(
                c,
                f"{KID_PAGE}/doses",
                {"action": "record", "datamatrix": SCAN, "date": today().isoformat()},
                "/portal/pro",
            ),
            post(c, f"{KID_PAGE}/hepb-birth/validate", {}, "/portal/pro"),
        ):
            assert resp.status_code == 404, resp.text[:300]
            assert "No record was found, or you have no access to it." in resp.text
            assert "Tom" not in resp.text and "Engerix" not in resp.text and "HB-001" not in resp.text
    assert [i["id"] for i in immunizations(world, "kid")] == ["hepb-birth"]
    own = signed_in(browser, world.patient).get(HOLDER_PAGE).text  # Marie's own card: not Tom's doses
    assert "HB-001" not in own and "Tom" not in own


def test_the_certificate_in_the_portals_language(
    world: World, vw: VaccinationWorld, browser: Browser
) -> None:
    jean = signed_in(browser, world.representative)
    resp = jean.get(f"{HOLDER_PAGE}/certificate")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/pdf"
    assert resp.content.startswith(b"%PDF-") and resp.headers["content-language"] == "en"
    assert "attachment" in resp.headers["content-disposition"]
    doctor = signed_in(browser, vw.paediatrician)
    assert doctor.get(f"{KID_PAGE}/certificate").content.startswith(b"%PDF-")


@pytest.mark.parametrize(
    ("lang", "words"),
    [
        (
            "fr",
            ["Vaccinations", "Prochaines doses", "En retard", "Carnet de vaccination", "Ajouter une dose"],
        ),
        ("de", ["Impfungen", "Nächste Dosen", "Überfällig", "Impfpass", "Dosis hinzufügen"]),
    ],
)
def test_the_pages_in_french_and_german(
    world: World, vw: VaccinationWorld, browser: Browser, lang: str, words: list[str]
) -> None:
    for person in (world.representative, vw.paediatrician):
        with accounts.transaction(world.engine) as conn:
            accounts.set_language(conn, person.account_id, lang)
    jean = signed_in(browser, world.representative)
    page = jean.get(HOLDER_PAGE)
    assert f'<html lang="{lang}">' in page.text
    for word in words:
        assert word in page.text, word
    assert shown(next_due(world), lang) in page.text
    doctor = signed_in(browser, vw.paediatrician)
    pro = doctor.get(KID_PAGE).text
    assert ("Enregistrer la dose" if lang == "fr" else "Dosis erfassen") in pro
    refused = post(
        doctor,
        f"{KID_PAGE}/doses",
        {"action": "record", "product": "hexyon", "date": today().isoformat()},
        KID_PAGE,
    )
    expected = "numéro de lot" if lang == "fr" else "Chargennummer"
    assert refused.status_code == 400 and expected in refused.text
