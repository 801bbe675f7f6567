"""FHIR search over HTTP, per parameter type: string, token, date, number, quantity, reference, uri,
composite and the common parameters (``_id``, ``_tag``, ``_profile``, ``_security``, ``:missing``).

Every test stores a small data set with known ids (one transaction Bundle of PUTs) and asserts the
exact set of ids each search returns, and ``Bundle.total``; runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

from fastapi.testclient import TestClient

from support import get_bundle, put_all

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


# -- helpers ----------------------------------------------------------------------------------------
def match_ids(bundle: dict[str, Any]) -> list[str]:
    """Ids of the entries with search.mode 'match', in order."""
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def found(client: TestClient, url: str) -> set[str]:
    """The ids a one-page search matches; checks total and that no id is repeated."""
    bundle = get_bundle(client, url)
    ids = match_ids(bundle)
    assert len(ids) == len(set(ids)), f"{url}: duplicate matches {ids}"
    assert bundle["total"] == len(ids), f"{url}: total {bundle['total']} for {ids}"
    assert not any(link["relation"] == "next" for link in bundle["link"])
    return set(ids)


def patient(pid: str, **fields: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, **fields}


def observation(oid: str, **fields: Any) -> dict[str, Any]:
    code = fields.pop("code", {"coding": [{"system": LOINC, "code": "8867-4"}]})
    return {"resourceType": "Observation", "id": oid, "status": "final", "code": code, **fields}


def q(value: str) -> str:
    """Percent-encode a search value (keeps it intact through the query string, '+' included)."""
    return quote(value, safe="")


# -- string -----------------------------------------------------------------------------------------
def test_string_default_exact_contains_and_name_parts(client: TestClient) -> None:
    """Default string search is a case- and accent-insensitive prefix match on any name part."""
    put_all(
        client,
        patient(
            "p1",
            name=[
                {"family": "Müller", "given": ["Jean", "Paul"], "prefix": ["Dr"], "text": "Dr Jean Müller"}
            ],
        ),
        patient("p2", name=[{"family": "Mullins", "given": ["Anne"]}]),
        patient("p3", name=[{"family": "Dumuller", "given": ["Zoé"]}]),
        patient("p4", gender="other"),
    )
    assert found(client, "Patient?family=mull") == {"p1", "p2"}
    assert found(client, f"Patient?family={q('MÜLL')}") == {"p1", "p2"}
    assert found(client, "Patient?family=muller") == {"p1"}
    assert found(client, "Patient?family=mullx") == set()
    assert found(client, f"Patient?family:exact={q('Müller')}") == {"p1"}
    assert found(client, "Patient?family:exact=Muller") == set()
    assert found(client, f"Patient?family:exact={q('müller')}") == set()
    assert found(client, f"Patient?family:exact={q('Müll')}") == set()
    assert found(client, "Patient?family:contains=ULL") == {"p1", "p2", "p3"}
    assert found(client, "Patient?family:contains=muller") == {"p1", "p3"}
    assert found(client, "Patient?family:contains=llin") == {"p2"}
    # name searches every part: family, given, prefix, text
    assert found(client, "Patient?name=jean") == {"p1"}
    assert found(client, "Patient?name=paul") == {"p1"}
    assert found(client, "Patient?name=dr") == {"p1"}
    assert found(client, "Patient?name=mull") == {"p1", "p2"}
    assert found(client, "Patient?name=zoe") == {"p3"}
    assert found(client, "Patient?given=zo") == {"p3"}
    assert found(client, "Patient?given=mull") == set()
    assert found(client, "Patient?family=jean") == set()
    # OR within a parameter, AND across parameters
    assert found(client, "Patient?family=mullins,dumuller") == {"p2", "p3"}
    assert found(client, "Patient?family=mull&given=anne") == {"p2"}
    assert found(client, "Patient?name=mull&name=paul") == {"p1"}
    assert found(client, "Patient?name:missing=true") == {"p4"}
    assert found(client, "Patient?name:missing=false") == {"p1", "p2", "p3"}
    # SQL wildcards are plain characters
    assert found(client, "Patient?family=%25") == set()
    assert found(client, "Patient?family=_") == set()
    assert found(client, "Patient?family:contains=%25") == set()
    assert found(client, "Patient?family:contains=m_l") == set()


def test_string_escaped_separators(client: TestClient) -> None:
    """``\\,`` is a literal comma in a value, not an OR separator."""
    put_all(
        client,
        patient("c1", name=[{"family": "Doe,John"}]),
        patient("c2", name=[{"family": "Doe"}]),
        patient("c3", name=[{"family": "John"}]),
    )
    assert found(client, "Patient?family=doe") == {"c1", "c2"}
    assert found(client, "Patient?family=doe,john") == {"c1", "c2", "c3"}
    escaped = q("doe\\,john")
    assert found(client, f"Patient?family={escaped}") == {"c1"}
    assert found(client, "Patient?family:exact=Doe%5C,John") == {"c1"}


def test_string_address_parts(client: TestClient) -> None:
    """``address`` matches any address part; ``address-city`` and friends match only theirs."""
    put_all(
        client,
        patient(
            "a1",
            address=[
                {"line": ["12 Rue du Lac"], "city": "Genève", "postalCode": "1201", "country": "CH"},
            ],
        ),
        patient("a2", address=[{"city": "Lausanne", "state": "Vaud", "postalCode": "1003"}]),
        patient("a3", address=[{"city": "Geneva", "country": "US"}, {"city": "Bern"}]),
    )
    assert found(client, "Patient?address-city=gen") == {"a1", "a3"}
    assert found(client, "Patient?address-city=geneve") == {"a1"}
    assert found(client, "Patient?address-city=bern") == {"a3"}
    assert found(client, f"Patient?address-city:exact={q('Genève')}") == {"a1"}
    assert found(client, "Patient?address-city:exact=geneve") == set()
    assert found(client, "Patient?address-postalcode=120") == {"a1"}
    assert found(client, "Patient?address-postalcode=1") == {"a1", "a2"}
    assert found(client, "Patient?address-country=ch") == {"a1"}
    assert found(client, "Patient?address-state=vaud") == {"a2"}
    assert found(client, "Patient?address=12%20rue") == {"a1"}
    assert found(client, "Patient?address=rue") == set()  # a prefix of the part, not of any word
    assert found(client, "Patient?address=vaud") == {"a2"}
    assert found(client, "Patient?address=1003") == {"a2"}
    assert found(client, "Patient?address:contains=lac") == {"a1"}
    assert found(client, "Patient?address-city=lac") == set()


# -- token ------------------------------------------------------------------------------------------
def test_token_code_system_forms_not_and_text(client: TestClient) -> None:
    """``code``, ``system|code``, ``|code``, ``system|``, ``:not`` and ``:text`` on a CodeableConcept."""
    put_all(
        client,
        observation("o1", code={"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]}),
        observation("o2", code={"coding": [{"system": "http://example.org/local", "code": "8867-4"}]}),
        observation("o3", code={"coding": [{"code": "8867-4"}]}),
        observation(
            "o4", code={"coding": [{"system": LOINC, "code": "29463-7"}], "text": "Body weight measured"}
        ),
    )
    assert found(client, "Observation?code=8867-4") == {"o1", "o2", "o3"}
    assert found(client, f"Observation?code={q(LOINC + '|8867-4')}") == {"o1"}
    assert found(client, "Observation?code=http://loinc.org|8867-4") == {"o1"}
    assert found(client, f"Observation?code={q('|8867-4')}") == {"o3"}
    assert found(client, f"Observation?code={q(LOINC + '|')}") == {"o1", "o4"}
    assert found(client, "Observation?code=http://example.org/local|") == {"o2"}
    assert found(client, "Observation?code=8867-4,29463-7") == {"o1", "o2", "o3", "o4"}
    assert found(client, f"Observation?code={q('http://loinc.org|29463-7,|8867-4')}") == {"o3", "o4"}
    assert found(client, "Observation?code=8867") == set()
    assert found(client, f"Observation?code:not={q(LOINC + '|8867-4')}") == {"o2", "o3", "o4"}
    assert found(client, "Observation?code:not=8867-4") == {"o4"}
    assert found(client, "Observation?code:text=heart") == {"o1"}
    assert found(client, "Observation?code:text=BODY") == {"o4"}
    assert found(client, "Observation?code:text=weight") == set()


def test_token_text_matches_display_and_concept_text(client: TestClient) -> None:
    """``:text`` matches the concept's text and its codings' displays."""
    put_all(
        client,
        observation(
            "x1",
            code={"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}], "text": "Pulse"},
        ),
        observation("x2", code={"text": "Pulse oximetry"}),
    )
    assert found(client, "Observation?code:text=pulse") == {"x1", "x2"}
    assert found(client, "Observation?code:text=heart") == {"x1"}
    assert found(client, "Observation?code:text=oxi") == set()


def test_token_not_includes_resources_without_the_element_and_booleans(client: TestClient) -> None:
    """``:not`` also returns resources lacking the element; booleans search as ``true``/``false``."""
    put_all(
        client,
        patient("g1", gender="male", active=True),
        patient("g2", gender="female", active=False),
        patient("g3"),
    )
    assert found(client, "Patient?gender=male") == {"g1"}
    assert found(client, "Patient?gender:not=male") == {"g2", "g3"}
    assert found(client, "Patient?gender:not=male,female") == {"g3"}
    assert found(client, "Patient?gender:missing=true") == {"g3"}
    assert found(client, "Patient?active=true") == {"g1"}
    assert found(client, "Patient?active=false") == {"g2"}
    assert found(client, "Patient?active:not=true") == {"g2", "g3"}
    assert found(client, "Patient?active:missing=false") == {"g1", "g2"}


def test_token_computed_boolean_deceased(client: TestClient) -> None:
    """``deceased`` is true for deceasedBoolean true or any deceasedDateTime."""
    put_all(
        client,
        patient("dead", deceasedBoolean=True),
        patient("died", deceasedDateTime="2020-01-01"),
        patient("alive", deceasedBoolean=False),
    )
    assert found(client, "Patient?deceased=true") == {"dead", "died"}
    assert found(client, "Patient?deceased:not=true") == {"alive"}
    assert found(client, "Patient?death-date=2020") == {"died"}


def test_token_identifier_forms_and_of_type(client: TestClient) -> None:
    """Identifier search by value, system|value, |value, system| and ``:of-type``; telecom tokens."""
    mr = {"coding": [{"system": V2_0203, "code": "MR"}], "text": "Medical record number"}
    put_all(
        client,
        patient(
            "i1",
            identifier=[{"system": "urn:oid:1.2.3", "value": "123", "type": mr}],
            telecom=[{"system": "phone", "value": "555-1234"}, {"system": "email", "value": "a@b.org"}],
        ),
        patient("i2", identifier=[{"system": "urn:oid:9.9", "value": "123"}]),
        patient("i3", identifier=[{"value": "123"}, {"system": "urn:oid:1.2.3", "value": "456"}]),
        patient("i4", telecom=[{"system": "email", "value": "555-1234"}]),
    )
    assert found(client, "Patient?identifier=123") == {"i1", "i2", "i3"}
    assert found(client, "Patient?identifier=urn:oid:1.2.3|123") == {"i1"}
    assert found(client, f"Patient?identifier={q('|123')}") == {"i3"}
    assert found(client, "Patient?identifier=urn:oid:1.2.3|") == {"i1", "i3"}
    assert found(client, "Patient?identifier=urn:oid:1.2.3|456") == {"i3"}
    assert found(client, "Patient?identifier=urn:oid:9.9|456") == set()
    assert found(client, f"Patient?identifier:of-type={q(V2_0203 + '|MR|123')}") == {"i1"}
    assert found(client, f"Patient?identifier:of-type={q(V2_0203 + '|MR|456')}") == set()
    assert found(client, f"Patient?identifier:of-type={q(V2_0203 + '|DL|123')}") == set()
    assert found(client, "Patient?identifier:text=medical") == {"i1"}
    assert found(client, "Patient?identifier:not=123") == {"i4"}
    assert found(client, "Patient?phone=555-1234") == {"i1"}
    assert found(client, "Patient?email=555-1234") == {"i4"}
    assert found(client, "Patient?telecom=555-1234") == {"i1", "i4"}
    assert found(client, "Patient?telecom=phone|555-1234") == {"i1"}


# -- date -------------------------------------------------------------------------------------------
def test_date_prefixes_with_partial_precision(client: TestClient) -> None:
    """Every prefix against dates stored with year, month and day precision."""
    put_all(
        client,
        patient("y2020", birthDate="2020"),
        patient("m2020-03", birthDate="2020-03"),
        patient("d2020-03-15", birthDate="2020-03-15"),
        patient("d2021-01-01", birthDate="2021-01-01"),
        patient("d2019-12-31", birthDate="2019-12-31"),
        patient("none"),
    )
    everyone = {"y2020", "m2020-03", "d2020-03-15", "d2021-01-01", "d2019-12-31"}
    assert found(client, "Patient?birthdate=2020") == {"y2020", "m2020-03", "d2020-03-15"}
    assert found(client, "Patient?birthdate=eq2020-03") == {"m2020-03", "d2020-03-15"}
    assert found(client, "Patient?birthdate=2020-03-15") == {"d2020-03-15"}
    assert found(client, "Patient?birthdate=2020-03-16") == set()
    assert found(client, "Patient?birthdate=ne2020") == {"d2021-01-01", "d2019-12-31"}
    assert found(client, "Patient?birthdate=ne2020-03") == everyone - {"m2020-03", "d2020-03-15"}
    assert found(client, "Patient?birthdate=gt2020") == {"d2021-01-01"}
    assert found(client, "Patient?birthdate=gt2020-03") == {"y2020", "d2021-01-01"}
    assert found(client, "Patient?birthdate=lt2020-03") == {"y2020", "d2019-12-31"}
    assert found(client, "Patient?birthdate=lt2020") == {"d2019-12-31"}
    assert found(client, "Patient?birthdate=ge2020-03") == everyone - {"d2019-12-31"}
    assert found(client, "Patient?birthdate=ge2020-03-15") == {
        "y2020",
        "m2020-03",
        "d2020-03-15",
        "d2021-01-01",
    }
    assert found(client, "Patient?birthdate=le2020-03") == everyone - {"d2021-01-01"}
    assert found(client, "Patient?birthdate=le2019-12-31") == {"d2019-12-31"}
    assert found(client, "Patient?birthdate=sa2020-03") == {"d2021-01-01"}
    assert found(client, "Patient?birthdate=sa2019") == everyone - {"d2019-12-31"}
    assert found(client, "Patient?birthdate=eb2020-03") == {"d2019-12-31"}
    assert found(client, "Patient?birthdate=eb2021") == everyone - {"d2021-01-01"}
    assert found(client, "Patient?birthdate=ge2020&birthdate=lt2021") == {"y2020", "m2020-03", "d2020-03-15"}
    assert found(client, "Patient?birthdate=2019-12-31,2021-01-01") == {"d2019-12-31", "d2021-01-01"}
    assert found(client, "Patient?birthdate:missing=true") == {"none"}


def test_date_approximately_is_relative_to_now(client: TestClient) -> None:
    """``ap`` widens the value by 10 % of its distance from now (at least a day)."""
    today = datetime.now(UTC).date()

    def day(offset: int) -> str:
        return (today - timedelta(days=offset)).isoformat()

    put_all(
        client,
        patient("at100", birthDate=day(100)),
        patient("at95", birthDate=day(95)),
        patient("at106", birthDate=day(106)),
        patient("at80", birthDate=day(80)),
        patient("at125", birthDate=day(125)),
    )
    assert found(client, f"Patient?birthdate=ap{day(100)}") == {"at100", "at95", "at106"}
    assert found(client, f"Patient?birthdate=ap{day(500)}") == set()


def test_datetime_seconds_and_time_zones(client: TestClient) -> None:
    """dateTimes with zones compare as instants; the search value's precision sets its range."""
    put_all(
        client,
        observation("t1", effectiveDateTime="2021-06-01T10:00:00+02:00"),  # 08:00:00Z
        observation("t2", effectiveDateTime="2021-06-01T08:00:30Z"),
        observation("t3", effectiveDateTime="2021-06-01T23:30:00-05:00"),  # 2021-06-02T04:30:00Z
        observation("t4", effectiveDateTime="2021-06-01T08:00:00.500Z"),
        observation("t5", effectiveInstant="2021-06-03T00:00:00Z"),
    )
    assert found(client, "Observation?date=2021-06-01T08:00:00Z") == {"t1", "t4"}
    assert found(client, f"Observation?date={q('2021-06-01T10:00:00+02:00')}") == {"t1", "t4"}
    assert found(client, "Observation?date=2021-06-01T10:00:00%2B02:00") == {"t1", "t4"}
    assert found(client, "Observation?date=2021-06-01") == {"t1", "t2", "t4"}
    assert found(client, "Observation?date=2021-06-02") == {"t3"}
    assert found(client, "Observation?date=2021-06") == {"t1", "t2", "t3", "t4", "t5"}
    assert found(client, "Observation?date=gt2021-06-01T08:00:00Z") == {"t2", "t3", "t5"}
    assert found(client, "Observation?date=lt2021-06-01T08:00:30Z") == {"t1", "t4"}
    assert found(client, "Observation?date=ge2021-06-01T08:00:30Z") == {"t2", "t3", "t5"}
    assert found(client, "Observation?date=le2021-06-01T08:00:00Z") == {"t1", "t4"}
    assert found(client, f"Observation?date={q('lt2021-06-01T23:00:00-05:00')}") == {"t1", "t2", "t4"}
    assert found(client, f"Observation?date={q('gt2021-06-02T06:00:00+02:00')}") == {"t3", "t5"}
    assert found(client, "Observation?date=sa2021-06-02") == {"t5"}
    assert found(client, "Observation?date=eb2021-06-01T08:00:30Z") == {"t1", "t4"}


