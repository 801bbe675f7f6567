"""The one place where domain errors become messages for people, in their language.

Identity errors are translated by class (their English text is for operators). The access
module's ``ChoiceError`` and ``CareError`` carry English messages written for the user; the
known ones are listed here so that the catalogues translate them, and any other is shown as
written rather than hidden.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sharedcare.identity import errors
from sharedcare.portal.i18n import N_, Translator

DOMAIN_MESSAGES = (
    N_("Only the holder of the record or their representative can change its access rights"),
    N_("This professional is already blocked"),
    N_("This item is already hidden from this professional"),
    N_("There is no such restriction"),
    N_("The end of the delegation must be in the future"),
    N_("There is no such representative"),
    N_("The record is not closed"),
    N_("A record closed at death cannot be reopened"),
    N_("Only a professional listed in the national directory can use a connection code"),
    N_("This connection code is not valid (unknown, already used or expired)"),
    N_("The emergency override is not enabled on this platform"),
    N_("Only a professional listed in the national directory can use the emergency override"),
    N_("The emergency override needs a reason"),
)
"""User-facing messages of ``access.consent`` and ``access.care``, for extraction."""

_PASSWORD_RULES = {
    "too-short": N_(
        "This password is too short: use at least %(length)s characters. "
        "A sentence of several words is long and easy to remember."
    ),
    "too-long": N_("This password is too long: use at most 1024 characters."),
    "too-simple": N_(
        "This password is too simple: use more different characters, and no run of consecutive digits."
    ),
    "common": N_("This password is among the first ones attackers try. Choose another one."),
    "contains-identity": N_(
        "This password contains your matricule, your birth date, your login name, your e-mail address "
        "or your name. Choose another one."
    ),
}
_BY_CLASS: tuple[tuple[type[errors.IdentityError], str], ...] = (
    (errors.InvalidIdentifier, N_("This matricule or login name is not valid. A matricule has 13 digits.")),
    (
        errors.InvalidContact,
        N_("Give a valid e-mail address or mobile number (with the country prefix if you live abroad)."),
    ),
    (
        errors.InvalidActivationCode,
        N_("The activation code does not match this matricule or login name. Check both and try again."),
    ),
    (errors.ActivationCodeExpired, N_("This activation code has expired. Ask the agency for a new letter.")),
    (
        errors.ActivationCodeUsed,
        N_("This activation code has already been used. Sign in, or ask the agency for a new letter."),
    ),
    (errors.AccountDisabled, N_("This account is closed. Please contact the helpdesk.")),
    (errors.InvalidCredentials, N_("The login or the password is wrong.")),
    (
        errors.InvalidSecondFactor,
        N_("This code is not right. Type the 6 digits your authenticator app shows now."),
    ),
)


def lockout(t: Translator, until: datetime | None, now: datetime | None = None) -> str:
    """A lockout people can act on: how long to wait and until what time (Luxembourg time)."""
    if until is None:
        return t.gettext("This account is locked by the agency. Please contact the helpdesk.")
    aware = until if until.tzinfo else until.replace(tzinfo=UTC)
    start = now or datetime.now(UTC)
    start = start if start.tzinfo else start.replace(tzinfo=UTC)
    minutes = max(1, -(-int((aware - start).total_seconds()) // 60))
    return t.ngettext(
        "Too many failed attempts. Try again in %(n)s minute, at %(time)s.",
        "Too many failed attempts. Try again in %(n)s minutes, at %(time)s.",
        minutes,
        time=t.time(aware),
    )


def identity_error(t: Translator, exc: errors.IdentityError, *, min_length: int = 12) -> str:
    """The message for an account error, in ``t``'s language."""
    if isinstance(exc, errors.TooManyAttempts):
        return lockout(t, exc.until)
    if isinstance(exc, errors.WeakPassword):
        rule = _PASSWORD_RULES.get(exc.reason)
        return t.gettext(rule, length=min_length) if rule else str(exc)
    for cls, message in _BY_CLASS:
        if isinstance(exc, cls):
            return t.gettext(message)
    return t.gettext("This request could not be completed. Please try again.")


def domain_error(t: Translator, exc: Exception) -> str:
    """A ``ChoiceError`` or ``CareError`` message, translated when the catalogue knows it."""
    return t.gettext(str(exc))
