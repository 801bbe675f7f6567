"""The end of care and the filing deadline after it (art. 9(3), LAW-AND-CROSSBORDER.md §A.9):
``$end-care`` shortens a registration to the end of care plus the deadline (never lengthens it),
answers a stranger as for an unknown record, and ``access.filing.due_filings`` lists each author's
ended cares with their due date, the overdue flag and the key documents filed, through the
caller's own access decision: only records they may read now, only items they may read counted.
Time passes by registering in the past (``care.register`` takes ``now``) and by asking the
worklist later."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import event, select

from sharedcare.access import care, consent
from sharedcare.access.filing import LISTED_MAX, DueFiling, KeyDocument, Worklist, due_filings, key_document
from sharedcare.access.models import care_relationship, filing_deadline, record_status
from sharedcare.access.policy import category_of
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.access.session import PolicySession
from sharedcare.api.registrations import END_CARE_REFUSED
from sharedcare.audit import log as audit
from sharedcare.fhir.store import utcnow
from sharedcare.identity.matricule import MATRICULE_SYSTEM, generate
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer
from sharedcare.storage.tables import resource as resource_table
from support import CLINIC, OBSERVATION_CATEGORY, OTHER_DOCTOR, OTHER_SYSTEM, bearer, lab_result, put_all
from support import CLINIC_DOCTOR as DOCTOR
from support import CLINIC_SYSTEM as SYSTEM
from support import OTHER_ORGANIZATION as OTHER

LOINC = "http://loinc.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
GP = Principal(PrincipalKind.PROFESSIONAL, "acct-gp", display="Dr GP", practitioner_id="gp", profession="med")
SOLO = Principal(PrincipalKind.PROFESSIONAL, "acct-solo", practitioner_id="solo", profession="med")
HOLDER = Principal(PrincipalKind.PATIENT, "acct-pa", patient_id="pa")
MATRICULE = generate(date(1975, 3, 14), 7)


def world(client: TestClient) -> dict[str, dict[str, str]]:
    put_all(
        client,
        CLINIC,
        OTHER,
        *({"resourceType": "Practitioner", "id": p, "active": True} for p in ("doc", "od", "gp", "solo")),
        {
            "resourceType": "Patient",
            "id": "pa",
            "identifier": [{"system": MATRICULE_SYSTEM, "value": MATRICULE}],
        },
        {"resourceType": "Patient", "id": "pb"},
        lab_result("lab-a", "pa"),
        lab_result("lab-b", "pb"),
    )
    app: Any = client.app
    return {
        "system": bearer(app, SYSTEM, "system/*.cruds"),
        "other": bearer(app, OTHER_SYSTEM, "system/*.cruds"),
        "doctor": bearer(app, DOCTOR, "user/*.cruds"),
        "other_doctor": bearer(app, OTHER_DOCTOR, "user/*.cruds"),
        "gp": bearer(app, GP, "user/*.cruds"),
        "solo": bearer(app, SOLO, "user/*.cruds"),
        "holder": bearer(app, HOLDER, "patient/*.cruds"),
    }


def end_care(client: TestClient, patient: str, headers: dict[str, str], end: datetime | None = None) -> Any:
    body: dict[str, Any] = {"resourceType": "Parameters", "parameter": []}
    if end is not None:
        body["parameter"].append({"name": "end", "valueDateTime": end.isoformat() + "Z"})
    return client.post(f"/fhir/Patient/{patient}/$end-care", json=body, headers=headers)


def registered(
    client: TestClient, patient: str, who: Principal, at: datetime, *, emergency: bool = False
) -> str:
    """A registration of ``patient`` by ``who``'s facility made at ``at`` (the past: time passed)."""
    app: Any = client.app
    with writer(app.state.engine).begin() as conn:
        settings: Settings = app.state.settings
        rel = care.register(conn, settings, who, patient, emergency=emergency, now=at)
    return rel.id


def relationship(client: TestClient, rid: str) -> care.Relationship:
    app: Any = client.app
    with app.state.engine.connect() as conn:
        rel = care.get(conn, rid)
    assert rel is not None
    return rel


