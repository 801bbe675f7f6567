"""Content in an S3-compatible object store (production), through boto3 and a plain S3 subset.

Only PutObject, the multipart upload calls, CopyObject, GetObject with Range, HeadObject,
ListObjectsV2 and DeleteObjects are used, so AWS S3, MinIO, Ceph RGW or OpenStack Swift with
``s3api`` all work (the tests run against a real Swift cluster). Objects are named
``<namespace>/<digest>``.

Atomicity: an object appears whole or not at all. A blob up to one part (8 MiB) is buffered
and sent in one PutObject, under its final name (its digest is known by then). A larger one is
streamed as a multipart upload to ``<namespace>/.incoming/<random>``, one part in memory at a
time, completed (atomic in S3), then copied server-side to its final name and the temporary
object deleted; a failed upload is aborted. Readers never see a partial blob under a digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from sharedcare.storage.blobstore import (
    CHUNK,
    BlobCorrupted,
    BlobError,
    BlobInfo,
    BlobNotFound,
    Hashing,
    check_names,
)

PART = 8 * 1024 * 1024
"""Bytes per multipart part (S3 wants at least 5 MiB for every part but the last)."""
INCOMING = ".incoming"
_MISSING = {"404", "NoSuchKey", "NotFound"}


def make_client(
    *,
    endpoint: str | None,
    access_key: str | None,
    secret_key: str | None,
    region: str | None,
) -> Any:
    """A boto3 S3 client for the plain subset: path-style addressing when an endpoint is given
    (S3-compatible services), checksums only where S3 requires them (not every service knows
    the newer ones; the store checks SHA-256 itself)."""
    config = Config(
        s3={"addressing_style": "path" if endpoint else "auto"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 5, "mode": "standard"},
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=config,
    )


def _missing(err: ClientError) -> bool:
    return str(err.response.get("Error", {}).get("Code")) in _MISSING


class S3BlobStore:
    """Blobs as objects ``<namespace>/<digest>`` of one bucket (see the module docstring)."""

    def __init__(self, client: Any, bucket: str, *, part_size: int = PART) -> None:
        if part_size < 5 * 1024 * 1024:
            raise ValueError("S3 parts are at least 5 MiB")
        self.client = client
        self.bucket = bucket
        self.part_size = part_size

    def _key(self, namespace: str, digest: str) -> str:
        check_names(namespace, digest)
        return f"{namespace}/{digest}"

    def put(self, namespace: str, chunks: Iterable[bytes], *, max_size: int | None = None) -> BlobInfo:
        hashing = Hashing(max_size)
        self.put_named(namespace, hashing.passing(chunks), hashing.digest)
        return hashing.info(namespace)

    def put_named(self, namespace: str, chunks: Iterable[bytes], name: Callable[[], str]) -> int:
        check_names(namespace)
        source = iter(chunks)
        part = bytearray()
        for chunk in source:
            part += chunk
            if len(part) >= self.part_size:
                break
        else:  # all of it fits one part: one PutObject under the final name
            self.client.put_object(Bucket=self.bucket, Key=self._key(namespace, name()), Body=bytes(part))
            return len(part)
        temporary = f"{namespace}/{INCOMING}/{uuid.uuid4().hex}"
        size = self._multipart(temporary, part, source)
        try:
            self.client.copy_object(
                Bucket=self.bucket,
                Key=self._key(namespace, name()),
                CopySource={"Bucket": self.bucket, "Key": temporary},
            )
        finally:
            self.client.delete_object(Bucket=self.bucket, Key=temporary)
        return size

    def _multipart(self, key: str, first: bytearray, rest: Iterator[bytes]) -> int:
        """Upload ``first`` then ``rest`` to ``key`` one part at a time; return the size."""
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        parts: list[dict[str, Any]] = []
        size = 0

        def send(body: bytes) -> None:
            number = len(parts) + 1
            answer = self.client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=number, Body=body
            )
            parts.append({"ETag": answer["ETag"], "PartNumber": number})

        try:
            part = first
            for chunk in rest:
                if len(part) >= self.part_size:
                    size += len(part)
                    send(bytes(part))
                    part = bytearray()
                part += chunk
            size += len(part)
            send(bytes(part))
            del part
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            with contextlib.suppress(ClientError):  # else delete_namespace aborts it later
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
            raise
        return size

    def size(self, namespace: str, digest: str) -> int:
        key = self._key(namespace, digest)
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as err:
            if _missing(err):
                raise BlobNotFound(key) from None
            raise

    def open(self, namespace: str, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        body = self._get(namespace, digest, start, end)
        check = hashlib.sha256() if start == 0 and end is None else None
        return self._read(body, digest, check)

    def open_raw(
        self, namespace: str, digest: str, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        return self._read(self._get(namespace, digest, start, end), digest, None)

    def _get(self, namespace: str, digest: str, start: int, end: int | None) -> Any:
        """The object's body stream for ``[start, end)`` (None for an empty range); raise
        BlobNotFound at once, before any byte is read."""
        key = self._key(namespace, digest)
        start = max(0, start)
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if end is not None and end <= start:
            self.size(namespace, digest)
            return None
        if start or end is not None:
            args["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            return self.client.get_object(**args)["Body"]
        except ClientError as err:
            if _missing(err):
                raise BlobNotFound(key) from None
            if err.response.get("Error", {}).get("Code") == "InvalidRange":
                return None  # the range starts past the end: nothing to read
            raise

    @staticmethod
    def _read(body: Any, digest: str, check: Any) -> Iterator[bytes]:
        if body is None:
            return
        with body:
            for chunk in body.iter_chunks(CHUNK):
                if check is not None:
                    check.update(chunk)
                yield chunk
        if check is not None and check.hexdigest() != digest:
            raise BlobCorrupted(f"blob {digest} does not match its digest")

    def delete(self, namespace: str, digest: str) -> bool:
        try:
            self.size(namespace, digest)
        except BlobNotFound:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self._key(namespace, digest))
        return True

    def delete_namespace(self, namespace: str) -> int:
        check_names(namespace)
        prefix = f"{namespace}/"
        count = 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [item["Key"] for item in page.get("Contents", [])]
            for start in range(0, len(keys), 1000):
                batch = keys[start : start + 1000]
                answer = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                )
                if answer.get("Errors"):
                    raise BlobError(f"{len(answer['Errors'])} objects of {namespace} not deleted")
                count += sum(1 for k in batch if not k.startswith(f"{prefix}{INCOMING}/"))
        self._abort_uploads(prefix)
        return count

    def _abort_uploads(self, prefix: str) -> None:
        """Abort multipart uploads left under ``prefix`` by interrupted puts (their parts cost
        storage and hold content)."""
        answer = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        for upload in answer.get("Uploads", []):
            try:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
            except ClientError as err:
                if not _missing(err) and err.response.get("Error", {}).get("Code") != "NoSuchUpload":
                    raise
