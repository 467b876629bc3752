"""Priority classes: which work is served first when a model is busy.

A caller's priority comes from its credential (a token's or an identity
provider's class) and may be lowered, never raised, per request.  The
batcher orders its queues by it; it lives here, beside the identities that
carry it, so the access layer does not import the serving core.
"""

from __future__ import annotations

import enum

from ..errors import InvalidInput

__all__ = ["Priority", "parse_priority"]


class Priority(enum.IntEnum):
    """Priority classes; a lower value is served first."""

    REALTIME = 0
    INTERACTIVE = 1
    BATCH = 2


def parse_priority(value: str | int | Priority) -> Priority:
    """``"realtime"`` / ``"interactive"`` / ``"batch"`` (or a :class:`Priority`)."""
    if isinstance(value, Priority):
        return value
    if isinstance(value, int):
        return Priority(value)
    try:
        return Priority[value.upper()]
    except KeyError:
        choices = ", ".join(p.name.lower() for p in Priority)
        raise InvalidInput(f"unknown priority {value!r}; choose one of {choices}") from None
