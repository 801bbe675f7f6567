"""Reading a vaccine pack's GS1 DataMatrix, and ``POST /fhir/Immunization/$parse-datamatrix``."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sharedcare.settings import Settings
from sharedcare.vaccination.gs1 import DataMatrixError, draft_immunization, parse_datamatrix
from sharedcare.vaccination.products import GTIN_SYSTEM, PRODUCT_SYSTEM, catalogue
from sharedcare.vaccination.record import SERIAL_EXTENSION

PACK = "09506000134352"
GS = "\x1d"


@pytest.fixture
def packs(tmp_path: Path) -> Path:
    """A data folder whose local catalogue knows ``PACK`` as a Hexyon pack."""
    folder = tmp_path / "vaccination" / "products"
    folder.mkdir(parents=True)
    (folder / "packs.toml").write_text(f'schema = 1\n[products.hexyon]\ngtins = ["{PACK}"]\n', "utf-8")
    return tmp_path


@pytest.mark.parametrize(
    "code",
    [
        f"01{PACK}17281231" + f"10AB-12{GS}21SER9",  # element string, FNC1 as GS
        f"]d201{PACK}1728123110AB-12{GS}21SER9",  # with the DataMatrix symbology identifier
        f"01{PACK}1728123110AB-12<GS>21SER9",  # a keyboard wedge's rendering of GS
        f"(01){PACK}(17)281231(10)AB-12(21)SER9",  # human-readable form
        f"  (01){PACK}(17)281231(10)AB-12(21)SER9\n",
    ],
)
def test_every_form_of_the_code(code: str) -> None:
    scan = parse_datamatrix(code)
    assert (scan.gtin, scan.expiry, scan.lot, scan.serial) == (PACK, date(2028, 12, 31), "AB-12", "SER9")


def test_day_00_is_the_end_of_the_month() -> None:
    assert parse_datamatrix(f"(01){PACK}(17)280200(10)L").expiry == date(2028, 2, 29)
    assert parse_datamatrix(f"(01){PACK}(17)270200(10)L").expiry == date(2027, 2, 28)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("", "empty"),
        ("(01)09506000134353(17)281231(10)L", "check digit"),
        ("(17)281231(10)L", "no GTIN"),
        (f"(01){PACK}(17)281341(10)L", "expiry date (17)"),
        (f"(01){PACK}(17)280230(10)L", "expiry date (17)"),
        (f"(01){PACK}(89)1(10)L", "Application Identifier"),
        ("not a code", "GS1"),
    ],
)
def test_malformed_codes_say_why(code: str, message: str) -> None:
    with pytest.raises(DataMatrixError) as err:
        parse_datamatrix(code)
    assert message in str(err.value)


def test_draft_from_a_known_pack(packs: Path) -> None:
    draft = draft_immunization(
        f"(01){PACK}(17)281231(10)AB-12(21)SER9",
        catalogue(packs),
        patient="Patient/p1",
        today=date(2026, 1, 1),
    )
    imm = draft.immunization
    assert draft.warnings == ()
    assert imm["vaccineCode"]["coding"][0] == {
        "system": PRODUCT_SYSTEM,
        "code": "hexyon",
        "display": "Hexyon",
    }
    assert {"system": GTIN_SYSTEM, "code": PACK} in imm["vaccineCode"]["coding"]
    assert (imm["lotNumber"], imm["expirationDate"]) == ("AB-12", "2028-12-31")
    assert imm["extension"] == [{"url": SERIAL_EXTENSION, "valueString": "SER9"}]
    assert imm["patient"] == {"reference": "Patient/p1"}


def test_draft_from_an_unknown_pack_keeps_what_the_code_says() -> None:
    draft = draft_immunization(f"(01){PACK}(17)250100(10)OLD", catalogue(), today=date(2026, 1, 1))
    assert any("not in the catalogue" in w for w in draft.warnings)
    assert any("expired on 2025-01-31" in w for w in draft.warnings)
    assert draft.immunization["vaccineCode"] == {"coding": [{"system": GTIN_SYSTEM, "code": PACK}]}
    assert draft.immunization["lotNumber"] == "OLD"
    assert "extension" not in draft.immunization


# --- over HTTP, on both databases ---------------------------------------------------------------------


@pytest.fixture
def http(settings: Settings, packs: Path) -> Any:
    from sharedcare.app import create_app
    from support import signed_in_client

    local = settings.model_copy(update={"data_dir": packs})
    with signed_in_client(create_app(local), local) as c:
        yield c


def call(client: TestClient, code: Any) -> Any:
    body = {"resourceType": "Parameters", "parameter": [{"name": "code", "valueString": code}]}
    return client.post("/fhir/Immunization/$parse-datamatrix", json=body)


def test_operation_answers_the_draft(http: TestClient) -> None:
    resp = call(http, f"01{PACK}1728123110AB-12{GS}21SER9")
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["resourceType"] == "Parameters"
    draft = next(p["resource"] for p in out["parameter"] if p["name"] == "immunization")
    assert draft["resourceType"] == "Immunization" and draft["lotNumber"] == "AB-12"
    assert [p for p in out["parameter"] if p["name"] == "warning"] == []
    unknown = call(http, "(01)05400000000027(17)281231(10)X").json()
    warnings = [p["valueString"] for p in unknown["parameter"] if p["name"] == "warning"]
    assert warnings and "GTIN 05400000000027 is not in the catalogue" in warnings[0]


def test_operation_refuses_malformed_codes_with_an_outcome(http: TestClient) -> None:
    resp = call(http, "(01)09506000134353(17)281231")
    assert resp.status_code == 400
    outcome = resp.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "check digit" in outcome["issue"][0]["diagnostics"]
    missing = http.post("/fhir/Immunization/$parse-datamatrix", json={"resourceType": "Parameters"})
    assert missing.status_code == 400 and "'code' parameter" in missing.text
    assert (
        http.post("/fhir/Immunization/$parse-datamatrix", json={"resourceType": "Patient"}).status_code == 400
    )
