"""The e-mail that tells a person a message waits in the portal, in French, German and English.

E-mail is not a safe channel for health data, so the text only says that there is a message and
what kind of event it is about: never who (the professional, the holder), why (an emergency
reason) or what (a document). The full message is read in the portal after signing in.

One e-mail goes to a professional instead: an overdue filing request addressed to them
(``PROFESSIONAL_*``, ``access.filing_notices``), naming neither the patient nor the item.

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
    outbox.FILING_REQUEST_OVERDUE: {  # never the professional or what was asked: e-mail is not safe
        "fr": "retard d'une demande de versement d'un élément au dossier",
        "de": "überfälliger Antrag auf Ablage eines Elements in der Akte",
        "en": "overdue request to file an item in the record",
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


PROFESSIONAL_SUBJECT = {
    "fr": "SharedCare : une demande de versement qui vous est adressée est en retard",
    "de": "SharedCare: Eine an Sie gerichtete Ablageanfrage ist überfällig",
    "en": "SharedCare: a filing request addressed to you is overdue",
}
"""The e-mail to the professional a holder asked to file an item (art. 9(2)) once the request is
past its due date (``access.filing_notices``): neither the patient nor the item, only where to
look (their requests page)."""

PROFESSIONAL_BODY = {
    "fr": (
        "Bonjour,\n\nUn patient vous a demandé de verser un élément à son dossier de soins partagé "
        "SharedCare ; le délai de cette demande est dépassé et elle est toujours ouverte.\n\n"
        "Pour protéger les données de santé, ce courriel ne donne aucun détail : le patient et la "
        "demande ne sont visibles qu'après connexion au portail, dans vos demandes{portal}.\n\n"
        "Ce courriel est envoyé automatiquement ; merci de ne pas y répondre.\n"
    ),
    "de": (
        "Guten Tag,\n\nEin Patient hat Sie gebeten, ein Element in seiner gemeinsamen Behandlungsakte "
        "SharedCare abzulegen; die Frist dieser Anfrage ist abgelaufen und sie ist noch offen.\n\n"
        "Zum Schutz der Gesundheitsdaten enthält diese E-Mail keine Einzelheiten: Der Patient und die "
        "Anfrage sind nur nach der Anmeldung im Portal sichtbar, unter Ihren Anfragen{portal}.\n\n"
        "Diese E-Mail wurde automatisch versandt; bitte antworten Sie nicht darauf.\n"
    ),
    "en": (
        "Hello,\n\nA patient asked you to file an item in their SharedCare shared care record; the "
        "request is past its due date and still open.\n\n"
        "To protect health data, this e-mail gives no details: the patient and the request are "
        "shown only once you sign in to the portal, among your requests{portal}.\n\n"
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


def professional_subject(lang: str) -> str:
    return PROFESSIONAL_SUBJECT[language_of(lang)]


def professional_body(lang: str, *, requests_url: str | None) -> str:
    """The plain-text body of an overdue filing request's e-mail to the professional asked."""
    lang = language_of(lang)
    link = (
        f" : {requests_url}" if requests_url and lang == "fr" else f": {requests_url}" if requests_url else ""
    )
    return PROFESSIONAL_BODY[lang].format(portal=link)
