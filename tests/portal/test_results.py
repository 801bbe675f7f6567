"""Laboratory results in the portal: the table by report, flags, the opaque analyte keys, and the
trend chart's geometry (points, reference bands, out-of-range marks) checked against known data."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from portal_http import sign_in
from portal_world import World
from record_content import GLUCOSE, glucose

from sharedcare.audit import log as audit
from sharedcare.documents import labresults
from sharedcare.portal import charts

Browser = Callable[[], TestClient]
DASH = "\N{EN DASH}"
RESULTS = "/portal/results"
PRO_RESULTS = "/portal/pro/patients/pa/results"
KEY_LINK = re.compile(r'<a class="analyte" href="([^"]+)">([^<]+)<')
BAND = re.compile(r'<rect class="band" x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)"')
CIRCLE = re.compile(r'<circle class="point" cx="([\d.]+)" cy="([\d.]+)"')
DIAMOND = re.compile(r'<path class="point out" data-x="([\d.]+)" data-y="([\d.]+)"')


def _link(html: str, name: str) -> str:
    links = {text: href for href, text in KEY_LINK.findall(html)}
    return links[name]


def _svgs(html: str) -> list[str]:
    return re.findall(r"<svg .*?</svg>", html, re.S)


def _rows(table: str) -> list[list[str]]:
    rows = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        if cells:
            rows.append([re.sub(r"<[^>]+>", "", c).strip() for c in cells])
    return rows


def test_results_are_grouped_by_report_with_flags(record: World, holder: TestClient) -> None:
    page = holder.get(RESULTS)
    assert page.status_code == 200
    sections = re.findall(r'<section class="card"[^>]*>(.*?)</section>', page.text, re.S)
    assert [re.search(r"<h2[^>]*>([^<]+)</h2>", s).group(1) for s in sections] == [  # type: ignore[union-attr]
        "Metabolic panel",
        "Results outside a report",
    ]
    panel = _rows(sections[0])
    assert panel == [
        [
            "Glucose [Mass/volume] in Blood — see the trend",
            "90 mg/dL",
            f"70 {DASH} 100 mg/dL",
            "Normal",
            "Jan 1, 2026",
            "Laboratoire Central",
        ],
        [
            "Glucose [Mass/volume] in Blood — see the trend",
            "120 mg/dL",
            f"70 {DASH} 100 mg/dL",
            "↑ High",
            "Feb 1, 2026",
            "Laboratoire Central",
        ],
    ]
    assert '<tr class="abnormal">' in sections[0] and 'class="flag flag-h"' in sections[0]
    outside = _rows(sections[1])
    assert [row[1] for row in outside] == [
        "Haemolysed sample",
        "5 mmol/L",
        "95 mg/dL",
        "5.4 mmol/L",
        "5.4 mmol/L",
    ]
    assert outside[2][2] == f"70 {DASH} 110 mg/dL"
    assert "Metabolic panel" in page.text.split("Feb 1, 2026 — Laboratoire Central")[0]


def test_results_in_french_use_its_numbers_and_words(record: World, holder: TestClient) -> None:
    from sharedcare.identity import accounts

    with accounts.transaction(record.engine) as conn:
        accounts.set_language(conn, record.patient.account_id, "fr")
    page = holder.get(RESULTS).text
    assert "Résultats de laboratoire" in page and "↑ Élevé" in page and "5,4 mmol/L" in page


def test_analyte_keys_are_opaque_and_per_session(record: World, holder: TestClient, browser: Browser) -> None:
    page = holder.get(RESULTS).text
    hrefs = [href for href, _text in KEY_LINK.findall(page)]
    assert hrefs and all(re.fullmatch(r"/portal/results/[0-9a-f]{24}", h) for h in hrefs)
    assert GLUCOSE not in "".join(re.findall(r'(?:href|action)="([^"]+)"', page))
    glucose_url = _link(page, "Glucose [Mass/volume] in Blood")
    assert len(set(hrefs)) == 3  # glucose (2339-0), the world's glucose (2345-7), haemoglobin
    assert holder.get(glucose_url).status_code == 200
    # another sign-in session gets other keys; this one's key means nothing there
    other = browser()
    sign_in(other, record.patient, offset_steps=1)
    assert _link(other.get(RESULTS).text, "Glucose [Mass/volume] in Blood") != glucose_url
    refused = other.get(glucose_url)
    assert refused.status_code == 404 and "This result is not in the record" in refused.text
    for key in ("0" * 24, "é" * 24, glucose_url.rsplit("/", 1)[1].upper(), "x"):
        assert holder.get(f"/portal/results/{key}").status_code == 404


def test_trend_chart_geometry_for_known_data(record: World, holder: TestClient) -> None:
    page = holder.get(_link(holder.get(RESULTS).text, "Glucose [Mass/volume] in Blood"))
    assert page.status_code == 200
    assert "These results were given in different units, so there is one chart per unit." in page.text
    mg, mmol = _svgs(page.text)
    # mg/dL: 90, 120 (out of 70-100), 95 (range 70-110) on Jan 1, Feb 1, Mar 1; axis 60..120 by 20
    assert CIRCLE.findall(mg) == [("80", "134"), ("600", "114.33")]
    assert DIAMOND.findall(mg) == [("353.22", "16")]
    assert BAND.findall(mg) == [("64", "94.67", "412.61", "118"), ("476.61", "55.33", "139.39", "157.34")]
    assert [v for v in re.findall(r'text-anchor="end"[^>]*>([^<]+)<', mg)] == ["60", "80", "100", "120"]
    assert '<polyline class="line" points="80,134 353.22,16 600,114.33"' in mg
    assert 'role="img" aria-labelledby="chart-1-title chart-1-desc"' in mg
    assert '<title id="chart-1-title">Trend of Glucose [Mass/volume] in Blood (mg/dL)</title>' in mg
    assert "3 results from Jan 1, 2026 to Mar 1, 2026." in mg
    assert "1 result outside the reference range is drawn as a diamond." in mg
    # mmol/L: a single point in the middle, the band across the whole plot, no line
    assert CIRCLE.findall(mmol) == [("340", "75")] and DIAMOND.findall(mmol) == []
    assert BAND.findall(mmol) == [("64", "16", "552", "188.8")]
    assert "<polyline" not in mmol and "One result, on Apr 1, 2026." in mmol
    # the data table alternative, and the text result listed apart
    tables = re.findall(r"<table.*?</table>", page.text, re.S)
    assert [row[:2] for row in _rows(tables[0])] == [
        ["Mar 1, 2026", "95 mg/dL"],
        ["Feb 1, 2026", "120 mg/dL"],
        ["Jan 1, 2026", "90 mg/dL"],
    ]
    assert "Results not shown on a chart" in page.text and [
        "Apr 15, 2026",
        "Haemolysed sample",
        "—",
        "—",
    ] in _rows(tables[2])


def test_missing_units_and_non_quantities(record: World, holder: TestClient) -> None:
    fhir = record.app.state.fhir
    for res in (
        glucose("u1", "2026-05-01T08:00:00Z", 7.0, unit="", low=None, high=None),
        glucose("u2", "2026-05-02T08:00:00Z", 8.0, unit="", low=None, high=None),
    ):
        res["code"] = {
            "coding": [{"system": "http://loinc.org", "code": "5902-2"}],
            "text": "Prothrombin time",
        }
        del res["valueQuantity"]["unit"], res["valueQuantity"]["code"]
        fhir.update("Observation", res["id"], res)
    below = glucose("c1", "2026-05-03T08:00:00Z", 0.5, unit="ng/mL", low=None, high=4)
    below["code"] = {"coding": [{"system": "http://loinc.org", "code": "2857-1"}], "text": "PSA"}
    below["valueQuantity"]["comparator"] = "<"
    fhir.update("Observation", "c1", below)
    results = holder.get(RESULTS).text
    page = holder.get(_link(results, "Prothrombin time")).text
    (svg,) = _svgs(page)
    assert "Unit: no unit given" in page and len(CIRCLE.findall(svg)) == 2 and BAND.findall(svg) == []
    psa = holder.get(_link(results, "PSA")).text
    assert _svgs(psa) == [] and "&lt;0.5 ng/mL" in psa and "Results not shown on a chart" in psa


def test_pending_results_and_professionals(record: World, holder: TestClient, browser: Browser) -> None:
    assert "Prostate specific antigen" not in holder.get(RESULTS).text
    gp = browser()
    sign_in(gp, record.gp)
    seen = gp.get(PRO_RESULTS)
    assert seen.status_code == 200 and "Prostate specific antigen" in seen.text
    assert "Held back from the patient" in seen.text and "Marie Muller" in seen.text
    link = _link(seen.text, "Glucose [Mass/volume] in Blood")
    assert link.startswith(f"{PRO_RESULTS}/")
    chart = gp.get(link)
    assert chart.status_code == 200 and len(_svgs(chart.text)) == 2
    assert gp.get(link.replace(PRO_RESULTS, RESULTS)).status_code == 403  # the holder's page
    pharmacist = browser()
    sign_in(pharmacist, record.pharmacist)
    assert "Metabolic panel" in pharmacist.get(PRO_RESULTS).text  # laboratory results: R for pharmacists
    stranger = browser()
    sign_in(stranger, record.stranger)
    for url in (PRO_RESULTS, link, "/portal/pro/patients/pb/results"):
        assert stranger.get(url).status_code == 404


def test_chart_reads_are_audited(record: World, holder: TestClient) -> None:
    holder.get(_link(holder.get(RESULTS).text, "Haemoglobin"))
    with record.engine.connect() as conn:
        reads = audit.query(conn, patient_id="pa", principal_subject=record.patient.account_id)
    assert len(reads) >= 2 and all(r.record.action is audit.AuditAction.OPERATION for r in reads[:2])


def _at(day: int) -> datetime:
    return datetime(2026, 1, day, tzinfo=UTC)


def test_chart_geometry_units() -> None:
    assert charts.nice_step(50) == 20 and charts.nice_step(1.6) == 0.5 and charts.nice_step(9) == 2.5
    assert charts.value_axis([5, 5]) == (4.5, 5.5, 0.25)
    one = charts.trend_chart([charts.Point(_at(1), 5, high=6)])
    assert [(p.x, p.y) for p in one.points] == [(340.0, one.points[0].y)]
    (band,) = one.bands
    assert (band.x0, band.x1, band.y1) == (
        charts.LEFT,
        charts.RIGHT,
        charts.BOTTOM,
    )  # no low: down to the axis
    varying = charts.trend_chart(
        [charts.Point(_at(1), 1, 0, 2), charts.Point(_at(2), 1, 0, 2), charts.Point(_at(3), 3, 0, 2)]
    )
    assert len(varying.bands) == 1 and varying.out_of_range == 1
    gaps = charts.trend_chart(
        [charts.Point(_at(1), 1, 0, 2), charts.Point(_at(3), 1), charts.Point(_at(5), 1, 0, 3)]
    )
    assert [(b.x0, b.x1) for b in gaps.bands] == [(64.0, 210.0), (470.0, 616.0)]
    with pytest.raises(ValueError):
        charts.trend_chart([])


LAB_PDF = b"%PDF-1.4\n% Laboratoire Central: lipid panel\n%%EOF\n"


def _report_with_pdf(world: World) -> str:
    """A laboratory report with its PDF inline, filed as the API files it: the PDF in the content
    store, the report pointing at its Binary."""
    report = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "57698-3"}], "text": "Lipid panel"},
        "subject": {"reference": "Patient/pa"},
        "effectiveDateTime": "2026-03-20T08:00:00Z",
        "presentedForm": [
            {"contentType": "application/pdf", "data": base64.b64encode(LAB_PDF).decode(), "title": "Lipids"}
        ],
    }
    app = world.app
    outcome = labresults.create_report(
        app.state.fhir, app.state.blobs, report, base_url="http://testserver/fhir"
    )
    assert "data" not in outcome.stored.resource()["presentedForm"][0]
    return outcome.stored.id


def test_a_reports_pdf_is_linked_and_served_through_the_readers_access(
    record: World, holder: TestClient, browser: Browser
) -> None:
    report_id = _report_with_pdf(record)
    page = holder.get(RESULTS).text
    links = re.findall(r'<a class="pdf" href="([^"]+)">([^<]+)</a>', page)
    assert links == [(f"{RESULTS}/reports/{report_id}/pdf", "The laboratory's report (PDF)")]
    pdf = holder.get(links[0][0])
    assert pdf.status_code == 200 and pdf.content == LAB_PDF
    assert pdf.headers["content-type"] == "application/pdf"
    gp = browser()
    sign_in(gp, record.gp)
    pro = f"{PRO_RESULTS}/reports/{report_id}/pdf"
    assert f'href="{pro}"' in gp.get(PRO_RESULTS).text
    assert gp.get(pro).content == LAB_PDF
    stranger = browser()
    sign_in(stranger, record.stranger)
    assert stranger.get(pro).status_code == 404
    # a report without a PDF has no link; an unknown report's PDF is not found
    assert holder.get(f"{RESULTS}/reports/unknown/pdf").status_code == 404
    with record.engine.connect() as conn:
        reads = audit.query(conn, patient_id="pa", principal_subject=record.patient.account_id)
    assert any(r.record.action is audit.AuditAction.READ and "Binary" in str(r.record) for r in reads)
