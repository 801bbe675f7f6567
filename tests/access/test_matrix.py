"""The access matrix data file: cells straight from LAW-AND-CROSSBORDER.md §A.5, validation, the doc."""

from __future__ import annotations

import copy
import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sharedcare.access.matrix import (
    MATRIX_FILE,
    AccessMatrix,
    MatrixError,
    Right,
    UnknownCode,
    access_matrix,
    load_matrix,
)
from sharedcare.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "access-matrix.md"
LAW = ROOT.parent / "shared" / "docs" / "LAW-AND-CROSSBORDER.md"

COLUMNS = ("med", "mr", "pha", "inf", "pse", "sf", "lab", "atm", "as", "is", "bio")
CATEGORIES = (
    "personal-expression",
    "summaries",
    "history",
    "allergies",
    "devices",
    "care-reports",
    "certificates",
    "imaging",
    "lab-results",
    "dispensations",
    "care-assessments",
    "prescriptions",
    "prevention",
    "socio-educational",
    "social-environment",
    "legal-protection",
    "social-coverage",
    "health-education",
    "access-traces",
)
RW, R, NO = Right.READ_WRITE, Right.READ, Right.NONE

# Cells read off the §A.5 table by hand, at least one per column and per category.
SPOT_CHECKS = [
    ("pha", "dispensations", RW),
    ("pha", "imaging", NO),
    ("pha", "allergies", RW),
    ("pha", "devices", NO),
    ("med", "dispensations", R),
    ("med", "history", RW),
    ("med", "access-traces", NO),
    ("med", "health-education", RW),
    ("mr", "access-traces", R),
    ("mr", "summaries", RW),
    ("inf", "care-reports", RW),
    ("inf", "certificates", R),
    ("inf", "socio-educational", RW),
    ("pse", "social-coverage", RW),
    ("pse", "prevention", RW),
    ("pse", "dispensations", NO),
    ("sf", "legal-protection", RW),
    ("sf", "history", RW),
    ("sf", "prescriptions", RW),
    ("lab", "lab-results", R),
    ("lab", "summaries", NO),
    ("atm", "imaging", R),
    ("atm", "certificates", NO),
    ("as", "care-assessments", RW),
    ("as", "imaging", NO),
    ("as", "socio-educational", R),
    ("is", "social-environment", RW),
    ("is", "history", NO),
    ("is", "health-education", NO),
    ("bio", "lab-results", RW),
    ("bio", "summaries", NO),
    ("bio", "devices", R),
    ("med", "personal-expression", R),
]


@pytest.fixture(scope="module")
def matrix() -> AccessMatrix:
    return access_matrix()


@pytest.fixture
def data() -> dict[str, Any]:
    """A fresh copy of the shipped file, parsed, for breaking."""
    return copy.deepcopy(tomllib.loads(MATRIX_FILE.read_text(encoding="utf-8")))


# --- the shipped file ----------------------------------------------------------------------------------


def test_file_validates_and_is_cached(matrix: AccessMatrix) -> None:
    assert access_matrix() is matrix
    assert load_matrix() is matrix
    assert tuple(c.code for c in matrix.columns) == COLUMNS
    assert matrix.regulation_categories == CATEGORIES
    assert [c.code for c in matrix.categories if not c.regulation] == [
        "identity",
        "holder-choices",
        "vaccination",
        "vaccination-reported",
        "unfiled",
    ]


@pytest.mark.parametrize(("column", "category", "expected"), SPOT_CHECKS)
def test_cells_from_the_regulation(matrix: AccessMatrix, column: str, category: str, expected: Right) -> None:
    assert matrix.right(column, category) is expected


def test_spot_checks_cover_every_column_and_category() -> None:
    assert {c for c, _, _ in SPOT_CHECKS} == set(COLUMNS)
    assert {c for _, c, _ in SPOT_CHECKS} == set(CATEGORIES)


