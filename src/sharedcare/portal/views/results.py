"""Laboratory results in the portal: a table grouped by report, and per analyte a trend chart.

``/portal/results`` (holder's side) and ``/portal/pro/patients/[id]/results`` list the record's
laboratory Observations (data category ``lab-results``) under the DiagnosticReport that lists
them, with value and unit, reference range, the interpretation flag (the laboratory's, else
worked out from the range) and the laboratory. Everything is read through the reader's access
decision, like the timeline (``timeline.open_record``).

An analyte's trend is ``…/results/[key]``. A LOINC code in a URL is health data ("2339-0" says
someone's glucose was measured), so the key is opaque: an HMAC of the analyte's code under the
server's session secret, the sign-in session and the record. It means nothing outside this
session, cannot be turned back into a code, and a bookmark of it stops working at sign-out.
The chart (``portal.charts``) shows ``valueQuantity`` results only, one chart per unit; other
values are listed under it, and a table gives every charted value for screen readers.

A report's PDF (``presentedForm``: the Binary the laboratory's PDF was filed as, ITI-68) is
linked from its card: ``…/results/reports/[id]/pdf`` reads the report and then the Binary through
the reader's session, as the document viewer serves a document's content (decided, audited).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from babel.numbers import format_decimal
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from markupsafe import Markup

from sharedcare.access.categories import LOINC
from sharedcare.access.policy import category_of
from sharedcare.access.requests import is_pending
from sharedcare.documents.mhd import literal
from sharedcare.fhir.errors import FhirError
from sharedcare.oauth.keys import session_secret
from sharedcare.portal import charts, csrf, records
from sharedcare.portal.deps import holder_side, professional
from sharedcare.portal.i18n import N_, Translator
from sharedcare.portal.pages import language, render
from sharedcare.portal.sessions import PortalError, PortalUser
from sharedcare.portal.views.documents import Opened, content_response
from sharedcare.portal.views.timeline import OpenRecord, open_record

router = APIRouter(dependencies=[Depends(csrf.require_csrf)])
LAB = "lab-results"
PDF = "application/pdf"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
FLAG_CODES = {"H": "H", "HH": "HH", "HU": "HH", ">": "H", "L": "L", "LL": "LL", "LU": "LL", "<": "L"}
FLAG_CODES |= {"N": "N", "A": "A", "AA": "A"}
"""Interpretation codes (v3 ObservationInterpretation) → the flags the table shows."""
FLAGS = {
    "H": N_("High"),
    "HH": N_("Very high"),
    "L": N_("Low"),
    "LL": N_("Very low"),
    "N": N_("Normal"),
    "A": N_("Abnormal"),
}
HIGH, LOW = frozenset({"H", "HH"}), frozenset({"L", "LL"})
NOT_FOUND = N_("This result is not in the record, or you have no access to it.")
KEY_LENGTH = 24
KEY = re.compile(f"[0-9a-f]{{{KEY_LENGTH}}}")
EARLIEST = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class LabResult:
    """One laboratory Observation as the table and the chart use it."""

    reference: str
    analyte: str
    """The analyte's identity: ``system|code`` (LOINC first), else ``text|`` and its name."""
    name: str
    when: datetime | None
    number: float | None
    """``valueQuantity.value``."""
    comparator: str
    text: str
    """A value that is not a quantity, as text."""
    unit: str
    unit_key: str
    low: float | None
    high: float | None
    range_text: str
    flag: str
    performer: str
    pending: bool = False

    @property
    def quantity(self) -> float | None:
        """The value to chart: a ``valueQuantity`` without comparator; None for anything else."""
        return self.number if not self.comparator else None

    @property
    def out_of_range(self) -> bool:
        if self.quantity is not None and (self.low is not None or self.high is not None):
            return (self.low is not None and self.quantity < self.low) or (
                self.high is not None and self.quantity > self.high
            )
        return self.flag in HIGH | LOW


