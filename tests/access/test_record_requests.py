"""The holder's rights on items (access.requests): pending disclosure, objection to filing,
rectification and erasure requests — through every read path, on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from sharedcare.access import consent
from sharedcare.access import requests as rights
from sharedcare.access.models import filing_objection, record_request
from sharedcare.access.policy import AccessPolicy
from sharedcare.access.policy import category_of as classify
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.access.session import PolicySession
from sharedcare.audit import log as audit
from sharedcare.fhir.errors import NotFound
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.store import utcnow
from sharedcare.settings import Settings
from sharedcare.storage.engine import make_engine, writer
from sharedcare.storage.tables import INDEX_TABLES, resource, resource_compartment, resource_version
from support import add_care, bearer, lab_result, professional, put_all, truncate

LOINC = "http://loinc.org"


HOLDER = Principal(
    PrincipalKind.PATIENT, "acct-pa", display="Anne", patient_id="pa", scopes=frozenset({"patient/*.cruds"})
)
REPRESENTATIVE = Principal(
    PrincipalKind.REPRESENTATIVE, "acct-rep", display="Jean", scopes=frozenset({"user/*.cruds"})
)
OTHER_HOLDER = Principal(
    PrincipalKind.PATIENT, "acct-pb", patient_id="pb", scopes=frozenset({"patient/*.cruds"})
)
GP = professional("gp")
COLLEAGUE = professional("colleague")
PHARMACIST = professional("pharm", "pha")
HOSPITAL_DOCTOR = professional("hdoc", organization="hosp")
STRANGER = professional("stranger")
ADMIN = Principal(PrincipalKind.ADMIN, "acct-admin", display="Agency admin")
HELPDESK = Principal(PrincipalKind.HELPDESK, "acct-help")
TRUSTED = Principal(PrincipalKind.SYSTEM, "demo-system", scopes=frozenset({"system/*.*"}), trusted=True)
FACILITY = Principal(
    PrincipalKind.SYSTEM, "hosp-his", organization_id="hosp", scopes=frozenset({"system/*.*"})
)
IN_CARE = (GP, COLLEAGUE, HOSPITAL_DOCTOR)


def report(rid: str, results: list[str]) -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "58410-2"}]},
        "subject": {"reference": "Patient/pa"},
        "result": [{"reference": r} for r in results],
    }


@dataclass
class World:
    engine: Engine
    svc: FhirService
    policy: AccessPolicy

    def as_(self, who: Principal) -> FhirService:
        return self.svc.for_session(PolicySession(who, self.policy, classify))

    def ids(self, stored: Any) -> set[str]:
        return {f"{s.type}/{s.id}" for s in stored}


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    engine = make_engine(db_url)
    truncate(engine)
    settings = Settings(database_url=db_url, demo_data=False)
    svc = FhirService(engine, classify=classify)
    for res in [
        {"resourceType": "Organization", "id": "hosp", "name": "Hôpital du Nord"},
        *(
            {"resourceType": "Practitioner", "id": p, "active": True}
            for p in ("gp", "colleague", "pharm", "hdoc")
        ),
        {"resourceType": "Practitioner", "id": "stranger", "active": True},
        {"resourceType": "Patient", "id": "pa", "gender": "female"},
        {"resourceType": "Patient", "id": "pb", "gender": "male"},
        lab_result("lab-b", "pb"),
    ]:
        svc.update(res["resourceType"], res["id"], res)
    now = utcnow()
    with writer(engine).begin() as conn:
        for pid, org, context in (
            ("gp", None, "solo"),
            ("colleague", None, "solo"),
            ("pharm", None, "solo"),
            (None, "hosp", "facility"),
        ):
            add_care(conn, f"{pid or org}-{context}", "pa", pid, now, organization_id=org, context=context)
        consent.appoint(
            conn,
            svc,
            TRUSTED,
            "pa",
            "acct-rep",
            "assistant",
            now,
            ends=now + timedelta(days=30),
            legal_basis="signed appointment",
        )
    w = World(engine, svc, AccessPolicy(settings))
    # the GP files the items of pa's record: two of them held back for a consultation d'annonce
    for res in (
        lab_result("lab-a"),
        rights.mark_pending(lab_result("lab-pending", code="718-7")),
        report("dr-a", ["Observation/lab-a", "Observation/lab-pending"]),
        rights.mark_pending(report("dr-pending", ["Observation/lab-a"])),
    ):
        _create_with_id(w, GP, res)
    yield w
    engine.dispose()


def _create_with_id(w: World, who: Principal, res: dict[str, Any]) -> None:
    """A create by ``who`` (audited as theirs) under a chosen id, for readable tests."""
    svc = w.as_(who)
    with svc.transaction() as conn:
        svc.create_in(conn, res, new_id=res["id"])


PENDING = {"Observation/lab-pending", "DiagnosticReport/dr-pending"}
SHOWN = {"Patient/pa", "Observation/lab-a", "DiagnosticReport/dr-a"}


def _everything(svc: FhirService) -> set[str]:
    page = svc.everything("pa", count=1000)
    return {f"{s.type}/{s.id}" for s in [*page.matches, *page.included]}


def _search(svc: FhirService, rtype: str, params: list[tuple[str, str]] | None = None) -> Any:
    return svc.search(svc.parse_search(rtype, [*(params or []), ("_total", "accurate")], strict=True))


def _sees(w: World, who: Principal, ref: str) -> bool:
    rtype, rid = ref.split("/")
    try:
        w.as_(who).read(rtype, rid)
    except NotFound:
        return False
    return True


# -- pending disclosure -------------------------------------------------------------------------------
@pytest.mark.parametrize("holder", [HOLDER, REPRESENTATIVE], ids=["holder", "representative"])
def test_pending_items_are_hidden_from_the_holder_on_every_read_path(world: World, holder: Principal) -> None:
    svc = world.as_(holder)
    for ref in PENDING:
        rtype, rid = ref.split("/")
        with pytest.raises(NotFound):
            svc.read(rtype, rid)
        with pytest.raises(NotFound):
            svc.vread(rtype, rid, "1")
        with pytest.raises(NotFound):
            svc.history(rtype, rid)
    observations = _search(svc, "Observation")
    assert world.ids(observations.matches) == {"Observation/lab-a"} and observations.total == 1
    included = _search(svc, "DiagnosticReport", [("_include", "DiagnosticReport:result")])
    assert world.ids(included.matches) == {"DiagnosticReport/dr-a"}
    assert world.ids(included.included) == {"Observation/lab-a"}
    revincluded = _search(svc, "Patient", [("_revinclude", "DiagnosticReport:subject")])
    assert world.ids(revincluded.included) == {"DiagnosticReport/dr-a"}
    has = _search(svc, "Patient", [("_has:Observation:subject:code", "718-7")])
    assert has.matches == []  # the pending result's code cannot be probed either
    chained = _search(svc, "DiagnosticReport", [("result.code", "718-7")])
    assert chained.matches == []
    assert world.ids(svc.history(count=1000).versions) & PENDING == set()
    assert world.ids(svc.history("Observation", count=1000).versions) == {"Observation/lab-a"}
    assert _everything(svc) - {"Practitioner/gp"} == SHOWN | _consents(world) | _related(world)
    compartment = svc.search(svc.parse_search("Observation", [], strict=True), compartment="pa")
    assert world.ids(compartment.matches) == {"Observation/lab-a"}


def _consents(world: World) -> set[str]:
    found = world.svc.search(world.svc.parse_search("Consent", [("_count", "100")], strict=True)).matches
    return {f"Consent/{s.id}" for s in found}


def _related(world: World) -> set[str]:
    """The RelatedPerson each representative's appointment adds to the record."""
    found = world.svc.search(
        world.svc.parse_search("RelatedPerson", [("_count", "100")], strict=True)
    ).matches
    return {f"RelatedPerson/{s.id}" for s in found}


