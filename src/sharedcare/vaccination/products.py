"""The vaccine product catalogue: what a product code, a CVX or a pack's GTIN stands for.

The catalogue is data (``data/products.toml``, shipped in the package) so that a new product or a
new pack is a reviewed data change, not code; an operator adds local packs (GTINs from the
wholesalers) in ``<data_dir>/vaccination/products/*.toml`` files, read after the packaged file.
No identifier is ever guessed: see the header of the data file and docs/vaccination.md.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

from biip import ParseError
from biip.gtin import Gtin

PRODUCT_SYSTEM = "https://sharedcare.lu/fhir/CodeSystem/vaccine-product"
CVX_SYSTEM = "http://hl7.org/fhir/sid/cvx"
ATC_SYSTEM = "http://www.whocc.no/atc"
SNOMED_SYSTEM = "http://snomed.info/sct"
GTIN_SYSTEM = "https://www.gs1.org/gtin"
MVX_SYSTEM = "http://hl7.org/fhir/sid/mvx"

PRODUCTS_FILE = Path(__file__).resolve().parent / "data" / "products.toml"
LOCAL_FOLDER = Path("vaccination") / "products"
"""Extension files under the settings' ``data_dir``."""

_CODE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_CVX = re.compile(r"^\d{1,3}$")
_ATC = re.compile(r"^[A-Z]\d{2}[A-Z]{2}\d{2}$")
_KEYS = {
    "name",
    "manufacturer",
    "mvx",
    "atc",
    "snomed",
    "cvx",
    "cvx_exact",
    "forecast_cvx",
    "verified",
    "antigens",
    "gtins",
}


class CatalogueError(ValueError):
    """A catalogue file is unreadable or invalid; the message lists every problem."""


@dataclass(frozen=True, slots=True)
class Product:
    """One vaccine product (or passive immunisation) as the catalogue describes it."""

    code: str
    name: str
    manufacturer: str
    antigens: tuple[str, ...]
    mvx: str | None = None
    atc: str | None = None
    snomed: str | None = None
    cvx: str | None = None
    cvx_exact: bool = True
    """False: the product has no CVX of its own; ``cvx`` is the US vaccine of the same kind."""
    verified: bool = True
    """False: some code is believed right but was not checked against its source."""
    forecast_cvx: tuple[str, ...] = ()
    gtins: tuple[str, ...] = ()

    @property
    def forecast_codes(self) -> tuple[str, ...]:
        """The CVX codes a dose of this product counts as for the forecaster."""
        return self.forecast_cvx or ((self.cvx,) if self.cvx else ())

    def codings(self, gtin: str | None = None) -> list[dict[str, str]]:
        """``Immunization.vaccineCode`` codings: ours first, then CVX, ATC, SNOMED CT, the pack's GTIN."""
        out = [{"system": PRODUCT_SYSTEM, "code": self.code, "display": self.name}]
        if self.cvx:
            out.append({"system": CVX_SYSTEM, "code": self.cvx})
        if self.atc:
            out.append({"system": ATC_SYSTEM, "code": self.atc})
        if self.snomed:
            out.append({"system": SNOMED_SYSTEM, "code": self.snomed})
        if gtin:
            out.append({"system": GTIN_SYSTEM, "code": gtin})
        return out


def normalise_gtin(value: str) -> str:
    """The GTIN as 14 digits, its check digit verified; raises ``ValueError`` with the reason."""
    try:
        gtin = Gtin.parse(value.strip())
    except ParseError as exc:
        raise ValueError(str(exc)) from None
    return gtin.as_gtin_14()


class Catalogue:
    """The products by code, GTIN and CVX; ``catalogue()`` gives the process-wide one."""

    def __init__(self, products: Iterable[Product]) -> None:
        self.products: dict[str, Product] = {p.code: p for p in products}
        self._by_gtin = {g: p for p in self.products.values() for g in p.gtins}

    def __len__(self) -> int:
        return len(self.products)

    def get(self, code: str) -> Product | None:
        return self.products.get(code)

    def for_gtin(self, gtin: str) -> Product | None:
        """The product of a pack; ``gtin`` in any GTIN length (not checked here)."""
        return self._by_gtin.get(gtin.zfill(14))

    def for_concept(self, concept: Any) -> Product | None:
        """The product a ``vaccineCode`` names by our code or its GTIN (CVX names a kind, not a product)."""
        for coding in _codings(concept):
            system, code = coding.get("system"), coding.get("code")
            if not isinstance(code, str):
                continue
            if system == PRODUCT_SYSTEM and code in self.products:
                return self.products[code]
            if system == GTIN_SYSTEM:
                found = self.for_gtin(code)
                if found is not None:
                    return found
        return None

    def forecast_cvx(self, concept: Any) -> tuple[str, ...]:
        """The CVX codes a dose coded with ``concept`` counts as: its CVX coding, else its product's."""
        for coding in _codings(concept):
            if coding.get("system") == CVX_SYSTEM and isinstance(coding.get("code"), str):
                return (coding["code"],)
        product = self.for_concept(concept)
        return product.forecast_codes if product is not None else ()

    @classmethod
    def load(cls, paths: Iterable[Path]) -> Catalogue:
        """The catalogue of ``paths`` in order: the first defines products, later ones add
        products or add GTINs to known ones; raises ``CatalogueError`` listing every problem."""
        products: dict[str, Product] = {}
        problems: list[str] = []
        for path in paths:
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise CatalogueError(f"{path}: cannot read the product catalogue: {exc}") from exc
            _merge(data, products, problems, str(path))
        if problems:
            raise CatalogueError("invalid product catalogue:\n  " + "\n  ".join(problems))
        return cls(products.values())


