"""Helpers of the imaging tests: the hospital's ImagingStudy, tokens, and a transport that
records which URLs the proxy asked the image server for."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi.testclient import TestClient
from orthanc_server import CT_MR_STUDY, SeriesSpec

from sharedcare.access.principals import Principal, PrincipalKind
from support import bearer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
HOSPITAL = Principal(
    PrincipalKind.SYSTEM, "ris-nord", "RIS Hôpital du Nord", organization_id="hosp", client_id="ris-nord"
)
"""The hospital's radiology information system: a facility system client (not trusted)."""
_DEFAULT = object()


def as_(client: TestClient, principal: Principal, scope: str | None = None) -> dict[str, str]:
    """Authorization header of a token for ``principal`` (default scopes by kind)."""
    if scope is None:
        scope = {
            PrincipalKind.SYSTEM: "system/ImagingStudy.c system/Patient.r",
            PrincipalKind.PATIENT: "patient/*.rs",
        }.get(principal.kind, "user/*.rs")
    return bearer(client.app, principal, scope)


def imaging_study(
    *,
    series: list[SeriesSpec] | None = None,
    instances: bool = False,
    extra_instances: list[str] | None = None,
    endpoint: Any = _DEFAULT,
    uid: Any = _DEFAULT,
    patient: str = "pa",
) -> dict[str, Any]:
    """Marie Muller's CT/MR study as the hospital files it (``series``: those it lists)."""
    listed = list(CT_MR_STUDY.series) if series is None else series
    study_uid = CT_MR_STUDY.uid if uid is _DEFAULT else uid
    res: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "status": "available",
        "subject": {"reference": f"Patient/{patient}"},
        "started": "2026-03-01T10:15:00Z",
        "description": CT_MR_STUDY.description,
        "numberOfSeries": len(listed),
        "numberOfInstances": sum(len(s.instances) for s in listed),
        "series": [],
    }
    if study_uid is not None:
        res["identifier"] = [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}]
    if endpoint is _DEFAULT:
        endpoint = {"reference": "Endpoint/pacs-nord"}
    if endpoint is not None:
        res["endpoint"] = [endpoint]
    for s in listed:
        entry: dict[str, Any] = {
            "uid": s.uid,
            "number": s.number,
            "modality": {"system": DCM, "code": s.modality},
            "description": s.description,
            "numberOfInstances": len(s.instances),
        }
        if instances:
            uids = [*s.instances, *(extra_instances or [])]
            entry["instance"] = [
                {
                    "uid": u,
                    "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"},
                }
                for u in uids
            ]
        res["series"].append(entry)
    return res


def file_study(client: TestClient, study: dict[str, Any]) -> str:
    """POST the study as the hospital's system client; its new id."""
    resp = client.post("/fhir/ImagingStudy", json=study, headers=as_(client, HOSPITAL))
    assert resp.status_code == 201, resp.text
    study_id: str = resp.json()["id"]
    return study_id


class _Closing(httpx.AsyncByteStream):
    """A response body that closes its own connection pool once read."""

    def __init__(self, stream: httpx.AsyncByteStream, transport: httpx.AsyncHTTPTransport) -> None:
        self.stream = stream
        self.transport = transport

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.stream:
            yield chunk

    async def aclose(self) -> None:
        await self.stream.aclose()
        await self.transport.aclose()


class RecordingTransport(httpx.AsyncBaseTransport):
    """Sends every request on (a pool per request) and records its URL path."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        inner = httpx.AsyncHTTPTransport()
        response = await inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Closing(response.stream, inner),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        return None


def endpoint(address: str, rid: str = "pacs-nord", status: str = "active") -> dict[str, Any]:
    """The hospital's DICOMweb server as a directory Endpoint (``dicom-wado-rs``)."""
    return {
        "resourceType": "Endpoint",
        "id": rid,
        "status": status,
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "name": "PACS Hôpital du Nord",
        "managingOrganization": {"reference": "Organization/hosp"},
        "payloadType": [{"text": "DICOM"}],
        "payloadMimeType": ["application/dicom"],
        "address": address,
    }
