"""The CapabilityStatement, generated from what the server really implements."""

from __future__ import annotations

from functools import cache
from typing import Any

from sharedcare import __version__
from sharedcare.fhir.definitions import definitions
from sharedcare.fhir.search.parse import MODIFIERS_BY_TYPE

INTERACTIONS = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)
SYSTEM_INTERACTIONS = ("transaction", "batch", "history-system")
IDS_FORECAST = "http://hl7.org/fhir/us/immds/OperationDefinition/ImmDSForecastOperation"
"""HL7's Immunization Decision Support Forecast operation (vaccination/operations.py)."""
_LOCAL = "https://sharedcare.lu/fhir/OperationDefinition/"
OPERATIONS = {
    "everything": ("Patient", "http://hl7.org/fhir/OperationDefinition/Patient-everything"),
    "summary": ("Patient", "http://hl7.org/fhir/uv/ips/OperationDefinition/summary"),
    "immds-forecast": ("Patient", IDS_FORECAST),
    "vaccination-certificate": ("Patient", _LOCAL + "vaccination-certificate"),
    "register": ("Patient", _LOCAL + "register"),
    "renew-registration": ("Patient", _LOCAL + "renew-registration"),
    "end-care": ("Patient", _LOCAL + "end-care"),
    "opt-out": ("Patient", _LOCAL + "opt-out"),
    "request-filing": ("Patient", _LOCAL + "request-filing"),
    "parse-datamatrix": ("Immunization", _LOCAL + "parse-datamatrix"),
    "validate-reported": ("Immunization", _LOCAL + "validate-reported"),
    "decide": ("Task", "https://sharedcare.lu/fhir/OperationDefinition/record-request-decide"),
    "series": ("ImagingStudy", "https://sharedcare.lu/fhir/OperationDefinition/imaging-series"),
    "preview": ("ImagingStudy", "https://sharedcare.lu/fhir/OperationDefinition/imaging-preview"),
}
ITEM_OPERATIONS = (
    "release-disclosure",
    "object-to-filing",
    "withdraw-objection",
    "request-rectification",
    "request-erasure",
)
"""The holder's and authors' operations on any item of a record (``api/requests.py``)."""


@cache
def _resources() -> list[dict[str, Any]]:
    defs = definitions()
    out = []
    for rtype in sorted(defs.resource_types):
        params = defs.params_for(rtype)
        search = [
            {"name": "_id", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"},
            {
                "name": "_lastUpdated",
                "type": "date",
                "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
            },
        ]
        for code, p in sorted(params.items()):
            if not p.is_indexed:
                continue
            entry: dict[str, Any] = {"name": code, "type": p.type, "definition": p.url}
            if p.description:
                entry["documentation"] = p.description.split("\n")[0][:500]
            search.append(entry)
        refs = sorted(c for c, p in params.items() if p.type == "reference")
        res: dict[str, Any] = {
            "type": rtype,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
            "interaction": [{"code": i} for i in INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "not-match",  # If-None-Match is honoured; If-Modified-Since is not
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "referencePolicy": ["literal", "logical", "local"],
            "searchInclude": ["*", *(f"{rtype}:{c}" for c in refs)],
            "searchRevInclude": ["*"],
            "searchParam": search,
            "operation": [
                {
                    "name": "validate",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
                }
            ],
        }
        for name, (base, url) in OPERATIONS.items():
            if base == rtype:
                res["operation"].append({"name": name, "definition": url})
        res["operation"].extend(
            {"name": name, "definition": f"https://sharedcare.lu/fhir/OperationDefinition/{name}"}
            for name in ITEM_OPERATIONS
        )
        out.append(res)
    return out


def raw_binary_create(max_content_bytes: int | None) -> str:
    """How ``create`` on Binary takes a document's raw bytes (``api/documents.py``)."""
    limit = f"{max_content_bytes} bytes" if max_content_bytes is not None else "the server's content limit"
    return (
        "Besides a FHIR Binary resource, POST [base]/Binary accepts a document's raw bytes streamed as the "
        "body, with their own Content-Type and the header 'X-Security-Context: Patient/[id]' naming the "
        f"record they go to; at most {limit} (SHAREDCARE_MAX_CONTENT_BYTES), 413 beyond with nothing kept. "
        "A Provide Document Bundle (ITI-65) of the same uploader then names it in attachment.url; until "
        "then only its uploader reads it back (GET [base]/Binary/[id]), and it expires if unclaimed. "
        "PUT [base]/Binary/[id] with raw bytes replaces the uploader's own unclaimed upload."
    )


def _with_raw_binary(res: dict[str, Any], max_content_bytes: int | None) -> dict[str, Any]:
    if res["type"] != "Binary":
        return res
    interactions = [
        {**i, "documentation": raw_binary_create(max_content_bytes)} if i["code"] == "create" else i
        for i in res["interaction"]
    ]
    return {**res, "interaction": interactions}


def capability_statement(base_url: str, date: str, max_content_bytes: int | None = None) -> dict[str, Any]:
    """The server's CapabilityStatement for ``base_url``; ``max_content_bytes``, the content limit
    of raw Binary uploads, is named in Binary's ``create``."""
    modifiers = "; ".join(f"{t}: {', '.join(m)}" for t, m in sorted(MODIFIERS_BY_TYPE.items()))
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "SharedCare",
        "kind": "instance",
        "software": {"name": "SharedCare", "version": __version__},
        "implementation": {"description": "SharedCare FHIR R4 server", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Search supports chaining, _has, _include/_revinclude (:iterate), _sort, _count with "
                    "keyset paging, _total, _summary, _elements, Prefer: handling=strict|lenient. "
                    f"Modifiers by type: {modifiers}; reference: :identifier and :[type]."
                ),
                "resource": [_with_raw_binary(r, max_content_bytes) for r in _resources()],
                "interaction": [{"code": i} for i in SYSTEM_INTERACTIONS],
                "operation": [{"name": "immds-forecast", "definition": IDS_FORECAST}],
                "searchParam": [
                    {
                        "name": "_lastUpdated",
                        "type": "date",
                        "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
                    },
                ],
            }
        ],
    }
