"""What a test needs from the machine: missing, it fails in CI and skips elsewhere."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    """A service, tool or privilege the test needs is missing: fail in CI
    (``CI`` set), where ``.ci/run`` provides it, and skip with ``reason``
    elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)
