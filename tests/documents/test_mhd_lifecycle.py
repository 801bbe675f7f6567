"""Documents' life cycle: replace, append, transform, deprecate, entered-in-error, by their author only."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from mhd_world import (
    GP,
    HOLDER,
    HOSPITAL,
    LAB,
    OTHER_GP,
    Doc,
    auth,
    blob_files,
    created,
    issues,
    provide,
    provide_bundle,
)

from sharedcare.access.policy import authored_by, category_of
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.access.session import PolicySession
from sharedcare.documents import lifecycle
from sharedcare.fhir.errors import BusinessRule, Forbidden, NotFound
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.store import CONFIDENTIALITY_SYSTEM as CONFIDENTIALITY
from sharedcare.fhir.store import confidentiality_of
from sharedcare.settings import Settings


def status(client: TestClient, doc_id: str) -> str:
    return str(client.get(f"/fhir/DocumentReference/{doc_id}").json()["status"])  # as the trusted client


def file(client: TestClient, who: Principal, doc: Doc, **kwargs: Any) -> str:
    (doc_id,) = created(provide(client, who, provide_bundle("pa", doc, **kwargs)), "DocumentReference")
    return doc_id


def as_service(client: TestClient, who: Principal) -> FhirService:
    app: Any = client.app
    service: FhirService = app.state.fhir
    return service.for_session(PolicySession(who, app.state.policy, category_of, enforce_scopes=False))


def test_replace_supersedes_the_old_document_in_the_same_transaction(world: TestClient) -> None:
    old = file(world, LAB, Doc(data=b"first result"))
    response = provide(world, LAB, provide_bundle("pa", Doc(data=b"corrected", relates=[("replaces", old)])))
    (new,) = created(response, "DocumentReference")
    assert status(world, old) == "superseded" and status(world, new) == "current"
    history = world.get(f"/fhir/DocumentReference/{old}/_history").json()
    assert history["total"] == 2
    found = world.get("/fhir/DocumentReference?patient=pa&status=current", headers=auth(world, GP)).json()
    assert {e["resource"]["id"] for e in found["entry"]} == {new}
    relates = world.get(f"/fhir/DocumentReference?relatesto={old}").json()
    assert [e["resource"]["id"] for e in relates["entry"]] == [new]


def test_replace_with_mhds_update_entry(world: TestClient) -> None:
    old = file(world, LAB, Doc(data=b"first"))
    stored = world.get(f"/fhir/DocumentReference/{old}").json()
    update = {
        "fullUrl": f"http://testserver/fhir/DocumentReference/{old}",
        "resource": {**stored, "status": "superseded"},
        "request": {"method": "PUT", "url": f"DocumentReference/{old}"},
    }
    bundle = provide_bundle("pa", Doc(data=b"second", relates=[("replaces", old)]), extra=[update])
    response = provide(world, LAB, bundle)
    assert response.status_code == 200, response.text
    answer = response.json()["entry"][-1]["response"]
    assert answer["status"] == "200 OK" and answer["location"] == f"DocumentReference/{old}/_history/2"
    assert status(world, old) == "superseded"
    update["resource"]["status"] = "entered-in-error"  # a replaced document becomes superseded
    again = provide(
        world, LAB, provide_bundle("pa", Doc(data=b"third", relates=[("replaces", old)]), extra=[update])
    )
    assert again.status_code == 422


@pytest.mark.parametrize("code", ["appends", "transforms", "signs"])
def test_append_and_transform_keep_both_current(world: TestClient, code: str) -> None:
    old = file(world, LAB, Doc(data=b"report"))
    new = file(world, LAB, Doc(data=b"addendum " + code.encode(), relates=[(code, old)]))
    assert status(world, old) == "current" and status(world, new) == "current"


def test_only_the_author_replaces(world: TestClient, settings: Settings) -> None:
    note = file(world, GP, Doc(type_code="11488-4", authors=["Practitioner/gp"]), source="Practitioner/gp")
    replacing = provide_bundle(
        "pa",
        Doc(
            type_code="11488-4", authors=["Practitioner/gp2"], data=b"not mine", relates=[("replaces", note)]
        ),
        source="Practitioner/gp2",
    )
    blobs = blob_files(settings.data_dir)
    response = provide(world, OTHER_GP, replacing)  # sees the note (care relationship), did not write it
    assert response.status_code == 403 and "only the author" in response.text
    assert status(world, note) == "current"
    assert blob_files(settings.data_dir) == blobs  # refused before any content was stored
    lab = file(world, LAB, Doc(data=b"lab result"))
    other = provide(world, HOSPITAL, provide_bundle("pa", Doc(data=b"x", relates=[("replaces", lab)])))
    assert other.status_code == 422  # a document the caller may not see is not known to them
    assert any("is not known" in text for _, text in issues(other))
    assert status(world, lab) == "current"


def test_what_cannot_be_replaced(world: TestClient) -> None:
    old = file(world, LAB, Doc(data=b"v1"))
    file(world, LAB, Doc(data=b"v2", relates=[("replaces", old)]))
    again = provide(world, LAB, provide_bundle("pa", Doc(data=b"v3", relates=[("replaces", old)])))
    assert again.status_code == 422 and "cannot be replaced" in again.text
    (theirs,) = created(provide(world, LAB, provide_bundle("pb", Doc(data=b"b's"))), "DocumentReference")
    other = provide(world, LAB, provide_bundle("pa", Doc(data=b"v4", relates=[("replaces", theirs)])))
    assert other.status_code == 422 and "another patient" in other.text
    unknown = provide(world, LAB, provide_bundle("pa", Doc(data=b"v5", relates=[("replaces", "nope")])))
    assert unknown.status_code == 422 and "not known" in unknown.text
    twice = provide_bundle(
        "pa",
        Doc(data=b"a", relates=[("replaces", theirs)]),
        Doc(data=b"b", relates=[("replaces", theirs)]),
    )
    assert provide(world, LAB, twice).status_code == 422


def test_the_author_deprecates_or_marks_in_error(world: TestClient) -> None:
    note = file(world, GP, Doc(type_code="11488-4", authors=["Practitioner/gp"]), source="Practitioner/gp")
    stored = world.get(f"/fhir/DocumentReference/{note}").json()
    deprecated = {**stored, "status": "superseded"}
    refused = world.put(f"/fhir/DocumentReference/{note}", json=deprecated, headers=auth(world, OTHER_GP))
    assert refused.status_code == 403 and "only the author" in refused.text
    done = world.put(f"/fhir/DocumentReference/{note}", json=deprecated, headers=auth(world, GP))
    assert done.status_code == 200 and status(world, note) == "superseded"
    # a laboratory system cannot read its documents back, but marks them in error by MHD
    lab = file(world, LAB, Doc(data=b"wrong patient"))
    stored = world.get(f"/fhir/DocumentReference/{lab}").json()
    bundle = provide_bundle("pa")
    bundle["entry"] = bundle["entry"][:1]
    bundle["entry"][0]["resource"]["entry"] = [{"item": {"reference": "urn:uuid:update"}}]
    bundle["entry"].append(
        {
            "fullUrl": "urn:uuid:update",
            "resource": {**stored, "status": "entered-in-error"},
            "request": {"method": "PUT", "url": f"DocumentReference/{lab}"},
        }
    )
    assert provide(world, LAB, bundle).status_code == 200
    assert status(world, lab) == "entered-in-error"
    back = {**bundle, "entry": [bundle["entry"][0], {**bundle["entry"][1]}]}
    back["entry"][1]["resource"] = {**stored, "status": "superseded"}
    response = provide(world, LAB, back)  # nothing comes back from an error
    assert response.status_code == 422 and "cannot become" in response.text
    assert provide(world, HOSPITAL, bundle).status_code == 422  # not theirs: not known


def test_the_holder_withdraws_a_personal_document(world: TestClient) -> None:
    personal = Doc(
        type_system="https://sharedcare.lu/fhir/CodeSystem/document-type",
        type_code="personal-document",
        authors=["Patient/pa"],
    )
    mine = file(world, HOLDER, personal, source="Patient/pa")
    stored = world.get(f"/fhir/DocumentReference/{mine}").json()
    response = world.put(
        f"/fhir/DocumentReference/{mine}",
        json={**stored, "status": "entered-in-error"},
        headers=auth(world, HOLDER),
    )
    assert response.status_code == 200 and status(world, mine) == "entered-in-error"


def test_change_status_for_the_portal(world: TestClient) -> None:
    note = file(world, GP, Doc(type_code="11488-4", authors=["Practitioner/gp"]), source="Practitioner/gp")
    with pytest.raises(Forbidden):
        lifecycle.change_status(as_service(world, OTHER_GP), note, "superseded")
    with pytest.raises(NotFound):
        lifecycle.change_status(as_service(world, HOSPITAL), note, "superseded")
    assert lifecycle.change_status(as_service(world, GP), note, "superseded").version == 2
    with pytest.raises(BusinessRule):
        lifecycle.change_status(as_service(world, GP), note, "current")
    assert lifecycle.change_status(as_service(world, GP), note, "entered-in-error").version == 3
    assert status(world, note) == "entered-in-error"


def test_set_confidentiality_names_one_level_and_keeps_other_labels(world: TestClient) -> None:
    note = file(world, GP, Doc(type_code="11488-4", authors=["Practitioner/gp"]), source="Practitioner/gp")
    with pytest.raises(Forbidden):  # another GP in care reads it, but is not the author
        lifecycle.set_confidentiality(as_service(world, OTHER_GP), note, "R")
    stored = world.get(f"/fhir/DocumentReference/{note}").json()
    other = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}
    stored["securityLabel"] = [{"coding": [*stored["securityLabel"][0]["coding"], other]}]
    stored["meta"] = {"security": [{"system": CONFIDENTIALITY, "code": "V"}, other]}
    put = world.put(f"/fhir/DocumentReference/{note}", json=stored, headers=auth(world, GP))
    assert put.status_code == 200
    for stranger in (OTHER_GP, HOSPITAL):  # V: neither may know it
        with pytest.raises(NotFound):
            lifecycle.set_confidentiality(as_service(world, stranger), note, "N")
    with pytest.raises(BusinessRule):
        lifecycle.set_confidentiality(as_service(world, GP), note, "X")
    lifecycle.set_confidentiality(as_service(world, GP), note, "R")
    now = world.get(f"/fhir/DocumentReference/{note}").json()
    # the level alone in the first label, the other label kept; the stricter V in meta is gone
    level = {"coding": [{"system": CONFIDENTIALITY, "code": "R"}]}
    assert now["securityLabel"] == [level, {"coding": [other]}]
    assert now["meta"]["security"] == [other]
    assert confidentiality_of(now) == "R" and now["status"] == "current"


def test_who_is_on_the_authors_side() -> None:
    contained = {
        "contained": [
            {
                "resourceType": "PractitionerRole",
                "id": "role",
                "practitioner": {"reference": "Practitioner/gp"},
                "organization": {"reference": "http://testserver/fhir/Organization/hosp1"},
            }
        ],
        "author": [{"reference": "#role"}],
    }
    assert authored_by(GP, contained) and authored_by(HOSPITAL, contained)
    assert not authored_by(OTHER_GP, contained) and not authored_by(LAB, contained)
    absolute = {"author": [{"reference": "https://lu.example/fhir/Organization/lab1/_history/2"}]}
    assert authored_by(LAB, absolute) and not authored_by(HOSPITAL, absolute)
    role = Principal(PrincipalKind.PROFESSIONAL, "a", practitioner_role_id="r1", profession="med")
    assert authored_by(role, {"author": [{"reference": "PractitionerRole/r1"}]})
    assert authored_by(HOLDER, {"author": [{"reference": "Patient/pa"}]})
    parent = Principal(PrincipalKind.REPRESENTATIVE, "p", acting_for=("pa",))
    assert authored_by(parent, {"author": [{"reference": "Patient/pa"}]})
    assert not authored_by(parent, {"author": [{"reference": "Patient/pb"}]})
    assert not authored_by(GP, {}) and not authored_by(GP, {"author": "Practitioner/gp"})
