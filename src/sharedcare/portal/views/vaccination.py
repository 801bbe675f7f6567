"""The vaccination record in the portal: the card, the forecast, recording and validating doses.

``/portal/vaccinations`` (holder side: the holder's own record or the child's a parent acts
for) and ``/portal/pro/patients/[pid]/vaccinations`` (professionals) show one card per vaccine
group: the doses given (date, product, lot; those the holder reported marked until a
professional validates them), the forecast's status as a badge, the next dose with its earliest
and due dates and the forecaster's reason. Everything comes from ``vaccination.inputs.stored_forecast``
run on the reader's own ``FhirService`` session (``records.view``), so the access decision picks
the doses and the reads are audited; a record the reader may not open is "not found".

Writes go through the same session: the holder adds a past dose from the paper card (the server
marks it patient-reported); a vaccinator records a dose (a scanned GS1 DataMatrix fills the
form, ``vaccination.gs1``) and validates reported doses (``operations.validate_reported``). The
record's write rules (``vaccination.record``) answer with OperationOutcome issues, shown here as
sentences in the reader's language. The certificate is ``operations.certificate`` in the
portal's language.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response
from sqlalchemy import select

from sharedcare.access.categories import DataCategory
from sharedcare.fhir.errors import FhirError
from sharedcare.fhir.service import FhirService
from sharedcare.portal import csrf, records
from sharedcare.portal.deps import holder_side, now, professional
from sharedcare.portal.i18n import N_, Translator
from sharedcare.portal.pages import flash, language, redirect, render, secure
from sharedcare.portal.sessions import PortalError, PortalUser
from sharedcare.vaccination import cdsi, operations
from sharedcare.vaccination import record as rules
from sharedcare.vaccination.gs1 import DataMatrixError, draft_immunization
from sharedcare.vaccination.inputs import InputError, read_record, stored_forecast
from sharedcare.vaccination.products import CVX_SYSTEM, PRODUCT_SYSTEM, Catalogue, catalogue

router = APIRouter(dependencies=[Depends(csrf.require_csrf)])
Text = Annotated[str, Form()]
NOT_FOUND = N_("No record was found, or you have no access to it.")
NO_BIRTH_DATE = N_("The forecast needs the full date of birth of the person, which the record does not give.")

# --- statuses of the forecast, as badges -------------------------------------------------------------------

BADGES = {
    "overdue": N_("Overdue"),
    "due": N_("Due"),
    "not-complete": N_("Not complete"),
    "contraindicated": N_("Contraindicated"),
    "complete": N_("Complete"),
    "immune": N_("Immune"),
    "aged-out": N_("Aged out"),
    "not-recommended": N_("Not recommended"),
}
"""Badge key → words, in the order cards are listed (what needs doing first)."""
_CDSI_BADGES = {
    "Complete": "complete",
    "Immune": "immune",
    "Contraindicated": "contraindicated",
    "Aged Out": "aged-out",
    "Not Recommended": "not-recommended",
}
_SERIES_REASON = re.compile(r"^Dose (\d+) of the (.+), recommended based on (age|interval)$")
REASONS = {
    "Series complete": N_("The series is complete."),
    "Evidence of immunity": N_("The record shows immunity."),
    "No series applies": N_("No series of the schedule applies to this person."),
    "Past the maximum age for the next dose": N_("Past the maximum age for the next dose."),
    "Contraindicated": N_("A contraindication is recorded."),
}
"""The forecaster's fixed reasons (``cdsi.engine``) in words; others are shown as the schedule writes them."""
REASON_AGE = N_("Dose %(number)s of the series “%(series)s”, due at the age the schedule sets.")
REASON_INTERVAL = N_(
    "Dose %(number)s of the series “%(series)s”, due after the interval since the previous dose."
)

# --- the recording forms -----------------------------------------------------------------------------------

SITES = {
    "LA": N_("Left arm"),
    "RA": N_("Right arm"),
    "LT": N_("Left thigh"),
    "RT": N_("Right thigh"),
    "LD": N_("Left deltoid"),
    "RD": N_("Right deltoid"),
}
"""Injection sites (HL7 v3 ActSite)."""
ROUTES = {
    "IM": N_("Intramuscular"),
    "SC": N_("Subcutaneous"),
    "IDINJ": N_("Intradermal"),
    "PO": N_("Oral"),
    "NASINHLC": N_("Nasal"),
}
"""Routes of administration (HL7 v3 RouteOfAdministration)."""
SITE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActSite"
ROUTE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration"
PERFORMER_FUNCTION = "http://terminology.hl7.org/CodeSystem/v2-0443"
MAX_TEXT = 100
NEXT_DAYS = 365
"""The "next doses" list holds the doses due within a year; later ones are on their group's card."""

