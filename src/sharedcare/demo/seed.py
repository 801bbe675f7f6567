"""A deterministic FHIR R4 demo population for Luxembourg, as one ``transaction`` Bundle.

Why a transaction of PUTs with readable ids (``lu-pat-0001``, ``lu-org-chl``): loading the bundle twice
updates the same resources instead of duplicating them, and people reading a demo or a failing test
can tell what a resource is from its id. Every reference inside the bundle points at the ``urn:uuid:``
full URL of another entry, which the server's transaction processing rewrites to ``Type/id``.

Why deterministic: the same seed must give byte-identical output so that tests, screenshots and
benchmarks can rely on it. All randomness comes from one ``random.Random(seed)``; all dates are computed
from :data:`REFERENCE_DATE`, never from the clock.

Public facts only: real hospital groups and laboratories, real communes and cantons; pharmacies, GP
practices and every person are invented. The facts and the clinical catalogue (problems, medicines,
tests, allergens, vaccines and the childhood schedule) are data files in ``demo/data`` so that they can
be reviewed without reading code. Codes: SNOMED CT, LOINC, UCUM, ATC, CVX (the crosswalk the
vaccination forecaster is tested with, DOMAIN.md §2.3) and HL7 terminology code systems.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
import unicodedata
import uuid
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from sharedcare.identity.matricule import MATRICULE_SYSTEM, generate

Resource = dict[str, Any]

REFERENCE_DATE = dt.date(2026, 11, 25)
DEFAULT_SEED = 20261125
MAX_PATIENTS = 9999

# Placeholders: no national URIs are known yet for these identifier systems and this local code system.
PROFESSIONAL_CODE_SYSTEM = "http://sharedcare.lu/fhir/sid/professional-code"
ORGANIZATION_CODE_SYSTEM = "http://sharedcare.lu/fhir/sid/organization-code"
ORGANIZATION_KIND_SYSTEM = "http://sharedcare.lu/fhir/CodeSystem/organization-kind"
# Lets operators find (and purge) everything the seed created; the system is a placeholder too.
DEMO_TAG = {
    "system": "http://sharedcare.lu/fhir/CodeSystem/data-origin",
    "code": "demo",
    "display": "Demo data",
}

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ATC = "http://www.whocc.no/atc"
CVX = "http://hl7.org/fhir/sid/cvx"
BCP47 = "urn:ietf:bcp:47"
ORG_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
PRACTITIONER_ROLE = "http://terminology.hl7.org/CodeSystem/practitioner-role"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0360 = "http://terminology.hl7.org/CodeSystem/v2-0360"
V2_0443 = "http://terminology.hl7.org/CodeSystem/v2-0443"
V3_ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
V3_ACT_SITE = "http://terminology.hl7.org/CodeSystem/v3-ActSite"
V3_ROUTE = "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"

# Fixed namespace so that full URLs depend only on Type/id: the same resource keeps its urn:uuid.
_URN_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "http://sharedcare.lu/demo")

LANGUAGE_NAMES = {"lb": "Luxembourgish", "fr": "French", "de": "German", "pt": "Portuguese", "en": "English"}


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def _concept(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [_coding(system, code, display)]}
    if text:
        concept["text"] = text
    return concept


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _add_months(day: dt.date, months: int) -> dt.date:
    """``day`` shifted by whole months, clipped to the end of a shorter month (31 Jan + 1 → 28/29 Feb)."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    next_month = dt.date(year + (month == 12), month % 12 + 1, 1)
    last_day = (next_month - dt.timedelta(days=1)).day
    return dt.date(year, month, min(day.day, last_day))


def _age_years(birth: dt.date, on: dt.date = REFERENCE_DATE) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def _age_months(birth: dt.date, on: dt.date = REFERENCE_DATE) -> int:
    return (on.year - birth.year) * 12 + on.month - birth.month - (on.day < birth.day)


def _last_sunday(year: int, month: int) -> dt.date:
    last = dt.date(year, month, 31)  # only used for March and October
    return last - dt.timedelta(days=(last.weekday() + 1) % 7)


def _lu_offset(day: dt.date) -> str:
    """UTC offset of Europe/Luxembourg on ``day`` (EU summer time rule), without relying on tzdata."""
    return "+02:00" if _last_sunday(day.year, 3) <= day < _last_sunday(day.year, 10) else "+01:00"


def _ascii(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if c.isascii() and c.isalnum()).lower()


def _full_url(resource_type: str, resource_id: str) -> str:
    """The entry's ``urn:uuid:``, derived from Type/id so that a resource keeps it across seeds."""
    return f"urn:uuid:{uuid.uuid5(_URN_NAMESPACE, f'{resource_type}/{resource_id}')}"


