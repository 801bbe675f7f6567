"""Searches whose candidates come from one criterion's index rows (``SearchEngine._driver``,
``compile.driving_rows``): the statement then reads a resource row only for the page it returns,
and answers exactly what it answered when each candidate's row was read.

The answers are checked on both databases against the statement read from the resource rows
(the same search with a ``_lastUpdated`` criterion every row meets, which is never driven), and
the rule the driver relies on is checked where it is made: a deleted or changed resource keeps
no index row of its former content."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.dialects import postgresql

from sharedcare.fhir.definitions import definitions
from sharedcare.fhir.search.compile import CompileContext
from sharedcare.fhir.search.engine import SearchEngine, SearchResult
from sharedcare.fhir.search.parse import QueryParser
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.store import utcnow
from sharedcare.storage.engine import make_engine
from sharedcare.storage.tables import INDEX_TABLES
from support import truncate

BASE = "http://sc.example/fhir"
DEFS = definitions()
ENGINE = SearchEngine(CompileContext(DEFS, BASE, utcnow()))
PARSER = QueryParser(DEFS, strict=True, max_count=1000)
EVERY_ROW = ("_lastUpdated", "gt1900-01-01")


def _sql(rtype: str, params: list[tuple[str, str]]) -> str:
    query = PARSER.parse(rtype, params)
    r, conds = ENGINE._rows(query, None, None)
    keyed = "content" not in r.c
    stmt = ENGINE._page(r, conds, [], [], 20, True, True) if keyed else select(r.c.pk).where(*conds)
    return str(stmt.compile(dialect=postgresql.dialect()))


@pytest.mark.parametrize(
    ("rtype", "params", "driven"),
    [
        ("DocumentReference", [("patient", "Patient/p1"), ("_sort", "-date")], True),
        ("Observation", [("patient", "p1"), ("code", "http://loinc.org|718-7")], True),
        ("Observation", [("code:not", "x"), ("subject", "Patient/p1")], True),  # the first that can
        ("Observation", [("patient.name", "Muller"), ("code", "x")], True),  # a chain reads the key
        ("Observation", [("code:not", "x")], False),  # a resource without the code matches
        ("Observation", [("code:missing", "true")], False),
        ("Observation", [("patient.name", "Muller")], False),  # a chain alone: rows of the target
        ("Observation", [("code", "x"), EVERY_ROW], False),  # reads the row's time
        ("Observation", [("code", "x"), ("_id", "o1")], False),
        ("Patient", [("family", "Muller"), ("_has:Observation:patient:code", "x")], False),
        ("Observation", [("code", "x"), ("_sort", "_lastUpdated")], False),
        ("Observation", [("combo-code-value-quantity", "http://loinc.org|718-7$gt5")], False),
        ("Observation", [], False),
    ],
)
def test_the_candidates_come_from_index_rows_only_where_every_criterion_reads_the_key(
    rtype: str, params: list[tuple[str, str]], driven: bool
) -> None:
    assert ("AS dr" in _sql(rtype, params)) is driven


def test_a_driven_page_reads_resource_rows_for_its_own_rows_only() -> None:
    query = PARSER.parse("DocumentReference", [("patient", "Patient/p1"), ("_sort", "-date")])
    r, conds = ENGINE._rows(query, None, None)
    assert set(r.c.keys()) == {"pk"}
    sql = str(ENGINE._page(r, conds, [], [], 20, True, True).compile(dialect=postgresql.dialect()))
    assert sql.count("resource AS") == 1
    assert "JOIN resource AS rp ON rp.pk = pg.pk AND rp.deleted IS false" in sql


def _observation(rid: str, patient: str, code: str, value: float, when: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": c} for c in code.split(",")]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": "g/dL"},
    }


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    truncate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def filled(engine: Engine) -> FhirService:
    svc = FhirService(engine)
    for pid in ("p1", "p2"):
        svc.update("Patient", pid, {"resourceType": "Patient", "id": pid, "name": [{"family": f"Fam{pid}"}]})
    for n in range(12):
        patient = "p1" if n % 3 else "p2"
        code = "718-7,2345-7" if n == 10 else "718-7" if n % 2 else "2345-7"  # o10: both codes
        svc.update(
            "Observation",
            f"o{n}",
            _observation(f"o{n}", patient, code, float(n), f"2024-01-{n + 1:02d}"),
        )
    svc.delete("Observation", "o4")  # p1, 718-7: gone from every answer
    svc.update("Observation", "o7", _observation("o7", "p2", "718-7", 7.0, "2024-01-08"))  # moved
    svc.update("Observation", "o5", _observation("o5", "p1", "9999-9", 5.0, "2024-01-06"))  # recoded
    return svc


def _answer(svc: FhirService, params: list[tuple[str, str]], count: int = 3) -> tuple[int | None, list[str]]:
    """The total and every match, page after page (``next`` links: the statement without total),
    checked against the pages read back from the last one (``previous`` links)."""

    def page(cursor: str | None) -> SearchResult:
        paged = [*params, ("_count", str(count)), *((("_page", cursor),) if cursor else ())]
        return svc.search(svc.parse_search("Observation", paged, strict=True), base_url=BASE)

    result = page(None)
    total, pages = result.total, [[s.id for s in result.matches]]
    while result.next_cursor:
        result = page(result.next_cursor)
        pages.append([s.id for s in result.matches])
    back = [pages[-1]]
    while result.previous_cursor:
        result = page(result.previous_cursor)
        back.insert(0, [s.id for s in result.matches])
    assert back == pages
    return total, [rid for ids in pages for rid in ids]


@pytest.mark.parametrize(
    "params",
    [
        [("patient", "Patient/p1")],
        [("subject", "Patient/p1"), ("_sort", "-date")],
        [("patient", "Patient/p1"), ("code", "http://loinc.org|718-7"), ("_sort", "date")],
        [("code", "http://loinc.org|718-7,http://loinc.org|2345-7"), ("_sort", "-value-quantity")],
        [("value-quantity", "gt3"), ("patient", "Patient/p2")],
        [("code", "718-7"), ("patient.family", "Famp1")],
        [("code", "http://loinc.org|9999-9")],
    ],
)
def test_a_driven_search_answers_what_the_rows_answer(
    filled: FhirService, params: list[tuple[str, str]]
) -> None:
    total, ids = _answer(filled, params)
    assert total and "o4" not in ids and len(ids) == len(set(ids)) == total
    assert (total, ids) == _answer(filled, [*params, EVERY_ROW])  # read from the resource rows


def test_a_deleted_or_changed_resource_keeps_no_index_row_of_its_former_content(
    filled: FhirService, engine: Engine
) -> None:
    with engine.connect() as conn:
        gone = filled.read("Observation", "o3").pk
        filled.delete("Observation", "o3")
        rows = sum(
            conn.execute(select(func.count()).select_from(t).where(t.c.res_pk == gone)).scalar_one()
            for t in INDEX_TABLES.values()
        )
        assert rows == 0
        token = INDEX_TABLES["token"]
        changed = filled.read("Observation", "o5").pk
        codes = set(
            conn.execute(
                select(token.c.code).where(token.c.res_pk == changed, token.c.param == "code")
            ).scalars()
        )
        assert codes == {"9999-9"}
