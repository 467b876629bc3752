"""Model references: ``[namespace/]name[:version | @alias]``.

* ``lc-classifier`` — the ``production`` alias when set, else the newest
  non-yanked version (newest by PEP 440 ordering, publish time for versions
  that are not PEP 440).
* ``lc-classifier:1.2.0`` — exactly that version (also when yanked).
* ``lc-classifier@staging`` — whatever the alias points to; ``@latest`` is
  maintained by the registry and always means the newest non-yanked version.
* ``astro/lc-classifier…`` — in namespace ``astro``; the default namespace
  is ``default``.

Served names, the names a server knows models by (:func:`served_name`): a
model of namespace ``default`` is served as ``name``, any other as
``namespace.name``.  For that to name one model only, a model name in
``default`` may not contain a dot (:func:`served_name_problem`): a served
name with a dot then always means ``namespace.name`` (namespaces have no
dots, so the first dot ends the namespace) and one without a dot a model of
``default``.  Names in other namespaces may contain dots (``astro.lc.v2`` is
``astro/lc.v2``).

Versions and aliases share one place in served URLs
(``/v2/models/m/versions/{version or alias}``), so a version may not be
named like an alias: not ``latest`` or ``production``
(:func:`version_problem`), nor like an alias of the model (the registry
checks that).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidReference
from .manifest import NAME_RE, NAMESPACE_RE, VERSION_RE

__all__ = [
    "ALIAS_RE",
    "DEFAULT_NAMESPACE",
    "LATEST",
    "PRODUCTION",
    "RESERVED_ALIASES",
    "Reference",
    "parse_reference",
    "parse_served_name",
    "served_name",
    "served_name_problem",
    "version_problem",
]

ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
LATEST = "latest"
PRODUCTION = "production"
#: Aliases every model may have, which no version may be named after.
RESERVED_ALIASES = frozenset({LATEST, PRODUCTION})
DEFAULT_NAMESPACE = "default"


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
    """The name a server knows ``namespace/name`` by (one-to-one under the naming rule)."""
    return name if namespace == DEFAULT_NAMESPACE else f"{namespace}.{name}"


def parse_served_name(served: str) -> tuple[str, str] | None:
    """The ``(namespace, name)`` a served name stands for under the naming rule.

    ``None`` when no model can be served under it.  This says what a name
    *means*; whether the caller may use it is decided on the namespace the
    model is stored in (the server looks the name up among the models it
    serves), never on this split alone.
    """
    namespace, dot, name = served.partition(".")
    if not dot:
        namespace, name = DEFAULT_NAMESPACE, served
    if not NAMESPACE_RE.fullmatch(namespace) or not NAME_RE.fullmatch(name):
        return None
    if served_name_problem(namespace, name) is not None:
        return None
    return namespace, name


def served_name_problem(namespace: str, name: str) -> str | None:
    """Why ``namespace/name`` cannot be published (its served name would be ambiguous), if so."""
    if namespace == DEFAULT_NAMESPACE and "." in name:
        prefix, _, rest = name.partition(".")
        if NAMESPACE_RE.fullmatch(prefix) and NAME_RE.fullmatch(rest):
            clash = f", which is the served name of model {rest!r} in namespace {prefix!r}"
            where = f"namespace: {prefix} in sciserve.yaml, or 'sciserve init --namespace {prefix}'"
        else:
            clash = ""
            where = "namespace: NAME in sciserve.yaml, or 'sciserve init --namespace NAME'"
        return (
            f"model names in namespace {DEFAULT_NAMESPACE!r} may not contain '.': a model of "
            f"{DEFAULT_NAMESPACE!r} is served by its bare name, and a dotted served name means "
            f"namespace.name ({name!r}{clash}); publish it in a namespace ({where}) "
            f"or use a name without '.', e.g. {name.replace('.', '-')!r}"
        )
    return None


def version_problem(version: str) -> str | None:
    """Why ``version`` cannot name a version (it would be taken for an alias), if so."""
    if version in RESERVED_ALIASES:
        return (
            f"{version!r} is an alias every model may have, so it cannot name a version; "
            "use a version number such as 1.0.0"
        )
    return None
