"""Minors in the portal: the professional admits a minor in their care to act alone; that minor,
signed in to their own account, objects to their parents' access and allows it again; the
professional who recorded the decision withdraws it, and so may the minor personally (never a
parent acting for them): either way the parents' rights come back."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape
from portal_http import post, sign_in
from portal_world import Person, World, enrol
from sqlalchemy import select

from sharedcare.access import consent, minors
from sharedcare.access.models import minor_autonomy, minor_objection
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.identity import accounts
from sharedcare.identity.matricule import MATRICULE_SYSTEM, generate
from sharedcare.portal.views import autonomy
from sharedcare.storage.engine import writer
from support import add_care, bearer

Browser = Callable[[], TestClient]
KID_PAGE = "/portal/pro/patients/kid"
ACT_ALONE = "Record that this minor acts alone"
OBJECT = "Object to my parents' access"
ALLOW = "Allow my parents' access again"
WITHDRAW = "Withdraw the decision"


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@pytest.fixture
def kid(world: World) -> Person:
    """Tom Muller, 15, in the GP's care; Jean Muller is his parent; Tom has his own account."""
    born = date(_now().year - 15, 6, 1)
    matricule = generate(born, 21)
    world.app.state.fhir.update(
        "Patient",
        "kid",
        {
            "resourceType": "Patient",
            "id": "kid",
            "identifier": [{"system": MATRICULE_SYSTEM, "value": matricule}],
            "name": [{"family": "Muller", "given": ["Tom"]}],
            "birthDate": born.isoformat(),
        },
    )
    now = _now()
    agency = Principal(PrincipalKind.SYSTEM, "test-seed", trusted=True)
    with writer(world.engine).begin() as conn:
        add_care(conn, "gp-kid", "kid", "gp", now)
        consent.appoint(
            conn, world.app.state.fhir, agency, "kid", world.representative.account_id, "parent", now
        )
    return enrol(
        world.engine,
        world.settings,
        PrincipalKind.PATIENT,
        matricule,
        display_name="Tom Muller",
        matricule=matricule,
        patient_id="kid",
    )


def _autonomous(world: World) -> None:
    gp = Principal(PrincipalKind.PROFESSIONAL, "gp-account", practitioner_id="gp", profession="med")
    with writer(world.engine).begin() as conn:
        minors.record_autonomy(conn, world.app.state.fhir, world.app.state.policy, gp, "kid", _now())


def _decided(world: World) -> bool:
    with world.engine.connect() as conn:
        return minors.autonomy_of(conn, "kid") is not None


def _objecting(world: World) -> bool:
    with world.engine.connect() as conn:
        return (
            conn.execute(minor_objection.select().where(minor_objection.c.removed_at.is_(None))).first()
            is not None
        )


def test_the_professional_in_care_records_that_a_minor_acts_alone(
    world: World, kid: Person, browser: Browser
) -> None:
    gp = browser()
    sign_in(gp, world.gp)
    page = gp.get(KID_PAGE)
    assert page.status_code == 200 and ACT_ALONE in page.text
    assert "Rights of a minor" not in gp.get("/portal/pro/patients/pa").text  # an adult
    refused = post(gp, f"{KID_PAGE}/autonomy", {}, KID_PAGE)  # the assessment not confirmed
    assert refused.status_code == 400 and "discernment" in refused.text
    stranger = browser()
    sign_in(stranger, world.stranger)
    assert stranger.get(KID_PAGE).status_code == 404
    denied = post(stranger, f"{KID_PAGE}/autonomy", {"understood": "yes"}, "/portal/pro")
    assert denied.status_code == 403 and "taking part in the care of this minor" in denied.text
    assert not _decided(world)
    done = post(gp, f"{KID_PAGE}/autonomy", {"understood": "yes"}, KID_PAGE)
    assert done.status_code == 303 and done.headers["location"] == KID_PAGE
    page = gp.get(KID_PAGE).text
    assert "This minor exercises their rights alone since" in page and "Dr Claire Hoffmann" in page
    assert ACT_ALONE not in page and _decided(world)