def listing(client: TestClient, who: Principal, at: datetime, limit: int = LISTED_MAX) -> Worklist:
    """``who``'s worklist at ``at``, read through their own access decision (as the portal does)."""
    app: Any = client.app
    readable = PolicySession(who, app.state.policy, category_of, enforce_scopes=False).read_filter()
    assert readable is not None
    with app.state.engine.connect() as conn:
        return due_filings(conn, who, at, readable, app.state.settings, limit=limit)


def worklist(client: TestClient, who: Principal, at: datetime) -> list[DueFiling]:
    return listing(client, who, at).cares


def value(params: list[dict[str, Any]], name: str) -> Any:
    (p,) = [p for p in params if p["name"] == name]
    return next(v for k, v in p.items() if k.startswith("value"))


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)


def diagnostics(resp: Any) -> str:
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome", body
    text: str = body["issue"][0]["diagnostics"]
    return text


def report(
    rid: str, patient: str, code: str, *, status: str = "final", section: str | None = None
) -> dict[str, Any]:
    """A DiagnosticReport of ``patient`` whose LOINC ``code`` (and v2-0074 ``section``) say what it is."""
    res: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": rid,
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "result": [{"reference": f"Observation/lab-{patient[1]}"}],  # a lab report names its results
    }
    if section:
        res["category"] = [{"coding": [{"system": V2_0074, "code": section}]}]
    return res


def document(rid: str, patient: str, code: str, *, status: str = "current") -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "id": rid,
        "status": status,
        "type": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "content": [{"attachment": {"contentType": "text/plain", "data": "T0s="}}],
    }


def file(client: TestClient, headers: dict[str, str], resource: dict[str, Any]) -> None:
    """Create ``resource`` (its id left to the server) as the caller of ``headers``."""
    body = {k: v for k, v in resource.items() if k != "id"}
    resp = client.post(f"/fhir/{resource['resourceType']}", json=body, headers=headers)
    assert resp.status_code == 201, resp.text


# --- $end-care -------------------------------------------------------------------------------------


def test_the_end_of_care_shortens_the_registration_to_the_filing_deadline(client: TestClient) -> None:
    h = world(client)
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    deadline = timedelta(days=settings.filing_deadline_days)
    resp = client.post(
        "/fhir/Patient/pa/$register",
        json={"resourceType": "Parameters", "parameter": [{"name": "context", "valueCode": "facility"}]},
        headers=h["system"],
    )
    assert resp.status_code == 200, resp.text
    rid = value(resp.json()["parameter"], "registration")
    assert relationship(client, rid).ends > utcnow() + timedelta(days=44)  # type: ignore[operator]
    before = utcnow()
    ended = end_care(client, "pa", h["doctor"])
    assert ended.status_code == 200, ended.text
    params = ended.json()["parameter"]
    end = when(value(params, "endOfCare"))
    assert before <= end <= utcnow()
    (part,) = [p["part"] for p in params if p["name"] == "registration"]
    assert value(part, "registration") == rid and value(part, "context") == "facility"
    assert value(part, "organization") == {"reference": "Organization/clinic"}
    assert when(value(part, "end")) == end + deadline
    assert relationship(client, rid).ends == end + deadline
    app: Any = client.app
    with app.state.engine.connect() as conn:
        (row,) = conn.execute(select(filing_deadline)).all()
        changes = audit.query(conn, patient_id="pa", actions=[audit.AuditAction.CONSENT_CHANGE])
    assert (row.relationship_id, row.patient_id, row.organization_id, row.practitioner_id) == (
        rid,
        "pa",
        "clinic",
        None,
    )
    assert (row.care_end, row.due, row.context) == (end, end + deadline, "facility")
    assert changes[0].record.interaction == (
        f"end-care facility Organization/clinic on {end.isoformat()} until {(end + deadline).isoformat()}"
    )
    assert changes[0].record.principal_subject == "acct-doc"
    # the author still reads and files during the deadline
    assert client.get("/fhir/Observation/lab-a", headers=h["doctor"]).status_code == 200
    file(client, h["doctor"], document("letter", "pa", "18842-5"))
    # a care ends once; its registration is not renewed (a new stay is registered again)
    again = end_care(client, "pa", h["system"])
    assert again.status_code == 422 and "already ended" in diagnostics(again)
    renewal = client.post("/fhir/Patient/pa/$renew-registration", headers=h["system"])
    assert renewal.status_code == 422 and "care ended" in diagnostics(renewal)
    assert relationship(client, rid).ends == end + deadline
    future = end_care(client, "pa", h["system"], utcnow() + timedelta(hours=1))
    assert future.status_code == 422 and "future" in diagnostics(future)


