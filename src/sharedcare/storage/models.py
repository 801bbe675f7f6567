"""Tables of the content store: the per-record data keys that encrypt document content.

A data key is stored only wrapped (AES-GCM) by a master key from the settings, never in clear;
deleting its row makes every blob of that record unreadable at once (crypto-shredding).
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, LargeBinary, String, Table

from sharedcare.storage.tables import metadata

content_key = Table(
    "content_key",
    metadata,
    Column("namespace", String(64), primary_key=True),  # the blob namespace: the patient id
    Column("master_key_id", String(32), nullable=False),
    Column("wrapped", LargeBinary, nullable=False),  # AES-GCM nonce (12) + ciphertext and tag (48)
    Column("created", DateTime(timezone=False), nullable=False),
    Column("wrapped_at", DateTime(timezone=False), nullable=False),
    Index("ix_content_key_master_key_id", "master_key_id"),
)
"""One data key per record (blob namespace), wrapped by the master key ``master_key_id``;
``sharedcare keys rotate`` re-wraps the rows of older master keys under the newest one."""
