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

An inline PDF does not stay in the report: before the write transaction (``create_report``,
``update_report``, ``file_transaction``, called by the API for ``POST``/``PUT`` and transaction
Bundles, as ITI-65 is), the checks the transaction will make are made, the bytes go to the content
store under the patient's key (``documents.submission._store``), and the report is written with
the attachment pointing at a new Binary (``url``, ``size``, ``hash``; no ``data``) whose
``securityContext`` is the report and whose category tag and ``meta.security`` are the report's
(``documents.content.stored_binary``); ITI-68 serves it, purging the record shreds it. A batch
Bundle routes each such entry alone (``file_batch``). The Binaries are written after the report
in the same transaction, only when the stored report names them (a conditional create that found
another report adds none), the blobs held against an expiry of the same bytes
(``submission.hold_blobs``). Where the bytes would reach the store inside a write transaction (a
JSON Patch, a conditional update), the write rule ``inline_form_refused`` refuses them (422).

Every problem of a resource is named in one 422 OperationOutcome; the transaction then stores
nothing. The agency's own writes (trusted clients: imports of Synthea and registries, the demo)
are taken as they come, as for ``vaccination.record``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

from sqlalchemy import Connection

from sharedcare.access.categories import classify
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.documents.content import stored_binary
from sharedcare.documents.mhd import Content, literal
from sharedcare.documents.submission import _store, hold_blobs
from sharedcare.fhir.bundle import STATUS_TEXT, BundleProcessor, GetHandler, parse_entries
from sharedcare.fhir.errors import FhirError, Issue, NotFound, Unprocessable, operation_outcome
from sharedcare.fhir.service import FhirService, WriteOutcome, register_write_rule
from sharedcare.fhir.session import AccessSession
from sharedcare.fhir.store import Stored, Write, instant
from sharedcare.storage.blobstore import BlobStore

log = logging.getLogger(__name__)
LAB_RESULTS = "lab-results"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
PDF = "application/pdf"
INLINE_BYTES = 4 * 1024 * 1024
"""Largest PDF a report may carry inline in the request (``presentedForm.data``, moved to the content
store on write): beyond it, the PDF is filed first as an MHD document and the report points at it."""
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
    if not isinstance(digest, str):
        out.add(f"{path}.hash", "the hash of the PDF (base64 SHA-1) is required", "required")
    if data is None:
        if not isinstance(url, str) or not _BINARY_URL.fullmatch(url):
            out.add(
                path,
                "the PDF must be inline (data) or the Binary of a document filed on this server "
                "(url [base]/Binary/[id])",
                "required",
            )
        return
    content = _check_bytes(form, path, out)
    if content is None:
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


def _check_bytes(form: Mapping[str, Any], path: str, out: _Problems) -> bytes | None:
    """The inline bytes of an attachment, checked against the ``size`` and ``hash`` it gives
    (either may be absent); None when they are not valid base64."""
    data, size, digest = form.get("data"), form.get("size"), form.get("hash")
    try:
        content = base64.b64decode(data, validate=True) if isinstance(data, str) else None
    except (binascii.Error, ValueError):
        content = None
    if content is None:
        out.add(f"{path}.data", "the data is not valid base64", "invalid")
        return None
    if isinstance(size, int) and not isinstance(size, bool) and size != len(content):
        out.add(f"{path}.size", f"size {size} does not match the content ({len(content)} bytes)", "invalid")
    sha1 = base64.b64encode(hashlib.sha1(content).digest()).decode()
    if isinstance(digest, str) and digest != sha1:
        out.add(f"{path}.hash", f"hash {digest} is not the base64 SHA-1 of the content ({sha1})", "invalid")
    return content


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


# -- the PDF to the content store (before the write transaction) -------------------------------
@dataclass(slots=True)
class _Pdf:
    """An inline ``presentedForm`` moved to the content store, and the Binary that names it."""

    content: Content
    binary: dict[str, Any]


@dataclass(slots=True)
class _Report:
    """A report to write with its forms pointing at Binaries, and those Binaries' contents."""

    resource: dict[str, Any]
    patient_id: str
    problems: list[Issue]
    pdfs: list[_Pdf] = field(default_factory=list)


def _inline_forms(res: Any) -> list[tuple[int, Mapping[str, Any]]]:
    forms = res.get("presentedForm") if isinstance(res, Mapping) else None
    return [
        (i, f)
        for i, f in enumerate(forms if isinstance(forms, list) else ())
        if isinstance(f, Mapping) and f.get("data") is not None
    ]


