"""Password hashing (argon2id) and the password policy.

Hashes are argon2id in the PHC string form, which records its own cost parameters: raising the
parameters later makes :func:`needs_rehash` true and ``accounts.authenticate`` re-hashes the
password at the next successful sign-in. The same hasher protects the secret part of activation
codes (``accounts``).

Cost parameters: :data:`DEFAULT_PARAMETERS` are argon2-cffi's RFC 9106 "low memory" profile
(t=3, 64 MiB, p=4, about 50 ms). :func:`set_parameters` changes them process-wide; it exists for
tests (cheap parameters keep the suite fast) and for tuning at start-up, never per request.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from sharedcare.identity.errors import WeakPassword

MAX_LENGTH = 1024
"""Longest accepted password: long enough for any passphrase, short enough to bound hashing work."""
MIN_DISTINCT = 5
"""Fewest distinct characters: refuses ``aaaaaaaaaaaa`` and ``abababababab``."""

# Passwords that pass the length rule yet are among the first any attacker tries (fr/de/en/lu).
COMMON = frozenset(
    {
        "password",
        "motdepasse",
        "passwort",
        "kennwort",
        "passwuert",
        "qwerty",
        "qwertz",
        "azerty",
        "azertyuiop",
        "qwertyuiop",
        "qwertzuiop",
        "sharedcare",
        "luxembourg",
        "letzebuerg",
        "welcome",
        "bienvenue",
        "willkommen",
        "iloveyou",
        "jetaime",
        "sunshine",
        "monkey",
        "dragon",
        "football",
        "admin",
        "administrator",
        "letmein",
        "secret",
        "changeme",
        "abcdef",
        "abcdefgh",
        "abcdefghijkl",
        "azertyazerty",
        "qwertyqwerty",
        "dossiersoins",
        "dsp",
        "esante",
    }
)


@dataclass(frozen=True, slots=True)
class HashParameters:
    """argon2id cost parameters: iterations, memory in KiB, lanes."""

    time_cost: int
    memory_cost: int
    parallelism: int


DEFAULT_PARAMETERS = HashParameters(time_cost=3, memory_cost=64 * 1024, parallelism=4)

_hasher = PasswordHasher(
    DEFAULT_PARAMETERS.time_cost,
    DEFAULT_PARAMETERS.memory_cost,
    DEFAULT_PARAMETERS.parallelism,
    type=Type.ID,
)
_dummy_hash: str | None = None


def set_parameters(params: HashParameters) -> HashParameters:
    """Use ``params`` for new hashes and rehash checks from now on; returns the previous parameters."""
    global _hasher, _dummy_hash
    previous = current_parameters()
    _hasher = PasswordHasher(params.time_cost, params.memory_cost, params.parallelism, type=Type.ID)
    _dummy_hash = None
    return previous


def current_parameters() -> HashParameters:
    """The parameters new hashes are made with."""
    return HashParameters(_hasher.time_cost, _hasher.memory_cost, _hasher.parallelism)


def hash_password(password: str) -> str:
    """The argon2id PHC string of ``password`` with a fresh random salt."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when ``password`` matches; a malformed stored hash counts as a mismatch, never as an error."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """True when the hash was made with other parameters than the current ones."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


def verify_dummy(password: str) -> None:
    """Spend the time of one verification, for unknown logins, so timing does not reveal which exist."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash("sharedcare dummy password")
    verify_password(_dummy_hash, password)


def _fold(text: str) -> str:
    """Lower case without accents or separators, for comparing a password with names and words."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if c.isalnum() and not unicodedata.combining(c))


def check_policy(password: str, *, min_length: int, identity: Iterable[str | None] = ()) -> None:
    """Raise WeakPassword when ``password`` is too short, too simple, common or built from ``identity``.

    ``identity`` holds what an attacker knows of the person: matricule, login name, e-mail, names.
    Length counts characters (a passphrase of accented words is fine), not bytes.
    """
    if len(password) < min_length:
        raise WeakPassword("too-short", f"a password has at least {min_length} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword("too-long", f"a password has at most {MAX_LENGTH} characters")
    if len(set(password)) < MIN_DISTINCT:
        raise WeakPassword("too-simple", f"a password uses at least {MIN_DISTINCT} different characters")
    folded = _fold(password)
    if folded.isdigit() and _is_sequence(folded):
        raise WeakPassword("too-simple", "a password is not a run of consecutive digits")
    core = re.sub(r"^\d+|\d+$", "", folded)  # "Password2024!" → "password"
    if folded in COMMON or core in COMMON or _repeats_common(core):
        raise WeakPassword("common", "this password is among the first ones attackers try")
    for value in identity:
        for part in _identity_parts(value):
            if part in folded:
                raise WeakPassword("contains-identity", "a password must not contain your name or identifier")


def _is_sequence(digits: str) -> bool:
    steps = {(int(b) - int(a)) % 10 for a, b in pairwise(digits)}
    return steps in ({1}, {9})


def _repeats_common(core: str) -> bool:
    """True for a common word written several times (``passwordpassword``)."""
    for word in COMMON:
        if core and len(core) % len(word) == 0 and core == word * (len(core) // len(word)):
            return True
    return False


def _identity_parts(value: str | None) -> list[str]:
    """The pieces of an identity value worth refusing inside a password: 4 characters or more."""
    if not value:
        return []
    local = value.split("@", 1)[0]
    parts = {_fold(local)}
    parts.update(_fold(p) for p in re.split(r"[\s._\-@+']+", local))
    digits = "".join(c for c in value if c.isdigit())
    if len(digits) >= 8:  # a matricule: refuse its birth-date part as well
        parts.update({digits, digits[:8]})
    return [p for p in parts if len(p) >= 4]
