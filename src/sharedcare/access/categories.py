"""The data category of a FHIR R4 resource: which row of the access matrix protects it.

``classify`` runs on every write, so it is a pure function over the resource's JSON with plain dict
lookups (no FHIRPath, no database, no terminology server). The rules, their order and every
decision the regulation leaves open are explained in ``docs/access-matrix.md``; in short:

1. Types that are not one patient's data (directory, terminology, infrastructure, Group) give
   ``None``; that is not a grant (see ``REFERENCE_DATA``).
2. Identity (Patient, RelatedPerson, Person) and traces (AuditEvent, Provenance) are decided by
   type alone, Consent by its scope and category alone: neither authorship nor an explicit code
   can move them (a privacy choice must never become readable by professionals).
3. Data the holder (or a representative) wrote is ``personal-expression``: the holder's personal
   area is the only part of the record the regulation lets them write (art. 6(2)).
4. An explicit category in ``category`` with the system ``CATEGORY_SYSTEM`` wins (the Agence
   classifies document types, art. 7(1)); the store's write check applies to the result, so this
   never lets a writer file data outside its own write rights.
5. Otherwise per-type rules on codes (LOINC document types, observation categories, diagnostic
   service sections), then the type's default category.

A Binary uploaded ahead of its document (``documents.submission.upload``) is ``unfiled`` until a
Provide Document Bundle claims it: a platform row no column of the matrix reads or writes, so no
professional reads content nobody has yet said what it is (the holder still does: the holder reads
the whole record). The claim replaces the tag with the document's category.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any

CATEGORY_SYSTEM = "https://sharedcare.lu/fhir/CodeSystem/dsp-data-category"
"""Our code system of the matrix's data categories, for ``DocumentReference.category`` and the like."""
DOCUMENT_TYPE_SYSTEM = "https://sharedcare.lu/fhir/CodeSystem/document-type"
"""Our document types that LOINC has no code for (DOMAIN.md §1.3: the patient-provided document)."""
PERSONAL_DOCUMENT = "personal-document"

IMMUNIZATION_VERIFICATION_SYSTEM = "https://sharedcare.lu/fhir/CodeSystem/immunization-verification"
"""``meta.tag`` of a dose the holder reported (``patient-reported``) or a vaccinator validated."""

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
_OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_US_CORE_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/us-core-category"
_V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
_CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
_CONSENT_CATEGORY = "http://terminology.hl7.org/CodeSystem/consentcategorycodes"
_DICOM = "http://dicom.nema.org/resources/ontology/DCM"

Resource = Mapping[str, Any]


class DataCategory(StrEnum):
    """The categories ``classify`` returns: the 19 rows of Annex 1 and two platform rows."""

    PERSONAL_EXPRESSION = "personal-expression"
    SUMMARIES = "summaries"
    HISTORY = "history"
    ALLERGIES = "allergies"
    DEVICES = "devices"
    CARE_REPORTS = "care-reports"
    CERTIFICATES = "certificates"
    IMAGING = "imaging"
    LAB_RESULTS = "lab-results"
    DISPENSATIONS = "dispensations"
    CARE_ASSESSMENTS = "care-assessments"
    PRESCRIPTIONS = "prescriptions"
    PREVENTION = "prevention"
    SOCIO_EDUCATIONAL = "socio-educational"
    SOCIAL_ENVIRONMENT = "social-environment"
    LEGAL_PROTECTION = "legal-protection"
    SOCIAL_COVERAGE = "social-coverage"
    HEALTH_EDUCATION = "health-education"
    ACCESS_TRACES = "access-traces"
    IDENTITY = "identity"
    """Platform row: demographics, readable by every professional with access to the record."""
    HOLDER_CHOICES = "holder-choices"
    """Platform row: the holder's privacy choices, readable by no professional."""
    VACCINATION = "vaccination"
    """Platform row: the vaccination record (CVE), with its own write rights (vaccinators)."""
    VACCINATION_REPORTED = "vaccination-reported"
    """Platform row: doses the holder reported from a paper card, not yet validated."""
    UNFILED = "unfiled"
    """Platform row: content uploaded ahead of its document, that no document claims yet; read by
    no professional (its ``meta.tag``, set by the platform only)."""


