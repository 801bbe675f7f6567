"""ITI-68 Retrieve Document: a Binary's bytes, as the caller's access decision allows.

``GET [base]/Binary/[id]`` (which every attachment ``url`` of the platform names) is a FHIR read
of the Binary through the caller's session: the access filter decides (the Binary is in its
patient's compartment with its document's category, ``documents.content``), and the read is
audited like any other, for that patient. The document it is the content of
(``securityContext``) must be visible to the caller too, so a mask, an objection to filing or a
consultation d'annonce on the DocumentReference also hides its bytes.

Bytes are streamed from the blob store, which checks them: a read of the whole content against
its digest (and, encrypted, every frame read against its authentication tag). Up to
``BUFFERED_BYTES`` are read and checked before the answer starts, so a corrupted blob answers
500; more are streamed with the last chunk held back until the whole-content check passes, so a
client never receives all the bytes of a corrupted blob (the connection closes short of
``Content-Length``). A range read is checked only as far as the store checks ranges.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sharedcare.documents.content import ByteRange, inline_data, parse_range, pointer_of
from sharedcare.documents.mhd import literal
from sharedcare.documents.submission import read_own_upload
from sharedcare.fhir.errors import NotFound
from sharedcare.fhir.service import FhirService
from sharedcare.storage.blobstore import BlobStore

BUFFERED_BYTES = 4 * 1024 * 1024
"""Content up to this size is read whole and checked before the answer starts, and inlined as
``data`` when the Binary resource itself is asked for (``Accept: application/fhir+json``)."""


@dataclass(slots=True)
class Document:
    """What a retrieval answers: the Binary's metadata, and its bytes (read, or to stream)."""

    resource: dict[str, Any]
    version: int
    last_updated: datetime
    content_type: str
    size: int
    etag: str
    """A strong validator of the bytes (their SHA-256), for ``ETag`` and ``If-Range``."""
    range: ByteRange | None
    body: bytes | None
    """The bytes to send (the range, else the whole), already read and checked when they are
    small; None: to stream."""
    opener: Callable[[int, int | None], Iterator[bytes]]

    def stream(self) -> Iterator[bytes]:
        """The bytes to send (the range, else the whole, checked as described above)."""
        if self.body is not None:
            yield self.body
            return
        if self.range is not None:
            yield from self.opener(self.range.start, self.range.end)
            return
        held: bytes | None = None
        for chunk in self.opener(0, None):
            if held is not None:
                yield held
            held = chunk
        if held is not None:  # reached only when the whole read passed the digest check
            yield held

    def as_resource(self) -> dict[str, Any]:
        """The Binary resource, with ``data`` when the content was read (small content)."""
        out = dict(self.resource)
        if self.body is not None and self.range is None:
            out["data"] = base64.b64encode(self.body).decode()
        return out


def retrieve(
    svc: FhirService,
    blobs: BlobStore,
    binary_id: str,
    *,
    range_header: str | None = None,
    if_range: str | None = None,
    read_body: bool = True,
    inline: bool = False,
) -> Document:
    """Retrieve ``Binary/[binary_id]`` as the caller of ``svc`` (404 when they may not see it or
    its document). ``read_body`` False: metadata only (HEAD, a 304). ``inline``: the Binary
    resource is asked for: small content is read into ``body``."""
    with svc.reading() as conn:
        try:
            stored, own_upload = svc.read_in(conn, "Binary", binary_id), False
        except NotFound:  # its uploader reads back an unclaimed upload (``submission``)
            found = read_own_upload(svc, conn, binary_id)
            if found is None:
                raise
            stored, own_upload = found, True
        resource = stored.resource()
        context = literal((resource.get("securityContext") or {}).get("reference"))
        if context is not None and not own_upload:
            current = svc.current_visible(conn, *context)
            if current is None or current.deleted:
                raise NotFound(f"Resource Binary/{binary_id} is not known")
        pointer = pointer_of(resource)
        if pointer is not None:
            size, etag = pointer.size, f'"{pointer.digest}"'

            def opener(start: int, end: int | None) -> Iterator[bytes]:
                assert pointer is not None
                return blobs.open(pointer.patient_id, pointer.digest, start, end)

        else:
            data = inline_data(resource) or b""
            size, etag = len(data), f'"{hashlib.sha256(data).hexdigest()}"'

            def opener(start: int, end: int | None) -> Iterator[bytes]:
                yield data[start:end]

        byte_range = None
        if not inline and (if_range is None or if_range.strip() == etag):
            byte_range = parse_range(range_header, size)
        body = None
        start, end = (byte_range.start, byte_range.end) if byte_range else (0, None)
        if read_body and (end if end is not None else size) - start <= BUFFERED_BYTES:
            # in the audited transaction: a corrupted blob rolls the read's audit record back
            body = b"".join(opener(start, end))
        resource.pop("data", None)
        return Document(
            resource=resource,
            version=stored.version,
            last_updated=stored.last_updated,
            content_type=str(resource.get("contentType") or "application/octet-stream"),
            size=size,
            etag=etag,
            range=byte_range,
            body=body,
            opener=opener,
        )
