"""Words the pages show for codes: resource types, care contexts, acts, purposes, representatives.

Each label is a catalogue msgid, translated where it is shown; an unknown code is shown as is.
"""

from __future__ import annotations

from sharedcare.access.matrix import UnknownCode, access_matrix
from sharedcare.portal.i18n import N_, Translator

RESOURCE_TYPES = {
    "Patient": N_("Identity (name, date of birth)"),
    "Consent": N_("Access choice"),
    "AllergyIntolerance": N_("Allergy or intolerance"),
    "CarePlan": N_("Care plan"),
    "Composition": N_("Clinical document"),
    "Condition": N_("Health problem"),
    "DiagnosticReport": N_("Report"),
    "DocumentReference": N_("Document"),
    "Encounter": N_("Visit or stay"),
    "FamilyMemberHistory": N_("Family history"),
    "Immunization": N_("Vaccination"),
    "ImagingStudy": N_("Imaging"),
    "MedicationDispense": N_("Dispensed medicine"),
    "MedicationRequest": N_("Prescription"),
    "MedicationStatement": N_("Medicine taken"),
    "Observation": N_("Result or measurement"),
    "Procedure": N_("Procedure"),
    "ServiceRequest": N_("Request for care"),
}
CARE_CONTEXTS = {
    "solo": N_("Consultation with a connection code"),
    "facility": N_("Stay at a care facility"),
    "emergency": N_("Emergency department"),
    "permanent": N_("Permanent access granted by the holder"),
    "referent": N_("Referring physician"),
    "override": N_("Emergency override"),
}
DELEGATION_KINDS = {
    "parent": N_("Parent of a minor"),
    "guardian": N_("Legal guardian"),
    "trusted": N_("Trusted person"),
    "assistant": N_("Assistant (same rights as you)"),
}
PURPOSES = {
    "TREAT": N_("Care"),
    "ETREAT": N_("Emergency care"),
    "PATRQT": N_("Your own request"),
    "PWATRNY": N_("Representative acting for you"),
    "HSYSADMIN": N_("Agency support"),
}
ACTIONS = {
    "read": N_("Read"),
    "vread": N_("Read an earlier version"),
    "history": N_("Read the history"),
    "search": N_("Searched the record"),
    "operation": N_("Opened the record summary"),
    "export": N_("Exported"),
    "create": N_("Added"),
    "update": N_("Changed"),
    "patch": N_("Changed"),
    "delete": N_("Deleted"),
    "login": N_("Signed in"),
    "logout": N_("Signed out"),
    "consent-change": N_("Changed access rights"),
    "emergency-access": N_("Emergency override"),
}
CONSENT_CHANGES = {
    "grant-permanent": N_("Permanent access granted"),
    "revoke-permanent": N_("Permanent access revoked"),
    "block": N_("Professional blocked"),
    "unblock": N_("Professional unblocked"),
    "hide": N_("Item hidden from a professional"),
    "unhide": N_("Item shown again to a professional"),
    "appoint": N_("Representative appointed"),
    "remove": N_("Representative removed"),
    "close-record": N_("Record closed"),
    "reopen-record": N_("Record reopened"),
    "open-care-relationship": N_("Access opened with your connection code"),
    "register": N_("Registered by a care facility"),
    "end-care": N_("End of care declared"),
    "issue-connection-code": N_("Connection code issued"),
    "minor-autonomy": N_("Admitted to exercise your rights alone"),
    "withdraw-minor-autonomy": N_("No longer admitted to exercise your rights alone"),
    "object-to-parents": N_("Objection to the parents' access"),
    "allow-parents": N_("Parents' access allowed again"),
}
KINDS = {
    "patient": N_("Patient"),
    "representative": N_("Representative"),
    "professional": N_("Health professional"),
    "system": N_("Care software"),
    "helpdesk": N_("Helpdesk"),
    "admin": N_("Agency administrator"),
}


def label(t: Translator, table: dict[str, str], code: str | None) -> str:
    if not code:
        return ""
    message = table.get(code)
    return t.gettext(message) if message else code


def profession(t: Translator, code: str | None) -> str:
    """A profession's name from the access matrix (its column or a directory profession code)."""
    if not code:
        return ""
    matrix = access_matrix()
    try:
        return matrix.column(code).label(t.lang)
    except UnknownCode:
        found = next((p for p in matrix.professions if code in (p.code, p.directory_code)), None)
        return found.label(t.lang) if found else code


def consent_change(t: Translator, interaction: str | None) -> str:
    """The holder-readable name of a recorded access-rights change (``block Practitioner/…``)."""
    if not interaction:
        return ""
    return label(t, CONSENT_CHANGES, interaction.split(" ", 1)[0])