def test_the_end_of_care_never_lengthens_access(client: TestClient) -> None:
    h = world(client)
    soon = (utcnow() + timedelta(days=3)).replace(microsecond=0)
    resp = client.post(
        "/fhir/Patient/pb/$register",
        json={
            "resourceType": "Parameters",
            "parameter": [
                {"name": "context", "valueCode": "emergency"},
                {"name": "end", "valueDateTime": soon.isoformat() + "Z"},
            ],
        },
        headers=h["system"],
    )
    assert resp.status_code == 200, resp.text
    rid = value(resp.json()["parameter"], "registration")
    ended = end_care(client, "pb", h["system"])
    assert ended.status_code == 200, ended.text
    (part,) = [p["part"] for p in ended.json()["parameter"] if p["name"] == "registration"]
    assert when(value(part, "end")) == soon == relationship(client, rid).ends  # not end + 15 days


def test_after_the_deadline_the_facility_no_longer_reads_the_record(client: TestClient) -> None:
    h = world(client)
    now = utcnow()
    rid = registered(client, "pa", SYSTEM, now - timedelta(days=20))  # 45 days: still in force
    assert client.get("/fhir/Observation/lab-a", headers=h["doctor"]).status_code == 200
    early = end_care(client, "pa", h["system"], now - timedelta(days=21))  # before it began
    assert early.status_code == 422 and "before" in diagnostics(early)
    ended = end_care(client, "pa", h["system"], now - timedelta(days=16))
    assert ended.status_code == 200, ended.text
    rel = relationship(client, rid)
    assert rel.ends is not None and rel.ends < utcnow()
    for path in ("Observation/lab-a", "Patient/pa"):
        assert client.get(f"/fhir/{path}", headers=h["doctor"]).status_code == 404
    refused = client.post(
        "/fhir/DocumentReference", json=document("late", "pa", "18842-5"), headers=h["doctor"]
    )
    assert refused.status_code in (403, 404)
    # the facility is no longer in the holder's care: told what a stranger is told
    again = end_care(client, "pa", h["system"])
    assert (again.status_code, diagnostics(again)) == (404, END_CARE_REFUSED)


def test_a_stranger_gets_the_answer_of_an_unknown_record(client: TestClient) -> None:
    h = world(client)
    registered(client, "pa", SYSTEM, utcnow())
    answers = [
        end_care(client, "pa", h["other"]),
        end_care(client, "nobody", h["other"]),
        end_care(client, "pa", h["other_doctor"]),
        end_care(client, "pb", h["system"]),  # a known record the clinic has no registration of
        end_care(client, "pa", h["solo"]),  # a professional with no care of pa
    ]
    by_matricule = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "identifier", "valueIdentifier": {"system": MATRICULE_SYSTEM, "value": MATRICULE}}
        ],
    }
    answers.append(client.post("/fhir/Patient/$end-care", json=by_matricule, headers=h["other"]))
    unknown = generate(date(1990, 6, 1), 3)
    by_matricule["parameter"][0]["valueIdentifier"]["value"] = unknown
    answers.append(client.post("/fhir/Patient/$end-care", json=by_matricule, headers=h["other"]))
    app: Any = client.app
    with writer(app.state.engine).begin() as conn:  # closed: still the same answer to a stranger
        conn.execute(record_status.insert().values(patient_id="pa", status="closed", closed_at=utcnow()))
    answers.append(end_care(client, "pa", h["other"]))
    for resp in answers:
        assert (resp.status_code, diagnostics(resp)) == (404, END_CARE_REFUSED), resp.text
        assert resp.json() == answers[0].json() and "Patient/pa" not in resp.text
    # the facility in the holder's care is told precisely
    closed = end_care(client, "pa", h["system"])
    assert closed.status_code == 422 and "Patient/pa is closed" in diagnostics(closed)
    # a future end is refused before any record is looked up: known or not, alike
    late = utcnow() + timedelta(days=1)
    futures = [end_care(client, p, h["other"], late) for p in ("pa", "nobody")]
    assert [r.status_code for r in futures] == [422, 422] and futures[0].json() == futures[1].json()
    # the holder, and a token that may not write Patient, are refused
    assert end_care(client, "pa", h["holder"]).status_code == 403
    reading = end_care(client, "pa", bearer(app, SYSTEM, "system/Patient.r"))
    assert reading.status_code == 403 and "scopes" in diagnostics(reading)
    with app.state.engine.connect() as conn:
        assert conn.execute(select(filing_deadline)).all() == []
        assert all(r.ends and r.ends > utcnow() for r in care.of_patient(conn, "pa", utcnow()))


