"""Drift scores between reference and live statistics, and the alert they raise.

Per input feature: the population stability index (PSI) on ten bins cut at
the reference's deciles, and the Kolmogorov-Smirnov statistic (the largest
difference between the two CDFs, read from the sketches).  Per classifier
output: the total-variation distance between the class mixes.  Per other
output: the shift of the mean prediction in reference standard deviations.

:class:`DriftMonitor` judges one served model version: it raises an alert
when any score passes its threshold (after ``min_samples`` rows) and clears
it only when every score is back below ``clear_fraction`` of its threshold,
so a score hovering at the threshold does not flap.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import DriftThresholds, MonitoringConfig
from .reference import Reference
from .sketches import FeatureStats, Layout, LiveWindow, Tensors, WindowStats

__all__ = [
    "AlertState",
    "Breach",
    "DriftMonitor",
    "DriftScores",
    "Transition",
    "class_shift",
    "ks_statistic",
    "mean_shift",
    "psi",
    "score",
]

#: Bins of the PSI: cut at the reference's deciles.
PSI_BINS = 10
#: Floor of a bin's share in the PSI, so an empty bin gives a large but finite score.
_PSI_FLOOR = 1e-4
#: Points at which the two CDFs are compared for the KS statistic, per sketch.
_KS_POINTS = 101


class AlertState(enum.Enum):
    """Where a model version's drift judgement stands."""

    #: No request of the model version has been monitored yet.
    NO_TRAFFIC = "no_traffic"
    #: No reference statistics: nothing to compare with.
    NO_REFERENCE = "no_reference"
    #: Fewer than ``min_samples`` rows seen since the monitor started.
    WARMING_UP = "warming_up"
    OK = "ok"
    ALERTING = "alerting"