def carries_inline_form(res: Any) -> bool:
    """``res`` is a DiagnosticReport with bytes inline in ``presentedForm`` (``data``)."""
    return (
        isinstance(res, Mapping)
        and res.get("resourceType") == "DiagnosticReport"
        and bool(_inline_forms(res))
    )


def carries_inline_forms(bundle: Any) -> bool:
    """``bundle`` is a transaction or batch creating or updating such a DiagnosticReport."""
    entries = bundle.get("entry") if isinstance(bundle, Mapping) else None
    return (
        bundle.get("type") in ("transaction", "batch")
        and isinstance(entries, list)
        and any(isinstance(e, Mapping) and carries_inline_form(e.get("resource")) for e in entries)
    )


def _prepare(res: Mapping[str, Any], patient_id: str | None, context: str, base_url: str) -> _Report:
    """The report with each inline form replaced by a pointer at a new Binary (``url``, ``size``,
    ``hash``; no ``data``), and those Binaries: ``securityContext`` ``context`` (the report, or
    its fullUrl in a transaction), the report's category and ``meta.security``. Bytes that do not
    match the ``size`` or ``hash`` given, or a report naming no patient of this server to file
    them under, are ``problems`` (raised after the access check, by ``_precheck``)."""
    out = _Problems("DiagnosticReport")
    report = copy.deepcopy(dict(res))
    prepared = _Report(report, patient_id or "", out.issues)
    if patient_id is None:
        out.add("subject", "a report carrying its PDF inline must name its Patient (subject)", "required")
    category = classify(report) or LAB_RESULTS
    meta = report.get("meta")
    security = [
        {"system": c["system"], "code": c["code"]}
        for c in (meta.get("security") or () if isinstance(meta, Mapping) else ())
        if isinstance(c, Mapping) and c.get("system") and c.get("code")
    ]
    for i, form in _inline_forms(res):
        data = _check_bytes(form, f"presentedForm[{i}]", out)
        if data is None or patient_id is None:
            continue
        content, binary_id = Content.of(data), str(uuid.uuid4())
        binary = stored_binary(
            binary_id=binary_id,
            content_type=str(form.get("contentType") or "application/octet-stream"),
            document_id="",
            patient_id=patient_id,
            category=category,
            content=content,
            security=security,
        )
        binary["securityContext"] = {"reference": context}
        attachment = {k: v for k, v in form.items() if k != "data"}
        attachment["url"] = f"{base_url}/Binary/{binary_id}" if base_url else f"Binary/{binary_id}"
        attachment["size"] = content.size
        attachment["hash"] = base64.b64encode(content.sha1).decode()
        report["presentedForm"][i] = attachment
        prepared.pdfs.append(_Pdf(content, binary))
    return prepared


def _subject(res: Mapping[str, Any], base_url: str, named: Mapping[str, str] | None = None) -> str | None:
    """The id of the report's Patient: a literal reference, or the fullUrl of a transaction's
    ``PUT Patient/[id]`` entry (``named``)."""
    reference = (
        (res.get("subject") or {}).get("reference") if isinstance(res.get("subject"), Mapping) else None
    )
    target = literal(reference, base_url)
    if target is not None:
        return target[1] if target[0] == "Patient" else None
    return (named or {}).get(str(reference))


def _precheck(svc: FhirService, conn: Connection, writes: list[Write], given: list[Write]) -> None:
    """What the write transaction will ask, asked before a blob is stored (a refused write leaves
    nothing behind), in the same order: the validation of ``writes`` (the reports pointing at
    their Binaries, the Binaries, other results), the caller's write check (403 before any
    content error), then the laboratory rules on what was ``given`` (a report's PDF as sent: a
    PDF, not too large, its bytes matching size and hash)."""
    for w in writes:
        assert w.resource is not None
        svc.check_resource(w.resource)
    if svc.session is not None:
        svc.session.check_writes(conn, writes)
    for w in given:
        check(w, svc.session)


def _raise_problems(prepared: _Report, rid: str) -> None:
    """The problems of a report's inline bytes that the laboratory rules do not name (a report of
    another category, or without a patient to file them under): one 422."""
    if prepared.problems:
        text = "; ".join(f"{i.expression[0]}: {i.diagnostics}" for i in prepared.problems)
        raise Unprocessable(
            f"DiagnosticReport/{rid}: the PDF cannot be filed: {text}", issues=prepared.problems
        )


def _binary_writes(prepared: _Report) -> list[Write]:
    return [Write("POST", "Binary", p.binary["id"], p.binary, None) for p in prepared.pdfs]