def test_the_minor_objects_to_the_parents_access_and_allows_it_again(
    world: World, kid: Person, browser: Browser
) -> None:
    tom = browser()
    sign_in(tom, kid)  # the minor activated and uses their own account
    assert "Your parents' access" not in tom.get("/portal/access").text  # not admitted yet
    early = post(tom, "/portal/access/parents/object", {}, "/portal/access")
    assert early.status_code == 403 and not _objecting(world)
    _autonomous(world)
    assert OBJECT in tom.get("/portal/access").text
    jean = browser()
    sign_in(jean, world.representative)
    assert "Tom" in jean.get("/portal/home").text  # his only record: chosen for him
    resp = post(tom, "/portal/access/parents/object", {}, "/portal/access")
    assert resp.status_code == 303 and _objecting(world)
    access = tom.get("/portal/access").text
    assert ALLOW in access and "Your parents no longer have access to your record." in access
    # the parent no longer has the record: no home, no access rights page, no log
    for page in ("/portal/home", "/portal/access", "/portal/log"):
        assert jean.get(page).headers.get("location") == "/portal/records", page
    assert "Tom" not in jean.get("/portal/records").text
    refused = post(jean, "/portal/records", {"record": "kid"}, "/portal/records")
    assert refused.headers["location"] == "/portal/records"
    resp = post(tom, "/portal/access/parents/allow", {}, "/portal/access")
    assert resp.status_code == 303 and not _objecting(world)
    assert "Tom" in jean.get("/portal/home").text
    log = tom.get("/portal/log?act=rights&who=all").text
    assert "Objection to the parents&#39; access" in log and "Parents&#39; access allowed again" in log


# -- the professional withdraws the decision -----------------------------------------------------------
def _objects(world: World) -> None:
    tom = Principal(PrincipalKind.PATIENT, "tom", patient_id="kid")
    with writer(world.engine).begin() as conn:
        minors.object_to_parents(conn, world.app.state.fhir, tom, "kid", _now())


def _parent_reads_kid(world: World) -> int:
    """The status of the parent's read of Tom's Patient through the API (the access decision)."""
    jean = Principal(PrincipalKind.REPRESENTATIVE, world.representative.account_id)
    api = TestClient(world.app)
    return api.get("/fhir/Patient/kid", headers=bearer(world.app, jean, "user/*.read")).status_code


def _decision_row(world: World) -> tuple[object, object]:
    with world.engine.connect() as conn:
        row = conn.execute(select(minor_autonomy.c.withdrawn_at, minor_autonomy.c.withdrawn_by)).one()
    return row.withdrawn_at, row.withdrawn_by


@pytest.fixture
def colleague(world: World, kid: Person) -> Person:
    """Dr Ines Kieffer, also in Tom's care: not the author of the decision."""
    with writer(world.engine).begin() as conn:
        add_care(conn, "stranger-kid", "kid", "stranger", _now())
    return world.stranger


