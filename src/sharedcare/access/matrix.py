"""The default access matrix of the DSP regulation (Annex 1), read from ``data/matrix.toml``.

The matrix is a legal table transcribed by hand from an image ([P]), so it is data, not code: a
jurist can check the file against the official text without reading Python, and a correction is a
one-cell change. This module reads, validates and indexes it; ``access.policy`` makes the decision.

Columns are the profession groups of Annex 1 (``med``, ``mr``, ``pha``…); categories are the data
categories (``lab-results``…) that ``access.categories.classify`` assigns to every resource.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sharedcare.settings import Settings

MATRIX_FILE = Path(__file__).parent / "data" / "matrix.toml"
LANGUAGES = ("fr", "de", "en")
"""Label languages; French is the regulation's language and the fallback."""

_CODE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_TOP_LEVEL = {
    "schema",
    "columns",
    "categories",
    "matrix",
    "platform_matrix",
    "professions",
    "care_contexts",
    "vaccination",
}
VACCINATION = "vaccination"
"""The category of the vaccination record; its writers are also limited to ``[vaccination] vaccinators``."""
_DURATION_UNITS = ("days", "hours")


class MatrixError(ValueError):
    """The matrix file is malformed; the message names the file and every faulty entry."""


class UnknownCode(LookupError):
    """A column, category, profession or care-context code that the matrix does not define."""


class Right(StrEnum):
    """One cell of the matrix, spelled as in the file."""

    NONE = "-"
    READ = "r"
    READ_WRITE = "rw"

    @property
    def can_read(self) -> bool:
        return self is not Right.NONE

    @property
    def can_write(self) -> bool:
        return self is Right.READ_WRITE


def _label(labels: Mapping[str, str], lang: str) -> str:
    """The label in ``lang`` (``de-LU`` counts as ``de``); French when the language is not offered."""
    return labels.get(lang.split("-", 1)[0].lower()) or labels["fr"]


@dataclass(frozen=True, slots=True)
class Column:
    """A column of Annex 1: a group of professions, or the médecin référent designation."""

    code: str
    abbreviation: str
    labels: Mapping[str, str]
    designated: bool = False
    """True for ``mr``: applied to the physician the CNS designates, not derived from a profession."""

    def label(self, lang: str = "fr") -> str:
        return _label(self.labels, lang)


@dataclass(frozen=True, slots=True)
class Category:
    """A data category; ``regulation`` is False for the platform's own ``identity`` and ``holder-choices``."""

    code: str
    labels: Mapping[str, str]
    contains: str
    regulation: bool

    def label(self, lang: str = "fr") -> str:
        return _label(self.labels, lang)


@dataclass(frozen=True, slots=True)
class Profession:
    """A profession of the national directory and the matrix column it reads and writes with."""

    code: str
    column: str
    labels: Mapping[str, str]
    isco08: str | None = None
    directory_code: str | None = None

    def label(self, lang: str = "fr") -> str:
        return _label(self.labels, lang)


@dataclass(frozen=True, slots=True)
class CareContext:
    """A care context of Annex 1 §3; its durations are settings, named by unit (``days``, ``hours``)."""

    code: str
    labels: Mapping[str, str]
    starts: str
    duration_settings: Mapping[str, str]
    renewal_settings: Mapping[str, str]
    note: str = ""

    def label(self, lang: str = "fr") -> str:
        return _label(self.labels, lang)

    def duration(self, settings: Settings) -> timedelta:
        """Default length of access from the start event (the sum of the named settings)."""
        return _span(self.duration_settings, settings)

    def renewal(self, settings: Settings) -> timedelta | None:
        """Longest single renewal, or None when the context cannot be renewed."""
        return _span(self.renewal_settings, settings) if self.renewal_settings else None


def _span(named: Mapping[str, str], settings: Settings) -> timedelta:
    return sum((timedelta(**{unit: getattr(settings, name)}) for unit, name in named.items()), timedelta())


