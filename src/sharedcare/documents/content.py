"""How a document's bytes are tied to the record: the stored ``Binary`` points at a blob.

The bytes of every submitted document go to the blob store (``storage.blobstore``), in the
namespace of the patient whose record holds them. The FHIR store keeps a ``Binary`` without
``data``: its ``contentType``, its ``securityContext`` (the DocumentReference it is the content
of) and, in ``meta``, the platform's marks:

- ``meta.extension`` ``binary-patient``: the patient, which puts the Binary in their compartment
  (a search parameter of the platform, ``fhir/data/search-parameters-local.json``), so the access
  decision and the audit trail treat it as any item of the record;
- ``meta.extension`` ``blob``: the blob's SHA-256 digest and size;
- ``meta.tag`` in ``access.categories.CATEGORY_SYSTEM``: the DocumentReference's data category,
  which ``access.categories.classify`` gives the Binary (who may read a lab report's PDF is who
  may read the lab report);
- ``meta.security``: the DocumentReference's confidentiality.

The submission's Lists (SubmissionSet, Folders) get the tag too, with the strictest category of
the submission's documents: they name the documents, and must not reveal more than they do.

Large content is uploaded first, streamed (``POST [base]/Binary``, raw bytes): that Binary's
``securityContext`` is the patient (FHIR R4 allows a Reference to any resource), ``meta`` names
its uploader (``uploaded-by``), and a Provide Document Bundle of the same uploader then claims it
by ``attachment.url`` = ``Binary/[id]``, which makes it an ordinary document Binary (``pending_upload``).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sharedcare.access.categories import CATEGORY_SYSTEM
from sharedcare.access.matrix import access_matrix
from sharedcare.documents.mhd import Content
from sharedcare.fhir.errors import FhirError

BLOB_EXTENSION = "https://sharedcare.lu/fhir/StructureDefinition/blob"
PATIENT_EXTENSION = "https://sharedcare.lu/fhir/StructureDefinition/binary-patient"
UPLOADER_EXTENSION = "https://sharedcare.lu/fhir/StructureDefinition/uploaded-by"
"""On a Binary uploaded and not yet claimed by a document: who uploaded it (principal subject)."""


@dataclass(frozen=True, slots=True)
class BlobPointer:
    """Where a stored Binary's bytes are: the blob store namespace (patient) and digest."""

    patient_id: str
    digest: str
    size: int
    sha1: bytes | None = None


def _blob_meta(patient_id: str, digest: str, size: int, sha1: bytes) -> list[dict[str, Any]]:
    return [
        {
            "url": BLOB_EXTENSION,
            "extension": [
                {"url": "digest", "valueString": digest},
                {"url": "size", "valueInteger": size},
                {"url": "sha1", "valueBase64Binary": base64.b64encode(sha1).decode()},
            ],
        },
        {"url": PATIENT_EXTENSION, "valueReference": {"reference": f"Patient/{patient_id}"}},
    ]


def pending_binary(
    *,
    binary_id: str,
    content_type: str,
    patient_id: str,
    uploader: str,
    category: str | None,
    digest: str,
    size: int,
    sha1: bytes,
) -> dict[str, Any]:
    """The Binary of content uploaded before its document: in the patient's compartment, its
    ``securityContext`` the patient, ``category`` tagged (None: no tag). ``documents.submission``
    stores it ``unfiled`` (no professional but its uploader reads it until a submission claims
    it) and builds it again with the category it will be filed as for the write check (the
    holder's side: their personal area; others None: the type's default, care reports)."""
    meta: dict[str, Any] = {
        "extension": [
            *_blob_meta(patient_id, digest, size, sha1),
            {"url": UPLOADER_EXTENSION, "valueString": uploader},
        ]
    }
    if category is not None:
        meta["tag"] = [{"system": CATEGORY_SYSTEM, "code": category}]
    return {
        "resourceType": "Binary",
        "id": binary_id,
        "meta": meta,
        "contentType": content_type,
        "securityContext": {"reference": f"Patient/{patient_id}"},
    }


def pending_upload(binary: Mapping[str, Any]) -> tuple[BlobPointer, str] | None:
    """The blob and uploader of a Binary no document claims yet (None: not such a Binary)."""
    pointer = pointer_of(binary)
    context = (binary.get("securityContext") or {}).get("reference")
    if pointer is None or pointer.sha1 is None or context != f"Patient/{pointer.patient_id}":
        return None
    meta = binary.get("meta") or {}
    for ext in meta.get("extension") or ():
        if isinstance(ext, Mapping) and ext.get("url") == UPLOADER_EXTENSION:
            uploader = ext.get("valueString")
            if isinstance(uploader, str):
                return pointer, uploader
    return None


