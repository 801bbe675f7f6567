"""Demo accounts: one sign-in for each role of issue 3, on top of the demo population.

Why: a newcomer must be able to log in as a patient, a parent, a GP, a hospital doctor, a
pharmacist, a laboratory system, a helpdesk agent and an administrator, and see the access rules
at work, without going through activation letters. Each account is created through the same
services as a real one (``identity.accounts``: letter, activation, password, TOTP), then given the
care facts that make its view interesting: a solo-practice relationship opened with the patient's
connection code, a hospital and a laboratory registration, a parent's delegation for a child
(``access.care``, ``access.consent``). Password and TOTP secrets are fixed and printed, which is
only acceptable because they are created **only over the demo population** (its Patients carry the
seed's demo tag), never over real data.

Idempotent: a second run finds every account, delegation and active relationship and writes
nothing; a relationship that has run out since (solo practice lasts 15 days) is opened again.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
from sqlalchemy import Connection, Engine, select, update

from sharedcare.access import care, consent
from sharedcare.access.models import delegation
from sharedcare.access.policy import category_of
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.demo.seed import DEMO_TAG
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.store import utcnow
from sharedcare.fhir.validation import store_issues
from sharedcare.identity import accounts
from sharedcare.identity.matricule import MATRICULE_SYSTEM
from sharedcare.identity.models import account
from sharedcare.oauth.clients import ClientKind, OAuthClient, get_client, save_client
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer

PASSWORD = "Schueberfouer-2026"
"""Every demo person's password (no role or name inside it: the password policy refuses those)."""

PATIENT = "lu-pat-0030"
"""Céline Petit, 58: type 2 diabetes followed at CHEM, hypothyroidism, migraine, penicillin allergy,
laboratory results, vaccinations, and the imaging report added here."""
PARENT = "lu-pat-0008"
"""Christiane Muller, a patient herself and the mother of CHILD."""
CHILD = "lu-pat-0010"
"""Gilles Faber, born 2019: vaccinations and growth charts; his father is lu-pat-0009."""
CHILD_PARENT = "lu-rp-0010-mother"
"""The RelatedPerson recording Christiane Muller as Gilles's mother."""
GP = ("lu-prac-0002", "lu-role-0002", "lu-org-gp-ampark")
"""Dr Lena Thill, Cabinet médical Am Park: Céline Petit's general practitioner."""
HOSPITAL_DOCTOR = ("lu-prac-0008", "lu-role-0008", "lu-org-chem")
"""Dr Diogo Carvalho, endocrinologist at the Centre Hospitalier Emile Mayrisch (her diabetes)."""
PHARMACIST = ("lu-prac-0012", "lu-role-0012", "lu-org-pha-gare")
"""Romain Thill, Pharmacie de la Gare."""
LAB_ORGANIZATION = "lu-org-lab-bionext"
"""BioneXt Lab, which performed Céline Petit's analyses."""
LAB_CLIENT_ID = "demo-lab"
LAB_CLIENT_SECRET = "demo-lab-secret"
"""A fixed secret (``client_secret_basic``) so the demo works without a key pair; a real laboratory
authenticates with ``private_key_jwt`` (SMART Backend Services)."""
IMAGING_REPORT = "lu-dr-0030-img-01"
"""An imaging report in Céline Petit's record: Annex 1 gives pharmacists no imaging right, so the
pharmacist's view of the record visibly lacks it."""


@dataclass(frozen=True, slots=True)
class DemoLogin:
    """One line of the table ``sharedcare serve`` prints."""

    role: str
    login: str
    password: str
    totp_secret: str | None
    """None for the laboratory system, which is an OAuth client, not a person."""
    sees: str


@dataclass(frozen=True, slots=True)
class _Person:
    role: str
    kind: PrincipalKind
    sees: str
    patient_id: str | None = None
    matricule_of: str | None = None
    """The Patient whose matricule is the login (patients, and the parent who is a patient too)."""
    username: str | None = None
    practitioner: tuple[str, str, str] | None = None
    profession: str | None = None
    display: str | None = None
    contact: str | None = None


