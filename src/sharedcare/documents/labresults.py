"""The rules of laboratory results on write: ``Observation`` and ``DiagnosticReport`` (issue 4).

Registered as write rules (``fhir.service.register_write_rule``, after the access check: a caller
without the right gets 403 before any content error), so every write path applies them: REST,
transaction Bundles, operations. The FHIR base validation has run before; these rules add what a
result needs to be read, compared and charted across laboratories:

- an Observation filed as a laboratory result (data category ``lab-results``: category
  ``laboratory``, a lab section…) codes its test in **LOINC** (``http://loinc.org``, ``nnnnn-n``
  with its mod-10 check digit); a ``valueQuantity`` carries a **UCUM** unit (``system``
  ``http://unitsofmeasure.org`` and a ``code`` whose syntax the UCUM grammar of ``ucumvert``
  accepts) and a value; each ``referenceRange`` limit is in the unit of the value (else the limits
  could not be compared, nor drawn on the chart), and low ≤ high; each ``interpretation`` is a code
  of ``v3-ObservationInterpretation`` (H, L, N, A, HH, LL…);
- a DiagnosticReport filed as a laboratory report references its Observations (``result``) and
  may carry the laboratory's PDF in ``presentedForm``: ``contentType`` ``application/pdf``,
  ``size`` and ``hash`` (base64 SHA-1, as FHIR R4 and MHD define it) equal to the bytes, the
  bytes a PDF, inline up to ``INLINE_BYTES``; a larger PDF is filed as an MHD document (its bytes
  go to the content store) and the report names its Binary (``url`` ``[base]/Binary/[id]``).

Every problem of a resource is named in one 422 OperationOutcome; the transaction then stores
nothing. The agency's own writes (trusted clients: imports of Synthea and registries, the demo)
are taken as they come, as for ``vaccination.record``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from functools import cache
from typing import Any

from sharedcare.access.categories import classify
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.fhir.errors import Issue, Unprocessable
from sharedcare.fhir.service import register_write_rule
from sharedcare.fhir.session import AccessSession
from sharedcare.fhir.store import Write

LAB_RESULTS = "lab-results"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
PDF = "application/pdf"
INLINE_BYTES = 4 * 1024 * 1024
"""Largest PDF a report carries inline (``presentedForm.data``, kept in the resource): beyond it,
the PDF is an MHD document in the content store and the report points at its Binary."""
INTERPRETATION_CODES = frozenset(
    (
        *("<", ">", "A", "AA", "AC", "B", "CAR", "Carrier", "D", "DET", "E", "EX", "EXP", "H", "H>"),
        *("HH", "HU", "HX", "I", "IE", "IND", "L", "L<", "LL", "LU", "LX", "MS", "N", "NCL", "ND"),
        *("NEG", "NR", "NS", "POS", "QCF", "R", "RR", "S", "SDD", "SYN-R", "SYN-S", "TOX", "U"),
        *("UNE", "VS", "W", "WR"),
    )
)
"""The selectable codes of ``v3-ObservationInterpretation`` (FHIR R4, THO): the abstract grouping
codes (``_ObservationInterpretationNormality``…) are not results."""
REPORT_STATUSES_WITH_RESULTS = frozenset({"preliminary", "final", "amended", "corrected", "appended"})
"""A report in these states has results to reference (registered, partial, cancelled may not)."""
_LOINC_CODE = re.compile(r"(\d{1,7})-(\d)")
_BINARY_URL = re.compile(r"(?:https?://\S+/)?Binary/[A-Za-z0-9\-.]{1,64}")


def loinc_check_digit(number: str) -> int:
    """LOINC's mod-10 check digit of the digits before the dash (Luhn's algorithm)."""
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char) * (2 if position % 2 == 0 else 1)
        total += digit // 10 + digit % 10
    return (10 - total % 10) % 10


def is_loinc_code(code: Any) -> bool:
    """``code`` has LOINC's form (``2345-7``) and its check digit is right."""
    m = _LOINC_CODE.fullmatch(code) if isinstance(code, str) else None
    return m is not None and loinc_check_digit(m.group(1)) == int(m.group(2))


@cache
def _ucum_parser() -> Any:
    """The UCUM grammar (``ucumvert``, a Lark parser), loaded on first use: its import takes half a
    second that the application's start-up need not pay."""
    from ucumvert import get_ucum_parser

    return get_ucum_parser()


