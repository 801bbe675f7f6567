"""The DICOMweb servers the platform may reach, and which one an ``ImagingStudy`` names.

The servers are configuration (``SHAREDCARE_DICOMWEB_ENDPOINTS``: id → base URL and
credentials), never data: an ``ImagingStudy`` names its server through ``ImagingStudy.endpoint``,
a FHIR ``Endpoint`` (stored, or contained in the study) with ``connectionType``
``dicom-wado-rs``, whose ``address`` is a configured base URL or whose ``identifier`` (system
``ENDPOINT_SYSTEM``) is a configured id; a logical reference (``Reference.identifier``) with
that system names a configured id directly. An address that is not configured is refused
(``UnknownServer``): whoever may write an Endpoint must not be able to point the proxy at
another host (no open relay, no request forgery towards the platform's network).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from sharedcare.imaging.errors import NoImages, UnknownServer
from sharedcare.settings import DicomWebServer, Settings

ENDPOINT_SYSTEM = "https://sharedcare.lu/fhir/sid/dicomweb-endpoint"
"""Identifier system of the configured DICOMweb endpoint ids."""
CONNECTION_TYPES = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
WADO_RS = "dicom-wado-rs"
EndpointLookup = Callable[[str], dict[str, Any] | None]
"""Reads a stored ``Endpoint`` by id (None when there is none)."""


@dataclass(frozen=True, slots=True)
class Server:
    """A configured DICOMweb server: its id, base URL (no trailing slash) and credentials."""

    key: str
    url: str
    auth: tuple[str, str] | None = None


def normalise(url: str) -> str:
    """A base URL in one spelling: scheme and host lower-case, no trailing slash, no query."""
    parts = urlsplit(url.strip())
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), "", ""))


class Registry:
    """The configured servers, and the settings of the client that talks to them.

    ``transport`` is httpx's (tests pass one that records or refuses requests)."""

    def __init__(
        self,
        servers: Mapping[str, DicomWebServer],
        *,
        timeout: float = 10.0,
        max_bytes: int = 16 * 1024 * 1024,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.servers: dict[str, Server] = {}
        for key, conf in servers.items():
            auth = None
            if conf.username:
                auth = (conf.username, conf.password.get_secret_value() if conf.password else "")
            self.servers[key] = Server(key, normalise(conf.url), auth)
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.transport = transport

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        return cls(
            settings.dicomweb_endpoints,
            timeout=settings.dicomweb_timeout_seconds,
            max_bytes=settings.dicomweb_max_bytes,
        )

    def by_address(self, address: str) -> Server | None:
        wanted = normalise(address)
        return next((s for s in self.servers.values() if s.url == wanted), None)

    def server_of(self, study: dict[str, Any], lookup: EndpointLookup) -> Server:
        """The configured server holding ``study``'s images (its first usable endpoint).

        Raises ``NoImages`` when the study names no endpoint and ``UnknownServer`` when none of
        its endpoints is a configured DICOMweb server."""
        references = [r for r in study.get("endpoint") or [] if isinstance(r, dict)]
        if not references:
            raise NoImages("the ImagingStudy has no endpoint")
        for ref in references:
            found = self._server_for(ref, study, lookup)
            if found is not None:
                return found
        raise UnknownServer("no endpoint of the ImagingStudy is a configured DICOMweb (WADO-RS) server")

    def _server_for(
        self, ref: dict[str, Any], study: dict[str, Any], lookup: EndpointLookup
    ) -> Server | None:
        identifier = ref.get("identifier")
        if isinstance(identifier, dict) and identifier.get("system") == ENDPOINT_SYSTEM:
            return self.servers.get(str(identifier.get("value")))
        target = ref.get("reference")
        if not isinstance(target, str):
            return None
        endpoint: dict[str, Any] | None = None
        if target.startswith("#"):
            endpoint = next(
                (
                    c
                    for c in study.get("contained") or []
                    if isinstance(c, dict)
                    and c.get("resourceType") == "Endpoint"
                    and c.get("id") == target[1:]
                ),
                None,
            )
        elif target.startswith("Endpoint/") and target.count("/") == 1:
            endpoint = lookup(target.partition("/")[2])
        return self._server_of_endpoint(endpoint) if endpoint is not None else None

    def _server_of_endpoint(self, endpoint: dict[str, Any]) -> Server | None:
        if endpoint.get("status") != "active" or not _is_wado_rs(endpoint):
            return None
        for ident in endpoint.get("identifier") or []:
            if isinstance(ident, dict) and ident.get("system") == ENDPOINT_SYSTEM:
                server = self.servers.get(str(ident.get("value")))
                if server is not None:
                    return server
        address = endpoint.get("address")
        return self.by_address(address) if isinstance(address, str) else None


def _is_wado_rs(endpoint: dict[str, Any]) -> bool:
    kind = endpoint.get("connectionType")
    return (
        isinstance(kind, dict)
        and kind.get("code") == WADO_RS
        and kind.get("system") in (None, CONNECTION_TYPES)
    )
