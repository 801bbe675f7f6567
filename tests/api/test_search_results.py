"""FHIR search result handling over HTTP: ``_sort``, paging links, ``_count``, ``_total``,
``_summary``, ``_elements``, strict and lenient handling, POST ``_search``, compartment search,
``Patient/$everything`` and the refusal of bad input; on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fastapi.testclient import TestClient

from support import get_bundle, put_all

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
STRICT = {"Prefer": "handling=strict"}


# -- helpers ----------------------------------------------------------------------------------------
def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    """Ids of the entries with the given search.mode, in order."""
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def keys(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    """``Type/id`` of the entries with the given search.mode, in order."""
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == mode
    ]


def link(bundle: dict[str, Any], relation: str) -> str | None:
    """The URL of the link with ``relation``, or None."""
    urls = [x["url"] for x in bundle["link"] if x["relation"] == relation]
    assert len(urls) <= 1
    return urls[0] if urls else None


def query_of(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def all_pages(client: TestClient, url: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Follow ``next`` links from ``url``; (the pages, the match ids of every page in order)."""
    pages = [get_bundle(client, url)]
    while (nxt := link(pages[-1], "next")) is not None:
        assert len(pages) < 50, "runaway paging"
        pages.append(get_bundle(client, nxt))
    return pages, [i for page in pages for i in ids(page)]


def assert_400(
    client: TestClient, url: str, *fragments: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """The request is refused with 400 and an OperationOutcome whose diagnostics hold ``fragments``."""
    resp = client.get(f"/fhir/{url}", headers=headers)
    assert resp.status_code == 400, f"{url}: {resp.status_code} {resp.text}"
    assert resp.headers["content-type"].startswith("application/fhir+json")
    outcome: dict[str, Any] = resp.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] in ("error", "fatal")
    text = " ".join(i.get("diagnostics", "") for i in outcome["issue"])
    for fragment in fragments:
        assert fragment in text, f"{url}: {fragment!r} not in {text!r}"
    return outcome


def ref(key: str) -> dict[str, str]:
    return {"reference": key}


def patient(pid: str, **fields: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, **fields}


def observation(oid: str, subject: str, code: str = "8867-4", **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": ref(subject),
        **fields,
    }


# -- _sort ------------------------------------------------------------------------------------------
def _sort_data(client: TestClient) -> None:
    put_all(
        client,
        patient("s1", name=[{"family": "Adams"}], birthDate="1990-01-01", gender="male"),
        patient("s2", name=[{"family": "baker"}], birthDate="1985-06-15", gender="female"),
        patient("s3", name=[{"family": "Clark"}], birthDate="1990-01-01", gender="female"),
        patient("s4", name=[{"family": "Ábel"}], birthDate="2000-02-02", gender="other"),
        patient("s5", active=True),
        patient("s6", name=[{"family": "Clark"}], birthDate="1970", gender="male"),
    )


def test_sort_keys_directions_and_missing_values_last(client: TestClient) -> None:
    """``_sort`` by string, date, token and ``_id``, several keys, ``-`` descending, missing last."""
    _sort_data(client)

    def order(sort: str) -> list[str]:
        bundle = get_bundle(client, f"Patient?_sort={sort}")
        assert bundle["total"] == 6
        return ids(bundle)

    assert order("family,birthdate") == ["s4", "s1", "s2", "s6", "s3", "s5"]
    assert order("-family,birthdate") == ["s6", "s3", "s2", "s1", "s4", "s5"]
    assert order("-family,-birthdate") == ["s3", "s6", "s2", "s1", "s4", "s5"]
    assert order("birthdate,family") == ["s6", "s2", "s1", "s3", "s4", "s5"]
    assert order("-birthdate,-family") == ["s4", "s3", "s1", "s2", "s6", "s5"]
    assert order("gender,-birthdate") == ["s3", "s2", "s1", "s6", "s4", "s5"]
    assert order("-gender,birthdate") == ["s4", "s6", "s1", "s2", "s3", "s5"]
    assert order("_id") == ["s1", "s2", "s3", "s4", "s5", "s6"]
    assert order("-_id") == ["s6", "s5", "s4", "s3", "s2", "s1"]
    assert order("family,-_id") == ["s4", "s1", "s2", "s6", "s3", "s5"]
    filtered = get_bundle(client, "Patient?gender=male,female&_sort=-birthdate,_id")
    assert ids(filtered) == ["s1", "s3", "s2", "s6"]


