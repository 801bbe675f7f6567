"""FHIR search across references over HTTP: chained parameters, reverse chaining (``_has``),
``_include`` and ``_revinclude`` (with ``:iterate``); on SQLite and PostgreSQL.

Every test stores a small data set with known ids (one transaction Bundle of PUTs) and asserts the
exact ids matched and included.
"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from support import get_bundle, put_all

LOINC = "http://loinc.org"


# -- helpers ----------------------------------------------------------------------------------------
def entry_keys(bundle: dict[str, Any], mode: str) -> list[str]:
    """``Type/id`` of the entries with the given search.mode, in order."""
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == mode
    ]


def found(client: TestClient, url: str) -> set[str]:
    """The ids a one-page search matches; checks total and that no id is repeated."""
    bundle = get_bundle(client, url)
    keys = entry_keys(bundle, "match")
    assert len(keys) == len(set(keys)), f"{url}: duplicate matches {keys}"
    assert bundle["total"] == len(keys), f"{url}: total {bundle['total']} for {keys}"
    return {k.split("/")[1] for k in keys}


def search_with_includes(client: TestClient, url: str) -> tuple[set[str], set[str]]:
    """(matched, included) ``Type/id`` sets; checks entry order, fullUrls, total and no duplicates."""
    bundle = get_bundle(client, url)
    entries = bundle.get("entry", [])
    modes = [e["search"]["mode"] for e in entries]
    assert modes == sorted(modes, key=lambda m: m != "match"), f"{url}: includes before matches"
    keys = [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries]
    assert len(keys) == len(set(keys)), f"{url}: duplicate entries {keys}"
    for entry, key in zip(entries, keys, strict=True):
        assert entry["fullUrl"] == f"http://testserver/fhir/{key}"
    matched = entry_keys(bundle, "match")
    assert bundle["total"] == len(matched)
    return set(matched), set(entry_keys(bundle, "include"))


def assert_400(client: TestClient, url: str, *fragments: str, strict: bool = False) -> None:
    """The search is refused with 400 and an OperationOutcome whose diagnostics hold ``fragments``."""
    headers = {"Prefer": "handling=strict"} if strict else None
    resp = client.get(f"/fhir/{url}", headers=headers)
    assert resp.status_code == 400, f"{url}: {resp.status_code} {resp.text}"
    assert resp.headers["content-type"].startswith("application/fhir+json")
    outcome = resp.json()
    assert outcome["resourceType"] == "OperationOutcome"
    text = " ".join(i.get("diagnostics", "") for i in outcome["issue"])
    for fragment in fragments:
        assert fragment in text, f"{url}: {fragment!r} not in {text!r}"


def ref(key: str) -> dict[str, str]:
    return {"reference": key}


def patient(pid: str, **fields: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, **fields}


def organization(oid: str, name: str) -> dict[str, Any]:
    return {"resourceType": "Organization", "id": oid, "name": name}


def practitioner(pid: str, family: str) -> dict[str, Any]:
    return {"resourceType": "Practitioner", "id": pid, "name": [{"family": family}]}


def observation(oid: str, subject: str, code: str = "8867-4", status: str = "final") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": ref(subject),
    }


def encounter(eid: str, subject: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": ref(subject),
    }


def provenance(pid: str, target: str, agent: str) -> dict[str, Any]:
    return {
        "resourceType": "Provenance",
        "id": pid,
        "target": [ref(target)],
        "recorded": "2021-01-01T00:00:00Z",
        "agent": [{"who": ref(agent)}],
    }


def med_request(mid: str, subject: str, **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": mid,
        "status": "active",
        "intent": "order",
        "subject": ref(subject),
        **({"medicationCodeableConcept": {"text": "aspirin"}} if "medicationReference" not in fields else {}),
        **fields,
    }


# -- chained parameters -----------------------------------------------------------------------------
def _chain_data(client: TestClient) -> None:
    put_all(
        client,
        organization("org1", "Acme Hospital"),
        organization("org2", "Beta Clinic"),
        organization("org3", "Zeta Care"),
        practitioner("prac1", "House"),
        {"resourceType": "Location", "id": "loc1", "name": "Smith Ward"},
        patient(
            "pa",
            name=[{"family": "Smith", "given": ["Alice"]}],
            gender="female",
            managingOrganization=ref("Organization/org1"),
            generalPractitioner=[ref("Practitioner/prac1")],
        ),
        patient(
            "pb",
            name=[{"family": "Jones", "given": ["Bob"]}],
            gender="male",
            managingOrganization=ref("Organization/org2"),
            generalPractitioner=[ref("Organization/org1")],
        ),
        patient("pc", name=[{"family": "Smithers"}], managingOrganization=ref("Organization/org3")),
        observation("oa", "Patient/pa"),
        observation("ob", "Patient/pb"),
        observation("oc", "Location/loc1"),
        observation("od", "Patient/pc"),
        encounter("ea", "Patient/pa"),
        encounter("eb", "Patient/pb"),
    )


def test_chain_one_level(client: TestClient) -> None:
    """``subject.name`` follows the reference; without a type every target type with the parameter."""
    _chain_data(client)
    assert found(client, "Observation?subject.name=smith") == {"oa", "oc", "od"}
    assert found(client, "Observation?subject:Patient.name=smith") == {"oa", "od"}
    assert found(client, "Observation?subject:Location.name=smith") == {"oc"}
    assert found(client, "Observation?subject:Patient.name:exact=Smith") == {"oa"}
    assert found(client, "Observation?subject.name=smith,jones") == {"oa", "ob", "oc", "od"}
    assert found(client, "Observation?subject.gender=male") == {"ob"}
    assert found(client, "Observation?patient.name=jones") == {"ob"}
    assert found(client, "Observation?subject._id=pa") == {"oa"}
    assert found(client, "Observation?subject:Patient.name=smith&subject:Patient.gender=female") == {"oa"}
    assert found(client, "Observation?subject.name=nobody") == set()
    assert found(client, "Encounter?subject.family=jones") == {"eb"}
    assert found(client, "Patient?organization.name=acme") == {"pa"}
    assert found(client, "Patient?general-practitioner.name=acme") == {"pb"}
    assert found(client, "Patient?general-practitioner.name=house") == {"pa"}
    assert found(client, "Patient?general-practitioner:Practitioner.name=acme") == set()


def test_chain_two_levels_and_deleted_targets(client: TestClient) -> None:
    """Two hops, ambiguous at the second hop; a deleted resource breaks the chain."""
    _chain_data(client)
    assert found(client, "Observation?subject:Patient.organization.name=acme") == {"oa"}
    assert found(client, "Observation?subject.organization.name=beta") == {"ob"}
    assert found(client, "Observation?patient.organization=Organization/org2") == {"ob"}
    assert found(client, "Observation?subject:Patient.organization.name=zeta") == {"od"}
    assert found(client, "Encounter?subject.general-practitioner.name=house") == {"ea"}
    assert found(client, "Encounter?subject.general-practitioner.name=acme") == {"eb"}
    assert found(client, "Encounter?subject.general-practitioner:Organization.name=acme") == {"eb"}
    assert found(client, "Encounter?subject.general-practitioner:Practitioner.name=acme") == set()
    assert client.delete("/fhir/Organization/org3").status_code == 200
    assert found(client, "Observation?subject:Patient.organization.name=zeta") == set()
    assert client.delete("/fhir/Patient/pa").status_code == 200
    assert found(client, "Observation?subject.name=smith") == {"oc", "od"}
    assert found(client, "Encounter?subject.general-practitioner.name=house") == set()


def test_references_to_other_servers_are_not_local(client: TestClient) -> None:
    """An absolute reference to another server's ``Patient/pa`` is not followed to the local ``pa``."""
    put_all(
        client,
        patient("pa", name=[{"family": "Smith"}]),
        observation("local", "Patient/pa"),
        observation("absolute", "http://testserver/fhir/Patient/pa"),
        observation("foreign", "http://other.example.org/fhir/Patient/pa"),
    )
    assert found(client, "Observation?subject.name=smith") == {"local", "absolute"}
    assert found(client, "Observation?patient=pa") == {"local", "absolute"}
    assert found(client, "Patient?_has:Observation:subject:_id=foreign") == set()
    assert found(client, "Patient?_has:Observation:subject:_id=absolute") == {"pa"}
    assert search_with_includes(client, "Observation?_id=foreign&_include=Observation:subject") == (
        {"Observation/foreign"},
        set(),
    )
    assert search_with_includes(client, "Patient?_revinclude=Observation:subject") == (
        {"Patient/pa"},
        {"Observation/local", "Observation/absolute"},
    )


