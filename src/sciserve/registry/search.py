"""Searching the registry's models: the query, the match, the facets.

What the dashboard's catalogue (and anyone listing models) asks:
:meth:`Registry.search_models <sciserve.registry.registry.Registry.search_models>`
reads every model's default version in a fixed number of queries, keeps the
ones the caller may see, and hands them here as :class:`ModelEntry` (a few
fields of the stored manifest, read without validating it again: that took
most of a catalogue page's time at a thousand models).  Matching and the
facets (the values a filter may take) are computed over those entries, so a
page and its counts are always of the models the caller may see, and only
the page's versions are read in full.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "FACETS",
    "ModelEntry",
    "ModelFields",
    "ModelQuery",
    "entry_of",
    "facets",
    "fields_of",
    "matches",
]

#: The fields a query may filter on with one exact value, as facets.
FACETS: Final = ("namespace", "runtime", "license", "tag")


@dataclass(frozen=True)
class ModelQuery:
    """Which models to list: every given condition must hold.

    ``text`` matches when each of its words (case-insensitive) occurs in the
    model's namespace, name, description or tags; ``alias`` when any version
    of the model carries it (``latest`` included).
    """

    text: str = ""
    namespace: str | None = None
    runtime: str | None = None
    license: str | None = None
    tag: str | None = None
    alias: str | None = None


@dataclass(frozen=True)
class ModelFields:
    """What a search reads of a stored manifest."""

    runtime: str
    license: str | None
    tags: tuple[str, ...]
    description: str | None


def fields_of(manifest: Mapping[str, Any]) -> ModelFields:
    """The fields of a stored (canonical, already validated) manifest mapping."""
    return ModelFields(
        runtime=str(manifest.get("runtime", "")),
        license=manifest.get("license") or None,
        tags=tuple(str(t) for t in manifest.get("tags") or ()),
        description=manifest.get("description") or None,
    )


@dataclass(frozen=True)
class ModelEntry:
    """A model as a search sees it: its default version's listed fields."""

    namespace: str
    name: str
    version_id: int
    runtime: str
    license: str | None
    tags: tuple[str, ...]
    description: str | None
    #: Every alias on any version of the model.
    aliases: frozenset[str]

    @property
    def fields(self) -> ModelFields:
        return ModelFields(self.runtime, self.license, self.tags, self.description)


def entry_of(
    namespace: str, name: str, version_id: int, fields: ModelFields, aliases: Iterable[str]
) -> ModelEntry:
    """The entry of a model whose default version has ``fields``."""
    return ModelEntry(
        namespace=namespace,
        name=name,
        version_id=version_id,
        runtime=fields.runtime,
        license=fields.license,
        tags=fields.tags,
        description=fields.description,
        aliases=frozenset(aliases),
    )


def matches(entry: ModelEntry, query: ModelQuery) -> bool:
    """Whether ``entry`` meets every condition of ``query``."""
    if query.namespace is not None and entry.namespace != query.namespace:
        return False
    if query.runtime is not None and entry.runtime != query.runtime:
        return False
    if query.license is not None and (entry.license or "") != query.license:
        return False
    if query.tag is not None and query.tag not in entry.tags:
        return False
    if query.alias is not None and query.alias not in entry.aliases:
        return False
    words = query.text.lower().split()
    if words:
        text = " ".join([entry.namespace, entry.name, entry.description or "", *entry.tags]).lower()
        return all(word in text for word in words)
    return True


def facets(entries: Iterable[ModelEntry]) -> dict[str, list[str]]:
    """The values each of :data:`FACETS` takes over ``entries``, sorted."""
    found: dict[str, set[str]] = {key: set() for key in FACETS}
    for e in entries:
        found["namespace"].add(e.namespace)
        found["runtime"].add(e.runtime)
        if e.license:
            found["license"].add(e.license)
        found["tag"].update(e.tags)
    return {key: sorted(values) for key, values in found.items()}