class AccessMatrix:
    """The validated matrix with per-column indexes; get the shared instance with ``access_matrix()``."""

    def __init__(
        self,
        columns: Iterable[Column],
        categories: Iterable[Category],
        rights: Mapping[str, Mapping[str, Right]],
        professions: Iterable[Profession],
        care_contexts: Iterable[CareContext],
        vaccinators: Iterable[str] = (),
    ) -> None:
        self.vaccinators: frozenset[str] = frozenset(vaccinators)
        """Profession codes that write the vaccination record (the CVE's own rights)."""
        self.columns: tuple[Column, ...] = tuple(columns)
        self.categories: tuple[Category, ...] = tuple(categories)
        self.professions: tuple[Profession, ...] = tuple(professions)
        self.care_contexts: tuple[CareContext, ...] = tuple(care_contexts)
        self._columns = {c.code: c for c in self.columns}
        self._categories = {c.code: c for c in self.categories}
        self._contexts = {c.code: c for c in self.care_contexts}
        self._rights = {cat: dict(row) for cat, row in rights.items()}
        self._readable = {
            col: frozenset(cat for cat, row in rights.items() if row[col].can_read) for col in self._columns
        }
        self._writable = {
            col: frozenset(cat for cat, row in rights.items() if row[col].can_write) for col in self._columns
        }
        self._profession_columns: dict[str, str] = {}
        for prof in self.professions:
            self._profession_columns[prof.code] = prof.column
            if prof.directory_code:
                self._profession_columns[prof.directory_code] = prof.column

    # --- loading ---------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path = MATRIX_FILE) -> AccessMatrix:
        """Read and validate a matrix file; raises ``MatrixError`` naming every problem found."""
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise MatrixError(f"{path}: cannot read the access matrix: {exc}") from exc
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<matrix>") -> AccessMatrix:
        """Validate parsed TOML; raises ``MatrixError`` listing every problem, one per line."""
        return _Parser(source).parse(data)

    # --- queries ---------------------------------------------------------------------------------------

    def column(self, code: str) -> Column:
        try:
            return self._columns[code]
        except KeyError:
            raise UnknownCode(f"unknown matrix column {code!r}; known: {', '.join(self._columns)}") from None

    def category(self, code: str) -> Category:
        try:
            return self._categories[code]
        except KeyError:
            raise UnknownCode(
                f"unknown data category {code!r}; known: {', '.join(self._categories)}"
            ) from None

    def care_context(self, code: str) -> CareContext:
        try:
            return self._contexts[code]
        except KeyError:
            raise UnknownCode(f"unknown care context {code!r}; known: {', '.join(self._contexts)}") from None

    def right(self, column: str, category: str) -> Right:
        """The default right of a column on a category; unknown codes raise ``UnknownCode``."""
        self.column(column)
        return self._rights[self.category(category).code][column]

    def readable_categories(self, column: str) -> frozenset[str]:
        """Categories the column may read (``r`` or ``rw``)."""
        self.column(column)
        return self._readable[column]

    def writable_categories(self, column: str) -> frozenset[str]:
        """Categories the column may write (``rw``)."""
        self.column(column)
        return self._writable[column]

    def column_for_profession(self, profession: str) -> str | None:
        """The column of a profession (our code or its national directory code); None if unknown.

        Never ``mr``: the médecin référent is a designation the policy applies on top of ``med``.
        """
        return self._profession_columns.get(profession)

    def vaccinates(self, profession: str) -> bool:
        """Whether a profession writes the vaccination record: a listed vaccinator (our code or its
        directory code), or a bare column code (tokens carry the column) that writes ``vaccination``."""
        column = self._profession_columns.get(profession)
        if column is not None:
            code = next(
                (p.code for p in self.professions if profession in (p.code, p.directory_code)), profession
            )
            return code in self.vaccinators
        return profession in self._columns and VACCINATION in self._writable.get(profession, frozenset())

    def label(self, category: str, lang: str = "fr") -> str:
        """A category's label in ``fr``, ``de`` or ``en`` (French for any other language)."""
        return self.category(category).label(lang)

    @property
    def regulation_categories(self) -> tuple[str, ...]:
        """The 19 categories of Annex 1, in the regulation's order."""
        return tuple(c.code for c in self.categories if c.regulation)


@cache
def access_matrix() -> AccessMatrix:
    """The process-wide matrix, read and validated on first use."""
    return AccessMatrix.load()


load_matrix = access_matrix
"""Alias of ``access_matrix`` (``access.policy`` was written against this name)."""