def test_professionals_with_access_still_see_pending_items(world: World) -> None:
    for who in (GP, COLLEAGUE, HOSPITAL_DOCTOR, TRUSTED):
        assert all(_sees(world, who, ref) for ref in PENDING), who.subject
        assert _everything(world.as_(who)) >= SHOWN | PENDING
    assert not any(_sees(world, STRANGER, ref) for ref in PENDING)


def test_release_shows_the_item_to_the_holder_and_is_audited(world: World) -> None:
    for who in (HOLDER, REPRESENTATIVE, STRANGER):  # they cannot see it: as unknown as a missing one
        with pytest.raises(rights.UnknownItem):
            rights.release_disclosure(world.as_(who), "Observation/lab-pending")
    with pytest.raises(rights.NotAllowed):  # the pharmacist reads lab results but may not write them
        rights.release_disclosure(world.as_(PHARMACIST), "Observation/lab-pending")
    released = rights.release_disclosure(world.as_(COLLEAGUE), "Observation/lab-pending")
    assert released.version == 2 and not rights.is_pending(released.resource())
    assert _sees(world, HOLDER, "Observation/lab-pending")
    assert world.ids(world.as_(HOLDER).history("Observation", "lab-pending").versions) == {
        "Observation/lab-pending"
    }
    with pytest.raises(rights.RequestConflict):
        rights.release_disclosure(world.as_(GP), "Observation/lab-pending")
    with world.engine.connect() as conn:
        acts = audit.query(conn, principal_subject="acct-colleague", patient_id="pa")
    assert [e.record.interaction for e in acts][:2] == ["release-disclosure", "update"]
    assert acts[0].record.resources == ("Observation/lab-pending/_history/2",)