def test_a_solo_professional_ends_their_own_care(client: TestClient) -> None:
    h = world(client)
    app: Any = client.app
    settings: Settings = app.state.settings
    with writer(app.state.engine).begin() as conn:
        code = care.issue_connection_code(conn, settings, "pb", utcnow())
        rel = care.open_with_code(conn, settings, GP, code, utcnow())
    assert rel.ends is not None
    ended = end_care(client, "pb", h["gp"])
    assert ended.status_code == 200, ended.text
    params = ended.json()["parameter"]
    (part,) = [p["part"] for p in params if p["name"] == "registration"]
    assert value(part, "practitioner") == {"reference": "Practitioner/gp"}
    assert value(part, "context") == "solo"
    due = when(value(params, "endOfCare")) + timedelta(days=settings.filing_deadline_days)
    assert relationship(client, rel.id).ends == min(rel.ends, due)
    with app.state.engine.connect() as conn:
        (row,) = conn.execute(select(filing_deadline)).all()
    assert (row.practitioner_id, row.organization_id, row.context) == ("gp", None, "solo")


def test_the_holders_objection_takes_the_deadline_with_the_record(client: TestClient) -> None:
    h = world(client)
    registered(client, "pa", SYSTEM, utcnow() - timedelta(days=2))
    assert end_care(client, "pa", h["system"]).status_code == 200
    assert [i.patient_id for i in worklist(client, DOCTOR, utcnow())] == ["pa"]
    app: Any = client.app
    admin = bearer(app, Principal(PrincipalKind.ADMIN, "acct-admin"), "user/*.rs")
    assert client.post("/fhir/Patient/pa/$opt-out", headers=admin).status_code == 200
    with app.state.engine.connect() as conn:
        assert conn.execute(select(filing_deadline)).all() == []
    assert worklist(client, DOCTOR, utcnow()) == []


# --- the worklist ---------------------------------------------------------------------------------


def test_the_worklist_shows_the_kinds_filed_and_the_overdue_cares(client: TestClient) -> None:
    h = world(client)
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    deadline = timedelta(days=settings.filing_deadline_days)
    now = utcnow()
    stay = registered(client, "pa", SYSTEM, now - timedelta(days=20))
    forgotten = registered(client, "pb", SYSTEM, now - timedelta(days=40))
    registered(client, "pb", OTHER_SYSTEM, now - timedelta(days=2))  # in force, not ended: not listed
    registered(client, "pa", OTHER_SYSTEM, now - timedelta(days=1))
    assert worklist(client, DOCTOR, now) == []  # registrations in force: no care ended yet
    assert end_care(client, "pb", h["system"], now - timedelta(days=20)).status_code == 200
    assert end_care(client, "pa", h["doctor"], now - timedelta(days=1)).status_code == 200
    # the clinic's doctor files a discharge summary, a lab report and an imaging report
    file(client, h["doctor"], document("discharge", "pa", "34105-7"))
    file(client, h["doctor"], report("cbc", "pa", "11502-2", section="HM"))
    file(client, h["doctor"], report("xray", "pa", "18748-4", section="RAD"))
    # not key documents, or not filed yet: an Observation, a preliminary report, a draft summary
    file(client, h["doctor"], lab_result("glucose", "pa"))
    file(
        client,
        h["doctor"],
        document("summary", "pa", "60591-5", status="current") | {"docStatus": "preliminary"},
    )
    # another facility's patient summary is not the clinic's filing
    file(client, h["other_doctor"], document("ips", "pa", "60591-5"))
    later = utcnow()
    # pb's care is closed: its record is no longer open to the clinic, so it is not listed at all
    (current,) = worklist(client, DOCTOR, later)
    assert (current.relationship_id, current.patient_id) == (stay, "pa")
    assert current.declared and not current.closed and not current.overdue
    assert current.filed == {
        KeyDocument.DISCHARGE_REPORT,
        KeyDocument.LAB_RESULTS,
        KeyDocument.IMAGING_REPORT,
    }
    assert current.care_end == now - timedelta(days=1) and current.due == current.care_end + deadline
    assert current.care_start == now - timedelta(days=20)
    # a new stay at the clinic opens pb's record again: the closed care is listed, overdue
    registered(client, "pb", SYSTEM, utcnow())
    items = worklist(client, DOCTOR, later)
    assert [(i.relationship_id, i.patient_id) for i in items] == [(stay, "pa"), (forgotten, "pb")]
    late = items[1]
    assert late.closed and late.overdue and late.filed == frozenset()
    assert late.due == now - timedelta(days=20) + deadline < later
    # the other facility sees none of it; a facility's system, which reads no clinical item, and
    # the holder have no worklist
    assert worklist(client, OTHER_DOCTOR, later) == []
    assert worklist(client, SYSTEM, later) == [] and worklist(client, OTHER_SYSTEM, later) == []
    assert worklist(client, HOLDER, later) == []
    # the patient summary filed now, after the fact, by the clinic's doctor: listed too
    file(client, h["doctor"], document("summary", "pa", "60591-5"))
    (mine, _) = worklist(client, DOCTOR, utcnow())
    assert KeyDocument.PATIENT_SUMMARY in mine.filed
    # the list keeps 90 days after the due date (pb's new stay has ended by then)
    kept = {i.relationship_id for i in worklist(client, DOCTOR, late.due + timedelta(days=89))}
    assert forgotten in kept and stay in kept
    gone = {i.relationship_id for i in worklist(client, DOCTOR, current.due + timedelta(days=91))}
    assert forgotten not in gone and stay not in gone and len(gone) == 1


