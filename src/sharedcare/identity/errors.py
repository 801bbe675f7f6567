"""Named errors of the account services; the portal and the OAuth server translate each in one place.

Every error has a stable ``code`` (for message catalogues and logs) and an English message for
operators. None carries a password, a code or health data.

Invariant kept by ``identity.accounts``: a service raises an :class:`IdentityError` only before it
has written anything but attempt counters. Failed attempts are therefore recorded in the caller's
transaction, which must be **committed** even when the call raises; ``accounts.transaction``
does that.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta


class IdentityError(Exception):
    """Base class of the account errors."""

    code = "identity-error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__doc__ or self.code)


class InvalidIdentifier(IdentityError, ValueError):
    """The matricule or login name is malformed; the message says what is wrong, for the person typing it."""

    code = "invalid-identifier"


class InvalidContact(IdentityError, ValueError):
    """The contact given at activation is neither a usable e-mail address nor a mobile number."""

    code = "invalid-contact"


class InvalidAccountData(IdentityError, ValueError):
    """An account cannot be created or changed with these values (missing ids, unknown language...)."""

    code = "invalid-account-data"


class AccountExists(IdentityError):
    """Another account already uses this matricule or login name."""

    code = "account-exists"


class AccountNotFound(IdentityError, LookupError):
    """No account has this id."""

    code = "account-not-found"


class InvalidActivationCode(IdentityError):
    """The activation code and the identifier do not match an account (deliberately not saying which)."""

    code = "invalid-activation-code"


class ActivationCodeExpired(IdentityError):
    """The activation code is past its validity; the agency must send a new letter."""

    code = "activation-code-expired"


class ActivationCodeUsed(IdentityError):
    """The activation code has already been used; codes are single use."""

    code = "activation-code-used"


class TooManyAttempts(IdentityError):
    """Too many failed attempts: further attempts are refused until ``until``."""

    code = "too-many-attempts"

    def __init__(self, until: datetime | None, now: datetime | None = None, message: str = "") -> None:
        self.until = until
        """When attempts are accepted again (aware UTC); ``None`` for a lock lifted only by the agency."""
        self.retry_after: int | None = None
        """Whole seconds until ``until`` (for a ``Retry-After`` header); ``None`` with ``until``."""
        if until is not None and now is not None:
            self.retry_after = max(1, math.ceil((until - now) / timedelta(seconds=1)))
        super().__init__(message or f"too many failed attempts; retry after {self.retry_after} s")


class AccountLocked(TooManyAttempts):
    """Sign-in refused: the account is locked after failed attempts, or by the agency (``until`` None)."""

    code = "account-locked"


class AccountDisabled(IdentityError):
    """The account is disabled (closed by the agency or the holder); nobody may use it."""

    code = "account-disabled"


class WeakPassword(IdentityError, ValueError):
    """The password does not meet the policy; ``reason`` names the rule for the message catalogue."""

    code = "weak-password"

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        """One of ``too-short``, ``too-long``, ``too-simple``, ``contains-identity``, ``common``."""
        super().__init__(message)


class InvalidCredentials(IdentityError):
    """Unknown login or wrong password (deliberately not saying which)."""

    code = "invalid-credentials"


class SecondFactorRequired(IdentityError):
    """The password is right; the TOTP code is needed next (``accounts.verify_second_factor``)."""

    code = "second-factor-required"

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        super().__init__("a one-time code from the authenticator app is required")


class InvalidSecondFactor(IdentityError):
    """The TOTP code is wrong, outside the ±1 step window, or already used (replay)."""

    code = "invalid-second-factor"


class EnrolmentIncomplete(IdentityError):
    """The account is not active yet: the activation code, a password or the TOTP enrolment is missing.

    Raised by ``authenticate`` only after the password was verified, so the portal may resume the
    enrolment for ``account_id``.
    """

    code = "enrolment-incomplete"

    def __init__(self, account_id: str, missing: tuple[str, ...]) -> None:
        self.account_id = account_id
        self.missing = missing
        """What is still to do: ``activation``, ``password`` and/or ``totp``."""
        super().__init__("account enrolment incomplete: " + ", ".join(missing))