ADDED = N_(
    "The dose was added to the card. It is marked as reported by you until a professional validates it."
)
RECORDED = N_("The dose was recorded.")
VALIDATED = N_("The dose was validated.")
CODE_READ = N_("The code was read: check the fields it filled, then record the dose.")
NO_DATE = N_("Give the date of the dose.")
NO_VACCINE = N_("Choose the vaccine from the list, or give its name and its CVX code.")
NO_PRODUCT = N_("Choose the vaccine product.")
BAD_CVX = N_("A CVX code has one to three digits.")
BAD_DOSE_NUMBER = N_("The dose number is a whole number from 1 to 20.")
BAD_CHOICE = N_("Choose the site and the route among the options shown.")
TOO_LONG = N_("A field is too long (at most 100 characters).")
NOT_VACCINATOR = N_("You may not record vaccinations in this record.")
NO_CODE = N_("Scan the pack's DataMatrix code, or type it, before reading it.")
SCAN_ERROR = N_("The DataMatrix code could not be read: %(reason)s")
NOT_RECORDED = N_("The dose could not be recorded: %(reason)s")
NOT_GIVEN = N_("Not given")
NOT_VALIDATED = N_("The dose could not be validated: %(reason)s")
_ISSUES = (
    ("Immunization.vaccineCode", "", NO_VACCINE),
    ("Immunization.occurrence", "future", N_("The date of the dose is in the future.")),
    ("Immunization.occurrence", "", N_("The date of the dose is missing or not a valid date.")),
    (
        "Immunization.expirationDate",
        "required",
        N_("The expiry date of the pack is required for a dose you gave."),
    ),
    ("Immunization.expirationDate", "", N_("The pack had expired when the dose was given.")),
    ("Immunization.lotNumber", "", N_("The lot number of the pack is required for a dose you gave.")),
    ("Immunization.performer", "vaccinator", N_("The vaccinator is required.")),
    (
        "Immunization.performer",
        "",
        N_("The organisation where the dose was given is required: your account names none."),
    ),
    ("Immunization.protocolApplied", "", BAD_DOSE_NUMBER),
)
"""The write rules' issues (``vaccination.record``) by FHIRPath, and a word of their text, in words."""
SCAN_WARNINGS = (
    (
        re.compile(r"^GTIN (\d+) is not in the catalogue"),
        N_("The pack (GTIN %(gtin)s) is not in the catalogue: choose the product by hand."),
    ),
    (re.compile(r"^The code has no lot number"), N_("The code has no lot number: enter it from the pack.")),
    (re.compile(r"^The code has no expiry date"), N_("The code has no expiry date: enter it from the pack.")),
    (re.compile(r"^The pack expired on (\S+)"), N_("The pack expired on %(date)s.")),
)


# --- the card ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dose:
    """One dose as the card shows it."""

    id: str
    given: date | None
    product: str
    lot: str
    reported: bool
    """Reported by the holder, not validated yet."""
    validated: bool
    """Reported by the holder, then validated by a professional."""
    notes: tuple[str, ...] = ()
    """Why the forecaster did not count it (per antigen), or why it is not used."""


@dataclass(slots=True)
class GroupCard:
    """One vaccine group: its doses and the forecast."""

    name: str
    badge: str
    dose_number: int | None
    earliest: date | None
    recommended: date | None
    past_due: date | None
    reason: str
    unconfirmed: bool
    products: list[str]
    doses: list[Dose] = field(default_factory=list)


@dataclass(slots=True)
class Card:
    """The whole vaccination card of one person, as the reader may see it."""

    patient: dict[str, str]
    as_of: date
    groups: list[GroupCard]
    next_doses: list[GroupCard]
    aged_out: list[str]
    other: list[Dose]
    reported: list[Dose]
    problem: str | None = None