def test_an_update_can_release_or_hold_back_again(world: World) -> None:
    gp = world.as_(GP)
    current = gp.read("DiagnosticReport", "dr-pending").resource()
    gp.update("DiagnosticReport", "dr-pending", rights.without_pending(current))
    assert _sees(world, HOLDER, "DiagnosticReport/dr-pending")
    gp.update("Observation", "lab-a", rights.mark_pending(gp.read("Observation", "lab-a").resource()))
    assert not _sees(world, HOLDER, "Observation/lab-a")
    assert _sees(world, GP, "Observation/lab-a")


def test_a_deleted_pending_item_keeps_its_history_from_the_holder(world: World) -> None:
    world.as_(GP).delete("Observation", "lab-pending")
    holder = world.as_(HOLDER)
    with pytest.raises(NotFound):
        holder.history("Observation", "lab-pending")
    with pytest.raises(NotFound):
        holder.vread("Observation", "lab-pending", "1")
    assert "Observation/lab-pending" not in world.ids(holder.history(count=1000).versions)
    world.as_(GP).delete("Observation", "lab-a")  # an ordinary deleted item stays in the history
    assert "Observation/lab-a" in world.ids(holder.history(count=1000).versions)


# -- objection to filing -----------------------------------------------------------------------------
def _gone_for_professionals(world: World, ref: str) -> None:
    for who in (*IN_CARE, FACILITY):
        svc = world.as_(who)
        assert not _sees(world, who, ref), who.subject
        assert ref not in world.ids(_search(svc, "Observation").matches)
        assert ref not in world.ids(svc.history(count=1000).versions)
        if who is not FACILITY:
            assert ref not in _everything(svc)
            included = _search(svc, "DiagnosticReport", [("_include", "DiagnosticReport:result")])
            assert ref not in world.ids(included.included)
            rev = _search(svc, "Patient", [("_revinclude", "Observation:subject")])
            assert ref not in world.ids(rev.included)
            chained = _search(svc, "DiagnosticReport", [("result.code", "2345-7")])
            assert "DiagnosticReport/dr-a" not in world.ids(chained.matches)
        with pytest.raises(NotFound):
            svc.history(*ref.split("/"))


def test_an_objected_item_is_invisible_to_every_professional_but_the_holder_sees_it(world: World) -> None:
    now = utcnow()
    consent_id = rights.object_to_filing(world.as_(HOLDER), HOLDER, "Observation/lab-a", now)
    _gone_for_professionals(world, "Observation/lab-a")
    assert _sees(world, HOLDER, "Observation/lab-a") and _sees(world, REPRESENTATIVE, "Observation/lab-a")
    assert _sees(world, TRUSTED, "Observation/lab-a")  # the Agence's own platform clients
    stored = world.svc.read("Consent", consent_id).resource()
    assert stored["provision"]["type"] == "deny"
    assert stored["provision"]["data"][0]["reference"] == {"reference": "Observation/lab-a"}
    assert not _sees(world, GP, f"Consent/{consent_id}")  # the objection itself is not revealed
    with pytest.raises(rights.RequestConflict):
        rights.object_to_filing(world.as_(REPRESENTATIVE), REPRESENTATIVE, "Observation/lab-a", now)
    with world.engine.connect() as conn:
        assert rights.objections(conn, "pa") == {"Observation/lab-a"}
        changes = audit.query(conn, patient_id="pa", actions=[audit.AuditAction.CONSENT_CHANGE])
    assert changes[0].record.interaction == "object-to-filing Observation/lab-a"
    # undo: filed again, for whoever may see it
    rights.withdraw_objection(world.as_(REPRESENTATIVE), REPRESENTATIVE, "Observation/lab-a", utcnow())
    assert all(_sees(world, who, "Observation/lab-a") for who in IN_CARE)
    assert world.svc.read("Consent", consent_id).resource()["status"] == "inactive"
    with pytest.raises(rights.RequestConflict):
        rights.withdraw_objection(world.as_(HOLDER), HOLDER, "Observation/lab-a", utcnow())


