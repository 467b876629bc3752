"""Rate and concurrency quotas per caller and per namespace.

Each caller (token, or federated subject) and each namespace has a token
bucket (``rate`` requests/s, up to ``burst`` at once) and a cap on requests
in flight.  A request over any quota fails at once with
:class:`~sciserve.errors.RateLimited` and a ``retry_after`` hint: nothing is
queued here, so one client's loop cannot build a backlog that starves the
others.

State lives in memory and is per process: with N replicas behind a load
balancer the effective limits are up to N times the configured ones.
The anonymous identity (authentication off, loopback only) is not limited.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from ..config import AccessConfig, RateLimit
from ..errors import RateLimited
from .identity import Identity

__all__ = ["Lease", "Quotas"]

#: Suggested wait when only the concurrency cap is hit: requests usually
#: finish well within it, and clients need a number for ``Retry-After``.
CONCURRENCY_RETRY_AFTER = 1.0
# Idle accounts are forgotten beyond this many, keeping memory bounded.
_MAX_ACCOUNTS = 10_000


@dataclass
class _Account:
    """One bucket plus an in-flight counter."""

    limit: RateLimit
    tokens: float
    updated: float
    in_flight: int = 0

    def refill(self, now: float) -> None:
        if self.limit.rate is not None:
            elapsed = max(0.0, now - self.updated)
            self.tokens = min(float(self.limit.burst), self.tokens + elapsed * self.limit.rate)
        self.updated = now

    def refusal(self, what: str) -> RateLimited | None:
        """Why one more request may not start now (``None``: it may)."""
        cap = self.limit.concurrency
        if cap is not None and self.in_flight >= cap:
            return RateLimited(
                f"too many concurrent requests for {what} (limit {cap})",
                retry_after=CONCURRENCY_RETRY_AFTER,
            )
        rate = self.limit.rate
        # The tolerance keeps a client that waited exactly ``retry_after``
        # from being refused over floating-point dust.
        if rate is not None and self.tokens < 1.0 - 1e-9:
            return RateLimited(
                f"rate limit for {what} exceeded ({rate:g}/s, burst {self.limit.burst})",
                retry_after=(1.0 - self.tokens) / rate,
            )
        return None

    @property
    def idle(self) -> bool:
        full = self.limit.rate is None or self.tokens >= self.limit.burst
        return self.in_flight == 0 and full


class Lease:
    """A granted request slot; use with ``with`` or ``async with``.

    The quotas are checked on entry (raising :class:`RateLimited`) and the
    concurrency slots given back on exit.
    """

    def __init__(self, quotas: Quotas, identity: Identity, namespace: str) -> None:
        self._quotas = quotas
        self._identity = identity
        self._namespace = namespace
        self._accounts: tuple[_Account, ...] = ()

    def __enter__(self) -> Lease:
        self._accounts = self._quotas._admit(self._identity, self._namespace)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._quotas._release(self._accounts)
        self._accounts = ()

    async def __aenter__(self) -> Lease:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class Quotas:
    """Rate and concurrency limits, in memory, for one server process."""

    def __init__(self, config: AccessConfig, *, clock: Callable[[], float] = time.monotonic):
        self._config = config
        self._clock = clock
        # A lock, not just the event loop: the gRPC and REST adapters may
        # call in from worker threads.
        self._lock = threading.Lock()
        self._accounts: dict[tuple[str, str], _Account] = {}

    def acquire(self, identity: Identity, namespace: str) -> Lease:
        """A slot for one request by ``identity`` in ``namespace``::

            async with quotas.acquire(identity, "ztf"):
                ...  # run the request

        Entering raises :class:`RateLimited` (never waits) when the caller or
        the namespace is over its rate or concurrency quota.
        """
        return Lease(self, identity, namespace)

    def _limits(self, identity: Identity, namespace: str) -> list[tuple[str, str, RateLimit]]:
        config = self._config
        ns_limit = config.namespace_limits.get(namespace, config.namespace_rate)
        return [
            ("caller", identity.principal, identity.limit or config.default_rate),
            ("namespace", namespace, ns_limit),
        ]

    def _account(self, key: tuple[str, str], limit: RateLimit, now: float) -> _Account:
        account = self._accounts.get(key)
        if account is None:
            if len(self._accounts) >= _MAX_ACCOUNTS:
                self._prune(now)
            account = self._accounts[key] = _Account(limit, float(limit.burst), now)
        elif account.limit != limit:  # settings or the token changed
            account.limit = limit
            account.tokens = min(account.tokens, float(limit.burst))
        account.refill(now)
        return account

    def _prune(self, now: float) -> None:
        for key, account in list(self._accounts.items()):
            account.refill(now)
            if account.idle:
                del self._accounts[key]

    def _admit(self, identity: Identity, namespace: str) -> tuple[_Account, ...]:
        if identity.kind == "anonymous":
            return ()
        with self._lock:
            now = self._clock()
            accounts = []
            for kind, name, limit in self._limits(identity, namespace):
                account = self._account((kind, name), limit, now)
                what = f"namespace {name!r}" if kind == "namespace" else "this caller"
                refusal = account.refusal(what)
                if refusal is not None:
                    # Nothing was taken yet: a refused request costs no quota.
                    raise refusal
                accounts.append(account)
            for account in accounts:
                account.in_flight += 1
                if account.limit.rate is not None:
                    account.tokens -= 1.0
        return tuple(accounts)

    def _release(self, accounts: tuple[_Account, ...]) -> None:
        with self._lock:
            for account in accounts:
                account.in_flight -= 1
