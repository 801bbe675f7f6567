"""The access matrix as a full grid, through the FHIR HTTP API (issue 3, LAW-AND-CROSSBORDER.md §A.5).

Every profession column of the matrix file, as an account's token carries it, in every care
context (a code handed over in solo practice, a facility registration, an emergency registration,
the holder's permanent grant, and for physicians the referring physician's designation), and each
profession the file lists, by its own code, in one of those contexts (``grid_world.PROFESSION_COMBOS``):
one record holding an item of every data category is searched, included from, read by id and
written to (transaction and batch Bundles) with real tokens, and opened in the portal (the
professional's record page and each document's page) by an enrolled account of the same
professional, signed in with password and TOTP. What each may do is read from the
matrix data file (``grid_world``), never from ``access.policy``: a disagreement fails naming the
profession, the context and the category. Professionals without a relationship, with a withdrawn
licence, or blocked by the holder see and write nothing.

The world is built once per module and database; each combo has its own second record for
writes, so a write test never changes what the read tests see.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
import pytest
from fastapi.testclient import TestClient
from grid_world import (
    COLUMNS,
    COMBOS,
    EMERGENCY,
    FACILITY,
    KEYS,
    LISTED,
    OUTSIDER_CASES,
    OUTSIDERS,
    PATIENT,
    PROFESSION_COMBOS,
    PROFESSIONS,
    REFERENT,
    SEARCH_TYPES,
    WRITE_CATEGORIES,
    Combo,
    Outsider,
    entry_for,
    readable,
    record_items,
    referent_column,
    search_url,
    writable,
)
from sqlalchemy import Engine, func, select

from sharedcare.access import care, consent
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.app import create_app
from sharedcare.audit import log as audit
from sharedcare.fhir.store import utcnow
from sharedcare.identity import accounts
from sharedcare.portal import records
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer
from sharedcare.storage.tables import resource, resource_compartment
from support import (
    DEMO_SECRET,
    add_care,
    cheap_passwords,
    ensure_demo,
    mint_token,
    professional,
    put_all,
    system_token,
    truncate,
)

SCOPE = "user/*.cruds"
GRID: tuple[Combo, ...] = (*COMBOS, *PROFESSION_COMBOS)
MISSING = "grid-no-such-item"


@dataclass
class Grid:
    client: TestClient
    """Signed in as the agency's trusted client (builds and counts; never the one tested)."""
    engine: Engine
    headers: dict[str, dict[str, str]]
    """Practitioner id → ``Authorization`` header of a real token of that professional."""

    def as_(self, practitioner: str) -> dict[str, str]:
        return self.headers[practitioner]


def _principal(who: Combo | Outsider, profession: str) -> Principal:
    return professional(who.practitioner, profession, who.organization)


def _holder(patient: str) -> Principal:
    return Principal(PrincipalKind.PATIENT, f"acct-{patient}", patient_id=patient)


def _relate(conn: Any, app: Any, settings: Settings, context: str, p: Principal, patient: str) -> None:
    """The relationship of ``context`` by the platform's own steps (the referring physician's
    designation, data the CNS sends, has none: it is inserted as the import would)."""
    now = utcnow()
    if context == "solo":
        code = care.issue_connection_code(conn, settings, patient, now)
        care.open_with_code(conn, settings, p, code, now)
    elif context == "permanent":
        assert p.practitioner_id
        consent.grant_permanent(conn, app.state.fhir, _holder(patient), patient, p.practitioner_id, now)
    elif context == REFERENT:
        add_care(conn, uuid.uuid4().hex, patient, p.practitioner_id, now, context=REFERENT, ends=None)
    else:
        raise AssertionError(context)


def _register(conn: Any, settings: Settings, organization: str, patient: str, *, emergency: bool) -> None:
    system = Principal(PrincipalKind.SYSTEM, f"{organization}-his", organization_id=organization)
    care.register(conn, settings, system, patient, emergency=emergency, now=utcnow())


