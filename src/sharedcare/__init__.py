"""SharedCare: a national shared health record platform built on FHIR R4."""

__version__ = "0.1.0"
