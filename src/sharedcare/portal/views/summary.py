"""The patient summary page: the International Patient Summary generated for the reader.

``/portal/summary`` (holder side) and ``/portal/pro/patients/[pid]/summary`` generate the IPS
with ``crossborder.ips.generate_summary`` through the reader's own session (``records.view``):
the single access decision picks what it holds (a pharmacist's summary holds what a pharmacist
reads; the holder's leaves out items held back for a consultation d'annonce) and the generation
is audited as one act. The page shows each section as a table built from the document's
resources (never the document's XHTML, so nothing in the record can become markup of the
portal), in the reader's language, and says in words why a required section is empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from sharedcare.api.fhir import base_url
from sharedcare.crossborder import narrative as nv
from sharedcare.crossborder.ips import generate_summary
from sharedcare.crossborder.reader import ReadSection, read_summary
from sharedcare.crossborder.texts import text
from sharedcare.fhir.errors import FhirError
from sharedcare.portal import csrf, records
from sharedcare.portal.deps import holder_side, professional
from sharedcare.portal.i18n import N_
from sharedcare.portal.pages import language, render
from sharedcare.portal.sessions import PortalError, PortalUser

router = APIRouter(dependencies=[Depends(csrf.require_csrf)])
NOT_FOUND = N_("No record was found, or you have no access to it.")


@dataclass(frozen=True, slots=True)
class Row:
    """One entry of a section, in words."""

    item: str
    details: str
    status: str
    date: str


@dataclass(slots=True)
class Section:
    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    empty: bool = False


def _details(res: Mapping[str, Any]) -> str:
    """What a reader needs beside the item's name: a value, a dosage, reactions, a lot."""
    rtype = res.get("resourceType")
    if rtype == "Observation":
        return nv.value_of(res)
    if rtype in ("MedicationStatement", "MedicationRequest"):
        dosage = nv.items(res.get("dosage")) or nv.items(res.get("dosageInstruction"))
        return "; ".join(
            d["text"] for d in dosage if isinstance(d, Mapping) and isinstance(d.get("text"), str)
        )
    if rtype == "AllergyIntolerance":
        reactions = [
            nv.concept(m)
            for r in nv.items(res.get("reaction"))
            if isinstance(r, Mapping)
            for m in nv.items(r.get("manifestation"))
        ]
        return ", ".join(x for x in [str(res.get("criticality") or ""), *reactions] if x)
    if rtype == "Immunization":
        return str(res.get("lotNumber") or "")
    return nv.concept(res.get("severity"))


def _section(read: ReadSection, lang: str) -> Section:
    key = read.key or ""
    title = text(lang, key) if key else read.title
    rows = []
    for entry in read.resolved:
        res = entry.resource or {}
        status = nv.coded(res.get("clinicalStatus")) or str(res.get("status") or "")
        rows.append(Row(entry.label or "—", _details(res), status, nv.day(nv.when(res))))
    return Section(key, title or read.title, rows, empty=not rows)


def summary_page(request: Request, user: PortalUser, patient_id: str, back: str) -> Response:
    lang = language(request, user)
    try:
        bundle = generate_summary(
            records.view(request, user), patient_id, base_url=base_url(request), language=lang
        )
    except FhirError:
        raise PortalError(404, NOT_FOUND) from None
    read = read_summary(bundle)
    context = {
        "patient_name": read.patient_name,
        "generated": records.parse_when(read.date),
        "sections": [_section(s, lang) for s in read.sections],
        "back": back,
    }
    return render(request, "summary.html", context, user=user)


@router.get("/summary")
def holder_summary(request: Request, user: PortalUser = Depends(holder_side)) -> Response:
    assert user.record is not None
    return summary_page(request, user, user.record, "/portal/home")


@router.get("/pro/patients/{patient_id}/summary")
def pro_summary(request: Request, patient_id: str, user: PortalUser = Depends(professional)) -> Response:
    return summary_page(request, user, patient_id, f"/portal/pro/patients/{patient_id}")
