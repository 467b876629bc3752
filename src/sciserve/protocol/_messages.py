"""What an error message may show a remote client: the one place both
adapters (REST and gRPC) pass every error text through.

Domain errors are worded for whoever runs sciserve locally, so some name
files by their full path (a scratch directory, the artifact store, the
package cache).  A client of a server must not learn the server's paths:
each absolute path is cut to its last component, which still tells the
client which file is meant.
"""

from __future__ import annotations

import re

__all__ = ["client_message"]

#: An absolute POSIX path: "/" + components, not preceded by anything that
#: would make it part of a word, a URL ("s3://bucket/key") or a relative path.
_PATH = re.compile(r"(?<![\w./~-])(?:/[^\s/'\"(),;:]+)+/?")


def _last_component(match: re.Match[str]) -> str:
    return match.group(0).rstrip("/").rsplit("/", 1)[-1]


def client_message(text: str) -> str:
    """``text`` fit for a remote client: absolute paths cut to their last component."""
    if "/" not in text:
        return text
    return _PATH.sub(_last_component, text)
