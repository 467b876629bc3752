"""The one authorisation rule.

What a caller may not see does not exist for them: asking for it fails
exactly like asking for something missing (:class:`NotFound`, with the
registry's own wording).  What they may see but not do is
:class:`PermissionDenied`.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import NotFound, PermissionDenied
from .identity import Identity, Scope

__all__ = ["authorize", "visible"]


def authorize(
    identity: Identity,
    action: Scope,
    namespace: str,
    name: str | None = None,
    *,
    what: str = "model",
) -> None:
    """Allow ``action`` on namespace ``namespace`` (model ``name`` in it, if given) or raise.

    Raises :class:`NotFound` ("no model ns/name", "no dataset ns/name" for
    ``what="dataset"``, or "no namespace 'ns'") when
    the identity holds no scope there, :class:`PermissionDenied` when it holds
    some but not ``action``.
    """
    if not identity.can_see(namespace):
        if name is not None:
            raise NotFound(f"no {what} {namespace}/{name}")
        raise NotFound(f"no namespace {namespace!r}")
    if not identity.allows(action, namespace):
        raise PermissionDenied(
            f"{identity.subject} may not {action} in namespace {namespace!r}: "
            f"the {action!r} scope is missing"
        )


def visible(identity: Identity, namespaces: Iterable[str]) -> list[str]:
    """The namespaces (e.g. of a model listing) the identity may see, in order."""
    return [ns for ns in namespaces if identity.can_see(ns)]