def _product_name(products: Catalogue, concept: Any) -> str:
    found = products.for_concept(concept)
    if found is not None:
        return found.name
    if isinstance(concept, Mapping):
        if isinstance(concept.get("text"), str) and concept["text"].strip():
            return str(concept["text"]).strip()
        for c in concept.get("coding") or []:
            if isinstance(c, Mapping) and c.get("display"):
                return str(c["display"])
        for c in concept.get("coding") or []:
            if isinstance(c, Mapping) and c.get("system") == CVX_SYSTEM:
                return f"CVX {c.get('code')}"
    return "—"


def _day(value: Any) -> date | None:
    when = records.parse_when(value)
    return when.date() if when is not None else None


def _dose(res: Mapping[str, Any], products: Catalogue, notes: Sequence[str] = ()) -> Dose:
    tag = rules.verification(res)
    return Dose(
        str(res.get("id")),
        _day(res.get("occurrenceDateTime")),
        _product_name(products, res.get("vaccineCode")),
        str(res.get("lotNumber") or ""),
        tag == rules.PATIENT_REPORTED,
        tag == rules.VALIDATED,
        tuple(notes),
    )


def badge_of(group: cdsi.GroupForecast, today: date) -> str:
    """The badge of a group: the CDSi status, and for an incomplete series whether the next
    dose is overdue (its past-due date has come), due (its due date, or its earliest date when
    there is none, has come) or later ("not complete")."""
    if group.status != "Not Complete":
        return _CDSI_BADGES.get(group.status, "not-recommended")
    if group.past_due is not None and today >= group.past_due:
        return "overdue"
    due = group.recommended or group.earliest
    return "due" if due is not None and due <= today else "not-complete"


def reason_words(t: Translator, reason: str | None) -> str:
    if not reason:
        return ""
    found = _SERIES_REASON.match(reason)
    if found:
        number, series, basis = found.groups()
        message = REASON_AGE if basis == "age" else REASON_INTERVAL
        return t.gettext(message, number=number, series=series)
    return t.gettext(REASONS[reason]) if reason in REASONS else reason


def _offered(products: Catalogue, cvx_codes: Sequence[str]) -> list[str]:
    """Catalogue products that give one of the forecast's vaccines (CVX codes)."""
    wanted = {c.lstrip("0") for c in cvx_codes}
    return sorted(
        p.name for p in products.products.values() if {c.lstrip("0") for c in p.forecast_codes} & wanted
    )


def build_card(
    t: Translator,
    products: Catalogue,
    patient: Mapping[str, Any],
    immunizations: Sequence[Mapping[str, Any]],
    found: cdsi.Forecast | None,
    as_of: date,
) -> Card:
    """The card from the resources read and their forecast (None: the person cannot be forecast)."""
    given = [r for r in immunizations if r.get("status") != "entered-in-error"]
    by_ref: dict[str, list[cdsi.DoseEvaluation]] = {}
    for e in found.evaluations if found is not None else ():
        by_ref.setdefault(e.ref, []).append(e)
    groups: dict[str, GroupCard] = {}
    for g in found.groups if found is not None else ():
        groups[g.vaccine_group] = GroupCard(
            g.vaccine_group,
            badge_of(g, as_of),
            g.dose_number,
            g.earliest,
            g.recommended,
            g.past_due,
            reason_words(t, g.reason),
            bool(g.unconfirmed),
            _offered(products, g.vaccines),
        )
    other: list[Dose] = []
    for res in sorted(given, key=lambda r: str(r.get("occurrenceDateTime") or "")):
        evaluations = by_ref.get(f"Immunization/{res.get('id')}", [])
        in_groups = sorted({e.vaccine_group for e in evaluations if e.vaccine_group in groups})
        if res.get("status") != "completed" or not in_groups:
            note = t.gettext(NOT_GIVEN) if res.get("status") == "not-done" else ""
            other.append(_dose(res, products, [note] if note else []))
            continue
        for name in in_groups:
            notes = [
                f"{e.antigen}: {e.status}" + (f" ({e.reason})" if e.reason else "")
                for e in evaluations
                if e.vaccine_group == name and e.status != "Valid"
            ]
            groups[name].doses.append(_dose(res, products, notes))
    order = list(BADGES)
    shown = [g for g in groups.values() if g.doses or g.badge not in ("aged-out", "not-recommended")]
    shown.sort(key=lambda g: (order.index(g.badge), g.recommended or g.earliest or date.max, g.name.lower()))
    horizon = as_of + timedelta(days=NEXT_DAYS)
    next_doses = sorted(
        (
            g
            for g in shown
            if g.badge in ("overdue", "due", "not-complete")
            and (g.recommended or g.earliest or horizon) < horizon
        ),
        key=lambda g: (g.recommended or g.earliest or date.max, g.name.lower()),
    )
    aged_out = sorted(g.name for g in groups.values() if g.badge == "aged-out" and not g.doses)
    reported = [_dose(r, products) for r in given if rules.verification(r) == rules.PATIENT_REPORTED]
    return Card(
        records.patient_summary(dict(patient)),
        as_of,
        shown,
        next_doses,
        aged_out,
        other,
        reported,
        None if found is not None else t.gettext(NO_BIRTH_DATE),
    )


