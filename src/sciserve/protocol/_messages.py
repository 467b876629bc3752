"""What an error message may show a remote client: the one place both
adapters (REST and gRPC) pass every error text through.

Domain errors are worded for whoever runs sciserve locally, so some name
files by their full path (a scratch directory, the artifact store, the
package cache).  A client of a server must not learn the server's paths:
each absolute path is cut to its last component, which still tells the
client which file is meant.

Messages also echo what the client sent (a model name, a version, a
number); an echo of 100 KB would not fit in gRPC's metadata and turn a
NOT_FOUND into RESOURCE_EXHAUSTED, so long words are cut.
"""

from __future__ import annotations

import re

__all__ = ["client_message"]

#: An absolute POSIX path: "/" + components, not preceded by anything that
#: would make it part of a word, a URL ("s3://bucket/key") or a relative path.
_PATH = re.compile(r"(?<![\w./~-])(?:/[^\s/'\"(),;:]+)+/?")

#: Words (runs of non-space characters) longer than this are cut to
#: ``_KEEP`` characters and their length.
_MAX_WORD = 256
_KEEP = 64
_LONG_WORD = re.compile(rf"\S{{{_MAX_WORD + 1},}}")


def _last_component(match: re.Match[str]) -> str:
    return match.group(0).rstrip("/").rsplit("/", 1)[-1]


def _cut(match: re.Match[str]) -> str:
    word = match.group(0)
    return f"{word[:_KEEP]}...({len(word)} characters)"


def client_message(text: str, max_chars: int | None = None) -> str:
    """``text`` fit for a remote client: absolute paths cut to their last
    component, words of over 256 characters cut, and the whole cut to
    ``max_chars`` if given."""
    if "/" in text:
        text = _PATH.sub(_last_component, text)
    if len(text) > _MAX_WORD:
        text = _LONG_WORD.sub(_cut, text)
    if max_chars is not None and len(text) > max_chars:
        text = text[: max_chars - 3] + "..."
    return text