@dataclass(slots=True)
class Report:
    """A DiagnosticReport with the results it lists (None: results outside any report)."""

    reference: str | None
    title: str
    when: datetime | None
    performer: str
    results: list[LabResult] = field(default_factory=list)
    pdf: bool = False
    """The report carries the laboratory's PDF (``presentedForm``), linked from its card."""


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _quantity(res: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = res.get(key)
    return value if isinstance(value, Mapping) else {}


def _analyte(res: Mapping[str, Any]) -> tuple[str, str]:
    """``(identity, name)`` of an Observation's code."""
    code = _quantity(res, "code")
    codings = [c for c in code.get("coding") or () if isinstance(c, Mapping) and c.get("code")]
    codings.sort(key=lambda c: c.get("system") != LOINC)
    name = str(code.get("text") or next((c.get("display") for c in codings if c.get("display")), "") or "")
    if codings:
        first = codings[0]
        return f"{first.get('system') or ''}|{first['code']}", name or str(first["code"])
    return f"text|{name.strip().casefold()}", name


def _flag(res: Mapping[str, Any], value: float | None, low: float | None, high: float | None) -> str:
    for concept in res.get("interpretation") or ():
        for coding in concept.get("coding") or () if isinstance(concept, Mapping) else ():
            if isinstance(coding, Mapping) and coding.get("system") in (INTERPRETATION, None):
                found = FLAG_CODES.get(str(coding.get("code")))
                if found:
                    return found
    if value is None or (low is None and high is None):
        return ""
    if high is not None and value > high:
        return "H"
    if low is not None and value < low:
        return "L"
    return "N"


def _reference(value: Any) -> str:
    """A Reference's ``reference`` (``Type/id``), else its display."""
    if not isinstance(value, Mapping):
        return ""
    return str(value.get("reference") or value.get("display") or "")


def lab_result(reference: str, res: Mapping[str, Any], pending: bool = False) -> LabResult:
    """A laboratory Observation read for the table and the chart."""
    analyte, name = _analyte(res)
    quantity = _quantity(res, "valueQuantity")
    comparator = str(quantity.get("comparator") or "")
    number = _number(quantity.get("value"))
    unit = str(quantity.get("unit") or quantity.get("code") or "")
    unit_key = str(quantity.get("code") or quantity.get("unit") or "")
    text = ""
    if not quantity:
        concept = _quantity(res, "valueCodeableConcept")
        codings = concept.get("coding") or ()
        display = next((c.get("display") for c in codings if isinstance(c, Mapping) and c.get("display")), "")
        for candidate in (res.get("valueString"), concept.get("text"), display, res.get("valueInteger")):
            if candidate is not None and candidate != "":
                text = str(candidate)
                break
        if isinstance(res.get("valueBoolean"), bool) and not text:
            text = str(res["valueBoolean"]).lower()
    ranges = [r for r in res.get("referenceRange") or () if isinstance(r, Mapping)]
    first = ranges[0] if ranges else {}
    low_q, high_q = _quantity(first, "low"), _quantity(first, "high")
    low, high = _number(low_q.get("value")), _number(high_q.get("value"))
    range_unit = str(low_q.get("code") or low_q.get("unit") or high_q.get("code") or high_q.get("unit") or "")
    if range_unit and unit_key and range_unit != unit_key:  # limits in another unit: shown, not compared
        low = high = None
    performers = res.get("performer") or ()
    performer = next((_reference(p) for p in performers if _reference(p)), "")
    return LabResult(
        reference=reference,
        analyte=analyte,
        name=name,
        when=records.when_of(dict(res)),
        number=number,
        comparator=comparator,
        text=text if not quantity else "",
        unit=unit,
        unit_key=unit_key,
        low=low,
        high=high,
        range_text=str(first.get("text") or ""),
        flag=_flag(res, number if not comparator else None, low, high),
        performer=performer,
        pending=pending,
    )


def laboratory(record: OpenRecord) -> tuple[list[Report], list[LabResult]]:
    """The record's laboratory reports (newest first, each with its results) and every result."""
    results: dict[str, LabResult] = {}
    reports: list[tuple[str, dict[str, Any]]] = []
    for stored, res in record.resources():
        if category_of(res) != LAB:
            continue
        reference = f"{stored.type}/{stored.id}"
        if stored.type == "Observation":
            results[reference] = lab_result(reference, res, pending=is_pending(res))
        elif stored.type == "DiagnosticReport":
            reports.append((reference, res))
    grouped: list[Report] = []
    listed: set[str] = set()
    for reference, res in reports:
        report = Report(
            reference,
            records.title_of(res),
            records.when_of(res),
            next((_reference(p) for p in res.get("performer") or () if _reference(p)), ""),
            pdf=_pdf_form(res) is not None,
        )
        for ref in res.get("result") or ():
            target = _reference(ref)
            if target in results and target not in listed:
                report.results.append(results[target])
                listed.add(target)
        grouped.append(report)
    rest = [r for ref, r in results.items() if ref not in listed]
    if rest:
        grouped.append(Report(None, "", None, "", rest))
    for report in grouped:
        if report.when is None and report.results:
            report.when = max((r.when for r in report.results if r.when), default=None)
        if report.reference is None:
            report.results.sort(key=_newest, reverse=True)
    grouped.sort(key=lambda r: (r.reference is not None, r.when or EARLIEST), reverse=True)
    return grouped, list(results.values())


def _pdf_form(res: Mapping[str, Any]) -> dict[str, Any] | None:
    """The report's PDF: its first ``presentedForm`` of type PDF with a Binary ``url`` (or, filed
    before the PDFs went to the content store, inline ``data``)."""
    for form in res.get("presentedForm") or ():
        if not isinstance(form, Mapping) or str(form.get("contentType", "")).split(";")[0] != PDF:
            continue
        if "/Binary/" in f"/{form.get('url') or ''}" or form.get("data"):
            return dict(form)
    return None


def _newest(result: LabResult) -> datetime:
    return result.when or EARLIEST


def analyte_keys(request: Request, user: PortalUser, record: OpenRecord) -> Callable[[str], str]:
    """Analyte → its opaque, per-session key in this record (see the module docstring)."""
    secret = session_secret(request.app.state.settings).encode()

    def key(analyte: str) -> str:
        message = "\x00".join(("portal-analyte", user.session.id, record.patient_id, analyte)).encode()
        return hmac.new(secret, message, hashlib.sha256).hexdigest()[:KEY_LENGTH]

    return key


def _presenter(t: Translator, names: Mapping[str, str]) -> dict[str, Callable[..., Any]]:
    """Formatting helpers of the results pages, in the reader's language."""

    def number(value: float | None) -> str:
        return "" if value is None else format_decimal(value, locale=t.lang, decimal_quantization=False)

    def value(r: LabResult) -> str:
        if r.text:
            return r.text
        shown = f"{r.comparator}{number(r.number)}" if r.number is not None else "—"
        return f"{shown} {r.unit}".strip()

    def reference_range(r: LabResult) -> str:
        if r.low is not None and r.high is not None:
            return f"{number(r.low)} \N{EN DASH} {number(r.high)} {r.unit}".strip()
        if r.low is not None:
            return f"≥ {number(r.low)} {r.unit}".strip()
        if r.high is not None:
            return f"≤ {number(r.high)} {r.unit}".strip()
        return r.range_text

    def who(reference: str) -> str:
        return names.get(reference) or ("" if "/" in reference else reference)

    return {
        "number": number,
        "value_text": value,
        "range_text": reference_range,
        "lab_name": who,
        "flag_label": lambda code: t.gettext(FLAGS[code]) if code in FLAGS else "",
    }


def _lab_names(request: Request, items: list[LabResult], reports: list[Report]) -> dict[str, str]:
    refs = {r.performer for r in items} | {r.performer for r in reports}
    return records.directory_names(request, {r for r in refs if r})


@router.get("/results")
def results_page(request: Request, user: PortalUser = Depends(holder_side)) -> Response:
    return _results(request, user, open_record(request, user))


@router.get("/pro/patients/{patient_id}/results")
def pro_results_page(request: Request, patient_id: str, user: PortalUser = Depends(professional)) -> Response:
    return _results(request, user, open_record(request, user, patient_id))


def _results(request: Request, user: PortalUser, record: OpenRecord) -> Response:
    t = Translator(language(request, user))
    reports, found = laboratory(record)
    key = analyte_keys(request, user, record)
    keys = {analyte: key(analyte) for analyte in {r.analyte for r in found}}
    context = {
        "record": record,
        "patient": record.patient,
        "reports": reports,
        "keys": keys,
        **_presenter(t, _lab_names(request, found, reports)),
    }
    return render(request, "results.html", context, user=user)


@router.get("/results/reports/{report_id}/pdf")
def report_pdf(request: Request, report_id: str, user: PortalUser = Depends(holder_side)) -> Response:
    return _report_pdf(request, user, report_id, None)


@router.get("/pro/patients/{patient_id}/results/reports/{report_id}/pdf")
def pro_report_pdf(
    request: Request, patient_id: str, report_id: str, user: PortalUser = Depends(professional)
) -> Response:
    return _report_pdf(request, user, report_id, patient_id)


def _report_pdf(request: Request, user: PortalUser, report_id: str, patient_id: str | None) -> Response:
    """The PDF of a laboratory report of the record the page is about, as the reader may see it:
    the report read through their session (a report of another record, held back from the
    holder, or not theirs to read is "not found"), then its Binary through the document viewer's
    ``content_response`` (the access decision again, the audit, the safe headers)."""
    service = records.view(request, user)
    record = user.record if patient_id is None else patient_id
    try:
        res = service.read("DiagnosticReport", report_id).resource()
    except FhirError:
        raise PortalError(404, NOT_FOUND) from None
    subject = literal((res.get("subject") or {}).get("reference"))
    form = _pdf_form(res)
    if record is None or subject != ("Patient", record) or form is None or category_of(res) != LAB:
        raise PortalError(404, NOT_FOUND)
    if patient_id is None and is_pending(res):
        raise PortalError(404, NOT_FOUND)
    base = "/portal" if patient_id is None else f"/portal/pro/patients/{patient_id}"
    content = {"content": [{"attachment": form}]}  # the viewer reads a document's first attachment
    return content_response(request, Opened(service, report_id, content, base))


@router.get("/results/{key}")
def analyte_page(request: Request, key: str, user: PortalUser = Depends(holder_side)) -> Response:
    return _analyte_page(request, user, open_record(request, user), key)


@router.get("/pro/patients/{patient_id}/results/{key}")
def pro_analyte_page(
    request: Request, patient_id: str, key: str, user: PortalUser = Depends(professional)
) -> Response:
    return _analyte_page(request, user, open_record(request, user, patient_id), key)


@dataclass(frozen=True, slots=True)
class UnitChart:
    """The chart of one analyte's results in one unit, and the results it shows."""

    unit: str
    results: list[LabResult]
    svg: Markup
    out_of_range: int


def _analyte_page(request: Request, user: PortalUser, record: OpenRecord, key: str) -> Response:
    t = Translator(language(request, user))
    if not KEY.fullmatch(key):
        raise PortalError(404, NOT_FOUND)
    _reports, found = laboratory(record)
    keys = analyte_keys(request, user, record)
    wanted = next((a for a in {r.analyte for r in found} if hmac.compare_digest(keys(a), key)), None)
    mine = [r for r in found if r.analyte == wanted]
    if not mine:
        raise PortalError(404, NOT_FOUND)
    mine.sort(key=_newest)
    name = next((r.name for r in reversed(mine) if r.name), "")
    present = _presenter(t, _lab_names(request, mine, []))
    by_unit: dict[str, list[LabResult]] = {}
    for r in mine:
        if r.quantity is not None and r.when is not None:
            by_unit.setdefault(r.unit_key, []).append(r)
    graphs = [
        _unit_chart(t, present, name, results, index)
        for index, results in enumerate(by_unit.values(), start=1)
    ]
    context = {
        "record": record,
        "patient": record.patient,
        "name": name,
        "charts": graphs,
        "others": [r for r in reversed(mine) if r.quantity is None or r.when is None],
        **present,
    }
    return render(request, "analyte.html", context, user=user)


def _unit_chart(
    t: Translator, present: Mapping[str, Callable[..., Any]], name: str, results: list[LabResult], index: int
) -> UnitChart:
    number = present["number"]
    unit = results[0].unit
    points = [
        charts.Point(
            r.when,
            r.quantity,
            r.low,
            r.high,
            f"{t.date(r.when)}: {present['value_text'](r)}",
        )
        for r in results
        if r.when is not None and r.quantity is not None
    ]
    chart = charts.trend_chart(points)
    unit_words = unit or t.gettext("no unit given")
    title = t.gettext("Trend of %(name)s (%(unit)s)", name=name, unit=unit_words)
    first, last = points[0].when, points[-1].when
    if len(points) == 1:
        spread = t.gettext("One result, on %(date)s.", date=t.date(first))
    else:
        spread = " ".join(
            (
                t.ngettext(
                    "%(n)s result from %(first)s to %(last)s.",
                    "%(n)s results from %(first)s to %(last)s.",
                    len(points),
                    first=t.date(first),
                    last=t.date(last),
                ),
                t.gettext(
                    "Values from %(low)s to %(high)s.",
                    low=number(min(p.value for p in points)),
                    high=number(max(p.value for p in points)),
                ),
            )
        )
    notes = [spread]
    if chart.bands:
        notes.append(t.gettext("The shaded band is the reference range."))
    if chart.out_of_range:
        notes.append(
            t.ngettext(
                "%(n)s result outside the reference range is drawn as a diamond.",
                "%(n)s results outside the reference range are drawn as diamonds.",
                chart.out_of_range,
            )
        )
    description = " ".join(notes)
    svg = charts.render_svg(
        chart,
        ident=f"chart-{index}",
        title=title,
        description=description,
        number=number,
        date=t.date,
        unit=unit,
    )
    return UnitChart(unit_words, results, svg, chart.out_of_range)
