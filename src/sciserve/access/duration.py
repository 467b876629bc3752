"""Human durations such as ``30d`` or ``12h`` (token lifetimes, report windows)."""

from __future__ import annotations

import re
from datetime import timedelta

from ..errors import InvalidInput

__all__ = ["parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")


def parse_duration(text: str) -> timedelta:
    """``"90"`` (seconds), ``"15m"``, ``"12h"``, ``"30d"`` or ``"2w"`` as a positive timedelta."""
    match = _DURATION_RE.fullmatch(text.strip().lower())
    if match is None:
        raise InvalidInput(f"{text!r} is not a duration; use e.g. 3600, 15m, 12h, 30d or 2w")
    seconds = float(match[1]) * _UNITS[match[2] or "s"]
    if seconds <= 0:
        raise InvalidInput(f"duration {text!r} must be positive")
    return timedelta(seconds=seconds)
