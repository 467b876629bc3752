"""API tokens: minting, verification, listing, revocation, expiry, storage at rest."""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from sciserve.access.identity import Identity
from sciserve.access.pepper import pepper_path
from sciserve.access.priority import Priority
from sciserve.access.tokens import TokenStore
from sciserve.config import AccessConfig, RateLimit
from sciserve.errors import ConfigError, InvalidInput, NotFound, Unauthenticated
from sciserve.registry import db as registry_db
from sciserve.registry.registry import Registry

from .conftest import FakeClock, store


def _secret(raw: str) -> str:
    return raw.split("_", 2)[2]


def test_create_and_verify(tokens: TokenStore) -> None:
    record, raw = tokens.create(
        "alice", {"ztf": {"infer"}, "*": ["read"]}, priority="realtime", label="alerts"
    )
    assert raw.startswith(f"ssv_{record.token_id}_")
    assert len(record.token_id) == 12 and record.token_id.isalnum()
    assert len(_secret(raw)) == 43  # 32 bytes, base64url
    identity = tokens.verify(raw)
    assert identity == Identity(
        subject="alice",
        kind="token",
        token_id=record.token_id,
        scopes={"ztf": frozenset({"infer"}), "*": frozenset({"read"})},
        priority=Priority.REALTIME,
    )
    assert identity.allows("infer", "ztf") and not identity.allows("infer", "cms")
    assert identity.allows("read", "cms")


def test_token_objects_never_show_the_secret(tokens: TokenStore) -> None:
    record, raw = tokens.create("alice", {"ztf": {"read"}})
    stored_hash = tokens.get(record.token_id).secret_hash
    for obj in (record, tokens.get(record.token_id), tokens.verify(raw)):
        for text in (repr(obj), str(obj)):
            assert _secret(raw) not in text
            assert stored_hash not in text
    assert "secret_hash" not in record.to_dict()


def test_secret_is_stored_only_as_hmac(registry: Registry, tokens: TokenStore) -> None:
    record, raw = tokens.create("alice", {"ztf": {"read"}}, label="lbl")
    secret = _secret(raw)
    engine = registry._engine
    dump = []
    with engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            dump += [repr(tuple(row)) for row in conn.execute(sa.text(f'SELECT * FROM "{table}"'))]
    everything = "\n".join(dump)
    assert record.token_id in everything  # the dump did read the tokens table
    assert secret not in everything and raw not in everything
    pepper = pepper_path(registry.settings).read_bytes()
    expected = hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()
    assert expected in everything
    assert oct(pepper_path(registry.settings).stat().st_mode & 0o777) == "0o600"


def test_wrong_secret_with_right_id(registry: Registry, tokens: TokenStore) -> None:
    record, raw = tokens.create("alice", {"ztf": {"read"}})
    forged = f"ssv_{record.token_id}_{'A' * 43}"
    with pytest.raises(Unauthenticated) as info:
        tokens.verify(forged)
    assert "A" * 43 not in str(info.value)
    # A token minted with another pepper (another, unshared replica) is refused too.
    other = TokenStore(registry, pepper=b"x" * 32)
    with pytest.raises(Unauthenticated):
        other.verify(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "ssv_",
        "ssv_short_secret",
        "ssv_ABCDEFGHIJKL_" + "a" * 42,
        "ssv_ABCDEFGHIJK!_" + "a" * 43,
        "ssv_ABCDEFGHIJKL_" + "a" * 42 + "ü",
        "ssv_" + "x" * 10_000,
    ],
)
def test_malformed_tokens(tokens: TokenStore, raw: str) -> None:
    with pytest.raises(Unauthenticated, match="malformed") as info:
        tokens.verify(raw)
    assert not raw or raw not in str(info.value)


def test_unknown_id(tokens: TokenStore) -> None:
    with pytest.raises(Unauthenticated, match="invalid API token"):
        tokens.verify("ssv_ABCDEFGHIJKL_" + "a" * 43)


def test_list_and_get(tokens: TokenStore) -> None:
    a, _ = tokens.create("alice", {"ztf": {"read"}}, label="one")
    b, raw_b = tokens.create("ops", {}, admin=True, expires_in=timedelta(days=30))
    listed = tokens.list()
    assert [r.token_id for r in listed] == [a.token_id, b.token_id]
    assert listed[1].is_admin and not listed[0].is_admin
    assert listed[1].expires_at is not None
    assert timedelta(days=29) < listed[1].expires_at - listed[1].created_at <= timedelta(days=30)
    assert all(_secret(raw_b) not in repr(r.to_dict()) for r in listed)
    assert tokens.get(a.token_id).label == "one"
    with pytest.raises(NotFound):
        tokens.get("nosuchtoken1")


