"""The generic FHIR R4 resource store: versions, search index, search, bundles, operations."""