C = DataCategory
_PLATFORM = frozenset({C.IDENTITY, C.HOLDER_CHOICES, C.VACCINATION, C.VACCINATION_REPORTED, C.UNFILED})
EXPLICIT_CODES: frozenset[str] = frozenset(c.value for c in DataCategory if c not in _PLATFORM)
"""Codes of ``CATEGORY_SYSTEM`` that ``classify`` honours: the regulation's 19 categories only."""

# --- every R4 resource type: its default category, or why it is not patient data -----------------------

DEFAULTS: Mapping[str, DataCategory] = {
    # identity and traces: decided by type alone
    "Patient": C.IDENTITY,
    "RelatedPerson": C.IDENTITY,
    "Person": C.IDENTITY,
    "AuditEvent": C.ACCESS_TRACES,
    "Provenance": C.ACCESS_TRACES,
    "Consent": C.HOLDER_CHOICES,
    # clinical
    "AllergyIntolerance": C.ALLERGIES,
    "Condition": C.HISTORY,
    "FamilyMemberHistory": C.HISTORY,
    "BodyStructure": C.HISTORY,
    "Flag": C.HISTORY,
    "Device": C.DEVICES,
    "DeviceUseStatement": C.DEVICES,
    "ImagingStudy": C.IMAGING,
    "Specimen": C.LAB_RESULTS,
    "MolecularSequence": C.LAB_RESULTS,
    "MedicationDispense": C.DISPENSATIONS,
    "SupplyDelivery": C.DISPENSATIONS,
    "MedicationRequest": C.PRESCRIPTIONS,
    "MedicationStatement": C.PRESCRIPTIONS,
    "ServiceRequest": C.PRESCRIPTIONS,
    "DeviceRequest": C.PRESCRIPTIONS,
    "NutritionOrder": C.PRESCRIPTIONS,
    "VisionPrescription": C.PRESCRIPTIONS,
    "SupplyRequest": C.PRESCRIPTIONS,
    "RequestGroup": C.PRESCRIPTIONS,
    "CarePlan": C.PRESCRIPTIONS,
    "Goal": C.PRESCRIPTIONS,
    "DetectedIssue": C.PRESCRIPTIONS,
    "ImmunizationRecommendation": C.VACCINATION,
    "RiskAssessment": C.PREVENTION,
    "QuestionnaireResponse": C.CARE_ASSESSMENTS,
    "Immunization": C.VACCINATION,
    "ImmunizationEvaluation": C.VACCINATION,
    "MedicationAdministration": C.CARE_REPORTS,
    "Procedure": C.CARE_REPORTS,
    "Observation": C.CARE_REPORTS,
    "DiagnosticReport": C.CARE_REPORTS,
    "DocumentReference": C.CARE_REPORTS,
    "DocumentManifest": C.CARE_REPORTS,
    "Composition": C.CARE_REPORTS,
    "List": C.CARE_REPORTS,
    "Media": C.CARE_REPORTS,
    "Encounter": C.CARE_REPORTS,
    "EpisodeOfCare": C.CARE_REPORTS,
    "ClinicalImpression": C.CARE_REPORTS,
    "AdverseEvent": C.CARE_REPORTS,
    "Communication": C.CARE_REPORTS,
    "CommunicationRequest": C.CARE_REPORTS,
    "Appointment": C.CARE_REPORTS,
    "AppointmentResponse": C.CARE_REPORTS,
    "Schedule": C.CARE_REPORTS,
    "CareTeam": C.CARE_REPORTS,
    "Task": C.CARE_REPORTS,
    "ResearchSubject": C.CARE_REPORTS,
    "MeasureReport": C.CARE_REPORTS,
    "Basic": C.CARE_REPORTS,
    # Document content: in the compartment of the record holding it (the platform's ``Binary.meta`` link,
    # docs/documents.md) with the category of its DocumentReference in ``meta.tag``; never None ("directory").
    "Binary": C.CARE_REPORTS,
    # social coverage and billing
    "Coverage": C.SOCIAL_COVERAGE,
    "CoverageEligibilityRequest": C.SOCIAL_COVERAGE,
    "CoverageEligibilityResponse": C.SOCIAL_COVERAGE,
    "EnrollmentRequest": C.SOCIAL_COVERAGE,
    "Claim": C.SOCIAL_COVERAGE,
    "ClaimResponse": C.SOCIAL_COVERAGE,
    "ExplanationOfBenefit": C.SOCIAL_COVERAGE,
    "Account": C.SOCIAL_COVERAGE,
    "ChargeItem": C.SOCIAL_COVERAGE,
    "Invoice": C.SOCIAL_COVERAGE,
}
"""Default category of every type that holds patient data (before the content rules refine it)."""

