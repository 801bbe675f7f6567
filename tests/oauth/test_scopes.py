"""SMART scopes v1 and v2 (``access.scopes``): parsing, checking, narrowing. No database."""

from __future__ import annotations

import pytest

from sharedcare.access.scopes import ResourceScope, ScopeSet, parse_cached

PARSE_TABLE = [
    # scope, context, type, interactions, params
    ("patient/*.read", "patient", "*", "rs", ()),
    ("patient/Observation.read", "patient", "Observation", "rs", ()),
    ("user/Observation.write", "user", "Observation", "cud", ()),
    ("system/*.*", "system", "*", "cruds", ()),
    ("user/Patient.*", "user", "Patient", "cruds", ()),
    ("patient/Observation.rs", "patient", "Observation", "rs", ()),
    ("user/*.cruds", "user", "*", "cruds", ()),
    ("system/Encounter.c", "system", "Encounter", "c", ()),
    ("patient/Condition.rus", "patient", "Condition", "rus", ()),
    ("user/MedicationRequest.d", "user", "MedicationRequest", "d", ()),
    (
        "patient/Observation.rs?category=laboratory",
        "patient",
        "Observation",
        "rs",
        (("category", "laboratory"),),
    ),
    (
        "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
        "patient",
        "Observation",
        "rs",
        (("category", "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"),),
    ),
    (
        "user/Observation.s?category=laboratory&status=final",
        "user",
        "Observation",
        "s",
        (("category", "laboratory"), ("status", "final")),
    ),
]


@pytest.mark.parametrize(("text", "context", "rtype", "letters", "params"), PARSE_TABLE)
def test_parse_resource_scopes(text: str, context: str, rtype: str, letters: str, params: tuple[()]) -> None:
    scope = ResourceScope.parse(text)
    assert scope is not None
    assert (scope.context, scope.resource_type, scope.interactions, scope.params, scope.raw) == (
        context,
        rtype,
        frozenset(letters),
        params,
        text,
    )


INVALID = [
    "patient/Observation.rc",  # v2 letters out of order
    "patient/Observation.rr",
    "patient/Observation.x",
    "patient/Observation.",
    "patient/observation.read",  # resource types start with a capital
    "clinic/Observation.read",  # unknown context
    "patient/Observation.rs?",  # empty query
    "patient/Observation.rs?category",  # parameter without value
    "patient/.read",
    "Observation.read",
]


@pytest.mark.parametrize("text", INVALID)
def test_malformed_resource_scopes(text: str) -> None:
    assert ResourceScope.parse(text) is None


def test_scope_set_parse_sorts_scopes_out() -> None:
    scopes = ScopeSet.parse(
        "openid fhirUser launch launch/patient offline_access online_access patient/*.read "
        "user/Observation.rs patient/Observation.rc something-else patient/*.read"
    )
    assert [s.raw for s in scopes.resources] == ["patient/*.read", "user/Observation.rs"]
    assert scopes.other == frozenset(
        {
            "openid",
            "fhirUser",
            "launch",
            "launch/patient",
            "offline_access",
            "online_access",
            "something-else",
        }
    )
    assert scopes.invalid == ("patient/Observation.rc",)
    assert "launch/patient" in scopes and "patient/Observation.rc" not in scopes
    assert scopes.contexts == frozenset({"patient", "user"})
    assert str(ScopeSet.parse(["system/*.*", "openid"])) == "system/*.* openid"
    assert ScopeSet.parse(None) == ScopeSet.parse("") == ScopeSet()
    assert not ScopeSet.parse("   ")


