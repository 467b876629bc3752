"""Who is calling, and what they may do where.

An :class:`Identity` is what every credential (API token, federated JWT, or
none at all when authentication is off) turns into.  Scopes are granted per
namespace; the namespace ``*`` stands for every namespace.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

from ..config import RateLimit
from ..errors import InvalidInput
from ..package.manifest import NAMESPACE_RE
from .priority import Priority

__all__ = [
    "ANY_NAMESPACE",
    "SCOPES",
    "Identity",
    "Kind",
    "Scope",
    "normalize_scopes",
]

Scope = Literal["read", "infer", "publish", "admin"]
Kind = Literal["token", "jwt", "anonymous"]

SCOPES: tuple[Scope, ...] = get_args(Scope)
ANY_NAMESPACE = "*"

# Running a model or publishing one is pointless without seeing it, so those
# scopes include "read"; "admin" in a namespace includes everything there.
_IMPLIED: dict[str, frozenset[str]] = {
    "read": frozenset({"read", "infer", "publish", "admin"}),
    "infer": frozenset({"infer", "admin"}),
    "publish": frozenset({"publish", "admin"}),
    "admin": frozenset({"admin"}),
}

ScopeMap = Mapping[str, frozenset[str]]


def normalize_scopes(scopes: Mapping[str, Iterable[str]]) -> dict[str, frozenset[str]]:
    """Validate namespace -> scopes, dropping namespaces left without any scope."""
    out: dict[str, frozenset[str]] = {}
    for namespace, granted in scopes.items():
        if namespace != ANY_NAMESPACE and not NAMESPACE_RE.fullmatch(namespace):
            raise InvalidInput(f"{namespace!r} is not a namespace (or '*')")
        names = frozenset(granted)
        unknown = sorted(names - set(SCOPES))
        if unknown:
            raise InvalidInput(
                f"unknown scope(s) {', '.join(unknown)}; choose from {', '.join(SCOPES)}"
            )
        if names:
            out[namespace] = out.get(namespace, frozenset()) | names
    return out


@dataclass(frozen=True)
class Identity:
    """An authenticated caller (or the anonymous one when auth is off).

    Holds no secret: it is safe to log, and it is what the audit trail and the
    usage accounts name.
    """

    subject: str
    kind: Kind
    token_id: str | None = None
    scopes: ScopeMap = field(default_factory=dict)
    priority: Priority = Priority.INTERACTIVE
    #: The ``iss`` of a federated identity.
    issuer: str | None = None
    #: Limits stored on the token; ``None`` means the configured defaults.
    limit: RateLimit | None = None

    @classmethod
    def anonymous(cls) -> Identity:
        """The caller when authentication is disabled: allowed everything."""
        return cls(subject="anonymous", kind="anonymous")

    @property
    def principal(self) -> str:
        """The key quotas and usage are accounted under: one per token, else per subject."""
        if self.token_id is not None:
            return self.token_id
        if self.issuer is not None:
            return f"{self.subject}@{self.issuer}"
        return self.subject

    @property
    def is_admin(self) -> bool:
        return self.kind == "anonymous" or "admin" in self.scopes.get(ANY_NAMESPACE, ())

    def _granted(self, namespace: str) -> frozenset[str]:
        return self.scopes.get(namespace, frozenset()) | self.scopes.get(ANY_NAMESPACE, frozenset())

    def allows(self, scope: Scope, namespace: str) -> bool:
        """Whether this identity holds ``scope`` (or one implying it) in ``namespace``."""
        if self.is_admin:
            return True
        return bool(self._granted(namespace) & _IMPLIED[scope])

    def allows_somewhere(self, scope: Scope) -> bool:
        """Whether this identity holds ``scope`` (or one implying it) in some namespace."""
        return self.is_admin or any(self.allows(scope, namespace) for namespace in self.scopes)

    def can_see(self, namespace: str) -> bool:
        """Whether the namespace and its models are visible at all (any scope there)."""
        return self.is_admin or bool(self._granted(namespace))
