"""Demo accounts (issue 3, demo mode): every role signs in, and sees what the rules give it.

The demo population is loaded once per database, with the accounts on top; argon2 runs with
the smallest costs. Each read goes through the access decision exactly as a portal session does
(``PolicySession`` without token scopes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from sharedcare.access.policy import AccessPolicy, category_of
from sharedcare.access.session import PolicySession
from sharedcare.app import create_app
from sharedcare.demo import accounts as demo
from sharedcare.demo.load import load_demo
from sharedcare.fhir.errors import NotFound
from sharedcare.fhir.service import FhirService
from sharedcare.identity import accounts, passwords
from sharedcare.schema import metadata
from sharedcare.settings import Settings
from sharedcare.storage.engine import make_engine
from sharedcare.storage.migrate import upgrade
from sharedcare.storage.tables import resource
from support import CHEAP, DEMO_SECRET, truncate

FATHER = "lu-pat-0009"
STRANGER = "lu-pat-0021"
"""A demo patient nobody of the demo accounts takes care of."""


@dataclass
class Demo:
    engine: Engine
    settings: Settings
    logins: dict[str, demo.DemoLogin]

    def as_(self, role: str) -> FhirService:
        """The FHIR service as the role's signed-in person sees it."""
        with self.engine.connect() as conn:
            found = accounts.find_by_login(conn, self.logins[role].login)
        assert found is not None
        session = PolicySession(
            accounts.principal_for(found), AccessPolicy(self.settings), category_of, enforce_scopes=False
        )
        return FhirService(self.engine, classify=category_of).for_session(session)