def _write_binaries(svc: FhirService, conn: Connection, stored: Stored, prepared: _Report) -> list[str]:
    """Create the Binaries the stored report points at (none when a conditional create found
    another report: its blobs stay unreachable, as a refused ITI-65 step 4's). Returns the
    digests of the blobs they name: those, and only those, the transaction must hold
    (``hold_blobs``); a blob no written Binary names may go with an expiry without harm."""
    urls = {str(f.get("url")) for f in stored.resource().get("presentedForm") or () if isinstance(f, Mapping)}
    written: list[str] = []
    for pdf in prepared.pdfs:
        if any(url.endswith(f"Binary/{pdf.binary['id']}") for url in urls):
            binary = {**pdf.binary, "securityContext": {"reference": f"DiagnosticReport/{stored.id}"}}
            svc.create_in(conn, binary, new_id=binary["id"])
            written.append(pdf.content.sha256)
    return written


def create_report(
    svc: FhirService,
    blobs: BlobStore,
    res: dict[str, Any],
    *,
    if_none_exist: str | None = None,
    base_url: str = "",
    max_size: int | None = None,
) -> WriteOutcome:
    """``POST [base]/DiagnosticReport`` of a report carrying its PDF inline: the bytes go to the
    content store under the patient's key, the report points at their Binary (ITI-68 serves it).
    Raises what ``FhirService.create`` raises; nothing is stored then."""
    if not carries_inline_form(res):
        return svc.create(res, if_none_exist=if_none_exist, base_url=base_url)
    rid = str(uuid.uuid4())
    prepared = _prepare(res, _subject(res, base_url), f"DiagnosticReport/{rid}", base_url)
    with svc.engine.connect() as conn:
        draft = Write("POST", "DiagnosticReport", rid, {**prepared.resource, "id": rid}, None)
        _precheck(
            svc, conn, [draft, *_binary_writes(prepared)], [replace(draft, resource={**res, "id": rid})]
        )
        _raise_problems(prepared, rid)
    _store(blobs, prepared.patient_id, [p.content for p in prepared.pdfs], max_size)
    with svc.transaction() as conn:
        outcome = svc.create_in(
            conn, prepared.resource, if_none_exist=if_none_exist, base_url=base_url, new_id=rid
        )
        hold_blobs(conn, blobs, prepared.patient_id, _write_binaries(svc, conn, outcome.stored, prepared))
    return outcome


def update_report(
    svc: FhirService,
    blobs: BlobStore,
    rid: str,
    res: dict[str, Any],
    *,
    if_match: str | None = None,
    base_url: str = "",
    max_size: int | None = None,
) -> WriteOutcome:
    """``PUT [base]/DiagnosticReport/[id]``, as ``create_report`` for its inline PDF."""
    if not carries_inline_form(res) or res.get("id") != rid:
        return svc.update("DiagnosticReport", rid, res, if_match=if_match)
    prepared = _prepare(res, _subject(res, base_url), f"DiagnosticReport/{rid}", base_url)
    with svc.engine.connect() as conn:
        current = svc.store.current(conn, "DiagnosticReport", rid)
        if current is not None and not svc.visible(conn, current):
            raise NotFound(f"Resource DiagnosticReport/{rid} is not known")
        draft = Write("PUT", "DiagnosticReport", rid, prepared.resource, current)
        _precheck(svc, conn, [draft, *_binary_writes(prepared)], [replace(draft, resource=res)])
        _raise_problems(prepared, rid)
    _store(blobs, prepared.patient_id, [p.content for p in prepared.pdfs], max_size)
    with svc.transaction() as conn:
        outcome = svc.update_in(conn, "DiagnosticReport", rid, prepared.resource, if_match=if_match)
        hold_blobs(conn, blobs, prepared.patient_id, _write_binaries(svc, conn, outcome.stored, prepared))
    return outcome


