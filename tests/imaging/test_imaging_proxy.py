"""The imaging proxy against a real Orthanc: ImagingStudy filed by a hospital system, series
listed over QIDO-RS, previews rendered by Orthanc, the access decision, the audit trail, and
the failures of the image server (on SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from imaging_helpers import JPEG_MAGIC, PNG_MAGIC, RecordingTransport, as_, file_study, imaging_study
from orthanc_server import CT_MR_STUDY, OTHER_STUDY, OrthancServer, free_port
from portal_world import World
from sqlalchemy import select

from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit.models import audit_log
from sharedcare.imaging.endpoints import ENDPOINT_SYSTEM, Registry
from sharedcare.settings import DicomWebServer

pytestmark = pytest.mark.xdist_group("orthanc")

CT, MR = CT_MR_STUDY.series
FOREIGN = OTHER_STUDY.series[0]


def gp(world: World) -> Principal:
    return Principal(
        PrincipalKind.PROFESSIONAL,
        world.gp.account_id,
        "Dr Claire Hoffmann",
        practitioner_id="gp",
        profession="med",
    )


def holder(world: World) -> Principal:
    return Principal(PrincipalKind.PATIENT, world.patient.account_id, "Marie Muller", patient_id="pa")


def stranger(world: World) -> Principal:
    return Principal(
        PrincipalKind.PROFESSIONAL, world.stranger.account_id, practitioner_id="stranger", profession="med"
    )


def pharmacist(world: World) -> Principal:
    """In Marie's care (solo relationship below), but Annex 1 gives pharmacists no imaging."""
    return Principal(
        PrincipalKind.PROFESSIONAL, world.pharmacist.account_id, practitioner_id="pharm", profession="pha"
    )


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with TestClient(world.app) as c:
        yield c


@pytest.fixture
def study_id(client: TestClient) -> str:
    """The CT/MR study of Marie Muller, filed by the hospital's system client."""
    return file_study(client, imaging_study())


def audit_rows(world: World, query_prefix: str) -> list[Any]:
    with world.engine.connect() as conn:
        rows = conn.execute(select(audit_log).order_by(audit_log.c.pk)).all()
    return [r for r in rows if (r.query or "").startswith(query_prefix)]


def test_the_hospital_files_a_study_and_the_gp_lists_its_series(client: TestClient, world: World) -> None:
    sid = file_study(client, imaging_study())
    # the hospital's system sees identities only: the GP reads the study back
    resp = client.get(f"/fhir/ImagingStudy/{sid}", headers=as_(client, gp(world)))
    assert resp.status_code == 200 and resp.json()["endpoint"] == [{"reference": "Endpoint/pacs-nord"}]
    resp = client.get(f"/fhir/ImagingStudy/{sid}/$series", headers=as_(client, gp(world)))
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["study"] == f"ImagingStudy/{sid}" and body["studyInstanceUid"] == CT_MR_STUDY.uid
    assert body["series"] == [
        {"uid": CT.uid, "number": 1, "modality": "CT", "description": CT.description, "numberOfInstances": 3},
        {"uid": MR.uid, "number": 2, "modality": "MR", "description": MR.description, "numberOfInstances": 2},
    ]
    # the holder opens their own study too
    mine = client.get(f"/fhir/ImagingStudy/{sid}/$series", headers=as_(client, holder(world)))
    assert mine.status_code == 200 and [s["uid"] for s in mine.json()["series"]] == [CT.uid, MR.uid]


def test_only_the_series_the_record_lists_are_shown(client: TestClient, world: World) -> None:
    sid = file_study(client, imaging_study(series=[CT]))
    body = client.get(f"/fhir/ImagingStudy/{sid}/$series", headers=as_(client, gp(world))).json()
    assert [s["uid"] for s in body["series"]] == [CT.uid]
    resp = client.get(f"/fhir/ImagingStudy/{sid}/$preview?series={MR.uid}", headers=as_(client, gp(world)))
    assert resp.status_code == 404 and resp.json()["resourceType"] == "OperationOutcome"