def _relationships(
    conn: Any, app: Any, settings: Settings, people: list[tuple[Combo | Outsider, Principal]]
) -> None:
    """Each combo in its context with the read record and its own record for writes; the
    outsiders in every context but the stranger in none (the facility they act for registered
    both records, at its entrance and at its emergency department)."""
    for org, emergency in ((FACILITY, False), (EMERGENCY, True), (OUTSIDERS, False), (OUTSIDERS, True)):
        _register(conn, settings, org, PATIENT, emergency=emergency)
    for who, p in people:
        if isinstance(who, Combo):
            if who.organization:  # the facility registered the read record already
                _register(
                    conn, settings, who.organization, who.write_patient, emergency=who.context == "emergency"
                )
            else:
                for patient in (PATIENT, who.write_patient):
                    _relate(conn, app, settings, who.context, p, patient)
            continue
        if who.kind == "stranger":
            continue
        for emergency in (False, True):
            _register(conn, settings, OUTSIDERS, who.write_patient, emergency=emergency)
        for patient in (PATIENT, who.write_patient):
            for context in ("solo", "permanent", REFERENT):
                if context != REFERENT or referent_column(who.column):
                    _relate(conn, app, settings, context, p, patient)
            if who.kind == "blocked":
                consent.block(conn, app.state.fhir, _holder(patient), patient, who.practitioner, utcnow())


@pytest.fixture(scope="module")
def grid(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    """The world, once per database: directory, records, relationships, then the withdrawn
    licences (after the relationships they end), and a token for every professional."""
    settings = Settings(
        database_url=db_url,
        data_dir=tmp_path_factory.mktemp("grid"),
        demo_data=False,
        demo_client_secret=DEMO_SECRET,
    )
    app: Any = create_app(settings)
    truncate(app.state.engine)
    ensure_demo(app.state.engine, settings)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {system_token(client)}"
        people: list[tuple[Combo | Outsider, Principal]] = [
            *((c, _principal(c, c.profession)) for c in GRID),
            *((o, _principal(o, o.column)) for o in OUTSIDER_CASES),
        ]
        directory = [
            *(
                {"resourceType": "Organization", "id": org, "active": True, "name": org}
                for org in (FACILITY, EMERGENCY, OUTSIDERS)
            ),
            *({"resourceType": "Practitioner", "id": w.practitioner, "active": True} for w, _ in people),
            *({"resourceType": "Patient", "id": w.write_patient, "gender": "male"} for w, _ in people),
        ]
        put_all(client, *directory, *record_items())
        with writer(app.state.engine).begin() as conn:
            _relationships(conn, app, settings, people)
        withdrawn = [w for w, _ in people if isinstance(w, Outsider) and w.kind == "delicensed"]
        put_all(
            client,
            *({"resourceType": "Practitioner", "id": w.practitioner, "active": False} for w in withdrawn),
        )
        _check_categories(app.state.engine)
        headers = {
            who.practitioner: {"Authorization": f"Bearer {mint_token(app, p, SCOPE, lifetime=3600)}"}
            for who, p in people
        }
        yield Grid(client, app.state.engine, headers)
    app.state.engine.dispose()


def _check_categories(engine: Engine) -> None:
    """The store put each item in the category it stands for (else the grid would test nothing)."""
    with engine.connect() as conn:
        stored = {
            f"{r.type}/{r.id}": r.category
            for r in conn.execute(select(resource.c.type, resource.c.id, resource.c.category))
        }
    assert {cat: stored.get(key) for cat, key in KEYS.items()} == {cat: cat for cat in KEYS}


# --- helpers -----------------------------------------------------------------------------------------------


def _keys(body: dict[str, Any], mode: str) -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in body.get("entry", [])
        if e.get("search", {}).get("mode", "match") == mode
    }


def _search(grid: Grid, url: str, headers: dict[str, str]) -> dict[str, Any]:
    resp = grid.client.get(url, headers=headers)
    assert resp.status_code == 200, f"{url}: {resp.text}"
    body: dict[str, Any] = resp.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    return body


def _by_key() -> dict[str, str]:
    return {key: cat for cat, key in KEYS.items()}