_DIRECTORY = "directory: who and where care is given, not data about a patient"
_KNOWLEDGE = "terminology or knowledge: the same for every patient"
_CONFORMANCE = "conformance or infrastructure: describes the server and its interfaces"
_TRANSPORT = "transport: never stored as record content"
_UNUSED = "administrative, outside the record: no patient link in the R4 compartment and no use here"

NOT_PATIENT_DATA: Mapping[str, str] = {
    **dict.fromkeys(
        [
            "Practitioner",
            "PractitionerRole",
            "Organization",
            "OrganizationAffiliation",
            "Location",
            "HealthcareService",
            "Endpoint",
            "InsurancePlan",
            "Slot",
        ],
        _DIRECTORY,
    ),
    **dict.fromkeys(
        [
            "CodeSystem",
            "ValueSet",
            "ConceptMap",
            "NamingSystem",
            "Medication",
            "MedicationKnowledge",
            "MedicinalProduct",
            "MedicinalProductAuthorization",
            "MedicinalProductContraindication",
            "MedicinalProductIndication",
            "MedicinalProductIngredient",
            "MedicinalProductInteraction",
            "MedicinalProductManufactured",
            "MedicinalProductPackaged",
            "MedicinalProductPharmaceutical",
            "MedicinalProductUndesirableEffect",
            "Substance",
            "SubstanceNucleicAcid",
            "SubstancePolymer",
            "SubstanceProtein",
            "SubstanceReferenceInformation",
            "SubstanceSourceMaterial",
            "SubstanceSpecification",
            "BiologicallyDerivedProduct",
            "DeviceDefinition",
            "DeviceMetric",
            "ObservationDefinition",
            "SpecimenDefinition",
            "ActivityDefinition",
            "PlanDefinition",
            "Questionnaire",
            "Library",
            "Measure",
            "EventDefinition",
            "Evidence",
            "EvidenceVariable",
            "EffectEvidenceSynthesis",
            "RiskEvidenceSynthesis",
            "ResearchDefinition",
            "ResearchElementDefinition",
            "ResearchStudy",
            "ChargeItemDefinition",
            "CatalogEntry",
        ],
        _KNOWLEDGE,
    ),
    **dict.fromkeys(
        [
            "CapabilityStatement",
            "TerminologyCapabilities",
            "StructureDefinition",
            "StructureMap",
            "ImplementationGuide",
            "SearchParameter",
            "OperationDefinition",
            "CompartmentDefinition",
            "GraphDefinition",
            "MessageDefinition",
            "ExampleScenario",
            "TestScript",
            "TestReport",
            "Subscription",
        ],
        _CONFORMANCE,
    ),
    **dict.fromkeys(["Bundle", "Parameters", "OperationOutcome", "MessageHeader"], _TRANSPORT),
    **dict.fromkeys(
        [
            "Contract",
            "EnrollmentResponse",
            "PaymentNotice",
            "PaymentReconciliation",
            "VerificationResult",
            "GuidanceResponse",
            "Linkage",
        ],
        _UNUSED,
    ),
    "Group": "a population (cohort, family): many patients' membership, not one patient's record data",
}
"""Every R4 type for which ``classify`` returns None, with the reason."""

REFERENCE_DATA: frozenset[str] = frozenset(
    t for t, why in NOT_PATIENT_DATA.items() if why in (_DIRECTORY, _KNOWLEDGE, _CONFORMANCE)
)
"""The None types every authenticated user may read (directory, terminology, conformance). The others
(Group, transport, unused administrative types) are for system clients only: None alone is not a grant."""

# --- code tables ---------------------------------------------------------------------------------------

