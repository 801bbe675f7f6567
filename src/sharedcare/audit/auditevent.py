"""A log entry as a FHIR R4 ``AuditEvent`` following IHE BALP (Basic Audit Log Patterns).

BALP (https://profiles.ihe.net/ITI/BALP) fixes, per RESTful interaction, the event type and
subtype, the action code, the agents (client, server, user) and the entities (patient, data,
query). The patterns are applied for every entry; ``meta.profile`` names the BALP profile only
when the rendering meets all of it (a successful act, the client's and the server's addresses
known, one resource for reads and writes), so the claim is never false.
"""

from __future__ import annotations

import base64
from typing import Any

from sharedcare.audit.log import AuditAction, AuditEntry, AuditOutcome, Purpose

__all__ = ["SERVER_NAME", "to_audit_event"]

SERVER_NAME = "SharedCare"

DCM = "http://dicom.nema.org/resources/ontology/DCM"
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
PROVENANCE_PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
ROLE_CLASS = "http://terminology.hl7.org/CodeSystem/v3-RoleClass"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
BALP_ENTITY_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
BALP_PROFILE = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
# Placeholders until the agency names official systems (like MATRICULE_SYSTEM in identity/).
PRINCIPAL_KIND_SYSTEM = "http://sharedcare.lu/fhir/CodeSystem/principal-kind"
PROFESSION_SYSTEM = "http://sharedcare.lu/fhir/CodeSystem/profession"
ACCOUNT_SYSTEM = "http://sharedcare.lu/fhir/sid/account"
CLIENT_SYSTEM = "http://sharedcare.lu/fhir/sid/oauth-client"

RESTFUL_CODES = frozenset(
    [
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history",
        "history-instance",
        "history-type",
        "history-system",
        "create",
        "search",
        "search-type",
        "search-system",
        "capabilities",
        "transaction",
        "batch",
        "operation",
    ]
)
_REST_ACTIONS = {
    AuditAction.READ: "read",
    AuditAction.VREAD: "vread",
    AuditAction.HISTORY: "history",
    AuditAction.SEARCH: "search",
    AuditAction.CREATE: "create",
    AuditAction.UPDATE: "update",
    AuditAction.PATCH: "patch",
    AuditAction.DELETE: "delete",
    AuditAction.OPERATION: "operation",
}
_ACTION_CODE = {
    AuditAction.READ: "R",
    AuditAction.VREAD: "R",
    AuditAction.HISTORY: "R",
    AuditAction.EXPORT: "R",
    AuditAction.SEARCH: "E",
    AuditAction.OPERATION: "E",
    AuditAction.LOGIN: "E",
    AuditAction.LOGOUT: "E",
    AuditAction.EMERGENCY_ACCESS: "E",
    AuditAction.CREATE: "C",
    AuditAction.UPDATE: "U",
    AuditAction.PATCH: "U",
    AuditAction.CONSENT_CHANGE: "U",
    AuditAction.DELETE: "D",
}
_INTERACTION_CODE = {"create": "C", "delete": "D", "update": "U", "patch": "U"}
# Non-RESTful events: DICOM audit event ID (type) and event type code (subtype).
_DICOM_EVENTS: dict[AuditAction, tuple[tuple[str, str], tuple[str, str] | None]] = {
    AuditAction.LOGIN: (("110114", "User Authentication"), ("110122", "Login")),
    AuditAction.LOGOUT: (("110114", "User Authentication"), ("110123", "Logout")),
    AuditAction.EMERGENCY_ACCESS: (("110113", "Security Alert"), ("110127", "Emergency Override Started")),
    AuditAction.EXPORT: (("110106", "Export"), None),
    AuditAction.CONSENT_CHANGE: (("110110", "Patient Record"), None),
}
_PURPOSE_DISPLAY = {
    Purpose.TREAT: "treatment",
    Purpose.ETREAT: "Emergency Treatment",
    Purpose.PATRQT: "patient requested",
    Purpose.PWATRNY: "power of attorney",
    Purpose.HSYSADMIN: "health system administration",
}
_PERSONS = {"patient", "representative", "professional", "helpdesk", "admin"}