def file_transaction(
    svc: FhirService,
    blobs: BlobStore,
    bundle: dict[str, Any],
    *,
    base_url: str = "",
    max_size: int | None = None,
    get_handler: GetHandler | None = None,
) -> dict[str, Any]:
    """A transaction (or batch: ``file_batch``) Bundle whose DiagnosticReports carry PDFs inline:
    as ``create_report``, each PDF's Binary written in the same transaction once the processor
    has written the report, when the stored report names it (an ``ifNoneExist`` that found
    another report adds none, as ``_write_binaries`` has it); the response answers the request's
    entries only. A failure inside the transaction (another entry refused) leaves the blobs
    unreachable, as ITI-65's."""
    processor = BundleProcessor(svc, get_handler=get_handler)
    if not carries_inline_forms(bundle):
        return processor.process(bundle, base_url)
    if bundle.get("type") == "batch":
        return file_batch(svc, blobs, bundle, base_url=base_url, max_size=max_size, get_handler=get_handler)
    source = copy.deepcopy(bundle)
    entries: list[dict[str, Any]] = source["entry"]
    planned = _planned_ids(entries)
    patients = {full: ref.partition("/")[2] for full, ref in planned.items() if ref.startswith("Patient/")}
    reports: list[tuple[int, str, _Report]] = []  # (entry position, id for the checks, report)
    writes: list[Write] = []  # the results and reports the checks see before any blob is stored
    given: list[Write] = []
    for position, entry in enumerate(entries):
        res, request = entry.get("resource"), entry.get("request")
        if not isinstance(res, dict) or not isinstance(request, dict):
            continue
        method, url = request.get("method"), str(request.get("url", ""))
        if method not in ("POST", "PUT") or res.get("resourceType") not in (
            "DiagnosticReport",
            "Observation",
        ):
            continue
        rid = url.partition("/")[2] if method == "PUT" and "?" not in url else ""
        write_id = rid or str(uuid.uuid4())
        write = Write(
            str(method), str(res["resourceType"]), write_id, _resolved({**res, "id": write_id}, planned), None
        )
        given.append(write)
        if not carries_inline_form(res):
            writes.append(write)
            continue
        if not entry.get("fullUrl"):
            entry["fullUrl"] = f"DiagnosticReport/{rid}" if rid else f"urn:uuid:{uuid.uuid4()}"
        prepared = _prepare(res, _subject(res, base_url, patients), str(entry["fullUrl"]), base_url)
        entry["resource"] = prepared.resource
        draft = _resolved({**prepared.resource, "id": write_id}, planned)
        if prepared.patient_id:
            draft["subject"] = {"reference": f"Patient/{prepared.patient_id}"}
        writes.extend([replace(write, resource=draft), *_binary_writes(prepared)])
        reports.append((position, write_id, prepared))
    with svc.engine.connect() as conn:
        current = {(w.type, w.id): svc.store.current(conn, w.type, w.id) for w in writes if w.method == "PUT"}
        writes = [replace(w, current=current.get((w.type, w.id))) for w in writes]
        given = [replace(w, current=current.get((w.type, w.id))) for w in given]
        _precheck(svc, conn, writes, given)
        for _, rid, prepared in reports:
            _raise_problems(prepared, rid)
    for _, _, prepared in reports:
        _store(blobs, prepared.patient_id, [p.content for p in prepared.pdfs], max_size)
    with svc.transaction() as conn:
        responses = processor.transaction_in(conn, parse_entries(source), base_url)
        written: dict[str, set[str]] = {}  # patient id -> digests the Binaries written name
        for position, _, prepared in reports:
            location = str(responses[position]["response"].get("location", ""))
            rtype, _, rest = location.partition("/")
            stored = svc.store.current(conn, rtype, rest.partition("/")[0]) if rtype else None
            if stored is not None and not stored.deleted:
                digests = _write_binaries(svc, conn, stored, prepared)
                written.setdefault(prepared.patient_id, set()).update(digests)
        # Held once, after every report: in one order across the whole Bundle (record, then
        # digest), so two transactions naming the same PDFs in other orders cannot deadlock.
        for patient_id in sorted(written):
            hold_blobs(conn, blobs, patient_id, written[patient_id])
    return {"resourceType": "Bundle", "type": "transaction-response", "entry": responses}