def test_previews_are_real_images_rendered_by_orthanc(
    client: TestClient, world: World, study_id: str
) -> None:
    headers = as_(client, gp(world))
    url = f"/fhir/ImagingStudy/{study_id}/$preview?series={CT.uid}&instance={CT.instances[0]}"
    png = client.get(url, headers=headers)
    assert png.status_code == 200, png.text
    assert png.headers["content-type"] == "image/png" and png.content.startswith(PNG_MAGIC)
    assert int(png.headers["content-length"]) == len(png.content)
    assert png.headers["cache-control"] == "private, no-store"
    assert png.headers["x-content-type-options"] == "nosniff"
    jpeg = client.get(url, headers={**headers, "Accept": "image/jpeg"})
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    assert jpeg.content.startswith(JPEG_MAGIC)
    # without an instance: the middle image of the series (instances not listed in the record)
    middle = client.get(f"/fhir/ImagingStudy/{study_id}/$preview?series={MR.uid}", headers=headers)
    assert middle.status_code == 200 and middle.content.startswith(PNG_MAGIC)
    # different instances are different images: the proxy relays what Orthanc rendered
    other = client.get(
        f"/fhir/ImagingStudy/{study_id}/$preview?series={CT.uid}&instance={CT.instances[2]}", headers=headers
    )
    assert other.status_code == 200 and other.content != png.content


def test_a_professional_without_access_and_a_stranger_get_not_found(
    client: TestClient, world: World, study_id: str
) -> None:
    unknown = client.get("/fhir/ImagingStudy/does-not-exist/$series", headers=as_(client, gp(world)))
    assert unknown.status_code == 404
    for who in (stranger(world), pharmacist(world)):
        headers = as_(client, who)
        for url in (
            f"/fhir/ImagingStudy/{study_id}/$series",
            f"/fhir/ImagingStudy/{study_id}/$preview?series={CT.uid}",
            f"/fhir/ImagingStudy/{study_id}/$preview?series={CT.uid}&instance={CT.instances[0]}",
        ):
            resp = client.get(url, headers=headers)
            assert resp.status_code == 404, (who.practitioner_id, url, resp.text)
            assert resp.headers["content-type"].startswith("application/fhir+json")
            issue = resp.json()["issue"][0]
            assert issue["code"] == "not-found" and study_id in issue["diagnostics"]
            # exactly like an unknown study: same status, same words but the id
            assert issue["diagnostics"].replace(study_id, "X") == unknown.json()["issue"][0][
                "diagnostics"
            ].replace("does-not-exist", "X")
    # another patient's holder neither
    paul = Principal(PrincipalKind.PATIENT, "acct-pb", patient_id="pb")
    assert client.get(f"/fhir/ImagingStudy/{study_id}/$series", headers=as_(client, paul)).status_code == 404
    # no successful read was recorded for any of them
    readers = {r.principal_subject for r in audit_rows(world, "$") if r.outcome == 0}
    assert readers == set()


def test_uids_outside_the_study_are_refused_and_never_fetched(
    client: TestClient, world: World, study_id: str
) -> None:
    spy = RecordingTransport()
    world.app.state.imaging = Registry(
        world.settings.dicomweb_endpoints, timeout=10, max_bytes=1 << 24, transport=spy
    )
    headers = as_(client, gp(world))
    base = f"/fhir/ImagingStudy/{study_id}/$preview"
    # a series of another patient's study: not in the record's list, refused without a request
    resp = client.get(f"{base}?series={FOREIGN.uid}&instance={FOREIGN.instances[0]}", headers=headers)
    assert resp.status_code == 404 and resp.json()["issue"][0]["code"] == "not-found"
    assert spy.paths == []
    # an instance of another study under a series of this one: the image server's list of the
    # series decides, and the image is never asked for
    resp = client.get(f"{base}?series={CT.uid}&instance={FOREIGN.instances[0]}", headers=headers)
    assert resp.status_code == 404
    assert spy.paths and not any("rendered" in p for p in spy.paths)
    assert all(p.startswith(f"/dicom-web/studies/{CT_MR_STUDY.uid}/") for p in spy.paths)
    assert not any(FOREIGN.uid in p or OTHER_STUDY.uid in p for p in spy.paths)
    # not UIDs at all: 400 before anything is read
    spy.paths.clear()
    for bad in ("../../system", "1.2.x", "", "1." + "2" * 70, "01.2"):
        resp = client.get(f"{base}?series={bad}", headers=headers)
        assert resp.status_code == 400, bad
        assert resp.json()["issue"][0]["code"] == "invalid"
    resp = client.get(f"{base}?series={CT.uid}&instance=/etc/passwd", headers=headers)
    assert resp.status_code == 400
    assert spy.paths == []
    # a study listing its instances: one it does not list is refused without any request
    listed = file_study(client, imaging_study(series=[CT], instances=True))
    resp = client.get(
        f"/fhir/ImagingStudy/{listed}/$preview?series={CT.uid}&instance={MR.instances[0]}", headers=headers
    )
    assert resp.status_code == 404 and spy.paths == []
    ok = client.get(
        f"/fhir/ImagingStudy/{listed}/$preview?series={CT.uid}&instance={CT.instances[1]}", headers=headers
    )
    assert ok.status_code == 200 and ok.content.startswith(PNG_MAGIC)
    assert spy.paths == [
        f"/dicom-web/studies/{CT_MR_STUDY.uid}/series/{CT.uid}/instances/{CT.instances[1]}/rendered"
    ]


