"""Durations for token lifetimes and report windows."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sciserve.access.duration import parse_duration
from sciserve.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("12h", timedelta(hours=12)),
        ("30d", timedelta(days=30)),
        ("2w", timedelta(weeks=2)),
        ("1.5h", timedelta(minutes=90)),
        (" 7D ", timedelta(days=7)),
    ],
)
def test_parse(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "d", "30x", "-5d", "0", "1 day"])
def test_invalid(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_duration(text)
