"""Storage: database engine, tables and migrations. Knows nothing of FHIR, policy or HTTP."""
