"""Reading YAML that someone else wrote: manifests, citation files, pipeline specs.

``yaml.safe_load`` builds no arbitrary objects, but it still expands
anchors and aliases: a few hundred bytes of nested aliases (a "billion
laughs" document) become hundreds of millions of nodes, minutes of CPU and
gigabytes of memory.  Nothing sciserve reads needs them, so :func:`load`
refuses the first anchor or alias it meets, before anything is expanded,
and refuses text over a size limit before parsing at all.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent

from .errors import PayloadTooLarge

__all__ = ["MAX_YAML_BYTES", "AliasesRefused", "load"]

#: Largest YAML document :func:`load` parses unless told otherwise.
MAX_YAML_BYTES = 4 * 2**20

#: libyaml's safe loader, when PyYAML was built with it.
_FAST: type[Any] | None = getattr(yaml, "CSafeLoader", None)


class AliasesRefused(ComposerError):
    """A document uses an anchor (``&name``) or alias (``*name``).

    A :class:`yaml.YAMLError`, so callers that already turn syntax errors
    into their own domain errors (with the line and column) handle it too.
    """


class _NoAliasLoader(yaml.SafeLoader):
    """A safe loader that refuses anchors and aliases as it composes nodes."""

    def __init__(self, stream: str | bytes, what: str) -> None:
        super().__init__(stream)
        self.what = what

    def compose_node(self, parent: Any, index: Any) -> Any:
        _refuse(self.peek_event(), self.what)  # type: ignore[no-untyped-call]
        return super().compose_node(parent, index)


def _refuse(event: Any, what: str) -> None:
    anchored = isinstance(event, ScalarEvent | CollectionStartEvent) and event.anchor
    if isinstance(event, AliasEvent) or anchored:
        raise AliasesRefused(
            None,
            None,
            f"YAML anchors and aliases (&name, *name) are not allowed in {what}; "
            "write the values out",
            event.start_mark,
        )


def load(text: str | bytes, *, what: str, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Parse one YAML document written by someone else.

    ``what`` names the document in errors ("a manifest").  Raises
    :class:`~sciserve.errors.PayloadTooLarge` for text over ``max_bytes``,
    :class:`AliasesRefused` (a :class:`yaml.YAMLError`) for any anchor or
    alias, and :class:`yaml.YAMLError` for invalid YAML.
    """
    if isinstance(text, bytes) or len(text) > max_bytes:
        size = len(text)  # a str longer than the limit is over it in bytes too
    else:
        size = len(text.encode("utf-8", "replace"))
    if size > max_bytes:
        raise PayloadTooLarge(f"{what} is {size} bytes, over the {max_bytes}-byte limit")
    if _FAST is not None:
        # libyaml: a pass over the events refuses any anchor or alias before
        # a second one builds the data, both in C (several times faster than
        # the pure-Python loader, which matters on a server's shared threads).
        for event in yaml.parse(text, Loader=_FAST):
            _refuse(event, what)
        return yaml.load(text, Loader=_FAST)  # noqa: S506 - a safe loader
    loader = _NoAliasLoader(text, what)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