def to_audit_event(
    entry: AuditEntry, *, server_url: str | None = None, server_name: str = SERVER_NAME
) -> dict[str, Any]:
    """The BALP ``AuditEvent`` of ``entry`` (id = the entry's key), valid FHIR R4 JSON.

    ``server_url`` is the FHIR base of this server (the server agent's network address and
    the observer's identifier); without it the server is named by ``server_name`` only.
    """
    r = entry.record
    interaction = _rest_interaction(entry)
    action = _INTERACTION_CODE.get(interaction or "") or _ACTION_CODE[r.action]
    event: dict[str, Any] = {"resourceType": "AuditEvent", "id": str(entry.pk)}
    profile = _profile(entry, interaction) if server_url else None
    if profile:
        event["meta"] = {"profile": [BALP_PROFILE + profile]}
    event["type"], subtype = _type_and_subtype(entry, interaction)
    if subtype:
        event["subtype"] = subtype
    event["action"] = action
    assert r.recorded is not None
    event["recorded"] = r.recorded.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    event["outcome"] = str(int(r.outcome))
    if r.outcome_desc:
        event["outcomeDesc"] = r.outcome_desc
    purpose = _purpose(entry)
    if purpose:
        event["purposeOfEvent"] = [purpose]
    event["agent"] = _agents(entry, interaction, action, purpose, server_url, server_name)
    observer: dict[str, Any] = {"display": server_name}
    if server_url:
        observer["identifier"] = {"system": "urn:ietf:rfc:3986", "value": server_url}
    event["source"] = {
        "site": server_name,
        "observer": observer,
        "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
    }
    entities = _entities(entry)
    if entities:
        event["entity"] = entities
    return event


def _rest_interaction(entry: AuditEntry) -> str | None:
    """The ``restful-interaction`` code of the act, or None when it was no FHIR interaction."""
    given = entry.record.interaction
    if given:
        if given.startswith("$"):
            return "operation"
        if given in RESTFUL_CODES:
            return given
    return _REST_ACTIONS.get(entry.record.action)


def _type_and_subtype(entry: AuditEntry, interaction: str | None) -> tuple[dict[str, Any], list[Any]]:
    r = entry.record
    subtype: list[dict[str, Any]] = []
    dicom = _DICOM_EVENTS.get(r.action)
    if dicom is not None:
        (code, display), sub = dicom
        event_type = {"system": DCM, "code": code, "display": display}
        if sub is not None:
            subtype.append({"system": DCM, "code": sub[0], "display": sub[1]})
    else:
        event_type = {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "Restful Operation"}
    if interaction:
        subtype.append({"system": RESTFUL_INTERACTION, "code": interaction, "display": interaction})
    return event_type, subtype


def _profile(entry: AuditEntry, interaction: str | None) -> str | None:
    """The BALP profile the rendering fully meets (client and server addresses known), if any."""
    r = entry.record
    if r.outcome != AuditOutcome.SUCCESS or not r.source_ip or r.action in _DICOM_EVENTS:
        return None
    prefix = "Patient" if r.patient_id else ""
    if interaction and interaction.startswith("search"):
        return prefix + "Query" if r.query else None
    single = len(r.resources) == 1
    if interaction in ("read", "vread") and single:
        return prefix + "Read"
    if interaction == "create" and single:
        return prefix + "Create"
    if interaction in ("update", "patch") and single:
        return prefix + "Update"
    if interaction == "delete" and single:
        return prefix + "Delete"
    return None


def _purpose(entry: AuditEntry) -> dict[str, Any] | None:
    r = entry.record
    code = r.purpose or (Purpose.ETREAT if r.emergency else None)
    if not code:
        return None
    coding: dict[str, Any] = {"system": ACT_REASON, "code": code}
    if code in _PURPOSE_DISPLAY:
        coding["display"] = _PURPOSE_DISPLAY[Purpose(code)]
    concept: dict[str, Any] = {"coding": [coding]}
    if r.emergency and r.emergency_reason:
        concept["text"] = r.emergency_reason
    return concept


