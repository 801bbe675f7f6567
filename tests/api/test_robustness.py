"""Edge values that once made the server fail with 500: each is now stored, found or refused cleanly.

Runs on SQLite and PostgreSQL through the ``client`` fixture. Covers dates at the ends of the
calendar, numbers beyond a double, values longer than the String(255) index columns, forged or
out-of-range page links, malformed ``$validate`` Parameters, ``_pretty`` output and
``If-None-Exist`` criteria written with the resource type in front.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
from fastapi.testclient import TestClient

FHIR_JSON = {"Content-Type": "application/fhir+json"}
LONG_SYSTEM = "http://example.org/" + "s" * 300
OTHER_LONG_SYSTEM = "http://example.org/" + "t" * 300
LONG_CODE = "c" * 300
LONG_UNIT = "u" * 300


# -- helpers -------------------------------------------------------------------------------------
def outcome(r: httpx.Response, status: int, *fragments: str) -> list[dict[str, Any]]:
    """``r`` is an OperationOutcome with ``status`` whose diagnostics hold ``fragments``."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    issues: list[dict[str, Any]] = body["issue"]
    assert issues and issues[0]["severity"] in ("error", "fatal")
    text = " ".join(i.get("diagnostics", "") for i in issues)
    for fragment in fragments:
        assert fragment in text, text
    return issues


def bundle(r: httpx.Response, kind: str = "searchset") -> dict[str, Any]:
    """``r`` is a 200 Bundle of ``kind``."""
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["resourceType"] == "Bundle"
    assert body["type"] == kind
    return body


def ids(body: dict[str, Any]) -> set[str]:
    return {
        e["resource"]["id"] for e in body.get("entry", []) if e.get("search", {}).get("mode") != "include"
    }


def total(client: TestClient, rtype: str) -> int:
    count: int = bundle(client.get(f"/fhir/{rtype}?_summary=count"))["total"]
    return count


