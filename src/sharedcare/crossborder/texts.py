"""The fixed words of a generated patient summary, in the platform's three languages.

The narrative of a summary is part of the document (it is what a reader without FHIR software
sees, and what a professional signs), so it is written in the language asked for when the
document is made, not translated by the portal afterwards. The clinical terms themselves come
from the record's codings as they are.
"""

from __future__ import annotations

LANGUAGES = ("en", "fr", "de")
DEFAULT_LANGUAGE = "en"

_TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "document": "International Patient Summary",
        "no-information": "No information available.",
        "item": "Item",
        "details": "Details",
        "status": "Status",
        "date": "Date",
        "patient": "Patient",
        "born": "Born",
        "gender": "Gender",
        "identifier": "Identifier",
        "generated": "Generated",
        "author": "Author",
        "signed": "Signed by",
        "custodian": "Custodian",
        "entries": "entries",
        "problems": "Problem list",
        "allergies": "Allergies and intolerances",
        "medications": "Medication summary",
        "immunizations": "Immunizations",
        "results": "Results",
        "procedures": "History of procedures",
        "devices": "Medical devices",
        "vital-signs": "Vital signs",
        "past-illness": "History of past illness",
        "functional-status": "Functional status",
        "plan-of-care": "Plan of care",
        "social-history": "Social history",
        "pregnancy": "History of pregnancies",
        "advance-directives": "Advance directives",
    },
    "fr": {
        "document": "Résumé patient international",
        "no-information": "Aucune information disponible.",
        "item": "Élément",
        "details": "Détails",
        "status": "Statut",
        "date": "Date",
        "patient": "Patient",
        "born": "Né(e) le",
        "gender": "Sexe",
        "identifier": "Identifiant",
        "generated": "Établi le",
        "author": "Auteur",
        "signed": "Signé par",
        "custodian": "Dépositaire",
        "entries": "éléments",
        "problems": "Liste des problèmes",
        "allergies": "Allergies et intolérances",
        "medications": "Traitements médicamenteux",
        "immunizations": "Vaccinations",
        "results": "Résultats d'examens",
        "procedures": "Antécédents d'interventions",
        "devices": "Dispositifs médicaux",
        "vital-signs": "Signes vitaux",
        "past-illness": "Antécédents médicaux",
        "functional-status": "État fonctionnel",
        "plan-of-care": "Plan de soins",
        "social-history": "Mode de vie",
        "pregnancy": "Grossesses",
        "advance-directives": "Directives anticipées",
    },
    "de": {
        "document": "Internationale Patientenkurzakte",
        "no-information": "Keine Informationen verfügbar.",
        "item": "Eintrag",
        "details": "Details",
        "status": "Status",
        "date": "Datum",
        "patient": "Patient",
        "born": "Geboren am",
        "gender": "Geschlecht",
        "identifier": "Kennung",
        "generated": "Erstellt am",
        "author": "Autor",
        "signed": "Unterzeichnet von",
        "custodian": "Verwahrer",
        "entries": "Einträge",
        "problems": "Problemliste",
        "allergies": "Allergien und Unverträglichkeiten",
        "medications": "Medikationsübersicht",
        "immunizations": "Impfungen",
        "results": "Befunde",
        "procedures": "Frühere Eingriffe",
        "devices": "Medizinprodukte",
        "vital-signs": "Vitalparameter",
        "past-illness": "Frühere Erkrankungen",
        "functional-status": "Funktioneller Status",
        "plan-of-care": "Behandlungsplan",
        "social-history": "Sozialanamnese",
        "pregnancy": "Schwangerschaften",
        "advance-directives": "Patientenverfügungen",
    },
}


def text(language: str, key: str) -> str:
    """The word ``key`` in ``language`` (English when the language is not one of ours)."""
    return _TEXTS.get(language, _TEXTS[DEFAULT_LANGUAGE])[key]


def pick_language(requested: str | None, accept_language: str | None = None) -> str:
    """The summary's language: ``requested`` (``fr``, ``de-LU``…) if ours, else the first of
    ``Accept-Language`` that is ours, else English."""
    candidates = [requested] if requested else []
    for part in (accept_language or "").split(","):
        candidates.append(part.split(";")[0])
    for candidate in candidates:
        base = (candidate or "").strip().lower()[:2]
        if base in LANGUAGES:
            return base
    return DEFAULT_LANGUAGE
