"""A third-party FHIR client (fhirpy) against a real uvicorn server, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome, ResourceNotFound


def test_fhirpy_round_trip(server_url: str, server_token: str) -> None:
    client = SyncFHIRClient(server_url, authorization=f"Bearer {server_token}")
    meta = client.execute("metadata", method="get")
    assert meta["resourceType"] == "CapabilityStatement"
    assert meta["fhirVersion"] == "4.0.1"

    patient = client.resource(
        "Patient",
        identifier=[{"system": "urn:oid:1.2.3.4", "value": "fhirpy-1"}],
        name=[{"family": "Zwerger", "given": ["Lea"]}],
        gender="female",
        birthDate="1990-04-01",
    )
    patient.save()
    assert patient.id
    assert patient["meta"]["versionId"] == "1"
    other = client.resource("Patient", name=[{"family": "Someone"}], gender="male")
    other.save()

    for value in range(7):
        obs = client.resource(
            "Observation",
            status="final",
            code={"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            subject=patient.to_reference(),
            effectiveDateTime=f"2024-01-0{value + 1}",
            valueQuantity={
                "value": 60 + value,
                "unit": "kg",
                "system": "http://unitsofmeasure.org",
                "code": "kg",
            },
        )
        obs.save()
        assert obs.id

    found = client.resources("Patient").search(family="Zwerger").fetch()
    assert [p.id for p in found] == [patient.id]
    assert found[0]["name"][0]["given"] == ["Lea"]
    assert client.resources("Patient").search(identifier="urn:oid:1.2.3.4|fhirpy-1").get().id == patient.id
    assert client.resources("Patient").search(family="Nobody").fetch() == []
    assert len(client.resources("Patient").fetch_all()) == 2

    observations = client.resources("Observation").search(subject=f"Patient/{patient.id}")
    first_page = observations.limit(3).fetch()
    assert len(first_page) == 3
    every = observations.limit(3).sort("date").fetch_all()
    assert len(every) == 7
    assert len({o.id for o in every}) == 7
    assert [o["effectiveDateTime"] for o in every] == [f"2024-01-0{i + 1}" for i in range(7)]
    heavy = client.resources("Observation").search(**{"value-quantity": "ge64"}).fetch_all()
    assert len(heavy) == 3
    assert client.resources("Observation").search(patient=patient.id).count() == 7
    # _include brings the patient along; fhirpy returns the matches only.
    included = client.resources("Observation").search(subject=patient.id).include("Observation", "subject")
    assert len(included.limit(10).fetch()) == 7

    read = client.reference("Patient", patient.id).to_resource()
    assert read["name"][0]["family"] == "Zwerger"
    assert read["meta"]["versionId"] == "1"

    read["gender"] = "other"
    read.save()
    assert read["meta"]["versionId"] == "2"
    again = client.reference("Patient", patient.id).to_resource()
    assert again["gender"] == "other"
    assert again["meta"]["versionId"] == "2"
    assert client.resources("Patient").search(gender="other").fetch()[0].id == patient.id

    with pytest.raises(OperationOutcome):
        client.resource("Patient", gender="mal").save()
    with pytest.raises(ResourceNotFound):
        client.reference("Patient", "does-not-exist").to_resource()
    client.resource("Patient", name=[{"family": "Zwerger"}]).save()
    with pytest.raises(MultipleResourcesFound):
        client.resources("Patient").search(family="Zwerger").get()

    other.delete()
    with pytest.raises(ResourceNotFound):
        client.reference("Patient", other.id).to_resource()
    assert client.resources("Patient").search(_id=other.id).fetch() == []
    assert client.resources("Patient").search(family="Someone").count() == 0
    assert len(client.resources("Patient").fetch_all()) == 2