def test_objections_refuse_what_they_cannot_be_about_and_change_nothing(world: World) -> None:
    now = utcnow()
    with pytest.raises(rights.UnknownItem):  # another record's item: as unknown as a missing one
        rights.object_to_filing(world.as_(HOLDER), HOLDER, "Observation/lab-b", now)
    with pytest.raises(rights.UnknownItem):
        rights.object_to_filing(world.as_(HOLDER), HOLDER, "Observation/lab-pending", now)
    with pytest.raises(rights.UnknownItem):
        rights.object_to_filing(world.as_(HOLDER), HOLDER, "not a reference", now)
    with pytest.raises(rights.RequestError):  # the record itself cannot be withdrawn
        rights.object_to_filing(world.as_(HOLDER), HOLDER, "Patient/pa", now)
    with pytest.raises(rights.NotAllowed):
        rights.object_to_filing(world.as_(GP), GP, "Observation/lab-a", now)
    with world.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(filing_objection)).scalar_one() == 0
    assert len(_consents(world)) == 1  # the representative's appointment only


# -- rectification ---------------------------------------------------------------------------------
def test_rectification_goes_to_the_author_who_completes_it_by_correcting_the_item(world: World) -> None:
    filed = rights.file_request(
        world.as_(HOLDER), HOLDER, "Observation/lab-a", rights.RECTIFY, "Wrong unit", utcnow()
    )
    assert (filed.kind, filed.status, filed.author_practitioner_id) == ("rectify", "requested", "gp")
    task = world.svc.read("Task", filed.id).resource()
    assert task["focus"] == {"reference": "Observation/lab-a"} and task["for"] == {"reference": "Patient/pa"}
    assert task["owner"] == {"reference": "Practitioner/gp"} and task["note"][0]["text"] == "Wrong unit"
    assert _sees(world, HOLDER, f"Task/{filed.id}")
    by_owner = _search(world.as_(GP), "Task", [("owner", "Practitioner/gp")])
    assert world.ids(by_owner.matches) == {f"Task/{filed.id}"}
    assert [r.id for r in rights.rectification_requests(world.as_(GP))] == [filed.id]
    for who in (COLLEAGUE, HOSPITAL_DOCTOR, STRANGER, FACILITY):  # not the author: never seen
        assert not _sees(world, who, f"Task/{filed.id}")
        assert _search(world.as_(who), "Task").matches == []
        with pytest.raises(rights.UnknownItem):
            rights.decide(world.as_(who), who, filed.id, "completed", "", utcnow())
    with pytest.raises(rights.NotAllowed):  # the holder sees it but does not decide it
        rights.decide(world.as_(HOLDER), HOLDER, filed.id, "completed", "", utcnow())
    with pytest.raises(rights.RequestConflict):
        rights.decide(world.as_(GP), GP, filed.id, "completed", "Done", utcnow())
    with pytest.raises(rights.RequestError):
        rights.decide(world.as_(GP), GP, filed.id, "rejected", "  ", utcnow())
    with pytest.raises(rights.RequestConflict):  # one open request per item and kind
        rights.file_request(world.as_(HOLDER), HOLDER, "Observation/lab-a", rights.RECTIFY, "Again", utcnow())
    rights.decide(world.as_(GP), GP, filed.id, "accepted", "", utcnow())
    gp = world.as_(GP)
    corrected = gp.read("Observation", "lab-a").resource() | {"status": "corrected"}
    gp.update("Observation", "lab-a", corrected)
    done = rights.decide(gp, GP, filed.id, "completed", "Unit corrected", utcnow())
    assert done.status == "completed" and done.decision_reason == "Unit corrected"
    task = world.svc.read("Task", filed.id).resource()
    assert task["status"] == "completed"
    assert task["output"][0]["valueReference"] == {"reference": "Observation/lab-a/_history/2"}
    with world.engine.connect() as conn:
        assert [(r.id, r.status) for r in rights.requests_of(conn, "pa")] == [(filed.id, "completed")]
        log = audit.query(conn, principal_subject="acct-gp", actions=[audit.AuditAction.UPDATE])
    assert "rectify-request completed" in [e.record.interaction for e in log]
    with pytest.raises(rights.RequestConflict):
        rights.decide(gp, GP, filed.id, "rejected", "Too late", utcnow())


