"""Audit trail: token lifecycle and denied requests, sampled so floods stay small."""

from __future__ import annotations

import pytest

from sciserve.access.audit import DeniedRequests, audit
from sciserve.access.identity import Identity
from sciserve.access.tokens import TokenStore
from sciserve.registry.registry import Registry

from .conftest import FakeClock

ALICE = Identity("alice", "token", "ALICEALICE12")


def test_token_create_and_revoke_are_audited(registry: Registry, tokens: TokenStore) -> None:
    record, raw = tokens.create("alice", {"ztf": {"infer"}}, label="alerts", actor="ops")
    tokens.revoke(record.token_id, actor="OPSTOKEN1234")
    revoke, create = registry.events(2)
    assert create["action"] == "token.create" and create["subject"] == record.token_id
    assert create["actor"] == "ops"
    assert create["detail"]["subject"] == "alice"
    assert create["detail"]["scopes"] == {"ztf": ["infer"]}
    assert revoke["action"] == "token.revoke" and revoke["actor"] == "OPSTOKEN1234"
    secret = raw.split("_", 2)[2]
    assert all(secret not in repr(e) for e in registry.events())


def test_audit_helper(registry: Registry) -> None:
    audit(registry, "namespace.trust", "ztf", "ops", {"why": "reviewed"})
    [event] = registry.events(1)
    assert (event["action"], event["subject"], event["actor"]) == ("namespace.trust", "ztf", "ops")
    assert event["detail"] == {"why": "reviewed"}


def test_long_outside_values_are_cut_not_refused(registry: Registry) -> None:
    audit(registry, "request.denied", "/v2/" + "x" * 5000, "a" * 500)
    [event] = registry.events(1)
    assert len(event["subject"]) == 512 and len(event["actor"]) == 128


def test_denied_requests_are_sampled(registry: Registry, clock: FakeClock) -> None:
    denied = DeniedRequests(registry, interval=60, clock=clock)
    assert denied.record("infer", "rate_limited", ALICE, {"namespace": "ztf"})
    for _ in range(50):  # a flood from the same caller on the same route
        assert not denied.record("infer", "rate_limited", ALICE)
    assert denied.record("publish", "forbidden", ALICE)  # another route
    assert denied.record("infer", "unauthenticated")  # no identity
    clock.advance(61)
    assert denied.record("infer", "rate_limited", ALICE)
    events = [e for e in registry.events(100) if e["action"] == "request.denied"]
    assert len(events) == 4
    assert {(e["subject"], e["actor"]) for e in events} == {
        ("infer", "ALICEALICE12"),
        ("publish", "ALICEALICE12"),
        ("infer", "unauthenticated"),
    }
    assert events[-1]["detail"] == {"reason": "rate_limited", "namespace": "ztf"}


def test_denied_budget_caps_distinct_callers(registry: Registry, clock: FakeClock) -> None:
    denied = DeniedRequests(registry, interval=60, budget=5, clock=clock)
    written = [
        denied.record("infer", "unauthenticated", Identity(f"u{i}", "jwt")) for i in range(20)
    ]
    assert written.count(True) == 5
    clock.advance(60)
    assert denied.record("infer", "unauthenticated", Identity("late", "jwt"))


@pytest.mark.parametrize("reason", ["unauthenticated", "forbidden", "not_found"])
def test_reason_is_recorded(registry: Registry, reason: str) -> None:
    DeniedRequests(registry).record("models", reason)
    assert registry.events(1)[0]["detail"] == {"reason": reason}
