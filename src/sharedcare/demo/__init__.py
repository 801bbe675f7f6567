"""Demo data: a small, realistic Luxembourg population as one FHIR transaction Bundle.

It lives in the package (not in tests) because ``sharedcare seed``, the portal demo and the end-to-end
scenarios all load the same data, and because it must stay valid as the platform evolves.
"""