def test_cares_that_ran_out_count_as_ended(client: TestClient) -> None:
    """An emergency registration ended its care the deadline before it ends; a facility one when
    it ended; a solo consultation on the day the code was used."""
    h = world(client)
    app: Any = client.app
    settings: Settings = app.state.settings
    deadline = timedelta(days=settings.filing_deadline_days)
    now = utcnow()
    emergency = registered(client, "pa", SYSTEM, now - timedelta(days=5), emergency=True)
    facility = registered(client, "pb", SYSTEM, now - timedelta(days=50))
    registered(client, "pb", SYSTEM, now)  # a new stay: pb's record is open to the clinic again
    with writer(app.state.engine).begin() as conn:
        code = care.issue_connection_code(conn, settings, "pb", now - timedelta(days=2))
        solo = care.open_with_code(conn, settings, GP, code, now - timedelta(days=2)).id
        code = care.issue_connection_code(conn, settings, "pa", now)
        other_solo = care.open_with_code(conn, settings, SOLO, code, now).id
    items = {i.relationship_id: i for i in worklist(client, DOCTOR, now)}
    assert set(items) == {emergency, facility}
    rel = relationship(client, emergency)
    assert rel.ends is not None
    assert (items[emergency].care_end, items[emergency].due) == (rel.ends - deadline, rel.ends)
    assert items[emergency].care_end == rel.starts + timedelta(hours=settings.access_emergency_hours)
    assert not items[emergency].declared and not items[emergency].closed
    rel = relationship(client, facility)
    assert (items[facility].care_end, items[facility].due) == (rel.ends, rel.ends)
    assert items[facility].closed and items[facility].overdue
    # a professional sees only their own solo cares (and, acting for a facility, the facility's)
    (mine,) = worklist(client, GP, now)
    assert (mine.relationship_id, mine.context, mine.closed) == (solo, "solo", False)
    assert mine.care_end == mine.care_start == now - timedelta(days=2)
    file(client, h["gp"], report("path", "pb", "11526-1"))
    (mine,) = worklist(client, GP, utcnow())
    assert mine.filed == {KeyDocument.LAB_RESULTS}
    assert [i.relationship_id for i in worklist(client, SOLO, now)] == [other_solo]
    # a revoked relationship is no care with a deadline
    with writer(app.state.engine).begin() as conn:
        care.end(conn, solo, utcnow())
    assert worklist(client, GP, utcnow()) == []
    with app.state.engine.connect() as conn:
        assert conn.execute(select(care_relationship.c.id).where(care_relationship.c.id == solo)).first()