def _agents(
    entry: AuditEntry,
    interaction: str | None,
    action: str,
    purpose: dict[str, Any] | None,
    server_url: str | None,
    server_name: str,
) -> list[dict[str, Any]]:
    r = entry.record
    person = r.principal_kind in _PERSONS
    # BALP: for reads the data flows to the client (client = destination, server = source);
    # for queries and writes the request flows to the server; deletes name the custodian.
    if interaction in ("read", "vread") or r.action is AuditAction.EXPORT:
        client_type = _concept(DCM, "110152", "Destination Role ID")
        server_type = _concept(DCM, "110153", "Source Role ID")
    elif interaction == "delete":
        client_type = _concept(DCM, "110150", "Application")
        server_type = _concept(PROVENANCE_PARTICIPANT, "custodian", "Custodian")
    else:
        client_type = _concept(DCM, "110153", "Source Role ID")
        server_type = _concept(DCM, "110152", "Destination Role ID")
    agents: list[dict[str, Any]] = []
    if person:
        user_type = (
            _concept(PARTICIPATION_TYPE, "AUT", "author")
            if action in ("C", "U", "D")
            else _concept(PARTICIPATION_TYPE, "IRCP", "information recipient")
        )
        user: dict[str, Any] = {"type": user_type, "role": _roles(entry)}
        if r.principal_ref:
            user["who"] = {
                "reference": r.principal_ref,
                "display": r.principal_display or r.principal_subject,
            }
            user["altId"] = r.principal_subject
        else:
            user["who"] = {
                "identifier": {"system": ACCOUNT_SYSTEM, "value": r.principal_subject},
                "display": r.principal_display or r.principal_subject,
            }
        if r.principal_display:
            user["name"] = r.principal_display
        user["requestor"] = True
        if purpose:
            user["purposeOfUse"] = [purpose]
        agents.append(user)
    client: dict[str, Any] = {"type": client_type}
    if r.client_id:
        client["who"] = {
            "identifier": {"system": CLIENT_SYSTEM, "value": r.client_id},
            "display": r.client_id,
        }
    else:
        client["who"] = {"display": r.user_agent or "unidentified client"}
    if not person:
        client["role"] = _roles(entry)
    client["requestor"] = not person
    if r.source_ip:
        client["network"] = {"address": r.source_ip, "type": "2"}
    if not person and purpose:
        client["purposeOfUse"] = [purpose]
    agents.append(client)
    server: dict[str, Any] = {"type": server_type, "who": {"display": server_name}, "requestor": False}
    if server_url:
        server["who"]["identifier"] = {"system": "urn:ietf:rfc:3986", "value": server_url}
        server["network"] = {"address": server_url, "type": "5"}
    agents.append(server)
    if r.organization_id:
        organization: dict[str, Any] = {"reference": f"Organization/{r.organization_id}"}
        if r.organization_display:
            organization["display"] = r.organization_display
        agents.append(
            {
                "type": _concept(ROLE_CLASS, "PROV", "healthcare provider"),
                "who": organization,
                "requestor": False,
            }
        )
    return agents


def _roles(entry: AuditEntry) -> list[dict[str, Any]]:
    r = entry.record
    roles: list[dict[str, Any]] = [_concept(PRINCIPAL_KIND_SYSTEM, r.principal_kind, r.principal_kind)]
    if r.profession:
        roles.append(_concept(PROFESSION_SYSTEM, r.profession, r.profession))
    return roles


def _entities(entry: AuditEntry) -> list[dict[str, Any]]:
    r = entry.record
    entities: list[dict[str, Any]] = []
    if r.request_id:
        entities.append(
            {
                "what": {"identifier": {"value": r.request_id}},
                "type": {"system": BALP_ENTITY_TYPE, "code": "XrequestId", "display": "X-Request-Id"},
            }
        )
    if r.patient_id:
        entities.append(
            {
                "what": {"reference": f"Patient/{r.patient_id}"},
                "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
            }
        )
    for ref in r.resources:
        entities.append(
            {
                "what": {"reference": ref},
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
            }
        )
    if r.query:
        entities.append(
            {
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
                "description": r.query,
                "query": base64.b64encode(r.query.encode("utf-8")).decode("ascii"),
            }
        )
    return entities


def _concept(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}]}
