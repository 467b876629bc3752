"""The inference route's path, known to the HTTP app and the front ends.

Kept apart from :mod:`~sciserve.protocol.rest` so a front-end process can
recognise inference requests without importing the serving stack.
"""

from __future__ import annotations

import re

__all__ = ["INFER_PATH", "infer_model"]

#: ``/v2/models/{name}[/versions/{version}]/infer``: the route that carries the load.
INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


def infer_model(method: str, path: str) -> str | None:
    """The model segment of an inference request's path (as it appears in
    the path), or ``None`` when ``method path`` is not inference."""
    if method != "POST":
        return None
    match = INFER_PATH.fullmatch(path)
    return None if match is None else match.group(1)