DOCUMENT_TYPES: Mapping[str, DataCategory] = {
    # Codes of DOMAIN.md §1.3 (the national types are not published: placeholders until they are) and the
    # LOINC document and class codes we expect from laboratories, hospitals and the IPS.
    "60591-5": C.SUMMARIES,  # Patient summary Document
    "60592-3": C.SUMMARIES,  # Patient summary.unexpected contact Document
    "48764-5": C.SUMMARIES,  # Summary purpose CCD Document
    "11502-2": C.LAB_RESULTS,  # Laboratory report
    "26436-6": C.LAB_RESULTS,  # Laboratory studies (set) (XDS class code)
    "11526-1": C.LAB_RESULTS,  # Pathology study
    "27898-6": C.LAB_RESULTS,  # Pathology studies (set)
    "18743-5": C.LAB_RESULTS,  # Autopsy report
    "51969-4": C.LAB_RESULTS,  # Genetic analysis summary report
    "51965-2": C.LAB_RESULTS,  # Pharmacogenetic analysis report
    "18748-4": C.IMAGING,  # Diagnostic imaging study
    "18726-0": C.IMAGING,  # Radiology studies (set)
    "68604-8": C.IMAGING,  # Radiology Diagnostic study note
    "47048-4": C.IMAGING,  # Diagnostic interventional study report Interventional radiology
    "38269-7": C.IMAGING,  # DXA study report
    "59281-6": C.IMAGING,  # Transthoracic cardiac echo study report
    "17787-3": C.IMAGING,  # Thyroid scan study report
    "57833-6": C.PRESCRIPTIONS,  # Prescription for medication Document
    "57828-6": C.PRESCRIPTIONS,  # Prescription list Document
    "57829-4": C.PRESCRIPTIONS,  # Prescription for medical equipment or product Document
    "57831-0": C.PRESCRIPTIONS,  # Prescription for rehabilitation Document
    "57832-8": C.PRESCRIPTIONS,  # Prescription for diagnostic or specialist care Document
    "57834-4": C.PRESCRIPTIONS,  # Patient transportation request Document
    "57830-2": C.PRESCRIPTIONS,  # Admission request Document
    "57133-1": C.PRESCRIPTIONS,  # Referral note
    "10160-0": C.PRESCRIPTIONS,  # History of medication use
    "56445-0": C.PRESCRIPTIONS,  # Medication summary Document
    "60593-1": C.DISPENSATIONS,  # Medication dispensed.extended Document
    "60590-7": C.DISPENSATIONS,  # Medication dispensed.brief Document
    "11369-6": C.CARE_REPORTS,  # History of immunization (vaccination: "Comptes rendus")
    "18842-5": C.CARE_REPORTS,  # Discharge summary (a report after an episode, not a "synthèse")
    "34105-7": C.CARE_REPORTS,  # Hospital discharge summary
    "11490-0": C.CARE_REPORTS,  # Physician discharge summary
    "28574-2": C.CARE_REPORTS,  # Discharge note
    "59258-4": C.CARE_REPORTS,  # Emergency department discharge summary
    "34133-9": C.CARE_REPORTS,  # Summary of episode note
    "18761-7": C.CARE_REPORTS,  # Transfer summary
    "11488-4": C.CARE_REPORTS,  # Consult note
    "34117-2": C.CARE_REPORTS,  # History and physical note
    "51847-2": C.CARE_REPORTS,  # Assessment + Plan note
    "11506-3": C.CARE_REPORTS,  # Progress note
    "28570-0": C.CARE_REPORTS,  # Procedure note
    "11504-8": C.CARE_REPORTS,  # Operation note
    "34111-5": C.CARE_REPORTS,  # Emergency department note
    "34746-8": C.CARE_REPORTS,  # Nurse note
    "11524-6": C.CARE_REPORTS,  # EKG study
    "18745-0": C.CARE_REPORTS,  # Cardiac catheterization study
    "58477-1": C.CARE_REPORTS,  # Pulmonary function report
    "64297-5": C.CERTIFICATES,  # Death certificate
    "69409-1": C.CERTIFICATES,  # U.S. standard certificate of death (Synthea)
    "71230-7": C.CERTIFICATES,  # Birth certificate Document
    "72267-8": C.CERTIFICATES,  # Evaluation of mental and physical incapacity certificate Document
    "59284-0": C.CERTIFICATES,  # Patient consent (a signed declaration)
    "64292-6": C.CERTIFICATES,  # Release of information consent
    "64293-4": C.CERTIFICATES,  # Procedure consent
    "61358-8": C.CERTIFICATES,  # Surgical operation consent
    "61359-6": C.CERTIFICATES,  # Anesthesia consent
    "64300-7": C.PERSONAL_EXPRESSION,  # Organ donation consent
    "42348-3": C.PERSONAL_EXPRESSION,  # Advance directives
    "11450-4": C.HISTORY,  # Problem list
    "47519-4": C.HISTORY,  # History of procedures Document
    "48765-2": C.ALLERGIES,  # Allergies and adverse reactions Document
    "47420-5": C.CARE_ASSESSMENTS,  # Functional status assessment note
    "64295-9": C.CARE_ASSESSMENTS,  # Nurse plan of care note
    "74188-4": C.CARE_ASSESSMENTS,  # InterRAI Acute Care (AC) Hospital Document
    "74189-2": C.CARE_ASSESSMENTS,  # InterRAI Palliative Care (PC) Document
    "74194-2": C.CARE_ASSESSMENTS,  # InterRAI Community Health Assessment (CHA) Document
    "74195-9": C.CARE_ASSESSMENTS,  # InterRAI Long Term Care Facility (LTCF) Document
    "74196-7": C.CARE_ASSESSMENTS,  # InterRAI Home Care (HC) Document
    "57129-9": C.PREVENTION,  # Full newborn screening summary report
    "34895-3": C.HEALTH_EDUCATION,  # Education note
    "34107-3": C.HEALTH_EDUCATION,  # Patient's home Education note
    "34897-9": C.HEALTH_EDUCATION,  # Diabetology Education note
    "67855-7": C.HEALTH_EDUCATION,  # Outpatient Education note
    "64290-0": C.SOCIAL_COVERAGE,  # Health insurance card
    "64291-8": C.SOCIAL_COVERAGE,  # Health insurance-related form
    "48768-6": C.SOCIAL_COVERAGE,  # Payment sources Document
    "64299-1": C.LEGAL_PROTECTION,  # Legal document
}
"""LOINC document type (or XDS class) code → category: ``DocumentReference.type``/``category``,
``Composition.type``, ``DiagnosticReport.code``, ``List.code``. Unlisted types default to care-reports."""