def test_only_the_medecin_referent_reads_access_traces(matrix: AccessMatrix) -> None:
    readers = {col for col in COLUMNS if "access-traces" in matrix.readable_categories(col)}
    assert readers == {"mr"}
    assert all("access-traces" not in matrix.writable_categories(col) for col in COLUMNS)


def test_personal_expression_is_read_only_for_every_column(matrix: AccessMatrix) -> None:
    assert {matrix.right(col, "personal-expression") for col in COLUMNS} == {R}


def test_platform_rows(matrix: AccessMatrix) -> None:
    assert {matrix.right(col, "identity") for col in COLUMNS} == {R}
    assert {matrix.right(col, "holder-choices") for col in COLUMNS} == {NO}


def test_readable_and_writable_sets(matrix: AccessMatrix) -> None:
    for col in COLUMNS:
        readable, writable = matrix.readable_categories(col), matrix.writable_categories(col)
        assert writable <= readable
        for cat in CATEGORIES:
            assert (cat in readable) == matrix.right(col, cat).can_read
            assert (cat in writable) == matrix.right(col, cat).can_write
    assert matrix.writable_categories("pha") == {
        "allergies",
        "dispensations",
        "prescriptions",
        "vaccination",  # pharmacists vaccinate (the CVE's rows, issue 5)
        "vaccination-reported",
    }
    assert matrix.writable_categories("lab") == frozenset()
    assert matrix.readable_categories("atm") >= {"imaging", "lab-results", "care-reports"}
    # The médecin référent has every right of a physician, plus the traces.
    assert matrix.readable_categories("mr") == matrix.readable_categories("med") | {"access-traces"}


def test_right_helpers() -> None:
    assert (RW.can_read, RW.can_write) == (True, True)
    assert (R.can_read, R.can_write) == (True, False)
    assert (NO.can_read, NO.can_write) == (False, False)


def test_unknown_codes_are_refused_clearly(matrix: AccessMatrix) -> None:
    with pytest.raises(UnknownCode, match="unknown matrix column 'vet'"):
        matrix.right("vet", "imaging")
    with pytest.raises(UnknownCode, match="unknown data category 'x-rays'"):
        matrix.right("med", "x-rays")
    with pytest.raises(UnknownCode, match="unknown matrix column"):
        matrix.readable_categories("MED")
    with pytest.raises(UnknownCode, match="unknown care context"):
        matrix.care_context("home")


@pytest.mark.parametrize(
    ("profession", "column"),
    [
        ("general-practitioner", "med"),
        ("dentist", "med"),
        ("medical-psychotherapist", "med"),
        ("pharmacist", "pha"),
        ("nurse-psychiatric", "inf"),
        ("atm-surgery", "inf"),
        ("physiotherapist", "pse"),
        ("psychotherapist", "pse"),
        ("midwife", "sf"),
        ("atm-laboratory", "lab"),
        ("atm-radiology", "atm"),
        ("care-assistant", "as"),
        ("social-worker", "is"),
        ("pharmacist-biologist", "bio"),
        ("veterinarian", None),
        ("", None),
    ],
)
def test_column_for_profession(matrix: AccessMatrix, profession: str, column: str | None) -> None:
    assert matrix.column_for_profession(profession) == column


def test_every_profession_group_has_professions_and_none_is_mr(matrix: AccessMatrix) -> None:
    columns = {p.column for p in matrix.professions}
    assert columns == set(COLUMNS) - {"mr"}
    assert matrix.column("mr").designated


def test_directory_codes_are_accepted(data: dict[str, Any]) -> None:
    data["professions"]["pharmacist"]["directory_code"] = "LU-PHA"
    matrix = AccessMatrix.from_dict(data)
    assert matrix.column_for_profession("LU-PHA") == "pha"
    assert matrix.column_for_profession("pharmacist") == "pha"