NURSE = Principal(
    PrincipalKind.PROFESSIONAL,
    "acct-nurse",
    practitioner_id="nurse",
    profession="inf",
    organization_id="clinic",
)
PHARMACIST = Principal(
    PrincipalKind.PROFESSIONAL, "acct-ph", practitioner_id="ph", profession="pha", organization_id="clinic"
)


def _stay_with_reports(client: TestClient) -> tuple[dict[str, dict[str, str]], str]:
    """An emergency stay of pa at the clinic, ended 4 days ago (due in 11), and a lab report and an
    imaging report its doctor filed; the ids of the reports are their ``code``s' items."""
    h = world(client)
    rid = registered(client, "pa", SYSTEM, utcnow() - timedelta(days=5), emergency=True)
    file(client, h["doctor"], report("cbc", "pa", "11502-2", section="HM"))
    file(client, h["doctor"], report("xray", "pa", "18748-4", section="RAD"))
    return h, rid


def _item(client: TestClient, code: str) -> str:
    """``DiagnosticReport/<id>`` of the report of LOINC ``code``."""
    app: Any = client.app
    with app.state.engine.connect() as conn:
        rows = conn.execute(
            select(resource_table.c.id, resource_table.c.content).where(
                resource_table.c.type == "DiagnosticReport"
            )
        ).all()
    (rid,) = [r.id for r in rows if f'"{code}"' in r.content]
    return f"DiagnosticReport/{rid}"


def test_a_blocked_professional_gets_no_line_nor_count_of_the_record(client: TestClient) -> None:
    _h, rid = _stay_with_reports(client)
    now = utcnow()
    (line,) = worklist(client, NURSE, now)  # the clinic's nurse: name, due date, kinds
    assert line.relationship_id == rid and line.filed == {KeyDocument.LAB_RESULTS, KeyDocument.IMAGING_REPORT}
    app: Any = client.app
    with writer(app.state.engine).begin() as conn:
        consent.block(conn, app.state.fhir, HOLDER, "pa", "nurse", now)
    stranger = Principal(PrincipalKind.PROFESSIONAL, "acct-x", practitioner_id="x", profession="inf")
    for at in (now, now + timedelta(days=12), now + timedelta(days=30)):  # open, then past the due date
        assert listing(client, NURSE, at) == listing(client, stranger, at) == Worklist([], False)
    # the doctor, not blocked, still has the line
    assert [i.relationship_id for i in worklist(client, DOCTOR, now)] == [rid]


def test_a_masked_item_is_not_counted_as_filed(client: TestClient) -> None:
    _stay_with_reports(client)
    app: Any = client.app
    with writer(app.state.engine).begin() as conn:
        consent.mask(conn, app.state.fhir, HOLDER, "pa", "nurse", _item(client, "18748-4"), utcnow())
    (line,) = worklist(client, NURSE, utcnow())
    assert line.filed == {KeyDocument.LAB_RESULTS}
    (line,) = worklist(client, DOCTOR, utcnow())  # masked from the nurse only
    assert line.filed == {KeyDocument.LAB_RESULTS, KeyDocument.IMAGING_REPORT}


def test_only_what_the_professions_column_reads_counts(client: TestClient) -> None:
    """The pharmacists' column reads lab results, not imaging: the imaging report is not theirs to
    see filed."""
    _stay_with_reports(client)
    (line,) = worklist(client, PHARMACIST, utcnow())
    assert line.filed == {KeyDocument.LAB_RESULTS}


def test_a_very_restricted_item_counts_for_its_author_side_only(client: TestClient) -> None:
    h = world(client)
    registered(client, "pa", SYSTEM, utcnow() - timedelta(days=5), emergency=True)
    letter = document("letter", "pa", "18842-5") | {
        "author": [{"reference": "Practitioner/doc"}],
        "meta": {"security": [{"system": CONFIDENTIALITY, "code": "V"}]},
    }
    file(client, h["doctor"], letter)
    assert worklist(client, DOCTOR, utcnow())[0].filed == {KeyDocument.DISCHARGE_REPORT}
    assert worklist(client, NURSE, utcnow())[0].filed == frozenset()