_LAB_SECTIONS = ["BG", "BLB", "CG", "CH", "CP", "GE", "HM", "IMM", "LAB", "MB", "MCB", "MYC", "OSL"]
_LAB_SECTIONS += ["SP", "SR", "TX", "URN", "VR"]
_IMAGING_SECTIONS = ["CT", "CUS", "NMR", "NMS", "OUS", "RAD", "RUS", "RX", "VUS", "XRC"]
_SERVICE_SECTIONS: dict[tuple[str, str], DataCategory] = {
    **{(_V2_0074, code): C.LAB_RESULTS for code in _LAB_SECTIONS},
    **{(_V2_0074, code): C.IMAGING for code in _IMAGING_SECTIONS},
    (_V2_0074, "NRS"): C.CARE_ASSESSMENTS,  # nursing service measures
}
_REPORT_CATEGORIES: Mapping[tuple[str, str], DataCategory] = {
    **_SERVICE_SECTIONS,
    (LOINC, "LP29684-5"): C.IMAGING,  # Radiology (US Core note categories)
    (LOINC, "LP7839-6"): C.LAB_RESULTS,  # Pathology
    (LOINC, "LP29708-2"): C.CARE_REPORTS,  # Cardiology
}
_OBSERVATION_CATEGORIES: Mapping[tuple[str, str], DataCategory] = {
    (_OBS_CATEGORY, "laboratory"): C.LAB_RESULTS,
    (_OBS_CATEGORY, "imaging"): C.IMAGING,
    (_OBS_CATEGORY, "vital-signs"): C.CARE_REPORTS,
    (_OBS_CATEGORY, "exam"): C.CARE_REPORTS,
    (_OBS_CATEGORY, "procedure"): C.CARE_REPORTS,
    (_OBS_CATEGORY, "therapy"): C.CARE_REPORTS,
    (_OBS_CATEGORY, "survey"): C.CARE_ASSESSMENTS,
    (_OBS_CATEGORY, "activity"): C.CARE_ASSESSMENTS,
    (_OBS_CATEGORY, "social-history"): C.SOCIAL_ENVIRONMENT,
    (_US_CORE_CATEGORY, "sdoh"): C.SOCIAL_ENVIRONMENT,
    (_US_CORE_CATEGORY, "functional-status"): C.CARE_ASSESSMENTS,
    (_US_CORE_CATEGORY, "disability-status"): C.CARE_ASSESSMENTS,
    (_US_CORE_CATEGORY, "cognitive-status"): C.CARE_ASSESSMENTS,
    **_SERVICE_SECTIONS,
}
_OBSERVATION_CODES: Mapping[tuple[str, str], DataCategory] = {
    # Risk factors and pregnancy are health history (IPS sections), not the social environment that nurses and
    # social workers write; HIV status must not reach social workers through "social-history".
    (LOINC, "72166-2"): C.HISTORY,  # Tobacco smoking status
    (LOINC, "11367-0"): C.HISTORY,  # History of tobacco use
    (LOINC, "74013-4"): C.HISTORY,  # Alcoholic drinks per day
    (LOINC, "11331-6"): C.HISTORY,  # History of alcohol use
    (LOINC, "82810-3"): C.HISTORY,  # Pregnancy status
    (LOINC, "11449-6"): C.HISTORY,  # Pregnancy status (reported)
    (LOINC, "55277-8"): C.HISTORY,  # HIV status
    (LOINC, "69453-9"): C.CERTIFICATES,  # Cause of death (death certificate)
}
_PROCEDURE_CATEGORIES: Mapping[tuple[str, str], DataCategory] = {
    (SNOMED, "409073007"): C.HEALTH_EDUCATION,  # Education
    (SNOMED, "410606002"): C.SOCIAL_ENVIRONMENT,  # Social service procedure
}
_END_OF_LIFE = frozenset(
    {(_CONSENT_SCOPE, "adr")}
    | {(_CONSENT_CATEGORY, code) for code in ("acd", "dnr", "hcd", "polst")}
    | {(LOINC, "64300-7"), (LOINC, "42348-3")}
)
LOCAL_DOCUMENT_TYPES: Mapping[str, DataCategory] = {
    PERSONAL_DOCUMENT: C.PERSONAL_EXPRESSION,  # a document the holder adds to their personal area
}
"""``DOCUMENT_TYPE_SYSTEM`` code → category."""
_DOCUMENT_KEYS: Mapping[tuple[str, str], DataCategory] = {
    **{(LOINC, code): cat for code, cat in DOCUMENT_TYPES.items()},
    **{(DOCUMENT_TYPE_SYSTEM, code): cat for code, cat in LOCAL_DOCUMENT_TYPES.items()},
}