class _Parser:
    """Collects every problem of a matrix file before failing, so one run shows them all."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def parse(self, data: Mapping[str, Any]) -> AccessMatrix:
        for key in data:
            if key not in _TOP_LEVEL:
                self.problem(key, f"unknown section (expected one of {', '.join(sorted(_TOP_LEVEL))})")
        if data.get("schema") != 1:
            self.problem("schema", f"expected 1, got {data.get('schema')!r}")
        columns = self.columns(data.get("columns"))
        column_codes = [c.code for c in columns]
        categories = self.categories(data.get("categories"), data)
        rights = self.rights(data, [c.code for c in categories], column_codes)
        professions = self.professions(data.get("professions"), columns)
        contexts = self.care_contexts(data.get("care_contexts"))
        vaccinators = self.vaccinators(data.get("vaccination"), professions, rights)
        if self.problems:
            lines = "\n  ".join(self.problems)
            raise MatrixError(f"{self.source}: invalid access matrix:\n  {lines}")
        return AccessMatrix(columns, categories, rights, professions, contexts, vaccinators)

    def table(self, value: Any, where: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.problem(where, "missing or not a table")
            return {}
        return value

    def text(self, entry: Mapping[str, Any], key: str, where: str, required: bool = True) -> str:
        value = entry.get(key)
        if value is None and not required:
            return ""
        if not isinstance(value, str) or not value.strip():
            self.problem(where, f"{key!r} must be a non-empty string")
            return ""
        return value

    def labels(self, entry: Mapping[str, Any], where: str) -> Mapping[str, str]:
        return MappingProxyType({lang: self.text(entry, lang, where) for lang in LANGUAGES})

    def code(self, code: Any, where: str) -> bool:
        if not isinstance(code, str) or not _CODE.match(code):
            self.problem(where, f"code {code!r} must be lower-case letters, digits and single hyphens")
            return False
        return True

    def unknown_keys(self, entry: Mapping[str, Any], allowed: set[str], where: str) -> None:
        for key in entry:
            if key not in allowed:
                self.problem(where, f"unknown key {key!r}")

    def columns(self, value: Any) -> list[Column]:
        if not isinstance(value, list) or not value:
            self.problem("columns", "missing or not an array of tables ([[columns]])")
            return []
        columns: list[Column] = []
        for i, entry in enumerate(value):
            where = f"columns[{i}]"
            entry = self.table(entry, where)
            code = entry.get("code")
            if not isinstance(code, str) or not self.code(code, where):
                continue
            where = f"columns.{code}"
            self.unknown_keys(entry, {"code", "abbreviation", "designated", *LANGUAGES}, where)
            if any(c.code == code for c in columns):
                self.problem(where, "defined twice")
                continue
            designated = entry.get("designated", False)
            if not isinstance(designated, bool):
                self.problem(where, "'designated' must be true or false")
            columns.append(
                Column(
                    code,
                    self.text(entry, "abbreviation", where),
                    self.labels(entry, where),
                    designated is True,
                )
            )
        return columns

    def categories(self, value: Any, data: Mapping[str, Any]) -> list[Category]:
        matrix = data.get("matrix")
        regulation: Mapping[str, Any] = matrix if isinstance(matrix, Mapping) else {}
        categories: list[Category] = []
        for code, entry in self.table(value, "categories").items():
            where = f"categories.{code}"
            if not self.code(code, where):
                continue
            entry = self.table(entry, where)
            self.unknown_keys(entry, {"contains", *LANGUAGES}, where)
            categories.append(
                Category(
                    code, self.labels(entry, where), self.text(entry, "contains", where), code in regulation
                )
            )
        return categories

    def rights(
        self, data: Mapping[str, Any], categories: list[str], columns: list[str]
    ) -> dict[str, dict[str, Right]]:
        rows: dict[str, tuple[str, Any]] = {}
        for section in ("matrix", "platform_matrix"):
            for code, row in self.table(data.get(section), section).items():
                if code in rows:
                    self.problem(f"{section}.{code}", f"row already given in [{rows[code][0]}]")
                rows[code] = (section, row)
        rights: dict[str, dict[str, Right]] = {}
        for code in categories:
            if code not in rows:
                self.problem(f"categories.{code}", "has no row in [matrix] or [platform_matrix]")
        for code, (section, row) in rows.items():
            where = f"{section}.{code}"
            if code not in categories:
                self.problem(where, f"unknown category {code!r} (declare it under [categories])")
                continue
            row = self.table(row, where)
            for column in row:
                if column not in columns:
                    self.problem(where, f"unknown column {column!r}")
            cells: dict[str, Right] = {}
            for column in columns:
                cell = row.get(column)
                if cell is None:
                    self.problem(where, f"no right for column {column!r}")
                elif cell not in {r.value for r in Right}:
                    self.problem(where, f"column {column!r}: {cell!r} is not one of 'rw', 'r', '-'")
                else:
                    cells[column] = Right(cell)
            rights[code] = cells
        return rights

    def professions(self, value: Any, columns: list[Column]) -> list[Profession]:
        by_code = {c.code: c for c in columns}
        professions: list[Profession] = []
        directory: dict[str, str] = {}
        for code, entry in self.table(value, "professions").items():
            where = f"professions.{code}"
            if not self.code(code, where):
                continue
            entry = self.table(entry, where)
            self.unknown_keys(entry, {"column", "isco08", "directory_code", *LANGUAGES}, where)
            column = entry.get("column")
            if column not in by_code:
                self.problem(where, f"unknown column {column!r}")
            elif by_code[column].designated:
                self.problem(where, f"column {column!r} is a designation, not a profession group")
            isco = entry.get("isco08")
            if isco is not None and not (isinstance(isco, str) and re.fullmatch(r"\d{1,4}", isco)):
                self.problem(where, f"isco08 {isco!r} must be a string of 1 to 4 digits")
            dir_code = entry.get("directory_code")
            if dir_code is not None:
                if not isinstance(dir_code, str) or not dir_code:
                    self.problem(where, "directory_code must be a non-empty string")
                elif dir_code in directory or dir_code in value:
                    self.problem(where, f"directory_code {dir_code!r} is already used")
                else:
                    directory[dir_code] = code
            professions.append(
                Profession(code, str(column), self.labels(entry, where), isco, dir_code or None)
            )
        for column in columns:
            if not column.designated and all(p.column != column.code for p in professions):
                self.problem(f"columns.{column.code}", "no profession is assigned to this column")
        return professions

    def vaccinators(
        self, value: Any, professions: list[Profession], rights: Mapping[str, Mapping[str, Right]]
    ) -> list[str]:
        """``[vaccination] vaccinators``: known professions whose column writes ``vaccination``."""
        if value is None:
            return []
        entry = self.table(value, "vaccination")
        self.unknown_keys(entry, {"vaccinators"}, "vaccination")
        listed = entry.get("vaccinators")
        if not isinstance(listed, list) or not all(isinstance(c, str) for c in listed):
            self.problem("vaccination.vaccinators", "must be a list of profession codes")
            return []
        by_code = {p.code: p for p in professions}
        row = rights.get(VACCINATION, {})
        for code in listed:
            if code not in by_code:
                self.problem("vaccination.vaccinators", f"unknown profession {code!r}")
            elif (cell := row.get(by_code[code].column)) is not None and not cell.can_write:
                self.problem(
                    "vaccination.vaccinators",
                    f"{code!r}: its column {by_code[code].column!r} does not write {VACCINATION!r}",
                )
        return list(listed)

    def settings_names(self, value: Any, where: str) -> Mapping[str, str]:
        named: dict[str, str] = {}
        for unit, name in self.table(value, where).items():
            field = Settings.model_fields.get(name) if isinstance(name, str) else None
            if unit not in _DURATION_UNITS:
                self.problem(where, f"unit {unit!r} must be one of {', '.join(_DURATION_UNITS)}")
            elif field is None or field.annotation is not int:
                self.problem(where, f"{name!r} is not an integer setting of sharedcare.settings.Settings")
            else:
                named[unit] = name
        return MappingProxyType(named)

    def care_contexts(self, value: Any) -> list[CareContext]:
        contexts: list[CareContext] = []
        for code, entry in self.table(value, "care_contexts").items():
            where = f"care_contexts.{code}"
            if not self.code(code, where):
                continue
            entry = self.table(entry, where)
            self.unknown_keys(entry, {"starts", "duration", "renewal", "note", *LANGUAGES}, where)
            duration = self.settings_names(entry.get("duration"), f"{where}.duration")
            if not duration:
                self.problem(f"{where}.duration", "must name at least one setting")
            renewal = (
                self.settings_names(entry["renewal"], f"{where}.renewal")
                if "renewal" in entry
                else MappingProxyType({})
            )
            contexts.append(
                CareContext(
                    code,
                    self.labels(entry, where),
                    self.text(entry, "starts", where),
                    duration,
                    renewal,
                    self.text(entry, "note", where, required=False),
                )
            )
        return contexts