def test_the_author_withdraws_the_decision_and_the_parents_exercise_the_rights_again(
    world: World, kid: Person, colleague: Person, browser: Browser
) -> None:
    _autonomous(world)
    _objects(world)
    assert _parent_reads_kid(world) in (403, 404)  # the minor's objection is in force
    gp = browser()
    sign_in(gp, world.gp)
    page = gp.get(KID_PAGE).text
    assert "Basis: law of 24 July 2014" in page and "Dr Claire Hoffmann" in page
    assert WITHDRAW in page and "the parents or the legal representative exercise this minor" in page
    # nothing changes without a reason, or without the confirmation
    no_reason = post(gp, f"{KID_PAGE}/autonomy/withdraw", {"understood": "yes", "reason": " "}, KID_PAGE)
    assert no_reason.status_code == 400 and "Give the reason for withdrawing the decision." in no_reason.text
    unconfirmed = post(gp, f"{KID_PAGE}/autonomy/withdraw", {"reason": "Reassessed"}, KID_PAGE)
    assert unconfirmed.status_code == 400 and "Confirm that the parents" in unconfirmed.text
    too_long = post(gp, f"{KID_PAGE}/autonomy/withdraw", {"understood": "yes", "reason": "x" * 501}, KID_PAGE)
    assert too_long.status_code == 400
    assert _decided(world) and _objecting(world) and _parent_reads_kid(world) in (403, 404)

    reason = "Discernment reassessed at today's consultation"
    done = post(gp, f"{KID_PAGE}/autonomy/withdraw", {"understood": "yes", "reason": reason}, KID_PAGE)
    assert done.status_code == 303 and done.headers["location"] == KID_PAGE
    page = gp.get(KID_PAGE).text
    assert "The decision is withdrawn: the parents exercise the minor&#39;s rights again." in page
    assert WITHDRAW not in page and ACT_ALONE in page  # a new decision may be recorded
    assert not _decided(world) and not _objecting(world)
    withdrawn_at, by = _decision_row(world)
    assert withdrawn_at is not None and by == "professional"
    # the parents read again, by the access decision, and the portal shows them the record
    assert _parent_reads_kid(world) == 200
    jean = browser()
    sign_in(jean, world.representative)
    assert "Tom" in jean.get("/portal/home").text
    assert (
        "The parents or the legal representative exercise the rights of this minor"
        in jean.get("/portal/access").text
    )
    # the minor no longer acts alone: no objection possible, and their page says who acts
    tom = browser()
    sign_in(tom, kid)
    access = tom.get("/portal/access").text
    assert OBJECT not in access and "Your parents or your legal representative exercise your rights" in access
    assert post(tom, "/portal/access/parents/object", {}, "/portal/access").status_code == 403
    assert not _objecting(world) and _parent_reads_kid(world) == 200
    # kept: the Consent is inactive with the reason; the access log says what happened
    with world.engine.connect() as conn:
        consent_id = conn.execute(select(minor_autonomy.c.consent_id)).scalar_one()
    stored = world.app.state.fhir.read("Consent", consent_id).resource()
    assert stored["status"] == "inactive"
    assert {"url": minors.WITHDRAWAL_REASON, "valueString": reason} in stored["extension"]
    log = tom.get("/portal/log?act=rights&who=all").text
    assert "No longer admitted to exercise your rights alone" in log
    # already withdrawn: refused with the reason, nothing changes
    again = post(gp, f"{KID_PAGE}/autonomy/withdraw", {"understood": "yes", "reason": "again"}, KID_PAGE)
    assert again.status_code == 403 and "This minor does not exercise their rights alone" in again.text
    assert _decision_row(world) == (withdrawn_at, by)


def test_another_professional_sees_the_decision_but_cannot_withdraw_it(
    world: World, kid: Person, colleague: Person, browser: Browser
) -> None:
    _autonomous(world)
    _objects(world)
    other = browser()
    sign_in(other, colleague)
    page = other.get(KID_PAGE)
    assert page.status_code == 200
    assert "This minor exercises their rights alone since" in page.text and "Dr Claire Hoffmann" in page.text
    assert "Basis: law of 24 July 2014" in page.text and WITHDRAW not in page.text
    refused = post(other, f"{KID_PAGE}/autonomy/withdraw", {"understood": "yes", "reason": "No"}, KID_PAGE)
    assert refused.status_code == 403 and "Only the professional who recorded this decision" in refused.text
    assert _decided(world) and _objecting(world) and _decision_row(world) == (None, None)
    assert _parent_reads_kid(world) in (403, 404)
    # the parent, while the minor acts alone without objecting, is told so
    tom = Principal(PrincipalKind.PATIENT, "tom", patient_id="kid")
    with writer(world.engine).begin() as conn:
        minors.allow_parents(conn, world.app.state.fhir, tom, "kid", _now())
    jean = browser()
    sign_in(jean, world.representative)
    assert "This minor exercises their rights alone since" in jean.get("/portal/access").text