# --- helpers -------------------------------------------------------------------------------------------


def _codings(concepts: Any) -> list[Mapping[str, Any]]:
    """The codings of a CodeableConcept or a list of them (malformed parts ignored)."""
    if isinstance(concepts, Mapping):
        concepts = (concepts,)
    elif not isinstance(concepts, list):
        return []
    out: list[Mapping[str, Any]] = []
    for concept in concepts:
        if isinstance(concept, Mapping):
            codings = concept.get("coding")
            if isinstance(codings, list):
                out.extend(c for c in codings if isinstance(c, Mapping))
    return out


def _lookup(concepts: Any, table: Mapping[tuple[Any, Any], DataCategory]) -> DataCategory | None:
    """The category of the first coding found in ``table`` (codings in resource order)."""
    for coding in _codings(concepts):
        found = table.get((coding.get("system"), coding.get("code")))
        if found is not None:
            return found
    return None


def _explicit(concepts: Any) -> DataCategory | None:
    for coding in _codings(concepts):
        if coding.get("system") == CATEGORY_SYSTEM and coding.get("code") in EXPLICIT_CODES:
            return DataCategory(coding["code"])
    return None


_HOLDER_SIDE = frozenset({"Patient", "RelatedPerson"})


def _reference_type(ref: Any) -> str | None:
    """Type of a Reference: its ``type``, else parsed from ``Type/id``, an absolute or a versioned URL."""
    if not isinstance(ref, Mapping):
        return None
    if isinstance(ref.get("type"), str):
        return str(ref["type"])
    value = ref.get("reference")
    if not isinstance(value, str) or value.startswith(("#", "urn:")):
        return None
    if "?" in value:  # conditional reference: Type?search
        return value.split("?", 1)[0] or None
    parts = value.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        return parts[-4]
    return parts[-2] if len(parts) >= 2 else None