def file_batch(
    svc: FhirService,
    blobs: BlobStore,
    bundle: dict[str, Any],
    *,
    base_url: str = "",
    max_size: int | None = None,
    get_handler: GetHandler | None = None,
) -> dict[str, Any]:
    """A batch Bundle: each entry on its own, as ``BundleProcessor.batch`` does; a ``POST
    DiagnosticReport`` (``ifNoneExist`` too) or ``PUT DiagnosticReport/[id]`` carrying its PDF
    inline goes through ``create_report`` / ``update_report`` (the PDF to the content store),
    its refusal that entry's answer. Other entries (a conditional update carrying a PDF inline
    among them: refused by the write rule, 422) are the processor's."""
    processor = BundleProcessor(svc, get_handler=get_handler)
    parsed = parse_entries(bundle)  # a malformed bundle is refused whole (400), as by the processor
    responses: list[dict[str, Any]] = []
    for e, raw in zip(parsed, bundle["entry"], strict=True):
        routed = (
            e.rtype == "DiagnosticReport"
            and e.query is None
            and ((e.method == "POST" and e.rid is None) or (e.method == "PUT" and e.rid is not None))
            and carries_inline_form(e.resource)
        )
        if not routed:
            single = processor.batch({"resourceType": "Bundle", "type": "batch", "entry": [raw]}, base_url)
            responses.append(single["entry"][0])
            continue
        assert e.resource is not None
        try:
            if e.rid is None:
                outcome = create_report(
                    svc,
                    blobs,
                    e.resource,
                    if_none_exist=e.if_none_exist,
                    base_url=base_url,
                    max_size=max_size,
                )
            else:
                outcome = update_report(
                    svc, blobs, e.rid, e.resource, if_match=e.if_match, base_url=base_url, max_size=max_size
                )
        except FhirError as err:
            responses.append({"response": {"status": str(err.status), "outcome": err.outcome()}})
            continue
        except Exception as exc:  # as the processor's batch: one entry's failure hides no other's
            log.exception("batch entry %s failed", e.index)
            failure = operation_outcome(
                [Issue("error", "exception", f"Internal error: {type(exc).__name__}")]
            )
            responses.append({"response": {"status": "500", "outcome": failure}})
            continue
        stored = outcome.stored
        response = {
            "status": STATUS_TEXT.get(outcome.status, str(outcome.status)),
            "location": f"{stored.type}/{stored.id}/_history/{stored.version}",
            "etag": stored.etag,
            "lastModified": instant(stored.last_updated),
        }
        responses.append({"response": response})
    return {"resourceType": "Bundle", "type": "batch-response", "entry": responses}


def _planned_ids(entries: list[dict[str, Any]]) -> dict[str, str]:
    """fullUrl → ``Type/id`` of the transaction's entries: the id a ``PUT Type/id`` names, a
    stand-in for what a POST will create (enough for the write checks)."""
    out: dict[str, str] = {}
    for entry in entries:
        res, request = entry.get("resource"), entry.get("request")
        full = entry.get("fullUrl")
        if not isinstance(full, str) or not isinstance(res, dict) or not isinstance(request, dict):
            continue
        rtype, url = str(res.get("resourceType")), str(request.get("url", ""))
        if request.get("method") == "PUT" and "?" not in url and url.startswith(f"{rtype}/"):
            out[full] = url
        else:
            out[full] = f"{rtype}/{uuid.uuid4()}"
    return out


def _resolved(node: Any, names: Mapping[str, str]) -> Any:
    """``node`` with the references ``names`` knows replaced (a copy)."""
    if isinstance(node, dict):
        return {
            k: names.get(v, v) if k == "reference" and isinstance(v, str) else _resolved(v, names)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_resolved(item, names) for item in node]
    return node


def inline_form_refused(w: Write, session: AccessSession | None) -> None:
    """The write rule that keeps a PDF's bytes out of stored reports: a DiagnosticReport reaching
    the store with ``presentedForm.data`` was not routed through the content store (``create_report``,
    ``update_report``, ``file_transaction`` strip it first). A JSON Patch (adding ``data``, or
    changing a report that still carries it) and a conditional update (``PUT
    DiagnosticReport?…``) cannot be routed, the bytes being known only inside the write
    transaction, where the store cannot write them (a record's data key may need a transaction of
    its own): refused, 422, saying how to send the PDF. The agency's trusted imports keep theirs."""
    res = w.resource
    p = _principal(session)
    if res is None or session is None or (p is not None and p.kind is PrincipalKind.SYSTEM and p.trusted):
        return
    forms = _inline_forms(res)
    if forms:
        issues = [
            Issue(
                "error",
                "business-rule",
                "a report's PDF is not kept inline: send the report with its PDF (presentedForm.data) "
                "by POST or PUT DiagnosticReport/[id], or in a transaction or batch Bundle, which move "
                "the bytes to the content store; or name the Binary of a document filed on this server "
                "(url [base]/Binary/[id])",
                (f"DiagnosticReport.presentedForm[{i}].data",),
            )
            for i, _ in forms
        ]
        raise Unprocessable(f"DiagnosticReport/{w.id}: {issues[0].diagnostics}", issues=issues)


register_write_rule("Observation", check, after_access=True)
register_write_rule("DiagnosticReport", inline_form_refused, after_access=True)  # first: whatever the bytes
register_write_rule("DiagnosticReport", check, after_access=True)