def test_a_rectification_of_an_organisations_item_goes_to_the_organisation(world: World) -> None:
    _create_with_id(world, HOSPITAL_DOCTOR, lab_result("lab-hosp"))
    filed = rights.file_request(
        world.as_(HOLDER), HOLDER, "Observation/lab-hosp", rights.RECTIFY, "Not my sample", utcnow()
    )
    assert (filed.author_practitioner_id, filed.owner_organization_id) == ("hdoc", "hosp")
    assert world.svc.read("Task", filed.id).resource()["owner"] == {"reference": "Organization/hosp"}
    found = _search(world.as_(FACILITY), "Task", [("owner", "Organization/hosp")])
    assert world.ids(found.matches) == {f"Task/{filed.id}"}
    rejected = rights.decide(
        world.as_(FACILITY), FACILITY, filed.id, "rejected", "The sample is yours", utcnow()
    )
    assert rejected.status == "rejected"
    assert world.svc.read("Task", filed.id).resource()["statusReason"] == {"text": "The sample is yours"}


# -- erasure -------------------------------------------------------------------------------------------
def _rows_of(world: World, rtype: str, rid: str) -> dict[str, int]:
    with world.engine.connect() as conn:
        pk = conn.execute(
            select(resource.c.pk).where(resource.c.type == rtype, resource.c.id == rid)
        ).scalar()
        counts = {"resource": 0 if pk is None else 1}
        by_id = (
            select(func.count())
            .select_from(resource_version)
            .where(resource_version.c.type == rtype, resource_version.c.id == rid)
        )
        counts["versions"] = conn.execute(by_id).scalar_one()
        for name, table in (*INDEX_TABLES.items(), ("compartment", resource_compartment)):
            query = select(func.count()).select_from(table).where(table.c.res_pk == (pk or -1))
            counts[name] = conn.execute(query).scalar_one()
    return counts


def test_an_approved_erasure_removes_every_version_and_index_row(world: World) -> None:
    gp = world.as_(GP)
    gp.update("Observation", "lab-a", gp.read("Observation", "lab-a").resource() | {"status": "amended"})
    before = _rows_of(world, "Observation", "lab-a")
    assert before["versions"] == 2 and before["token"] > 0 and before["compartment"] == 1
    rights.object_to_filing(world.as_(HOLDER), HOLDER, "Observation/lab-a", utcnow())
    filed = rights.file_request(
        world.as_(HOLDER), HOLDER, "Observation/lab-a", rights.ERASE, "Filed by mistake", utcnow()
    )
    assert world.svc.read("Task", filed.id).resource()["owner"] == rights.AGENCY_OWNER
    for who in (GP, COLLEAGUE):  # an erasure request is between the holder and the Agence
        assert not _sees(world, who, f"Task/{filed.id}")
        with pytest.raises(rights.UnknownItem):
            rights.decide(world.as_(who), who, filed.id, "completed", "", utcnow())
    for who in (HOLDER, HELPDESK):
        with pytest.raises(rights.NotAllowed):
            rights.decide(world.as_(who), who, filed.id, "completed", "", utcnow())
    with world.engine.connect() as conn:
        assert [r.id for r in rights.erasure_requests(conn)] == [filed.id]
    done = rights.decide(world.as_(ADMIN), ADMIN, filed.id, "completed", "Art. 17 applies", utcnow())
    assert done.status == "completed"
    after = _rows_of(world, "Observation", "lab-a")
    assert set(after.values()) == {0}, after
    with pytest.raises(NotFound):
        world.svc.read("Observation", "lab-a")
    with world.engine.connect() as conn:
        erased = audit.query(conn, patient_id="pa", actions=[audit.AuditAction.DELETE])
        assert rights.objections(conn, "pa") == set()
        assert rights.erasure_requests(conn) == []
    assert [(e.record.interaction, e.record.resources) for e in erased] == [("erase", ("Observation/lab-a",))]
    assert erased[0].record.principal_subject == "acct-admin"
    assert world.svc.read("Task", filed.id).resource()["status"] == "completed"
    assert audit.verify(world.engine).ok