def _by_holder(resource: Resource, fields: tuple[str, ...]) -> bool:
    """True when the resource names authors and all are the holder or people acting for them."""
    refs: list[Any] = []
    for name in fields:
        value = resource.get(name)
        if isinstance(value, list):
            refs.extend(value)
        elif value is not None:
            refs.append(value)
    return bool(refs) and all(_reference_type(ref) in _HOLDER_SIDE for ref in refs)


_AUTHOR_FIELDS: Mapping[str, tuple[str, ...]] = {
    # The element saying who wrote the data, not who it is about, who performed it or who informed it: a
    # professional's record of what the patient reported stays the professional's. Observation (performer),
    # MedicationStatement (informationSource) and Media (operator) have no such element in R4: IPS documents
    # from professionals routinely set ``performer: Patient`` on self-reported smoking status.
    "AdverseEvent": ("recorder",),
    "AllergyIntolerance": ("recorder",),
    "Basic": ("author",),
    "CarePlan": ("author",),
    "Communication": ("sender",),
    "Composition": ("author",),
    "Condition": ("recorder",),
    "DocumentManifest": ("author",),
    "DocumentReference": ("author",),
    "Flag": ("author",),
    "List": ("source",),
    "Procedure": ("recorder",),
    "QuestionnaireResponse": ("author",),
}

# --- per-type rules ------------------------------------------------------------------------------------


def _document(field: str) -> Callable[[Resource], DataCategory | None]:
    def rule(resource: Resource) -> DataCategory | None:
        return _lookup(resource.get(field), _DOCUMENT_KEYS) or _lookup(
            resource.get("category"), _DOCUMENT_KEYS
        )

    return rule


def _specimen(resource: Resource) -> DataCategory | None:
    """Uncategorised results taken on a specimen are laboratory results."""
    return C.LAB_RESULTS if resource.get("specimen") else None


def _diagnostic_report(resource: Resource) -> DataCategory | None:
    return (
        _lookup(resource.get("code"), _DOCUMENT_KEYS)
        or _lookup(resource.get("category"), _REPORT_CATEGORIES)
        or _specimen(resource)
    )


def _observation(resource: Resource) -> DataCategory | None:
    return (
        _lookup(resource.get("code"), _OBSERVATION_CODES)
        or _lookup(resource.get("category"), _OBSERVATION_CATEGORIES)
        or _specimen(resource)
    )


def _care_category(resource: Resource) -> DataCategory | None:
    return _lookup(resource.get("category"), _PROCEDURE_CATEGORIES)


def _tagged(resource: Resource) -> DataCategory | None:
    """The category the platform copies into ``meta.tag`` when it stores a document's content
    (Binary) or a submission's lists (``documents``): that of the documents they belong to. The
    write check applies to it as to any."""
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, Mapping) else None
    for tag in tags if isinstance(tags, list) else ():
        if (
            isinstance(tag, Mapping)
            and tag.get("system") == CATEGORY_SYSTEM
            and tag.get("code") in EXPLICIT_CODES
        ):
            return DataCategory(tag["code"])
    return None


def _binary(resource: Resource) -> DataCategory | None:
    """An upload no document claims yet is ``unfiled`` (``documents.submission``); otherwise the
    category of its document, copied into ``meta.tag``."""
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, Mapping) else None
    for tag in tags if isinstance(tags, list) else ():
        if (
            isinstance(tag, Mapping)
            and tag.get("system") == CATEGORY_SYSTEM
            and tag.get("code") == C.UNFILED.value
        ):
            return C.UNFILED
    return _tagged(resource)


def _list(resource: Resource) -> DataCategory | None:
    return _tagged(resource) or _document("code")(resource)


def _media(resource: Resource) -> DataCategory | None:
    modality = _codings(resource.get("modality"))
    return C.IMAGING if any(c.get("system") == _DICOM for c in modality) else None


