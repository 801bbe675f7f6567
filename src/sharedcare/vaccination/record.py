"""The rules of an ``Immunization`` on write, and who may say a dose is verified.

Registered as the write rule of ``Immunization`` (``fhir.service.register_write_rule``), so every
write path applies them: REST, bundles and operations. The FHIR base validation has run before;
these rules add what the vaccination record needs (issue 5, DOMAIN.md §2.1):

- ``vaccineCode`` names a catalogue product (our code or a known GTIN) or carries a CVX code;
- ``not-done`` gives ``statusReason``; the date is not in the future; the pack was not expired;
- a professional's own completed dose (``primarySource`` true, written by a professional or a
  facility system) has its lot number, expiry date, the vaccinator and the organisation;
- the agency's own writes (trusted clients: imports, the demo) are not checked;
- doses the holder (or a representative) adds are **patient-reported**: the server sets
  ``primarySource`` false, ``reportOrigin`` and the ``meta.tag`` whatever the client sent; only a
  vaccinator's write may mark a dose ``validated``, and the server then records who and when.

The access decision does the rest: a patient-reported dose is its own data category, the only
one of the record holders may write (``access.categories``, ``access.policy``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sharedcare.access.categories import IMMUNIZATION_VERIFICATION_SYSTEM
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.fhir.errors import Forbidden, Issue, Unprocessable
from sharedcare.fhir.service import register_write_rule
from sharedcare.fhir.session import AccessSession
from sharedcare.fhir.store import Write
from sharedcare.vaccination.products import CVX_SYSTEM, GTIN_SYSTEM, PRODUCT_SYSTEM, Catalogue, catalogue

SERIAL_EXTENSION = "https://sharedcare.lu/fhir/StructureDefinition/immunization-serial-number"
"""The pack's serial number (GS1 AI 21): R4 ``Immunization`` has no element for it."""
VALIDATION_EXTENSION = "https://sharedcare.lu/fhir/StructureDefinition/immunization-validation"
"""Who validated a patient-reported dose and when: sub-extensions ``validator`` (Reference to the
Practitioner) and ``date`` (dateTime). An extension, not a ``performer``: the validator did not
give the dose, and ``performer.function`` has no code for "validated the record"."""
VERIFICATION_SYSTEM = IMMUNIZATION_VERIFICATION_SYSTEM
PATIENT_REPORTED = "patient-reported"
VALIDATED = "validated"
ORIGIN_SYSTEM = "http://terminology.hl7.org/CodeSystem/immunization-origin"
LOCAL_TIME = ZoneInfo("Europe/Luxembourg")
"""Where doses are given: "today" for the not-in-the-future rule is the Luxembourg day."""
_STATUSES = ("completed", "entered-in-error", "not-done")
_PARTIAL_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


def _issue(path: str, text: str) -> Issue:
    return Issue("error", "business-rule", text, (f"Immunization.{path}",))


def _earliest_day(value: Any) -> date | None:
    """The first day a FHIR date/dateTime can mean (``2020`` → 1 January 2020); None if unreadable."""
    m = _PARTIAL_DATE.match(value) if isinstance(value, str) else None
    if m is None:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2) or 1), int(m.group(3) or 1))
    except ValueError:
        return None


def _codings(concept: Any) -> list[Mapping[str, Any]]:
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    return [c for c in codings if isinstance(c, Mapping)] if isinstance(codings, list) else []


