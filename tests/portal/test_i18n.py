"""Languages: complete and current catalogues, the user's choice remembered, formats by language."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from fastapi.testclient import TestClient
from portal_http import post, sign_in, token
from portal_world import MATRICULE_NEW, World

from sharedcare.identity import accounts
from sharedcare.portal.i18n import LANGUAGES, catalogue_path, from_accept_language

Browser = Callable[[], TestClient]
ROOT = Path(__file__).resolve().parents[2]
PORTAL = ROOT / "src" / "sharedcare" / "portal"
PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _catalogue(lang: str) -> Catalog:
    with catalogue_path(lang).open("rb") as f:
        return read_po(f, locale=lang)


def _extracted() -> set[str | tuple[str, ...]]:
    with (ROOT / "babel.cfg").open() as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)
    found: set[str | tuple[str, ...]] = set()
    for _file, _line, message, _comments, _context in extract_from_dir(PORTAL, method_map, options_map):
        found.add(message if isinstance(message, str) else tuple(message))
    return found


@pytest.mark.parametrize("lang", ["fr", "de"])
def test_every_message_is_translated(lang: str) -> None:
    catalogue = _catalogue(lang)
    problems = []
    for message in catalogue:
        if not message.id:
            continue
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        if message.fuzzy or not all(s.strip() for s in strings):
            problems.append(f"untranslated: {message.id!r}")
        expected = {p for i in ids for p in PLACEHOLDER.findall(i)}
        if any(set(PLACEHOLDER.findall(s)) - expected for s in strings) or not all(
            set(PLACEHOLDER.findall(s)) >= expected - {"n"} for s in strings
        ):
            problems.append(f"placeholders differ: {message.id!r}")
    assert not problems, "\n".join(problems)


def test_catalogues_match_the_sources() -> None:
    """Every message of the code and templates is in each catalogue, and no stale one is left."""
    extracted = _extracted()
    assert len(extracted) > 200
    for lang in LANGUAGES:
        ids = {m.id if isinstance(m.id, str) else tuple(m.id) for m in _catalogue(lang) if m.id}
        assert extracted - ids == set(), f"{lang}: run pybabel update (see babel.cfg)"
        assert ids - extracted == set(), f"{lang}: stale messages"


def test_accept_language_negotiation() -> None:
    assert from_accept_language("de-LU,de;q=0.9,en;q=0.8") == "de"
    assert from_accept_language("it-IT, en;q=0.5, fr;q=0.7") == "fr"
    assert from_accept_language("lb, de;q=0.1") == "de"
    assert from_accept_language("it") is None
    assert from_accept_language("en;q=0, de;q=oops") is None


def test_language_before_login_is_a_cookie(world: World, browser: Browser) -> None:
    c = TestClient(world.app, follow_redirects=False)  # no language chosen yet
    assert '<html lang="fr">' in c.get("/portal/login").text  # the default
    german = c.get("/portal/login", headers={"Accept-Language": "de-LU,de;q=0.9"})
    assert '<html lang="de">' in german.text and "Anmelden" in german.text
    resp = post(c, "/portal/language", {"lang": "en", "next": "/portal/activate"}, "/portal/login")
    assert resp.status_code == 303 and resp.headers["location"] == "/portal/activate"
    assert "sharedcare_lang=en" in resp.headers["set-cookie"]
    page = c.get("/portal/activate", headers={"Accept-Language": "de"})
    assert '<html lang="en">' in page.text and "Activate your account" in page.text
    assert page.headers["content-language"] == "en"
    ignored = post(c, "/portal/language", {"lang": "xx", "next": "https://evil.example"}, "/portal/login")
    assert ignored.headers["location"] == "/portal/" and "set-cookie" not in ignored.headers


def test_signed_in_choice_is_remembered_on_the_account(world: World, browser: Browser) -> None:
    with accounts.transaction(world.engine) as conn:
        accounts.set_language(conn, world.patient.account_id, "fr")
    c = browser()  # English before login, but the account's language (French) wins once signed in
    sign_in(c, world.patient)
    home = c.get("/portal/home").text
    assert '<html lang="fr">' in home and "Mon dossier" in home and "1 mars 2026" in home
    post(c, "/portal/language", {"lang": "de", "next": "/portal/home"}, "/portal/home")
    german = c.get("/portal/home").text
    assert '<html lang="de">' in german and "Meine Akte" in german and "01.03.2026" in german
    post(c, "/portal/language", {"lang": "en", "next": "/portal/home"}, "/portal/home")
    assert "Mar 1, 2026" in c.get("/portal/home").text
    post(c, "/portal/language", {"lang": "de", "next": "/portal/home"}, "/portal/home")
    with world.engine.connect() as conn:
        assert accounts.get_account(conn, world.patient.account_id).language == "de"
    other = browser()  # another browser, French by its headers: the account's language wins after login
    done = sign_in(other, world.patient, offset_steps=1)
    assert "sharedcare_lang=de" in ",".join(done.headers.get_list("set-cookie"))
    assert '<html lang="de">' in other.get("/portal/home", headers={"Accept-Language": "fr"}).text


def test_activation_remembers_the_language_of_the_page(world: World, browser: Browser) -> None:
    c = browser()
    c.cookies.set("sharedcare_lang", "de")
    data = {"code": world.pending_code, "login": MATRICULE_NEW, "contact": "+352 621 123 456"}
    resp = c.post("/portal/activate", data={"csrf": token(c, "/portal/activate"), **data})
    assert resp.status_code == 303
    with world.engine.connect() as conn:
        account = accounts.find_by_login(conn, MATRICULE_NEW)
    assert account is not None and account.language == "de" and account.mobile == "+352621123456"


def test_errors_and_lockouts_are_in_the_users_language(world: World, browser: Browser) -> None:
    c = browser()
    c.cookies.set("sharedcare_lang", "de")
    for _ in range(world.settings.max_failed_attempts):
        resp = post(
            c, "/portal/login", {"login": world.patient.login, "password": "falsch falsch"}, "/portal/login"
        )
    assert resp.status_code == 429
    assert re.search(r"Versuchen Sie es in \d+ Minuten erneut, um \d{2}:\d{2}", resp.text), resp.text
    c.cookies.set("sharedcare_lang", "en")
    refused = c.post("/portal/login", data={"login": "x", "password": "y"})
    assert refused.status_code == 403 and "This form has expired" in refused.text