def _immunization(resource: Resource) -> DataCategory | None:
    """A dose the holder reported is apart until a vaccinator validates it: holders write only
    those (the server sets the tag, ``vaccination.record``), and never a validated dose."""
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, Mapping) else None
    for tag in tags if isinstance(tags, list) else ():
        if (
            isinstance(tag, Mapping)
            and tag.get("system") == IMMUNIZATION_VERIFICATION_SYSTEM
            and tag.get("code") == "patient-reported"
        ):
            return C.VACCINATION_REPORTED
    return None


_RULES: Mapping[str, Callable[[Resource], DataCategory | None]] = {
    "Immunization": _immunization,
    "DocumentReference": _document("type"),
    "Composition": _document("type"),
    "DocumentManifest": _document("type"),
    "List": _list,
    "DiagnosticReport": _diagnostic_report,
    "Observation": _observation,
    "Procedure": _care_category,
    "CarePlan": _care_category,
    "Media": _media,
    "Binary": _binary,
}
"""Content rules; a rule's None keeps the type's default."""

_END_OF_LIFE_KEYS = dict.fromkeys(_END_OF_LIFE, C.PERSONAL_EXPRESSION)
_TREATMENT_SCOPE = {(_CONSENT_SCOPE, "treatment"): C.CERTIFICATES}


def _consent(resource: Resource) -> DataCategory:
    """End-of-life wishes are the holder's personal expression; treatment consents are declarations;
    everything else (privacy, research, unknown) stays a holder's choice that no professional reads."""
    scope, category = resource.get("scope"), resource.get("category")
    if _lookup(scope, _END_OF_LIFE_KEYS) or _lookup(category, _END_OF_LIFE_KEYS):
        return C.PERSONAL_EXPRESSION
    return _lookup(scope, _TREATMENT_SCOPE) or C.HOLDER_CHOICES


_BY_TYPE_ONLY = frozenset({"Patient", "RelatedPerson", "Person", "AuditEvent", "Provenance"})
_PATIENT_ELEMENT = {"Device": "patient"}
"""Types outside the R4 patient compartment that are patient data only when this element is set."""


def classify(resource: Resource) -> str | None:
    """The data category (a ``DataCategory``) of a FHIR R4 resource, or None when it is not patient data.

    None means not one patient's data: ``NOT_PATIENT_DATA`` gives the reason per type (only the
    ``REFERENCE_DATA`` types are for everyone), an unknown type, or a Device not assigned to a patient.
    """
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return None
    default = DEFAULTS.get(rtype)
    if default is None or rtype in _BY_TYPE_ONLY:
        return default
    if rtype == "Consent":
        return _consent(resource)
    element = _PATIENT_ELEMENT.get(rtype)
    if element is not None and not resource.get(element):
        return None
    fields = _AUTHOR_FIELDS.get(rtype)
    if fields is not None and _by_holder(resource, fields):
        return C.PERSONAL_EXPRESSION
    explicit = _explicit(resource.get("category"))
    if explicit is not None:
        return explicit
    rule = _RULES.get(rtype)
    return (rule(resource) if rule is not None else None) or default


def category_by_type(rtype: str) -> str | None:
    """The category every resource of ``rtype`` has, where the type alone decides it (rule 2:
    identity and traces); None where content decides. The access decision relies on it to
    decide, when its statement is built, the category checks of rows of such a type."""
    return DEFAULTS[rtype].value if rtype in _BY_TYPE_ONLY else None


def category_for_document_type(code: str, system: str = LOINC) -> str | None:
    """The category of a document type (LOINC by default), or None when the type is not listed.

    For MHD submissions (issue 4): unlike ``classify``, an unknown type is reported, not defaulted.
    """
    return _DOCUMENT_KEYS.get((system, code))


VACCINATION_TYPES = frozenset({"Immunization", "ImmunizationEvaluation", "ImmunizationRecommendation"})
"""Types of the vaccination record: the CVE has its own authorisation matrix (issue 5): their categories
``vaccination`` and ``vaccination-reported`` are platform rows, written only by vaccinating professions."""
VACCINATION_CATEGORIES = frozenset({C.VACCINATION, C.VACCINATION_REPORTED})