def test_no_withdrawal_once_the_patient_is_no_longer_a_minor(
    world: World, kid: Person, browser: Browser
) -> None:
    _autonomous(world)
    patient = world.app.state.fhir.read("Patient", "kid").resource()
    patient["birthDate"] = date(_now().year - 19, 1, 1).isoformat()  # the record's birth date corrected
    world.app.state.fhir.update("Patient", "kid", patient)
    gp = browser()
    sign_in(gp, world.gp)
    assert "Rights of a minor" not in gp.get(KID_PAGE).text
    refused = post(gp, f"{KID_PAGE}/autonomy/withdraw", {"understood": "yes", "reason": "Grown"}, KID_PAGE)
    assert refused.status_code == 403 and "no longer a minor" in refused.text
    assert _decision_row(world) == (None, None)


@pytest.mark.parametrize(
    ("lang", "button", "basis", "missing", "parents"),
    [
        (
            "fr",
            "Retirer la décision",
            "Base : loi du 24 juillet 2014",
            "Indiquez le motif du retrait de la décision.",
            "Les parents ou le représentant légal exercent les droits de ce mineur",
        ),
        (
            "de",
            "Entscheidung widerrufen",
            "Grundlage: Gesetz vom 24. Juli 2014",
            "Geben Sie die Begründung für den Widerruf der Entscheidung an.",
            "Die Eltern oder der gesetzliche Vertreter üben die Rechte dieses Minderjährigen",
        ),
    ],
)
def test_the_withdrawal_is_in_french_and_german(
    world: World,
    kid: Person,
    browser: Browser,
    lang: str,
    button: str,
    basis: str,
    missing: str,
    parents: str,
) -> None:
    _autonomous(world)
    with accounts.transaction(world.engine) as conn:
        accounts.set_language(conn, world.gp.account_id, lang)
        accounts.set_language(conn, world.representative.account_id, lang)
    gp = browser()
    sign_in(gp, world.gp)
    page = gp.get(KID_PAGE).text
    assert button in page and basis in page
    refused = post(gp, f"{KID_PAGE}/autonomy/withdraw", {"understood": "yes"}, KID_PAGE)
    assert refused.status_code == 400 and missing in refused.text
    post(gp, f"{KID_PAGE}/autonomy/withdraw", {"understood": "yes", "reason": "Réévalué"}, KID_PAGE)
    assert not _decided(world)
    jean = browser()
    sign_in(jean, world.representative)
    assert parents in jean.get("/portal/access").text


def test_a_refused_withdrawal_tells_nothing_about_the_patient(
    world: World, kid: Person, colleague: Person, browser: Browser
) -> None:
    """A professional out of the minor's care and one in it, not the author, are refused alike
    whether the patient is a minor acting alone, a minor who does not, or an adult."""
    with writer(world.engine).begin() as conn:
        add_care(conn, "stranger-pa", "pa", "stranger", _now())
    outsider = browser()
    sign_in(outsider, world.pharmacist)  # in nobody's care
    other = browser()
    sign_in(other, colleague)  # in Tom's and Marie's care

    def refusals() -> list[tuple[int, list[str]]]:
        """Each refusal's status and the messages of ``access.minors`` it shows."""
        seen = []
        for client in (outsider, other):
            for patient in ("kid", "pa"):
                resp = post(
                    client,
                    f"/portal/pro/patients/{patient}/autonomy/withdraw",
                    {"understood": "yes", "reason": "Reassessed"},
                    "/portal/pro",
                )
                shown = [m for m in autonomy.MINOR_MESSAGES if escape(m) in resp.text]
                seen.append((resp.status_code, shown))
        return seen

    refused = [(403, [minors.WITHDRAWAL_REFUSED])] * 4
    with world.engine.connect() as conn:
        assert conn.execute(select(minor_autonomy)).first() is None
    assert refusals() == refused  # Tom does not act alone yet
    with world.engine.connect() as conn:
        assert conn.execute(select(minor_autonomy)).first() is None
    _autonomous(world)
    _objects(world)
    assert refusals() == refused  # now he does
    assert _decided(world) and _objecting(world) and _decision_row(world) == (None, None)
    assert _parent_reads_kid(world) in (403, 404)