def _differences(who: str, want: set[str], got: set[str], what: str) -> list[str]:
    """Each item whose presence disagrees with the matrix, named by its category."""
    category = _by_key()
    lines = [
        f"{who}: {category.get(k, k)} ({k}) readable by the matrix, missing from {what}"
        for k in sorted(want - got)
    ]
    lines += [
        f"{who}: {category.get(k, k)} ({k}) not readable by the matrix, shown by {what}"
        for k in sorted(got - want)
    ]
    return lines


def _count(grid: Grid, patient: str) -> tuple[int, int]:
    """Every stored resource, and those in ``patient``'s record."""
    with grid.engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(resource)).scalar_one()
        mine = conn.execute(
            select(func.count())
            .select_from(resource_compartment)
            .where(resource_compartment.c.patient_id == patient)
        ).scalar_one()
    return total, mine


def _categories_of(grid: Grid, locations: list[str]) -> list[str | None]:
    """The stored category of each created ``Type/id/_history/n``."""
    out: list[str | None] = []
    with grid.engine.connect() as conn:
        for location in locations:
            rtype, rid = location.split("/")[-4:-2]
            out.append(
                conn.execute(
                    select(resource.c.category).where(resource.c.type == rtype, resource.c.id == rid)
                ).scalar()
            )
    return out


def _logged(grid: Grid, practitioner: str, *actions: audit.AuditAction) -> list[Any]:
    """The professional's entries of ``actions`` in the read record's access log."""
    with grid.engine.connect() as conn:
        return audit.query(
            conn, patient_id=PATIENT, principal_subject=f"acct-{practitioner}", actions=actions, limit=500
        )


def _bundle(kind: str, categories: list[str], patient: str) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": [entry_for(c, patient) for c in categories]}


def _outcome(resp: Any, rid: str) -> tuple[int, list[tuple[str, str, str]]]:
    """Status and issues of an OperationOutcome answer, the asked id left out of the text."""
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome", resp.text
    return resp.status_code, [
        (i["severity"], i["code"], str(i.get("diagnostics", "")).replace(rid, "<id>")) for i in body["issue"]
    ]


# --- reads -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("combo", GRID, ids=lambda c: c.id)
def test_search_returns_exactly_the_readable_items(grid: Grid, combo: Combo) -> None:
    headers = grid.as_(combo.practitioner)
    want = {KEYS[c] for c in readable(combo.profession, combo.context)}
    problems: list[str] = []
    answered = 0
    for rtype in SEARCH_TYPES:
        body = _search(grid, search_url(rtype), headers)
        typed = {k for k in want if k.startswith(f"{rtype}/")}
        got = _keys(body, "match")
        problems += _differences(combo.id, typed, got, f"GET {rtype}")
        if body.get("total") != len(got):
            problems.append(f"{combo.id}: {rtype} total {body.get('total')} for {len(got)} items shown")
        answered += bool(got)
    assert problems == []
    # every search that returned the holder's data is in the holder's access log
    assert len(_logged(grid, combo.practitioner, audit.AuditAction.SEARCH)) == answered


@pytest.mark.parametrize("combo", GRID, ids=lambda c: c.id)
def test_include_and_revinclude_reveal_only_readable_items(grid: Grid, combo: Combo) -> None:
    headers = grid.as_(combo.practitioner)
    seen = readable(combo.profession, combo.context)
    want = {KEYS[c] for c in seen}
    problems: list[str] = []
    # the holder's list names every other item: _include follows each reference
    listed = _search(grid, f"/fhir/List?patient={PATIENT}&_include=List:item", headers)
    list_key = KEYS["personal-expression"]
    included = want - {list_key} if list_key in want else set()
    problems += _differences(combo.id, want & {list_key}, _keys(listed, "match"), "GET List")
    problems += _differences(combo.id, included, _keys(listed, "include"), "_include=List:item")
    # every item names the holder: _revinclude=* reaches them all
    rev = _search(grid, f"/fhir/Patient?_id={PATIENT}&_revinclude=*", headers)
    problems += _differences(combo.id, want & {KEYS["identity"]}, _keys(rev, "match"), "GET Patient")
    problems += _differences(combo.id, want - {KEYS["identity"]}, _keys(rev, "include"), "_revinclude=*")
    assert problems == []