def test_date_periods_and_open_ended_periods(client: TestClient) -> None:
    """A Period is a range; a Period without an end continues forever."""
    put_all(
        client,
        {
            "resourceType": "Encounter",
            "id": "e1",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "period": {"start": "2021-01-10", "end": "2021-01-20"},
        },
        {
            "resourceType": "Encounter",
            "id": "e2",
            "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "period": {"start": "2021-02-01T09:00:00Z"},
        },
        {
            "resourceType": "Encounter",
            "id": "e3",
            "status": "planned",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        },
    )
    assert found(client, "Encounter?date=2021-01-15") == set()
    assert found(client, "Encounter?date=2021-01") == {"e1"}
    assert found(client, "Encounter?date=2021") == {"e1"}
    assert found(client, "Encounter?date=ne2021") == {"e2"}
    assert found(client, "Encounter?date=ge2021-01-15") == {"e1", "e2"}
    assert found(client, "Encounter?date=le2021-01-15") == {"e1"}
    assert found(client, "Encounter?date=gt2021-01-20") == {"e2"}
    assert found(client, "Encounter?date=gt2030-01-01") == {"e2"}
    assert found(client, "Encounter?date=lt2021-01-10") == set()
    assert found(client, "Encounter?date=lt2021-02-02") == {"e1", "e2"}
    assert found(client, "Encounter?date=sa2021-01-31") == {"e2"}
    assert found(client, "Encounter?date=sa2021-02-01") == set()
    assert found(client, "Encounter?date=eb2021-01-31") == {"e1"}
    assert found(client, "Encounter?date=eb2021-01-20") == set()
    assert found(client, "Encounter?date:missing=true") == {"e3"}


