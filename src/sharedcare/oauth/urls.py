"""The public URLs of the authorization server: issuer, endpoints, and the FHIR base (the audience).

They come from settings when configured (production, behind a proxy) and otherwise from the
request, like ``api.fhir.base_url``: tokens name the FHIR base URL as their audience, so the two
must agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from sharedcare.settings import Settings


@dataclass(frozen=True, slots=True)
class PublicUrls:
    """Where clients find us; ``issuer`` is the root every ``/auth/...`` endpoint hangs from."""

    issuer: str
    fhir_base: str

    @property
    def authorization_endpoint(self) -> str:
        return f"{self.issuer}/auth/authorize"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/auth/token"

    @property
    def revocation_endpoint(self) -> str:
        return f"{self.issuer}/auth/revoke"

    @property
    def introspection_endpoint(self) -> str:
        return f"{self.issuer}/auth/introspect"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/auth/jwks"

    @property
    def userinfo_endpoint(self) -> str:
        return f"{self.issuer}/auth/userinfo"


def public_urls(request: Request) -> PublicUrls:
    """The public URLs for ``request``: settings first, else derived from the request."""
    settings: Settings = request.app.state.settings
    root = str(request.base_url).rstrip("/")
    fhir_base = (settings.base_url or f"{root}/fhir").rstrip("/")
    if settings.issuer:
        issuer = settings.issuer.rstrip("/")
    elif settings.base_url and fhir_base.endswith("/fhir"):
        issuer = fhir_base.removesuffix("/fhir")
    else:
        issuer = root
    return PublicUrls(issuer=issuer, fhir_base=fhir_base)