def stored_binary(
    *,
    binary_id: str,
    content_type: str,
    document_id: str,
    patient_id: str,
    category: str,
    content: Content,
    security: list[dict[str, Any]],
) -> dict[str, Any]:
    """The Binary the store keeps for submitted content (no ``data``: the bytes are a blob)."""
    meta: dict[str, Any] = {
        "extension": _blob_meta(patient_id, content.sha256, content.size, content.sha1),
        "tag": [{"system": CATEGORY_SYSTEM, "code": category}],
    }
    if security:
        meta["security"] = security
    return {
        "resourceType": "Binary",
        "id": binary_id,
        "meta": meta,
        "contentType": content_type,
        "securityContext": {"reference": f"DocumentReference/{document_id}"},
    }


def strictest(categories: Iterable[str]) -> str:
    """The category the fewest columns of the access matrix read: a submission's lists (which name
    its documents) are as closely held as its most closely held document."""
    matrix = access_matrix()
    readers = {
        c: sum(1 for col in matrix.columns if c in matrix.readable_categories(col.code))
        for c in set(categories)
    }
    return min(sorted(readers), key=lambda c: readers[c])


def tag_category(resource: dict[str, Any], category: str) -> None:
    """Set the platform's category tag on ``resource`` (replacing one the client gave)."""
    meta = resource.setdefault("meta", {})
    tags = [
        t for t in meta.get("tag") or () if not (isinstance(t, dict) and t.get("system") == CATEGORY_SYSTEM)
    ]
    meta["tag"] = [*tags, {"system": CATEGORY_SYSTEM, "code": category}]


def pointer_of(binary: Mapping[str, Any]) -> BlobPointer | None:
    """The blob of a stored Binary, or None when it has none (its bytes are inline ``data``)."""
    meta = binary.get("meta")
    patient = digest = size = sha1 = None
    for ext in meta.get("extension") or () if isinstance(meta, Mapping) else ():
        if not isinstance(ext, Mapping):
            continue
        if ext.get("url") == PATIENT_EXTENSION:
            ref = (ext.get("valueReference") or {}).get("reference", "")
            patient = (
                ref.removeprefix("Patient/") if isinstance(ref, str) and ref.startswith("Patient/") else None
            )
        elif ext.get("url") == BLOB_EXTENSION:
            for part in ext.get("extension") or ():
                if part.get("url") == "digest":
                    digest = part.get("valueString")
                elif part.get("url") == "size":
                    size = part.get("valueInteger")
                elif part.get("url") == "sha1":
                    sha1 = part.get("valueBase64Binary")
    if isinstance(patient, str) and isinstance(digest, str) and isinstance(size, int):
        raw = base64.b64decode(sha1) if isinstance(sha1, str) else None
        return BlobPointer(patient, digest, size, raw)
    return None


def inline_data(binary: Mapping[str, Any]) -> bytes | None:
    """The bytes of a Binary stored with its ``data`` (written by plain FHIR clients)."""
    data = binary.get("data")
    if not isinstance(data, str):
        return None
    try:
        return base64.b64decode(data)
    except ValueError:
        return None


def security_codings(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The codings of a DocumentReference's ``securityLabel``, for its Binary's ``meta.security``."""
    out: list[dict[str, Any]] = []
    for concept in document.get("securityLabel") or ():
        for coding in concept.get("coding") or () if isinstance(concept, Mapping) else ():
            if isinstance(coding, Mapping) and coding.get("system") and coding.get("code"):
                out.append({"system": coding["system"], "code": coding["code"]})
    return out


# -- HTTP byte ranges (RFC 9110 §14) ---------------------------------------------------------------
class RangeNotSatisfiable(FhirError):
    """HTTP 416: no byte of the requested range exists (the answer names the content's size)."""

    def __init__(self, size: int) -> None:
        FhirError.__init__(self, f"The range is outside the content ({size} bytes)", (), [], 416, "invalid")
        self.size = size


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes ``[start, end)`` of a content of ``size`` bytes."""

    start: int
    end: int
    size: int

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end - 1}/{self.size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range a ``Range`` header asks for; None to send the whole content (no
    header, a header this server ignores: another unit, several ranges, bad syntax); raises
    ``RangeNotSatisfiable`` when no requested byte exists."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()):
        return None
    if last and not last.isdigit():
        return None
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return ByteRange(max(0, size - length), size, size)
    start = int(first)
    end = size if not last else min(int(last) + 1, size)
    if last and int(last) < start:
        return None  # invalid range: ignored (RFC 9110 §14.1.1)
    if start >= size:
        raise RangeNotSatisfiable(size)
    return ByteRange(start, end, size)
