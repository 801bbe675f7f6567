"""A patient's record as one caller may read it, for their summary.

Every row goes through the caller's read filter (``FhirService.access_filter``: the access
decision, the SMART scopes, the holder's masks and the pending-disclosure hold), exactly as
``$everything`` reads it, so a summary never holds what its requester could not read one by
one; a hidden Patient answers as unknown (404). What the summary returned is audited as one
``operation`` act (``record_summary``), one record per patient, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, tuple_

from sharedcare.fhir.errors import NotFound
from sharedcare.fhir.search.engine import local_compartment_link
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.session import Interaction
from sharedcare.fhir.store import Stored
from sharedcare.storage.tables import resource, resource_compartment

_R = resource.alias("ips_r")
_COLUMNS = (_R.c.pk, _R.c.type, _R.c.id, _R.c.version, _R.c.last_updated, _R.c.deleted, _R.c.content)
_CHUNK = 400


@dataclass
class RecordView:
    """The part of one record its caller may read, on an open connection."""

    service: FhirService
    conn: Connection
    patient: Stored
    base_url: str

    def compartment(self, types: Iterable[str]) -> list[Stored]:
        """The caller's readable resources of ``types`` in the patient's compartment."""
        r = _R
        pid = self.patient.id
        kinds = sorted(set(types))
        conds: list[Any] = [
            r.c.deleted.is_(False),
            r.c.type.in_(kinds),
            r.c.pk.in_(select(resource_compartment.c.res_pk).where(resource_compartment.c.patient_id == pid)),
            local_compartment_link(r, pid, self.base_url),
        ]
        access = self.service.access_filter()
        if access is not None:
            conds.append(access(r, kinds))
        rows = self.conn.execute(select(*_COLUMNS).where(*conds).order_by(r.c.pk))
        return [Stored(x.pk, x.type, x.id, x.version, x.last_updated, x.deleted, x.content) for x in rows]

    def fetch(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Stored]:
        """The resources named by ``keys`` (type, id) that the caller may read; others are absent."""
        wanted = sorted(set(keys))
        found: dict[tuple[str, str], Stored] = {}
        access = self.service.access_filter()
        r = _R
        for start in range(0, len(wanted), _CHUNK):
            conds: list[Any] = [
                r.c.deleted.is_(False),
                tuple_(r.c.type, r.c.id).in_(wanted[start : start + _CHUNK]),
            ]
            if access is not None:
                conds.append(access(r, {t for t, _ in wanted[start : start + _CHUNK]}))
            for x in self.conn.execute(select(*_COLUMNS).where(*conds)):
                found[(x.type, x.id)] = Stored(
                    x.pk, x.type, x.id, x.version, x.last_updated, x.deleted, x.content
                )
        return found

    def record_summary(self, returned: Iterable[Stored]) -> None:
        """Note the audit record of the summary: every resource it holds, under ``$summary``."""
        if self.service.session is not None:
            self.service.session.record(
                self.conn,
                Interaction(
                    "operation",
                    "Patient",
                    list(returned),
                    operation="summary",
                    query=f"Patient/{self.patient.id}/$summary",
                ),
            )


def open_record(service: FhirService, conn: Connection, patient_id: str, base_url: str) -> RecordView:
    """The caller's view of ``patient_id``'s record; NotFound when they may not see the patient
    (whether or not it exists), Gone when it is deleted."""
    if service.session is not None:
        service.session.require("Patient", "r")
    current = service.current_visible(conn, "Patient", patient_id)
    if current is None:
        raise NotFound(f"Resource Patient/{patient_id} is not known")
    patient = service.store.read(conn, "Patient", patient_id)  # Gone when deleted
    return RecordView(service, conn, patient, base_url)
