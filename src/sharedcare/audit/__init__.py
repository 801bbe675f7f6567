"""Audit: the hash-chained, append-only record of every act, and its BALP AuditEvent view."""
