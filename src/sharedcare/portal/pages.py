"""Rendering portal pages: Jinja2 templates in the user's language, with the security headers.

Every page is rendered server-side and needs no JavaScript. Responses are never cached (they
hold personal data and must not come back through the back button after sign-out) and may not
be framed; the content security policy allows only this site's stylesheet and inline SVG.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from sharedcare.portal import csrf, labels
from sharedcare.portal.i18n import (
    DEFAULT_LANGUAGE,
    LANGUAGE_NAMES,
    LANGUAGES,
    Translator,
    from_accept_language,
    supported,
)
from sharedcare.portal.sessions import FLASH, PortalUser

TEMPLATES = Path(__file__).parent / "templates"
LANGUAGE_COOKIE = "sharedcare_lang"
LANGUAGE_COOKIE_SECONDS = 365 * 24 * 3600
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

environment = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def language(request: Request, user: PortalUser | None = None) -> str:
    """The account's remembered language, else the browser's cookie, else Accept-Language."""
    if user is not None and supported(user.account.language):
        return user.account.language
    return (
        supported(request.cookies.get(LANGUAGE_COOKIE))
        or from_accept_language(request.headers.get("accept-language"))
        or DEFAULT_LANGUAGE
    )


def newstyle_gettext(translator: Translator) -> Callable[..., Markup]:
    """``_("text %(x)s", x=value)`` for templates: our catalogue text is trusted markup, the
    parameters are escaped."""

    def gettext(message: str, **params: Any) -> Markup:
        text = Markup(translator.gettext(message))
        return text % params if params else text

    return gettext


def newstyle_ngettext(translator: Translator) -> Callable[..., Markup]:
    """``ngettext("%(n)s item", "%(n)s items", n)`` for templates, escaped like ``_``."""

    def ngettext(singular: str, plural: str, n: int, **params: Any) -> Markup:
        text = Markup(translator.catalogue().ngettext(singular, plural, n))
        return text % {"n": n, **params}

    return ngettext


def flash(request: Request, message: str, **params: str | int) -> None:
    """A message (a catalogue msgid, with non-sensitive parameters) for the next page shown."""
    request.session[FLASH] = [message, params]


def _pop_flash(request: Request, translator: Translator) -> str | None:
    value = request.session.pop(FLASH, None)
    if not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str):
        return None
    params = value[1] if isinstance(value[1], dict) else {}
    return translator.gettext(value[0], **params)


def secure(response: Response, lang: str | None = None) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if lang:
        response.headers["Content-Language"] = lang
    return response


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    user: PortalUser | None = None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The page ``template`` in the user's language."""
    lang = language(request, user)
    translator = Translator(lang)
    values: dict[str, Any] = {
        "_": newstyle_gettext(translator),
        "ngettext": newstyle_ngettext(translator),
        "t": translator,
        "lang": lang,
        "languages": [(code, LANGUAGE_NAMES[code]) for code in LANGUAGES],
        "csrf_token": csrf.token(request),
        "user": user,
        "flash": _pop_flash(request, translator),
        "current_path": request.url.path,
        "back": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        "error": None,
        "settings": request.app.state.settings,
        "type_label": lambda code: labels.label(translator, labels.RESOURCE_TYPES, code),
        "context_label": lambda code: labels.label(translator, labels.CARE_CONTEXTS, code),
        "delegation_label": lambda code: labels.label(translator, labels.DELEGATION_KINDS, code),
    }
    values.update(context or {})
    body = environment.get_template(template).render(values)
    response = HTMLResponse(body, status_code=status, headers=dict(headers or {}))
    return secure(response, lang)


def redirect(url: str) -> Response:
    """303 See Other: a form posted successfully is never re-posted by a reload."""
    return secure(RedirectResponse(url, status_code=303))


def _https(request: Request) -> bool:
    """Cookies are ``Secure`` when the site is public over https (as the session cookie)."""
    settings = request.app.state.settings
    return (settings.issuer or settings.base_url or "").startswith("https://")


def set_language_cookie(request: Request, response: Response, lang: str) -> None:
    response.set_cookie(
        LANGUAGE_COOKIE,
        lang,
        max_age=LANGUAGE_COOKIE_SECONDS,
        path="/",
        secure=_https(request),
        httponly=True,
        samesite="lax",
    )