_PEOPLE = (
    _Person(
        "patient",
        PrincipalKind.PATIENT,
        "{name}: her whole record (diabetes, allergy, results, imaging)",
        patient_id=PATIENT,
        matricule_of=PATIENT,
    ),
    _Person(
        "parent",
        PrincipalKind.REPRESENTATIVE,
        "{name}: her record and her son {child}'s (parent of a minor)",
        patient_id=PARENT,
        matricule_of=PARENT,
    ),
    _Person(
        "gp",
        PrincipalKind.PROFESSIONAL,
        "{name}: {patient}'s record (her connection code, 15 days)",
        username="demo.gp",
        practitioner=GP,
        profession="med",
    ),
    _Person(
        "hospital doctor",
        PrincipalKind.PROFESSIONAL,
        "{name}: {patient}'s record (CHEM registration, 45 days)",
        username="demo.hospital",
        practitioner=HOSPITAL_DOCTOR,
        profession="med",
    ),
    _Person(
        "pharmacist",
        PrincipalKind.PROFESSIONAL,
        "{name}: {patient}'s record but not imaging (Annex 1)",
        username="demo.pharmacist",
        practitioner=PHARMACIST,
        profession="pha",
    ),
    _Person(
        "helpdesk",
        PrincipalKind.HELPDESK,
        "accounts and access traces, no clinical content",
        username="demo.helpdesk",
        display="Demo helpdesk agent",
        contact="helpdesk@sharedcare.example.org",
    ),
    _Person(
        "admin",
        PrincipalKind.ADMIN,
        "directory and terminology, no clinical content",
        username="demo.admin",
        display="Demo administrator",
        contact="admin@sharedcare.example.org",
    ),
)
_LAB_SEES = "BioneXt Lab: {patient}'s identity (registered there); files results"


def totp_secret(role: str) -> str:
    """The fixed TOTP secret of a demo role: derived from its name, so it is the same everywhere."""
    digest = hashlib.sha256(f"sharedcare-demo-{role}".encode()).digest()
    return base64.b32encode(digest[:20]).decode()


def ensure_demo_accounts(
    engine: Engine, settings: Settings, *, now: datetime | None = None
) -> list[DemoLogin]:
    """Create whatever demo account or care fact is missing; the logins to print.

    Returns [] (and writes nothing) when the database does not hold the demo population.
    """
    if now is None:
        now = utcnow()
    elif now.tzinfo is not None:
        now = now.astimezone(UTC).replace(tzinfo=None)
    fhir = FhirService(engine, validator=store_issues, classify=category_of)
    with writer(engine).begin() as conn:
        if not _is_demo_population(conn, fhir):
            return []
        made = {person.role: _ensure_person(conn, fhir, settings, person, now) for person in _PEOPLE}
        _ensure_lab_client(conn)
        _ensure_care(conn, fhir, settings, made, now)
        names = {
            "patient": made["patient"].display_name,
            "child": _name(_resource(conn, fhir, "Patient", CHILD)),
        }
    logins = [
        DemoLogin(
            p.role,
            made[p.role].login,
            PASSWORD,
            totp_secret(p.role),
            p.sees.format(name=made[p.role].display_name, **names),
        )
        for p in _PEOPLE
    ]
    lab = DemoLogin("lab system", LAB_CLIENT_ID, LAB_CLIENT_SECRET, None, _LAB_SEES.format(**names))
    logins.insert(5, lab)  # after the professionals, before the agency's staff
    return logins


