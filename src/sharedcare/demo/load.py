"""Load the demo population into a database (``sharedcare seed``, first start of ``make run``)."""

from __future__ import annotations

from sqlalchemy import Engine, select

from sharedcare.access.policy import category_of
from sharedcare.fhir.bundle import BundleProcessor
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.validation import store_issues
from sharedcare.storage.tables import resource


def load_demo(engine: Engine, seed: int | None = None) -> int:
    """Write the demo bundle as one transaction (idempotent: ids are fixed); returns its size."""
    from sharedcare.demo.seed import build_demo_bundle

    bundle = build_demo_bundle() if seed is None else build_demo_bundle(seed=seed)
    BundleProcessor(FhirService(engine, validator=store_issues, classify=category_of)).transaction(bundle)
    return len(bundle.get("entry", []))


def load_demo_if_empty(engine: Engine) -> int:
    """Load the demo data when the database holds no patient yet; returns how many were loaded."""
    with engine.connect() as conn:
        if conn.execute(select(resource.c.pk).where(resource.c.type == "Patient").limit(1)).first():
            return 0
    return load_demo(engine)
