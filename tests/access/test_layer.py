"""The access layer wired from one registry, used the way a server uses it."""

from __future__ import annotations

import pytest

from sciserve.access.layer import AccessLayer
from sciserve.access.policy import authorize
from sciserve.config import AccessConfig, RateLimit
from sciserve.errors import NotFound, RateLimited, Unauthenticated
from sciserve.registry.registry import Registry


def test_request_flow(registry: Registry) -> None:
    config = AccessConfig(
        enabled=True, default_rate=RateLimit(rate=1, burst=1), namespace_rate=RateLimit()
    )
    access = AccessLayer.open(registry, config)
    _, raw = access.tokens.create("alice", {"ztf": {"infer"}}, priority="realtime")

    with pytest.raises(Unauthenticated):
        access.authenticator.authenticate(None)
    identity = access.authenticator.authenticate(f"Bearer {raw}")
    authorize(identity, "infer", "ztf", "classifier")
    with pytest.raises(NotFound):
        authorize(identity, "infer", "cms", "tagger")
    with access.quotas.acquire(identity, "ztf"):
        access.usage.record(identity, "ztf", "classifier", rows=3, compute_seconds=0.01)
    with pytest.raises(RateLimited):
        access.quotas.acquire(identity, "ztf").__enter__()
    assert access.denied.record("infer", "rate_limited", identity)

    access.close()  # flushes usage
    [row] = access.usage.report()
    assert (row["principal"], row["requests"], row["rows"]) == (identity.token_id, 1, 3)
    assert registry.events(1)[0]["action"] == "request.denied"


def test_defaults_come_from_the_registry_settings(registry: Registry) -> None:
    access = AccessLayer.open(registry)
    assert access.config == registry.settings.access
    assert access.authenticator.authenticate(None).kind == "anonymous"  # auth off by default
    access.close()
