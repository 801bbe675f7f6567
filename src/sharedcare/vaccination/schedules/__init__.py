"""National schedules converted into the CDSi model (``vaccination.cdsi.model``).

``lu``: the Luxembourg schedule from the team's YAML draft, registered as ``load_schedule("lu")``;
``codings``: coded FHIR data (conditions, pregnancy status, occupation) → observation codings;
``provenance``: which forecasts rest on unconfirmed ([I]) schedule data. See
docs/vaccination-schedules.md.
"""