def test_last_updated(client: TestClient) -> None:
    """``_lastUpdated`` compares the server's instant of the last write with every prefix."""
    stamps: dict[str, str] = {}
    for pid in ("u1", "u2", "u3"):
        resp = client.put(f"/fhir/Patient/{pid}", json=patient(pid))
        assert resp.status_code == 201
        stamps[pid] = resp.json()["meta"]["lastUpdated"]
    assert stamps["u1"] < stamps["u2"] < stamps["u3"]
    assert found(client, f"Patient?_lastUpdated={stamps['u2']}") == {"u2"}
    assert found(client, f"Patient?_lastUpdated=ge{stamps['u2']}") == {"u2", "u3"}
    assert found(client, f"Patient?_lastUpdated=gt{stamps['u2']}") == {"u3"}
    assert found(client, f"Patient?_lastUpdated=lt{stamps['u2']}") == {"u1"}
    assert found(client, f"Patient?_lastUpdated=le{stamps['u2']}") == {"u1", "u2"}
    assert found(client, f"Patient?_lastUpdated=ne{stamps['u2']}") == {"u1", "u3"}
    assert found(client, f"Patient?_lastUpdated=gt{stamps['u1']}&_lastUpdated=lt{stamps['u3']}") == {"u2"}
    # the same instant written with another zone offset
    u2 = datetime.fromisoformat(stamps["u2"].replace("Z", "+00:00"))
    shifted = u2.astimezone(timezone(timedelta(hours=2))).isoformat()
    assert shifted.endswith("+02:00")
    assert found(client, f"Patient?_lastUpdated=ge{q(shifted)}") == {"u2", "u3"}
    assert found(client, f"Patient?_lastUpdated={q(shifted)}") == {"u2"}
    year = stamps["u1"][:4]
    assert found(client, f"Patient?_lastUpdated={year}") == {"u1", "u2", "u3"}
    assert found(client, f"Patient?_lastUpdated=lt{year}") == set()
    assert found(client, f"Patient?_lastUpdated=gt{int(year) - 1}") == {"u1", "u2", "u3"}
    # an update moves the resource forward
    resp = client.put("/fhir/Patient/u1", json=patient("u1", gender="male"))
    assert resp.status_code == 200
    assert found(client, f"Patient?_lastUpdated=gt{stamps['u3']}") == {"u1"}