def test_erasure_can_be_rejected_with_a_reason_or_cancelled_by_the_holder(world: World) -> None:
    filed = rights.file_request(world.as_(HOLDER), HOLDER, "Observation/lab-a", rights.ERASE, "Old", utcnow())
    with pytest.raises(rights.RequestError):
        rights.decide(world.as_(ADMIN), ADMIN, filed.id, "rejected", "", utcnow())
    rights.decide(world.as_(ADMIN), ADMIN, filed.id, "rejected", "Needed for your care", utcnow())
    assert _rows_of(world, "Observation", "lab-a")["resource"] == 1
    again = rights.file_request(world.as_(HOLDER), HOLDER, "Observation/lab-a", rights.ERASE, "Old", utcnow())
    with pytest.raises(rights.UnknownItem):  # another holder cannot touch it
        rights.decide(world.as_(OTHER_HOLDER), OTHER_HOLDER, again.id, "cancelled", "", utcnow())
    cancelled = rights.decide(world.as_(REPRESENTATIVE), REPRESENTATIVE, again.id, "cancelled", "", utcnow())
    assert cancelled.status == "cancelled"
    with world.engine.connect() as conn:
        assert {r.status for r in rights.requests_of(conn, "pa")} == {"rejected", "cancelled"}


def test_bad_requests_are_refused_and_change_nothing(world: World) -> None:
    holder = world.as_(HOLDER)
    now = utcnow()
    with pytest.raises(rights.RequestError):
        rights.file_request(holder, HOLDER, "Observation/lab-a", "shred", "because", now)
    with pytest.raises(rights.RequestError):
        rights.file_request(holder, HOLDER, "Observation/lab-a", rights.RECTIFY, "   ", now)
    with pytest.raises(rights.RequestError):
        rights.file_request(holder, HOLDER, "Observation/lab-a", rights.ERASE, "x" * 2001, now)
    with pytest.raises(rights.UnknownItem):
        rights.file_request(holder, HOLDER, "Observation/lab-pending", rights.ERASE, "why", now)
    with pytest.raises(rights.RequestError):
        rights.file_request(holder, HOLDER, "Patient/pa", rights.ERASE, "why", now)
    with pytest.raises(rights.NotAllowed):
        rights.file_request(world.as_(GP), GP, "Observation/lab-a", rights.ERASE, "why", now)
    with pytest.raises(rights.UnknownItem):
        rights.decide(world.as_(ADMIN), ADMIN, "no-such-task", "completed", "", now)
    with pytest.raises(rights.RequestError):
        rights.decide(world.as_(ADMIN), ADMIN, "no-such-task", "approved", "", now)
    with world.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(record_request)).scalar_one() == 0
    assert world.svc.search(world.svc.parse_search("Task", [], strict=True)).matches == []


def test_requests_are_committed_rows_that_outlive_the_process(world: World, db_url: str) -> None:
    filed = rights.file_request(world.as_(HOLDER), HOLDER, "Observation/lab-a", rights.RECTIFY, "x", utcnow())
    world.engine.dispose()
    fresh = make_engine(db_url)
    try:
        with fresh.connect() as conn:
            assert [(r.id, r.status) for r in rights.requests_of(conn, "pa")] == [(filed.id, "requested")]
    finally:
        fresh.dispose()


# -- over HTTP --------------------------------------------------------------------------------------
@pytest.fixture
def api(client: TestClient) -> TestClient:
    put_all(
        client,
        {"resourceType": "Practitioner", "id": "gp", "active": True},
        {"resourceType": "Patient", "id": "pa"},
        rights.mark_pending(lab_result("lab-pending", code="718-7")),
    )
    app: Any = client.app
    now = utcnow()
    with writer(app.state.engine).begin() as conn:
        add_care(conn, "gp-solo", "pa", "gp", now)
    return client