def create(client: TestClient, res: dict[str, Any]) -> str:
    r = client.post(f"/fhir/{res['resourceType']}", json=res, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    rid: str = r.json()["id"]
    return rid


def observation(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, **extra}


def cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# -- dates at the ends of the calendar -----------------------------------------------------------
def test_dates_at_the_calendar_ends_are_stored_and_found(client: TestClient) -> None:
    last = create(client, observation(effectiveDateTime="9999-12-31T23:59:59Z"))
    open_end = create(
        client, observation(effectivePeriod={"start": "2020-01-01", "end": "9999-12-31T23:59:59.999Z"})
    )
    first = create(client, observation(effectiveDateTime="0001-01-01T00:30:00+01:00"))
    assert total(client, "Observation") == 3

    found = bundle(client.get("/fhir/Observation", params={"date": "9999-12-31T23:59:59Z"}))
    assert ids(found) == {last}
    found = bundle(client.get("/fhir/Observation", params={"date": "9999-12-31"}))
    assert ids(found) == {last}
    found = bundle(client.get("/fhir/Observation", params={"date": "0001-01-01"}))
    assert ids(found) == {first}
    found = bundle(client.get("/fhir/Observation", params={"date": "ge2021-01-01"}))
    assert ids(found) == {last, open_end}
    found = bundle(client.get("/fhir/Observation", params={"date": "ap9999-12-31T23:59:59Z"}))
    assert last in ids(found)
    bundle(client.get("/fhir/Observation", params={"date": "ap0001-01-01T00:30:00+01:00"}))


def test_searches_at_the_calendar_ends_answer_200(client: TestClient) -> None:
    pid = create(client, {"resourceType": "Patient", "birthDate": "1980-01-01"})
    for params in (
        {"birthdate": "9999-12-31T23:59:59Z"},
        {"birthdate": "9999-12-31T23:00:00-01:00"},
        {"birthdate": "0001-01-01T00:30:00+01:00"},
        {"birthdate": "eb0001-01-01T00:00:00+14:00"},
        {"_lastUpdated": "9999-12-31T23:59:59Z"},
        {"_lastUpdated": "gt9999-12-31T23:59:59.999Z"},
    ):
        assert bundle(client.get("/fhir/Patient", params=params))["total"] == 0, params
    assert ids(
        bundle(client.get("/fhir/Patient", params={"_lastUpdated": "ge0001-01-01T00:30:00+01:00"}))
    ) == {pid}
    since = {"_since": "9999-12-31T23:59:59Z"}
    assert bundle(client.get("/fhir/_history", params=since), "history")["total"] == 0
    assert bundle(client.get("/fhir/Patient/_history", params=since), "history")["total"] == 0
    assert bundle(client.get(f"/fhir/Patient/{pid}/_history", params=since), "history")["total"] == 0
    assert bundle(client.get(f"/fhir/Patient/{pid}/$everything", params=since))["total"] == 0
    early = {"_since": "0001-01-01T00:30:00+01:00"}
    assert bundle(client.get(f"/fhir/Patient/{pid}/$everything", params=early))["total"] == 1


# -- numbers beyond a double ---------------------------------------------------------------------
def test_numbers_out_of_range_are_refused(client: TestClient) -> None:
    for url, value in (
        ("Observation", {"value-quantity": "1e1000000"}),
        ("Observation", {"value-quantity": "ge1e1000000|http://unitsofmeasure.org|mg"}),
        ("Observation", {"value-quantity": "1e-1000000"}),
        ("RiskAssessment", {"probability": "1e1000000"}),
        ("RiskAssessment", {"probability": "lt-1e1000000"}),
        ("RiskAssessment", {"probability": "1e301"}),
    ):
        outcome(client.get(f"/fhir/{url}", params=value), 400, "Invalid number", "exponent")
    outcome(client.get("/fhir/RiskAssessment", params={"probability": "1" * 200}), 400, "Invalid number")
    assert bundle(client.get("/fhir/RiskAssessment", params={"probability": "1e300"}))["total"] == 0
    assert bundle(client.get("/fhir/Observation", params={"value-quantity": "1.5e-3"}))["total"] == 0


# -- values longer than the String(255) index columns --------------------------------------------
def test_long_token_values_are_stored_and_found(client: TestClient) -> None:
    pid = create(
        client,
        {
            "resourceType": "Patient",
            "identifier": [
                {
                    "system": LONG_SYSTEM,
                    "value": "v" * 300,
                    "type": {"coding": [{"system": LONG_SYSTEM, "code": "MR"}], "text": "T" * 300},
                }
            ],
            "telecom": [{"system": "email", "value": "e" * 300 + "@example.org"}],
        },
    )
    for params in (
        {"identifier": f"{LONG_SYSTEM}|{'v' * 300}"},
        {"identifier": f"{LONG_SYSTEM}|"},
        {"identifier": "v" * 300},
        {"identifier:of-type": f"{LONG_SYSTEM}|MR|{'v' * 300}"},
        {"identifier:text": "t" * 300},
        {"email": "e" * 300 + "@example.org"},
    ):
        assert ids(bundle(client.get("/fhir/Patient", params=params))) == {pid}, params
    assert bundle(client.get("/fhir/Patient", params={"identifier": f"{OTHER_LONG_SYSTEM}|"}))["total"] == 0


def test_long_coding_and_quantity_values_are_stored_and_found(client: TestClient) -> None:
    oid = create(
        client,
        observation(
            code={"coding": [{"system": LONG_SYSTEM, "code": LONG_CODE, "display": "D" * 300}]},
            valueQuantity={"value": 1, "unit": LONG_UNIT, "system": LONG_SYSTEM, "code": LONG_CODE},
        ),
    )
    for params in (
        {"code": f"{LONG_SYSTEM}|{LONG_CODE}"},
        {"code": LONG_CODE},
        {"code:text": "d" * 300},
        {"value-quantity": f"1|{LONG_SYSTEM}|{LONG_CODE}"},
        {"value-quantity": f"1||{LONG_UNIT}"},
        {"value-quantity": f"1||{LONG_CODE}"},
    ):
        assert ids(bundle(client.get("/fhir/Observation", params=params))) == {oid}, params
    assert (
        bundle(client.get("/fhir/Observation", params={"code": f"{OTHER_LONG_SYSTEM}|{LONG_CODE}"}))["total"]
        == 0
    )


def test_long_reference_identifier_is_stored_and_found(client: TestClient) -> None:
    oid = create(client, observation(subject={"identifier": {"system": LONG_SYSTEM, "value": "w" * 300}}))
    for params in (
        {"subject:identifier": f"{LONG_SYSTEM}|{'w' * 300}"},
        {"subject:identifier": "w" * 300},
    ):
        assert ids(bundle(client.get("/fhir/Observation", params=params))) == {oid}, params
    # an id longer than any resource id simply matches nothing
    assert bundle(client.get("/fhir/Observation", params={"subject": "x" * 300}))["total"] == 0
    assert bundle(client.get("/fhir/Observation", params={"subject:Patient": "x" * 300}))["total"] == 0


# -- page links ----------------------------------------------------------------------------------
def test_forged_search_cursors_are_refused(client: TestClient) -> None:
    create(client, {"resourceType": "Patient", "name": [{"family": "A"}], "birthDate": "1990-01-01"})
    refused = [
        ("RiskAssessment?_sort=probability", b'["n",[{"a":1}],1]'),
        ("RiskAssessment?_sort=probability", b'["n",["abc"],1]'),
        ("RiskAssessment?_sort=probability", b'["n",[true],1]'),
        ("RiskAssessment?_sort=probability", b'["n",[18446744073709551615],1]'),
        ("Patient?_sort=birthdate", b'["n",[5],1]'),
        ("Patient?_sort=birthdate", b'["n",["not a date"],1]'),
        ("Patient?_sort=family", b'["n",[1],1]'),
        ("Patient?_sort=family", b'["n",["a\\u0000b"],1]'),
        ("Patient", b'["n",[],"x"]'),
        ("Patient", b'["n",[],-1]'),
        ("Patient", b'["n",[],9223372036854775808]'),
        ("Patient", b'["n",[],true]'),
        ("Patient", b'["x",[],1]'),
        ("Patient", b'["n",{},1]'),
        ("Patient", b'{"a":1,"b":2,"c":3}'),
        ("Patient", b"5"),
    ]
    for url, raw in refused:
        sep = "&" if "?" in url else "?"
        outcome(client.get(f"/fhir/{url}{sep}_page={cursor(raw)}"), 400, "Invalid or expired page link")
    accepted = [
        ("RiskAssessment?_sort=probability", b'["n",[0.5],1]'),
        ("RiskAssessment?_sort=probability", b'["n",[null],1]'),
        ("Patient?_sort=birthdate", b'["n",["2020-01-01T00:00:00"],1]'),
        ("Patient?_sort=birthdate", b'["p",["2020-01-01T00:00:00+02:00"],1]'),
        ("Patient?_sort=family", b'["n",["a"],0]'),
        ("Patient", b'["n",[],9223372036854775807]'),
    ]
    for url, raw in accepted:
        sep = "&" if "?" in url else "?"
        bundle(client.get(f"/fhir/{url}{sep}_page={cursor(raw)}"))


def test_everything_page_must_be_a_row_key(client: TestClient) -> None:
    pid = create(client, {"resourceType": "Patient"})
    for page in ("99999999999999999999999", "9223372036854775808", "-1", "+5", "1.5", "abc", "٣"):
        r = client.get(f"/fhir/Patient/{pid}/$everything", params={"_page": page})
        outcome(r, 400, "Invalid $everything page link")
    body = bundle(client.get(f"/fhir/Patient/{pid}/$everything", params={"_page": "9223372036854775807"}))
    assert body.get("entry", []) == []
    assert ids(bundle(client.get(f"/fhir/Patient/{pid}/$everything", params={"_page": "0"}))) == {pid}


def test_history_count_and_page_are_checked(client: TestClient) -> None:
    pid = create(client, {"resourceType": "Patient"})
    for url in ("/fhir/_history", "/fhir/Patient/_history", f"/fhir/Patient/{pid}/_history"):
        for count in ("-5", "abc", "1.5", "99999999999999999999999"):
            outcome(client.get(url, params={"_count": count}), 400, "_count")
        for page in ("99999999999999999999999", "9223372036854775808", "-1", "abc"):
            outcome(client.get(url, params={"_page": page}), 400, "Invalid or expired history page link")
        assert len(bundle(client.get(url, params={"_page": "9223372036854775807"}), "history")["entry"]) == 1
        assert bundle(client.get(url, params={"_count": "0"}), "history")["total"] == 1


# -- $validate, compartments, _pretty, If-None-Exist ---------------------------------------------
def test_validate_refuses_malformed_parameters(client: TestClient) -> None:
    for parameter in (5, [5], ["resource"], {"name": "resource"}, [{"name": "resource"}, None]):
        body = {"resourceType": "Parameters", "parameter": parameter}
        r = client.post("/fhir/Patient/$validate", json=body, headers=FHIR_JSON)
        outcome(r, 400, "Parameters")
    ok = {
        "resourceType": "Parameters",
        "parameter": [{"name": "resource", "resource": {"resourceType": "Patient"}}],
    }
    r = client.post("/fhir/Patient/$validate", json=ok, headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    assert r.json()["issue"][0]["severity"] == "information"
    assert total(client, "Patient") == 0


def test_compartment_of_every_type_is_not_supported(client: TestClient) -> None:
    pid = create(client, {"resourceType": "Patient"})
    outcome(client.get(f"/fhir/Patient/{pid}/*"), 404, f"Patient/{pid}/*", "not supported")
    outcome(client.get(f"/fhir/Patient/{pid}/Nope"), 404, "Unknown resource type 'Nope'")
    assert ids(bundle(client.get(f"/fhir/Patient/{pid}/Patient"))) == {pid}


def test_pretty_output_is_fully_indented(client: TestClient) -> None:
    pid = create(client, {"resourceType": "Patient", "name": [{"family": "Zoë", "given": ["A", "B"]}]})
    for url in (
        f"/fhir/Patient/{pid}",
        "/fhir/Patient",
        f"/fhir/Patient/{pid}/_history",
        f"/fhir/Patient/{pid}/$everything",
        "/fhir/metadata",
    ):
        plain = client.get(url)
        pretty = client.get(url, params={"_pretty": "true"})
        assert pretty.status_code == plain.status_code == 200
        assert pretty.headers["content-type"] == "application/fhir+json; charset=utf-8"
        assert "\n" not in plain.text
        assert pretty.text == json.dumps(pretty.json(), indent=2, ensure_ascii=False), url
    # a stored resource is embedded as stored when not pretty
    r = client.get(f"/fhir/Patient/{pid}")
    assert r.text.startswith('{"resourceType":"Patient","name":[{"family":"Zoë"')
    assert r.headers["last-modified"].endswith(" GMT")


def test_unsupported_format_is_refused_before_writing(client: TestClient) -> None:
    r = client.post("/fhir/Patient?_format=xml", json={"resourceType": "Patient"}, headers=FHIR_JSON)
    outcome(r, 406, "_format")
    assert total(client, "Patient") == 0


def test_if_none_exist_accepts_the_type_prefix(client: TestClient) -> None:
    res = {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "1"}]}
    header = {**FHIR_JSON, "If-None-Exist": "Patient?identifier=urn:x|1"}
    first = client.post("/fhir/Patient", json=res, headers=header)
    assert first.status_code == 201, first.text
    again = client.post("/fhir/Patient", json=res, headers=header)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    plain = client.post(
        "/fhir/Patient", json=res, headers={**FHIR_JSON, "If-None-Exist": "identifier=urn:x|1"}
    )
    assert plain.status_code == 200, plain.text
    assert total(client, "Patient") == 1
    outcome(
        client.post("/fhir/Patient", json=res, headers={**FHIR_JSON, "If-None-Exist": "Patient?"}),
        400,
        "If-None-Exist",
    )
    # criteria for another type are not stripped: the unknown parameter is refused
    r = client.post(
        "/fhir/Patient", json=res, headers={**FHIR_JSON, "If-None-Exist": "Observation?identifier=urn:x|1"}
    )
    outcome(r, 400)
    assert total(client, "Patient") == 1


def test_conditional_update_with_a_non_resource_body_is_refused(client: TestClient) -> None:
    r = client.put("/fhir/Patient?name=x", json=[1])
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/Patient").json()["total"] == 0


def test_missing_modifier_on_id_takes_only_true_or_false(client: TestClient) -> None:
    r = client.get("/fhir/Patient", params={"_id:missing": "perhaps"})
    assert r.status_code == 400
    assert ":missing takes true or false" in r.json()["issue"][0]["diagnostics"]
    assert client.get("/fhir/Patient", params={"_id:missing": "false"}).status_code == 200
