"""Limit failed attempts at the token, revocation and introspection endpoints (docs/oauth.md).

Two answers count as failures: ``invalid_client`` (a wrong ``client_secret_basic`` secret, a
``private_key_jwt`` assertion that does not verify, is replayed or names another audience) and
``invalid_grant`` (an authorization code or refresh token that is unknown, used, expired or
revoked). They are counted with ``identity.throttle`` in ``attempt_throttle``, so the limit holds
across worker processes and restarts:

- per **source address**: every counted failure, ``token_max_failures_per_address`` of them;
- per **client**: failures of a registered client that authenticates with a secret or a key,
  ``token_max_failures`` of them. Public clients (no credential) are counted per address only:
  anyone may send their ``client_id``, so a per-client lock would let anyone lock an app out
  for all its users.

Failures more than ``token_lockout_seconds`` apart start a new count; the failure that reaches a
limit locks for ``token_lockout_seconds``. While locked, requests are refused before any
credential is checked (even right ones, otherwise a guesser would still learn when a guess is
right) with ``429``, ``Retry-After`` and ``{"error": "slow_down"}``. Successful requests cost one
indexed read and are never delayed; a success clears its client's count.

Each counted failure leaves an audit record (LOGIN, outcome 4) naming the registered client it
claimed, or nobody when the ``client_id`` is unknown (the text may be a secret sent in the wrong
field). Requests refused while locked leave none: they test no credential, and recording them
would let a flood of refusals grow the audit log.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from urllib.parse import unquote

import orjson
from sqlalchemy import Connection, Engine
from starlette.datastructures import Headers
from starlette.responses import Response

from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit import log as audit
from sharedcare.identity import throttle
from sharedcare.oauth.clients import OAuthClient, get_client
from sharedcare.settings import Settings
from sharedcare.storage.engine import writer

CLIENT = "token-client"
ADDRESS = "token-address"
COUNTED = frozenset({"invalid_client", "invalid_grant"})
MAX_CLIENT_ID = 128
"""Longest registered client id (``oauth_client.client_id``); longer claims name no client."""


@dataclass(frozen=True, slots=True)
class TokenAttempt:
    """Who a request at an authenticating endpoint says it comes from, before anything is checked."""

    endpoint: str
    """``token``, ``revoke`` or ``introspect``: the audit record's interaction."""
    client_id: str | None
    """The client id the request claims (Basic header, form, or assertion), unverified."""
    address: str | None
    user_agent: str | None = None
    request_id: str | None = None


def _basic_client_id(authorization: str) -> str | None:
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, _secret = decoded.partition(":")
    return unquote(client_id) if sep else None


def _assertion_client_id(assertion: str) -> str | None:
    """The ``sub`` (else ``iss``) of a client assertion, read without verifying it."""
    parts = assertion.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    claimed = claims.get("sub") or claims.get("iss") if isinstance(claims, dict) else None
    return claimed if isinstance(claimed, str) else None


def attempt_of(endpoint: str, headers: Headers, form: dict[str, str], address: str | None) -> TokenAttempt:
    """The attempt a request makes: its claimed client id, source address and request headers."""
    claimed = _basic_client_id(headers.get("authorization", ""))
    if claimed is None:
        claimed = form.get("client_id") or None
    if claimed is None and form.get("client_assertion"):
        claimed = _assertion_client_id(form["client_assertion"])
    if claimed is not None and not (0 < len(claimed) <= MAX_CLIENT_ID):
        claimed = None
    return TokenAttempt(
        endpoint=endpoint,
        client_id=claimed,
        address=address,
        user_agent=headers.get("user-agent"),
        request_id=headers.get("x-request-id"),
    )


def _rules(settings: Settings) -> tuple[throttle.Rule, throttle.Rule]:
    """The per-client and per-address rules."""
    lockout = timedelta(seconds=settings.token_lockout_seconds)
    return (
        throttle.Rule(settings.token_max_failures, lockout, window=lockout),
        throttle.Rule(settings.token_max_failures_per_address, lockout, window=lockout),
    )


def _error_of(response: Response) -> str | None:
    """The OAuth ``error`` of a refused answer, if it is one the limit counts."""
    if response.status_code < 400:
        return None
    try:
        body = orjson.loads(bytes(response.body))
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if error in COUNTED else None


def slow_down(until: datetime, now: datetime) -> Response:
    """``429`` with ``Retry-After`` and the OAuth error ``slow_down`` (RFC 8628 §3.5 wording)."""
    retry = max(1, math.ceil((until - now) / timedelta(seconds=1)))
    body = {
        "error": "slow_down",
        "error_description": f"Too many failed attempts; retry after {retry} seconds",
    }
    headers = {"Retry-After": str(retry), "Cache-Control": "no-store", "Pragma": "no-cache"}
    return Response(orjson.dumps(body), status_code=429, media_type="application/json", headers=headers)


def _failure_record(
    attempt: TokenAttempt, client: OAuthClient | None, error: str, locked: datetime | None
) -> audit.AuditRecord:
    who = Principal(
        kind=PrincipalKind.SYSTEM,
        subject=client.client_id if client else "unknown",
        display=client.name if client else "",
        organization_id=client.organization_id if client else None,
        client_id=client.client_id if client else None,
    )
    record = audit.record_for(
        who,
        audit.AuditAction.LOGIN,
        interaction=attempt.endpoint,
        outcome=audit.AuditOutcome.MINOR_FAILURE,
        outcome_desc=error + ("; locked" if locked else ""),
        source_ip=attempt.address,
        user_agent=attempt.user_agent,
        request_id=attempt.request_id,
    )
    return record if client else replace(record, principal_kind="unknown", client_id=None)


def record_failure(
    conn: Connection, settings: Settings, attempt: TokenAttempt, error: str, now: datetime
) -> datetime | None:
    """Count a failed attempt and audit it; the end of the lock when this failure locks."""
    per_client, per_address = _rules(settings)
    client = get_client(conn, attempt.client_id) if attempt.client_id else None
    locks: list[datetime | None] = []
    if client is not None and client.token_endpoint_auth_method != "none":
        locks.append(throttle.failure(conn, CLIENT, client.client_id, per_client, now))
    if attempt.address:
        locks.append(throttle.failure(conn, ADDRESS, attempt.address, per_address, now))
    until = max((u for u in locks if u is not None), default=None)
    audit.append(conn, _failure_record(attempt, client, error, until))
    return until


def guard(
    engine: Engine, settings: Settings, attempt: TokenAttempt, now: datetime, action: Callable[[], Response]
) -> Response:
    """Serve ``action`` unless the client or the address is locked; count it if it fails.

    ``now`` is naive UTC (the stored form).
    """
    with engine.connect() as conn:
        address = throttle.counter(conn, ADDRESS, attempt.address, now) if attempt.address else None
        client = throttle.counter(conn, CLIENT, attempt.client_id, now) if attempt.client_id else None
    locks = [c.locked_until for c in (address, client) if c is not None and c.locked_until is not None]
    if locks:
        return slow_down(max(locks), now)
    response = action()
    error = _error_of(response)
    if error is not None:
        with writer(engine).begin() as conn:
            until = record_failure(conn, settings, attempt, error, now)
        return slow_down(until, now) if until is not None else response
    if response.status_code < 400 and client is not None and attempt.client_id:
        with writer(engine).begin() as conn:
            throttle.clear(conn, CLIENT, attempt.client_id)
    return response
