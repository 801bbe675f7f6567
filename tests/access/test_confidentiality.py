"""Confidentiality levels (v3-Confidentiality R and V) narrow who reads an item, on every path.

R (restricted): only professionals whose relationship gives their column the full right (read and
write) on the item's category; V (very restricted): only the author's side and the holder's
referring physician. The holder reads both. Through the HTTP API, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from sharedcare.access.models import care_relationship
from sharedcare.access.policy import _Rows
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.app import create_app
from sharedcare.fhir.store import confidentiality_of, utcnow
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer
from sharedcare.storage.tables import resource
from support import add_care, bearer, lab_result, put_all, signed_in_client

CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
CATEGORY = "https://sharedcare.lu/fhir/CodeSystem/dsp-data-category"
BINARY_PATIENT = "https://sharedcare.lu/fhir/StructureDefinition/binary-patient"

GP = Principal(PrincipalKind.PROFESSIONAL, "acct-gp", practitioner_id="gp", profession="med")
GP2 = Principal(PrincipalKind.PROFESSIONAL, "acct-gp2", practitioner_id="gp2", profession="med")
GP_ROLE = Principal(
    PrincipalKind.PROFESSIONAL,
    "acct-gpr",
    practitioner_id="gp3",
    practitioner_role_id="role3",
    profession="med",
)
PHARMACIST = Principal(PrincipalKind.PROFESSIONAL, "acct-ph", practitioner_id="ph", profession="pha")
REFERENT = Principal(PrincipalKind.PROFESSIONAL, "acct-mr", practitioner_id="mr", profession="med")
HOLDER = Principal(PrincipalKind.PATIENT, "acct-pa", patient_id="pa")
EVERYONE = (GP, GP2, GP_ROLE, PHARMACIST, REFERENT, HOLDER)


def labelled(code: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": CONFIDENTIALITY, "code": code}]}]


def note(rid: str, code: str, author: str) -> dict[str, Any]:
    """A consultation note (care reports: Méd RW, Pha R) of Anne with confidentiality ``code``."""
    return {
        "resourceType": "DocumentReference",
        "id": rid,
        "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}]},
        "subject": {"reference": "Patient/pa"},
        "author": [{"reference": author}],
        "securityLabel": labelled(code),
        "content": [{"attachment": {"contentType": "text/plain", "url": f"Binary/bin-{rid}"}}],
    }


def content_of(rid: str, code: str) -> dict[str, Any]:
    """The Binary of note ``rid``, marked as MHD files it (category, confidentiality, patient)."""
    return {
        "resourceType": "Binary",
        "id": f"bin-{rid}",
        "meta": {
            "extension": [{"url": BINARY_PATIENT, "valueReference": {"reference": "Patient/pa"}}],
            "tag": [{"system": CATEGORY, "code": "care-reports"}],
            "security": [{"system": CONFIDENTIALITY, "code": code}],
        },
        "contentType": "text/plain",
        "securityContext": {"reference": f"DocumentReference/{rid}"},
        "data": base64.b64encode(f"note {rid}".encode()).decode(),
    }


@pytest.fixture(name="world")
def world_fixture(client: TestClient) -> TestClient:
    return world(client)


def world(client: TestClient) -> TestClient:
    restricted_lab = lab_result("lab-r", "pa")
    restricted_lab["meta"] = {"security": [{"system": CONFIDENTIALITY, "code": "R"}]}
    linked = note("doc-n", "N", "Practitioner/gp")
    linked["relatesTo"] = [{"code": "appends", "target": {"reference": "DocumentReference/doc-v"}}]
    put_all(
        client,
        *(
            {"resourceType": "Practitioner", "id": i, "active": True}
            for i in ("gp", "gp2", "gp3", "ph", "mr")
        ),
        {
            "resourceType": "PractitionerRole",
            "id": "role3",
            "practitioner": {"reference": "Practitioner/gp3"},
        },
        {"resourceType": "Patient", "id": "pa", "gender": "female"},
        note("doc-v", "V", "Practitioner/gp"),
        content_of("doc-v", "V"),
        note("doc-vr", "V", "PractitionerRole/role3"),
        note("doc-r", "R", "Practitioner/gp2"),
        content_of("doc-r", "R"),
        linked,
        lab_result("lab-n", "pa"),
        restricted_lab,
    )
    app: Any = client.app
    now = utcnow()
    with writer(app.state.engine).begin() as conn:
        for practitioner in ("gp", "gp2", "gp3", "ph"):
            add_care(conn, f"care-{practitioner}", "pa", practitioner, now)
        add_care(conn, "care-mr", "pa", "mr", now, context="referent", ends=None)
    return client


def headers(client: TestClient, who: Principal) -> dict[str, str]:
    scope = "patient/*.rs" if who.kind is PrincipalKind.PATIENT else "user/*.rs"
    return bearer(client.app, who, scope)


def found(client: TestClient, who: Principal, url: str) -> set[str]:
    resp = client.get(f"/fhir/{url}", headers=headers(client, who))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    entries = [e for e in body.get("entry", []) if e.get("search", {}).get("mode") != "outcome"]
    assert len(entries) == len(body.get("entry", [])), f"{url}: {body['entry']}"
    ids = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries}
    if "total" in body:
        matches = [e for e in body.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]
        assert body["total"] == len(matches), f"{url}: total {body['total']} counts hidden items"
    return ids


def readable(client: TestClient, who: Principal, ref: str) -> bool:
    status = client.get(f"/fhir/{ref}", headers=headers(client, who)).status_code
    assert status in (200, 404), status
    return status == 200


def test_the_store_records_the_strictest_code() -> None:
    assert confidentiality_of({"resourceType": "Observation"}) is None
    assert confidentiality_of(note("x", "R", "Practitioner/gp")) == "R"
    both = {
        **note("x", "N", "Practitioner/gp"),
        "meta": {"security": [{"system": CONFIDENTIALITY, "code": "V"}]},
    }
    assert confidentiality_of(both) == "V"
    assert confidentiality_of({"resourceType": "Composition", "confidentiality": "R"}) == "R"
    other = {"meta": {"security": [{"system": "http://example.org/other", "code": "V"}]}}
    assert confidentiality_of(other) is None


def test_restricted_items_only_to_a_column_with_full_rights(world: TestClient) -> None:
    # care reports: médecin RW (both GPs and the referent), pharmacien R only
    for who in (GP, GP2, GP_ROLE, REFERENT, HOLDER):
        assert readable(world, who, "DocumentReference/doc-r"), who
        assert readable(world, who, "Binary/bin-doc-r"), who
    assert not readable(world, PHARMACIST, "DocumentReference/doc-r")
    assert not readable(world, PHARMACIST, "Binary/bin-doc-r")
    # a restricted lab result (pharmacien R, médecin RW) through meta.security of any resource
    assert readable(world, GP2, "Observation/lab-r")
    assert not readable(world, PHARMACIST, "Observation/lab-r")
    assert found(world, PHARMACIST, "Observation?patient=pa") == {"Observation/lab-n"}
    # the pharmacist still reads the ordinary note
    assert readable(world, PHARMACIST, "DocumentReference/doc-n")


def test_very_restricted_items_only_to_author_referent_and_holder(world: TestClient) -> None:
    for who in (GP, REFERENT, HOLDER):
        assert readable(world, who, "DocumentReference/doc-v"), who
        assert readable(world, who, "Binary/bin-doc-v"), who
    for who in (GP2, GP_ROLE, PHARMACIST):
        assert not readable(world, who, "DocumentReference/doc-v"), who
        assert not readable(world, who, "Binary/bin-doc-v"), who
    # authored through a PractitionerRole: that role's professional, not the others
    assert readable(world, GP_ROLE, "DocumentReference/doc-vr")
    assert not readable(world, GP, "DocumentReference/doc-vr")
    assert readable(world, REFERENT, "DocumentReference/doc-vr")


def test_binary_retrieval_of_a_very_restricted_document_is_refused(world: TestClient) -> None:
    refused = world.get("/fhir/Binary/bin-doc-v", headers=headers(world, GP2))
    assert refused.status_code == 404
    assert b"note doc-v" not in refused.content
    served = world.get("/fhir/Binary/bin-doc-v", headers=headers(world, GP))
    assert served.status_code == 200 and served.content == b"note doc-v"
    assert found(world, GP2, "Binary?patient=pa") == {"Binary/bin-doc-r"}
    assert found(world, PHARMACIST, "Binary?patient=pa") == set()
    assert found(world, GP, "Binary?patient=pa") == {"Binary/bin-doc-v", "Binary/bin-doc-r"}


def test_no_leak_through_search_total_include_revinclude_has(world: TestClient) -> None:
    assert found(world, GP2, "DocumentReference?patient=pa") == {
        "DocumentReference/doc-n",
        "DocumentReference/doc-r",
    }
    assert found(world, PHARMACIST, "DocumentReference?patient=pa") == {"DocumentReference/doc-n"}
    assert found(world, GP2, "DocumentReference?security-label=V") == set()
    assert found(world, GP, "DocumentReference?security-label=V") == {"DocumentReference/doc-v"}
    include = "DocumentReference?_id=doc-n&_include=DocumentReference:relatesto"
    assert found(world, GP2, include) == {"DocumentReference/doc-n"}
    assert found(world, GP, include) == {"DocumentReference/doc-n", "DocumentReference/doc-v"}
    revinclude = "DocumentReference?_id=doc-v,doc-r&_revinclude=Binary:security-context"
    assert found(world, PHARMACIST, revinclude) == set()
    assert found(world, GP2, revinclude) == {"DocumentReference/doc-r", "Binary/bin-doc-r"}
    has = "Patient?_has:DocumentReference:patient:security-label=V"
    assert found(world, GP2, has) == set()
    assert found(world, GP, has) == {"Patient/pa"}
    chain = "DocumentReference?relatesto.security-label=V"
    assert found(world, GP2, chain) == set()
    assert found(world, GP, chain) == {"DocumentReference/doc-n"}


def test_no_leak_through_history_and_everything(world: TestClient) -> None:
    assert world.get("/fhir/DocumentReference/doc-v/_history", headers=headers(world, GP2)).status_code == 404
    assert (
        world.get("/fhir/DocumentReference/doc-v/_history/1", headers=headers(world, GP2)).status_code == 404
    )
    assert world.get("/fhir/DocumentReference/doc-v/_history", headers=headers(world, GP)).status_code == 200
    history = found(world, PHARMACIST, "DocumentReference/_history")
    assert history == {"DocumentReference/doc-n"}
    everything = found(world, PHARMACIST, "Patient/pa/$everything")
    assert not everything & {
        "DocumentReference/doc-r",
        "DocumentReference/doc-v",
        "Binary/bin-doc-r",
        "Binary/bin-doc-v",
        "Observation/lab-r",
    }
    assert "DocumentReference/doc-n" in everything
    assert {"DocumentReference/doc-v", "Binary/bin-doc-v"} <= found(world, REFERENT, "Patient/pa/$everything")


def test_a_label_changed_by_an_update_narrows_at_once(world: TestClient) -> None:
    """The store keeps the column in step with each version; the first version stays behind it."""
    app: Any = world.app
    trusted = dict(world.headers)
    lowered = note("doc-v", "N", "Practitioner/gp")
    assert world.put("/fhir/DocumentReference/doc-v", json=lowered, headers=trusted).status_code == 200
    assert readable(world, GP2, "DocumentReference/doc-v")
    assert (
        world.get("/fhir/DocumentReference/doc-v/_history/1", headers=headers(world, GP2)).status_code == 200
    )
    raised = note("doc-n", "V", "Practitioner/gp")
    assert world.put("/fhir/DocumentReference/doc-n", json=raised, headers=trusted).status_code == 200
    assert not readable(world, GP2, "DocumentReference/doc-n")
    deleted = world.delete("/fhir/DocumentReference/doc-n", headers=trusted)
    assert deleted.status_code in (200, 204)
    # deleted: its history still follows the last label
    assert world.get("/fhir/DocumentReference/doc-n/_history", headers=headers(world, GP2)).status_code == 404
    with app.state.engine.connect() as conn:
        row = conn.execute(
            select(resource.c.confidentiality).where(
                resource.c.type == "DocumentReference", resource.c.id == "doc-n"
            )
        ).scalar()
    assert row == "V"


def test_emergency_override_does_not_lift_the_authors_restriction(settings: Settings) -> None:
    """An override (EHDS) lifts the holder's restrictions, never R or V: a professional in
    override reads the ordinary note, not the restricted ones."""
    app = create_app(settings.model_copy(update={"emergency_override": True}))
    with signed_in_client(app, settings) as client:
        world(client)
        er = Principal(PrincipalKind.PROFESSIONAL, "acct-er", practitioner_id="er", profession="med")
        put_all(client, {"resourceType": "Practitioner", "id": "er", "active": True})
        with writer(app.state.engine).begin() as conn:
            add_care(conn, "care-er", "pa", "er", utcnow(), context="override", ends=timedelta(hours=2))
            conn.execute(
                update(care_relationship)
                .where(care_relationship.c.id == "care-er")
                .values(reason="unconscious on arrival")
            )
        assert readable(client, er, "DocumentReference/doc-n")
        assert not readable(client, er, "DocumentReference/doc-r")
        assert not readable(client, er, "DocumentReference/doc-v")


def test_relationship_ended_author_reads_nothing(world: TestClient) -> None:
    app: Any = world.app
    with writer(app.state.engine).begin() as conn:
        conn.execute(
            update(care_relationship).where(care_relationship.c.id == "care-gp").values(revoked_at=utcnow())
        )
    assert not readable(world, GP, "DocumentReference/doc-v")


def test_a_submission_set_is_as_confidential_as_its_strictest_document(world: TestClient) -> None:
    """Filed through ITI-65 (the portal's builder): the SubmissionSet names the documents, so it
    takes their strictest confidentiality and is hidden where they are; the Binary takes its
    document's."""
    from sharedcare.documents import submission
    from sharedcare.portal.views.documents import provide_bundle

    app: Any = world.app
    coding = {"system": "http://loinc.org", "code": "11488-4"}
    for code in ("R", "V"):
        bundle = provide_bundle("pa", "Practitioner/gp", b"note", "text/plain", f"Note {code}", coding, code)
        submission.provide(app.state.fhir, app.state.blobs, bundle, base_url="http://testserver/fhir")
    lists = "List?patient=pa&code=submissionset"

    def titled(who: Principal) -> set[str]:
        docs = world.get(
            "/fhir/DocumentReference?patient=pa&description:contains=Note", headers=headers(world, who)
        )
        return {e["resource"]["description"] for e in docs.json().get("entry", [])}

    assert len(found(world, GP, lists)) == 2 and titled(GP) == {"Note R", "Note V"}
    assert len(found(world, GP2, lists)) == 1 and titled(GP2) == {"Note R"}
    assert found(world, PHARMACIST, lists) == set() and titled(PHARMACIST) == set()
    assert found(world, PHARMACIST, "Binary?patient=pa") == set()


def test_the_migration_fills_the_column_of_existing_rows(world: TestClient) -> None:
    """Migration 0016 computes the column from the stored JSON, as the store does on write."""
    import importlib.util
    from pathlib import Path

    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    import sharedcare.storage

    path = Path(sharedcare.storage.__file__).parent / "migrations" / "versions" / "0016_access.py"
    spec = importlib.util.spec_from_file_location("migration_0016", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app: Any = world.app
    with writer(app.state.engine).begin() as conn:
        before = dict(conn.execute(select(resource.c.pk, resource.c.confidentiality)).all())
        conn.execute(update(resource).values(confidentiality=None))
        with Operations.context(MigrationContext.configure(conn)):
            module._backfill_confidentiality()
        after = dict(conn.execute(select(resource.c.pk, resource.c.confidentiality)).all())
    assert after == before
    assert sorted(v for v in after.values() if v) == ["N", "R", "R", "R", "V", "V", "V"]


def plain_binary(rid: str, document: str) -> dict[str, Any]:
    """Content written over plain FHIR (not ITI-65): the document's category and patient, but no
    confidentiality label of its own."""
    binary = content_of(document, "N")
    del binary["meta"]["security"]
    return {**binary, "id": rid}


def label_of(client: TestClient, rtype: str, rid: str) -> str | None:
    app: Any = client.app
    with app.state.engine.connect() as conn:
        return conn.execute(
            select(resource.c.confidentiality).where(resource.c.type == rtype, resource.c.id == rid)
        ).scalar_one()


def test_a_plain_binary_takes_its_documents_label_in_searches(world: TestClient) -> None:
    """The store gives a Binary's row the strictest of its own label and its securityContext
    document's, so searches, _revinclude and history hide it exactly as retrieval does."""
    put_all(world, plain_binary("plain-r", "doc-r"), plain_binary("plain-v", "doc-v"))
    assert (label_of(world, "Binary", "plain-r"), label_of(world, "Binary", "plain-v")) == ("R", "V")
    # the pharmacist is in care (care reports: read only), the second GP too (read and write)
    assert found(world, PHARMACIST, "Binary?patient=pa") == set()
    assert found(world, GP2, "Binary?patient=pa") == {"Binary/bin-doc-r", "Binary/plain-r"}
    assert found(world, GP, "Binary?patient=pa") >= {"Binary/plain-r", "Binary/plain-v"}
    revinclude = "Patient?_id=pa&_revinclude=Binary:patient"
    assert found(world, PHARMACIST, revinclude) == {"Patient/pa"}
    assert found(world, GP2, revinclude) == {"Patient/pa", "Binary/bin-doc-r", "Binary/plain-r"}
    context = "DocumentReference?_id=doc-r&_revinclude=Binary:security-context"
    assert found(world, GP2, context) == {"DocumentReference/doc-r", "Binary/bin-doc-r", "Binary/plain-r"}

    def binaries_in_history(who: Principal) -> set[str]:  # Binary/_history routes to a read
        return {ref for ref in found(world, who, "_history") if ref.startswith("Binary/")}

    assert binaries_in_history(PHARMACIST) == set()
    assert world.get("/fhir/Binary/plain-r/_history", headers=headers(world, PHARMACIST)).status_code == 404
    assert not readable(world, PHARMACIST, "Binary/plain-r")
    assert binaries_in_history(GP2) == {"Binary/bin-doc-r", "Binary/plain-r"}


def test_a_document_label_change_reaches_its_binaries_in_the_same_write(world: TestClient) -> None:
    trusted = dict(world.headers)
    put_all(world, plain_binary("plain-r", "doc-r"), plain_binary("early", "doc-late"))
    assert label_of(world, "Binary", "early") is None  # its document is not there yet
    # lowered: the plain Binary follows; the MHD one keeps its own label (R)
    lowered = note("doc-r", "N", "Practitioner/gp2")
    assert world.put("/fhir/DocumentReference/doc-r", json=lowered, headers=trusted).status_code == 200
    assert label_of(world, "Binary", "plain-r") == "N"
    assert found(world, PHARMACIST, "Binary?patient=pa") == {"Binary/plain-r", "Binary/early"}
    assert readable(world, PHARMACIST, "Binary/plain-r")
    # raised to V: hidden from the second GP, who is not its author (the author still reads it)
    raised = note("doc-r", "V", "Practitioner/gp")
    assert world.put("/fhir/DocumentReference/doc-r", json=raised, headers=trusted).status_code == 200
    assert label_of(world, "Binary", "plain-r") == "V"
    assert "Binary/plain-r" not in found(world, GP2, "Binary?patient=pa")
    assert "Binary/plain-r" in found(world, GP, "Binary?patient=pa")
    # a document filed after its content: the content takes its label when the document comes
    late = note("doc-late", "R", "Practitioner/gp")
    assert world.put("/fhir/DocumentReference/doc-late", json=late, headers=trusted).status_code == 201
    assert label_of(world, "Binary", "early") == "R"
    assert found(world, PHARMACIST, "Binary?patient=pa") == set()
    # deleted: the document's row keeps its last label, and so does its content's
    assert world.delete("/fhir/DocumentReference/doc-late", headers=trusted).status_code in (200, 204)
    assert label_of(world, "Binary", "early") == "R"
    assert not readable(world, PHARMACIST, "Binary/early")


def role_note(rid: str, practitioner: str | None, organization: str | None) -> dict[str, Any]:
    """A very restricted note whose author is a contained PractitionerRole (as MHD often sends)."""
    role: dict[str, Any] = {"resourceType": "PractitionerRole", "id": "author"}
    if practitioner:
        role["practitioner"] = {"reference": f"Practitioner/{practitioner}"}
    if organization:
        role["organization"] = {"reference": f"Organization/{organization}"}
    return {**note(rid, "V", "#author"), "contained": [role]}


def test_an_author_named_through_a_contained_role_reads_a_very_restricted_item(world: TestClient) -> None:
    """The indexer writes the contained role's practitioner and organization as ``author``, so
    the V rule recognises them, for the document and for its content."""
    hospital_gp = Principal(
        PrincipalKind.PROFESSIONAL,
        "acct-gp4",
        practitioner_id="gp4",
        profession="med",
        organization_id="hosp",
    )
    put_all(
        world,
        {"resourceType": "Practitioner", "id": "gp4", "active": True},
        {"resourceType": "Organization", "id": "hosp", "active": True},
        role_note("doc-vc", "gp2", None),
        plain_binary("plain-vc", "doc-vc"),
        role_note("doc-vo", None, "hosp"),
    )
    app: Any = world.app
    with writer(app.state.engine).begin() as conn:
        add_care(conn, "care-gp4", "pa", "gp4", utcnow())
    for who in (GP2, REFERENT, HOLDER):
        assert readable(world, who, "DocumentReference/doc-vc"), who
        assert readable(world, who, "Binary/plain-vc"), who
    for who in (GP, GP_ROLE, PHARMACIST, hospital_gp):
        assert not readable(world, who, "DocumentReference/doc-vc"), who
        assert not readable(world, who, "Binary/plain-vc"), who
    assert found(world, GP2, "DocumentReference?author=Practitioner/gp2&_id=doc-vc") == {
        "DocumentReference/doc-vc"
    }
    # the organisation the professional acts for, named by the contained role
    assert readable(world, hospital_gp, "DocumentReference/doc-vo")
    assert not readable(world, GP2, "DocumentReference/doc-vo")
    assert found(world, hospital_gp, "DocumentReference?patient=pa&security-label=V") == {
        "DocumentReference/doc-vo"
    }


def labelled_patient(rid: str, code: str | None) -> dict[str, Any]:
    patient: dict[str, Any] = {"resourceType": "Patient", "id": rid, "name": [{"family": "Labelled"}]}
    if code is not None:
        patient["meta"] = {"security": [{"system": CONFIDENTIALITY, "code": code}]}
    return patient


def test_rows_of_a_type_that_fixes_their_category_answer_as_any_other_row(world: TestClient) -> None:
    """A Patient's category is identity by its type alone and a Patient has no author, so the
    read filter decides those checks when its statement is built (``policy._Rows``). The
    answers stay the rules': identity counts as full for every party in care (R readable by
    all), V only by the referring physician (no author side); a row stored without its category
    is still refused (the row's own category is checked)."""
    app: Any = world.app
    put_all(world, labelled_patient("pr", "R"), labelled_patient("pv", "V"), labelled_patient("pn", None))
    now = utcnow()
    with writer(app.state.engine).begin() as conn:
        for patient in ("pr", "pv", "pn"):
            for practitioner in ("gp", "ph"):
                add_care(conn, f"care-{practitioner}-{patient}", patient, practitioner, now)
            add_care(conn, f"care-mr-{patient}", patient, "mr", now, context="referent", ends=None)
    search = "Patient?family=labelled"
    for who in (GP, PHARMACIST):
        assert found(world, who, search) == {"Patient/pr", "Patient/pn"}, who
        assert readable(world, who, "Patient/pr") and not readable(world, who, "Patient/pv"), who
        assert world.get("/fhir/Patient/pv/_history", headers=headers(world, who)).status_code == 404
    assert found(world, REFERENT, search) == {"Patient/pr", "Patient/pv", "Patient/pn"}
    assert readable(world, REFERENT, "Patient/pv")
    assert found(world, GP2, search) == set()  # no care of theirs
    with writer(app.state.engine).begin() as conn:
        conn.execute(
            update(resource).where(resource.c.type == "Patient", resource.c.id == "pn").values(category=None)
        )
    assert found(world, GP, search) == {"Patient/pr"}
    assert found(world, REFERENT, search) == {"Patient/pr", "Patient/pv"}
    assert not readable(world, GP, "Patient/pn")


def test_the_filter_leaves_out_what_a_type_cannot_need(world: TestClient) -> None:
    """The statement on Patient rows has one category comparison, no author look-up and no
    objection look-up (identity is no item to object to: ``requests.NOT_OBJECTABLE``; each
    sub-query is planned at every search); on rows whose authors or category vary, all stay."""
    assert _Rows.of(("Patient",)) == _Rows(binary=False, task=False, authored=False, category="identity")
    assert _Rows.of(("AuditEvent", "Provenance")).category == "access-traces"
    assert _Rows.of(("Patient", "Observation")).category is None
    assert _Rows.of(("DocumentReference",)).authored and _Rows.of(("List",)).authored
    assert not _Rows.of(("Observation",)).authored
    app: Any = world.app
    flt = app.state.policy.read_filter(GP, utcnow())
    assert flt is not None

    def sql(types: tuple[str, ...]) -> str:
        return str(select(resource.c.pk).where(flt(resource, types)).compile(app.state.engine))

    patient, document = sql(("Patient",)), sql(("DocumentReference",))
    assert "aau" not in patient and "resource.category IN" not in patient
    assert "filing_objection" not in patient
    assert "resource.category = 'identity'" in patient
    assert "aau" in document and "resource.category IN" in document
    assert "filing_objection" in document
