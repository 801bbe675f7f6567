"""audit: archiving and deletion of access traces with their record

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# Deleting a record's traces (art. 8) moves each record's hashes to ``audit_tombstone`` and
# deletes the row. On PostgreSQL the triggers allow exactly that, and only inside a
# transaction that set ``sharedcare.audit_redaction`` to 'on' (``audit.retention`` does, with
# set_config(…, true), for the statements of one redaction): a DELETE of an audit record is
# refused unless its tombstone, with the same chain, seq and hashes, is already written; a
# tombstone is refused unless it mirrors an existing record and names a ``delete-traces``
# record. UPDATE stays refused on both tables. SQLite (test and embedded profile) keeps its
# UPDATE-only triggers, as in 0004.
PG_APPEND_ONLY = """
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE'
       AND current_setting('sharedcare.audit_redaction', true) = 'on'
       AND EXISTS (
           SELECT 1 FROM audit_tombstone t
           WHERE t.pk = OLD.pk AND t.chain = OLD.chain AND t.seq = OLD.seq
             AND t.prev_hash = OLD.prev_hash AND t.hash = OLD.hash
       ) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP;
END
$$
"""
PG_APPEND_ONLY_0004 = """
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP;
END
$$
"""
PG_TOMBSTONE_FUNCTION = """
CREATE FUNCTION audit_tombstone_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT'
       AND current_setting('sharedcare.audit_redaction', true) = 'on'
       AND EXISTS (
           SELECT 1 FROM audit_log a
           WHERE a.pk = NEW.pk AND a.chain = NEW.chain AND a.seq = NEW.seq
             AND a.prev_hash = NEW.prev_hash AND a.hash = NEW.hash
       )
       AND EXISTS (
           SELECT 1 FROM audit_log r WHERE r.pk = NEW.redacted_by AND r.interaction = 'delete-traces'
       ) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_tombstone is written only by a redaction: % refused', TG_OP;
END
$$
"""
PG_TOMBSTONE_TRIGGER = """
CREATE TRIGGER audit_tombstone_guard BEFORE INSERT OR UPDATE OR DELETE ON audit_tombstone
FOR EACH ROW EXECUTE FUNCTION audit_tombstone_guard()
"""
SQLITE_TOMBSTONE_TRIGGER = """
CREATE TRIGGER audit_tombstone_guard BEFORE UPDATE ON audit_tombstone
BEGIN SELECT RAISE(ABORT, 'audit_tombstone is written only by a redaction: UPDATE refused'); END
"""


def upgrade() -> None:
    pk = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "audit_tombstone",
        sa.Column("pk", pk, autoincrement=False, nullable=False),
        sa.Column("chain", sa.SmallInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("redacted_by", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_audit_tombstone")),
        sa.UniqueConstraint("chain", "seq", name=op.f("uq_audit_tombstone_chain_seq")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_APPEND_ONLY)
        op.execute(PG_TOMBSTONE_FUNCTION)
        op.execute(PG_TOMBSTONE_TRIGGER)
    else:
        op.execute(SQLITE_TOMBSTONE_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_tombstone_guard ON audit_tombstone")
        op.execute("DROP FUNCTION IF EXISTS audit_tombstone_guard()")
        op.execute(PG_APPEND_ONLY_0004)
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_tombstone_guard")
    op.drop_table("audit_tombstone")
