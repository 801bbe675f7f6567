"""The vaccine product catalogue: the packaged data, its rules, and local extension files."""

from __future__ import annotations

from pathlib import Path

import pytest

from sharedcare.vaccination.products import (
    ATC_SYSTEM,
    CVX_SYSTEM,
    GTIN_SYSTEM,
    PRODUCT_SYSTEM,
    PRODUCTS_FILE,
    Catalogue,
    CatalogueError,
    catalogue,
    catalogue_files,
)

HEXYON_PACK = "09506000134352"  # the GS1 documentation's example GTIN, valid check digit


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_the_luxembourg_products_are_listed() -> None:
    products = catalogue()
    for code in (
        "hexyon",
        "infanrix-hexa",
        "rotarix",
        "rotateq",
        "prevenar-20",
        "bexsero",
        "nimenrix",
        "menquadfi",
        "m-m-rvaxpro",
        "priorix",
        "varivax",
        "varilrix",
        "priorix-tetra",
        "proquad",
        "gardasil-9",
        "shingrix",
        "boostrix",
        "boostrix-polio",
        "repevax",
        "influvac-tetra",
        "vaxigrip-tetra",
        "comirnaty",
        "abrysvo",
        "beyfortus",
        "engerix-b-20",
        "havrix-1440",
        "twinrix-adult",
    ):
        product = products.get(code)
        assert product is not None, code
        assert product.name and product.manufacturer and product.antigens


def test_known_codes() -> None:
    products = catalogue()
    assert products.get("rotarix").cvx == "119"  # type: ignore[union-attr]
    assert products.get("rotateq").cvx == "116"  # type: ignore[union-attr]
    assert products.get("gardasil-9").cvx == "165"  # type: ignore[union-attr]
    assert products.get("shingrix").cvx == "187"  # type: ignore[union-attr]
    hexyon = products.get("hexyon")
    assert hexyon is not None and hexyon.atc == "J07CA09" and not hexyon.cvx_exact
    assert set(hexyon.antigens) == {"diphtheria", "tetanus", "pertussis", "polio", "hib", "hepb"}
    # no identifier is guessed: a product without a confirmed CVX has none
    abrysvo = products.get("abrysvo")
    assert abrysvo is not None and abrysvo.cvx is None and abrysvo.atc is None


def test_vaccine_codings_put_our_code_first() -> None:
    hexyon = catalogue().get("hexyon")
    assert hexyon is not None
    codings = hexyon.codings(HEXYON_PACK)
    assert [c["system"] for c in codings] == [PRODUCT_SYSTEM, CVX_SYSTEM, ATC_SYSTEM, GTIN_SYSTEM]
    assert codings[0] == {"system": PRODUCT_SYSTEM, "code": "hexyon", "display": "Hexyon"}


def test_forecast_codes_of_a_dose() -> None:
    products = catalogue()
    ours = {"coding": [{"system": PRODUCT_SYSTEM, "code": "repevax"}]}
    assert products.forecast_cvx(ours) == ("115", "10")  # a dTap-IPV counts as Tdap and IPV
    both = {"coding": [{"system": PRODUCT_SYSTEM, "code": "hexyon"}, {"system": CVX_SYSTEM, "code": "110"}]}
    assert products.forecast_cvx(both) == ("110",)  # the writer's CVX wins
    assert products.forecast_cvx({"coding": [{"system": PRODUCT_SYSTEM, "code": "nope"}]}) == ()
    assert products.forecast_cvx({"text": "a vaccine"}) == ()


def test_local_extension_adds_packs_and_products(tmp_path: Path) -> None:
    write(
        tmp_path / "vaccination" / "products" / "packs.toml",
        f"""schema = 1
[products.hexyon]
gtins = ["{HEXYON_PACK}"]

[products.local-test-vaccine]
name = "Local vaccine"
manufacturer = "Local"
antigens = ["influenza"]
gtins = ["5400000000010"]
""",
    )
    assert catalogue_files(tmp_path)[0] == PRODUCTS_FILE
    products = catalogue(tmp_path)
    hexyon = products.for_gtin(HEXYON_PACK)
    assert hexyon is not None and hexyon.code == "hexyon" and hexyon.cvx == "146"
    local = products.for_gtin("05400000000010")  # GTIN-13 stored as GTIN-14
    assert local is not None and local.code == "local-test-vaccine"
    assert products.for_concept({"coding": [{"system": GTIN_SYSTEM, "code": HEXYON_PACK}]}) == hexyon
    assert catalogue().for_gtin(HEXYON_PACK) is None  # the packaged catalogue is unchanged


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[products.hexyon]\ngtins = ["09506000134353"]', "check digit"),
        ('[products.hexyon]\nname = "Other"', "an extension may only add 'gtins'"),
        ('[products.x]\nname = "X"\nmanufacturer = "Y"\nantigens = []', "'antigens' must list"),
        ('[products.x]\nname = "X"\nmanufacturer = "Y"\nantigens = ["a"]\ncvx = "1234"', "cvx '1234'"),
        ('[products.x]\nname = "X"\nmanufacturer = "Y"\nantigens = ["a"]\natc = "J07"', "ATC"),
        ('[products.X_1]\nname = "X"', "lower-case"),
        (
            f'[products.rotarix]\ngtins = ["{HEXYON_PACK}"]\n[products.hexyon]\ngtins = ["{HEXYON_PACK}"]',
            "given to both",
        ),
    ],
)
def test_invalid_catalogue_entries_are_named(tmp_path: Path, body: str, message: str) -> None:
    extra = write(tmp_path / "bad.toml", "schema = 1\n" + body)
    with pytest.raises(CatalogueError) as err:
        Catalogue.load([PRODUCTS_FILE, extra])
    assert message in str(err.value)
    assert "bad.toml" in str(err.value)
