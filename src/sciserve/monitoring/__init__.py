"""Monitoring of served models: drift of their traffic, staleness, alerts.

See :mod:`.sketches` (live statistics), :mod:`.reference` (what traffic is
compared with), :mod:`.drift` (scores and the alert lifecycle),
:mod:`.staleness`, :mod:`.webhook` and :mod:`.monitor` (the request path).
"""

from __future__ import annotations

from .drift import AlertState, DriftMonitor, DriftScores, score
from .monitor import Monitor, alert_body
from .reference import Reference, ReferenceSource, ReferenceStore
from .sketches import Layout, LiveWindow, WindowStats
from .staleness import Gate, Staleness, StaleReason, check_staleness, compatible
from .webhook import WebhookNotifier

__all__ = [
    "AlertState",
    "DriftMonitor",
    "DriftScores",
    "Gate",
    "Layout",
    "LiveWindow",
    "Monitor",
    "Reference",
    "ReferenceSource",
    "ReferenceStore",
    "StaleReason",
    "Staleness",
    "WebhookNotifier",
    "WindowStats",
    "alert_body",
    "check_staleness",
    "compatible",
    "score",
]
