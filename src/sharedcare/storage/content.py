"""The content store the application uses, built from the settings: a back end (local files or
S3) wrapped in encryption under the records' data keys (docs/storage.md)."""

from __future__ import annotations

from sqlalchemy import Engine

from sharedcare.settings import Settings
from sharedcare.storage.blobstore import FileBlobStore, RawBlobStore
from sharedcare.storage.crypto import EncryptedBlobStore, KeyRing, master_keys


class StorageConfigError(ValueError):
    """The content store settings are incomplete."""


def make_backend(settings: Settings) -> RawBlobStore:
    """The back end alone, holding ciphertext: for deleting a purged record's blobs, or for
    tools that move stored bytes as they are."""
    if settings.blob_backend == "s3":
        from sharedcare.storage.s3 import S3BlobStore, make_client

        if not settings.s3_bucket:
            raise StorageConfigError("SHAREDCARE_S3_BUCKET is required with SHAREDCARE_BLOB_BACKEND=s3")
        secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
        client = make_client(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=secret,
            region=settings.s3_region,
        )
        return S3BlobStore(client, settings.s3_bucket)
    return FileBlobStore(settings.data_dir / "blobs")


def make_blob_store(settings: Settings, engine: Engine) -> EncryptedBlobStore:
    """The application's content store: ``make_backend`` encrypted with the data keys kept in
    ``engine``'s database, wrapped by the settings' master keys."""
    return EncryptedBlobStore(make_backend(settings), KeyRing(engine, master_keys(settings)))
