"""Chains through reference parameters that name no target type (HL7 leaves ``target`` empty for
some canonical references): the parser refuses such a hop (strict handling) or drops the
criterion (lenient), so the compiler never builds a hop with no target branch; it would reach
nothing if it did (``compile._chained``), rather than an empty OR that SQL drops."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sharedcare.fhir.definitions import definitions
from sharedcare.fhir.errors import BadRequest
from sharedcare.fhir.service import FhirService
from sharedcare.storage.engine import make_engine
from support import truncate


@pytest.fixture
def svc(db_url: str) -> Iterator[FhirService]:
    engine = make_engine(db_url)
    truncate(engine)
    yield FhirService(engine)
    engine.dispose()


def test_a_chain_through_a_parameter_without_targets_reaches_nothing(svc: FhirService) -> None:
    assert definitions().param("RequestGroup", "instantiates-canonical").targets == ()
    svc.update(
        "PlanDefinition",
        "pd1",
        {"resourceType": "PlanDefinition", "id": "pd1", "status": "active", "name": "abc"},
    )
    svc.update(
        "RequestGroup",
        "rg1",
        {
            "resourceType": "RequestGroup",
            "id": "rg1",
            "status": "active",
            "intent": "plan",
            "instantiatesCanonical": ["PlanDefinition/pd1"],
        },
    )

    svc.update(
        "Provenance",
        "prov1",
        {
            "resourceType": "Provenance",
            "id": "prov1",
            "target": [{"reference": "RequestGroup/rg1"}],
            "recorded": "2026-11-26T09:00:00Z",
            "agent": [{"who": {"display": "Dr Test"}}],
        },
    )

    def ids(params: list[tuple[str, str]], *, strict: bool = True) -> set[str]:
        return {s.id for s in svc.search(svc.parse_search("Provenance", params, strict=strict)).matches}

    assert ids([]) == {"prov1"}
    assert ids([("target:RequestGroup.status", "active")]) == {"prov1"}  # the chain itself works
    hop = [("target:RequestGroup.instantiates-canonical.name", "zzz")]
    with pytest.raises(BadRequest, match="instantiates-canonical"):
        ids(hop)  # the parser refuses the hop (strict handling)...
    assert ids(hop, strict=False) == {"prov1"}  # ...or drops the criterion (lenient), as FHIR says
