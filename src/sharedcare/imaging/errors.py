"""Why a study's images cannot be shown: one named error per case, each with its HTTP status.

``message`` is English text that is also the portal's catalogue msgid (``portal.views.imaging``
lists them for extraction and shows them translated);
``detail`` adds what an API client may be told (never the image server's address or
credentials). The FHIR API maps each error to an OperationOutcome in ``imaging.views``.
"""

from __future__ import annotations


class ImagingError(Exception):
    """A study's images cannot be shown; ``status`` and ``code`` are the HTTP status and the
    OperationOutcome issue type."""

    status = 400
    code = "invalid"
    message = "The images of this study cannot be shown"

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__(f"{self.message}: {detail}" if detail else self.message)


class InvalidUid(ImagingError):
    """A series or instance parameter that is not a DICOM UID: refused before anything is read."""

    message = "This is not a valid DICOM UID"


class NotInStudy(ImagingError):
    """The series or image asked for is not part of the study: it is never fetched."""

    status = 404
    code = "not-found"
    message = "This series or image is not part of the study"


class NoImages(ImagingError):
    """The ImagingStudy does not say which DICOM study it is, or where its images are."""

    status = 422
    code = "processing"
    message = "The record does not say where the images of this study are"


class UnknownServer(ImagingError):
    """The study's Endpoint is not one of the DICOMweb servers the platform is configured to
    reach: the proxy never goes to an address taken from the record alone."""

    status = 422
    code = "not-supported"
    message = "The images of this study are on a server the platform is not configured to reach"


class ServerUnreachable(ImagingError):
    status = 502
    code = "transient"
    message = "The hospital's image server cannot be reached at the moment. Please try again later."


class ServerTimeout(ImagingError):
    status = 504
    code = "timeout"
    message = "The hospital's image server did not answer in time. Please try again later."


class ServerFailure(ImagingError):
    """The image server answered, but not with what was asked (an error, a refusal of the
    platform's credentials, an unexpected content type)."""

    status = 502
    code = "exception"
    message = "The hospital's image server gave an unexpected answer."


class NotOnServer(ImagingError):
    """The study names the image, but the image server does not hold it (any more)."""

    status = 404
    code = "not-found"
    message = "The image server does not hold this image."


class TooLarge(ImagingError):
    status = 502
    code = "too-costly"
    message = "This image is too large to be shown here."
