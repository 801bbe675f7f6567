"""CSRF protection: every portal POST carries the session's token, checked by ``require_csrf``.

The token lives in the signed session cookie (synchroniser-token pattern) and is echoed in a
hidden form field. The session cookie is ``SameSite=Lax`` already; the token also covers
browsers and proxies that do not honour it, and a login form posted from another site (login
CSRF). A request whose ``Origin`` names another site is refused too. The token is renewed at
each sign-in and sign-out, so a token seen before login is useless after it.
"""

from __future__ import annotations

import hmac
import secrets

from fastapi import Request

SESSION_KEY = "csrf"
FIELD = "csrf"
HEADER = "x-csrf-token"


class CsrfRefused(Exception):
    """The form has no valid token (expired page, or a request forged by another site)."""


def token(request: Request) -> str:
    """The session's token, created on first use."""
    value = request.session.get(SESSION_KEY)
    if not isinstance(value, str) or len(value) < 32:
        value = secrets.token_urlsafe(32)
        request.session[SESSION_KEY] = value
    return value


def renew(request: Request) -> str:
    """A fresh token (at sign-in and sign-out)."""
    request.session[SESSION_KEY] = secrets.token_urlsafe(32)
    return str(request.session[SESSION_KEY])


def _same_origin(request: Request) -> bool:
    """False when the browser says the form came from another site (``Origin`` header)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # older browsers and non-browser clients: the token alone decides
    allowed = {f"{request.url.scheme}://{request.url.netloc}", f"https://{request.url.netloc}"}
    forwarded = request.headers.get("x-forwarded-host")
    if forwarded:
        allowed.add(f"https://{forwarded}")
    return origin in allowed


async def require_csrf(request: Request) -> None:
    """FastAPI dependency of the portal routes: every POST must carry the session's token.

    Raises ``CsrfRefused`` (a 403 page) and the route is not run, so nothing changes.
    """
    if request.method != "POST":
        return
    form = await request.form()
    sent = form.get(FIELD) or request.headers.get(HEADER) or ""
    expected = request.session.get(SESSION_KEY)
    if (
        not isinstance(sent, str)
        or not isinstance(expected, str)
        or not hmac.compare_digest(sent.encode(), expected.encode())
        or not _same_origin(request)
    ):
        raise CsrfRefused()
