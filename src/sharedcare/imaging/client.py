"""A small DICOMweb client on httpx: QIDO-RS series and instance lists, rendered WADO-RS images.

Only what the proxy needs, on URLs built from a configured base URL and UIDs checked to be
DICOM UIDs (digits and dots: nothing else can reach the path). Every request has the
configured time-out, follows no redirect and reads at most ``max_bytes``; failures become the
named errors of ``imaging.errors`` (502 unreachable or unexpected, 504 time-out), never a 500.
A rendered image is streamed when the server announces its length (within the cap), and read
into memory up to the cap otherwise, so the caller always learns the outcome before the first
byte is sent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from sharedcare.imaging.endpoints import Registry, Server
from sharedcare.imaging.errors import (
    ImagingError,
    InvalidUid,
    NotOnServer,
    ServerFailure,
    ServerTimeout,
    ServerUnreachable,
    TooLarge,
)

log = logging.getLogger("sharedcare.imaging")

DICOM_JSON = "application/dicom+json"
IMAGE_TYPES = ("image/png", "image/jpeg")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_FRAMES_ONLY = (400, 406, 415, 501)
"""Statuses of a server that renders frames but not whole instances: ask for frame 1."""

# DICOM tags (QIDO-RS answers are DICOM JSON, keyed by tag)
SERIES_UID = "0020000E"
SERIES_NUMBER = "00200011"
MODALITY = "00080060"
SERIES_DESCRIPTION = "0008103E"
SERIES_INSTANCES = "00201209"
SOP_INSTANCE_UID = "00080018"
INSTANCE_NUMBER = "00200013"


def valid_uid(value: str) -> bool:
    """A DICOM UID (PS3.5 §9.1): at most 64 characters, numeric components without leading zeros."""
    return 0 < len(value) <= 64 and _UID.match(value) is not None


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    """One series of a study as the image server lists it."""

    uid: str
    number: int | None
    modality: str
    description: str
    instances: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "number": self.number,
            "modality": self.modality,
            "description": self.description,
            "numberOfInstances": self.instances,
        }


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    uid: str
    number: int | None


class Rendered:
    """A rendered image ready to send: its media type, its length when known, and its bytes."""

    def __init__(
        self,
        media_type: str,
        length: int | None,
        response: httpx.Response | None,
        http: httpx.AsyncClient | None,
        body: bytes | None = None,
    ) -> None:
        self.media_type = media_type
        self.length = length
        self._response = response
        self._http = http
        self._body = body

    async def chunks(self) -> AsyncIterator[bytes]:
        """The image's bytes; the connection to the image server is closed at the end."""
        try:
            if self._body is not None:
                yield self._body
                return
            assert self._response is not None and self.length is not None
            left = self.length
            async for chunk in self._response.aiter_bytes():
                if not chunk:
                    continue
                piece = chunk[:left]
                left -= len(piece)
                yield piece
                if left <= 0:
                    break
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._response is not None:
            await self._response.aclose()
        if self._http is not None:
            await self._http.aclose()