def test_every_proxied_access_is_audited(client: TestClient, world: World, study_id: str) -> None:
    headers = as_(client, gp(world))
    client.get(f"/fhir/ImagingStudy/{study_id}/$series", headers=headers)
    client.get(
        f"/fhir/ImagingStudy/{study_id}/$preview?series={CT.uid}&instance={CT.instances[0]}", headers=headers
    )
    client.get(f"/fhir/ImagingStudy/{study_id}/$preview?series={MR.uid}", headers=headers)
    rows = [r for r in audit_rows(world, "$") if r.principal_subject == world.gp.account_id]
    assert [(r.action, r.interaction, r.query, r.outcome) for r in rows] == [
        ("read", "read", "$series", 0),
        ("read", "read", f"$preview?series={CT.uid}&instance={CT.instances[0]}", 0),
        ("read", "read", f"$preview?series={MR.uid}", 0),
    ]
    for r in rows:
        assert r.patient_id == "pa" and r.principal_ref == "Practitioner/gp"
        assert json.loads(r.resources) == [f"ImagingStudy/{study_id}/_history/1"]
    # the holder reads it in their access log, as AuditEvents
    log = client.get("/fhir/AuditEvent?patient=pa&_count=100", headers=as_(client, holder(world))).json()
    queries = [
        e["resource"].get("entity", [{}])[0].get("query")
        for e in log.get("entry", [])
        if any(a.get("who", {}).get("reference") == "Practitioner/gp" for a in e["resource"]["agent"])
    ]
    assert queries, "the GP's reads are in the holder's log"
    # a refused access is in the log as a failure, never as a read
    client.get(f"/fhir/ImagingStudy/{study_id}/$preview?series={FOREIGN.uid}", headers=headers)
    after = [r for r in audit_rows(world, "$") if r.principal_subject == world.gp.account_id]
    assert len(after) == 3
    with world.engine.connect() as conn:
        failures = conn.execute(
            select(audit_log.c.outcome, audit_log.c.interaction).where(
                audit_log.c.principal_subject == world.gp.account_id, audit_log.c.outcome != 0
            )
        ).all()
    assert [(f.outcome, f.interaction) for f in failures] == [
        (4, f"GET /fhir/ImagingStudy/{study_id}/$preview")
    ]


def _dead_server(world: World, url: str) -> None:
    world.app.state.imaging = Registry({"pacs-nord": DicomWebServer(url=url)}, timeout=0.5, max_bytes=1 << 20)
    world.app.state.fhir.update("Endpoint", "pacs-nord", _with_address(world, url))


def _with_address(world: World, url: str) -> dict[str, Any]:
    endpoint: dict[str, Any] = world.app.state.fhir.read("Endpoint", "pacs-nord").resource()
    return {**endpoint, "address": url}


def test_image_server_down_is_502_and_silent_is_504(client: TestClient, world: World, study_id: str) -> None:
    headers = as_(client, gp(world))
    _dead_server(world, f"http://127.0.0.1:{free_port()}/dicom-web")  # nothing listens there
    for url in (
        f"/fhir/ImagingStudy/{study_id}/$series",
        f"/fhir/ImagingStudy/{study_id}/$preview?series={CT.uid}&instance={CT.instances[0]}",
    ):
        resp = client.get(url, headers=headers)
        assert resp.status_code == 502, resp.text
        assert resp.headers["content-type"].startswith("application/fhir+json")
        issue = resp.json()["issue"][0]
        assert issue["code"] == "transient" and "cannot be reached" in issue["diagnostics"]
        assert "127.0.0.1" not in issue["diagnostics"]  # the server's address is not told
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        _dead_server(world, f"http://127.0.0.1:{silent.getsockname()[1]}/dicom-web")
        resp = client.get(f"/fhir/ImagingStudy/{study_id}/$series", headers=headers)
        assert resp.status_code == 504 and resp.json()["issue"][0]["code"] == "timeout"