# -- number -----------------------------------------------------------------------------------------
def risk(rid: str, probability: float) -> dict[str, Any]:
    return {
        "resourceType": "RiskAssessment",
        "id": rid,
        "status": "final",
        "subject": {"reference": "Patient/x"},
        "prediction": [{"probabilityDecimal": probability}],
    }


def test_number_prefixes_and_implicit_precision(client: TestClient) -> None:
    """``100`` means [99.5, 100.5) while ``100.0`` means [99.95, 100.05); prefixes compare values."""
    put_all(
        client,
        risk("n10", 10),
        risk("n10-04", 10.04),
        risk("n10-4", 10.4),
        risk("n9-6", 9.6),
        risk("n9-4", 9.4),
        risk("n10-6", 10.6),
        risk("n20", 20),
        {
            "resourceType": "RiskAssessment",
            "id": "nnone",
            "status": "final",
            "subject": {"reference": "Patient/x"},
        },
    )
    valued = {"n10", "n10-04", "n10-4", "n9-6", "n9-4", "n10-6", "n20"}
    assert found(client, "RiskAssessment?probability=10") == {"n10", "n10-04", "n10-4", "n9-6"}
    assert found(client, "RiskAssessment?probability=eq10") == {"n10", "n10-04", "n10-4", "n9-6"}
    assert found(client, "RiskAssessment?probability=10.0") == {"n10", "n10-04"}
    assert found(client, "RiskAssessment?probability=10.00") == {"n10"}
    assert found(client, "RiskAssessment?probability=10.4") == {"n10-4"}
    assert found(client, "RiskAssessment?probability=ne10") == {"n9-4", "n10-6", "n20"}
    assert found(client, "RiskAssessment?probability=ne10.0") == valued - {"n10", "n10-04"}
    assert found(client, "RiskAssessment?probability=gt10") == {"n10-04", "n10-4", "n10-6", "n20"}
    assert found(client, "RiskAssessment?probability=ge10") == {"n10", "n10-04", "n10-4", "n10-6", "n20"}
    assert found(client, "RiskAssessment?probability=lt10") == {"n9-6", "n9-4"}
    assert found(client, "RiskAssessment?probability=le10") == {"n10", "n9-6", "n9-4"}
    assert found(client, "RiskAssessment?probability=sa10.4") == {"n10-6", "n20"}
    assert found(client, "RiskAssessment?probability=eb9.6") == {"n9-4"}
    assert found(client, "RiskAssessment?probability=ap10") == valued - {"n20"}
    assert found(client, "RiskAssessment?probability=ap20") == {"n20"}
    assert found(client, "RiskAssessment?probability=9.4,20") == {"n9-4", "n20"}
    assert found(client, "RiskAssessment?probability=gt9.5&probability=lt10.5") == {
        "n10",
        "n10-04",
        "n10-4",
        "n9-6",
    }
    assert found(client, "RiskAssessment?probability:missing=true") == {"nnone"}
    # 1e1 has one significant digit: [5, 15)
    assert found(client, "RiskAssessment?probability=1e1") == valued - {"n20"}
    assert found(client, "RiskAssessment?probability=1.0e1") == {"n10", "n10-04", "n10-4", "n9-6"}