class DicomWebClient:
    """QIDO-RS and rendered WADO-RS requests to one configured server."""

    def __init__(self, server: Server, registry: Registry) -> None:
        self.server = server
        self.timeout = registry.timeout
        self.max_bytes = registry.max_bytes
        self.transport = registry.transport

    def _http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            auth=self.server.auth,
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,
            transport=self.transport,
        )

    def _url(self, *uids: str, suffix: str = "") -> str:
        path = ""
        for level, uid in zip(("studies", "series", "instances"), uids, strict=False):
            if not valid_uid(uid):
                raise InvalidUid(f"{uid!r} is not a DICOM UID")
            path += f"/{level}/{uid}"
        return f"{self.server.url}{path}{suffix}"

    async def _open(
        self,
        http: httpx.AsyncClient,
        url: str,
        accept: str,
        params: list[tuple[str, str]] | None = None,
        *,
        encoded: bool = True,
    ) -> httpx.Response:
        """Send a GET; ``encoded=False`` asks for the bytes as they are (an image is compressed
        already, and only then does ``Content-Length`` count the bytes relayed)."""
        headers = {"Accept": accept}
        if not encoded:
            headers["Accept-Encoding"] = "identity"
        try:
            query = httpx.QueryParams(tuple(params or ()))
            request = http.build_request("GET", url, params=query, headers=headers)
            return await http.send(request, stream=True)
        except httpx.TimeoutException:
            log.warning("imaging: time-out from DICOMweb server %s", self.server.key)
            raise ServerTimeout() from None
        except httpx.HTTPError as exc:
            log.warning("imaging: DICOMweb server %s unreachable: %s", self.server.key, type(exc).__name__)
            raise ServerUnreachable() from None

    def _check_status(self, response: httpx.Response, *, missing: type[ImagingError] | None) -> None:
        status = response.status_code
        if status == 200:
            return
        if status in (404, 410) and missing is not None:
            raise missing()
        log.warning("imaging: DICOMweb server %s answered %s", self.server.key, status)
        if status in (502, 503, 504):
            raise ServerUnreachable(f"the image server answered {status}")
        raise ServerFailure(f"the image server answered {status}")

    async def _read(self, response: httpx.Response) -> bytes:
        """The whole body, at most ``max_bytes`` (TooLarge beyond)."""
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise TooLarge(f"the image server's answer exceeds {self.max_bytes} bytes")
        body = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self.max_bytes:
                    raise TooLarge(f"the image server's answer exceeds {self.max_bytes} bytes")
        except httpx.TimeoutException:
            raise ServerTimeout() from None
        except httpx.HTTPError:
            raise ServerUnreachable() from None
        return bytes(body)

    async def _json(self, url: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """A QIDO-RS answer: a JSON array of DICOM JSON objects ([] when nothing matches)."""
        async with self._http() as http:
            response = await self._open(http, url, DICOM_JSON, params)
            try:
                if response.status_code in (204, 404):
                    return []  # QIDO-RS: no match (some servers answer 404 for an unknown study)
                self._check_status(response, missing=None)
                body = await self._read(response)
            finally:
                await response.aclose()
        if not body.strip():
            return []
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ServerFailure("the image server's answer is not JSON") from None
        if not isinstance(parsed, list) or not all(isinstance(item, dict) for item in parsed):
            raise ServerFailure("the image server's answer is not a list of DICOM JSON objects")
        return parsed

    async def series(self, study_uid: str) -> list[SeriesInfo]:
        """QIDO-RS ``/studies/{study}/series``: the series the server holds for the study."""
        fields = [("includefield", tag) for tag in (SERIES_DESCRIPTION, SERIES_INSTANCES)]
        found = []
        for item in await self._json(self._url(study_uid, suffix="/series"), fields):
            uid = _text(item, SERIES_UID)
            if uid and valid_uid(uid):
                found.append(
                    SeriesInfo(
                        uid,
                        _number(item, SERIES_NUMBER),
                        _text(item, MODALITY),
                        _text(item, SERIES_DESCRIPTION),
                        _number(item, SERIES_INSTANCES),
                    )
                )
        found.sort(key=lambda s: (s.number is None, s.number or 0, s.uid))
        return found

    async def instances(self, study_uid: str, series_uid: str) -> list[InstanceInfo]:
        """QIDO-RS ``/studies/{study}/series/{series}/instances``, in instance-number order."""
        url = self._url(study_uid, series_uid, suffix="/instances")
        found = []
        for item in await self._json(url, [("includefield", INSTANCE_NUMBER)]):
            uid = _text(item, SOP_INSTANCE_UID)
            if uid and valid_uid(uid):
                found.append(InstanceInfo(uid, _number(item, INSTANCE_NUMBER)))
        found.sort(key=lambda i: (i.number is None, i.number or 0, i.uid))
        return found

    async def rendered(self, study_uid: str, series_uid: str, instance_uid: str, media_type: str) -> Rendered:
        """WADO-RS ``…/instances/{instance}/rendered`` (else ``…/frames/1/rendered``) as
        ``media_type`` (PNG or JPEG). Raises before any byte is sent when the image is missing,
        too large or not an image."""
        assert media_type in IMAGE_TYPES
        base = self._url(study_uid, series_uid, instance_uid)
        http = self._http()
        response: httpx.Response | None = None
        try:
            response = await self._open(http, f"{base}/rendered", media_type, encoded=False)
            if response.status_code in _FRAMES_ONLY:
                await response.aclose()
                response = await self._open(http, f"{base}/frames/1/rendered", media_type, encoded=False)
            self._check_status(response, missing=NotOnServer)
            got = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if got not in IMAGE_TYPES:
                raise ServerFailure(f"the image server sent {got or 'no content type'}, not an image")
            declared = response.headers.get("content-length")
            plain = response.headers.get("content-encoding", "identity").strip().lower() == "identity"
            if declared is not None and declared.isdigit() and plain:
                if int(declared) > self.max_bytes:
                    raise TooLarge(f"the image exceeds {self.max_bytes} bytes")
                return Rendered(got, int(declared), response, http)
            body = await self._read(response)  # length unknown (or encoded): read it within the cap
        except BaseException:
            if response is not None:
                await response.aclose()
            await http.aclose()
            raise
        await response.aclose()
        await http.aclose()
        return Rendered(got, len(body), None, None, body)


def _value(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    return values[0] if isinstance(values, list) and values else None


def _text(item: dict[str, Any], tag: str) -> str:
    value = _value(item, tag)
    return value.strip() if isinstance(value, str) else ""


def _number(item: dict[str, Any], tag: str) -> int | None:
    value = _value(item, tag)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None
