"""Which patient a search, or a request, names: the access filter decides that patient's care
once per statement where every match is in their record (``SearchEngine.searched_patient``,
``access.tokens.requested_patient``). Anything else names no patient (each row is decided)."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from sharedcare.access.tokens import requested_patient
from sharedcare.fhir.definitions import definitions
from sharedcare.fhir.search.compile import CompileContext
from sharedcare.fhir.search.engine import SearchEngine
from sharedcare.fhir.search.parse import QueryParser
from sharedcare.fhir.store import utcnow

DEFS = definitions()
ENGINE = SearchEngine(CompileContext(DEFS, "http://sc.example/fhir", utcnow()))


@pytest.mark.parametrize(
    ("rtype", "params", "patient"),
    [
        ("Observation", [("patient", "Patient/p1")], "p1"),
        ("Observation", [("patient", "p1"), ("code", "http://loinc.org|718-7")], "p1"),
        ("Observation", [("subject", "Patient/p1")], "p1"),
        ("Observation", [("performer", "Patient/p1")], "p1"),  # a compartment parameter
        ("DocumentReference", [("patient", "Patient/p1"), ("_sort", "-date")], "p1"),
        ("Observation", [("subject", "p1")], None),  # a plain id may name a Group
        ("Observation", [("subject", "Group/g1")], None),
        ("Observation", [("patient", "Patient/p1,Patient/p2")], None),  # either of two
        ("Observation", [("patient:missing", "false")], None),
        ("Observation", [("patient.name", "Muller")], None),  # a chain
        ("Observation", [("patient", "http://elsewhere.example/fhir/Patient/p1")], None),
        ("Observation", [("encounter", "Encounter/e1")], None),  # not a compartment parameter
        ("Observation", [("code", "http://loinc.org|718-7")], None),
        ("Contract", [("patient", "Patient/p1")], None),  # a Contract is in no patient's record
    ],
)
def test_a_search_names_a_patient_only_where_every_match_is_theirs(
    rtype: str, params: list[tuple[str, str]], patient: str | None
) -> None:
    query = QueryParser(DEFS, strict=True, max_count=1000).parse(rtype, params)
    assert ENGINE.searched_patient(query) == patient


def _request(path: str, query: str = "") -> Request:
    scope = {"type": "http", "method": "GET", "path": path, "query_string": query.encode(), "headers": []}
    return Request(scope)


@pytest.mark.parametrize(
    ("path", "query", "patient"),
    [
        ("/fhir/Observation", "patient=Patient/p1&code=x", "p1"),
        ("/fhir/DocumentReference", "patient=p1", "p1"),
        ("/fhir/Patient/p1/$everything", "", "p1"),
        ("/fhir/Patient/p1/Observation", "code=x", "p1"),
        ("/fhir/Patient/p1", "", None),  # a read: decided on its one row
        ("/fhir/Patient/p1/_history", "", None),
        ("/fhir/Patient/p1/$everything", "patient=Patient/p2", "p1"),  # the path's patient
        ("/fhir/Observation", "subject=Patient/p1", "p1"),
        ("/fhir/Observation", "subject=p1", None),  # a plain id may name a Group
        ("/fhir/Observation", "patient=Patient/p1&patient=Patient/p2", None),
        ("/fhir/Observation", "patient=Patient/p1,Patient/p2", None),
        ("/fhir/Observation", "patient=Group/g1", None),
        ("/fhir/Observation", "", None),
    ],
)
def test_a_request_names_the_patient_of_its_query_or_path(path: str, query: str, patient: str | None) -> None:
    assert requested_patient(_request(path, query)) == patient
