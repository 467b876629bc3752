"""Everything a server needs from the access layer, built from one registry."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import AccessConfig
from ..registry.registry import Registry
from .audit import DeniedRequests
from .authenticator import Authenticator
from .federated import JwtVerifier
from .quotas import Quotas
from .tokens import TokenStore
from .usage import UsageStore

__all__ = ["AccessLayer"]


@dataclass(frozen=True)
class AccessLayer:
    """The access components of one server process, sharing the registry's database."""

    config: AccessConfig
    tokens: TokenStore
    jwts: JwtVerifier
    authenticator: Authenticator
    quotas: Quotas
    usage: UsageStore
    denied: DeniedRequests

    @classmethod
    def open(cls, registry: Registry, config: AccessConfig | None = None) -> AccessLayer:
        """Wire the components for ``registry`` (``config`` defaults to its settings)."""
        config = config or registry.settings.access
        tokens = TokenStore(registry, config)
        jwts = JwtVerifier(config)
        return cls(
            config=config,
            tokens=tokens,
            jwts=jwts,
            authenticator=Authenticator(tokens, jwts, config),
            quotas=Quotas(config),
            usage=UsageStore(registry, config),
            denied=DeniedRequests(registry, interval=config.denied_audit_interval),
        )

    def close(self) -> None:
        """Write pending usage and release network clients."""
        try:
            self.usage.flush()
        finally:
            self.jwts.close()