def test_chain_errors(client: TestClient) -> None:
    """Unknown chained parameters are refused in strict handling; a bad type modifier always."""
    _chain_data(client)
    assert_400(client, "Observation?subject.nonsense=x", "nonsense", strict=True)
    assert_400(client, "Observation?code.name=x", "code", strict=True)
    assert_400(client, "Observation?subject:Nope.name=x", "Nope")
    lenient = get_bundle(client, "Observation?subject.nonsense=x")
    assert set(entry_keys(lenient, "match")) == {
        "Observation/oa",
        "Observation/ob",
        "Observation/oc",
        "Observation/od",
    }
    outcome = lenient["entry"][-1]
    assert outcome["search"]["mode"] == "outcome"
    assert outcome["resource"]["resourceType"] == "OperationOutcome"
    assert "subject.nonsense" in outcome["resource"]["issue"][0]["diagnostics"]


# -- reverse chaining -------------------------------------------------------------------------------
def _has_data(client: TestClient) -> None:
    put_all(
        client,
        practitioner("prac1", "House"),
        practitioner("prac2", "Grey"),
        patient("pa"),
        patient("pb"),
        patient("pc"),
        observation("oa", "Patient/pa"),
        observation("ob", "Patient/pb", code="29463-7"),
        observation("oc", "Patient/pb", status="cancelled"),
        provenance("prov1", "Observation/oa", "Practitioner/prac1"),
        provenance("prov2", "Observation/ob", "Practitioner/prac2"),
    )


