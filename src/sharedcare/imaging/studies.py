"""A study's images as the caller may see them: read through the access decision, audited,
and bounded to the study the record names.

``open_study`` reads the ``ImagingStudy`` with the caller's session-bound ``FhirService``
(a study the caller may not see answers exactly like an unknown one: 404), checks that the
series and image asked for belong to it, and notes the audit record, a read of the study whose
query names the operation and the UIDs, in the same transaction, before any request leaves for
the image server. What the proxy may relay is fixed by the record, never by the request:

- the DICOM study is the one of ``ImagingStudy.identifier`` (system ``urn:dicom:uid``);
- when the study lists its series (``ImagingStudy.series``), only those are shown; when a
  series lists its instances, only those;
- otherwise the image server is asked which instances the series of that study holds
  (``instance_of``), and a UID it does not list is refused before any image is fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import Connection

from sharedcare.fhir.errors import NotFound
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.session import Interaction
from sharedcare.imaging.client import DicomWebClient, InstanceInfo, SeriesInfo, valid_uid
from sharedcare.imaging.endpoints import Registry, Server
from sharedcare.imaging.errors import InvalidUid, NoImages, NotInStudy

DICOM_UID_SYSTEM = "urn:dicom:uid"
STUDY_TYPE = "ImagingStudy"


@dataclass(frozen=True, slots=True)
class StudyImages:
    """Where a study's images are and which of them the record names."""

    id: str
    study_uid: str
    server: Server
    patient: str | None
    """``Patient/…`` the study is about (its ``subject``), for links back to the record."""
    listed: dict[str, frozenset[str] | None] | None
    """Series UIDs the record lists, each with the instance UIDs it lists (None: not listed);
    None when the record lists no series (the whole study is shown)."""
    description: str = ""

    def allows_series(self, series_uid: str) -> bool:
        return self.listed is None or series_uid in self.listed

    def listed_instances(self, series_uid: str) -> frozenset[str] | None:
        return None if self.listed is None else self.listed.get(series_uid)


def required_uid(value: str | None, name: str) -> str:
    """``value`` if it is a DICOM UID; InvalidUid otherwise (missing included)."""
    if not value:
        raise InvalidUid(f"the parameter {name!r} is required")
    if not valid_uid(value):
        raise InvalidUid(f"the parameter {name!r} is not a DICOM UID")
    return value


def optional_uid(value: str | None, name: str) -> str | None:
    """``value`` if it is a DICOM UID, None when absent or empty; InvalidUid otherwise."""
    return required_uid(value, name) if value else None


def study_uid_of(study: dict[str, Any]) -> str | None:
    """The Study Instance UID of an ``ImagingStudy`` (``identifier`` ``urn:dicom:uid``)."""
    for ident in study.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == DICOM_UID_SYSTEM:
            value = str(ident.get("value") or "").removeprefix("urn:oid:")
            if valid_uid(value):
                return value
    return None


def _listed(study: dict[str, Any]) -> dict[str, frozenset[str] | None] | None:
    series = [s for s in study.get("series") or [] if isinstance(s, dict) and isinstance(s.get("uid"), str)]
    if not series:
        return None
    listed: dict[str, frozenset[str] | None] = {}
    for s in series:
        instances = [i["uid"] for i in s.get("instance") or [] if isinstance(i, dict) and "uid" in i]
        listed[s["uid"]] = frozenset(str(uid) for uid in instances) if instances else None
    return listed


def operation_query(operation: str, series: str | None = None, instance: str | None = None) -> str:
    """The audit record's query: the operation and the UIDs it was asked for."""
    params = [(k, v) for k, v in (("series", series), ("instance", instance)) if v]
    return f"{operation}?{urlencode(params)}" if params else operation


def open_study(
    service: FhirService,
    registry: Registry,
    study_id: str,
    operation: str,
    *,
    series: str | None = None,
    instance: str | None = None,
) -> StudyImages:
    """The images of ``ImagingStudy/{study_id}`` as the service's caller may see them.

    Raises ``NotFound`` (hidden or unknown study), ``Gone`` (deleted), ``Forbidden`` (scopes),
    ``NotInStudy`` (a series or instance the record does not list), ``NoImages`` or
    ``UnknownServer``. On success the read is audited (query: ``operation`` and the UIDs)."""
    with service.reading() as conn:
        service.check_type(STUDY_TYPE)
        if service.session is not None:
            service.session.require(STUDY_TYPE, "r")
        current = service.current_visible(conn, STUDY_TYPE, study_id)
        if current is None:
            raise NotFound(f"Resource {STUDY_TYPE}/{study_id} is not known")
        if current.deleted:
            service.store.read(conn, STUDY_TYPE, study_id)  # raises Gone, as a read does
        study = current.resource()
        images = _images(study_id, study, registry, conn, service)
        if series is not None and not images.allows_series(series):
            raise NotInStudy(f"series {series} is not part of {STUDY_TYPE}/{study_id}")
        listed = images.listed_instances(series) if series is not None else None
        if instance is not None and listed is not None and instance not in listed:
            raise NotInStudy(f"instance {instance} is not part of series {series} of {STUDY_TYPE}/{study_id}")
        if service.session is not None:
            query = operation_query(operation, series, instance)
            service.session.record(conn, Interaction("read", STUDY_TYPE, [current], query=query))
    return images


def _images(
    study_id: str, study: dict[str, Any], registry: Registry, conn: Connection, service: FhirService
) -> StudyImages:
    uid = study_uid_of(study)
    if uid is None:
        raise NoImages("the ImagingStudy has no DICOM Study Instance UID (identifier system urn:dicom:uid)")

    def endpoint(endpoint_id: str) -> dict[str, Any] | None:
        # directory data (not patient data, category "reference"): read as configuration
        stored = service.store.current(conn, "Endpoint", endpoint_id)
        return None if stored is None or stored.deleted else stored.resource()

    server = registry.server_of(study, endpoint)
    subject = study.get("subject")
    patient = subject.get("reference") if isinstance(subject, dict) else None
    description = study.get("description")
    return StudyImages(
        study_id,
        uid,
        server,
        patient if isinstance(patient, str) and patient.startswith("Patient/") else None,
        _listed(study),
        description if isinstance(description, str) else "",
    )


async def series_of(images: StudyImages, registry: Registry) -> list[SeriesInfo]:
    """The study's series on the image server, only those the record lists when it lists any."""
    found = await DicomWebClient(images.server, registry).series(images.study_uid)
    return [s for s in found if images.allows_series(s.uid)]


async def instance_of(
    images: StudyImages, registry: Registry, series_uid: str, instance_uid: str | None
) -> str:
    """The instance to render: ``instance_uid`` once checked to be in the series (the record's
    list, else the image server's list for that series of that study), or, when none is given,
    the middle one of the series (a representative slice)."""
    listed = images.listed_instances(series_uid)
    if instance_uid is not None and listed is not None:
        return instance_uid  # checked against the record by open_study
    known: list[InstanceInfo] = await DicomWebClient(images.server, registry).instances(
        images.study_uid, series_uid
    )
    uids = [i.uid for i in known if listed is None or i.uid in listed]
    if instance_uid is not None:
        if instance_uid not in uids:
            raise NotInStudy(f"instance {instance_uid} is not part of series {series_uid} of the study")
        return instance_uid
    if not uids:
        raise NotInStudy(f"the image server holds no instance of series {series_uid} of the study")
    return uids[len(uids) // 2]
