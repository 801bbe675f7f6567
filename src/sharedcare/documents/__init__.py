"""Documents in the shared record, through IHE MHD 4 (FHIR R4); see ``docs/documents.md``.

- ``mhd``: reading and checking a Provide Document Bundle (ITI-65) before anything is stored;
- ``submission``: filing it: resources through the transaction processor, bytes to the blob store;
- ``retrieve``: ITI-68, a Binary's bytes as the caller's access decision allows (HTTP: ``api.documents``);
- ``lifecycle``: replace, append, transform, deprecate, entered-in-error;
- ``content``: how a stored Binary points at its blob and inherits its document's category;
- ``categories``: the accepted document types and the categories a patient recognises.

ITI-66 and ITI-67 are the generic FHIR search, with MHD's own parameters added to the
definitions (``fhir/data/search-parameters-local.json``).
"""
