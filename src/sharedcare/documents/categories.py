"""The document categories a patient recognises, and the document types the platform accepts.

The access matrix sorts data into the regulation's rows (``access.categories``); a patient looks
for "my laboratory results" or "my hospital reports". This module maps each accepted document
type (``DocumentReference.type``) to one of eight patient categories, from the data file
``data/document-types.toml``: the MHD validator refuses types that are not listed there, and the
portal groups the record's documents by these categories. The row of the matrix (who may read a
document) stays the access module's decision; a test checks that the two agree.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from sharedcare.access.categories import LOINC, category_for_document_type, classify

DATA = Path(__file__).parent / "data" / "document-types.toml"
PERSONAL = "personal-documents"
"""The patient category of everything the holder (or a representative) writes."""
_HOLDER_SIDE = ("Patient/", "RelatedPerson/")


@dataclass(frozen=True, slots=True)
class PatientCategory:
    """One category of the patient's view, with its labels and the matrix rows its types fall in."""

    code: str
    labels: Mapping[str, str]
    matrix: frozenset[str]

    def label(self, language: str) -> str:
        """The label in ``language`` (fr, de, en), English when there is none."""
        return self.labels.get(language) or self.labels["en"]


@dataclass(frozen=True, slots=True)
class DocumentType:
    """An accepted document type: a coding of ``DocumentReference.type``."""

    system: str
    code: str
    display: str
    category: PatientCategory
    matrix_category: str
    """The access matrix row of its documents (``access.categories``)."""


@dataclass(frozen=True, slots=True)
class DocumentTypes:
    """The accepted types and the patient categories, as read from the data file."""

    categories: Mapping[str, PatientCategory]
    types: Mapping[tuple[str, str], DocumentType]
    fallback: Mapping[str, PatientCategory]
    """Matrix category → patient category, for documents of types not listed."""

    def get(self, system: str | None, code: str | None) -> DocumentType | None:
        """The accepted type of this coding, or None."""
        if system is None or code is None:
            return None
        return self.types.get((system, code))

    def type_of(self, document: Mapping[str, Any]) -> DocumentType | None:
        """The first accepted type among the codings of ``DocumentReference.type``."""
        concept = document.get("type")
        codings = concept.get("coding") if isinstance(concept, Mapping) else None
        for coding in codings if isinstance(codings, list) else ():
            if isinstance(coding, Mapping):
                found = self.get(coding.get("system"), coding.get("code"))
                if found is not None:
                    return found
        return None

    def category_of(self, document: Mapping[str, Any]) -> PatientCategory | None:
        """The patient category of a DocumentReference: the holder's own writings are personal
        documents; else its type's category; else the one of its matrix row (None: none fits)."""
        authors = document.get("author")
        refs = [a.get("reference") for a in authors or () if isinstance(a, Mapping)]
        if refs and all(isinstance(r, str) and r.startswith(_HOLDER_SIDE) for r in refs):
            return self.categories[PERSONAL]
        found = self.type_of(document)
        if found is not None:
            return found.category
        row = classify(document)
        return self.fallback.get(row) if row is not None else None


class DocumentTypesError(ValueError):
    """The data file is inconsistent (a type without a category, an unknown matrix row...)."""


def load(path: Path = DATA) -> DocumentTypes:
    """Read and check the data file."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    categories: dict[str, PatientCategory] = {}
    for raw in data["categories"]:
        labels = {lang: str(raw[lang]) for lang in ("fr", "de", "en")}
        categories[raw["code"]] = PatientCategory(raw["code"], labels, frozenset(raw["matrix"]))
    types: dict[tuple[str, str], DocumentType] = {}
    for raw in data["types"]:
        system, code = raw.get("system", LOINC), raw["code"]
        category = categories.get(raw["category"])
        if category is None:
            raise DocumentTypesError(f"type {code}: unknown category {raw['category']!r}")
        row = category_for_document_type(code, system)
        if row is None:
            raise DocumentTypesError(f"type {system}|{code} has no row of the access matrix")
        if (system, code) in types:
            raise DocumentTypesError(f"type {system}|{code} is listed twice")
        types[(system, code)] = DocumentType(system, code, raw["display"], category, row)
    fallback = {row: categories[code] for row, code in data.get("fallback", {}).items()}
    return DocumentTypes(categories, types, fallback)


@cache
def document_types() -> DocumentTypes:
    """The process-wide table, read once."""
    return load()
