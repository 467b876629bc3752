"""Identities, scopes and the authorisation rule (invisible = not found)."""

from __future__ import annotations

import pytest

from sciserve.access.identity import Identity, normalize_scopes
from sciserve.access.policy import authorize, visible
from sciserve.access.priority import Priority, parse_priority
from sciserve.errors import InvalidInput, NotFound, PermissionDenied
from sciserve.registry.registry import Registry


def _identity(**scopes: set[str]) -> Identity:
    return Identity("alice", "token", "ABCDEFGHIJKL", normalize_scopes(scopes))


READER = _identity(ztf={"read"})
RUNNER = _identity(ztf={"infer"})
PUBLISHER = _identity(ztf={"publish"})
NS_ADMIN = _identity(ztf={"admin"})
EVERYWHERE = Identity("bob", "token", "BBBBBBBBBBBB", normalize_scopes({"*": {"infer"}}))
ADMIN = Identity("ops", "token", "OOOOOOOOOOOO", normalize_scopes({"*": {"admin"}}))
ANONYMOUS = Identity.anonymous()

# (identity, action, namespace) -> None (allowed), NotFound or PermissionDenied
MATRIX = [
    (READER, "read", "ztf", None),
    (READER, "infer", "ztf", PermissionDenied),
    (READER, "publish", "ztf", PermissionDenied),
    (READER, "read", "cms", NotFound),
    (RUNNER, "read", "ztf", None),  # running a model needs seeing it
    (RUNNER, "infer", "ztf", None),
    (RUNNER, "publish", "ztf", PermissionDenied),
    (RUNNER, "infer", "cms", NotFound),
    (PUBLISHER, "read", "ztf", None),
    (PUBLISHER, "infer", "ztf", PermissionDenied),
    (PUBLISHER, "publish", "ztf", None),
    (NS_ADMIN, "infer", "ztf", None),
    (NS_ADMIN, "admin", "ztf", None),
    (NS_ADMIN, "read", "cms", NotFound),
    (EVERYWHERE, "infer", "anything", None),
    (EVERYWHERE, "publish", "anything", PermissionDenied),
    (ADMIN, "admin", "anything", None),
    (ADMIN, "publish", "cms", None),
    (ANONYMOUS, "admin", "cms", None),
    (ANONYMOUS, "publish", "ztf", None),
]


@pytest.mark.parametrize(("identity", "action", "namespace", "outcome"), MATRIX)
def test_authorize_matrix(
    identity: Identity, action: str, namespace: str, outcome: type[Exception] | None
) -> None:
    if outcome is None:
        authorize(identity, action, namespace, "m")  # type: ignore[arg-type]
        assert identity.allows(action, namespace)  # type: ignore[arg-type]
        assert identity.can_see(namespace)
    else:
        with pytest.raises(outcome):
            authorize(identity, action, namespace, "m")  # type: ignore[arg-type]
        assert not identity.allows(action, namespace)  # type: ignore[arg-type]
        assert identity.can_see(namespace) == (outcome is PermissionDenied)


def test_invisible_is_indistinguishable_from_missing(registry: Registry) -> None:
    """The NotFound for a hidden model reads exactly like the registry's for a missing one."""
    with pytest.raises(NotFound) as missing:
        registry.resolve("cms/tagger")
    with pytest.raises(NotFound) as hidden:
        authorize(READER, "infer", "cms", "tagger")
    assert str(hidden.value) == str(missing.value)
    with pytest.raises(NotFound) as missing_ns:
        registry.namespace("cms")
    with pytest.raises(NotFound) as hidden_ns:
        authorize(READER, "read", "cms")
    assert str(hidden_ns.value) == str(missing_ns.value)


def test_permission_denied_names_the_missing_scope() -> None:
    with pytest.raises(PermissionDenied, match="'publish' scope"):
        authorize(RUNNER, "publish", "ztf", "m")


def test_visible_filters_listings() -> None:
    assert visible(RUNNER, ["cms", "ztf", "lsst"]) == ["ztf"]
    assert visible(EVERYWHERE, ["cms", "ztf"]) == ["cms", "ztf"]
    assert visible(ANONYMOUS, ["cms"]) == ["cms"]


def test_admin_and_principal() -> None:
    assert ADMIN.is_admin and ANONYMOUS.is_admin
    assert not NS_ADMIN.is_admin
    assert READER.principal == "ABCDEFGHIJKL"
    fed = Identity("u1", "jwt", issuer="https://iam.example")
    assert fed.principal == "u1@https://iam.example"
    assert ANONYMOUS.principal == "anonymous"


def test_normalize_scopes() -> None:
    assert normalize_scopes({"ztf": ["read", "infer"], "cms": []}) == {
        "ztf": frozenset({"read", "infer"})
    }
    with pytest.raises(InvalidInput, match="unknown scope"):
        normalize_scopes({"ztf": ["write"]})
    with pytest.raises(InvalidInput, match="namespace"):
        normalize_scopes({"ZTF/x": ["read"]})


def test_parse_priority() -> None:
    assert parse_priority("realtime") is Priority.REALTIME
    assert parse_priority("BATCH") is Priority.BATCH
    assert parse_priority(Priority.INTERACTIVE) is Priority.INTERACTIVE
    with pytest.raises(InvalidInput, match="realtime, interactive, batch"):
        parse_priority("urgent")
