"""Reading a vaccine pack's GS1 DataMatrix: GTIN (01), expiry (17), lot (10), serial (21).

The element strings are parsed by ``biip`` (GS1 General Specifications: AI table, FNC1/GS
separators, check digits, YYMMDD with DD=00 as the last day of the month); this module only
normalises what scanners send and turns biip's findings into messages a vaccinator understands,
then fills a draft ``Immunization`` from the product catalogue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any

from biip import ParseError
from biip.gs1_messages import GS1Message

from sharedcare.vaccination.products import Catalogue, normalise_gtin
from sharedcare.vaccination.record import SERIAL_EXTENSION

_SYMBOLOGY = re.compile(r"^\][A-Za-z][0-9A-Za-z]")
"""An AIM symbology identifier (``]d2`` DataMatrix, ``]C1`` GS1-128, ``]Q3`` QR) some scanners prefix."""
_SEPARATORS = ("<GS>", "\u241d", "{GS}", "<FNC1>")
"""How keyboard-wedge scanners and hand-typed codes render the FNC1 separator (ASCII 29)."""
_AI_IN_MESSAGE = re.compile(
    r"(?:Unknown GS1 Application Identifier|Failed to get GS1 Application Identifier)"
)


class DataMatrixError(ValueError):
    """The scanned code is not a usable GS1 pack code; the message says why."""


@dataclass(frozen=True, slots=True)
class PackScan:
    """What a vaccine pack's code says."""

    gtin: str
    expiry: date | None
    lot: str | None
    serial: str | None


def parse_datamatrix(code: str) -> PackScan:
    """Parse a pack code (element string with GS separators, ``]d2`` prefix, or the
    human-readable ``(01)…(17)…`` form); raises ``DataMatrixError`` with a clear message."""
    text = code.strip()
    if not text:
        raise DataMatrixError("The code is empty")
    text = _SYMBOLOGY.sub("", text)
    for sep in _SEPARATORS:
        text = text.replace(sep, "\x1d")
    text = text.strip("\x1d")
    try:
        message = GS1Message.parse_hri(text) if text.startswith("(") else GS1Message.parse(text)
    except ParseError as exc:
        raise DataMatrixError(_explain(str(exc))) from None
    values: dict[str, str] = {}
    expiry: date | None = None
    for element in message.element_strings:
        values.setdefault(element.ai.ai, element.value)
        if element.ai.ai == "17":
            expiry = element.date
    if "01" not in values:
        raise DataMatrixError("The code has no GTIN (AI 01): it does not identify a product")
    try:
        gtin = normalise_gtin(values["01"])
    except ValueError as exc:
        raise DataMatrixError(f"The GTIN (01) {values['01']} is not valid: {exc}") from None
    return PackScan(gtin, expiry, values.get("10"), values.get("21"))


def _explain(detail: str) -> str:
    if "date" in detail or "(17)" in detail:
        return f"The expiry date (17) is not a valid YYMMDD date: {detail}"
    if _AI_IN_MESSAGE.search(detail):
        return f"The code holds an unknown or misplaced GS1 Application Identifier: {detail}"
    return f"The code is not a GS1 element string: {detail}"


@dataclass(frozen=True, slots=True)
class Draft:
    """A draft Immunization for the recording form, and what the vaccinator should check."""

    immunization: dict[str, Any]
    warnings: tuple[str, ...]
    scan: PackScan


def draft_immunization(
    code: str, products: Catalogue, *, patient: str | None = None, today: date | None = None
) -> Draft:
    """The draft ``Immunization`` a scan fills: product codings from the catalogue (or a clear
    warning when the GTIN is unknown), lot, expiry and serial number. Nothing is stored."""
    scan = parse_datamatrix(code)
    warnings: list[str] = []
    product = products.for_gtin(scan.gtin)
    if product is not None:
        vaccine = {"coding": product.codings(scan.gtin), "text": product.name}
    else:
        vaccine = {"coding": [{"system": "https://www.gs1.org/gtin", "code": scan.gtin}]}
        warnings.append(
            f"GTIN {scan.gtin} is not in the catalogue: choose the product by hand "
            "(lot, expiry and serial number are filled in)"
        )
    draft: dict[str, Any] = {"resourceType": "Immunization", "status": "completed", "vaccineCode": vaccine}
    if patient:
        draft["patient"] = {"reference": patient}
    draft["primarySource"] = True
    if scan.lot:
        draft["lotNumber"] = scan.lot
    else:
        warnings.append("The code has no lot number (AI 10): enter it from the pack")
    if scan.expiry:
        draft["expirationDate"] = scan.expiry.isoformat()
        if today is not None and scan.expiry < today:
            warnings.append(f"The pack expired on {scan.expiry.isoformat()}")
    else:
        warnings.append("The code has no expiry date (AI 17): enter it from the pack")
    if scan.serial:
        draft["extension"] = [{"url": SERIAL_EXTENSION, "valueString": scan.serial}]
    if product is not None and product.manufacturer:
        draft["manufacturer"] = {"display": product.manufacturer}
    return Draft(draft, tuple(warnings), scan)
