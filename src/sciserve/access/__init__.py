"""Access control for a shared sciserve: who may do what, how much, and what they used.

- :mod:`.identity` — :class:`Identity` and its scopes (``read``, ``infer``,
  ``publish``, ``admin``) per namespace.
- :mod:`.tokens` — API tokens ``ssv_<id>_<secret>`` stored as HMACs.
- :mod:`.federated` — bearer JWTs from configured identity providers.
- :mod:`.authenticator` — from an ``Authorization`` header to an identity.
- :mod:`.priority` — :class:`Priority` classes (realtime, interactive, batch).
- :mod:`.policy` — :func:`authorize`: invisible is "not found", visible but
  not allowed is "permission denied".
- :mod:`.quotas` — rate and concurrency limits per caller and namespace.
- :mod:`.usage` — requests, rows and compute seconds per caller and model.
- :mod:`.audit` — security events in the registry's audit trail.
- :mod:`.bind` — refuse to serve unauthenticated beyond loopback.
"""

from __future__ import annotations

from .audit import DeniedRequests, audit
from .authenticator import Authenticator
from .bind import check_bind_safety, is_loopback
from .duration import parse_duration
from .federated import JwtVerifier
from .identity import ANY_NAMESPACE, SCOPES, Identity, Scope
from .layer import AccessLayer
from .policy import authorize, visible
from .priority import Priority, parse_priority
from .quotas import Quotas
from .tokens import TokenRecord, TokenStore
from .usage import USAGE_COLUMNS, UsageStore, to_csv

__all__ = [
    "ANY_NAMESPACE",
    "SCOPES",
    "USAGE_COLUMNS",
    "AccessLayer",
    "Authenticator",
    "DeniedRequests",
    "Identity",
    "JwtVerifier",
    "Priority",
    "Quotas",
    "Scope",
    "TokenRecord",
    "TokenStore",
    "UsageStore",
    "audit",
    "authorize",
    "check_bind_safety",
    "is_loopback",
    "parse_duration",
    "parse_priority",
    "to_csv",
    "visible",
]