def _codings(concept: Any) -> list[Mapping[str, Any]]:
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    return [c for c in codings if isinstance(c, Mapping)] if isinstance(codings, list) else []


def _merge(data: Mapping[str, Any], products: dict[str, Product], problems: list[str], source: str) -> None:
    if data.get("schema") != 1:
        problems.append(f"{source}: schema: expected 1, got {data.get('schema')!r}")
    table = data.get("products")
    if not isinstance(table, Mapping):
        problems.append(f"{source}: no [products.<code>] tables")
        return
    for code, entry in table.items():
        where = f"{source}: products.{code}"
        if not _CODE.match(code) or not isinstance(entry, Mapping):
            problems.append(f"{where}: the code must be lower-case letters, digits and hyphens")
            continue
        unknown = set(entry) - _KEYS
        if unknown:
            problems.append(f"{where}: unknown keys {sorted(unknown)}")
        gtins = _gtins(entry.get("gtins", []), where, problems)
        if code in products:
            if set(entry) - {"gtins"}:
                problems.append(f"{where}: already defined; an extension may only add 'gtins'")
            known = products[code]
            products[code] = replace(known, gtins=tuple(dict.fromkeys(known.gtins + gtins)))
            continue
        product = _product(code, entry, gtins, where, problems)
        if product is not None:
            products[code] = product
    seen: dict[str, str] = {}
    for product in products.values():
        for gtin in product.gtins:
            if seen.setdefault(gtin, product.code) != product.code:
                problems.append(f"{source}: GTIN {gtin} given to both {seen[gtin]} and {product.code}")


def _gtins(value: Any, where: str, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list):
        problems.append(f"{where}: gtins must be a list of strings")
        return ()
    out: list[str] = []
    for item in value:
        try:
            out.append(normalise_gtin(str(item)))
        except ValueError as exc:
            problems.append(f"{where}: GTIN {item!r}: {exc}")
    return tuple(out)


def _product(
    code: str, entry: Mapping[str, Any], gtins: tuple[str, ...], where: str, problems: list[str]
) -> Product | None:
    name, manufacturer, antigens = entry.get("name"), entry.get("manufacturer"), entry.get("antigens")
    before = len(problems)
    if not isinstance(name, str) or not name or not isinstance(manufacturer, str) or not manufacturer:
        problems.append(f"{where}: 'name' and 'manufacturer' are required")
    if not isinstance(antigens, list) or not antigens or not all(isinstance(a, str) for a in antigens):
        problems.append(f"{where}: 'antigens' must list at least one antigen")
    cvx, atc = entry.get("cvx"), entry.get("atc")
    forecast = entry.get("forecast_cvx", [])
    if cvx is not None and not (isinstance(cvx, str) and _CVX.match(cvx)):
        problems.append(f"{where}: cvx {cvx!r} must be a string of 1 to 3 digits")
    if not isinstance(forecast, list) or not all(isinstance(c, str) and _CVX.match(c) for c in forecast):
        problems.append(f"{where}: forecast_cvx must list CVX codes")
    if atc is not None and not (isinstance(atc, str) and _ATC.match(atc)):
        problems.append(f"{where}: atc {atc!r} is not a 7-character ATC code")
    for flag in ("cvx_exact", "verified"):
        if not isinstance(entry.get(flag, True), bool):
            problems.append(f"{where}: {flag} must be true or false")
    if len(problems) > before:
        return None
    return Product(
        code=code,
        name=str(name),
        manufacturer=str(manufacturer),
        antigens=tuple(antigens or ()),
        mvx=entry.get("mvx"),
        atc=atc,
        snomed=entry.get("snomed"),
        cvx=cvx,
        cvx_exact=entry.get("cvx_exact", True),
        verified=entry.get("verified", True),
        forecast_cvx=tuple(forecast),
        gtins=gtins,
    )


def catalogue_files(data_dir: Path | None) -> list[Path]:
    """The packaged file, then the local extension files of ``data_dir`` (sorted by name)."""
    files = [PRODUCTS_FILE]
    if data_dir is not None:
        files += sorted((data_dir / LOCAL_FOLDER).glob("*.toml"))
    return files


@cache
def catalogue(data_dir: Path | None = None) -> Catalogue:
    """The catalogue for a data folder, read and validated on first use."""
    return Catalogue.load(catalogue_files(data_dir))