@pytest.fixture(scope="module")
def world(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    previous = passwords.set_parameters(CHEAP)
    settings = Settings(
        database_url=db_url,
        data_dir=tmp_path_factory.mktemp("data"),
        demo_data=True,
        demo_client_secret=DEMO_SECRET,
    )
    engine = make_engine(db_url)
    truncate(engine)
    load_demo(engine)
    logins = demo.ensure_demo_accounts(engine, settings)
    try:
        yield Demo(engine, settings, {x.role: x for x in logins})
    finally:
        truncate(engine)
        engine.dispose()
        passwords.set_parameters(previous)


def _ids(svc: FhirService, rtype: str, patient: str) -> set[str]:
    param = "patient" if rtype != "Patient" else "_id"
    query = svc.parse_search(rtype, [(param, patient), ("_count", "500")], strict=True)
    return {s.id for s in svc.search(query).matches}


def _record(svc: FhirService, patient: str) -> set[str]:
    """Every resource of the patient's record the caller can see (clinical types of the demo)."""
    types = ("Patient", "Condition", "Observation", "MedicationRequest", "Immunization", "DiagnosticReport")
    return {f"{t}/{i}" for t in types for i in _ids(svc, t, patient)}


def test_the_table_names_every_role(world: Demo) -> None:
    roles = ["patient", "parent", "gp", "hospital doctor", "pharmacist", "lab system", "helpdesk", "admin"]
    assert list(world.logins) == roles
    table = demo.format_logins(list(world.logins.values()), "http://127.0.0.1:8000")
    assert "http://127.0.0.1:8000/portal/login" in table
    for login in world.logins.values():
        assert login.login in table and login.password in table
        assert login.totp_secret is None or login.totp_secret in table


def test_every_person_signs_in_with_password_and_totp(world: Demo) -> None:
    for role, login in world.logins.items():
        if login.totp_secret is None:
            continue
        code = pyotp.TOTP(login.totp_secret).now()
        with accounts.transaction(world.engine) as conn:
            signed_in = accounts.authenticate(
                conn, world.settings, login=login.login, password=login.password, totp_code=code
            )
        assert accounts.principal_for(signed_in).subject == signed_in.id, role


def test_professionals_reference_the_directory(world: Demo) -> None:
    for role, (practitioner, practitioner_role, organization) in (
        ("gp", demo.GP),
        ("hospital doctor", demo.HOSPITAL_DOCTOR),
        ("pharmacist", demo.PHARMACIST),
    ):
        with world.engine.connect() as conn:
            found = accounts.find_by_login(conn, world.logins[role].login)
        assert found is not None
        assert (found.practitioner_id, found.practitioner_role_id, found.organization_id) == (
            practitioner,
            practitioner_role,
            organization,
        )
        svc = FhirService(world.engine, classify=category_of)
        assert svc.read("Practitioner", practitioner).resource()["active"] is True


def test_the_patient_has_a_rich_record_and_sees_it_all(world: Demo) -> None:
    record = _record(world.as_("patient"), demo.PATIENT)
    assert len(record) > 20
    assert f"DiagnosticReport/{demo.IMAGING_REPORT}" in record
    assert {r.split("/")[0] for r in record} >= {
        "Condition",
        "Observation",
        "MedicationRequest",
        "Immunization",
    }
    with pytest.raises(NotFound):
        world.as_("patient").read("Patient", STRANGER)


def test_gp_and_hospital_doctor_read_the_patients_record(world: Demo) -> None:
    everything = _record(world.as_("patient"), demo.PATIENT)
    for role in ("gp", "hospital doctor"):
        svc = world.as_(role)
        assert _record(svc, demo.PATIENT) == everything, role
        assert svc.read("DiagnosticReport", demo.IMAGING_REPORT).id == demo.IMAGING_REPORT
        assert _record(svc, STRANGER) == set(), role  # no care relationship: nothing, not even the name


def test_pharmacist_reads_the_record_but_not_its_imaging(world: Demo) -> None:
    svc = world.as_("pharmacist")
    seen = _record(svc, demo.PATIENT)
    assert seen == _record(world.as_("patient"), demo.PATIENT) - {f"DiagnosticReport/{demo.IMAGING_REPORT}"}
    assert any(r.startswith("MedicationRequest/") for r in seen)
    with pytest.raises(NotFound):
        svc.read("DiagnosticReport", demo.IMAGING_REPORT)


def test_parent_reads_the_childs_record_but_not_another_patients(world: Demo) -> None:
    svc = world.as_("parent")
    child = _record(svc, demo.CHILD)
    assert f"Patient/{demo.CHILD}" in child
    assert any(r.startswith("Immunization/") for r in child)
    assert f"Patient/{demo.PARENT}" in _record(svc, demo.PARENT)  # her own record too
    for other in (demo.PATIENT, FATHER):
        assert _record(svc, other) == set()
        with pytest.raises(NotFound):
            svc.read("Patient", other)


@pytest.mark.parametrize("role", ["helpdesk", "admin"])
def test_staff_see_no_clinical_data(world: Demo, role: str) -> None:
    svc = world.as_(role)
    for patient in (demo.PATIENT, demo.CHILD):
        assert _record(svc, patient) == set()
    directory = svc.search(svc.parse_search("Practitioner", [("_count", "50")], strict=True))
    assert len(directory.matches) == 15  # reference data stays readable


def test_lab_system_gets_a_token_and_sees_only_the_registered_identity(world: Demo) -> None:
    app = create_app(world.settings)
    try:
        with TestClient(app) as http:
            resp = http.post(
                "/auth/token",
                data={"grant_type": "client_credentials", "scope": "system/*.cruds"},
                auth=(demo.LAB_CLIENT_ID, demo.LAB_CLIENT_SECRET),
            )
            assert resp.status_code == 200, resp.text
            headers = {"Authorization": f"Bearer {resp.json()['access_token']}"}
            assert http.get(f"/fhir/Patient/{demo.PATIENT}", headers=headers).status_code == 200
            assert http.get(f"/fhir/Patient/{STRANGER}", headers=headers).status_code == 404
            found = http.get(f"/fhir/Observation?patient={demo.PATIENT}", headers=headers).json()
            assert found.get("entry", []) == []
    finally:
        app.state.engine.dispose()


def _snapshot(engine: Engine) -> dict[str, int]:
    """Rows per table, and the sum of resource versions (an unchanged PUT makes no version)."""
    with engine.connect() as conn:
        counts = {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in metadata.sorted_tables
        }
        counts["versions"] = conn.execute(select(func.sum(resource.c.version))).scalar_one() or 0
    return counts


def test_seeding_again_changes_nothing(world: Demo) -> None:
    before = _snapshot(world.engine)
    again = demo.ensure_demo_accounts(world.engine, world.settings)
    assert {x.role: x for x in again} == world.logins
    assert _snapshot(world.engine) == before


def test_nothing_is_created_without_the_demo_population(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    engine = make_engine(url)
    upgrade(engine)
    try:
        assert demo.ensure_demo_accounts(engine, Settings(database_url=url, data_dir=tmp_path)) == []
        assert _snapshot(engine)["account"] == 0
    finally:
        engine.dispose()