def read_card(request: Request, user: PortalUser, service: FhirService, patient_id: str) -> Card:
    """The card of ``patient_id`` through ``service`` (the reader's session); 404 when the reader
    may not open the record."""
    t = Translator(language(request, user))
    as_of = operations.today()
    schedule = request.app.state.settings.forecast_schedule
    products = products_of(request)
    try:
        try:
            result = stored_forecast(service, patient_id, as_of, schedule)
        except InputError:
            record = read_record(service, patient_id, ("Immunization",), operation="immds-forecast")
            return build_card(t, products, record.patient, record.resources["Immunization"], None, as_of)
    except FhirError:
        raise PortalError(404, NOT_FOUND) from None
    return build_card(
        t, products, result.record.patient, result.record.resources["Immunization"], result.forecast, as_of
    )


def _options(t: Translator, values: Mapping[str, str]) -> list[tuple[str, str]]:
    return [(code, t.gettext(label)) for code, label in values.items()]


def products_of(request: Request) -> Catalogue:
    """The catalogue with the platform's local additions (packs' GTINs, local products)."""
    return catalogue(request.app.state.settings.data_dir)


def _product_options(products: Catalogue) -> list[tuple[str, str]]:
    found = products.products.values()
    return sorted(((p.code, p.name) for p in found), key=lambda x: x[1].lower())


def _problems(t: Translator, exc: FhirError, lead: str) -> list[str]:
    """The write's refusal as sentences: each known rule in words, anything else as the server said it."""
    if exc.status == 403:
        return [t.gettext(NOT_VACCINATOR)]
    out: list[str] = []
    for issue in exc.issues or []:
        where = " ".join(issue.expression)
        known = next(
            (msg for path, word, msg in _ISSUES if where.startswith(path) and word in issue.diagnostics),
            None,
        )
        text = t.gettext(known) if known else t.gettext(lead, reason=issue.diagnostics)
        if text not in out:
            out.append(text)
    return out or [t.gettext(lead, reason=str(exc))]


def _clean(value: str) -> str:
    return " ".join(value.split())


def _date(value: str) -> date | None:
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        return None


# --- holder side -------------------------------------------------------------------------------------------


def _holder_page(
    request: Request,
    user: PortalUser,
    typed: Mapping[str, str] | None = None,
    errors: Sequence[str] = (),
    status: int = 200,
) -> Response:
    assert user.record is not None
    card = read_card(request, user, records.view(request, user), user.record)
    context = {
        "card": card,
        "pro": False,
        "base": "/portal/vaccinations",
        "back": "/portal/home",
        "badges": BADGES,
        "products": _product_options(products_of(request)),
        "typed": {"date": "", "product": "", "name": "", "cvx": "", "lot": "", **(typed or {})},
        "errors": list(errors),
    }
    return render(request, "vaccination.html", context, user=user, status=status)


@router.get("/vaccinations")
def holder_card(request: Request, user: PortalUser = Depends(holder_side)) -> Response:
    return _holder_page(request, user)


