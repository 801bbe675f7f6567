"""The printable vaccination certificate (PDF), in French, German or English.

Built with ``fpdf2`` from the resources the caller may see (the operation reads them through
the caller's session, ``inputs.read_record``): the person, then every dose given (date,
product, lot, antigens, vaccinator), oldest first; doses the holder reported and no
professional has validated yet say so. Doses ``not-done`` or ``entered-in-error`` are left out.
The texts live here, not in the portal's catalogues: a certificate must not change when a
portal string is reworded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from sharedcare.identity.matricule import MATRICULE_SYSTEM
from sharedcare.vaccination.products import Catalogue, catalogue
from sharedcare.vaccination.record import PATIENT_REPORTED, verification

LANGUAGES = ("fr", "de", "en")
TEXTS: Mapping[str, Mapping[str, str]] = {
    "fr": {
        "title": "Certificat de vaccination",
        "name": "Nom",
        "birth": "Date de naissance",
        "identifier": "Matricule",
        "issued": "Établi le",
        "date": "Date",
        "product": "Vaccin",
        "lot": "Lot",
        "antigens": "Protège contre",
        "performer": "Vaccinateur",
        "reported": "déclaré par le patient, non validé",
        "none": "Aucune vaccination enregistrée.",
        "footer": "Extrait du carnet de vaccination électronique (SharedCare).",
    },
    "de": {
        "title": "Impfbescheinigung",
        "name": "Name",
        "birth": "Geburtsdatum",
        "identifier": "Matrikelnummer",
        "issued": "Ausgestellt am",
        "date": "Datum",
        "product": "Impfstoff",
        "lot": "Charge",
        "antigens": "Schützt gegen",
        "performer": "Impfende Person",
        "reported": "vom Patienten gemeldet, nicht bestätigt",
        "none": "Keine Impfung eingetragen.",
        "footer": "Auszug aus dem elektronischen Impfpass (SharedCare).",
    },
    "en": {
        "title": "Vaccination certificate",
        "name": "Name",
        "birth": "Date of birth",
        "identifier": "National identifier",
        "issued": "Issued on",
        "date": "Date",
        "product": "Vaccine",
        "lot": "Lot",
        "antigens": "Protects against",
        "performer": "Vaccinator",
        "reported": "reported by the patient, not validated",
        "none": "No vaccination recorded.",
        "footer": "Extract of the electronic vaccination record (SharedCare).",
    },
}
ANTIGENS: Mapping[str, Mapping[str, str]] = {
    "fr": {
        "diphtheria": "diphtérie",
        "tetanus": "tétanos",
        "pertussis": "coqueluche",
        "polio": "poliomyélite",
        "hib": "Haemophilus influenzae b",
        "hepb": "hépatite B",
        "hepa": "hépatite A",
        "rotavirus": "rotavirus",
        "pneumococcal": "pneumocoque",
        "menb": "méningocoque B",
        "menacwy": "méningocoques ACWY",
        "measles": "rougeole",
        "mumps": "oreillons",
        "rubella": "rubéole",
        "varicella": "varicelle",
        "hpv": "papillomavirus",
        "zoster": "zona",
        "influenza": "grippe",
        "covid-19": "COVID-19",
        "rsv": "VRS",
    },
    "de": {
        "diphtheria": "Diphtherie",
        "tetanus": "Tetanus",
        "pertussis": "Keuchhusten",
        "polio": "Kinderlähmung",
        "hib": "Haemophilus influenzae b",
        "hepb": "Hepatitis B",
        "hepa": "Hepatitis A",
        "rotavirus": "Rotaviren",
        "pneumococcal": "Pneumokokken",
        "menb": "Meningokokken B",
        "menacwy": "Meningokokken ACWY",
        "measles": "Masern",
        "mumps": "Mumps",
        "rubella": "Röteln",
        "varicella": "Windpocken",
        "hpv": "Humane Papillomviren",
        "zoster": "Gürtelrose",
        "influenza": "Grippe",
        "covid-19": "COVID-19",
        "rsv": "RSV",
    },
    "en": {
        "diphtheria": "diphtheria",
        "tetanus": "tetanus",
        "pertussis": "pertussis",
        "polio": "polio",
        "hib": "Haemophilus influenzae b",
        "hepb": "hepatitis B",
        "hepa": "hepatitis A",
        "rotavirus": "rotavirus",
        "pneumococcal": "pneumococcus",
        "menb": "meningococcus B",
        "menacwy": "meningococcus ACWY",
        "measles": "measles",
        "mumps": "mumps",
        "rubella": "rubella",
        "varicella": "chickenpox",
        "hpv": "papillomavirus",
        "zoster": "shingles",
        "influenza": "influenza",
        "covid-19": "COVID-19",
        "rsv": "RSV",
    },
}
_FONTS = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/TTF/DejaVuSans.ttf"),
)
"""A Unicode font when the system has one (names in any script); else the PDF core font, Latin-1 only."""


def _name(patient: Mapping[str, Any]) -> str:
    for name in patient.get("name") or []:
        if isinstance(name, Mapping):
            if name.get("text"):
                return str(name["text"])
            given = " ".join(str(g) for g in name.get("given") or [])
            return f"{given} {name.get('family', '')}".strip()
    return "—"


def _date(value: Any) -> str:
    return str(value)[:10] if isinstance(value, str) else "—"


def _performer(imm: Mapping[str, Any]) -> str:
    names = []
    for performer in imm.get("performer") or []:
        actor = performer.get("actor") if isinstance(performer, Mapping) else None
        if isinstance(actor, Mapping):
            names.append(str(actor.get("display") or actor.get("reference") or ""))
    return ", ".join(n for n in names if n) or "—"


def _product(imm: Mapping[str, Any], products: Catalogue) -> tuple[str, tuple[str, ...]]:
    concept = imm.get("vaccineCode") or {}
    product = products.for_concept(concept)
    if product is not None:
        return product.name, product.antigens
    display = next(
        (
            c.get("display")
            for c in concept.get("coding") or []
            if isinstance(c, Mapping) and c.get("display")
        ),
        None,
    )
    return str(concept.get("text") or display or "—"), ()


def dose_rows(
    immunizations: Sequence[Mapping[str, Any]], lang: str, products: Catalogue | None = None
) -> list[tuple[str, str, str, str, str]]:
    """(date, product, lot, antigens, performer) of every dose given, oldest first."""
    products = products or catalogue()
    t, names = TEXTS[lang], ANTIGENS[lang]
    rows = []
    for imm in sorted(
        (i for i in immunizations if i.get("status") == "completed"),
        key=lambda i: str(i.get("occurrenceDateTime") or ""),
    ):
        product, antigens = _product(imm, products)
        if verification(imm) == PATIENT_REPORTED:
            product = f"{product} ({t['reported']})"
        rows.append(
            (
                _date(imm.get("occurrenceDateTime")),
                product,
                str(imm.get("lotNumber") or "—"),
                ", ".join(names.get(a, a) for a in antigens) or "—",
                _performer(imm),
            )
        )
    return rows


def certificate_pdf(
    patient: Mapping[str, Any],
    immunizations: Sequence[Mapping[str, Any]],
    lang: str,
    issued: date,
    products: Catalogue | None = None,
) -> bytes:
    """The certificate as PDF bytes; ``lang`` one of ``LANGUAGES`` (else ``ValueError``)."""
    if lang not in LANGUAGES:
        raise ValueError(f"lang must be one of {', '.join(LANGUAGES)}, not {lang!r}")
    t = TEXTS[lang]
    pdf = FPDF(orientation="P", unit="mm", format="A4")
    pdf.set_title(t["title"])
    pdf.set_lang(lang)
    font = next((f for f in _FONTS if f.exists()), None)
    family = "helvetica"
    if font is not None:
        pdf.add_font("dejavu", "", str(font))
        bold = font.with_name("DejaVuSans-Bold.ttf")
        pdf.add_font("dejavu", "B", str(bold if bold.exists() else font))
        family = "dejavu"

    def text(value: str) -> str:
        return value if font is not None else value.encode("latin-1", "replace").decode("latin-1")

    pdf.add_page()
    pdf.set_font(family, size=18)
    pdf.cell(0, 12, text(t["title"]), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(family, size=11)
    identifier = next(
        (
            str(i.get("value"))
            for i in patient.get("identifier") or []
            if isinstance(i, Mapping) and i.get("system") == MATRICULE_SYSTEM
        ),
        None,
    )
    lines = [(t["name"], _name(patient)), (t["birth"], _date(patient.get("birthDate")))]
    if identifier:
        lines.append((t["identifier"], identifier))
    lines.append((t["issued"], issued.isoformat()))
    for label, value in lines:
        pdf.cell(0, 7, text(f"{label}: {value}"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(4)
    rows = dose_rows(immunizations, lang, products)
    pdf.set_font(family, size=9)
    if not rows:
        pdf.cell(0, 7, text(t["none"]), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    else:
        with pdf.table(col_widths=(22, 52, 22, 52, 42), text_align="LEFT") as table:
            table.row([text(t[k]) for k in ("date", "product", "lot", "antigens", "performer")])
            for row in rows:
                table.row([text(cell) for cell in row])
    pdf.ln(6)
    pdf.set_font(family, size=8)
    pdf.cell(0, 6, text(t["footer"]), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    return bytes(pdf.output())