def test_labels_per_language(matrix: AccessMatrix) -> None:
    assert matrix.label("lab-results") == "Analyses médicales"
    assert matrix.label("lab-results", "de") == "Medizinische Analysen"
    assert matrix.label("lab-results", "de-LU") == "Medizinische Analysen"
    assert matrix.label("lab-results", "en") == "Laboratory results"
    assert matrix.label("lab-results", "pt") == "Analyses médicales"
    assert matrix.category("access-traces").label("fr") == "Tableau de bord des traces"
    assert matrix.column("pha").label("en") == "Pharmacist"
    for category in matrix.categories:
        assert all(category.labels[lang] for lang in ("fr", "de", "en"))


def test_care_context_durations_come_from_settings(matrix: AccessMatrix) -> None:
    defaults = Settings()
    solo, facility, emergency = (matrix.care_context(c) for c in ("solo", "facility", "emergency"))
    assert solo.duration(defaults) == timedelta(days=15)
    assert solo.renewal(defaults) is None
    assert facility.duration(defaults) == timedelta(days=45)
    assert facility.renewal(defaults) == timedelta(days=30)
    assert emergency.duration(defaults) == timedelta(hours=24, days=15)
    changed = Settings(access_solo_days=7, access_emergency_hours=48, access_emergency_extra_days=10)
    assert solo.duration(changed) == timedelta(days=7)
    assert emergency.duration(changed) == timedelta(days=12)


def test_the_data_file_holds_no_duration_numbers() -> None:
    contexts = tomllib.loads(MATRIX_FILE.read_text(encoding="utf-8"))["care_contexts"]
    for context in contexts.values():
        for named in (context["duration"], context.get("renewal", {})):
            assert all(isinstance(v, str) and v.startswith("access_") for v in named.values())


# --- broken files --------------------------------------------------------------------------------------


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split("/")
    node = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("matrix/imaging/bio", _DELETE, "matrix.imaging: no right for column 'bio'"),
        ("matrix/imaging/bio", "x", "matrix.imaging: column 'bio': 'x' is not one of 'rw', 'r', '-'"),
        ("matrix/imaging/bio", "RW", "is not one of"),
        ("matrix/imaging/vet", "r", "matrix.imaging: unknown column 'vet'"),
        ("matrix/x-rays", {c: "r" for c in COLUMNS}, "matrix.x-rays: unknown category 'x-rays'"),
        ("matrix/imaging", _DELETE, "categories.imaging: has no row in [matrix] or [platform_matrix]"),
        ("platform_matrix/imaging", {c: "r" for c in COLUMNS}, "row already given in [matrix]"),
        ("categories/imaging/de", _DELETE, "categories.imaging: 'de' must be a non-empty string"),
        ("categories/Imaging", {"fr": "a", "de": "b", "en": "c", "contains": "d"}, "code 'Imaging'"),
        ("categories/imaging/colour", "red", "categories.imaging: unknown key 'colour'"),
        ("columns/0/code", "mr", "columns.mr: defined twice"),
        ("professions/pharmacist/column", "vet", "professions.pharmacist: unknown column 'vet'"),
        ("professions/pharmacist/column", "mr", "is a designation, not a profession group"),
        ("professions/midwife", _DELETE, "columns.sf: no profession is assigned to this column"),
        ("professions/pharmacist/isco08", 2262, "isco08 2262 must be a string"),
        ("care_contexts/solo/duration", {"days": "access_solo_dayz"}, "'access_solo_dayz' is not an integer"),
        ("care_contexts/solo/duration", {"weeks": "access_solo_days"}, "unit 'weeks' must be one of"),
        ("care_contexts/solo/duration", {}, "care_contexts.solo.duration: must name at least one setting"),
        ("care_contexts/solo/duration", {"days": "database_url"}, "is not an integer setting"),
        ("schema", 2, "schema: expected 1, got 2"),
        ("rights", {}, "rights: unknown section"),
    ],
)
def test_broken_files_are_refused(data: dict[str, Any], path: str, value: Any, message: str) -> None:
    _set(data, path, value)
    with pytest.raises(MatrixError) as caught:
        AccessMatrix.from_dict(data, source="broken.toml")
    assert str(caught.value).startswith("broken.toml: invalid access matrix:")
    assert message in str(caught.value)