@router.post("/vaccinations/doses")
def holder_add_dose(
    request: Request,
    given: Annotated[str, Form(alias="date")] = "",
    product: Text = "",
    name: Text = "",
    cvx: Text = "",
    lot: Text = "",
    user: PortalUser = Depends(holder_side),
) -> Response:
    """A past dose from the paper card, added through the holder's own session: the server marks
    it patient-reported (``vaccination.record``) until a professional validates it."""
    assert user.record is not None
    t = Translator(language(request, user))
    typed = {"date": given, "product": product, "name": _clean(name), "cvx": cvx.strip(), "lot": _clean(lot)}
    errors: list[str] = []
    day = _date(given)
    if day is None:
        errors.append(t.gettext(NO_DATE))
    found = products_of(request).get(product) if product else None
    if (product and found is None) or (not product and not typed["name"]):
        errors.append(t.gettext(NO_VACCINE))
    if typed["cvx"] and not re.fullmatch(r"\d{1,3}", typed["cvx"]):
        errors.append(t.gettext(BAD_CVX))
    if any(len(v) > MAX_TEXT for v in typed.values()):
        errors.append(t.gettext(TOO_LONG))
    if errors:
        return _holder_page(request, user, typed, errors, 400)
    assert day is not None
    if found is not None:
        vaccine: dict[str, Any] = {"coding": found.codings(), "text": found.name}
    else:
        vaccine = {"text": typed["name"]}
        if typed["cvx"]:
            vaccine["coding"] = [{"system": CVX_SYSTEM, "code": typed["cvx"]}]
    res: dict[str, Any] = {
        "resourceType": "Immunization",
        "status": "completed",
        "vaccineCode": vaccine,
        "patient": {"reference": f"Patient/{user.record}"},
        "occurrenceDateTime": day.isoformat(),
        "primarySource": False,
    }
    if typed["lot"]:
        res["lotNumber"] = typed["lot"]
    try:
        records.view(request, user).create(res)
    except FhirError as exc:
        return _holder_page(request, user, typed, _problems(t, exc, NOT_RECORDED), 400)
    flash(request, ADDED)
    return redirect("/portal/vaccinations")


def _certificate(request: Request, user: PortalUser, patient_id: str) -> Response:
    lang = language(request, user)
    try:
        pdf = operations.certificate(records.view(request, user), patient_id, lang)
    except FhirError:
        raise PortalError(404, NOT_FOUND) from None
    headers = {"Content-Disposition": 'attachment; filename="vaccination-certificate.pdf"'}
    return secure(Response(pdf, media_type="application/pdf", headers=headers), lang)


@router.get("/vaccinations/certificate")
def holder_certificate(request: Request, user: PortalUser = Depends(holder_side)) -> Response:
    assert user.record is not None
    return _certificate(request, user, user.record)


# --- professionals -----------------------------------------------------------------------------------------


def may_record(request: Request, user: PortalUser, patient_id: str, at: datetime) -> bool:
    """Whether the access decision lets this professional write the patient's vaccination record
    (a vaccinator's profession, in their care, not blocked): the form is shown only then; the
    write check decides again when it is used."""
    policy = request.app.state.policy
    allowed = policy.writable_patients(user.principal, DataCategory.VACCINATION, at).subquery()
    with request.app.state.engine.connect() as conn:
        row = conn.execute(select(allowed.c.patient_id).where(allowed.c.patient_id == patient_id).limit(1))
        return row.first() is not None


EMPTY_FORM = {
    "datamatrix": "",
    "product": "",
    "gtin": "",
    "date": "",
    "lot": "",
    "expiry": "",
    "serial": "",
    "site": "",
    "route": "",
    "dose_number": "",
}


def _pro_page(
    request: Request,
    user: PortalUser,
    patient_id: str,
    at: datetime,
    typed: Mapping[str, str] | None = None,
    errors: Sequence[str] = (),
    warnings: Sequence[str] = (),
    status: int = 200,
) -> Response:
    t = Translator(language(request, user))
    card = read_card(request, user, records.view(request, user), patient_id)
    writer = may_record(request, user, patient_id, at)
    form = {**EMPTY_FORM, "date": card.as_of.isoformat(), **(typed or {})}
    context = {
        "card": card,
        "pro": True,
        "may_record": writer,
        "base": f"/portal/pro/patients/{patient_id}/vaccinations",
        "back": f"/portal/pro/patients/{patient_id}",
        "badges": BADGES,
        "products": _product_options(products_of(request)),
        "sites": _options(t, SITES),
        "routes": _options(t, ROUTES),
        "typed": form,
        "errors": list(errors),
        "warnings": list(warnings),
    }
    return render(request, "vaccination.html", context, user=user, status=status)


@router.get("/pro/patients/{patient_id}/vaccinations")
def pro_card(
    request: Request, patient_id: str, user: PortalUser = Depends(professional), at: datetime = Depends(now)
) -> Response:
    return _pro_page(request, user, patient_id, at)


