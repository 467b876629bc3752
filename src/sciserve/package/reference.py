"""Model references: ``[namespace/]name[:version | @alias]``.

* ``lc-classifier`` — the ``production`` alias when set, else the newest
  non-yanked version (newest by PEP 440 ordering, publish time for versions
  that are not PEP 440).
* ``lc-classifier:1.2.0`` — exactly that version (also when yanked).
* ``lc-classifier@staging`` — whatever the alias points to; ``@latest`` is
  maintained by the registry and always means the newest non-yanked version.
* ``astro/lc-classifier…`` — in namespace ``astro``; the default namespace
  is ``default``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidReference
from .manifest import NAME_RE, NAMESPACE_RE, VERSION_RE

__all__ = ["ALIAS_RE", "LATEST", "PRODUCTION", "Reference", "parse_reference", "served_name"]

ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
LATEST = "latest"
PRODUCTION = "production"


@dataclass(frozen=True)
class Reference:
    namespace: str
    name: str
    version: str | None = None
    alias: str | None = None

    def __str__(self) -> str:
        text = f"{self.namespace}/{self.name}"
        if self.version:
            return f"{text}:{self.version}"
        if self.alias:
            return f"{text}@{self.alias}"
        return text


def parse_reference(text: str, *, default_namespace: str = "default") -> Reference:
    """Parse a reference string; raise :class:`InvalidReference` with a hint."""
    raw = text.strip()
    namespace, slash, rest = raw.rpartition("/")
    if not slash:
        namespace, rest = default_namespace, raw
    version = alias = None
    if "@" in rest:
        rest, _, alias = rest.partition("@")
        if not ALIAS_RE.fullmatch(alias):
            raise InvalidReference(f"{text!r}: {alias!r} is not a valid alias")
    elif ":" in rest:
        rest, _, version = rest.partition(":")
        if not VERSION_RE.fullmatch(version):
            raise InvalidReference(f"{text!r}: {version!r} is not a valid version")
    if not NAMESPACE_RE.fullmatch(namespace):
        raise InvalidReference(f"{text!r}: {namespace!r} is not a valid namespace")
    if not NAME_RE.fullmatch(rest):
        raise InvalidReference(
            f"{text!r} is not a model reference; use [namespace/]name[:version|@alias]"
        )
    return Reference(namespace, rest, version, alias)


def served_name(namespace: str, name: str) -> str:
    """The name a server serves ``namespace/name`` under: ``name`` in ``default``,
    else ``namespace.name``."""
    return name if namespace == "default" else f"{namespace}.{name}"
