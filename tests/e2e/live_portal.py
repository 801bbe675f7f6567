"""What a browser test gets: the live server's address and the world behind it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from portal_world import PASSWORD, Person, World


@dataclass
class LivePortal:
    url: str
    """Base URL of the server (``http://127.0.0.1:<port>``); the portal is under ``/portal``."""
    world: World


def english_context(chromium: Any, portal: LivePortal, **options: Any) -> Any:
    """A fresh browser profile that chose English before signing in (the tests read English)."""
    context = chromium.new_context(base_url=portal.url, **options)
    context.add_cookies([{"name": "sharedcare_lang", "value": "en", "url": portal.url}])
    context.set_default_timeout(15_000)
    return context


def sign_in_as(page: Any, login: str, code: str) -> None:
    """The portal's two-step sign-in: password, then the 6-digit code."""
    page.goto("/portal/login")
    page.get_by_label("Matricule or login name").fill(login)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()
    page.get_by_label("6-digit code").fill(code)
    page.get_by_role("button", name="Sign in").click()


def sign_in(page: Any, person: Person, offset_steps: int = 0) -> None:
    """A world's person signs in with the code of their authenticator now (or steps away)."""
    sign_in_as(page, person.login, person.code(offset_steps))


def signed_in_page(chromium: Any, portal: LivePortal, person: Person) -> tuple[Any, Any]:
    """A new English context and a page on which ``person`` has signed in."""
    context = english_context(chromium, portal)
    page = context.new_page()
    sign_in(page, person)
    page.wait_for_load_state()
    return context, page