# -- quantity ---------------------------------------------------------------------------------------
def test_quantity_prefixes_and_units(client: TestClient) -> None:
    """Quantity search by number, ``number|system|code``, ``number||code`` (code or unit), prefixes."""
    put_all(
        client,
        observation("q1", valueQuantity={"value": 5.4, "unit": "mg", "system": UCUM, "code": "mg"}),
        observation(
            "q2", valueQuantity={"value": 5.4, "unit": "mg", "system": "http://example.org/u", "code": "mg"}
        ),
        observation("q3", valueQuantity={"value": 7, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"}),
        observation("q4", valueQuantity={"value": 5.4, "unit": "milligram"}),
        observation("q5", valueString="high"),
    )
    assert found(client, "Observation?value-quantity=5.4") == {"q1", "q2", "q4"}
    assert found(client, f"Observation?value-quantity={q('5.4|' + UCUM + '|mg')}") == {"q1"}
    assert found(client, "Observation?value-quantity=5.4|http://unitsofmeasure.org|mg") == {"q1"}
    assert found(client, f"Observation?value-quantity={q('5.4||mg')}") == {"q1", "q2"}
    assert found(client, f"Observation?value-quantity={q('5.4||milligram')}") == {"q4"}
    assert found(client, f"Observation?value-quantity={q('5.4|' + UCUM + '|mmol/L')}") == set()
    assert found(client, f"Observation?value-quantity={q('gt5|' + UCUM + '|mg')}") == {"q1"}
    assert found(client, "Observation?value-quantity=gt5") == {"q1", "q2", "q3", "q4"}
    assert found(client, "Observation?value-quantity=gt5.4") == {"q3"}
    assert found(client, "Observation?value-quantity=lt6") == {"q1", "q2", "q4"}
    assert found(client, f"Observation?value-quantity={q('le5.4||mg')}") == {"q1", "q2"}
    assert found(client, f"Observation?value-quantity={q('ge7|' + UCUM + '|mmol/L')}") == {"q3"}
    assert found(client, f"Observation?value-quantity={q('ap7.5||mmol/L')}") == {"q3"}
    assert found(client, "Observation?value-quantity=ne5.4") == {"q3"}
    assert found(client, "Observation?value-quantity=5") == {"q1", "q2", "q4"}
    assert found(client, "Observation?value-quantity=5.0") == set()
    assert found(client, "Observation?value-quantity:missing=true") == {"q5"}


# -- reference --------------------------------------------------------------------------------------
def test_reference_forms(client: TestClient) -> None:
    """``Type/id``, bare id, the server's absolute URL, ``:Type``, ``:identifier`` and ``:missing``."""
    put_all(
        client,
        patient("pa"),
        patient("pb"),
        {
            "resourceType": "Group",
            "id": "pa",
            "type": "person",
            "actual": True,
        },
        observation("oa", subject={"reference": "Patient/pa"}),
        observation("ob", subject={"reference": "Patient/pb"}),
        observation("oc", subject={"reference": "Group/pa"}),
        observation("od", subject={"reference": "http://testserver/fhir/Patient/pa"}),
        observation("oe", subject={"reference": "http://other.example.org/fhir/Patient/pa"}),
        observation("of", subject={"identifier": {"system": "urn:oid:1.2.3", "value": "123"}}),
        observation("og"),
    )
    assert found(client, "Observation?subject=Patient/pa") == {"oa", "od"}
    assert found(client, "Observation?subject=pb") == {"ob"}
    assert found(client, "Observation?subject=pa") == {"oa", "oc", "od"}
    assert found(client, "Observation?subject=http://testserver/fhir/Patient/pa") == {"oa", "od"}
    assert found(client, "Observation?subject=http://other.example.org/fhir/Patient/pa") == {"oe"}
    assert found(client, "Observation?subject:Patient=pa") == {"oa", "od"}
    assert found(client, "Observation?subject:Group=pa") == {"oc"}
    assert found(client, "Observation?subject:Patient=Patient/pb") == {"ob"}
    assert found(client, "Observation?patient=pa") == {"oa", "od"}
    assert found(client, "Observation?subject=Patient/pa,Patient/pb") == {"oa", "ob", "od"}
    assert found(client, "Observation?subject=Patient/nobody") == set()
    assert found(client, "Observation?subject:identifier=urn:oid:1.2.3|123") == {"of"}
    assert found(client, "Observation?subject:identifier=123") == {"of"}
    assert found(client, "Observation?subject:identifier=urn:oid:9|123") == set()
    assert found(client, "Observation?subject:missing=true") == {"og"}
    assert found(client, "Observation?subject:missing=false") == {"oa", "ob", "oc", "od", "oe", "of"}


# -- uri --------------------------------------------------------------------------------------------
def test_uri_exact_below_above(client: TestClient) -> None:
    """uri search is exact (case-sensitive); ``:below`` matches descendants, ``:above`` ancestors."""
    base = "http://example.org/fhir/ValueSet/"

    def vs(vid: str, url: str) -> dict[str, Any]:
        return {"resourceType": "ValueSet", "id": vid, "url": url, "status": "active"}

    put_all(
        client,
        vs("v1", base + "a"),
        vs("v2", base + "a/b"),
        vs("v3", "http://other.org/fhir/ValueSet/a"),
        {"resourceType": "ValueSet", "id": "v4", "status": "draft"},
        vs("v5", base + "x_y"),
        vs("v6", base + "p%"),
    )
    assert found(client, f"ValueSet?url={q(base + 'a')}") == {"v1"}
    assert found(client, f"ValueSet?url={base}a") == {"v1"}
    assert found(client, f"ValueSet?url={q(base + 'A')}") == set()
    assert found(client, f"ValueSet?url={q(base)}") == set()
    assert found(client, f"ValueSet?url:below={q('http://example.org/fhir/')}") == {"v1", "v2", "v5", "v6"}
    assert found(client, f"ValueSet?url:below={q(base + 'a/')}") == {"v2"}
    assert found(client, f"ValueSet?url:above={q(base + 'a/b/c')}") == {"v1", "v2"}
    assert found(client, f"ValueSet?url:above={q(base + 'a')}") == {"v1"}
    assert found(client, "ValueSet?url:missing=true") == {"v4"}
    # SQL wildcards in stored or searched URIs are plain characters
    assert found(client, f"ValueSet?url:above={q(base + 'xzy/1')}") == set()
    assert found(client, f"ValueSet?url:above={q(base + 'x_y/1')}") == {"v5"}
    assert found(client, f"ValueSet?url:above={q(base + 'pq')}") == set()
    assert found(client, f"ValueSet?url:below={q(base + 'x_')}") == {"v5"}
    assert found(client, f"ValueSet?url:below={q(base + '_')}") == set()
    assert found(client, f"ValueSet?url={q(base + 'a')},{q('http://other.org/fhir/ValueSet/a')}") == {
        "v1",
        "v3",
    }


# -- composite --------------------------------------------------------------------------------------
def _bp(oid: str, systolic: float, diastolic: float) -> dict[str, Any]:
    def comp(code: str, value: float) -> dict[str, Any]:
        return {
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "valueQuantity": {"value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
        }

    return observation(
        oid,
        code={"coding": [{"system": LOINC, "code": "85354-9"}]},
        component=[comp("8480-6", systolic), comp("8462-4", diastolic)],
    )


def test_composite_code_value_quantity(client: TestClient) -> None:
    """``code-value-quantity`` pairs the code with the value of the same resource."""
    kg = {"unit": "kg", "system": UCUM, "code": "kg"}
    put_all(
        client,
        observation(
            "w70", code={"coding": [{"system": LOINC, "code": "29463-7"}]}, valueQuantity={"value": 70, **kg}
        ),
        observation(
            "w4", code={"coding": [{"system": LOINC, "code": "29463-7"}]}, valueQuantity={"value": 4, **kg}
        ),
        observation(
            "h180",
            code={"coding": [{"system": LOINC, "code": "8302-2"}]},
            valueQuantity={"value": 180, "unit": "cm", "system": UCUM, "code": "cm"},
        ),
        _bp("bp", 150, 95),
    )
    assert found(client, f"Observation?code-value-quantity={q(LOINC + '|29463-7$gt5')}") == {"w70"}
    assert found(client, "Observation?code-value-quantity=29463-7$lt5") == {"w4"}
    assert found(client, "Observation?code-value-quantity=29463-7$5") == set()
    assert found(client, "Observation?code-value-quantity=29463-7$4") == {"w4"}
    assert found(client, "Observation?code-value-quantity=8302-2$gt5") == {"h180"}
    assert found(client, f"Observation?code-value-quantity={q('29463-7$gt5|' + UCUM + '|kg')}") == {"w70"}
    assert found(client, f"Observation?code-value-quantity={q('29463-7$gt5|' + UCUM + '|cm')}") == set()
    assert found(client, "Observation?code-value-quantity=29463-7$gt100,8302-2$gt100") == {"h180"}
    assert found(client, "Observation?code-value-quantity=8480-6$gt100") == set()
    assert found(client, "Observation?code-value-quantity:missing=false") == {"w70", "w4", "h180"}
    assert found(client, "Observation?code-value-quantity:missing=true") == {"bp"}
    assert found(client, "Observation?component-code-value-quantity:missing=true") == {"w70", "w4", "h180"}


def test_composite_component_code_value_quantity(client: TestClient) -> None:
    """Component composites match code and value within the same component."""
    put_all(client, _bp("bp1", 150, 95), _bp("bp2", 120, 80))
    param = "Observation?component-code-value-quantity="
    assert found(client, param + q(LOINC + "|8480-6$gt140")) == {"bp1"}
    assert found(client, param + "8462-4$lt90") == {"bp2"}
    assert found(client, param + "8462-4$gt70") == {"bp1", "bp2"}
    # systolic 120 > 90 and diastolic 80 < 90 belong to different components: no match
    assert found(client, param + "8480-6$lt90") == set()
    assert found(client, param + "8480-6$gt140&component-code-value-quantity=8462-4$gt90") == {"bp1"}
    assert found(client, param + "8480-6$gt140&component-code-value-quantity=8462-4$lt90") == set()
    assert found(client, "Observation?component-value-quantity=80") == {"bp2"}
    assert found(client, "Observation?combo-code=8462-4") == {"bp1", "bp2"}
    assert found(client, "Observation?code=8462-4") == set()


# -- common parameters ------------------------------------------------------------------------------
def test_id_tag_profile_security_and_missing(client: TestClient) -> None:
    """``_id``, ``_tag``, ``_profile`` and ``_security`` with their modifiers."""
    tags = "http://example.org/tags"
    profile = "http://example.org/StructureDefinition/my-patient"
    confidentiality = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
    put_all(
        client,
        patient(
            "m1",
            meta={
                "tag": [{"system": tags, "code": "vip"}],
                "profile": [profile],
                "security": [{"system": confidentiality, "code": "R"}],
            },
        ),
        patient("m2", meta={"tag": [{"system": tags, "code": "test"}, {"code": "vip"}]}),
        patient("m3"),
    )
    assert found(client, "Patient?_id=m1") == {"m1"}
    assert found(client, "Patient?_id=m1,m3") == {"m1", "m3"}
    assert found(client, "Patient?_id=nope") == set()
    assert found(client, "Patient?_id=M1") == set()
    assert found(client, "Patient?_id:not=m1") == {"m2", "m3"}
    assert found(client, "Patient?_id=m1&_id=m2") == set()
    assert found(client, "Patient?_tag=vip") == {"m1", "m2"}
    assert found(client, f"Patient?_tag={q(tags + '|vip')}") == {"m1"}
    assert found(client, f"Patient?_tag={q('|vip')}") == {"m2"}
    assert found(client, f"Patient?_tag={q(tags + '|')}") == {"m1", "m2"}
    assert found(client, f"Patient?_tag:not={q(tags + '|vip')}") == {"m2", "m3"}
    assert found(client, "Patient?_tag:missing=true") == {"m3"}
    assert found(client, "Patient?_tag:missing=false") == {"m1", "m2"}
    assert found(client, f"Patient?_profile={q(profile)}") == {"m1"}
    assert found(client, "Patient?_profile:missing=true") == {"m2", "m3"}
    assert found(client, "Patient?_security=R") == {"m1"}
    assert found(client, f"Patient?_security={q(confidentiality + '|R')}") == {"m1"}
    assert found(client, f"Patient?_security:not={q(confidentiality + '|R')}") == {"m2", "m3"}
    assert found(client, "Patient?_id=m1&_tag=test") == set()


def test_deleted_resources_leave_search_results(client: TestClient) -> None:
    """A deleted resource matches no search any more; recreating it brings it back."""
    put_all(
        client,
        patient("d1", name=[{"family": "Same"}], gender="male"),
        patient("d2", name=[{"family": "Same"}], gender="male"),
        observation("do1", subject={"reference": "Patient/d1"}),
    )
    assert found(client, "Patient?family=same") == {"d1", "d2"}
    assert client.delete("/fhir/Patient/d1").status_code == 200
    assert found(client, "Patient?family=same") == {"d2"}
    assert found(client, "Patient?_id=d1") == set()
    assert found(client, "Patient?gender:not=female") == {"d2"}
    assert found(client, "Patient?gender:missing=true") == set()
    assert found(client, "Patient") == {"d2"}
    assert found(client, "Observation?subject=Patient/d1") == {"do1"}
    assert found(client, "Observation?subject.family=same") == set()
    assert found(client, "Patient?_has:Observation:subject:code=8867-4") == set()
    assert client.delete("/fhir/Observation/do1").status_code == 200
    assert found(client, "Observation") == set()
    assert client.put("/fhir/Patient/d1", json=patient("d1", name=[{"family": "Same"}])).status_code == 201
    assert found(client, "Patient?family=same") == {"d1", "d2"}
