"""Fixtures for the access layer: token stores on real registries, a fake clock."""

from __future__ import annotations

import pytest

from sciserve.access.tokens import TokenStore
from sciserve.config import AccessConfig
from sciserve.registry.registry import Registry


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tokens(registry: Registry) -> TokenStore:
    return TokenStore(registry)


def store(registry: Registry, clock: FakeClock | None = None, **config: object) -> TokenStore:
    """Another TokenStore on the same database, as another replica would have."""
    access = AccessConfig.model_validate(config)
    if clock is None:
        return TokenStore(registry, access)
    return TokenStore(registry, access, clock=clock)