def _references(res: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for performer in res.get("performer") or []:
        actor = performer.get("actor") if isinstance(performer, Mapping) else None
        ref = actor.get("reference") if isinstance(actor, Mapping) else None
        if isinstance(ref, str):
            out.append(ref)
    return out


def immunization_problems(
    res: Mapping[str, Any], products: Catalogue, *, today: date, professional_dose: bool
) -> list[Issue]:
    """Every problem of an Immunization against the record's rules (empty: acceptable).

    ``professional_dose``: the writer is a vaccinator recording a dose they gave, so the pack's
    lot and expiry and the vaccinator and organisation are required."""
    issues: list[Issue] = []
    codings = _codings(res.get("vaccineCode"))
    product = products.for_concept(res.get("vaccineCode"))
    has_cvx = any(
        c.get("system") == CVX_SYSTEM and re.fullmatch(r"\d{1,3}", str(c.get("code"))) for c in codings
    )
    if product is None and not has_cvx:
        named = [f"{c.get('system')}|{c.get('code')}" for c in codings if c.get("system") == PRODUCT_SYSTEM]
        gtins = [str(c.get("code")) for c in codings if c.get("system") == GTIN_SYSTEM]
        detail = (
            f"product code {', '.join(named)} is not in the catalogue"
            if named
            else f"GTIN {', '.join(gtins)} is not in the catalogue"
            if gtins
            else "it has neither a catalogue product code nor a CVX code"
        )
        issues.append(
            _issue(
                "vaccineCode",
                f"vaccineCode must name a vaccine: {detail} (systems {PRODUCT_SYSTEM} or {CVX_SYSTEM})",
            )
        )
    status = res.get("status")
    if status not in _STATUSES:
        issues.append(_issue("status", f"status must be one of {', '.join(_STATUSES)}, not {status!r}"))
    if status == "not-done" and not res.get("statusReason"):
        issues.append(_issue("statusReason", "a dose not given (not-done) needs its statusReason"))
    given = _earliest_day(res.get("occurrenceDateTime"))
    if "occurrenceDateTime" not in res:
        issues.append(_issue("occurrence", "the date of the dose (occurrenceDateTime) is required"))
    elif given is None:
        issues.append(_issue("occurrenceDateTime", "the date of the dose is not a valid date"))
    elif given > today:
        issues.append(_issue("occurrenceDateTime", f"the date of the dose ({given}) is in the future"))
    expiry = _earliest_day(res.get("expirationDate"))
    if expiry is not None and given is not None and status == "completed" and expiry < given:
        issues.append(_issue("expirationDate", f"the pack had expired ({expiry}) when the dose was given"))
    for i, ext in enumerate(res.get("extension") or []):
        serial = isinstance(ext, Mapping) and ext.get("url") == SERIAL_EXTENSION
        if serial and not isinstance(ext.get("valueString"), str):
            issues.append(_issue(f"extension[{i}]", "the serial number extension needs a valueString"))
    for i, applied in enumerate(res.get("protocolApplied") or []):
        number = applied.get("doseNumberPositiveInt") if isinstance(applied, Mapping) else None
        if isinstance(applied, Mapping) and number is None and not applied.get("doseNumberString"):
            issues.append(_issue(f"protocolApplied[{i}]", "protocolApplied needs its doseNumber"))
    if professional_dose and status == "completed" and res.get("primarySource", True) is True:
        if not res.get("lotNumber"):
            issues.append(_issue("lotNumber", "the lot number of the pack is required for a dose you gave"))
        if not res.get("expirationDate"):
            issues.append(
                _issue("expirationDate", "the expiry date of the pack is required for a dose you gave")
            )
        refs = _references(res)
        kinds = {ref.split("/")[-2] for ref in refs if "/" in ref}
        if not kinds & {"Practitioner", "PractitionerRole"}:
            issues.append(
                _issue("performer", "the vaccinator (a Practitioner or PractitionerRole) is required")
            )
        if not kinds & {"Organization", "PractitionerRole"}:
            issues.append(_issue("performer", "the organisation where the dose was given is required"))
    return issues


def check_immunization(
    res: Mapping[str, Any], *, today: date, professional_dose: bool, products: Catalogue | None = None
) -> None:
    """Raise ``Unprocessable`` (422) naming every problem of ``res``."""
    issues = immunization_problems(
        res, products or catalogue(), today=today, professional_dose=professional_dose
    )
    if issues:
        text = "; ".join(i.diagnostics for i in issues)
        raise Unprocessable(f"The Immunization is not acceptable: {text}", issues=issues)


# --- the verification tag, set by the server ------------------------------------------------------------


def verification(res: Mapping[str, Any] | None) -> str | None:
    """The dose's verification tag (``patient-reported``, ``validated``) or None."""
    meta = res.get("meta") if isinstance(res, Mapping) else None
    for tag in (meta.get("tag") or []) if isinstance(meta, Mapping) else []:
        if isinstance(tag, Mapping) and tag.get("system") == VERIFICATION_SYSTEM:
            return str(tag.get("code"))
    return None


def _set_verification(res: dict[str, Any], code: str | None) -> None:
    meta = res.setdefault("meta", {})
    tags = [
        t
        for t in meta.get("tag") or []
        if not (isinstance(t, Mapping) and t.get("system") == VERIFICATION_SYSTEM)
    ]
    if code is not None:
        display = "Reported by the patient" if code == PATIENT_REPORTED else "Validated by a professional"
        tags.append({"system": VERIFICATION_SYSTEM, "code": code, "display": display})
    if tags:
        meta["tag"] = tags
    else:
        meta.pop("tag", None)
        if not meta:
            res.pop("meta")


def validation_extension(practitioner: str, when: datetime) -> dict[str, Any]:
    return {
        "url": VALIDATION_EXTENSION,
        "extension": [
            {"url": "validator", "valueReference": {"reference": f"Practitioner/{practitioner}"}},
            {"url": "date", "valueDateTime": when.astimezone(UTC).isoformat(timespec="seconds")},
        ],
    }


def _without(res: dict[str, Any], url: str) -> list[Any]:
    return [e for e in res.get("extension") or [] if not (isinstance(e, Mapping) and e.get("url") == url)]


def _drop_extension(res: dict[str, Any], url: str) -> None:
    kept = _without(res, url)
    if kept:
        res["extension"] = kept
    else:
        res.pop("extension", None)


def _principal(session: AccessSession | None) -> Principal | None:
    p = getattr(session, "principal", None)
    return p if isinstance(p, Principal) else None


def enforce(w: Write, session: AccessSession | None, *, now: datetime | None = None) -> None:
    """The server-owned part of an ``Immunization`` write (before the access check, which
    classifies the result): the verification tag, the validator, what holders may touch."""
    p = _principal(session)
    stored = w.current.resource() if w.current is not None and not w.current.deleted else None
    before = verification(stored)
    holder_side = p is not None and p.kind in (PrincipalKind.PATIENT, PrincipalKind.REPRESENTATIVE)
    if holder_side and stored is not None and before != PATIENT_REPORTED:
        raise Forbidden(f"Immunization/{w.id}: holders change only the doses they reported themselves")
    res = w.resource
    if res is None:
        return
    now = now or datetime.now(UTC)
    trusted = p is None or (p.kind is PrincipalKind.SYSTEM and p.trusted)
    if holder_side:
        res["primarySource"] = False
        res.setdefault("reportOrigin", {"coding": [{"system": ORIGIN_SYSTEM, "code": "record"}]})
        _set_verification(res, PATIENT_REPORTED)
    elif not trusted:
        wanted = verification(res)
        if wanted == VALIDATED and before != VALIDATED:
            if p is None or p.kind is not PrincipalKind.PROFESSIONAL or not p.practitioner_id:
                raise Forbidden(f"Immunization/{w.id}: only a vaccinator validates a reported dose")
            res["extension"] = [
                *_without(res, VALIDATION_EXTENSION),
                validation_extension(p.practitioner_id, now),
            ]
        elif wanted == VALIDATED and stored is not None:
            kept = [
                e
                for e in stored.get("extension") or []
                if isinstance(e, Mapping) and e.get("url") == VALIDATION_EXTENSION
            ]
            res["extension"] = [*_without(res, VALIDATION_EXTENSION), *kept]
        elif wanted is None and before == PATIENT_REPORTED:
            _set_verification(res, PATIENT_REPORTED)  # only validation lifts the mark
    if not trusted and verification(res) != VALIDATED:
        _drop_extension(res, VALIDATION_EXTENSION)  # nobody forges a validation


def check(w: Write, session: AccessSession | None, *, now: datetime | None = None) -> None:
    """The record's rules on the content, once the caller's right to write it is established.
    The agency's own writes (imports of registries and histories, the demo) are taken as they
    come: old records may name a vaccine only in text."""
    p = _principal(session)
    if w.resource is None or p is None or (p.kind is PrincipalKind.SYSTEM and p.trusted):
        return
    holder_side = p is not None and p.kind in (PrincipalKind.PATIENT, PrincipalKind.REPRESENTATIVE)
    professional_dose = not holder_side and verification(w.resource) is None
    today = (now or datetime.now(UTC)).astimezone(LOCAL_TIME).date()
    check_immunization(w.resource, today=today, professional_dose=professional_dose)


register_write_rule("Immunization", enforce)
register_write_rule("Immunization", check, after_access=True)