def test_every_problem_is_listed_at_once(data: dict[str, Any]) -> None:
    del data["matrix"]["imaging"]["bio"]
    data["matrix"]["dispensations"]["pha"] = "w"
    with pytest.raises(MatrixError) as caught:
        AccessMatrix.from_dict(data, source="broken.toml")
    assert "no right for column 'bio'" in str(caught.value)
    assert "'w' is not one of" in str(caught.value)


def test_unreadable_file_names_the_path(tmp_path: Path) -> None:
    broken = tmp_path / "matrix.toml"
    broken.write_text('schema = 1\n[matrix\nimaging = "r"\n', encoding="utf-8")
    with pytest.raises(MatrixError, match=re.escape(f"{broken}: cannot read the access matrix")):
        AccessMatrix.load(broken)
    with pytest.raises(MatrixError, match="cannot read"):
        AccessMatrix.load(tmp_path / "missing.toml")


def test_loading_a_copy_from_disk(tmp_path: Path) -> None:
    copy_path = tmp_path / "matrix.toml"
    copy_path.write_text(MATRIX_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    assert AccessMatrix.load(copy_path).right("pha", "dispensations") is RW


# --- the documentation and the source -----------------------------------------------------------------

_SYMBOLS = {"RW": RW, "R": R, "—": NO}


def _doc_table(name: str) -> list[list[str]]:
    text = DOC.read_text(encoding="utf-8")
    block = text.split(f"<!-- {name}:begin -->", 1)[1].split(f"<!-- {name}:end -->", 1)[0]
    rows = [line for line in block.strip().splitlines() if line.startswith("|")][2:]
    return [[cell.strip().strip("`") for cell in row.strip().strip("|").split("|")] for row in rows]


@pytest.mark.parametrize("table", ["matrix", "platform"])
def test_doc_table_equals_the_data(matrix: AccessMatrix, table: str) -> None:
    rows = _doc_table(table)
    expected = [c for c in matrix.categories if c.regulation == (table == "matrix")]
    assert [row[1] for row in rows] == [c.code for c in expected]
    for row, category in zip(rows, expected, strict=True):
        assert row[0] == category.labels["fr"]
        cells = {col: _SYMBOLS[cell] for col, cell in zip(COLUMNS, row[2:], strict=True)}
        assert cells == {col: matrix.right(col, category.code) for col in COLUMNS}, category.code


def test_doc_professions_equal_the_data(matrix: AccessMatrix) -> None:
    rows = [(r[0], r[1], r[2], r[3]) for r in _doc_table("professions")]
    assert rows == [(p.column, p.code, p.labels["fr"], p.isco08 or "—") for p in matrix.professions]


def test_data_equals_the_transcription_in_law_and_crossborder(matrix: AccessMatrix) -> None:
    """The full table of §A.5, when the shared docs are checked out next to the repository."""
    if not LAW.exists():
        pytest.skip(f"shared docs not available: {LAW}")
    text = LAW.read_text(encoding="utf-8").split("## A.5", 1)[1].split("## A.6", 1)[0]
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.count("|") == 13]
    header, *body = (r for r in rows if not r.startswith("|---"))
    assert [c.strip().lower().replace("é", "e") for c in header.strip("|").split("|")][1:] == list(COLUMNS)
    by_label = {c.labels["fr"]: c.code for c in matrix.categories}
    seen = []
    for row in body:
        label, *cells = (c.strip() for c in row.strip().strip("|").split("|"))
        code = by_label[label]
        seen.append(code)
        for col, cell in zip(COLUMNS, cells, strict=True):
            assert matrix.right(col, code) is _SYMBOLS[cell], (code, col)
    assert tuple(seen) == CATEGORIES