def test_sort_by_last_updated(client: TestClient) -> None:
    """``_sort=_lastUpdated`` follows the write order; an update moves a resource to the end."""
    for pid in ("l1", "l2", "l3"):
        assert client.put(f"/fhir/Patient/{pid}", json=patient(pid)).status_code == 201
    assert ids(get_bundle(client, "Patient?_sort=_lastUpdated")) == ["l1", "l2", "l3"]
    assert ids(get_bundle(client, "Patient?_sort=-_lastUpdated")) == ["l3", "l2", "l1"]
    assert client.put("/fhir/Patient/l1", json=patient("l1", gender="male")).status_code == 200
    assert ids(get_bundle(client, "Patient?_sort=-_lastUpdated")) == ["l1", "l3", "l2"]
    _pages, paged = all_pages(client, "Patient?_sort=-_lastUpdated&_count=1")
    assert paged == ["l1", "l3", "l2"]


def test_sorted_paging_keeps_the_order_and_missing_values(client: TestClient) -> None:
    """Paging a sorted search gives the one-page order, missing values included, each once."""
    _sort_data(client)
    for sort in ("family,birthdate", "-family,birthdate", "-birthdate,-family", "gender,-birthdate", "-_id"):
        whole = ids(get_bundle(client, f"Patient?_sort={sort}"))
        for count in (1, 2, 4):
            pages, paged = all_pages(client, f"Patient?_sort={sort}&_count={count}")
            assert paged == whole, (sort, count)
            assert len(pages) == -(-6 // count)
            # walking back with previous links visits the same pages in reverse
            back = [ids(pages[-1])]
            current = pages[-1]
            while (prev := link(current, "previous")) is not None:
                current = get_bundle(client, prev)
                back.insert(0, ids(current))
            assert back == [ids(p) for p in pages], (sort, count)


def test_sort_errors(client: TestClient) -> None:
    """An unknown sort parameter is refused in strict handling and ignored (reported) otherwise."""
    _sort_data(client)
    assert_400(client, "Patient?_sort=nonsense", "nonsense", headers=STRICT)
    lenient = get_bundle(client, "Patient?_sort=nonsense")
    assert sorted(ids(lenient)) == ["s1", "s2", "s3", "s4", "s5", "s6"]
    assert lenient["entry"][-1]["search"]["mode"] == "outcome"
    assert "nonsense" in lenient["entry"][-1]["resource"]["issue"][0]["diagnostics"]


# -- paging -----------------------------------------------------------------------------------------
def test_paging_next_previous_and_links(client: TestClient) -> None:
    """``_count`` pages: next links reach every match once; previous links go back; totals."""
    put_all(client, *(patient(f"p{i}", gender="male" if i % 2 else "female") for i in range(7)))
    pages, _paged = all_pages(client, "Patient?_count=3&_sort=_id")
    assert [ids(p) for p in pages] == [["p0", "p1", "p2"], ["p3", "p4", "p5"], ["p6"]]
    assert pages[0]["total"] == 7
    assert link(pages[0], "self") == "http://testserver/fhir/Patient?_count=3&_sort=_id"
    assert link(pages[0], "previous") is None
    assert link(pages[-1], "next") is None
    for page in pages[1:]:
        assert page.get("total") in (None, 7)
    nxt = link(pages[0], "next")
    assert nxt is not None and nxt.startswith("http://testserver/fhir/Patient?")
    assert [(k, v) for k, v in query_of(nxt) if k != "_page"] == [("_count", "3"), ("_sort", "_id")]
    prev = link(pages[2], "previous")
    assert prev is not None
    assert ids(get_bundle(client, prev)) == ["p3", "p4", "p5"]
    prev = link(pages[1], "previous")
    assert prev is not None
    back = get_bundle(client, prev)
    assert ids(back) == ["p0", "p1", "p2"]
    assert link(back, "previous") is None
    assert link(back, "next") is not None
    assert ids(get_bundle(client, link(back, "next") or "")) == ["p3", "p4", "p5"]
    # default order (no _sort) pages the same way, and criteria are kept in the links
    _pages, males = all_pages(client, "Patient?gender=male&_count=2")
    assert sorted(males) == ["p1", "p3", "p5"]
    assert len(males) == 3
    _pages, everyone = all_pages(client, "Patient?_count=1")
    assert sorted(everyone) == [f"p{i}" for i in range(7)]


def test_paging_stays_correct_when_resources_change_between_pages(client: TestClient) -> None:
    """Creating and deleting between page requests neither repeats nor skips surviving matches."""
    put_all(client, *(patient(f"p{i}", name=[{"family": f"F{i}"}]) for i in range(7)))
    for url in ("Patient?_count=3&_sort=_id", "Patient?_count=3&_sort=-family", "Patient?_count=3"):
        whole = ids(get_bundle(client, url.replace("_count=3", "_count=100")))
        first = get_bundle(client, url)
        seen = ids(first)
        assert seen == whole[:3]
        rest = whole[3:]
        # delete the page's last row (the boundary) and one row still to come; add two rows
        gone = [seen[-1], rest[1]]
        for pid in gone:
            assert client.delete(f"/fhir/Patient/{pid}").status_code == 200
        assert (
            client.put("/fhir/Patient/p00", json=patient("p00", name=[{"family": "F00"}])).status_code == 201
        )
        assert client.put("/fhir/Patient/p9", json=patient("p9", name=[{"family": "F9"}])).status_code == 201
        nxt = link(first, "next")
        assert nxt is not None
        _pages, later = all_pages(client, nxt)
        assert len(later) == len(set(later)), (url, later)
        survivors = [p for p in rest if p not in gone]
        assert [p for p in later if p in survivors] == survivors, (url, later)
        assert not set(later) & (set(seen) | set(gone)), (url, later)
        assert set(later) <= set(survivors) | {"p00", "p9"}
        # restore the data set for the next ordering
        for pid in ("p00", "p9"):
            assert client.delete(f"/fhir/Patient/{pid}").status_code == 200
        for pid in gone:
            resp = client.put(f"/fhir/Patient/{pid}", json=patient(pid, name=[{"family": f"F{pid[1:]}"}]))
            assert resp.status_code == 201


def test_page_emptied_by_deletions_links_back(client: TestClient) -> None:
    """A next page whose rows were all deleted is empty and links back to the last real page."""
    put_all(client, *(patient(f"p{i}") for i in range(4)))
    first = get_bundle(client, "Patient?_count=2&_sort=_id")
    assert ids(first) == ["p0", "p1"]
    for pid in ("p2", "p3"):
        assert client.delete(f"/fhir/Patient/{pid}").status_code == 200
    empty = get_bundle(client, link(first, "next") or "")
    assert ids(empty) == []
    assert link(empty, "next") is None
    assert ids(get_bundle(client, link(empty, "previous") or "")) == ["p0", "p1"]


def test_sorted_paging_by_number(client: TestClient) -> None:
    """Number sort values page correctly, missing ones last."""

    def risk(rid: str, probability: float | None) -> dict[str, Any]:
        res: dict[str, Any] = {
            "resourceType": "RiskAssessment",
            "id": rid,
            "status": "final",
            "subject": ref("Patient/x"),
        }
        if probability is not None:
            res["prediction"] = [{"probabilityDecimal": probability}]
        return res

    put_all(client, risk("r1", 0.5), risk("r2", 12.25), risk("r3", 3), risk("r4", None), risk("r5", 3))
    _pages, paged = all_pages(client, "RiskAssessment?_sort=probability,_id&_count=2")
    assert paged == ["r1", "r3", "r5", "r2", "r4"]
    _pages, paged = all_pages(client, "RiskAssessment?_sort=-probability,-_id&_count=2")
    assert paged == ["r2", "r5", "r3", "r1", "r4"]


def test_count_zero_and_total_modes(client: TestClient) -> None:
    """``_count=0`` returns only the total; ``_total`` none/estimate/accurate."""
    put_all(client, *(patient(f"t{i}") for i in range(4)))
    zero = get_bundle(client, "Patient?_count=0")
    assert zero["total"] == 4
    assert "entry" not in zero
    assert link(zero, "next") is None
    none = get_bundle(client, "Patient?_total=none&_count=2")
    assert "total" not in none
    assert len(ids(none)) == 2
    assert link(none, "next") is not None
    assert get_bundle(client, "Patient?_total=accurate&_count=2")["total"] == 4
    estimate = get_bundle(client, "Patient?_total=estimate")
    assert isinstance(estimate["total"], int)
    assert estimate["total"] == 4
    assert get_bundle(client, "Patient?_count=2")["total"] == 4


# -- _summary / _elements ---------------------------------------------------------------------------
def test_summary_modes(client: TestClient) -> None:
    """``_summary`` count, true (summary elements), text (text + mandatory) and data (no text)."""
    narrative = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Anne</div>'}
    put_all(
        client,
        patient(
            "sm1",
            text=narrative,
            name=[{"family": "Summers"}],
            gender="female",
            maritalStatus={"text": "married"},
            communication=[{"language": {"text": "French"}}],
        ),
        observation(
            "so1",
            "Patient/sm1",
            text=narrative,
            valueQuantity={"value": 70, "unit": "kg", "system": UCUM, "code": "kg"},
            note=[{"text": "after lunch"}],
        ),
    )
    count = get_bundle(client, "Patient?_summary=count")
    assert count["total"] == 1
    assert "entry" not in count

    (res,) = [e["resource"] for e in get_bundle(client, "Patient?_summary=true")["entry"]]
    assert set(res) == {"resourceType", "id", "meta", "name", "gender"}
    assert SUBSETTED in res["meta"]["tag"]
    assert res["meta"]["versionId"] == "1"

    (res,) = [e["resource"] for e in get_bundle(client, "Patient?_summary=text")["entry"]]
    assert set(res) == {"resourceType", "id", "meta", "text"}
    assert SUBSETTED in res["meta"]["tag"]
    (res,) = [e["resource"] for e in get_bundle(client, "Observation?_summary=text")["entry"]]
    assert set(res) == {"resourceType", "id", "meta", "text", "status", "code"}

    (res,) = [e["resource"] for e in get_bundle(client, "Patient?_summary=data")["entry"]]
    assert set(res) == {"resourceType", "id", "meta", "name", "gender", "maritalStatus", "communication"}
    assert SUBSETTED in res["meta"]["tag"]

    (res,) = [e["resource"] for e in get_bundle(client, "Patient?_summary=false")["entry"]]
    assert "text" in res
    assert "tag" not in res["meta"]


def test_elements(client: TestClient) -> None:
    """``_elements`` keeps the named top-level elements, id, meta and mandatory ones; SUBSETTED tag."""
    put_all(
        client,
        observation(
            "e1",
            "Patient/x",
            valueQuantity={"value": 70, "unit": "kg", "system": UCUM, "code": "kg"},
            note=[{"text": "after lunch"}],
            effectiveDateTime="2021-01-01",
        ),
    )
    (res,) = [e["resource"] for e in get_bundle(client, "Observation?_elements=subject")["entry"]]
    assert set(res) == {"resourceType", "id", "meta", "status", "code", "subject"}
    assert SUBSETTED in res["meta"]["tag"]
    (res,) = [e["resource"] for e in get_bundle(client, "Observation?_elements=value,note")["entry"]]
    assert set(res) == {"resourceType", "id", "meta", "status", "code", "valueQuantity", "note"}
    (res,) = [e["resource"] for e in get_bundle(client, "Observation?_elements=effective")["entry"]]
    assert set(res) == {"resourceType", "id", "meta", "status", "code", "effectiveDateTime"}
    assert res["effectiveDateTime"] == "2021-01-01"


# -- strict / lenient handling ----------------------------------------------------------------------
def test_strict_handling_refuses_unknown_parameters_and_modifiers(client: TestClient) -> None:
    """``Prefer: handling=strict`` turns unknown parameters and modifiers into 400."""
    put_all(client, patient("h1", gender="male"), patient("h2", gender="female"))
    assert_400(client, "Patient?nonsense=1", "nonsense", headers=STRICT)
    assert_400(client, "Patient?family:below=x", "below", headers=STRICT)
    assert_400(client, "Patient?gender:exact=male", "exact", headers=STRICT)
    assert_400(client, "Patient?birthdate:contains=2020", "contains", headers=STRICT)
    assert_400(client, "Patient?gender=male&nonsense=1", "nonsense", headers=STRICT)
    ok = get_bundle(client, "Patient?gender=male", headers=STRICT)
    assert ids(ok) == ["h1"]
    assert "entry" in ok and all(e["search"]["mode"] == "match" for e in ok["entry"])


def test_lenient_handling_ignores_and_reports(client: TestClient) -> None:
    """By default unknown parameters are ignored, reported in an outcome entry, dropped from self."""
    put_all(client, patient("h1", gender="male"), patient("h2", gender="female"))
    for headers in (None, {"Prefer": "handling=lenient"}):
        bundle = get_bundle(client, "Patient?gender=male&nonsense=1&family:below=x", headers=headers)
        assert ids(bundle) == ["h1"]
        assert bundle["total"] == 1
        outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
        assert len(outcome) == 1
        issues = outcome[0]["resource"]["issue"]
        assert outcome[0]["resource"]["resourceType"] == "OperationOutcome"
        assert all(i["severity"] == "warning" for i in issues)
        text = " ".join(i["diagnostics"] for i in issues)
        assert "nonsense" in text and "family:below" in text
        assert link(bundle, "self") == "http://testserver/fhir/Patient?gender=male"
    plain = get_bundle(client, "Patient?gender=male")
    assert all(e["search"]["mode"] == "match" for e in plain["entry"])


# -- POST _search -----------------------------------------------------------------------------------
def test_post_search_equals_get(client: TestClient) -> None:
    """POST ``Type/_search`` with a form body gives the same result as the GET."""
    put_all(
        client,
        patient("f1", name=[{"family": "Müller"}], gender="male", birthDate="1980-01-01"),
        patient("f2", name=[{"family": "Mullins"}], gender="female", birthDate="1990-01-01"),
        patient("f3", name=[{"family": "Smith"}], gender="male"),
    )
    for form in (
        {"family": "mull"},
        {"gender": "male", "_sort": "-_id"},
        {"birthdate": ["ge1980", "lt1990"]},
        {"family": "mull,smith", "_count": "1"},
    ):
        query = [(k, v) for k, vals in form.items() for v in (vals if isinstance(vals, list) else [vals])]
        got = client.get("/fhir/Patient", params=query)
        posted = client.post("/fhir/Patient/_search", data=form)
        assert got.status_code == posted.status_code == 200
        get_body, post_body = got.json(), posted.json()
        assert ids(post_body) == ids(get_body), form
        assert post_body["total"] == get_body["total"]
        assert [x["relation"] for x in post_body["link"]] == [x["relation"] for x in get_body["link"]]
    # parameters may also be split between the URL and the body
    posted = client.post("/fhir/Patient/_search?gender=male", data={"family": "mull"})
    assert posted.status_code == 200
    assert ids(posted.json()) == ["f1"]
    strict = client.post("/fhir/Patient/_search", data={"nonsense": "1"}, headers=STRICT)
    assert strict.status_code == 400


# -- compartment and $everything --------------------------------------------------------------------
def test_patient_compartment_search(client: TestClient) -> None:
    """``Patient/{id}/Type?criteria`` searches only that patient's compartment."""
    put_all(
        client,
        patient("pa"),
        patient("pb"),
        observation("oa1", "Patient/pa", code="8867-4"),
        observation("oa2", "Patient/pa", code="29463-7"),
        observation("ob1", "Patient/pb", code="8867-4"),
        observation("ob2", "Patient/pb", code="8867-4", performer=[ref("Patient/pa")]),
        observation("ox", "Group/g", code="8867-4"),
        observation("oabs", "http://testserver/fhir/Patient/pa", code="8867-4"),
        observation("oforeign", "http://other.example.org/fhir/Patient/pa", code="8867-4"),
    )
    assert sorted(ids(get_bundle(client, "Patient/pa/Observation"))) == ["oa1", "oa2", "oabs", "ob2"]
    bundle = get_bundle(client, "Patient/pa/Observation?code=8867-4")
    assert sorted(ids(bundle)) == ["oa1", "oabs", "ob2"]
    assert bundle["total"] == 3
    assert link(bundle, "self") == "http://testserver/fhir/Patient/pa/Observation?code=8867-4"
    assert sorted(ids(get_bundle(client, "Patient/pb/Observation?code=8867-4"))) == ["ob1", "ob2"]
    assert ids(get_bundle(client, "Patient/pb/Observation?code=29463-7")) == []
    pages, paged = all_pages(client, "Patient/pa/Observation?_count=1&_sort=_id")
    assert paged == ["oa1", "oa2", "oabs", "ob2"]
    assert all(
        (link(p, "next") or "http://testserver/fhir/Patient/pa/Observation?").startswith(
            "http://testserver/fhir/Patient/pa/Observation?"
        )
        for p in pages
    )
    with_subject = get_bundle(client, "Patient/pa/Observation?code=29463-7&_include=Observation:subject")
    assert keys(with_subject) == ["Observation/oa2"]
    assert keys(with_subject, "include") == ["Patient/pa"]
    assert client.delete("/fhir/Observation/oa1").status_code == 200
    assert sorted(ids(get_bundle(client, "Patient/pa/Observation"))) == ["oa2", "oabs", "ob2"]


def _everything_data(client: TestClient) -> list[str]:
    """Patient pa's record (25 observations and more) next to patient pb's; pa's compartment keys."""
    put_all(
        client,
        {"resourceType": "Organization", "id": "org1", "name": "Acme"},
        {"resourceType": "Organization", "id": "org-b", "name": "Beta"},
        {"resourceType": "Practitioner", "id": "prac1", "name": [{"family": "House"}]},
        {"resourceType": "Practitioner", "id": "prac-b", "name": [{"family": "Grey"}]},
        {"resourceType": "Medication", "id": "med1", "code": {"text": "aspirin"}},
        patient("pa", managingOrganization=ref("Organization/org1")),
        patient(
            "pb",
            managingOrganization=ref("Organization/org-b"),
            generalPractitioner=[ref("Practitioner/prac-b")],
        ),
        *(observation(f"oa{i:02d}", "Patient/pa") for i in range(25)),
        observation("oa-member", "Patient/pa", hasMember=[ref("Observation/ob1")]),
        observation("oa-abs", "http://testserver/fhir/Patient/pa"),
        observation("foreign", "http://other.example.org/fhir/Patient/pa"),
        observation("ob1", "Patient/pb", performer=[ref("Practitioner/prac-b")]),
        {
            "resourceType": "Encounter",
            "id": "ea",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": ref("Patient/pa"),
            "participant": [{"individual": ref("Practitioner/prac1")}],
        },
        {
            "resourceType": "MedicationRequest",
            "id": "mra",
            "status": "active",
            "intent": "order",
            "subject": ref("Patient/pa"),
            "medicationReference": ref("Medication/med1"),
            "requester": ref("Practitioner/prac1"),
        },
    )
    return [
        "Patient/pa",
        *(f"Observation/oa{i:02d}" for i in range(25)),
        "Observation/oa-member",
        "Observation/oa-abs",
        "Encounter/ea",
        "MedicationRequest/mra",
    ]


def _everything_pages(client: TestClient, url: str) -> tuple[list[dict[str, Any]], list[str], set[str]]:
    pages = [get_bundle(client, url)]
    while (nxt := link(pages[-1], "next")) is not None:
        assert len(pages) < 50
        pages.append(get_bundle(client, nxt))
    matched = [k for p in pages for k in keys(p)]
    included = {k for p in pages for k in keys(p, "include")}
    return pages, matched, included


def test_everything_pages_through_the_whole_record(client: TestClient) -> None:
    """``$everything`` pages the whole compartment (no cap) with support resources, nothing else."""
    record = _everything_data(client)
    support = {"Organization/org1", "Practitioner/prac1", "Medication/med1"}
    for url, size in (("Patient/pa/$everything", 20), ("Patient/pa/$everything?_count=7", 7)):
        pages, matched, included = _everything_pages(client, url)
        assert pages[0]["total"] == len(record) == 30
        assert len(matched) == len(set(matched))
        assert sorted(matched) == sorted(record)
        assert len(pages) == -(-30 // size)
        assert all(len(keys(p)) == size for p in pages[:-1])
        assert included == support
        for page in pages:
            assert not set(keys(page)) & set(keys(page, "include"))
    # another patient's data never appears, even when pa's resources point at it
    _pages, matched, included = _everything_pages(client, "Patient/pa/$everything?_count=5")
    # (nor a resource about another server's Patient/pa)
    foreign = {
        "Patient/pb",
        "Observation/ob1",
        "Organization/org-b",
        "Practitioner/prac-b",
        "Observation/foreign",
    }
    assert not (set(matched) | included) & foreign
    _pages, matched, included = _everything_pages(client, "Patient/pb/$everything")
    assert sorted(matched) == ["Observation/ob1", "Patient/pb"]
    assert included == {"Organization/org-b", "Practitioner/prac-b"}


def test_everything_type_and_since(client: TestClient) -> None:
    """``_type`` limits the resource types, ``_since`` to resources changed since an instant."""
    record = _everything_data(client)
    _pages, matched, included = _everything_pages(
        client, "Patient/pa/$everything?_type=Observation&_count=10"
    )
    assert sorted(matched) == sorted(k for k in record if k.startswith("Observation/"))
    assert included == set()
    _pages, matched, included = _everything_pages(
        client, "Patient/pa/$everything?_type=Encounter,MedicationRequest,Practitioner"
    )
    assert sorted(matched) == ["Encounter/ea", "MedicationRequest/mra"]
    assert included == {"Practitioner/prac1"}
    resp = client.put("/fhir/Observation/oa03", json=observation("oa03", "Patient/pa", code="29463-7"))
    assert resp.status_code == 200
    stamp = resp.json()["meta"]["lastUpdated"]
    resp = client.post("/fhir/Observation", json=observation("new", "Patient/pa"))
    assert resp.status_code == 201
    new_id = resp.json()["id"]
    _pages, matched, _included = _everything_pages(client, f"Patient/pa/$everything?_since={stamp}")
    assert sorted(matched) == sorted(["Observation/oa03", f"Observation/{new_id}"])
    assert client.get("/fhir/Patient/nobody/$everything").status_code == 404


# -- bad input --------------------------------------------------------------------------------------
def test_bad_input_is_refused_with_clear_diagnostics(client: TestClient) -> None:
    """Invalid dates, numbers, prefixes, quantities, ``_count``, ``_page`` and result values: 400."""
    put_all(client, patient("b1", birthDate="2000-01-01"))
    assert_400(client, "Patient?birthdate=notadate", "notadate")
    assert_400(client, "Patient?birthdate=2020-13-45", "2020-13-45")
    assert_400(client, "Patient?birthdate=xx2020", "xx2020")
    assert_400(client, "Patient?birthdate=gt", "gt")
    assert_400(client, "Patient?_lastUpdated=yesterday", "yesterday")
    assert_400(client, "RiskAssessment?probability=abc", "abc")
    assert_400(client, "RiskAssessment?probability=zz10", "zz10")
    assert_400(client, "RiskAssessment?probability=ge", "ge")
    assert_400(client, "Observation?value-quantity=5.4|mg", "5.4|mg")
    assert_400(client, "Observation?value-quantity=heavy", "heavy")
    assert_400(client, "Observation?code-value-quantity=29463-7", "code-value-quantity")
    assert_400(client, "Observation?code=a|b|c", "a|b|c")
    assert_400(client, "Patient?gender:missing=maybe", "maybe")
    assert_400(client, "Patient?_count=abc", "_count", "abc")
    assert_400(client, "Patient?_count=-1", "_count")
    assert_400(client, "Patient?_page=garbage", "_page")
    assert_400(client, "Patient?_page=WyJuIiwgWzFdLCAxXQ", "_page")
    assert_400(client, "Patient?_total=maybe", "_total", "maybe")
    assert_400(client, "Patient?_summary=maybe", "_summary", "maybe")
    assert_400(client, "Patient/b1/$everything?_count=abc", "_count")
    assert_400(client, "Patient/b1/$everything?_count=-1", "_count")
    assert_400(client, "Patient/b1/$everything?_since=yesterday", "yesterday")
    assert_400(client, "Patient/b1/$everything?_page=garbage", "page")
    assert client.get("/fhir/Nope?name=x").status_code == 404