PERMITS = [
    # scopes, resource type, interaction, permitted
    ("patient/*.read", "Observation", "r", True),
    ("patient/*.read", "Observation", "s", True),
    ("patient/*.read", "Observation", "c", False),
    ("patient/*.read", "Observation", "u", False),
    ("user/Observation.write", "Observation", "c", True),
    ("user/Observation.write", "Observation", "u", True),
    ("user/Observation.write", "Observation", "d", True),
    ("user/Observation.write", "Observation", "r", False),
    ("user/Observation.write", "Condition", "c", False),
    ("system/*.*", "Patient", "d", True),
    ("system/*.cruds", "AuditEvent", "s", True),
    ("patient/Observation.rs", "Observation", "s", True),
    ("patient/Observation.rs", "Observation", "u", False),
    ("patient/Observation.s", "Observation", "r", False),
    ("patient/Observation.rs?category=laboratory", "Observation", "r", True),
    ("openid fhirUser launch/patient", "Patient", "r", False),
    ("patient/Observation.rc", "Observation", "r", False),  # malformed: grants nothing
    ("patient/Condition.r user/Observation.s", "Observation", "s", True),
]


@pytest.mark.parametrize(("raw", "rtype", "interaction", "expected"), PERMITS)
def test_permits(raw: str, rtype: str, interaction: str, expected: bool) -> None:
    assert ScopeSet.parse(raw).permits(rtype, interaction) is expected


def test_permits_by_context_and_bad_interaction() -> None:
    scopes = ScopeSet.parse("patient/Observation.rs user/Condition.r")
    assert scopes.permits("Observation", "r", context="patient")
    assert not scopes.permits("Observation", "r", context="user")
    with pytest.raises(ValueError):
        scopes.permits("Observation", "read")
    with pytest.raises(ValueError):
        scopes.permits("Observation", "x")


def test_conditions_of_v2_query_scopes() -> None:
    scopes = ScopeSet.parse(
        "patient/Observation.rs?category=laboratory patient/Observation.rs?category=vital-signs"
    )
    assert scopes.conditions("Observation", "s") == [
        (("category", "laboratory"),),
        (("category", "vital-signs"),),
    ]
    assert scopes.conditions("Condition", "s") is None
    widened = ScopeSet.parse("patient/Observation.rs?category=laboratory patient/*.read")
    assert widened.conditions("Observation", "r") == []  # an unconditional scope wins


RESTRICT = [
    # requested, client's allowed scopes, granted
    ("system/*.*", "system/*.*", "system/*.*"),
    ("system/Observation.rs", "system/*.*", "system/Observation.rs"),
    ("system/*.*", "system/Observation.rs", "system/Observation.rs"),  # narrowed to the overlap
    ("patient/*.read", "patient/*.rs", "patient/*.read"),  # same meaning: kept as asked
    ("patient/*.cruds", "patient/*.read", "patient/*.rs"),
    ("patient/*.read", "user/*.read", ""),  # another context: dropped
    ("user/*.write", "user/*.rs", ""),  # no common interaction: dropped
    (
        "patient/Observation.rs?category=laboratory",
        "patient/*.rs",
        "patient/Observation.rs?category=laboratory",
    ),
    (
        "patient/Observation.rs",
        "patient/Observation.rs?category=laboratory",
        "patient/Observation.rs?category=laboratory",
    ),
    ("openid launch/patient offline_access patient/*.rs", "openid patient/*.rs", "patient/*.rs openid"),
    (
        "patient/*.read",
        "patient/Observation.rs patient/Condition.rs",
        "patient/Observation.rs patient/Condition.rs",
    ),
    ("patient/Observation.rc made-up", "patient/*.* made-up", "made-up"),
]


@pytest.mark.parametrize(("requested", "allowed", "granted"), RESTRICT)
def test_restrict_to_client_scopes(requested: str, allowed: str, granted: str) -> None:
    assert str(ScopeSet.parse(requested).restrict_to(allowed)) == granted


def test_helpers() -> None:
    scopes = ScopeSet.parse("patient/*.rs user/*.rs system/*.rs launch/patient openid")
    assert str(scopes.only_contexts("patient", "user")) == "patient/*.rs user/*.rs launch/patient openid"
    assert str(scopes.without("launch/patient", "system/*.rs")) == "patient/*.rs user/*.rs openid"
    assert parse_cached(frozenset({"system/*.*"})).permits("Patient", "c")
    described = ResourceScope.parse("patient/Observation.rs?category=laboratory")
    assert described is not None
    assert (
        described.describe()
        == "read, search Observation resources of the patient in context where category=laboratory"
    )
