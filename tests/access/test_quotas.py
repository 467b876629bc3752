"""Rate and concurrency quotas: refuse at once with a useful retry_after."""

from __future__ import annotations

import asyncio

import pytest

from sciserve.access.identity import Identity
from sciserve.access.quotas import CONCURRENCY_RETRY_AFTER, Quotas
from sciserve.config import AccessConfig, RateLimit
from sciserve.errors import RateLimited

from .conftest import FakeClock

UNLIMITED = RateLimit()


def caller(name: str, limit: RateLimit | None = None) -> Identity:
    return Identity(
        name, "token", name.upper().ljust(12, "X"), {"ztf": frozenset({"infer"})}, limit=limit
    )


def quotas(clock: FakeClock, **config: object) -> Quotas:
    values: dict[str, object] = {"default_rate": UNLIMITED, "namespace_rate": UNLIMITED, **config}
    return Quotas(AccessConfig.model_validate(values), clock=clock)


def test_burst_then_refused_with_retry_after(clock: FakeClock) -> None:
    q = quotas(clock, default_rate=RateLimit(rate=10, burst=3))
    alice = caller("alice")
    for _ in range(3):
        with q.acquire(alice, "ztf"):
            pass
    with pytest.raises(RateLimited, match="rate limit") as info, q.acquire(alice, "ztf"):
        pytest.fail("entered over quota")
    assert info.value.retry_after == pytest.approx(0.1)
    clock.advance(0.05)
    with pytest.raises(RateLimited) as info:
        q.acquire(alice, "ztf").__enter__()
    assert info.value.retry_after == pytest.approx(0.05)
    clock.advance(0.05)
    with q.acquire(alice, "ztf"):
        pass  # one token refilled, exactly as retry_after promised


def test_refill_is_capped_at_burst(clock: FakeClock) -> None:
    q = quotas(clock, default_rate=RateLimit(rate=100, burst=2))
    alice = caller("alice")
    clock.advance(3600)
    for _ in range(2):
        with q.acquire(alice, "ztf"):
            pass
    with pytest.raises(RateLimited):
        q.acquire(alice, "ztf").__enter__()


def test_concurrency_limit(clock: FakeClock) -> None:
    q = quotas(clock, default_rate=RateLimit(concurrency=2))
    alice = caller("alice")
    first, second = q.acquire(alice, "ztf"), q.acquire(alice, "ztf")
    first.__enter__()
    second.__enter__()
    with pytest.raises(RateLimited, match="concurrent") as info:
        q.acquire(alice, "ztf").__enter__()
    assert info.value.retry_after == CONCURRENCY_RETRY_AFTER
    second.__exit__(None, None, None)
    with q.acquire(alice, "ztf"):
        pass
    first.__exit__(None, None, None)


def test_slot_is_released_when_the_request_fails(clock: FakeClock) -> None:
    q = quotas(clock, default_rate=RateLimit(concurrency=1))
    alice = caller("alice")
    with pytest.raises(ZeroDivisionError), q.acquire(alice, "ztf"):
        1 / 0  # noqa: B018
    with q.acquire(alice, "ztf"):
        pass


def test_one_caller_limited_does_not_affect_another(clock: FakeClock) -> None:
    q = quotas(clock, default_rate=RateLimit(rate=1, burst=1, concurrency=1))
    alice, bob = caller("alice"), caller("bob")
    held = q.acquire(alice, "ztf")
    held.__enter__()
    with pytest.raises(RateLimited):
        q.acquire(alice, "ztf").__enter__()
    with q.acquire(bob, "ztf"):
        pass
    held.__exit__(None, None, None)


def test_namespace_quota_is_shared(clock: FakeClock) -> None:
    q = quotas(
        clock,
        namespace_rate=RateLimit(rate=1, burst=2),
        namespace_limits={"cms": RateLimit()},
    )
    alice, bob = caller("alice"), caller("bob")
    with q.acquire(alice, "ztf"):
        pass
    with q.acquire(bob, "ztf"):
        pass
    with pytest.raises(RateLimited, match="namespace 'ztf'"):
        q.acquire(bob, "ztf").__enter__()
    # Another namespace (here: explicitly unlimited) is unaffected.
    for _ in range(10):
        with q.acquire(bob, "cms"):
            pass


def test_a_refused_request_costs_no_quota(clock: FakeClock) -> None:
    q = quotas(
        clock, default_rate=RateLimit(rate=1, burst=1), namespace_rate=RateLimit(concurrency=1)
    )
    alice, bob = caller("alice"), caller("bob")
    held = q.acquire(bob, "ztf")
    held.__enter__()
    with pytest.raises(RateLimited, match="namespace"):
        q.acquire(alice, "ztf").__enter__()
    held.__exit__(None, None, None)
    with q.acquire(alice, "ztf"):  # alice's single token was not spent by the refusal
        pass


def test_per_token_override(clock: FakeClock) -> None:
    q = quotas(clock, default_rate=RateLimit(rate=1, burst=1))
    vip = caller("vip", limit=RateLimit(rate=1, burst=5))
    for _ in range(5):
        with q.acquire(vip, "ztf"):
            pass
    with pytest.raises(RateLimited):
        q.acquire(vip, "ztf").__enter__()


def test_anonymous_is_not_limited(clock: FakeClock) -> None:
    q = quotas(clock, default_rate=RateLimit(rate=1, burst=1), namespace_rate=RateLimit(rate=1))
    for _ in range(20):
        with q.acquire(Identity.anonymous(), "ztf"):
            pass


async def test_async_use_refuses_immediately() -> None:
    q = Quotas(AccessConfig(default_rate=RateLimit(concurrency=1), namespace_rate=UNLIMITED))
    alice = caller("alice")
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow() -> None:
        async with q.acquire(alice, "ztf"):
            started.set()
            await release.wait()

    task = asyncio.create_task(slow())
    await started.wait()
    with pytest.raises(RateLimited):
        async with q.acquire(alice, "ztf"):
            pytest.fail("entered over quota")
    release.set()
    await task
    async with q.acquire(alice, "ztf"):
        pass