@pytest.mark.parametrize("combo", GRID, ids=lambda c: c.id)
def test_read_by_id_answers_a_hidden_item_as_a_missing_one(grid: Grid, combo: Combo) -> None:
    headers = grid.as_(combo.practitioner)
    seen = readable(combo.profession, combo.context)
    # in care: the holder's identity reads (so the 404s below are not for want of a relationship)
    assert grid.client.get(f"/fhir/{KEYS['identity']}", headers=headers).status_code == 200
    missing: dict[str, Any] = {}
    problems: list[str] = []
    for category, key in KEYS.items():
        if category in seen:
            continue
        rtype = key.split("/")[0]
        if rtype not in missing:
            missing[rtype] = grid.client.get(f"/fhir/{rtype}/{MISSING}", headers=headers)
            assert missing[rtype].status_code == 404
        resp = grid.client.get(f"/fhir/{key}", headers=headers)
        if resp.status_code != 404 or _outcome(resp, key.split("/")[1]) != _outcome(missing[rtype], MISSING):
            problems.append(
                f"{combo.id}: {category} ({key}) not readable by the matrix, read {resp.status_code} "
                f"{resp.text[:120]} (a missing {rtype}: {missing[rtype].text[:120]})"
            )
    assert problems == []


# --- writes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("combo", [c for c in GRID if writable(c.profession, c.context)], ids=lambda c: c.id)
def test_transaction_of_writable_categories_is_stored_whole(grid: Grid, combo: Combo) -> None:
    allowed = sorted(writable(combo.profession, combo.context))
    before = _count(grid, combo.write_patient)
    resp = grid.client.post(
        "/fhir",
        json=_bundle("transaction", allowed, combo.write_patient),
        headers=grid.as_(combo.practitioner),
    )
    assert resp.status_code == 200, f"{combo.id} writing {allowed}: {resp.text}"
    entries = resp.json()["entry"]
    assert [e["response"]["status"][:3] for e in entries] == ["201"] * len(allowed)
    assert _categories_of(grid, [e["response"]["location"] for e in entries]) == allowed
    total, mine = _count(grid, combo.write_patient)
    assert (total, mine) == (before[0] + len(allowed), before[1] + len(allowed))


def _refused_cases() -> Iterator[Any]:
    """Each combo with one category it may not write, placed after all those it may: rotating
    through the refused categories from combo to combo, every category is refused somewhere."""
    for i, combo in enumerate(GRID):
        refused = [c for c in WRITE_CATEGORIES if c not in writable(combo.profession, combo.context)]
        if refused:
            category = refused[i % len(refused)]
            yield pytest.param(combo, category, id=f"{combo.id}-{category}")


@pytest.mark.parametrize(("combo", "category"), list(_refused_cases()))
def test_transaction_with_one_unwritable_entry_is_refused_whole(
    grid: Grid, combo: Combo, category: str
) -> None:
    entries = [*sorted(writable(combo.profession, combo.context)), category]
    before = _count(grid, combo.write_patient)
    resp = grid.client.post(
        "/fhir",
        json=_bundle("transaction", entries, combo.write_patient),
        headers=grid.as_(combo.practitioner),
    )
    assert resp.status_code == 403, (
        f"{combo.id} writing {category} in a transaction: {resp.status_code} {resp.text[:300]}"
    )
    assert resp.json()["resourceType"] == "OperationOutcome"
    assert _count(grid, combo.write_patient) == before, "a refused transaction stored something"


@pytest.mark.parametrize("combo", GRID, ids=lambda c: c.id)
def test_batch_refuses_only_the_unwritable_entries(grid: Grid, combo: Combo) -> None:
    allowed = writable(combo.profession, combo.context)
    before = _count(grid, combo.write_patient)
    resp = grid.client.post(
        "/fhir",
        json=_bundle("batch", list(WRITE_CATEGORIES), combo.write_patient),
        headers=grid.as_(combo.practitioner),
    )
    assert resp.status_code == 200, resp.text
    statuses = {
        c: e["response"]["status"][:3] for c, e in zip(WRITE_CATEGORIES, resp.json()["entry"], strict=True)
    }
    expected = {c: "201" if c in allowed else "403" for c in WRITE_CATEGORIES}
    assert {c: (expected[c], s) for c, s in statuses.items() if s != expected[c]} == {}, combo.id
    total, mine = _count(grid, combo.write_patient)
    assert (total, mine) == (before[0] + len(allowed), before[1] + len(allowed))


