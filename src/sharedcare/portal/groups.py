"""The groups a patient recognises in their record: laboratory results, hospital reports, imaging...

The access matrix sorts data into the regulation's rows (``access.categories``: who may read
it); a patient looks for "my laboratory results" or "my vaccinations". ``group_of`` is the one
place that turns a resource into such a group for the portal's timeline. Documents
(DocumentReference, Composition) take the patient category of their document type from
``documents.categories``, so the timeline and the MHD validator agree; every other resource is
grouped by its row of the matrix, the row the store records in ``resource.category`` (the same
``access.policy.category_of``), with vaccinations apart. What fits no group is "other".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sharedcare.access.categories import VACCINATION_TYPES
from sharedcare.access.policy import category_of
from sharedcare.documents.categories import document_types
from sharedcare.portal.i18n import N_

LABORATORY = "laboratory-results"
OTHER = "other"
GROUPS: dict[str, str] = {
    LABORATORY: N_("Laboratory results"),
    "hospital-reports": N_("Hospital reports"),
    "imaging": N_("Imaging"),
    "prescriptions": N_("Prescriptions and dispensations"),
    "patient-summary": N_("Patient summary"),
    "vaccination": N_("Vaccination"),
    "consultation-notes": N_("Consultation notes"),
    "personal-documents": N_("Personal documents"),
    OTHER: N_("Other"),
}
"""Group code → label (a catalogue msgid), in the order the filters list them. The codes are
those of ``documents/data/document-types.toml`` plus "other" (a test keeps them in step)."""
DOCUMENT_TYPES = frozenset({"DocumentReference", "Composition"})
_BY_ROW = {
    "lab-results": LABORATORY,
    "imaging": "imaging",
    "prescriptions": "prescriptions",
    "dispensations": "prescriptions",
    "summaries": "patient-summary",
    "care-reports": "consultation-notes",
    "personal-expression": "personal-documents",
}
"""Matrix row → group for resources that are not documents (as the documents' fallback table)."""


def group_of(resource: Mapping[str, Any]) -> str:
    """The group of a record item (a code of ``GROUPS``)."""
    rtype = resource.get("resourceType")
    if rtype in VACCINATION_TYPES:
        return "vaccination"
    if rtype in DOCUMENT_TYPES:
        found = document_types().category_of(resource)
        if found is not None and found.code in GROUPS:
            return found.code
    return _BY_ROW.get(category_of(resource), OTHER)