def test_revocation_is_immediate_here(tokens: TokenStore) -> None:
    record, raw = tokens.create("alice", {"ztf": {"read"}})
    tokens.verify(raw)
    revoked = tokens.revoke(record.token_id, actor="ops")
    assert revoked.revoked_at is not None and revoked.to_dict()["state"] == "revoked"
    with pytest.raises(Unauthenticated, match="revoked"):
        tokens.verify(raw)
    # Revoking twice is a no-op, an unknown id is NotFound.
    assert tokens.revoke(record.token_id).revoked_at == revoked.revoked_at
    with pytest.raises(NotFound):
        tokens.revoke("nosuchtoken1")


def test_revocation_reaches_other_replicas_within_the_cache_ttl(
    registry: Registry, tokens: TokenStore, clock: FakeClock
) -> None:
    record, raw = tokens.create("alice", {"ztf": {"read"}})
    replica = store(registry, clock, token_cache_ttl=2.0)
    replica.verify(raw)  # now cached by the replica
    tokens.revoke(record.token_id)
    clock.advance(1.9)
    replica.verify(raw)  # still inside the documented bound
    clock.advance(0.2)
    with pytest.raises(Unauthenticated, match="revoked"):
        replica.verify(raw)


def test_revocation_bound_in_real_time(registry: Registry, tokens: TokenStore) -> None:
    """With the real clock: no verification that starts a cache TTL after the token
    was cached still accepts it (no slack needed: the bound is exact)."""
    ttl = 0.3
    record, raw = tokens.create("alice", {"ztf": {"read"}})
    replica = store(registry, token_cache_ttl=ttl)
    replica.verify(raw)
    cached_by = time.monotonic()  # the replica cached the record before this
    tokens.revoke(record.token_id)
    deadline = cached_by + 30
    while True:
        started = time.monotonic()
        try:
            replica.verify(raw)
        except Unauthenticated:
            break
        assert started < cached_by + ttl, "a revoked token outlived the cache TTL"
        assert started < deadline


def test_expiry(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = store(registry, token_cache_ttl=0.0)
    _, raw = tokens.create("alice", {"ztf": {"read"}}, expires_in=3600)
    tokens.verify(raw)
    assert tokens.list()[0].state() == "active"
    # An hour and a second later, by the wall clock expiry is measured with.
    later = registry_db.utcnow() + timedelta(seconds=3601)
    monkeypatch.setattr(registry_db, "utcnow", lambda: later)
    with pytest.raises(Unauthenticated, match="expired"):
        tokens.verify(raw)
    assert tokens.list()[0].state() == "expired"


def test_last_used_is_written_at_most_once_per_interval(
    registry: Registry, clock: FakeClock
) -> None:
    tokens = store(registry, clock, token_cache_ttl=0.0, last_used_interval=3600)
    record, raw = tokens.create("alice", {"ztf": {"read"}})
    assert tokens.get(record.token_id).last_used_at is None
    tokens.verify(raw)
    first = tokens.get(record.token_id).last_used_at
    assert first is not None
    tokens.verify(raw)
    assert tokens.get(record.token_id).last_used_at == first
    eager = store(registry, clock, token_cache_ttl=0.0, last_used_interval=0)
    eager.verify(raw)
    last = eager.get(record.token_id).last_used_at
    assert last is not None and last > first


def test_per_token_limits_round_trip(tokens: TokenStore) -> None:
    limit = RateLimit(rate=2.5, burst=5, concurrency=None)
    record, raw = tokens.create("bulk", {"ztf": {"infer"}}, priority="batch", limit=limit)
    assert tokens.get(record.token_id).limit == limit
    identity = tokens.verify(raw)
    assert identity.limit == limit and identity.priority is Priority.BATCH


@pytest.mark.parametrize(
    ("subject", "scopes", "kwargs", "match"),
    [
        ("", {"ztf": {"read"}}, {}, "subject"),
        ("alice", {}, {}, "at least one scope"),
        ("alice", {"ztf": {"write"}}, {}, "unknown scope"),
        ("alice", {"Not A Namespace": {"read"}}, {}, "not a namespace"),
        ("alice", {"ztf": {"read"}}, {"priority": "urgent"}, "unknown priority"),
        ("alice", {"ztf": {"read"}}, {"expires_in": -5}, "positive"),
    ],
)
def test_create_validates(
    tokens: TokenStore,
    subject: str,
    scopes: dict[str, set[str]],
    kwargs: dict[str, object],
    match: str,
) -> None:
    with pytest.raises(InvalidInput, match=match):
        tokens.create(subject, scopes, **kwargs)  # type: ignore[arg-type]
    assert tokens.list() == []


def test_on_a_bare_engine(registry: Registry, tmp_path: Path) -> None:
    engine = registry._engine
    with pytest.raises(ConfigError, match="pepper"):
        TokenStore(engine).create("alice", {"ztf": {"read"}})
    config = AccessConfig(token_pepper_file=tmp_path / "pepper")
    _, raw = TokenStore(engine, config).create("alice", {"ztf": {"read"}})
    # Another process with the same database and pepper file accepts it.
    assert TokenStore(engine, config).verify(raw).subject == "alice"
    assert (tmp_path / "pepper").stat().st_size == 32
