"""Named FHIR errors; the HTTP layer turns each into an OperationOutcome with its status code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome issue."""

    severity: str
    code: str
    diagnostics: str
    expression: tuple[str, ...] = ()

    def to_fhir(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = list(self.expression)
        return out


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    """An OperationOutcome resource holding ``issues``."""
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


@dataclass
class FhirError(Exception):
    """A failure that maps onto one HTTP status and an OperationOutcome."""

    diagnostics: str
    expression: tuple[str, ...] = ()
    issues: list[Issue] = field(default_factory=list)
    status: int = 400
    code: str = "invalid"

    def __post_init__(self) -> None:
        Exception.__init__(self, self.diagnostics)

    def outcome(self) -> dict[str, Any]:
        issues = self.issues or [Issue("error", self.code, self.diagnostics, self.expression)]
        return operation_outcome(issues)

    def __str__(self) -> str:
        return self.diagnostics


def _error(name: str, status: int, code: str) -> type[FhirError]:
    def init(self: FhirError, diagnostics: str, expression: tuple[str, ...] = (), issues: Any = None) -> None:
        FhirError.__init__(self, diagnostics, expression, list(issues or []), status, code)

    return type(name, (FhirError,), {"__init__": init, "__doc__": f"HTTP {status}, issue type {code}."})


BadRequest = _error("BadRequest", 400, "invalid")
NotFound = _error("NotFound", 404, "not-found")
Gone = _error("Gone", 410, "deleted")
MethodNotAllowed = _error("MethodNotAllowed", 405, "not-supported")
Conflict = _error("Conflict", 409, "conflict")
PreconditionFailed = _error("PreconditionFailed", 412, "conflict")
Unprocessable = _error("Unprocessable", 422, "processing")
NotSupported = _error("NotSupported", 400, "not-supported")
PayloadTooLarge = _error("PayloadTooLarge", 413, "too-costly")
TooCostly = _error("TooCostly", 400, "too-costly")
MultipleMatches = _error("MultipleMatches", 412, "multiple-matches")
Unauthorized = _error("Unauthorized", 401, "login")
Forbidden = _error("Forbidden", 403, "forbidden")
BusinessRule = _error("BusinessRule", 422, "business-rule")