def _scan_warnings(t: Translator, warnings: Sequence[str]) -> list[str]:
    """``gs1``'s warnings in the reader's language (an unknown one as ``gs1`` wrote it)."""
    out = []
    for text in warnings:
        for pattern, message in SCAN_WARNINGS:
            found = pattern.match(text)
            if found is None:
                continue
            params: dict[str, str] = {}
            if "%(gtin)s" in message:
                params["gtin"] = found.group(1)
            if "%(date)s" in message:
                params["date"] = t.date(date.fromisoformat(found.group(1)))
            out.append(t.gettext(message, **params))
            break
        else:
            out.append(text)
    return out


def read_scan(
    t: Translator, code: str, typed: dict[str, str], patient_id: str, products: Catalogue
) -> list[str]:
    """Fill the empty fields of ``typed`` from a scanned pack code (product by its GTIN, lot,
    expiry, serial); the warnings to show. Raises ``DataMatrixError`` for a code that is no GS1 pack code."""
    draft = draft_immunization(code, products, patient=f"Patient/{patient_id}", today=operations.today())
    res = draft.immunization
    codings = (res.get("vaccineCode") or {}).get("coding") or []
    own = next((c["code"] for c in codings if c.get("system") == PRODUCT_SYSTEM), "")
    typed["gtin"] = draft.scan.gtin
    if own:
        typed["product"] = own
    for name, value in (
        ("lot", draft.scan.lot),
        ("expiry", draft.scan.expiry.isoformat() if draft.scan.expiry else None),
        ("serial", draft.scan.serial),
    ):
        if value:
            typed[name] = value
    return _scan_warnings(t, draft.warnings)


def pro_immunization(
    products: Catalogue,
    typed: Mapping[str, str],
    patient_id: str,
    user: PortalUser,
    day: date,
    number: int | None,
) -> dict[str, Any]:
    """The Immunization a vaccinator records: the product's codings (and the pack's GTIN), the
    pack's lot, expiry and serial number, site, route, dose number, the vaccinator and their organisation."""
    product = products.get(typed["product"])
    assert product is not None
    gtin = typed.get("gtin") or None
    if gtin and product.gtins and gtin.zfill(14) not in product.gtins:
        gtin = None  # the scanned pack is not this product: keep only the product chosen
    res: dict[str, Any] = {
        "resourceType": "Immunization",
        "status": "completed",
        "vaccineCode": {"coding": product.codings(gtin), "text": product.name},
        "patient": {"reference": f"Patient/{patient_id}"},
        "occurrenceDateTime": day.isoformat(),
        "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
        "primarySource": True,
    }
    if product.manufacturer:
        res["manufacturer"] = {"display": product.manufacturer}
    if typed["lot"]:
        res["lotNumber"] = typed["lot"]
    if typed["expiry"]:
        res["expirationDate"] = typed["expiry"]
    if typed["site"]:
        res["site"] = {"coding": [{"system": SITE_SYSTEM, "code": typed["site"]}]}
    if typed["route"]:
        res["route"] = {"coding": [{"system": ROUTE_SYSTEM, "code": typed["route"]}]}
    performers: list[dict[str, Any]] = []
    if user.principal.practitioner_id:
        performers.append(
            {
                "function": {"coding": [{"system": PERFORMER_FUNCTION, "code": "AP"}]},
                "actor": {"reference": f"Practitioner/{user.principal.practitioner_id}"},
            }
        )
    if user.principal.organization_id:
        performers.append({"actor": {"reference": f"Organization/{user.principal.organization_id}"}})
    if performers:
        res["performer"] = performers
    if number is not None:
        res["protocolApplied"] = [{"doseNumberPositiveInt": number}]
    if typed["serial"]:
        res["extension"] = [{"url": rules.SERIAL_EXTENSION, "valueString": typed["serial"]}]
    return res