def psi(reference: FeatureStats, live: FeatureStats) -> float:
    """Population stability index of ``live`` against ``reference``."""
    if reference.n == 0 or live.n == 0:
        return 0.0
    edges = np.unique(
        np.asarray(reference.sketch.get_quantiles(np.linspace(0, 1, PSI_BINS + 1)[1:-1]))
    )
    expected = np.diff(np.asarray(reference.sketch.get_cdf(edges)), prepend=0.0)
    actual = np.diff(np.asarray(live.sketch.get_cdf(edges)), prepend=0.0)
    expected = np.maximum(expected, _PSI_FLOOR)
    actual = np.maximum(actual, _PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks_statistic(reference: FeatureStats, live: FeatureStats) -> float:
    """Largest difference between the CDFs of ``reference`` and ``live``."""
    if reference.n == 0 or live.n == 0:
        return 0.0
    ranks = np.linspace(0, 1, _KS_POINTS)
    points = np.unique(
        np.concatenate(
            [
                np.asarray(reference.sketch.get_quantiles(ranks)),
                np.asarray(live.sketch.get_quantiles(ranks)),
            ]
        )
    )
    ref_cdf = np.asarray(reference.sketch.get_cdf(points))
    live_cdf = np.asarray(live.sketch.get_cdf(points))
    return float(np.max(np.abs(ref_cdf - live_cdf)))


def class_shift(reference: np.ndarray, live: np.ndarray) -> float:
    """Total-variation distance between two class mixes (shares summing to 1)."""
    if reference.sum() == 0 or live.sum() == 0:
        return 0.0
    return float(0.5 * np.abs(reference - live).sum())


def mean_shift(reference: FeatureStats, live: FeatureStats) -> float:
    """How far the live mean moved, in reference standard deviations."""
    if reference.n == 0 or live.n == 0:
        return 0.0
    scale = reference.std
    delta = abs(live.mean - reference.mean)
    if scale == 0.0:
        return 0.0 if delta == 0.0 else math.inf
    return delta / scale


@dataclass(frozen=True)
class DriftScores:
    """Every score of one comparison, keyed by feature or output name."""

    psi: dict[str, float] = field(default_factory=dict)
    ks: dict[str, float] = field(default_factory=dict)
    class_shift: dict[str, float] = field(default_factory=dict)
    mean_shift: dict[str, float] = field(default_factory=dict)

    def items(self) -> list[tuple[str, str, float]]:
        """``(kind, name, score)`` of every score."""
        return [
            (kind, name, value)
            for kind in ("psi", "ks", "class_shift", "mean_shift")
            for name, value in getattr(self, kind).items()
        ]

    def breaches(self, thresholds: DriftThresholds, fraction: float = 1.0) -> list[Breach]:
        """The scores above ``fraction`` times their threshold."""
        found = []
        for kind, name, value in self.items():
            limit = getattr(thresholds, kind)
            if limit is not None and value > fraction * limit:
                found.append(Breach(kind, name, value, limit))
        return found

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {
            "psi": dict(self.psi),
            "ks": dict(self.ks),
            "class_shift": dict(self.class_shift),
            "mean_shift": dict(self.mean_shift),
        }


@dataclass(frozen=True)
class Breach:
    """One score above its threshold."""

    kind: str
    name: str
    score: float
    threshold: float


def score(reference: WindowStats, live: WindowStats) -> DriftScores:
    """Compare ``live`` with ``reference`` on everything both measured."""
    out = DriftScores()
    for name, ref in reference.features.items():
        now = live.features.get(name)
        if now is not None and now.n:
            out.psi[name] = psi(ref, now)
            out.ks[name] = ks_statistic(ref, now)
    for name, ref_counts in reference.classes.items():
        counts = live.classes.get(name)
        if counts is not None and counts.n and counts.labels == ref_counts.labels:
            out.class_shift[name] = class_shift(ref_counts.mix(), counts.mix())
    for name, ref_pred in reference.predictions.items():
        pred = live.predictions.get(name)
        if pred is not None and pred.n:
            out.mean_shift[name] = mean_shift(ref_pred, pred)
    return out


@dataclass(frozen=True)
class Transition:
    """A change of alert state, with what caused it."""

    state: AlertState
    previous: AlertState
    breaches: tuple[Breach, ...]
    scores: DriftScores
    rows: int
    at: float


class DriftMonitor:
    """Live statistics and the drift judgement of one served model version.

    Not thread-safe: one thread (the monitor's) feeds and checks it;
    :meth:`status` returns a snapshot other threads may read.
    """

    def __init__(
        self,
        model: str,
        version: str,
        layout: Layout,
        config: MonitoringConfig,
        reference: Reference | None = None,
    ) -> None:
        self.model = model
        self.version = version
        self.layout = layout
        self.config = config
        self.thresholds = config.thresholds_for(model)
        self.reference = reference
        self.window = LiveWindow(layout, config.window)
        self.state = AlertState.NO_REFERENCE if reference is None else AlertState.WARMING_UP
        self.scores = DriftScores()
        self.breaches: tuple[Breach, ...] = ()
        #: When the current alert was raised (Unix time), if one is.
        self.alert_started_at: float | None = None
        self._since_check = 0
        self._status: dict[str, Any] = self._snapshot()

    def observe(self, requests: Sequence[Tensors]) -> Transition | None:
        """Add requests' tensors; check drift every ``check_every`` rows."""
        rows = self.window.observe(requests)
        self._since_check += rows
        if self._since_check < self.config.check_every:
            return None
        self._since_check = 0
        return self.check()

    def set_reference(self, reference: Reference | None) -> None:
        self.reference = reference
        self.state = AlertState.NO_REFERENCE if reference is None else AlertState.WARMING_UP
        self.alert_started_at = None
        self.breaches = ()
        self._status = self._snapshot()

    def freeze(self) -> Reference:
        """The live window (current and previous) as a reference."""
        return Reference.from_window(self.window.judged())

    def check(self) -> Transition | None:
        """Score the live window and move the alert state; return the move, if any."""
        if self.reference is None:
            self._status = self._snapshot()
            return None
        judged = self.window.judged()
        previous = self.state
        self.scores = score(self.reference.stats, judged)
        self.breaches = tuple(self.scores.breaches(self.thresholds))
        # Never more than a window: the judged rows are at least that once it filled.
        if judged.rows < min(self.config.min_samples, self.config.window):
            self.state = AlertState.WARMING_UP
        elif self.breaches:
            self.state = AlertState.ALERTING
        elif previous is AlertState.ALERTING:
            lingering = self.scores.breaches(self.thresholds, self.config.clear_fraction)
            self.state = AlertState.ALERTING if lingering else AlertState.OK
        else:
            self.state = AlertState.OK
        if self.state is AlertState.ALERTING and previous is not AlertState.ALERTING:
            self.alert_started_at = time.time()
        elif self.state is not AlertState.ALERTING:
            self.alert_started_at = None
        self._status = self._snapshot(judged.rows)
        if self.state is previous or not (
            self.state is AlertState.ALERTING or previous is AlertState.ALERTING
        ):
            return None
        return Transition(
            self.state, previous, self.breaches, self.scores, judged.rows, time.time()
        )

    def _snapshot(self, judged_rows: int = 0) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "state": self.state.value,
            "alert_started_at": self.alert_started_at,
            "rows_seen": self.window.total_rows,
            "rows_judged": judged_rows,
            "window": self.config.window,
            "min_samples": self.config.min_samples,
            "ignored": self.window.current.ignored,
            "reference": None
            if self.reference is None
            else {
                "source": self.reference.source.value,
                "rows": self.reference.stats.rows,
                "created_at": None
                if self.reference.created_at is None
                else self.reference.created_at.isoformat(),
            },
            "thresholds": self.thresholds.model_dump(),
            "scores": self.scores.as_dict(),
            "breaches": [
                {"kind": b.kind, "name": b.name, "score": b.score, "threshold": b.threshold}
                for b in self.breaches
            ],
        }

    def status(self) -> dict[str, Any]:
        """The latest judgement, as plain data (safe to read from any thread)."""
        return self._status