def ucum_problem(code: str) -> str | None:
    """Why ``code`` is not a UCUM unit expression (None: it is)."""
    from lark.exceptions import LarkError

    if not code.strip() or code != code.strip():
        return f"the UCUM code {code!r} is empty or has spaces"
    try:
        _ucum_parser().parse(code)
    except LarkError as exc:
        where = getattr(exc, "column", None)
        at = f" (at character {where})" if isinstance(where, int) and where > 0 else ""
        return f"{code!r} is not a UCUM unit expression{at}"
    return None


def _codings(concept: Any) -> list[Mapping[str, Any]]:
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    return [c for c in codings if isinstance(c, Mapping)] if isinstance(codings, list) else []


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class _Problems:
    """The problems of one resource, each with the FHIRPath of its element."""

    def __init__(self, rtype: str) -> None:
        self.rtype = rtype
        self.issues: list[Issue] = []

    def add(self, path: str, text: str, code: str = "business-rule") -> None:
        self.issues.append(Issue("error", code, text, (f"{self.rtype}.{path}",)))


def _check_code(res: Mapping[str, Any], out: _Problems) -> None:
    loinc = [c for c in _codings(res.get("code")) if c.get("system") == LOINC]
    if not loinc:
        out.add("code", f"the test must be coded in LOINC (a coding of system {LOINC})", "code-invalid")
    for coding in loinc:
        if not is_loinc_code(coding.get("code")):
            out.add(
                "code",
                f"{coding.get('code')!r} is not a LOINC code (digits, a dash and the check digit, as 2345-7)",
                "code-invalid",
            )


def _check_unit(quantity: Mapping[str, Any], path: str, out: _Problems) -> str | None:
    """Check a Quantity's UCUM unit; its code when it is acceptable."""
    code = quantity.get("code")
    if quantity.get("system") != UCUM:
        out.add(f"{path}.system", f"the unit must be a UCUM unit (system {UCUM})", "code-invalid")
    if not isinstance(code, str):
        out.add(f"{path}.code", "the unit needs its UCUM code (code), not only a display unit", "required")
        return None
    problem = ucum_problem(code)
    if problem is not None:
        out.add(f"{path}.code", problem, "code-invalid")
        return None
    return code


def _check_value(res: Mapping[str, Any], out: _Problems) -> str | None:
    """Check ``valueQuantity``; its unit code when acceptable (the reference ranges' unit)."""
    quantity = res.get("valueQuantity")
    if not isinstance(quantity, Mapping):
        return None
    if _number(quantity.get("value")) is None:
        out.add("valueQuantity.value", "a quantity result needs its value", "required")
    return _check_unit(quantity, "valueQuantity", out)


def _check_ranges(res: Mapping[str, Any], value_unit: str | None, out: _Problems) -> None:
    """Each range's limits in UCUM, in the value's unit (when that one is acceptable), low ≤ high."""
    for i, rng in enumerate(res.get("referenceRange") or ()):
        if not isinstance(rng, Mapping):
            continue
        limits: dict[str, tuple[float | None, str | None]] = {}
        for side in ("low", "high"):
            limit = rng.get(side)
            if not isinstance(limit, Mapping):
                continue
            path = f"referenceRange[{i}].{side}"
            code = _check_unit(limit, path, out)
            limits[side] = (_number(limit.get("value")), code)
            if code is not None and isinstance(value_unit, str) and code != value_unit:
                out.add(
                    f"{path}.code",
                    f"the reference range is in {code!r} but the value in {value_unit!r}: "
                    "give the limits in the unit of the value",
                )
        low, high = limits.get("low"), limits.get("high")
        if low and high and low[1] is not None and high[1] is not None and low[1] != high[1]:
            text = f"the low ({low[1]!r}) and high ({high[1]!r}) limits differ in unit"
            out.add(f"referenceRange[{i}]", text)
        elif low and high and low[0] is not None and high[0] is not None and low[0] > high[0]:
            text = f"the low limit ({low[0]:g}) is above the high limit ({high[0]:g})"
            out.add(f"referenceRange[{i}]", text)


def _check_interpretation(res: Mapping[str, Any], out: _Problems) -> None:
    for i, concept in enumerate(res.get("interpretation") or ()):
        codings = _codings(concept)
        ours = [c for c in codings if c.get("system") == INTERPRETATION]
        if not ours:
            out.add(
                f"interpretation[{i}]",
                f"the interpretation must be coded in {INTERPRETATION} (H, L, N, A, HH, LL…)",
                "code-invalid",
            )
        for coding in ours:
            if coding.get("code") not in INTERPRETATION_CODES:
                out.add(
                    f"interpretation[{i}]",
                    f"{coding.get('code')!r} is not a code of v3-ObservationInterpretation "
                    "(H, L, N, A, HH, LL…)",
                    "code-invalid",
                )