def format_logins(logins: list[DemoLogin], base_url: str) -> str:
    """The table printed at start: who to sign in as, with what, and what they will see."""
    rows = [("role", "login", "password", "TOTP secret", "who: what they see")]
    rows += [(x.role, x.login, x.password, x.totp_secret or "-", x.sees) for x in logins]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"Demo accounts: sign in at {base_url}/portal/login"]
    for row in rows:
        lines.append(
            "  " + "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        )
    lines.append(
        "  TOTP: add the secret to an authenticator app (SHA-1, 6 digits, 30 s), or compute a code with"
    )
    lines.append('    python -c "import pyotp,sys; print(pyotp.TOTP(sys.argv[1]).now())" <TOTP secret>')
    lines.append(
        f"  Lab system: curl -u {LAB_CLIENT_ID}:{LAB_CLIENT_SECRET} -d grant_type=client_credentials "
        f"-d 'scope=system/*.cruds' {base_url}/auth/token  (client_secret_basic for the demo only)"
    )
    return "\n".join(lines)


# --- the pieces ------------------------------------------------------------------------------------


def _is_demo_population(conn: Connection, fhir: FhirService) -> bool:
    """Every resource the accounts name exists, and the patients carry the seed's demo tag."""
    refs = [("Patient", p) for p in (PATIENT, PARENT, CHILD)] + [("RelatedPerson", CHILD_PARENT)]
    for practitioner, role, organization in (GP, HOSPITAL_DOCTOR, PHARMACIST):
        refs += [("Practitioner", practitioner), ("PractitionerRole", role), ("Organization", organization)]
    refs.append(("Organization", LAB_ORGANIZATION))
    for rtype, rid in refs:
        stored = fhir.store.current(conn, rtype, rid)
        if stored is None or stored.deleted:
            return False
        tags = {(t.get("system"), t.get("code")) for t in stored.resource().get("meta", {}).get("tag", [])}
        if rtype == "Patient" and (DEMO_TAG["system"], DEMO_TAG["code"]) not in tags:
            return False
    return True


def _resource(conn: Connection, fhir: FhirService, rtype: str, rid: str) -> dict[str, Any]:
    stored = fhir.store.current(conn, rtype, rid)
    assert stored is not None
    return stored.resource()


def _name(res: dict[str, Any]) -> str:
    name = (res.get("name") or [{}])[0]
    return " ".join([*name.get("prefix", []), *name.get("given", []), name.get("family", "")]).strip()


def _email(res: dict[str, Any]) -> str | None:
    return next((t["value"] for t in res.get("telecom", []) if t.get("system") == "email"), None)


def _ensure_person(
    conn: Connection, fhir: FhirService, settings: Settings, person: _Person, now: datetime
) -> accounts.Account:
    """The person's active account, created through the enrolment services when missing."""
    matricule = display = contact = None
    if person.matricule_of:
        patient = _resource(conn, fhir, "Patient", person.matricule_of)
        matricule = next(i["value"] for i in patient["identifier"] if i.get("system") == MATRICULE_SYSTEM)
        display, contact = _name(patient), _email(patient)
    if person.practitioner:
        practitioner = _resource(conn, fhir, "Practitioner", person.practitioner[0])
        display, contact = _name(practitioner), _email(practitioner)
    login = matricule or person.username
    assert login is not None
    found = accounts.find_by_login(conn, login)
    if found is not None:
        return found
    practitioner_id, role_id, organization_id = person.practitioner or (None, None, None)
    created = accounts.create_account(
        conn,
        person.kind,
        display_name=person.display or display or person.role,
        matricule=matricule,
        username=person.username,
        patient_id=person.patient_id,
        practitioner_id=practitioner_id,
        practitioner_role_id=role_id,
        organization_id=organization_id,
        profession=person.profession,
        now=now,
    )
    code = accounts.issue_activation_code(conn, created.id, settings, now=now)
    contact = person.contact or contact or f"{person.role.replace(' ', '.')}@sharedcare.example.org"
    accounts.activate(conn, settings, code=code, matricule_or_login=login, contact=contact, now=now)
    accounts.set_password(conn, settings, created.id, PASSWORD, now=now)
    accounts.start_totp_enrolment(conn, created.id)
    # The enrolment's random secret is replaced by the role's printed one, and confirmed with a
    # code of a past step: the code a newcomer types right after start-up must not count as replayed.
    secret = totp_secret(person.role)
    conn.execute(update(account).where(account.c.id == created.id).values(totp_pending_secret=secret))
    enrolled = now.replace(tzinfo=UTC) - timedelta(minutes=5)
    return accounts.confirm_totp(conn, created.id, pyotp.TOTP(secret).at(enrolled), now=enrolled)


def _ensure_lab_client(conn: Connection) -> None:
    """The laboratory's system client, registered once (a later run leaves it untouched)."""
    if get_client(conn, LAB_CLIENT_ID) is not None:
        return
    client = OAuthClient(
        client_id=LAB_CLIENT_ID,
        name="BioneXt Lab (demo)",
        kind=ClientKind.SYSTEM,
        token_endpoint_auth_method="client_secret_basic",
        grant_types=("client_credentials",),
        scope="system/*.cruds",
        organization_id=LAB_ORGANIZATION,
    )
    save_client(conn, client, secret=LAB_CLIENT_SECRET)


def _active(
    conn: Connection,
    patient_id: str,
    context: str,
    now: datetime,
    *,
    practitioner: str | None = None,
    organization: str | None = None,
) -> bool:
    return any(
        r.context == context and r.practitioner_id == practitioner and r.organization_id == organization
        for r in care.of_patient(conn, patient_id, now)
    )


def _ensure_care(
    conn: Connection, fhir: FhirService, settings: Settings, made: dict[str, accounts.Account], now: datetime
) -> None:
    """Record life cycles, the imaging report, the parent's delegation and the care relationships."""
    for patient_id in (PATIENT, PARENT, CHILD):  # activated records: open to professionals at once
        care.ensure_record(conn, patient_id, letter_sent=now - timedelta(days=40), activated=now)
    _ensure_imaging_report(conn, fhir)
    trusted = Principal(PrincipalKind.SYSTEM, "demo-seed", display="Demo seed", trusted=True)
    parent = made["parent"]
    d = delegation
    delegated = conn.execute(
        select(d.c.id).where(
            d.c.account_id == parent.id,
            d.c.patient_id == CHILD,
            d.c.revoked_at.is_(None),
            d.c.starts <= now,
            d.c.ends.is_(None) | (d.c.ends > now),
        )
    ).first()
    if delegated is None:
        child = _resource(conn, fhir, "Patient", CHILD)
        birth = datetime.fromisoformat(child["birthDate"])
        majority = birth.replace(
            year=birth.year + 18, day=min(birth.day, 28) if birth.month == 2 else birth.day
        )
        consent.appoint(
            conn,
            fhir,
            trusted,
            CHILD,
            parent.id,
            "parent",
            now,
            ends=majority,
            legal_basis="Parental authority over a minor (Code civil, art. 372)",
            related_person_id=CHILD_PARENT,  # the seeded RelatedPerson: the Consent's actor names it
        )
    for role, (practitioner_id, _, _) in (("gp", GP), ("pharmacist", PHARMACIST)):
        if not _active(conn, PATIENT, "solo", now, practitioner=practitioner_id):
            code = care.issue_connection_code(conn, settings, PATIENT, now)
            care.open_with_code(conn, settings, accounts.principal_for(made[role]), code, now)
    hospital = HOSPITAL_DOCTOR[2]
    if not _active(conn, PATIENT, "facility", now, organization=hospital):
        doctor = accounts.principal_for(made["hospital doctor"])
        care.register(conn, settings, doctor, PATIENT, emergency=False, now=now)
    if not _active(conn, PATIENT, "facility", now, organization=LAB_ORGANIZATION):
        lab = Principal(
            PrincipalKind.SYSTEM,
            LAB_CLIENT_ID,
            display="BioneXt Lab (demo)",
            organization_id=LAB_ORGANIZATION,
        )
        care.register(conn, settings, lab, PATIENT, emergency=False, now=now)


def _ensure_imaging_report(conn: Connection, fhir: FhirService) -> None:
    """A thyroid ultrasound report (category imaging) in the patient's record; unchanged content
    keeps the same version, so a second run writes nothing."""
    report = {
        "resourceType": "DiagnosticReport",
        "id": IMAGING_REPORT,
        "meta": {"tag": [dict(DEMO_TAG)]},
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                        "code": "RAD",
                        "display": "Radiology",
                    }
                ]
            }
        ],
        "code": {
            "coding": [
                {"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}
            ],
            "text": "Thyroid ultrasound",
        },
        "subject": {"reference": f"Patient/{PATIENT}"},
        "effectiveDateTime": "2026-10-14T10:30:00+02:00",
        "issued": "2026-10-14T16:00:00+02:00",
        "performer": [{"reference": f"Organization/{HOSPITAL_DOCTOR[2]}"}],
        "conclusion": "Homogeneous thyroid of normal size, no nodule.",
    }
    fhir.for_session(None).update_in(conn, "DiagnosticReport", IMAGING_REPORT, report)