def test_the_worklist_is_capped_to_the_latest_due(client: TestClient) -> None:
    world(client)
    now = utcnow()
    older = registered(client, "pa", SYSTEM, now - timedelta(days=6), emergency=True)
    newer = registered(client, "pb", SYSTEM, now - timedelta(days=5), emergency=True)
    assert listing(client, DOCTOR, now, limit=1) == Worklist(listing(client, DOCTOR, now).cares[1:], True)
    assert [i.relationship_id for i in listing(client, DOCTOR, now, limit=1).cares] == [newer]
    assert [i.relationship_id for i in listing(client, DOCTOR, now, limit=2).cares] == [older, newer]
    assert not listing(client, DOCTOR, now, limit=2).more


def test_the_statements_do_not_grow_with_the_cares(client: TestClient) -> None:
    h = world(client)
    app: Any = client.app
    engine = app.state.engine
    put_all(client, *({"resourceType": "Patient", "id": f"p{n}"} for n in range(30)))
    start = utcnow() - timedelta(days=5)
    for n in range(30):
        registered(client, f"p{n}", SYSTEM, start, emergency=True)
        file(client, h["doctor"], report(f"r{n}", f"p{n}", "11502-2", section="HM"))
        file(client, h["doctor"], document(f"d{n}", f"p{n}", "34105-7"))

    def statements(limit: int) -> tuple[int, Worklist]:
        seen: list[str] = []

        def count(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
            seen.append(sql)

        event.listen(engine, "before_cursor_execute", count)
        try:
            found = listing(client, DOCTOR, utcnow(), limit=limit)
        finally:
            event.remove(engine, "before_cursor_execute", count)
        return len([q for q in seen if q.lstrip().upper().startswith("SELECT")]), found

    few, three = statements(3)
    many, thirty = statements(30)
    assert len(three.cares) == 3 and len(thirty.cares) == 30
    assert all(i.filed == {KeyDocument.LAB_RESULTS, KeyDocument.DISCHARGE_REPORT} for i in thirty.cares)
    assert few == many == 3  # the cares, their access-log records, the versions written


def test_how_each_key_document_is_recognised() -> None:
    assert key_document(report("r", "pa", "11502-2")) is KeyDocument.LAB_RESULTS
    assert key_document(report("r", "pa", "x", section="MB")) is KeyDocument.LAB_RESULTS
    assert key_document(report("r", "pa", "18748-4")) is KeyDocument.IMAGING_REPORT
    assert key_document(report("r", "pa", "x", section="CT")) is KeyDocument.IMAGING_REPORT
    assert key_document(report("r", "pa", "59258-4")) is KeyDocument.DISCHARGE_REPORT
    assert key_document(document("d", "pa", "18842-5")) is KeyDocument.DISCHARGE_REPORT
    assert key_document(document("d", "pa", "34133-9")) is KeyDocument.DISCHARGE_REPORT
    assert key_document(document("d", "pa", "60591-5")) is KeyDocument.PATIENT_SUMMARY
    assert key_document(document("d", "pa", "11502-2")) is KeyDocument.LAB_RESULTS
    composition = {
        "resourceType": "Composition",
        "status": "final",
        "type": document("d", "pa", "60591-5")["type"],
    }
    assert key_document(composition) is KeyDocument.PATIENT_SUMMARY
    # drafts, other documents and single observations are not key documents filed
    assert key_document(report("r", "pa", "11502-2", status="preliminary")) is None
    assert key_document(document("d", "pa", "18842-5", status="superseded")) is None
    assert key_document(document("d", "pa", "18842-5") | {"docStatus": "preliminary"}) is None
    assert key_document(composition | {"status": "preliminary"}) is None
    assert key_document(document("d", "pa", "11488-4")) is None  # a consult note
    assert key_document(lab_result("o", "pa")) is None
    assert (
        key_document(
            {
                "resourceType": "Observation",
                "status": "final",
                "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "imaging"}]}],
            }
        )
        is None
    )


def test_the_capability_statement_lists_end_care(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    (patient,) = [r for r in statement["rest"][0]["resource"] if r["type"] == "Patient"]
    (op,) = [o for o in patient["operation"] if o["name"] == "end-care"]
    assert op["definition"].endswith("/OperationDefinition/end-care")
    unknown = client.post("/fhir/Patient/nobody/$no-such-operation", json={"resourceType": "Parameters"})
    served = client.post("/fhir/Patient/nobody/$end-care", json={"resourceType": "Parameters"})
    assert diagnostics(served) != diagnostics(unknown)