@router.post("/pro/patients/{patient_id}/vaccinations/doses")
def pro_record_dose(
    request: Request,
    patient_id: str,
    action: Text = "record",
    datamatrix: Text = "",
    product: Text = "",
    gtin: Text = "",
    given: Annotated[str, Form(alias="date")] = "",
    lot: Text = "",
    expiry: Text = "",
    serial: Text = "",
    site: Text = "",
    route: Text = "",
    dose_number: Text = "",
    user: PortalUser = Depends(professional),
    at: datetime = Depends(now),
) -> Response:
    """``action=scan``: read the DataMatrix into the form (nothing stored). ``action=record``:
    record the dose through the professional's session (a code still in the field fills what
    the form leaves empty); the write check and the record's rules decide, a refusal stores nothing."""
    t = Translator(language(request, user))
    typed = {
        "datamatrix": datamatrix.strip(),
        "product": product,
        "gtin": gtin.strip(),
        "date": given.strip(),
        "lot": _clean(lot),
        "expiry": expiry.strip(),
        "serial": _clean(serial),
        "site": site,
        "route": route,
        "dose_number": dose_number.strip(),
    }

    def page(errors: Sequence[str] = (), warnings: Sequence[str] = (), status: int = 400) -> Response:
        return _pro_page(request, user, patient_id, at, typed, errors, warnings, status)

    products = products_of(request)
    if not may_record(request, user, patient_id, at):
        read_card(request, user, records.view(request, user), patient_id)  # 404 for a record not opened
        return page([t.gettext(NOT_VACCINATOR)], status=403)
    warnings: list[str] = []
    if typed["datamatrix"]:
        scanned = dict(typed)
        try:
            warnings = read_scan(t, typed["datamatrix"], scanned, patient_id, products)
        except DataMatrixError as exc:
            return page([t.gettext(SCAN_ERROR, reason=str(exc))])
        for key, value in scanned.items():  # reading fills the form; recording fills only what is empty
            if action == "scan" or not typed[key]:
                typed[key] = value
    if action == "scan":
        if not typed["datamatrix"]:
            return page([t.gettext(NO_CODE)])
        return page(warnings=[t.gettext(CODE_READ), *warnings], status=200)
    errors: list[str] = []
    day = _date(typed["date"])
    if day is None:
        errors.append(t.gettext(NO_DATE))
    if products.get(typed["product"]) is None:
        errors.append(t.gettext(NO_PRODUCT))
    number: int | None = None
    if typed["dose_number"]:
        number = int(typed["dose_number"]) if typed["dose_number"].isdigit() else 0
        if not 1 <= number <= 20:
            errors.append(t.gettext(BAD_DOSE_NUMBER))
    if typed["site"] not in ("", *SITES) or typed["route"] not in ("", *ROUTES):
        errors.append(t.gettext(BAD_CHOICE))
    if typed["expiry"] and _date(typed["expiry"]) is None:
        errors.append(t.gettext(N_("The expiry date is not a valid date.")))
    if any(len(v) > MAX_TEXT for k, v in typed.items() if k != "datamatrix"):
        errors.append(t.gettext(TOO_LONG))
    if errors:
        return page(errors, warnings)
    assert day is not None
    res = pro_immunization(products, typed, patient_id, user, day, number)
    try:
        records.view(request, user).create(res)
    except FhirError as exc:
        return page(_problems(t, exc, NOT_RECORDED), warnings, 403 if exc.status == 403 else 400)
    flash(request, RECORDED)
    return redirect(f"/portal/pro/patients/{patient_id}/vaccinations")


@router.post("/pro/patients/{patient_id}/vaccinations/{immunization_id}/validate")
def pro_validate(
    request: Request,
    patient_id: str,
    immunization_id: str,
    user: PortalUser = Depends(professional),
    at: datetime = Depends(now),
) -> Response:
    """A vaccinator validates a dose the holder reported (``operations.validate_reported``: the
    update goes through their session, so their write right on the record decides)."""
    t = Translator(language(request, user))
    service = records.view(request, user)
    try:
        dose = service.read("Immunization", immunization_id).resource()
    except FhirError:
        raise PortalError(404, NOT_FOUND) from None
    if (dose.get("patient") or {}).get("reference") != f"Patient/{patient_id}":
        raise PortalError(404, NOT_FOUND)
    try:
        operations.validate_reported(records.view(request, user), user.principal, immunization_id)
    except FhirError as exc:
        errors = _problems(t, exc, NOT_VALIDATED)
        return _pro_page(request, user, patient_id, at, errors=errors, status=exc.status)
    flash(request, VALIDATED)
    return redirect(f"/portal/pro/patients/{patient_id}/vaccinations")


@router.get("/pro/patients/{patient_id}/vaccinations/certificate")
def pro_certificate(request: Request, patient_id: str, user: PortalUser = Depends(professional)) -> Response:
    return _certificate(request, user, patient_id)