@cache
def _data(name: str) -> Any:
    """A JSON file from ``demo/data``, loaded once (through importlib so it works from a wheel)."""
    return json.loads(resources.files("sharedcare.demo").joinpath("data", name).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------
# Catalogue: professions, problems, medicines, tests, vaccines
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Post:
    """One professional post: a PractitionerRole in an organisation."""

    role: str  # practitioner-role code: doctor | nurse | pharmacist
    title: str
    qualification: tuple[str, str]  # v2-0360 degree code, display
    specialty: tuple[str, str] | None  # SNOMED CT practice code, display
    organization: str  # organisation key in organizations.json


_DOCTOR = ("MD", "Doctor of Medicine")
_POSTS: tuple[_Post, ...] = (
    _Post("doctor", "General practitioner", _DOCTOR, ("394814009", "General practice"), "gp-ampark"),
    _Post("doctor", "General practitioner", _DOCTOR, ("394814009", "General practice"), "gp-ampark"),
    _Post("doctor", "General practitioner", _DOCTOR, ("394814009", "General practice"), "gp-minett"),
    _Post("doctor", "General practitioner", _DOCTOR, ("394814009", "General practice"), "gp-minett"),
    _Post("doctor", "Paediatrician", _DOCTOR, ("394537008", "Paediatric specialty"), "chl"),
    _Post("doctor", "Paediatrician", _DOCTOR, ("394537008", "Paediatric specialty"), "gp-minett"),
    _Post("doctor", "Cardiologist (hospital doctor)", _DOCTOR, ("394579002", "Cardiology"), "hrs"),
    _Post("doctor", "Endocrinologist (hospital doctor)", _DOCTOR, ("394583002", "Endocrinology"), "chem"),
    _Post("doctor", "Pneumologist (hospital doctor)", _DOCTOR, ("418112009", "Pulmonary medicine"), "chdn"),
    _Post("doctor", "Laboratory doctor", _DOCTOR, ("394915009", "General pathology"), "lab-lr"),
    _Post("doctor", "Laboratory doctor", _DOCTOR, ("408454008", "Clinical microbiology"), "lab-ketterthill"),
    _Post("pharmacist", "Pharmacist", ("PharmD", "Doctor of Pharmacy"), None, "pha-gare"),
    _Post("pharmacist", "Pharmacist", ("PharmD", "Doctor of Pharmacy"), None, "pha-alzette"),
    _Post("nurse", "Hospital nurse", ("RN", "Registered Nurse"), None, "chl"),
    _Post("nurse", "Hospital nurse", ("RN", "Registered Nurse"), None, "chdn"),
)
_GP_POSTS = (0, 1, 2, 3)
_PAEDIATRIC_POSTS = (4, 5)

# Who follows which chronic problem when it is not the GP (catalogue "specialist" -> index in _POSTS).
_SPECIALISTS = {"cardiology": 6, "endocrinology": 7, "pulmonology": 8}
_ROUTES = {
    "oral": ("26643006", "Oral route"),
    "inhaled": ("447694001", "Respiratory tract route"),
    "topical": ("6064005", "Topical route"),
}
_PENICILLIN_ATC_PREFIX = "J01C"  # beta-lactam penicillins: never prescribed to a penicillin-allergic patient


@dataclass(frozen=True, slots=True)
class _Drug:
    atc: str
    atc_display: str
    product: str
    dosage: str
    route: str  # key of _ROUTES
    per_day: int | None  # structured frequency; None when taken only as needed
    as_needed: bool = False


@dataclass(frozen=True, slots=True)
class _LabTest:
    loinc: str
    display: str
    unit: str  # UCUM
    healthy: tuple[float, float]  # range of values drawn for people without the related problem
    affected: tuple[float, float]  # range drawn when the problem is present
    reference: tuple[float | None, float | None]  # reference range printed on the report
    decimals: int


@dataclass(frozen=True, slots=True)
class _Problem:
    """A condition the generator may give a patient, with what usually comes with it."""

    snomed: str
    display: str
    chance: dict[str, list[list[float]]]  # "by_age" or per gender: [[from age, probability], ...]
    drugs: tuple[str, ...]
    labs: tuple[str, ...]
    specialist: str | None  # key of _SPECIALISTS; None when the GP follows it
    min_onset_months: int
    episodic: bool  # a resolved episode (e.g. an antibiotic course) rather than a chronic problem

    def probability(self, age: int, gender: str) -> float:
        value = 0.0
        for threshold, probability in self.chance.get(gender) or self.chance.get("by_age", []):
            if age >= threshold:
                value = probability
        return value


@dataclass(frozen=True, slots=True)
class _Allergen:
    snomed: str
    display: str
    category: str  # food | medication | environment | biologic
    type: str  # allergy | intolerance
    criticality: str  # low | high | unable-to-assess
    reaction: tuple[str, str]  # SNOMED CT manifestation
    severity: str  # mild | moderate | severe


@dataclass(frozen=True, slots=True)
class _Vaccine:
    """A vaccine product family, coded in CVX (crosswalk), SNOMED CT and ATC (DOMAIN.md §2.3)."""

    text: str
    cvx: tuple[str, str]
    snomed: tuple[str, str]
    atc: str
    route: str  # v3-RouteOfAdministration code: IM or PO


@dataclass(frozen=True, slots=True)
class _Catalogue:
    """The clinical content of ``data/catalogue.json``, typed."""

    drugs: dict[str, _Drug]
    penicillin_alternatives: dict[str, str]
    labs: dict[str, _LabTest]
    adult_chronic: dict[str, _Problem]
    adult_episodes: dict[str, _Problem]
    child_chronic: dict[str, _Problem]
    child_episodes: dict[str, _Problem]
    flu_vaccine_indications: frozenset[str]
    allergens: dict[str, _Allergen]
    adult_allergens: tuple[str, ...]
    child_allergens: tuple[str, ...]
    vaccines: dict[str, _Vaccine]
    child_schedule: tuple[tuple[str, int, int], ...]  # (vaccine, age in months, scheduled dose number)


@cache
def _catalogue() -> _Catalogue:
    raw = _data("catalogue.json")

    def problems(group: str, episodic: bool) -> dict[str, _Problem]:
        return {
            key: _Problem(
                snomed=p["snomed"],
                display=p["display"],
                chance=p["chance"],
                drugs=tuple(p.get("drugs", ())),
                labs=tuple(p.get("labs", ())),
                specialist=p.get("specialist"),
                min_onset_months=p.get("min_onset_months", 0),
                episodic=episodic,
            )
            for key, p in raw["problems"][group].items()
        }

    return _Catalogue(
        drugs={key: _Drug(**d) for key, d in raw["drugs"].items()},
        penicillin_alternatives=raw["penicillin_alternatives"],
        labs={
            key: _LabTest(
                loinc=t["loinc"],
                display=t["display"],
                unit=t["unit"],
                healthy=(t["healthy"][0], t["healthy"][1]),
                affected=(t["affected"][0], t["affected"][1]),
                reference=(t["reference"][0], t["reference"][1]),
                decimals=t["decimals"],
            )
            for key, t in raw["labs"].items()
        },
        adult_chronic=problems("adult_chronic", episodic=False),
        adult_episodes=problems("adult_episodes", episodic=True),
        child_chronic=problems("child_chronic", episodic=False),
        child_episodes=problems("child_episodes", episodic=True),
        flu_vaccine_indications=frozenset(raw["flu_vaccine_indications"]),
        allergens={
            key: _Allergen(
                snomed=a["snomed"],
                display=a["display"],
                category=a["category"],
                type=a["type"],
                criticality=a["criticality"],
                reaction=(a["reaction"][0], a["reaction"][1]),
                severity=a["severity"],
            )
            for key, a in raw["allergens"].items()
        },
        adult_allergens=tuple(raw["adult_allergens"]),
        child_allergens=tuple(raw["child_allergens"]),
        vaccines={
            key: _Vaccine(
                text=v["text"],
                cvx=(v["cvx"][0], v["cvx"][1]),
                snomed=(v["snomed"][0], v["snomed"][1]),
                atc=v["atc"],
                route=v["route"],
            )
            for key, v in raw["vaccines"].items()
        },
        child_schedule=tuple((s["vaccine"], s["age_months"], s["dose"]) for s in raw["child_schedule"]),
    )


# Not drawn by chance: given when the generated BMI is 30 or more.
_OBESITY = _Problem("414916001", "Obesity", {}, (), (), None, 0, episodic=False)

# Schedule entries that continue the same antigen series (the booster counts after the primary doses).
_SERIES = {"dtap-ipv": "hexavalent"}
# MenB and MenACWY joined the national programme in 2024; PCV20 replaced PCV13 around then [P].
_MENINGOCOCCAL_PROGRAMME_START = dt.date(2024, 1, 1)
_PCV20_START = dt.date(2024, 7, 1)
_MISSED_DOSE_CHANCE = 0.06  # a few children are behind schedule, so the forecaster has work to do

# Reference growth (months, height cm, weight kg): rough medians, enough for plausible demo values.
_GROWTH: tuple[tuple[int, float, float], ...] = (
    (0, 50.0, 3.4),
    (6, 67.0, 7.6),
    (12, 75.0, 9.6),
    (24, 87.0, 12.2),
    (36, 96.0, 14.3),
    (60, 110.0, 18.5),
    (96, 128.0, 26.0),
    (120, 138.0, 32.0),
    (144, 150.0, 40.0),
    (168, 163.0, 52.0),
    (216, 172.0, 63.0),
)
_CHILD_VISIT_MONTHS = (1, 2, 4, 6, 12, 18, 24, 36, 48, 60, 72, 96, 120, 144, 168, 192)
_CHILD_AGE_BANDS = ((2, 11), (12, 35), (36, 95), (96, 150))  # months, younger child of each family
_ADULT_AGE_BANDS = ((18, 29, 15), (30, 44, 25), (45, 64, 30), (65, 79, 20), (80, 95, 10))


def _growth(months: float) -> tuple[float, float]:
    """Median (height cm, weight kg) at an age in months, by linear interpolation of _GROWTH."""
    for (m0, h0, w0), (m1, h1, w1) in itertools.pairwise(_GROWTH):
        if months <= m1:
            t = max(0.0, (months - m0) / (m1 - m0))
            return h0 + t * (h1 - h0), w0 + t * (w1 - w0)
    return _GROWTH[-1][1], _GROWTH[-1][2]


# --------------------------------------------------------------------------------------------------
# Generator state
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Clinician:
    number: int
    full_url: str
    name: str
    post: _Post


@dataclass(slots=True)
class _Home:
    line: str
    city: str
    canton: str
    postal_code: str


@dataclass(slots=True)
class _Person:
    number: int
    id: str
    full_url: str
    given: str
    family: str
    gender: str
    birth: dt.date
    languages: tuple[str, ...]
    home: _Home
    doctor: _Clinician
    matricule: str
    telecom: list[dict[str, str]] = field(default_factory=list)
    links: list[str] = field(default_factory=list)  # RelatedPerson full URLs this patient also is

    @property
    def age(self) -> int:
        return _age_years(self.birth)

    @property
    def is_child(self) -> bool:
        return self.age < 18

    @property
    def display(self) -> str:
        return f"{self.given} {self.family}"


@dataclass(slots=True)
class _Chart:
    """What was generated for one patient, so later steps stay clinically consistent."""

    problems: list[str] = field(default_factory=list)
    allergens: list[str] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)