def test_the_operations_over_the_fhir_api(api: TestClient) -> None:
    holder = bearer(api.app, HOLDER, "patient/*.cruds")
    gp = bearer(api.app, GP, "user/*.cruds")
    new_lab = {k: v for k, v in lab_result("x").items() if k != "id"}
    filed = api.post("/fhir/Observation", json=new_lab, headers=gp)
    assert filed.status_code == 201  # the GP is its author: rectifications go to them
    item = f"Observation/{filed.json()['id']}"
    assert api.get("/fhir/Observation/lab-pending", headers=holder).status_code == 404
    refused = api.post("/fhir/Observation/lab-pending/$release-disclosure", headers=holder)
    assert refused.status_code == 404 and refused.json()["resourceType"] == "OperationOutcome"
    released = api.post("/fhir/Observation/lab-pending/$release-disclosure", headers=gp)
    assert released.status_code == 200 and "security" not in released.json().get("meta", {})
    assert api.get("/fhir/Observation/lab-pending", headers=holder).status_code == 200
    again = api.post("/fhir/Observation/lab-pending/$release-disclosure", headers=gp)
    assert again.status_code == 409 and again.json()["issue"][0]["code"] == "conflict"

    objected = api.post(f"/fhir/{item}/$object-to-filing", headers=holder)
    assert objected.status_code == 200, objected.text
    assert api.get(f"/fhir/{item}", headers=gp).status_code == 404
    assert api.post(f"/fhir/{item}/$withdraw-objection", headers=holder).status_code == 200
    assert api.get(f"/fhir/{item}", headers=gp).status_code == 200

    params = {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "Wrong value"}]}
    created = api.post(f"/fhir/{item}/$request-rectification", json=params, headers=holder)
    assert created.status_code == 201, created.text
    task = created.json()
    assert task["resourceType"] == "Task" and task["status"] == "requested" and "Location" in created.headers
    no_reason = api.post(f"/fhir/{item}/$request-erasure", headers=holder)
    assert no_reason.status_code == 400 and no_reason.json()["resourceType"] == "OperationOutcome"
    bad_body = api.post(f"/fhir/{item}/$request-erasure", content=b"{", headers=holder)
    assert bad_body.status_code == 400
    decide = {"resourceType": "Parameters", "parameter": [{"name": "status", "valueCode": "accepted"}]}
    assert api.post(f"/fhir/Task/{task['id']}/$decide", json=decide, headers=holder).status_code == 403
    accepted = api.post(f"/fhir/Task/{task['id']}/$decide", json=decide, headers=gp)
    assert accepted.status_code == 200 and accepted.json()["status"] == "accepted"
    assert api.post("/fhir/Task/unknown/$decide", json=decide, headers=gp).status_code == 404


def test_deleting_the_record_deletes_its_objections_and_requests(world: World) -> None:
    from sharedcare.access.lifecycle import opt_out

    rights.object_to_filing(world.as_(HOLDER), HOLDER, "Observation/lab-a", utcnow())
    rights.file_request(
        world.as_(HOLDER), HOLDER, "DiagnosticReport/dr-a", rights.ERASE, "Not mine", utcnow()
    )

    def counts() -> tuple[int, int]:
        with world.engine.connect() as conn:
            return tuple(  # type: ignore[return-value]
                conn.execute(select(func.count()).select_from(t).where(t.c.patient_id == "pa")).scalar_one()
                for t in (filing_objection, record_request)
            )

    assert counts() == (1, 1)
    with writer(world.engine).begin() as conn:
        opt_out(conn, "pa", utcnow())
    assert counts() == (0, 0)  # nothing of the deleted record stays behind


