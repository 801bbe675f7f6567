"""The holder's personal expression area (art. 6(2)): notes, advance directives and the
organ-donation wish, written by the holder or a representative, read by professionals in care
through their access decision only. A refused request changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from portal_http import post, sign_in, token
from portal_world import World
from sqlalchemy import func, select

from sharedcare.access import consent
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit import log as audit
from sharedcare.storage.engine import writer
from sharedcare.storage.tables import resource as resources

Browser = Callable[[], TestClient]
PAGE = "/portal/personal"
LOINC = "http://loinc.org"


def count(world: World, rtype: str) -> int:
    with world.engine.connect() as conn:
        query = select(func.count()).select_from(resources).where(resources.c.type == rtype)
        return int(conn.execute(query).scalar_one())


def stored(world: World, rtype: str) -> list[dict[str, Any]]:
    svc = world.app.state.fhir
    query = svc.parse_search(rtype, [("patient", "Patient/pa"), ("_count", "100")], strict=True)
    return [m.resource() for m in svc.search(query).matches]


def wishes(world: World) -> list[dict[str, Any]]:
    """The organ-donation Consents (not the holder's other choices, such as delegations)."""
    return [c for c in stored(world, "Consent") if c["category"][0]["coding"][0].get("code") == "64300-7"]


def by_type(world: World, code: str) -> list[dict[str, Any]]:
    return [d for d in stored(world, "DocumentReference") if d["type"]["coding"][0]["code"] == code]


@pytest.fixture
def holder(world: World, browser: Browser) -> TestClient:
    client = browser()
    sign_in(client, world.patient)
    return client


def write(client: TestClient, fields: dict[str, str], files: dict[str, Any] | None = None) -> Any:
    data = {"csrf": token(client, PAGE), **fields}
    return client.post("/portal/personal/writings", data=data, files=files)


def test_note_written_changed_and_withdrawn(world: World, holder: TestClient, browser: Browser) -> None:
    assert "Nothing is written yet." in holder.get(PAGE).text
    resp = write(holder, {"kind": "note", "title": "About my care", "text": "I am afraid of needles."})
    assert resp.status_code == 303 and resp.headers["location"] == PAGE
    [note] = by_type(world, "personal-document")
    assert note["author"] == [{"reference": "Patient/pa"}] and note["status"] == "current"
    assert note["content"][0]["attachment"]["contentType"].startswith("text/plain")
    page = holder.get(PAGE).text
    assert "About my care" in page and "I am afraid of needles." in page

    changed = post(
        holder,
        f"/portal/personal/writings/{note['id']}",
        {"title": "About my care", "text": "Please warn me before injections."},
        PAGE,
    )
    assert changed.status_code == 303
    notes = by_type(world, "personal-document")
    current = [d for d in notes if d["status"] == "current"]
    assert len(notes) == 2 and len(current) == 1 and current[0]["relatesTo"][0]["code"] == "replaces"
    page = holder.get(PAGE).text
    assert "Please warn me before injections." in page and "afraid of needles" not in page

    withdrawn = post(holder, f"/portal/personal/writings/{current[0]['id']}/withdraw", {}, PAGE)
    assert withdrawn.status_code == 303
    assert all(d["status"] == "superseded" for d in by_type(world, "personal-document"))
    assert "Nothing is written yet." in holder.get(PAGE).text


def test_advance_directive_with_its_signed_document(world: World, holder: TestClient) -> None:
    pdf = b"%PDF-1.7\n% my signed directive\n%%EOF\n"
    fields = {"kind": "directive", "title": "My directives", "text": "No resuscitation."}
    resp = write(holder, fields, {"file": ("directive.pdf", pdf, "application/pdf")})
    assert resp.status_code == 303
    directives = by_type(world, "42348-3")
    assert len(directives) == 2 and all(d["type"]["coding"][0]["system"] == LOINC for d in directives)
    assert {d["content"][0]["attachment"]["contentType"].split(";")[0] for d in directives} == {
        "text/plain",
        "application/pdf",
    }
    page = holder.get(PAGE).text
    assert "No resuscitation." in page and "No advance directive is recorded." not in page


def test_organ_donation_wish_recorded_changed_and_withdrawn(world: World, holder: TestClient) -> None:
    assert "No wish on organ donation is recorded." in holder.get(PAGE).text
    assert post(holder, "/portal/personal/organ-donation", {"choice": "no"}, PAGE).status_code == 303
    [wish] = wishes(world)
    assert wish["scope"]["coding"][0]["code"] == "adr"
    assert wish["category"][0]["coding"][0] == {
        "system": LOINC,
        "code": "64300-7",
        "display": "Organ donation consent",
    }
    assert wish["provision"] == {"type": "deny"} and wish["status"] == "active"
    assert "I refuse to donate" in holder.get(PAGE).text

    some = {"choice": "some", "organs": "kidneys, corneas"}
    assert post(holder, "/portal/personal/organ-donation", some, PAGE).status_code == 303
    [wish] = wishes(world)  # the same Consent, a new version
    assert wish["meta"]["versionId"] == "2"
    assert wish["provision"] == {
        "type": "deny",
        "provision": [{"type": "permit", "code": [{"text": "kidneys, corneas"}]}],
    }
    assert "only these organs and tissues: kidneys, corneas" in holder.get(PAGE).text

    assert post(holder, "/portal/personal/organ-donation/withdraw", {}, PAGE).status_code == 303
    [wish] = wishes(world)
    assert wish["status"] == "inactive"
    assert "No wish on organ donation is recorded." in holder.get(PAGE).text


def test_bad_input_is_explained_and_changes_nothing(world: World, holder: TestClient) -> None:
    before = (count(world, "DocumentReference"), count(world, "Consent"))
    assert post(holder, "/portal/personal/organ-donation", {"choice": "maybe"}, PAGE).status_code == 400
    resp = post(holder, "/portal/personal/organ-donation", {"choice": "some", "organs": " "}, PAGE)
    assert resp.status_code == 400 and "Name the organs" in resp.text
    assert write(holder, {"kind": "note", "title": "", "text": "x"}).status_code == 400
    assert write(holder, {"kind": "lab-report", "title": "T", "text": "x"}).status_code == 400
    assert write(holder, {"kind": "note", "title": "T", "text": "  "}).status_code == 400
    exe = {"file": ("x.pdf", b"MZ\x90\x00", "application/pdf")}
    assert write(holder, {"kind": "directive", "title": "T", "text": "t"}, exe).status_code == 400
    assert (count(world, "DocumentReference"), count(world, "Consent")) == before


def test_refused_without_csrf_token(world: World, holder: TestClient) -> None:
    holder.get(PAGE)
    for url, data in (
        ("/portal/personal/organ-donation", {"choice": "yes"}),
        ("/portal/personal/writings", {"kind": "note", "title": "T", "text": "t"}),
    ):
        assert holder.post(url, data=data).status_code == 403
    assert wishes(world) == [] and by_type(world, "personal-document") == []


def test_a_professionals_document_cannot_be_changed_here(world: World, holder: TestClient) -> None:
    from test_document_actions import filed

    document_id = filed(world, "Practitioner/gp")
    resp = post(holder, f"/portal/personal/writings/{document_id}/withdraw", {}, PAGE)
    assert resp.status_code == 403
    assert world.app.state.fhir.read("DocumentReference", document_id).resource()["status"] == "current"


def test_gp_in_care_sees_it_a_stranger_does_not(world: World, holder: TestClient, browser: Browser) -> None:
    write(holder, {"kind": "note", "title": "For my doctors", "text": "I live alone."})
    post(holder, "/portal/personal/organ-donation", {"choice": "yes"}, PAGE)
    gp = browser()
    sign_in(gp, world.gp)
    assert "/portal/pro/patients/pa/personal" in gp.get("/portal/pro/patients/pa").text
    page = gp.get("/portal/pro/patients/pa/personal")
    assert page.status_code == 200
    assert "I live alone." in page.text and "I agree to donate my organs" in page.text
    assert "/portal/personal/writings" not in page.text  # read only
    with world.engine.connect() as conn:
        reads = audit.query(conn, patient_id="pa", principal_subject=world.gp.account_id)
    assert reads, "the professional's reads are audited"

    stranger = browser()
    sign_in(stranger, world.stranger)
    hidden = stranger.get("/portal/pro/patients/pa/personal")
    assert hidden.status_code == 404 and "I live alone." not in hidden.text
    assert (
        gp.post(
            "/portal/personal/organ-donation", data={"csrf": token(gp, "/portal/pro"), "choice": "no"}
        ).status_code
        == 403
    )
    [wish] = wishes(world)
    assert wish["provision"]["type"] == "permit"


def test_a_representative_acts_for_the_holder(world: World, browser: Browser) -> None:
    with writer(world.engine).begin() as conn:
        holder = Principal(PrincipalKind.PATIENT, world.patient.account_id, patient_id="pa")
        now = datetime.now(UTC).replace(tzinfo=None)  # naive UTC, as access.consent expects
        consent.appoint(
            conn,
            world.app.state.fhir,
            holder,
            "pa",
            world.representative.account_id,
            "assistant",
            now,
            ends=now + timedelta(days=30),
            legal_basis="Mandate signed by the holder",
        )
    rep = browser()
    sign_in(rep, world.representative)
    assert post(rep, "/portal/personal/organ-donation", {"choice": "yes"}, PAGE).status_code == 303
    assert (
        write(rep, {"kind": "directive", "title": "Wishes", "text": "Palliative care at home."}).status_code
        == 303
    )
    [wish] = wishes(world)
    assert wish["patient"] == {"reference": "Patient/pa"} and wish["provision"]["type"] == "permit"
    [directive] = by_type(world, "42348-3")
    assert directive["author"] == [{"reference": "Patient/pa"}]
    page = rep.get(PAGE).text
    assert "Palliative care at home." in page and "Withdraw" in page


@pytest.mark.parametrize(
    ("lang", "words"),
    [
        ("fr", ("Mon espace personnel", "Directives anticipées et dispositions de fin de vie")),
        ("de", ("Mein persönlicher Bereich", "Organspende")),
    ],
)
def test_the_page_in_french_and_german(holder: TestClient, lang: str, words: tuple[str, ...]) -> None:
    post(holder, "/portal/language", {"lang": lang, "next": PAGE}, "/portal/home")
    page = holder.get(PAGE).text
    assert f'<html lang="{lang}">' in page
    for word in words:
        assert word in page


def test_the_holder_chooses_the_type_of_an_uploaded_document(world: World, holder: TestClient) -> None:
    before = count(world, "DocumentReference")
    form = holder.get("/portal/documents/upload/new").text
    assert "Organ donation wishes" in form and "Personal note" in form
    pdf = b"%PDF-1.7\n% card\n%%EOF\n"
    resp = holder.post(
        "/portal/documents/upload/new",
        data={"csrf": token(holder, "/portal/documents/upload/new"), "title": "Donor card", "kind": "organ"},
        files={"file": ("card.pdf", pdf, "application/pdf")},
    )
    assert resp.status_code == 303
    [card] = by_type(world, "64300-7")
    assert card["type"]["coding"][0]["system"] == LOINC
    assert "Donor card" in holder.get(PAGE).text  # listed under organ donation
    bad = holder.post(
        "/portal/documents/upload/new",
        data={"csrf": token(holder, "/portal/documents/upload/new"), "title": "X", "kind": "lab"},
        files={"file": ("card.pdf", pdf, "application/pdf")},
    )
    assert bad.status_code == 400 and count(world, "DocumentReference") == before + 1


def test_retention_agreement_recorded_dated_and_withdrawn(world: World, holder: TestClient) -> None:
    from sharedcare.access import lifecycle

    page = holder.get(PAGE).text
    assert "No agreement: your record is deleted at the end of the usual period." in page
    before = count(world, "Consent")
    for years in ("0", "11", "many"):
        refused = post(holder, "/portal/personal/retention", {"years": years}, PAGE)
        assert refused.status_code == 400 and "Choose between 1 and 10 extra years." in refused.text
    assert count(world, "Consent") == before
    assert post(holder, "/portal/personal/retention", {"years": "3"}, PAGE).status_code == 303
    agreement = lifecycle.retention_agreement(world.app.state.fhir, "pa")
    assert agreement is not None and agreement.years == 3
    page = holder.get(PAGE).text
    assert "You agreed that your record is kept 3 more years." in page
    assert "(agreed on " in page  # dated
    assert post(holder, "/portal/personal/retention/withdraw", {}, PAGE).status_code == 303
    assert lifecycle.retention_agreement(world.app.state.fhir, "pa") is None
    assert "No agreement" in holder.get(PAGE).text
    with world.engine.connect() as conn:
        changes = audit.query(conn, patient_id="pa", actions=[audit.AuditAction.CONSENT_CHANGE])
    assert {"retention-extension 3 years", "withdraw-retention-extension"} <= {
        e.record.interaction for e in changes
    }
