"""Time-based one-time passwords (RFC 6238): the second factor of every person's account.

Standard authenticator-app settings (SHA-1, 6 digits, 30 s) because those are what every app
supports. A code is accepted in the current step or one step either side (clock drift), and
:func:`matching_step` returns the step it belongs to so that the caller can refuse any code of a
step not later than the last accepted one: a code seen once (shoulder-surfed, phished, replayed)
is useless afterwards.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime

import pyotp
import segno

ISSUER = "SharedCare"
WINDOW = 1
"""Steps accepted either side of the current one."""
STEP_SECONDS = 30


def new_secret() -> str:
    """A fresh random base32 secret (160 bits, as RFC 4226 recommends)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, account_name: str) -> str:
    """The ``otpauth://`` URI an authenticator app reads from the QR code."""
    return pyotp.TOTP(secret).provisioning_uri(name=account_name, issuer_name=ISSUER)


def qr_svg(uri: str) -> str:
    """The QR code of ``uri`` as an inline ``<svg>`` element (no external image, no JavaScript)."""
    return str(
        segno.make(uri, error="m").svg_inline(
            scale=4, title="QR code for your authenticator app", svgclass="totp-qr"
        )
    )


def _aware(now: datetime) -> datetime:
    # pyotp reads naive datetimes as local time; our naive datetimes are UTC.
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now


def current_step(now: datetime) -> int:
    """The RFC 6238 time step (counter) of ``now``; naive datetimes are UTC."""
    return int(_aware(now).timestamp()) // STEP_SECONDS


def matching_step(
    secret: str, code: str, now: datetime, *, after: int | None = None, window: int = WINDOW
) -> int | None:
    """The time step within ``window`` steps of ``now`` whose code is ``code``, or ``None``.

    Only steps later than ``after`` (the last accepted step) count: that is the replay refusal.
    Spaces in ``code`` are ignored (apps show ``123 456``); comparison is constant time.
    """
    code = "".join(code.split())
    totp = pyotp.TOTP(secret)
    if len(code) != totp.digits or not code.isdigit():
        return None
    step = current_step(now)
    found = None
    for candidate in range(step - window, step + window + 1):
        fresh = after is None or candidate > after
        if hmac.compare_digest(totp.generate_otp(candidate), code) and fresh and found is None:
            found = candidate
    return found
