"""The lifecycle of a loaded model version, as an enum with guarded transitions.

::

    LOADING ──► READY ──► DRAINING ──► UNLOADED
       │                                  ▲
       └──────► FAILED ───────────────────┘
    (FAILED and UNLOADED may go back to LOADING)
"""

from __future__ import annotations

import enum

__all__ = ["Lifecycle", "ModelState"]


class ModelState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    DRAINING = "UNLOADING"  # Triton's word for it in repository indexes
    UNLOADED = "UNAVAILABLE"
    FAILED = "FAILED"


_ALLOWED: dict[ModelState, frozenset[ModelState]] = {
    ModelState.LOADING: frozenset({ModelState.READY, ModelState.FAILED}),
    ModelState.READY: frozenset({ModelState.DRAINING}),
    ModelState.DRAINING: frozenset({ModelState.UNLOADED}),
    ModelState.FAILED: frozenset({ModelState.LOADING, ModelState.UNLOADED}),
    ModelState.UNLOADED: frozenset({ModelState.LOADING}),
}


class Lifecycle:
    """Current state plus the reason for it; illegal moves are programming errors."""

    def __init__(self) -> None:
        self.state = ModelState.LOADING
        self.reason = ""

    def move(self, to: ModelState, reason: str = "") -> None:
        if to not in _ALLOWED[self.state]:
            raise RuntimeError(f"illegal model state change {self.state.name} -> {to.name}")
        self.state = to
        self.reason = reason

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY
