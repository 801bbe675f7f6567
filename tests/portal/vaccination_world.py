"""The vaccination part of the portal tests' world (HTTP and browser tests).

Tom Muller (``kid``), four months old, with a hepatitis B dose at birth; Jean Muller (the
world's representative) is his parent. Dr Anna Weber, a paediatrician (column ``med``,
organisation ``hosp``), and Tim Roth, a physiotherapist (``pse``: reads the record, does not
vaccinate), are in his care. The local product catalogue knows ``PACK`` as a Hexyon pack, as an
operator would add it (``<data_dir>/vaccination/products``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from babel.dates import format_date
from portal_world import Person, World, enrol

from sharedcare.access import consent
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.identity.matricule import MATRICULE_SYSTEM, generate
from sharedcare.storage.engine import writer
from sharedcare.vaccination.inputs import stored_forecast
from sharedcare.vaccination.operations import today
from sharedcare.vaccination.products import CVX_SYSTEM
from support import add_care

PACK = "09506000134352"
"""GS1's example GTIN, given to Hexyon in the local catalogue."""
GS = "\x1d"
EXPIRY = date(2028, 12, 31)
SCAN = f"]d201{PACK}17281231" + f"10AB-12{GS}21SER9"
"""What a scanner types for a Hexyon pack: lot AB-12, expiry 31 Dec 2028, serial SER9."""
DTAP = "DTaP/Tdap/Td"
KID_PAGE = "/portal/pro/patients/kid/vaccinations"


@dataclass
class VaccinationWorld:
    born: date
    paediatrician: Person
    physiotherapist: Person


def add_vaccination_world(world: World) -> VaccinationWorld:
    folder = world.settings.data_dir / "vaccination" / "products"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "packs.toml").write_text(f'schema = 1\n[products.hexyon]\ngtins = ["{PACK}"]\n', "utf-8")
    born = today() - timedelta(days=120)
    fhir = world.app.state.fhir
    for res in (
        {
            "resourceType": "Practitioner",
            "id": "paed",
            "active": True,
            "name": [{"prefix": ["Dr"], "given": ["Anna"], "family": "Weber"}],
        },
        {
            "resourceType": "Practitioner",
            "id": "physio",
            "active": True,
            "name": [{"given": ["Tim"], "family": "Roth"}],
        },
        {
            "resourceType": "Patient",
            "id": "kid",
            "identifier": [{"system": MATRICULE_SYSTEM, "value": generate(born, 31)}],
            "name": [{"family": "Muller", "given": ["Tom"]}],
            "gender": "male",
            "birthDate": born.isoformat(),
        },
        {
            "resourceType": "Immunization",
            "id": "hepb-birth",
            "status": "completed",
            "vaccineCode": {
                "coding": [{"system": CVX_SYSTEM, "code": "08"}],
                "text": "Engerix B (paediatric)",
            },
            "patient": {"reference": "Patient/kid"},
            "occurrenceDateTime": born.isoformat(),
            "lotNumber": "HB-001",
        },
    ):
        fhir.update(res["resourceType"], res["id"], res)
    now = datetime.now(UTC).replace(tzinfo=None)
    agency = Principal(PrincipalKind.SYSTEM, "test-seed", trusted=True)
    with writer(world.engine).begin() as conn:
        add_care(conn, "paed-kid", "kid", "paed", now)
        add_care(conn, "physio-kid", "kid", "physio", now)
        consent.appoint(conn, fhir, agency, "kid", world.representative.account_id, "parent", now)
    paediatrician = enrol(
        world.engine,
        world.settings,
        PrincipalKind.PROFESSIONAL,
        "dr.weber",
        display_name="Dr Anna Weber",
        username="dr.weber",
        practitioner_id="paed",
        profession="med",
        organization_id="hosp",
    )
    physiotherapist = enrol(
        world.engine,
        world.settings,
        PrincipalKind.PROFESSIONAL,
        "tim.roth",
        display_name="Tim Roth",
        username="tim.roth",
        practitioner_id="physio",
        profession="pse",
    )
    return VaccinationWorld(born, paediatrician, physiotherapist)


def next_due(world: World, group: str = DTAP, patient: str = "kid") -> date:
    """The group's recommended date as the engine forecasts it today from the stored record
    (the agency's unrestricted view: what the pages must agree with)."""
    found = stored_forecast(world.app.state.fhir, patient, today(), world.settings.forecast_schedule)
    forecast = found.forecast.group(group)
    assert forecast is not None and forecast.recommended is not None
    return forecast.recommended


def shown(day: date, lang: str = "en") -> str:
    """A date as the portal writes it in ``lang`` (Babel's medium format)."""
    return format_date(day, format="medium", locale=lang)