class _BundleBuilder:
    """Generates the population and collects the transaction entries in a stable order."""

    def __init__(self, seed: int, patients: int) -> None:
        self.rng = random.Random(seed)
        self.catalogue = _catalogue()
        self.patient_count = patients
        self.entries: list[Resource] = []
        self.organizations: dict[str, str] = {}  # key -> full URL
        self.clinicians: list[_Clinician] = []
        self.people: list[_Person] = []
        self.children_of: dict[int, list[tuple[_Person, str]]] = {}  # child number -> (parent, MTH/FTH)
        self.used_matricules: set[str] = set()
        self.used_codes: set[int] = set()

    # -- bundle plumbing -------------------------------------------------------------------------

    def add(self, resource: Resource) -> str:
        """Append ``resource`` as a PUT entry and return its ``urn:uuid:`` full URL."""
        resource_type, resource_id = resource["resourceType"], resource["id"]
        full_url = _full_url(resource_type, resource_id)
        request = {"method": "PUT", "url": f"{resource_type}/{resource_id}"}
        self.entries.append({"fullUrl": full_url, "resource": resource, "request": request})
        return full_url

    @staticmethod
    def ref(full_url: str, display: str | None = None) -> dict[str, str]:
        reference = {"reference": full_url}
        if display:
            reference["display"] = display
        return reference

    @staticmethod
    def start(resource_type: str, resource_id: str) -> Resource:
        return {"resourceType": resource_type, "id": resource_id, "meta": {"tag": [dict(DEMO_TAG)]}}

    def stamp(self, day: dt.date) -> str:
        """A dateTime on ``day`` during opening hours, with Luxembourg's UTC offset of that day."""
        hour, minute = self.rng.randint(8, 17), self.rng.choice((0, 10, 15, 20, 30, 40, 45, 50))
        return f"{day.isoformat()}T{hour:02d}:{minute:02d}:00{_lu_offset(day)}"

    def build(self) -> Resource:
        self.add_organizations()
        self.add_practitioners()
        self.add_population()
        for person in self.people:
            self.add_chart(person)
        return {"resourceType": "Bundle", "type": "transaction", "entry": self.entries}

    # -- organisations and professionals ---------------------------------------------------------

    def add_organizations(self) -> None:
        data = _data("organizations.json")
        kinds = (
            ("hospitals", "hospital", "Hospital"),
            ("laboratories", "laboratory", "Medical laboratory"),
            ("pharmacies", "pharmacy", "Community pharmacy"),
            ("gp_practices", "gp-practice", "General practice"),
        )
        for group, kind, kind_display in kinds:
            for number, org in enumerate(data[group], start=1):
                resource = self.start("Organization", f"lu-org-{org['key']}")
                resource["identifier"] = [
                    {"system": ORGANIZATION_CODE_SYSTEM, "value": f"{kind.upper()}-{number:03d}"}
                ]
                resource["active"] = True
                resource["type"] = [
                    _concept(ORG_TYPE, "prov", "Healthcare Provider"),
                    _concept(ORGANIZATION_KIND_SYSTEM, kind, kind_display),
                ]
                resource["name"] = org["name"]
                if org["alias"]:
                    resource["alias"] = [org["alias"]]
                if org["url"]:
                    resource["telecom"] = [{"system": "url", "value": org["url"], "use": "work"}]
                address: dict[str, Any] = {"use": "work", "type": "physical"}
                if org["line"]:
                    address["line"] = [org["line"]]
                address.update(
                    city=org["city"], district=org["canton"], postalCode=org["postal_code"], country="LU"
                )
                resource["address"] = [address]
                self.organizations[org["key"]] = self.add(resource)

    def unique_code(self) -> str:
        while True:
            code = self.rng.randint(10_000_000, 99_999_999)
            if code not in self.used_codes:
                self.used_codes.add(code)
                return str(code)

    def add_practitioners(self) -> None:
        for number, post in enumerate(_POSTS, start=1):
            origin = self.pick_origin()
            gender = self.rng.choice(("female", "male"))
            given = self.rng.choice(origin[gender])
            family = self.rng.choice(origin["family"])
            resource = self.start("Practitioner", f"lu-prac-{number:04d}")
            resource["identifier"] = [
                {"use": "official", "system": PROFESSIONAL_CODE_SYSTEM, "value": self.unique_code()}
            ]
            resource["active"] = True
            name: dict[str, Any] = {"use": "official", "family": family, "given": [given]}
            if post.role == "doctor":
                name["prefix"] = ["Dr"]
            resource["name"] = [name]
            resource["telecom"] = [
                {"system": "email", "value": f"{_ascii(given)}.{_ascii(family)}@example.org", "use": "work"}
            ]
            resource["gender"] = gender
            resource["qualification"] = [
                {
                    "code": _concept(V2_0360, *post.qualification, text=post.title),
                    "issuer": {"display": "Ministère de la Santé, Luxembourg"},
                }
            ]
            resource["communication"] = [
                _concept(BCP47, lang, LANGUAGE_NAMES[lang])
                for lang in dict.fromkeys((*origin["languages"], "fr"))
            ]
            display = f"{'Dr ' if post.role == 'doctor' else ''}{given} {family}"
            clinician = _Clinician(number, self.add(resource), display, post)
            self.clinicians.append(clinician)

            role = self.start("PractitionerRole", f"lu-role-{number:04d}")
            role["active"] = True
            role["practitioner"] = self.ref(clinician.full_url, display)
            role["organization"] = self.ref(self.organizations[post.organization])
            role["code"] = [_concept(PRACTITIONER_ROLE, post.role, post.role.capitalize(), text=post.title)]
            if post.specialty:
                role["specialty"] = [_concept(SNOMED, *post.specialty)]
            self.add(role)

    # -- patients and families -------------------------------------------------------------------

    def pick_origin(self) -> dict[str, Any]:
        origins = _data("names.json")["origins"]
        chosen: dict[str, Any] = self.rng.choices(origins, weights=[o["weight"] for o in origins])[0]
        return chosen

    def pick_home(self) -> _Home:
        communes = _data("communes.json")
        commune = self.rng.choice(communes["communes"])
        street = self.rng.choice(communes["streets"])
        return _Home(
            line=f"{self.rng.randint(1, 120)}, {street}",
            city=commune["name"],
            canton=commune["canton"],
            postal_code=self.rng.choice(commune["postal_codes"]),
        )

    def pick_languages(self, origin: dict[str, Any]) -> tuple[str, ...]:
        languages: list[str] = origin["languages"]
        preferred = languages[0] if self.rng.random() < 0.8 else self.rng.choice(languages)
        return tuple(dict.fromkeys((preferred, *languages)))

    def new_person(
        self, origin: dict[str, Any], gender: str, family: str, birth: dt.date, home: _Home
    ) -> _Person:
        number = len(self.people) + 1
        person_id = f"lu-pat-{number:04d}"
        while True:
            matricule = generate(birth, self.rng.randint(1, 999))
            if matricule not in self.used_matricules:
                self.used_matricules.add(matricule)
                break
        is_child = _age_years(birth) < 18
        posts = _PAEDIATRIC_POSTS if is_child else _GP_POSTS
        person = _Person(
            number=number,
            id=person_id,
            full_url=_full_url("Patient", person_id),
            given=self.rng.choice(origin[gender]),
            family=family,
            gender=gender,
            birth=birth,
            languages=self.pick_languages(origin),
            home=home,
            doctor=self.clinicians[self.rng.choice(posts)],
            matricule=matricule,
        )
        person.telecom = self.pick_telecom(person)
        self.people.append(person)
        return person

    def adult_birth(self) -> dt.date:
        low, high, _ = self.rng.choices(_ADULT_AGE_BANDS, weights=[b[2] for b in _ADULT_AGE_BANDS])[0]
        years = self.rng.randint(low, high)
        return _add_months(REFERENCE_DATE, -12 * years) - dt.timedelta(days=self.rng.randint(1, 364))

    def add_family(self, number: int, children: int) -> None:
        """Two parents who are patients themselves, and their children (RelatedPerson per parent)."""
        low, high = _CHILD_AGE_BANDS[number % len(_CHILD_AGE_BANDS)]
        ages = [self.rng.randint(low, high)]
        for _ in range(children - 1):
            ages.append(min(ages[-1] + self.rng.randint(20, 65), 210))
        births = [_add_months(REFERENCE_DATE, -m) - dt.timedelta(days=self.rng.randint(0, 27)) for m in ages]
        eldest = min(births)
        mother_birth = _add_months(eldest, -12 * self.rng.randint(24, 38)) - dt.timedelta(
            days=self.rng.randint(0, 364)
        )
        father_birth = mother_birth - dt.timedelta(days=self.rng.randint(-730, 2190))
        origin = self.pick_origin()
        home = self.pick_home()
        family_name = self.rng.choice(origin["family"])
        mother = self.new_person(origin, "female", self.rng.choice(origin["family"]), mother_birth, home)
        father = self.new_person(origin, "male", family_name, father_birth, home)
        paediatrician = self.clinicians[self.rng.choice(_PAEDIATRIC_POSTS)]
        for birth in sorted(births):
            child = self.new_person(origin, self.rng.choice(("female", "male")), family_name, birth, home)
            child.doctor = paediatrician  # siblings see the same paediatrician
            self.children_of[child.number] = [(mother, "MTH"), (father, "FTH")]

    def add_population(self) -> None:
        remaining = self.patient_count
        families = max(remaining // 10, 1 if remaining >= 3 else 0)
        for number in range(families):
            children = min(1 + number % 2, remaining - 2)
            if children < 1:
                break
            self.add_family(number, children)
            remaining -= 2 + children
        for _ in range(remaining):
            origin = self.pick_origin()
            self.new_person(
                origin,
                self.rng.choice(("female", "male")),
                self.rng.choice(origin["family"]),
                self.adult_birth(),
                self.pick_home(),
            )
        # RelatedPersons first, so that parents' Patient.link can point at them.
        related: list[Resource] = []
        for child_number, parents in self.children_of.items():
            child = self.people[child_number - 1]
            for parent, relation in parents:
                related.append(self.related_person(child, parent, relation))
        for person in self.people:
            self.add(self.patient(person))
        for resource in related:
            self.add(resource)

    def pick_telecom(self, person: _Person) -> list[dict[str, str]]:
        if person.age < 12:
            return []  # young children are reached through their parents
        prefix = self.rng.choice(("621", "661", "691"))
        mobile = f"+352 {prefix} {self.rng.randint(100, 999)} {self.rng.randint(100, 999)}"
        telecom = [{"system": "phone", "value": mobile, "use": "mobile"}]
        if not person.is_child:
            email = f"{_ascii(person.given)}.{_ascii(person.family)}{person.number}@example.org"
            telecom.append({"system": "email", "value": email, "use": "home"})
        return telecom

    def address(self, home: _Home) -> list[dict[str, Any]]:
        return [
            {
                "use": "home",
                "type": "both",
                "line": [home.line],
                "city": home.city,
                "district": home.canton,
                "postalCode": home.postal_code,
                "country": "LU",
            }
        ]

    def identifier(self, person: _Person) -> list[dict[str, Any]]:
        return [
            {
                "use": "official",
                "type": _concept(V2_0203, "NI", "National unique individual identifier", text="Matricule"),
                "system": MATRICULE_SYSTEM,
                "value": person.matricule,
            }
        ]

    def patient(self, person: _Person) -> Resource:
        resource = self.start("Patient", person.id)
        resource["identifier"] = self.identifier(person)
        resource["active"] = True
        resource["name"] = [{"use": "official", "family": person.family, "given": [person.given]}]
        if person.telecom:
            resource["telecom"] = person.telecom
        resource["gender"] = person.gender
        resource["birthDate"] = person.birth.isoformat()
        resource["address"] = self.address(person.home)
        resource["communication"] = [
            {"language": _concept(BCP47, lang, LANGUAGE_NAMES[lang]), "preferred": index == 0}
            for index, lang in enumerate(person.languages)
        ]
        resource["generalPractitioner"] = [self.ref(person.doctor.full_url, person.doctor.name)]
        if person.links:
            # The parent is also the RelatedPerson of their child: same human, other role ("seealso").
            resource["link"] = [{"other": self.ref(url), "type": "seealso"} for url in person.links]
        return resource

    def related_person(self, child: _Person, parent: _Person, relation: str) -> Resource:
        label = "mother" if relation == "MTH" else "father"
        resource = self.start("RelatedPerson", f"lu-rp-{child.number:04d}-{label}")
        resource["identifier"] = self.identifier(parent)
        resource["active"] = True
        resource["patient"] = self.ref(child.full_url, child.display)
        # The generic PRN lets access rules match any parent; MTH/FTH says which one.
        resource["relationship"] = [_concept(V3_ROLE, "PRN", "parent"), _concept(V3_ROLE, relation, label)]
        resource["name"] = [{"use": "official", "family": parent.family, "given": [parent.given]}]
        resource["gender"] = parent.gender
        if parent.telecom:  # reminders for the child (e.g. vaccinations) go to the parent
            resource["telecom"] = parent.telecom
        resource["birthDate"] = parent.birth.isoformat()
        resource["address"] = self.address(parent.home)
        parent.links.append(_full_url("RelatedPerson", resource["id"]))
        return resource

    # -- clinical record -------------------------------------------------------------------------

    def next_id(self, chart: _Chart, prefix: str, person: _Person, width: int = 2) -> str:
        chart.counters[prefix] += 1
        return f"lu-{prefix}-{person.number:04d}-{chart.counters[prefix]:0{width}d}"

    def random_day(self, start: dt.date, end: dt.date = REFERENCE_DATE) -> dt.date:
        if end <= start:
            return end  # never later than asked: nothing may happen after the reference date
        return start + dt.timedelta(days=self.rng.randint(0, (end - start).days))

    def add_chart(self, person: _Person) -> None:
        chart = _Chart()
        self.add_allergies(person, chart)
        self.add_problems(person, chart)
        self.add_vital_signs(person, chart)
        if not person.is_child:
            self.add_labs(person, chart)
        self.add_immunizations(person, chart)

    def add_allergies(self, person: _Person, chart: _Chart) -> None:
        catalogue = self.catalogue
        candidates = catalogue.child_allergens if person.is_child else catalogue.adult_allergens
        earliest = _add_months(person.birth, 6 if person.is_child else 12 * 16)
        if earliest >= REFERENCE_DATE or self.rng.random() >= (0.3 if person.is_child else 0.25):
            return
        key = self.rng.choice(candidates)
        allergen = catalogue.allergens[key]
        chart.allergens.append(key)
        onset = self.random_day(earliest)
        resource = self.start("AllergyIntolerance", self.next_id(chart, "alg", person))
        resource["clinicalStatus"] = _concept(ALLERGY_CLINICAL, "active", "Active")
        resource["verificationStatus"] = _concept(ALLERGY_VERIFICATION, "confirmed", "Confirmed")
        resource["type"] = allergen.type
        resource["category"] = [allergen.category]
        resource["criticality"] = allergen.criticality
        resource["code"] = _concept(SNOMED, allergen.snomed, allergen.display, text=allergen.display)
        resource["patient"] = self.ref(person.full_url, person.display)
        resource["onsetDateTime"] = onset.isoformat()
        resource["recordedDate"] = self.stamp(
            self.random_day(onset, min(onset + dt.timedelta(days=60), REFERENCE_DATE))
        )
        resource["recorder"] = self.ref(person.doctor.full_url, person.doctor.name)
        resource["reaction"] = [
            {"manifestation": [_concept(SNOMED, *allergen.reaction)], "severity": allergen.severity}
        ]
        self.add(resource)

    def add_problems(self, person: _Person, chart: _Chart) -> None:
        catalogue = self.catalogue
        chronic = catalogue.child_chronic if person.is_child else catalogue.adult_chronic
        episodes = catalogue.child_episodes if person.is_child else catalogue.adult_episodes
        months = _age_months(person.birth)
        chosen = [
            key
            for key, problem in chronic.items()
            if months >= problem.min_onset_months
            and self.rng.random() < problem.probability(person.age, person.gender)
        ]
        chosen += [
            key
            for key, problem in episodes.items()
            if months >= problem.min_onset_months + 1
            and self.rng.random() < problem.probability(person.age, person.gender)
        ]
        if not chosen:  # everyone has at least a small history, so every chart has something to show
            fallback = [k for k, p in episodes.items() if months >= p.min_onset_months + 1]
            if fallback:
                chosen.append(self.rng.choice(fallback))
        for key in chosen:
            problem = chronic.get(key) or episodes[key]
            chart.problems.append(key)
            self.add_problem(person, chart, problem)

    def add_problem(self, person: _Person, chart: _Chart, problem: _Problem) -> None:
        earliest = _add_months(person.birth, max(problem.min_onset_months, 0 if person.is_child else 12 * 18))
        if problem.episodic:
            earliest = max(earliest, REFERENCE_DATE - dt.timedelta(days=3 * 365))
        onset = self.random_day(earliest, REFERENCE_DATE - dt.timedelta(days=30))
        recorded = (
            onset
            if problem.episodic
            else self.random_day(onset, min(onset + dt.timedelta(days=30), REFERENCE_DATE))
        )
        clinician = self.clinicians[_SPECIALISTS[problem.specialist]] if problem.specialist else person.doctor
        resource = self.start("Condition", self.next_id(chart, "cond", person))
        if problem.episodic:
            resource["clinicalStatus"] = _concept(CONDITION_CLINICAL, "resolved", "Resolved")
        else:
            resource["clinicalStatus"] = _concept(CONDITION_CLINICAL, "active", "Active")
        resource["verificationStatus"] = _concept(CONDITION_VERIFICATION, "confirmed", "Confirmed")
        resource["category"] = [_concept(CONDITION_CATEGORY, "problem-list-item", "Problem List Item")]
        resource["code"] = _concept(SNOMED, problem.snomed, problem.display, text=problem.display)
        resource["subject"] = self.ref(person.full_url, person.display)
        resource["onsetDateTime"] = onset.isoformat()
        if problem.episodic:
            abatement = min(onset + dt.timedelta(days=self.rng.randint(7, 21)), REFERENCE_DATE)
            resource["abatementDateTime"] = abatement.isoformat()
        resource["recordedDate"] = recorded.isoformat()
        resource["recorder"] = self.ref(clinician.full_url, clinician.name)
        resource["asserter"] = self.ref(clinician.full_url, clinician.name)
        condition_url = self.add(resource)
        for drug_key in problem.drugs:
            drug = self.catalogue.drugs[drug_key]
            if drug.atc.startswith(_PENICILLIN_ATC_PREFIX) and "penicillin" in chart.allergens:
                drug = self.catalogue.drugs[self.catalogue.penicillin_alternatives[drug_key]]
            self.add_prescription(person, chart, drug, condition_url, clinician, onset, problem.episodic)

    def add_prescription(
        self,
        person: _Person,
        chart: _Chart,
        drug: _Drug,
        condition_url: str,
        prescriber: _Clinician,
        onset: dt.date,
        episodic: bool,
    ) -> None:
        if episodic:
            authored = onset
        else:  # a current repeat prescription
            authored = max(onset, REFERENCE_DATE - dt.timedelta(days=self.rng.randint(5, 80)))
        resource = self.start("MedicationRequest", self.next_id(chart, "medrq", person))
        resource["status"] = "completed" if episodic else "active"
        resource["intent"] = "order"
        resource["medicationCodeableConcept"] = _concept(ATC, drug.atc, drug.atc_display, text=drug.product)
        resource["subject"] = self.ref(person.full_url, person.display)
        resource["authoredOn"] = self.stamp(authored)
        resource["requester"] = self.ref(prescriber.full_url, prescriber.name)
        resource["reasonReference"] = [self.ref(condition_url)]
        dosage: dict[str, Any] = {"sequence": 1, "text": drug.dosage}
        if drug.per_day:
            dosage["timing"] = {"repeat": {"frequency": drug.per_day, "period": 1, "periodUnit": "d"}}
        if drug.as_needed:
            dosage["asNeededBoolean"] = True
        dosage["route"] = _concept(SNOMED, *_ROUTES[drug.route])
        resource["dosageInstruction"] = [dosage]
        validity_days = 10 if episodic else 90
        resource["dispenseRequest"] = {
            "validityPeriod": {
                "start": authored.isoformat(),
                "end": (authored + dt.timedelta(days=validity_days)).isoformat(),
            },
            "numberOfRepeatsAllowed": 0 if episodic else 2,
        }
        resource["substitution"] = {"allowedBoolean": True}
        self.add(resource)

    # -- observations ----------------------------------------------------------------------------

    def observation(
        self, person: _Person, chart: _Chart, category: tuple[str, str], code: tuple[str, str], when: str
    ) -> Resource:
        resource = self.start("Observation", self.next_id(chart, "obs", person, width=3))
        resource["status"] = "final"
        resource["category"] = [_concept(OBS_CATEGORY, *category)]
        resource["code"] = _concept(LOINC, *code, text=code[1])
        resource["subject"] = self.ref(person.full_url, person.display)
        resource["effectiveDateTime"] = when
        return resource

    def visit_days(self, person: _Person) -> list[dt.date]:
        if person.is_child:
            months = _age_months(person.birth)
            milestones = [m for m in _CHILD_VISIT_MONTHS if m <= months][-3:]
            days = [
                _add_months(person.birth, m) + dt.timedelta(days=self.rng.randint(0, 10)) for m in milestones
            ]
            return [min(day, REFERENCE_DATE) for day in days]
        count = self.rng.randint(1, 3)
        return sorted(self.random_day(REFERENCE_DATE - dt.timedelta(days=730)) for _ in range(count))

    def add_vital_signs(self, person: _Person, chart: _Chart) -> None:
        vital = ("vital-signs", "Vital Signs")
        hypertensive = "hypertension" in chart.problems
        size = build = height = bmi = 1.0  # growth factors for a child; height and BMI for an adult
        if person.is_child:
            size, build = self.rng.gauss(1.0, 0.04), self.rng.gauss(1.0, 0.08)
        else:
            mean_height = 164.0 if person.gender == "female" else 177.0
            height = self.rng.gauss(mean_height, 7.0)
            heavier = 3.0 if "diabetes" in chart.problems else 0.0
            bmi = min(max(self.rng.gauss(25.5 + heavier, 4.0), 18.5), 42.0)
            if bmi >= 30:  # the problem list agrees with the measured weight
                chart.problems.append("obesity")
                self.add_problem(person, chart, _OBESITY)
        for day in self.visit_days(person):
            when = self.stamp(day)
            if person.is_child:
                median_height, median_weight = _growth(_age_months(person.birth, day))
                height_cm, weight_kg = median_height * size, median_weight * build
            else:
                height_cm = height
                weight_kg = bmi * (height / 100) ** 2 + self.rng.gauss(0, 1.0)
            doctor = self.ref(person.doctor.full_url, person.doctor.name)
            for code, value, unit in (
                (("29463-7", "Body weight"), round(weight_kg, 1), "kg"),
                (("8302-2", "Body height"), round(height_cm, 1), "cm"),
                (
                    ("39156-5", "Body mass index (BMI) [Ratio]"),
                    round(weight_kg / (height_cm / 100) ** 2, 1),
                    "kg/m2",
                ),
            ):
                resource = self.observation(person, chart, vital, code, when)
                resource["performer"] = [doctor]
                resource["valueQuantity"] = _quantity(value, unit)
                self.add(resource)
            age = _age_years(person.birth, day)
            if age >= 3:
                if person.is_child:
                    systolic, diastolic = self.rng.randint(92, 112), self.rng.randint(55, 72)
                elif hypertensive:
                    systolic, diastolic = self.rng.randint(132, 162), self.rng.randint(82, 98)
                else:
                    systolic, diastolic = self.rng.randint(108, 134), self.rng.randint(66, 84)
                resource = self.observation(
                    person, chart, vital, ("85354-9", "Blood pressure panel with all children optional"), when
                )
                resource["performer"] = [doctor]
                resource["component"] = [
                    {
                        "code": _concept(LOINC, "8480-6", "Systolic blood pressure"),
                        "valueQuantity": _quantity(systolic, "mm[Hg]"),
                    },
                    {
                        "code": _concept(LOINC, "8462-4", "Diastolic blood pressure"),
                        "valueQuantity": _quantity(diastolic, "mm[Hg]"),
                    },
                ]
                self.add(resource)
            low, high = (110, 150) if age < 1 else (75, 115) if age < 12 else (56, 92)
            heart_rate = self.rng.randint(low, high)
            resource = self.observation(person, chart, vital, ("8867-4", "Heart rate"), when)
            resource["performer"] = [doctor]
            resource["valueQuantity"] = _quantity(heart_rate, "/min")
            self.add(resource)

    def add_labs(self, person: _Person, chart: _Chart) -> None:
        wanted: dict[str, bool] = {}
        for key in chart.problems:
            problem = self.catalogue.adult_chronic.get(key)
            for lab in problem.labs if problem else ():
                wanted[lab] = True
        if not wanted and person.age >= 40 and self.rng.random() < 0.5:  # a routine check-up
            wanted = {"glucose": False, "cholesterol": False}
        if not wanted:
            return
        laboratory = self.rng.choice(_data("organizations.json")["laboratories"])["key"]
        performer = self.ref(self.organizations[laboratory])
        for day in sorted({self.random_day(REFERENCE_DATE - dt.timedelta(days=540)) for _ in range(2)}):
            when = self.stamp(day)
            for key, affected in wanted.items():
                test = self.catalogue.labs[key]
                low, high = test.affected if affected else test.healthy
                value = round(self.rng.uniform(low, high), test.decimals)
                if test.decimals == 0:
                    value = int(value)
                resource = self.observation(
                    person, chart, ("laboratory", "Laboratory"), (test.loinc, test.display), when
                )
                resource["issued"] = when
                resource["performer"] = [performer]
                resource["valueQuantity"] = _quantity(value, test.unit)
                ref_low, ref_high = test.reference
                reference: dict[str, Any] = {}
                if ref_low is not None:
                    reference["low"] = _quantity(ref_low, test.unit)
                if ref_high is not None:
                    reference["high"] = _quantity(ref_high, test.unit)
                resource["referenceRange"] = [reference]
                if ref_high is not None and value > ref_high:
                    flag = ("H", "High")
                elif ref_low is not None and value < ref_low:
                    flag = ("L", "Low")
                else:
                    flag = ("N", "Normal")
                resource["interpretation"] = [_concept(V3_INTERPRETATION, *flag)]
                self.add(resource)

    # -- immunizations ---------------------------------------------------------------------------

    def add_immunizations(self, person: _Person, chart: _Chart) -> None:
        doses: list[tuple[dt.date, str, int, str | None]] = []  # (day, vaccine, dose number, series)
        if person.is_child:
            # One PCV product for the whole series, chosen by when the series started.
            pcv = "pcv20" if _add_months(person.birth, 2) >= _PCV20_START else "pcv13"
            given: Counter[str] = Counter()  # doses actually given per series, for doseNumber
            for vaccine, months, scheduled_dose in self.catalogue.child_schedule:
                day = _add_months(person.birth, months) + dt.timedelta(days=self.rng.randint(0, 20))
                if day > REFERENCE_DATE:
                    continue
                if vaccine in ("menb", "menacwy") and day < _MENINGOCOCCAL_PROGRAMME_START:
                    continue
                if scheduled_dose > 1 and self.rng.random() < _MISSED_DOSE_CHANCE:
                    continue
                group = _SERIES.get(vaccine, vaccine)
                given[group] += 1
                doses.append((day, pcv if vaccine == "pcv" else vaccine, given[group], None))
        else:
            doses.extend(self.adult_doses(person, chart))
        for day, vaccine, dose, series in sorted(doses):
            self.add_immunization(person, chart, day, self.catalogue.vaccines[vaccine], dose, series)

    def adult_doses(self, person: _Person, chart: _Chart) -> list[tuple[dt.date, str, int, str | None]]:
        doses: list[tuple[dt.date, str, int, str | None]] = []
        age = person.age
        at_risk = age >= 65 or any(p in self.catalogue.flu_vaccine_indications for p in chart.problems)
        if at_risk:
            for season in (2024, 2025, 2026):
                if self.rng.random() < 0.65:
                    day = dt.date(season, 10, 1) + dt.timedelta(days=self.rng.randint(0, 50))
                    doses.append((day, "influenza", 1, f"Influenza {season}/{season + 1 - 2000:02d}"))
        if _age_years(person.birth, dt.date(2021, 3, 1)) >= 18 and self.rng.random() < 0.7:
            first = dt.date(2021, 3, 1) + dt.timedelta(days=self.rng.randint(0, 120))
            doses.append((first, "covid", 1, "COVID-19 primary series"))
            doses.append(
                (first + dt.timedelta(days=self.rng.randint(21, 42)), "covid", 2, "COVID-19 primary series")
            )
        if age >= 65 and self.rng.random() < 0.6:
            start = max(_add_months(person.birth, 12 * 65), dt.date(2016, 1, 1))
            doses.append((self.random_day(start), "pcv13", 1, None))
        if age >= 65 and self.rng.random() < 0.4:
            first = self.random_day(dt.date(2023, 6, 1), REFERENCE_DATE - dt.timedelta(days=200))
            doses.append((first, "zoster", 1, None))
            doses.append((first + dt.timedelta(days=self.rng.randint(61, 180)), "zoster", 2, None))
        if age >= 25 and self.rng.random() < 0.3:
            start = max(_add_months(person.birth, 12 * 25), REFERENCE_DATE - dt.timedelta(days=3650))
            doses.append((self.random_day(start), "td", 1, "Adult booster"))
        return doses

    def lot_number(self) -> str:
        """A batch number shaped like those printed in the GS1 Datamatrix (two letters, digits, letter)."""
        letters = "ABCDEFGHJKLMNPRSTUVWXYZ"
        pick = self.rng.choice
        return f"{pick(letters)}{pick(letters)}{self.rng.randint(1000, 9999)}{pick(letters)}"

    def add_immunization(
        self, person: _Person, chart: _Chart, day: dt.date, vaccine: _Vaccine, dose: int, series: str | None
    ) -> None:
        infant = _age_months(person.birth, day) < 24
        resource = self.start("Immunization", self.next_id(chart, "imm", person))
        resource["status"] = "completed"
        resource["vaccineCode"] = {
            "coding": [
                _coding(CVX, *vaccine.cvx),
                _coding(SNOMED, *vaccine.snomed),
                _coding(ATC, vaccine.atc, vaccine.text),
            ],
            "text": vaccine.text,
        }
        resource["patient"] = self.ref(person.full_url, person.display)
        when = self.stamp(day)
        resource["occurrenceDateTime"] = when
        resource["recorded"] = when
        resource["primarySource"] = True
        resource["lotNumber"] = self.lot_number()
        resource["expirationDate"] = (day + dt.timedelta(days=self.rng.randint(90, 540))).isoformat()
        if vaccine.route == "PO":
            resource["route"] = _concept(V3_ROUTE, "PO", "Swallow, oral")
        else:
            sites = (
                (("LT", "left thigh"), ("RT", "right thigh"))
                if infant
                else (("LA", "left arm"), ("RA", "right arm"))
            )
            site = self.rng.choice(sites)
            resource["site"] = _concept(V3_ACT_SITE, *site)
            resource["route"] = _concept(V3_ROUTE, "IM", "Injection, intramuscular")
        vaccinator = person.doctor
        resource["performer"] = [
            {
                "function": _concept(V2_0443, "AP", "Administering Provider"),
                "actor": self.ref(vaccinator.full_url, vaccinator.name),
            }
        ]
        protocol: dict[str, Any] = {"doseNumberPositiveInt": dose}
        if series:
            protocol["series"] = series
        resource["protocolApplied"] = [protocol]
        self.add(resource)


def build_demo_bundle(seed: int = DEFAULT_SEED, patients: int = 40) -> dict[str, Any]:
    """A FHIR R4 ``transaction`` Bundle with the demo population; the same seed gives the same bundle.

    Contains the four hospital groups, three laboratories, pharmacies and GP practices, fifteen
    practitioners with their roles, ``patients`` patients (about one in ten belongs to a family whose
    parents are patients too and appear as the children's RelatedPersons), and their conditions,
    allergies, prescriptions, observations and immunizations. Every entry is a PUT to a readable id.
    """
    if not 0 <= patients <= MAX_PATIENTS:
        raise ValueError(f"patients must be between 0 and {MAX_PATIENTS}; got {patients}")
    return _BundleBuilder(seed, patients).build()


def resource_counts(bundle: dict[str, Any]) -> dict[str, int]:
    """How many resources of each type a bundle holds (for the ``seed`` command's report)."""
    counts = Counter(entry["resource"]["resourceType"] for entry in bundle.get("entry", ()))
    return dict(sorted(counts.items()))


__all__ = ["REFERENCE_DATE", "build_demo_bundle", "resource_counts"]
