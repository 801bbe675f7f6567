"""Every module's tables on the one shared ``MetaData``: import this to see the whole schema.

Each module owns its tables (``<module>/models.py``); this list is the only place that knows
them all, for Alembic's autogenerate, the schema test and the test helpers.
"""

from __future__ import annotations

from sharedcare.access import models as access_models
from sharedcare.audit import models as audit_models
from sharedcare.identity import models as identity_models
from sharedcare.notify import models as notify_models
from sharedcare.oauth import models as oauth_models
from sharedcare.storage import models as storage_models
from sharedcare.storage.tables import metadata
from sharedcare.vaccination import models as vaccination_models

MODULES = (
    access_models,
    audit_models,
    identity_models,
    notify_models,
    oauth_models,
    storage_models,
    vaccination_models,
)

__all__ = ["MODULES", "metadata"]
