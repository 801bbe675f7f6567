"""Imaging: ``ImagingStudy`` resources point at the hospitals' DICOMweb servers; patients and
professionals open a study's series and previews through an access-checked, audited proxy.

- ``errors``: named failures (a UID not in the study, the image server down…), each with its
  HTTP status; the API turns them into OperationOutcomes, the portal into messages;
- ``endpoints``: the DICOMweb servers the platform may reach (settings), and which one an
  ``ImagingStudy`` names (its ``Endpoint``, ``connectionType`` ``dicom-wado-rs``);
- ``client``: QIDO-RS and rendered WADO-RS over httpx, with time-outs and size caps;
- ``studies``: a study read through the caller's access decision (and audited), and the
  checks that keep the proxy from relaying anything outside that study;
- ``views``: ``GET /fhir/ImagingStudy/[id]/$series`` and ``$preview``.

See ``docs/imaging.md``.
"""