# -- the minor gives up acting alone -----------------------------------------------------------------
GIVE_UP = "Stop exercising my rights alone"
OWN_WITHDRAW = "/portal/access/autonomy/withdraw"


def _log_rows(html: str, label: str) -> list[str]:
    """The rows of an access log page that show ``label``."""
    return [row for row in html.split("<tr")[1:] if escape(label) in row]


def _own_refusal(client: TestClient) -> tuple[int, list[str]]:
    """The status of a confirmed withdrawal posted from the access-rights page, and every message
    of the minor's pages the answer shows."""
    resp = post(client, OWN_WITHDRAW, {"understood": "yes", "reason": "No"}, "/portal/access")
    messages = (*autonomy.MINOR_MESSAGES, autonomy.OWN_WITHDRAWAL_REFUSED)
    return resp.status_code, [m for m in messages if escape(m) in resp.text]


UNIFORM_REFUSAL = (403, [autonomy.OWN_WITHDRAWAL_REFUSED])


def test_the_minor_gives_up_acting_alone_and_the_parents_exercise_the_rights_again(
    world: World, kid: Person, browser: Browser
) -> None:
    _autonomous(world)
    _objects(world)
    assert _parent_reads_kid(world) in (403, 404)
    tom = browser()
    sign_in(tom, kid)
    page = tom.get("/portal/access").text
    assert GIVE_UP in page and "your parents or your legal representative exercise your rights" in page
    assert 'name="understood" value="yes" required' in page and f'action="{OWN_WITHDRAW}"' in page
    # nothing changes without the confirmation, or with too long a reason
    unconfirmed = post(tom, OWN_WITHDRAW, {"reason": "I prefer my parents to handle it"}, "/portal/access")
    assert unconfirmed.status_code == 400
    assert "Confirm that your parents exercise your rights again." in unconfirmed.text
    too_long = post(tom, OWN_WITHDRAW, {"understood": "yes", "reason": "x" * 501}, "/portal/access")
    assert too_long.status_code == 400 and "The reason is too long" in too_long.text
    assert _decided(world) and _objecting(world) and _decision_row(world) == (None, None)
    assert _parent_reads_kid(world) in (403, 404)

    reason = "I prefer my parents to handle it"
    done = post(tom, OWN_WITHDRAW, {"understood": "yes", "reason": reason}, "/portal/access")
    assert done.status_code == 303 and done.headers["location"] == "/portal/access"
    page = tom.get("/portal/access").text
    assert "You no longer exercise your rights alone: your parents exercise them again." in page
    assert "Your parents or your legal representative exercise your rights over this record" in page
    assert GIVE_UP not in page and OBJECT not in page
    assert not _decided(world) and not _objecting(world)
    withdrawn_at, by = _decision_row(world)
    assert withdrawn_at is not None and by == "minor"
    with world.engine.connect() as conn:
        consent_id = conn.execute(select(minor_autonomy.c.consent_id)).scalar_one()
    stored = world.app.state.fhir.read("Consent", consent_id).resource()
    assert stored["status"] == "inactive"
    assert {"url": minors.WITHDRAWAL_REASON, "valueString": reason} in stored["extension"]
    # the parent reads the record again, by the access decision and in the portal
    assert _parent_reads_kid(world) == 200
    jean = browser()
    sign_in(jean, world.representative)
    assert "Tom" in jean.get("/portal/home").text
    assert (
        "The parents or the legal representative exercise the rights of this minor"
        in jean.get("/portal/access").text
    )
    # the access log shows who gave the decision up: "You" to the minor, the minor to the parent
    label = "No longer admitted to exercise your rights alone"
    mine = _log_rows(tom.get("/portal/log?act=rights&who=all").text, label)
    assert len(mine) == 1 and "<strong>You</strong>" in mine[0]
    theirs = _log_rows(jean.get("/portal/log?act=rights&who=all").text, label)
    assert len(theirs) == 1 and "<strong>Tom Muller</strong>" in theirs[0]
    # sent again (a second tab): the uniform refusal, nothing changes
    assert _own_refusal(tom) == UNIFORM_REFUSAL
    assert _decision_row(world) == (withdrawn_at, by)


