"""Migration 0019 on a database written before 0016's store: a document's Binary gets its
document's confidentiality, a DocumentReference authored through a contained PractitionerRole
gets the role's author index rows; other rows are left alone, and a second run changes nothing."""

from __future__ import annotations

import importlib
from typing import Any

import orjson
from sqlalchemy import Engine, text
from test_migration_0017 import NOW, fresh  # noqa: F401  (the fixture: a new database per engine)

from sharedcare.documents.content import UPLOADER_EXTENSION
from sharedcare.storage.migrate import upgrade

V_LABEL = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "V"}]}]


def _insert(engine: Engine, pk: int, res: dict[str, Any], confidentiality: str | None) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO resource (pk, type, id, version, last_updated, deleted, content, category, "
                "confidentiality) VALUES (:pk, :type, :id, 1, :now, false, :content, 'care-reports', :conf)"
            ),
            {
                "pk": pk,
                "type": res["resourceType"],
                "id": res["id"],
                "now": NOW,
                "content": orjson.dumps(res).decode(),
                "conf": confidentiality,
            },
        )


def _document(rid: str, label: list[dict[str, Any]] | None, contained: bool) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": rid,
        "status": "current",
        "subject": {"reference": "Patient/pa"},
        "content": [{"attachment": {"url": f"Binary/b-{rid}"}}],
    }
    if label:
        res["securityLabel"] = label
    if contained:
        res["contained"] = [
            {
                "resourceType": "PractitionerRole",
                "id": "role",
                "practitioner": {"reference": "Practitioner/gp"},
                "organization": {"reference": "Organization/hosp1"},
            }
        ]
        res["author"] = [{"reference": "#role"}]
    else:
        res["author"] = [{"reference": "Practitioner/gp2"}]
    return res


def _binary(rid: str, document: str) -> dict[str, Any]:
    return {
        "resourceType": "Binary",
        "id": rid,
        "contentType": "application/pdf",
        "securityContext": {"reference": f"DocumentReference/{document}"},
    }


def test_0019_backfills_binary_confidentiality_and_contained_authors(fresh: Engine) -> None:  # noqa: F811
    upgrade(fresh, "0018")
    _insert(fresh, 1, _document("secret", V_LABEL, contained=True), "V")
    _insert(fresh, 2, _binary("b-secret", "secret"), None)  # old shape: not the document's V
    _insert(fresh, 3, _document("plain", None, contained=False), None)
    _insert(fresh, 4, _binary("b-plain", "plain"), None)
    _insert(fresh, 5, {"resourceType": "Binary", "id": "loose", "contentType": "text/plain"}, None)
    pending = {
        "resourceType": "Binary",
        "id": "pending",
        "contentType": "application/pdf",
        "meta": {"extension": [{"url": UPLOADER_EXTENSION, "valueString": "lab-system"}]},
    }
    _insert(fresh, 6, pending, None)  # an upload no document claimed: care-reports before 0019
    with fresh.begin() as conn:  # the plain document's author row exists already (not contained)
        conn.execute(
            text(
                "INSERT INTO idx_reference (res_pk, rtype, param, target_type, target_id) "
                "VALUES (3, 'DocumentReference', 'author', 'Practitioner', 'gp2')"
            )
        )
    upgrade(fresh)

    def state() -> tuple[dict[str, str | None], list[tuple[Any, ...]]]:
        with fresh.connect() as conn:
            levels = {
                r.id: r.confidentiality
                for r in conn.execute(text("SELECT id, confidentiality FROM resource"))
            }
            authors = sorted(
                tuple(r)
                for r in conn.execute(
                    text("SELECT res_pk, target_type, target_id FROM idx_reference WHERE param = 'author'")
                )
            )
        return levels, authors

    levels, authors = state()
    assert levels == {
        "secret": "V",
        "b-secret": "V",
        "plain": None,
        "b-plain": None,
        "loose": None,
        "pending": None,
    }
    with fresh.connect() as conn:
        categories = dict(conn.execute(text("SELECT id, category FROM resource WHERE type = 'Binary'")).all())
    assert categories == {
        "b-secret": "care-reports",
        "b-plain": "care-reports",
        "loose": "care-reports",
        "pending": "unfiled",
    }
    assert authors == [(1, "Organization", "hosp1"), (1, "Practitioner", "gp"), (3, "Practitioner", "gp2")]
    # idempotent: running its steps again (a retried migration) adds and changes nothing
    migration = importlib.import_module("sharedcare.storage.migrations.versions.0019_backfill")
    with fresh.begin() as conn:
        migration._binary_confidentiality(conn)
        migration._contained_authors(conn)
        migration._pending_uploads(conn)
    assert state() == (levels, authors)