def test_has_reverse_chain(client: TestClient) -> None:
    """``_has:Type:reference:param`` selects resources that such resources point at."""
    _has_data(client)
    assert found(client, "Patient?_has:Observation:patient:code=8867-4") == {"pa", "pb"}
    assert found(client, "Patient?_has:Observation:patient:code=29463-7") == {"pb"}
    assert found(client, "Patient?_has:Observation:subject:code=29463-7,8867-4") == {"pa", "pb"}
    assert found(client, "Patient?_has:Observation:patient:code=1234-5") == set()
    assert found(
        client, "Patient?_has:Observation:patient:code=8867-4&_has:Observation:patient:code=29463-7"
    ) == {"pb"}
    assert found(client, "Patient?_has:Observation:patient:status=cancelled") == {"pb"}
    assert found(client, "Patient?_has:Observation:patient:status:not=cancelled") == {"pa", "pb"}
    assert found(client, "Patient?_id=pa,pc&_has:Observation:patient:code=8867-4") == {"pa"}
    assert found(client, "Patient?_has:Observation:patient:_id=ob,oc") == {"pb"}
    assert found(client, "Practitioner?_has:Provenance:agent:target=Observation/oa") == {"prac1"}
    assert found(client, "Observation?_has:Provenance:target:agent.name=grey") == {"ob"}
    assert client.delete("/fhir/Observation/oc").status_code == 200
    assert found(client, "Patient?_has:Observation:patient:code=8867-4") == {"pa"}


def test_has_nested(client: TestClient) -> None:
    """``_has:A:p:_has:B:q:param`` reverse-chains two levels."""
    _has_data(client)
    nested = "Patient?_has:Observation:patient:_has:Provenance:target:agent="
    assert found(client, nested + "Practitioner/prac1") == {"pa"}
    assert found(client, nested + "Practitioner/prac2") == {"pb"}
    assert found(client, nested + "Practitioner/prac1,Practitioner/prac2") == {"pa", "pb"}
    assert found(client, nested + "Practitioner/nobody") == set()
    assert found(client, "Patient?_has:Observation:patient:_has:Provenance:target:agent.name=house") == {"pa"}