def test_image_server_errors_and_oversized_images_are_502(
    client: TestClient, world: World, study_id: str, orthanc: OrthancServer
) -> None:
    headers = as_(client, gp(world))
    preview = f"/fhir/ImagingStudy/{study_id}/$preview?series={CT.uid}&instance={CT.instances[0]}"
    small = Registry(world.settings.dicomweb_endpoints, timeout=10, max_bytes=64)
    world.app.state.imaging = small
    resp = client.get(preview, headers=headers)
    assert resp.status_code == 502 and resp.json()["issue"][0]["code"] == "too-costly"
    # the platform's credentials refused by the image server
    wrong = {"pacs-nord": DicomWebServer(url=orthanc.dicomweb, username="sharedcare", password="wrong")}
    world.app.state.imaging = Registry(wrong, timeout=10, max_bytes=1 << 20)
    resp = client.get(preview, headers=headers)
    assert resp.status_code == 502 and resp.json()["issue"][0]["code"] == "exception"
    # an image the record names but the server does not hold
    world.app.state.imaging = Registry(world.settings.dicomweb_endpoints, timeout=10, max_bytes=1 << 20)
    ghost = f"{CT.uid}.99"
    sid = file_study(client, imaging_study(series=[CT], instances=True, extra_instances=[ghost]))
    resp = client.get(f"/fhir/ImagingStudy/{sid}/$preview?series={CT.uid}&instance={ghost}", headers=headers)
    assert resp.status_code == 404 and "does not hold" in resp.json()["issue"][0]["diagnostics"]


def test_the_proxy_goes_only_to_configured_servers(
    client: TestClient, world: World, orthanc: OrthancServer, agency: TestClient
) -> None:
    headers = as_(client, gp(world))
    # an Endpoint whose address is not configured: refused, whatever it says
    rogue = {
        "resourceType": "Endpoint",
        "id": "rogue",
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "payloadType": [{"text": "DICOM"}],
        "address": f"{orthanc.url}/dicom-web-elsewhere",
    }
    assert agency.put("/fhir/Endpoint/rogue", json=rogue).status_code == 201  # directory: the agency
    sid = file_study(client, imaging_study(endpoint={"reference": "Endpoint/rogue"}))
    resp = client.get(f"/fhir/ImagingStudy/{sid}/$series", headers=headers)
    assert resp.status_code == 422 and resp.json()["issue"][0]["code"] == "not-supported"
    # a study naming no endpoint, or no DICOM study UID
    sid = file_study(client, imaging_study(endpoint=None))
    assert client.get(f"/fhir/ImagingStudy/{sid}/$series", headers=headers).status_code == 422
    sid = file_study(client, imaging_study(uid=None))
    assert client.get(f"/fhir/ImagingStudy/{sid}/$series", headers=headers).status_code == 422
    # a logical reference to a configured endpoint id works without any Endpoint resource
    logical = {"identifier": {"system": ENDPOINT_SYSTEM, "value": "pacs-nord"}}
    sid = file_study(client, imaging_study(endpoint=logical))
    resp = client.get(f"/fhir/ImagingStudy/{sid}/$series", headers=headers)
    assert resp.status_code == 200 and len(resp.json()["series"]) == 2


def test_no_token_no_images(client: TestClient, world: World, study_id: str) -> None:
    anonymous = TestClient(client.app)
    assert anonymous.get(f"/fhir/ImagingStudy/{study_id}/$series").status_code == 401
    assert anonymous.get(f"/fhir/ImagingStudy/{study_id}/$preview?series={CT.uid}").status_code == 401
    # a token whose scopes do not cover ImagingStudy
    only_patients = as_(client, gp(world), "user/Patient.rs")
    assert client.get(f"/fhir/ImagingStudy/{study_id}/$series", headers=only_patients).status_code == 403