# -- filing requests (art. 9(2)) -------------------------------------------------------------------------
def test_a_filing_request_goes_to_the_professional_asked_with_its_due_date(world: World) -> None:
    now = utcnow()
    filed = rights.ask_to_file(world.as_(HOLDER), HOLDER, "gp", "Discharge report of March", now, 15)
    assert (filed.kind, filed.status, filed.author_practitioner_id) == ("file", "requested", "gp")
    assert filed.due == now + timedelta(days=15) and not filed.overdue(now)
    assert filed.overdue(now + timedelta(days=16))
    task = world.svc.read("Task", filed.id).resource()
    assert task["owner"] == {"reference": "Practitioner/gp"} and "focus" not in task
    assert task["code"]["coding"][0]["code"] == "file"
    assert task["note"][0]["text"] == "Discharge report of March"
    assert rights._due_of(task) == filed.due  # Task.restriction.period.end
    assert [(r.id, r.due) for r in rights.addressed_requests(world.as_(GP))] == [(filed.id, filed.due)]
    assert rights.rectification_requests(world.as_(GP)) == []
    for who in (COLLEAGUE, HOSPITAL_DOCTOR, STRANGER, FACILITY):  # only the professional asked
        assert not _sees(world, who, f"Task/{filed.id}")
        with pytest.raises(rights.UnknownItem):
            rights.decide(world.as_(who), who, filed.id, "completed", "", now)
    with pytest.raises(rights.NotAllowed):
        rights.decide(world.as_(HOLDER), HOLDER, filed.id, "completed", "", now)
    with world.engine.connect() as conn:
        (mine,) = rights.requests_of(conn, "pa")
    assert (mine.id, mine.due) == (filed.id, filed.due)  # the holder's list shows the due date too
    done = rights.decide(world.as_(GP), GP, filed.id, "completed", "Filed today", now + timedelta(days=2))
    assert done.status == "completed" and not done.overdue(now + timedelta(days=30))
    assert world.svc.read("Task", filed.id).resource()["status"] == "completed"
    with world.engine.connect() as conn:
        log = audit.query(conn, patient_id="pa", actions=[audit.AuditAction.CREATE])
    assert "request-file Practitioner/gp" in [e.record.interaction for e in log]


def test_a_filing_request_must_name_a_professional_of_the_holders_care(world: World) -> None:
    now = utcnow()
    with pytest.raises(rights.RequestError):  # never in pa's care
        rights.ask_to_file(world.as_(HOLDER), HOLDER, "stranger", "Lab result", now, 15)
    with pytest.raises(rights.RequestError):
        rights.ask_to_file(world.as_(HOLDER), HOLDER, "gp", "   ", now, 15)
    with pytest.raises(rights.NotAllowed):
        rights.ask_to_file(world.as_(GP), GP, "gp", "Lab result", now, 15, patient_id="pa")
    with pytest.raises(rights.UnknownItem):  # not their record
        other = world.as_(OTHER_HOLDER)
        rights.ask_to_file(other, OTHER_HOLDER, "gp", "Lab result", now, 15, patient_id="pa")
    with world.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(record_request)).scalar_one() == 0
    by_rep = rights.ask_to_file(
        world.as_(REPRESENTATIVE), REPRESENTATIVE, "pharm", "Prescription", now, 15, patient_id="pa"
    )
    assert by_rep.patient_id == "pa" and by_rep.author_practitioner_id == "pharm"


def test_filing_requests_need_a_care_the_holder_took_part_in_and_stay_few(world: World) -> None:
    """The emergency override's relationship is the professional's act, not a care the holder took
    part in: no ground for a filing request. And one professional gets at most FILE_OPEN_MAX open
    requests from one record: a refused request stores nothing."""
    now = utcnow()
    with writer(world.engine).begin() as conn:
        add_care(conn, "er-override", "pa", "er-doc", now, context="override")
    with pytest.raises(rights.RequestError, match="took part in your care"):
        rights.ask_to_file(world.as_(HOLDER), HOLDER, "er-doc", "Emergency report", now, 15)
    for n in range(rights.FILE_OPEN_MAX):
        rights.ask_to_file(world.as_(HOLDER), HOLDER, "gp", f"Report {n}", now, 15)

    def stored() -> int:
        with world.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(record_request)).scalar_one())

    assert stored() == rights.FILE_OPEN_MAX
    with pytest.raises(rights.RequestError, match="10 open requests"):
        rights.ask_to_file(world.as_(HOLDER), HOLDER, "gp", "One more", now, 15)
    assert stored() == rights.FILE_OPEN_MAX
    first = rights.addressed_requests(world.as_(GP))[0]
    rights.decide(world.as_(GP), GP, first.id, "completed", "Filed", now)
    rights.ask_to_file(world.as_(HOLDER), HOLDER, "gp", "One more", now, 15)  # room again
    assert stored() == rights.FILE_OPEN_MAX + 1