def test_the_reason_is_optional_for_the_minor(world: World, kid: Person, browser: Browser) -> None:
    _autonomous(world)
    tom = browser()
    sign_in(tom, kid)
    done = post(tom, OWN_WITHDRAW, {"understood": "yes", "reason": "  "}, "/portal/access")
    assert done.status_code == 303 and not _decided(world)
    with world.engine.connect() as conn:
        consent_id = conn.execute(select(minor_autonomy.c.consent_id)).scalar_one()
    stored = world.app.state.fhir.read("Consent", consent_id).resource()
    assert stored["status"] == "inactive" and minors.WITHDRAWAL_REASON not in str(stored.get("extension"))


def test_a_parent_cannot_give_up_the_minors_decision(world: World, kid: Person, browser: Browser) -> None:
    """The parent acting for the minor sees no form and is refused, as for a minor who does not
    act alone: the refusal tells them nothing more."""
    jean = browser()
    sign_in(jean, world.representative)
    assert "Tom" in jean.get("/portal/home").text  # his only record: chosen for him
    before = _own_refusal(jean)  # Tom does not act alone yet
    _autonomous(world)  # now he does, without objecting: the parent still acts for him
    page = jean.get("/portal/access").text
    assert "This minor exercises their rights alone since" in page and GIVE_UP not in page
    assert _own_refusal(jean) == before == UNIFORM_REFUSAL
    assert _decided(world) and _decision_row(world) == (None, None)
    # unconfirmed: the form's own error, which does not depend on the record
    unconfirmed = post(jean, OWN_WITHDRAW, {}, "/portal/access")
    assert unconfirmed.status_code == 400 and _decision_row(world) == (None, None)


def test_a_holder_who_does_not_act_alone_gets_the_uniform_refusal(
    world: World, kid: Person, browser: Browser
) -> None:
    """A minor not admitted to act alone, and an adult holder, are refused in the same words as a
    parent: no state message of ``access.minors``."""
    tom = browser()
    sign_in(tom, kid)
    assert GIVE_UP not in tom.get("/portal/access").text
    assert _own_refusal(tom) == UNIFORM_REFUSAL
    marie = browser()
    sign_in(marie, world.patient)  # an adult
    assert GIVE_UP not in marie.get("/portal/access").text
    assert _own_refusal(marie) == UNIFORM_REFUSAL
    with world.engine.connect() as conn:
        assert conn.execute(select(minor_autonomy)).first() is None


@pytest.mark.parametrize(
    ("lang", "give_up", "unconfirmed", "refused"),
    [
        (
            "fr",
            "Ne plus exercer seul mes droits",
            "Confirmez que vos parents exercent de nouveau vos droits.",
            "Seul un mineur qu&#39;un professionnel a admis à exercer seul ses droits peut renoncer",
        ),
        (
            "de",
            "Meine Rechte nicht mehr selbst ausüben",
            "Bestätigen Sie, dass Ihre Eltern Ihre Rechte wieder ausüben.",
            "kann auf diese Entscheidung verzichten, und nur persönlich",
        ),
    ],
)
def test_the_minors_withdrawal_is_in_french_and_german(
    world: World, kid: Person, browser: Browser, lang: str, give_up: str, unconfirmed: str, refused: str
) -> None:
    _autonomous(world)
    with accounts.transaction(world.engine) as conn:
        accounts.set_language(conn, kid.account_id, lang)
        accounts.set_language(conn, world.representative.account_id, lang)
    tom = browser()
    sign_in(tom, kid)
    assert give_up in tom.get("/portal/access").text
    resp = post(tom, OWN_WITHDRAW, {}, "/portal/access")
    assert resp.status_code == 400 and unconfirmed in resp.text
    jean = browser()
    sign_in(jean, world.representative)
    resp = post(jean, OWN_WITHDRAW, {"understood": "yes"}, "/portal/access")
    assert resp.status_code == 403 and refused in resp.text and _decided(world)