def test_has_errors(client: TestClient) -> None:
    """Malformed ``_has`` parameters are refused with 400 and a diagnostic."""
    assert_400(client, "Patient?_has:Observation:patient=x", "_has")
    assert_400(client, "Patient?_has:Nope:patient:code=x", "Nope")
    assert_400(client, "Patient?_has:Observation:code:code=x", "code")
    assert_400(client, "Patient?_has:Observation:performer:nonsense=x", "nonsense", strict=True)


# -- _include / _revinclude -------------------------------------------------------------------------
def _include_data(client: TestClient) -> None:
    put_all(
        client,
        organization("org1", "Acme"),
        organization("org2", "Beta"),
        practitioner("prac1", "House"),
        {"resourceType": "Medication", "id": "med1", "code": {"text": "aspirin"}},
        patient(
            "pa",
            managingOrganization=ref("Organization/org1"),
            generalPractitioner=[ref("Practitioner/prac1")],
            link=[{"other": ref("Patient/pb"), "type": "seealso"}],
        ),
        patient("pb", managingOrganization=ref("Organization/org2")),
        patient("pdel"),
        med_request(
            "mr1",
            "Patient/pa",
            medicationReference=ref("Medication/med1"),
            requester=ref("Practitioner/prac1"),
        ),
        med_request("mr2", "Patient/pa", requester=ref("Practitioner/prac1")),
        med_request("mr3", "Patient/pb"),
        med_request("mr4", "Patient/pdel"),
        observation("oa", "Patient/pa"),
        provenance("prov-mr1", "MedicationRequest/mr1", "Practitioner/prac1"),
        provenance("prov-oa", "Observation/oa", "Practitioner/prac1"),
    )
    assert client.delete("/fhir/Patient/pdel").status_code == 200


def test_include(client: TestClient) -> None:
    """``_include`` adds the referenced resources (search.mode include), each once, live ones only."""
    _include_data(client)
    mr = "MedicationRequest?_id="
    assert search_with_includes(client, mr + "mr1&_include=MedicationRequest:subject") == (
        {"MedicationRequest/mr1"},
        {"Patient/pa"},
    )
    assert search_with_includes(client, mr + "mr1,mr2&_include=MedicationRequest:subject") == (
        {"MedicationRequest/mr1", "MedicationRequest/mr2"},
        {"Patient/pa"},
    )
    assert search_with_includes(
        client, mr + "mr1&_include=MedicationRequest:subject&_include=MedicationRequest:requester"
    ) == ({"MedicationRequest/mr1"}, {"Patient/pa", "Practitioner/prac1"})
    assert search_with_includes(client, mr + "mr1&_include=MedicationRequest:*") == (
        {"MedicationRequest/mr1"},
        {"Patient/pa", "Practitioner/prac1", "Medication/med1"},
    )
    assert search_with_includes(client, mr + "mr1&_include=MedicationRequest:subject:Patient") == (
        {"MedicationRequest/mr1"},
        {"Patient/pa"},
    )
    assert search_with_includes(client, mr + "mr1&_include=MedicationRequest:subject:Group") == (
        {"MedicationRequest/mr1"},
        set(),
    )
    # a deleted target is not included
    assert search_with_includes(client, "MedicationRequest?_include=MedicationRequest:subject") == (
        {f"MedicationRequest/mr{i}" for i in range(1, 5)},
        {"Patient/pa", "Patient/pb"},
    )
    # a resource that is already a match is not repeated as an include
    assert search_with_includes(client, "Patient?_include=Patient:link") == (
        {"Patient/pa", "Patient/pb"},
        set(),
    )
    assert search_with_includes(client, "Patient?_id=pa&_include=Patient:link") == (
        {"Patient/pa"},
        {"Patient/pb"},
    )


