"""FHIR search: one module per parameter type (index values + SQL condition), a parser and a compiler."""
