"""Table definitions (SQLAlchemy Core). The schema itself is created only by Alembic migrations.

The FHIR store keeps every version of every resource in ``resource_version`` and the
current state in ``resource``; search runs on typed index tables that hold the values
extracted from the current version only. Every index row carries the owning row key
(``res_pk``) and the resource type and parameter code, so one composite index answers
"which resources of type T have parameter P with value V". Composite search parameters
reuse these tables: the rows of one composite value share a ``grp`` number.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants BIGINT identity.
PK = BigInteger().with_variant(Integer(), "sqlite")

resource = Table(
    "resource",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=False), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("content", Text, nullable=True),
    # the data category of the access matrix, set by the write path's classifier; NULL for
    # resources that are not patient data (directory, terminology)
    Column("category", String(40), nullable=True),
    # the strictest v3-Confidentiality code the resource carries (meta.security, securityLabel),
    # set by the store on write; the access decision narrows R and V to fewer readers
    Column("confidentiality", String(1), nullable=True),
    UniqueConstraint("type", "id"),
    Index("ix_resource_type_last_updated", "type", "last_updated"),
)

resource_version = Table(
    "resource_version",
    metadata,
    Column("vpk", PK, primary_key=True, autoincrement=True),
    Column("res_pk", BigInteger, ForeignKey("resource.pk", ondelete="CASCADE"), nullable=False),
    Column("type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=False), nullable=False),
    Column("method", String(8), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("content", Text, nullable=True),
    UniqueConstraint("res_pk", "version"),
    Index("ix_resource_version_last_updated", "last_updated"),
    Index("ix_resource_version_type_last_updated", "type", "last_updated"),
)


def _index_table(name: str, *columns: Column, indexes: tuple[Index, ...] = ()) -> Table:
    return Table(
        name,
        metadata,
        Column("res_pk", BigInteger, ForeignKey("resource.pk", ondelete="CASCADE"), nullable=False),
        Column("rtype", String(64), nullable=False),
        Column("param", String(100), nullable=False),
        Column("grp", Integer, nullable=True),
        *columns,
        Index(f"ix_{name}_res_pk", "res_pk"),
        *indexes,
    )


idx_string = _index_table(
    "idx_string",
    Column("norm", String(255), nullable=False),
    Column("exact", Text, nullable=False),
    indexes=(
        Index(
            "ix_idx_string_lookup",
            "rtype",
            "param",
            "norm",
            postgresql_ops={"norm": "text_pattern_ops"},
        ),
    ),
)

idx_token = _index_table(
    "idx_token",
    Column("system", String(255), nullable=True),
    Column("code", String(255), nullable=True),
    Column("text", String(255), nullable=True),
    indexes=(Index("ix_idx_token_lookup", "rtype", "param", "code", "system"),),
)

idx_date = _index_table(
    "idx_date",
    Column("low", DateTime(timezone=False), nullable=False),
    Column("high", DateTime(timezone=False), nullable=False),
    indexes=(Index("ix_idx_date_lookup", "rtype", "param", "low", "high"),),
)

idx_number = _index_table(
    "idx_number",
    Column("value", Float, nullable=False),
    indexes=(Index("ix_idx_number_lookup", "rtype", "param", "value"),),
)

idx_quantity = _index_table(
    "idx_quantity",
    Column("value", Float, nullable=False),
    Column("system", String(255), nullable=True),
    Column("code", String(255), nullable=True),
    Column("unit", String(255), nullable=True),
    indexes=(Index("ix_idx_quantity_lookup", "rtype", "param", "code", "value"),),
)

idx_reference = _index_table(
    "idx_reference",
    Column("target_type", String(64), nullable=True),
    Column("target_id", String(64), nullable=True),
    Column("url", Text, nullable=True),
    Column("ident_system", String(255), nullable=True),
    Column("ident_value", String(255), nullable=True),
    indexes=(
        Index("ix_idx_reference_lookup", "rtype", "param", "target_id", "target_type"),
        Index("ix_idx_reference_target", "target_id", "target_type"),
    ),
)

idx_uri = _index_table(
    "idx_uri",
    Column("value", Text, nullable=False),
    indexes=(
        Index("ix_idx_uri_lookup", "rtype", "param", "value", postgresql_ops={"value": "text_pattern_ops"}),
    ),
)

resource_compartment = Table(
    "resource_compartment",
    metadata,
    Column("res_pk", BigInteger, ForeignKey("resource.pk", ondelete="CASCADE"), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Index("ix_resource_compartment_patient", "patient_id", "res_pk"),
    # with the patient: "is this row in that record" (the access filter's check of each
    # candidate, the audit's owners) is answered from the index alone
    Index("ix_resource_compartment_res_pk_patient", "res_pk", "patient_id"),
)

INDEX_TABLES: dict[str, Table] = {
    "string": idx_string,
    "token": idx_token,
    "date": idx_date,
    "number": idx_number,
    "quantity": idx_quantity,
    "reference": idx_reference,
    "uri": idx_uri,
}
