"""The accepted document types, the patient's categories, and the category a Binary inherits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sharedcare.access.categories import CATEGORY_SYSTEM, DOCUMENT_TYPE_SYSTEM, LOINC, classify
from sharedcare.access.matrix import access_matrix
from sharedcare.documents.categories import DocumentTypesError, document_types, load

PATIENT_CATEGORIES = {
    "laboratory-results",
    "hospital-reports",
    "imaging",
    "prescriptions",
    "patient-summary",
    "vaccination",
    "consultation-notes",
    "personal-documents",
}


def doc(code: str, system: str = LOINC, authors: tuple[str, ...] = ("Organization/lab1",)) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "type": {"coding": [{"system": system, "code": code}]},
        "author": [{"reference": a} for a in authors],
    }


def test_the_eight_categories_with_their_labels() -> None:
    table = document_types()
    assert set(table.categories) == PATIENT_CATEGORIES
    for category in table.categories.values():
        assert all(category.labels[lang].strip() for lang in ("fr", "de", "en"))
    assert table.categories["laboratory-results"].label("de") == "Laborergebnisse"
    assert table.categories["imaging"].label("xx") == "Imaging"


def test_every_type_has_a_matrix_row_its_category_allows() -> None:
    rows = {c.code for c in access_matrix().categories}
    table = document_types()
    assert len(table.types) >= 30
    for found in table.types.values():
        assert found.matrix_category in rows
        assert found.matrix_category in found.category.matrix, found.code
    for row, category in table.fallback.items():
        assert row in rows and row in category.matrix


def test_domain_document_types_are_accepted() -> None:
    """The suggested codes of DOMAIN.md §1.3, each in the category a patient expects."""
    expected = {
        "60591-5": "patient-summary",
        "11502-2": "laboratory-results",
        "18842-5": "hospital-reports",
        "34105-7": "hospital-reports",
        "18748-4": "imaging",
        "57833-6": "prescriptions",
        "60593-1": "prescriptions",
        "11369-6": "vaccination",
        "11488-4": "consultation-notes",
    }
    table = document_types()
    for code, category in expected.items():
        found = table.get(LOINC, code)
        assert found is not None and found.category.code == category, code
    personal = table.get(DOCUMENT_TYPE_SYSTEM, "personal-document")
    assert personal is not None and personal.matrix_category == "personal-expression"


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        (doc("11502-2"), "laboratory-results"),
        (doc("18842-5"), "hospital-reports"),
        (doc("18748-4"), "imaging"),
        (doc("60593-1"), "prescriptions"),
        (doc("60591-5"), "patient-summary"),
        (doc("11369-6"), "vaccination"),
        (doc("11488-4"), "consultation-notes"),
        (doc("personal-document", DOCUMENT_TYPE_SYSTEM, ("Patient/pa",)), "personal-documents"),
        (doc("11502-2", authors=("Patient/pa",)), "personal-documents"),  # the holder's own copy
        (doc("57133-1"), "prescriptions"),  # not accepted by MHD, placed by its matrix row
        (doc("99999-9"), "consultation-notes"),  # unknown: care report
        (doc("47519-4"), None),  # history of procedures: no patient category
    ],
)
def test_patient_category_of_a_document(resource: dict[str, Any], expected: str | None) -> None:
    found = document_types().category_of(resource)
    assert (found.code if found else None) == expected


def test_a_binary_takes_its_documents_category() -> None:
    def binary(code: str | None, system: str = CATEGORY_SYSTEM) -> dict[str, Any]:
        tags = [{"system": system, "code": code}] if code else []
        return {"resourceType": "Binary", "meta": {"tag": tags}, "contentType": "application/pdf"}

    assert classify(binary("imaging")) == "imaging"
    assert classify(binary("personal-expression")) == "personal-expression"
    assert classify(binary(None)) == "care-reports"
    assert classify(binary("holder-choices")) == "care-reports"  # platform rows cannot be claimed
    assert classify(binary("imaging", "http://example.org/other")) == "care-reports"


def test_an_inconsistent_data_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "types.toml"
    base = '[[categories]]\ncode = "x"\nmatrix = ["lab-results"]\nfr = "x"\nde = "x"\nen = "x"\n'
    path.write_text(base + '[[types]]\ncode = "11502-2"\ndisplay = "d"\ncategory = "nope"\n')
    with pytest.raises(DocumentTypesError, match="unknown category"):
        load(path)
    path.write_text(base + '[[types]]\ncode = "00000-0"\ndisplay = "d"\ncategory = "x"\n')
    with pytest.raises(DocumentTypesError, match="no row of the access matrix"):
        load(path)


def test_a_submission_list_takes_its_tag_else_its_code() -> None:
    tagged = {"resourceType": "List", "meta": {"tag": [{"system": CATEGORY_SYSTEM, "code": "imaging"}]}}
    assert classify(tagged) == "imaging"
    assert classify({"resourceType": "List", "code": {"coding": [{"system": LOINC, "code": "11502-2"}]}}) == (
        "lab-results"
    )
    assert classify({**tagged, "source": {"reference": "Patient/pa"}}) == "personal-expression"
