"""The e-mail that tells a person a message waits in the portal, in French, German and English.

E-mail is not a safe channel for health data, so the text only says that there is a message and
what kind of event it is about: never who (the professional, the holder), why (an emergency
reason) or what (a document). The full message is read in the portal after signing in.

The texts live here, not in the portal's catalogues: they are the notify module's own, and the
portal's catalogue tests extract messages from the portal's sources only.
"""

from __future__ import annotations

from sharedcare.notify import outbox

LANGUAGES = ("fr", "de", "en")
DEFAULT_LANGUAGE = "fr"

SUBJECT = {
    "fr": "SharedCare : vous avez un nouveau message",
    "de": "SharedCare: Sie haben eine neue Nachricht",
    "en": "SharedCare: you have a new message",
}

KIND = {
    outbox.FIRST_PROFESSIONAL_ACCESS: {
        "fr": "première utilisation du dossier par un professionnel de santé",
        "de": "erste Nutzung der Akte durch eine Gesundheitsfachperson",
        "en": "first use of the record by a health professional",
    },
    outbox.LICENCE_WITHDRAWN: {
        "fr": "retrait des droits d'accès d'un professionnel de santé",
        "de": "Entzug der Zugriffsrechte einer Gesundheitsfachperson",
        "en": "withdrawal of a health professional's access rights",
    },
    outbox.FACILITY_WITHDRAWN: {  # never the facility's name: e-mail is not safe
        "fr": "retrait de l'autorisation d'un établissement de soins",
        "de": "Entzug der Genehmigung einer Gesundheitseinrichtung",
        "en": "withdrawal of a care facility's authorisation",
    },
    outbox.EMERGENCY_ACCESS: {
        "fr": "accès d'urgence au dossier",
        "de": "Notfallzugriff auf die Akte",
        "en": "emergency access to the record",
    },
    outbox.NEW_DOCUMENT: {  # never the document's title, type or category: e-mail is not safe
        "fr": "nouveau document dans le dossier",
        "de": "neues Dokument in der Akte",
        "en": "new document in the record",
    },
    outbox.VACCINATION_REMINDER: {  # never the vaccine, the dose or the date: e-mail is not safe
        "fr": "rappel de vaccination",
        "de": "Impferinnerung",
        "en": "vaccination reminder",
    },
}
OTHER_KIND = {
    "fr": "changement concernant le dossier",
    "de": "Änderung betreffend die Akte",
    "en": "change concerning the record",
}

WHERE = {
    "fr": "Un nouveau message vous attend dans votre dossier de soins partagé SharedCare.",
    "de": "In Ihrer gemeinsamen Behandlungsakte SharedCare liegt eine neue Nachricht für Sie bereit.",
    "en": "There is a new message for you in your SharedCare shared care record.",
}
WHERE_REPRESENTED = {
    "fr": "Un nouveau message vous attend dans le dossier de soins partagé SharedCare "
    "d'une personne que vous représentez.",
    "de": "In der gemeinsamen Behandlungsakte SharedCare einer Person, die Sie vertreten, "
    "liegt eine neue Nachricht für Sie bereit.",
    "en": "There is a new message for you in the SharedCare shared care record of a person you represent.",
}

DETAILS = {
    "fr": "le nom du professionnel concerné et le message complet",
    "de": "Der Name der betreffenden Fachperson und die vollständige Nachricht",
    "en": "the name of the professional concerned and the full message",
}
DETAILS_OF_KIND = {
    outbox.FACILITY_WITHDRAWN: {
        "fr": "le nom de l'établissement concerné et le message complet",
        "de": "Der Name der betreffenden Einrichtung und die vollständige Nachricht",
        "en": "the name of the facility concerned and the full message",
    },
    outbox.VACCINATION_REMINDER: {
        "fr": "le vaccin concerné, la dose et la date",
        "de": "Die betreffende Impfung, die Dosis und das Datum",
        "en": "the vaccine concerned, the dose and the date",
    },
}

BODY = {
    "fr": (
        "Bonjour,\n\n{where}\nObjet : {kind}.\n\n"
        "Pour protéger vos données, ce courriel ne donne aucun détail : {details} "
        "ne sont visibles qu'après connexion au portail{portal}.\n\n"
        "Ce courriel est envoyé automatiquement ; merci de ne pas y répondre.\n"
    ),
    "de": (
        "Guten Tag,\n\n{where}\nBetreff: {kind}.\n\n"
        "Zum Schutz Ihrer Daten enthält diese E-Mail keine Einzelheiten: {details} "
        "sind nur nach der Anmeldung im Portal sichtbar{portal}.\n\n"
        "Diese E-Mail wurde automatisch versandt; bitte antworten Sie nicht darauf.\n"
    ),
    "en": (
        "Hello,\n\n{where}\nSubject: {kind}.\n\n"
        "To protect your data, this e-mail gives no details: {details} "
        "are shown only once you sign in to the portal{portal}.\n\n"
        "This e-mail was sent automatically; please do not reply to it.\n"
    ),
}


def language_of(lang: str | None) -> str:
    """The person's remembered language, French when it is not one of ours."""
    return lang if lang in LANGUAGES else DEFAULT_LANGUAGE


def subject(lang: str) -> str:
    return SUBJECT[language_of(lang)]


def body(lang: str, kind: str, *, representative: bool, portal_url: str | None) -> str:
    """The plain-text body: where the message is, its kind in words, where to read it."""
    lang = language_of(lang)
    where = (WHERE_REPRESENTED if representative else WHERE)[lang]
    words = KIND.get(kind, OTHER_KIND)[lang]
    details = DETAILS_OF_KIND.get(kind, DETAILS)[lang]
    portal = f" : {portal_url}" if portal_url and lang == "fr" else f": {portal_url}" if portal_url else ""
    return BODY[lang].format(where=where, kind=words, details=details, portal=portal)