def test_include_iterate(client: TestClient) -> None:
    """Without ``:iterate`` an include applies to the matches only; with it, to included ones too."""
    _include_data(client)
    mr = "MedicationRequest?_id=mr1&_include=MedicationRequest:subject"
    assert search_with_includes(client, mr + "&_include=Patient:organization") == (
        {"MedicationRequest/mr1"},
        {"Patient/pa"},
    )
    assert search_with_includes(client, mr + "&_include:iterate=Patient:organization") == (
        {"MedicationRequest/mr1"},
        {"Patient/pa", "Organization/org1"},
    )
    assert search_with_includes(
        client,
        mr + "&_include:iterate=Patient:organization&_include:iterate=Patient:general-practitioner",
    ) == ({"MedicationRequest/mr1"}, {"Patient/pa", "Organization/org1", "Practitioner/prac1"})
    # two levels: Patient -> linked Patient -> its organization
    assert search_with_includes(
        client, "Patient?_id=pa&_include:iterate=Patient:link&_include:iterate=Patient:organization"
    ) == ({"Patient/pa"}, {"Patient/pb", "Organization/org1", "Organization/org2"})


def test_revinclude(client: TestClient) -> None:
    """``_revinclude`` adds the resources pointing at the matches; ``:iterate`` follows further."""
    _include_data(client)
    assert search_with_includes(client, "Patient?_id=pa&_revinclude=MedicationRequest:subject") == (
        {"Patient/pa"},
        {"MedicationRequest/mr1", "MedicationRequest/mr2"},
    )
    assert search_with_includes(client, "Observation?_id=oa&_revinclude=Provenance:target") == (
        {"Observation/oa"},
        {"Provenance/prov-oa"},
    )
    assert search_with_includes(
        client,
        "Patient?_id=pa&_revinclude=MedicationRequest:subject&_revinclude:iterate=Provenance:target",
    ) == ({"Patient/pa"}, {"MedicationRequest/mr1", "MedicationRequest/mr2", "Provenance/prov-mr1"})
    assert search_with_includes(
        client, "Patient?_id=pa&_revinclude=MedicationRequest:subject&_revinclude=Provenance:target"
    ) == ({"Patient/pa"}, {"MedicationRequest/mr1", "MedicationRequest/mr2"})
    assert search_with_includes(
        client,
        "Organization?_id=org1&_revinclude=Patient:organization&_revinclude:iterate=MedicationRequest:subject",
    ) == ({"Organization/org1"}, {"Patient/pa", "MedicationRequest/mr1", "MedicationRequest/mr2"})
    assert search_with_includes(
        client, "Practitioner?_revinclude=MedicationRequest:requester&_include=Practitioner:*"
    ) == ({"Practitioner/prac1"}, {"MedicationRequest/mr1", "MedicationRequest/mr2"})
    # include and revinclude together, a resource reached both ways appears once
    assert search_with_includes(
        client,
        "MedicationRequest?_id=mr1&_include=MedicationRequest:subject&_revinclude=Provenance:target"
        "&_include:iterate=Provenance:agent",
    ) == ({"MedicationRequest/mr1"}, {"Patient/pa", "Provenance/prov-mr1", "Practitioner/prac1"})


def test_include_follows_the_page(client: TestClient) -> None:
    """Includes are those of the page's matches; every page carries its own."""
    _include_data(client)
    url = "MedicationRequest?_id=mr1,mr3&_include=MedicationRequest:subject&_count=1&_sort=_id"
    first = get_bundle(client, url)
    assert entry_keys(first, "match") == ["MedicationRequest/mr1"]
    assert entry_keys(first, "include") == ["Patient/pa"]
    assert first["total"] == 2
    (next_url,) = [link["url"] for link in first["link"] if link["relation"] == "next"]
    assert "_include=MedicationRequest%3Asubject" in next_url
    second = client.get(next_url).json()
    assert entry_keys(second, "match") == ["MedicationRequest/mr3"]
    assert entry_keys(second, "include") == ["Patient/pb"]


def test_include_errors(client: TestClient) -> None:
    """Malformed include parameters are refused with 400 and a diagnostic."""
    assert_400(client, "MedicationRequest?_include=MedicationRequest:nonsense", "nonsense")
    assert_400(client, "MedicationRequest?_include=Nope:subject", "Nope")
    assert_400(client, "MedicationRequest?_include=MedicationRequest:subject:Nope", "Nope")
    assert_400(client, "Patient?_revinclude=Observation", "Observation")