def observation_problems(res: Mapping[str, Any]) -> list[Issue]:
    """Every problem of a laboratory Observation (empty: acceptable)."""
    out = _Problems("Observation")
    _check_code(res, out)
    _check_ranges(res, _check_value(res, out), out)
    _check_interpretation(res, out)
    return out.issues


def _reference_type(reference: Any) -> str | None:
    """The resource type a literal reference names (``Observation/1``, ``[base]/Observation/1``)."""
    if not isinstance(reference, str):
        return None
    parts = reference.rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 and parts[-2][:1].isupper() else None


def _check_form(form: Mapping[str, Any], path: str, out: _Problems) -> None:
    """The laboratory's PDF: its type, and its size and hash against the bytes (or the Binary)."""
    if form.get("contentType") != PDF:
        out.add(f"{path}.contentType", f"the laboratory's report is a PDF: contentType must be {PDF}")
    size, digest, data, url = form.get("size"), form.get("hash"), form.get("data"), form.get("url")
    if not isinstance(size, int) or isinstance(size, bool):
        out.add(f"{path}.size", "the size of the PDF (in bytes) is required", "required")
        size = None
    if not isinstance(digest, str):
        out.add(f"{path}.hash", "the hash of the PDF (base64 SHA-1) is required", "required")
        digest = None
    if data is None:
        if not isinstance(url, str) or not _BINARY_URL.fullmatch(url):
            out.add(
                path,
                "the PDF must be inline (data) or the Binary of a document filed on this server "
                "(url [base]/Binary/[id])",
                "required",
            )
        return
    try:
        content = base64.b64decode(data, validate=True) if isinstance(data, str) else None
    except (binascii.Error, ValueError):
        content = None
    if content is None:
        out.add(f"{path}.data", "the data is not valid base64", "invalid")
        return
    if len(content) > INLINE_BYTES:
        out.add(
            f"{path}.data",
            f"a PDF over {INLINE_BYTES} bytes is filed as a document (IHE MHD ITI-65) and "
            "referenced by its Binary url, not carried inline",
            "too-costly",
        )
    if not content.startswith(b"%PDF-"):
        out.add(f"{path}.data", "the content is not a PDF (it does not start with %PDF-)", "invalid")
    if size is not None and size != len(content):
        out.add(f"{path}.size", f"size {size} does not match the content ({len(content)} bytes)", "invalid")
    sha1 = base64.b64encode(hashlib.sha1(content).digest()).decode()
    if digest is not None and digest != sha1:
        out.add(f"{path}.hash", f"hash {digest} is not the base64 SHA-1 of the content ({sha1})", "invalid")


def report_problems(res: Mapping[str, Any]) -> list[Issue]:
    """Every problem of a laboratory DiagnosticReport (empty: acceptable)."""
    out = _Problems("DiagnosticReport")
    for coding in _codings(res.get("code")):
        if coding.get("system") == LOINC and not is_loinc_code(coding.get("code")):
            out.add("code", f"{coding.get('code')!r} is not a LOINC code", "code-invalid")
    results = [r for r in res.get("result") or () if isinstance(r, Mapping)]
    if not results and res.get("status") in REPORT_STATUSES_WITH_RESULTS:
        out.add("result", "a laboratory report references its results (Observations) in result", "required")
    for i, ref in enumerate(results):
        kind = _reference_type(ref.get("reference"))
        if kind != "Observation":
            out.add(f"result[{i}]", f"a result is an Observation, not {ref.get('reference')!r}", "invalid")
    for i, form in enumerate(res.get("presentedForm") or ()):
        if isinstance(form, Mapping):
            _check_form(form, f"presentedForm[{i}]", out)
    return out.issues


def _principal(session: AccessSession | None) -> Principal | None:
    p = getattr(session, "principal", None)
    return p if isinstance(p, Principal) else None


def check(w: Write, session: AccessSession | None) -> None:
    """The write rule of ``Observation`` and ``DiagnosticReport``: laboratory results only."""
    res = w.resource
    p = _principal(session)
    if res is None or session is None or (p is not None and p.kind is PrincipalKind.SYSTEM and p.trusted):
        return
    if classify(res) != LAB_RESULTS:
        return
    issues = observation_problems(res) if w.type == "Observation" else report_problems(res)
    if issues:
        text = "; ".join(f"{i.expression[0]}: {i.diagnostics}" for i in issues)
        raise Unprocessable(f"{w.type}/{w.id} is not an acceptable laboratory result: {text}", issues=issues)


register_write_rule("Observation", check, after_access=True)
register_write_rule("DiagnosticReport", check, after_access=True)