# --- outsiders ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", OUTSIDER_CASES, ids=lambda o: o.id)
def test_outsiders_see_and_write_nothing(grid: Grid, who: Outsider) -> None:
    headers = grid.as_(who.practitioner)
    problems: list[str] = []
    for rtype in SEARCH_TYPES:
        body = _search(grid, search_url(rtype), headers)
        problems += _differences(who.id, set(), _keys(body, "match"), f"GET {rtype}")
        if body.get("total") != 0:
            problems.append(f"{who.id}: {rtype} total {body.get('total')}")
    rev = _search(grid, f"/fhir/Patient?_id={PATIENT}&_revinclude=*", headers)
    problems += _differences(who.id, set(), _keys(rev, "match") | _keys(rev, "include"), "_revinclude=*")
    for category, key in KEYS.items():
        status = grid.client.get(f"/fhir/{key}", headers=headers).status_code
        if status != 404:
            problems.append(f"{who.id}: {category} ({key}) read {status}")
    assert problems == []
    assert _logged(grid, who.practitioner, audit.AuditAction.SEARCH, audit.AuditAction.READ) == []
    # what the column could write in care is refused, in the outsider's own second record too
    column_rights = sorted(writable(who.column, "solo")) or ["care-reports"]
    before = _count(grid, who.write_patient)
    resp = grid.client.post(
        "/fhir", json=_bundle("transaction", column_rights, who.write_patient), headers=headers
    )
    assert resp.status_code == 403, resp.text[:300]
    assert _count(grid, who.write_patient) == before


# --- portal pages ------------------------------------------------------------------------------------------

PASSWORD = "blue kettle sings at dawn"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
ENTRY = re.compile(r'<li class="entry" data-group="[a-z-]+" data-item="([^"]+)">')
RECORD = f"/portal/pro/patients/{PATIENT}"


def _portal_session(app: Any, who: Combo | Outsider, profession: str) -> TestClient:
    """An account of the professional enrolled as the agency enrols one (activation, password,
    confirmed TOTP), then signed in through the portal's two login steps, as a browser does."""
    settings = app.state.settings
    login = f"portal-{who.practitioner}"
    past = datetime.now(UTC) - timedelta(seconds=60)
    with accounts.transaction(app.state.engine) as conn:
        account = accounts.create_account(
            conn,
            PrincipalKind.PROFESSIONAL,
            display_name=who.practitioner,
            username=login,
            practitioner_id=who.practitioner,
            profession=PROFESSIONS[profession],  # an account holds the column (tokens the code)
            organization_id=who.organization,
            language="en",
        )
        code = accounts.issue_activation_code(conn, account.id, settings)
        accounts.activate(conn, settings, code=code, matricule_or_login=login, contact="grid@example.org")
        accounts.set_password(conn, settings, account.id, PASSWORD)
        secret, _uri, _svg = accounts.start_totp_enrolment(conn, account.id)
        accounts.confirm_totp(conn, account.id, pyotp.TOTP(secret).at(past), now=past)
    client = TestClient(app, follow_redirects=False)
    for page, form in (
        ("/portal/login", {"login": login, "password": PASSWORD}),
        ("/portal/login/code", {"code": pyotp.TOTP(secret).now()}),
    ):
        found = CSRF.search(client.get(page).text)
        assert found, page
        resp = client.post(page, data={"csrf": found.group(1), **form})
        assert resp.status_code == 303, f"{who.id} at {page}: {resp.text[:300]}"
    return client


