"""Who a person is: the Luxembourg national identifier (matricule) and, later, the master patient index.

Identity is kept apart from the FHIR store because every other module (access, cross-border, portal)
must agree on one way to parse and check the national identifier before it ever reaches a search.
"""