@pytest.fixture(scope="module")
def portal(grid: Grid) -> Iterator[dict[str, TestClient]]:
    """A signed-in portal session of every professional of the grid, outsiders included."""
    app: Any = grid.client.app
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.contextmanager(cheap_passwords)())
        sessions = {
            who.practitioner: _portal_session(app, who, profession)
            for who, profession in (
                *((c, c.profession) for c in GRID),
                *((o, o.column) for o in OUTSIDER_CASES),
            )
        }
        yield sessions


def _documents() -> dict[str, str]:
    """Category → id of its item where the item is a DocumentReference (it has a page)."""
    return {c: k.split("/")[1] for c, k in KEYS.items() if k.startswith("DocumentReference/")}


@pytest.mark.parametrize("combo", GRID, ids=lambda c: c.id)
def test_the_portal_record_shows_exactly_the_readable_items(
    grid: Grid, portal: dict[str, TestClient], combo: Combo
) -> None:
    """The professional's record page (the timeline, read through the same decision as the
    API) lists each readable item of the record and nothing else; a document's own page opens
    for a readable one and answers "not found" for the others, as for a missing one."""
    client = portal[combo.practitioner]
    seen = readable(combo.profession, combo.context)
    page = client.get(f"{RECORD}/timeline")
    assert page.status_code == 200, f"{combo.id}: {page.text[:300]}"
    want = {KEYS[c] for c in seen if KEYS[c].split("/")[0] not in records.NOT_ITEMS}
    problems = _differences(combo.id, want, set(ENTRY.findall(page.text)), "the portal's record page")
    missing = client.get(f"{RECORD}/documents/{MISSING}")
    assert missing.status_code == 404
    for category, document_id in _documents().items():
        status = client.get(f"{RECORD}/documents/{document_id}").status_code
        if status != (200 if category in seen else 404):
            problems.append(f"{combo.id}: {category} document page answered {status}")
    assert problems == []


@pytest.mark.parametrize("who", OUTSIDER_CASES, ids=lambda o: o.id)
def test_outsiders_open_nothing_in_the_portal(
    grid: Grid, portal: dict[str, TestClient], who: Outsider
) -> None:
    client = portal[who.practitioner]
    documents = [f"{RECORD}/documents/{d}" for d in _documents().values()]
    for url in (RECORD, f"{RECORD}/timeline", *documents):
        resp = client.get(url)
        assert resp.status_code == 404, f"{who.id} {url}: {resp.status_code}"
        assert "data-item=" not in resp.text and "Grid" not in resp.text


def test_the_grid_covers_every_profession_and_context() -> None:
    """The parametrisation is the matrix file's: every column in every context, the referring
    physician's designation for physicians, and every listed profession with every context met."""
    assert {(c.profession, c.context) for c in COMBOS} == {
        (col, ctx) for col in COLUMNS for ctx in ("solo", "facility", "emergency", "permanent")
    } | {("med", REFERENT)}
    assert [c.profession for c in PROFESSION_COMBOS] == list(LISTED)
    assert {c.context for c in PROFESSION_COMBOS} == {"solo", "facility", "emergency", "permanent", REFERENT}


def test_a_device_assigned_to_the_holder_is_read_as_devices(grid: Grid) -> None:
    """Annex 1 "prothèses et appareillages": a Device with ``patient`` is classified ``devices``
    (``access.categories``) and a physician in care reads that category. The R4 patient
    compartment has no Device; the decision finds a record's items through the compartment, so
    the platform adds Device (by ``patient``) to it (``fhir/data/search-parameters-local.json``)."""
    combo = Combo("med", "solo")
    device = {
        "resourceType": "Device",
        "id": "grid-device",
        "patient": {"reference": f"Patient/{combo.write_patient}"},
    }
    put_all(grid.client, device)
    with grid.engine.connect() as conn:
        category = conn.execute(
            select(resource.c.category).where(resource.c.type == "Device", resource.c.id == "grid-device")
        ).scalar()
    assert category == "devices"
    resp = grid.client.get("/fhir/Device/grid-device", headers=grid.as_(combo.practitioner))
    assert resp.status_code == 200, "a physician in care cannot read the holder's Device (devices: rw)"
