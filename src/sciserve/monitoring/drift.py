"""Drift scores between reference and live statistics, and the alert they raise.

Per input feature: the population stability index (PSI) on ten bins cut at
the reference's deciles, and the Kolmogorov-Smirnov statistic (the largest
difference between the two CDFs, read from the sketches at the reference's
percentiles).  Where the reference is cut (:class:`Cuts`) is computed once
per reference, and the live side is read from each live window's sketch
and weighted by its rows, so a check costs one CDF query per sketch and
never copies or merges one.  Per classifier
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import DriftThresholds, MonitoringConfig
from .reference import Reference
from .sketches import FeatureStats, Layout, LiveWindow, Tensors, WindowStats

__all__ = [
    "AlertState",
    "Breach",
    "Cuts",
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


@dataclass(frozen=True)
class Cuts:
    """Where one reference feature's CDF is compared with live traffic's.

    ``points`` are the reference's deciles (the PSI's bin edges) and
    percentiles (where the KS statistic is read), sorted and unique, so one
    CDF query of a live sketch serves both scores.
    """

    points: np.ndarray
    #: Indices into ``points`` of the PSI's bin edges.
    psi_edges: np.ndarray
    #: The reference's share of each PSI bin (floored).
    expected: np.ndarray
    #: Indices into ``points`` of the KS points, and the reference's CDF there.
    ks_points: np.ndarray
    reference_cdf: np.ndarray

    @classmethod
    def of(cls, reference: FeatureStats) -> Cuts | None:
        """The cuts of ``reference`` (``None`` if it saw no value)."""
        if reference.n == 0:
            return None
        sketch = reference.sketch
        edges = np.unique(np.asarray(sketch.get_quantiles(np.linspace(0, 1, PSI_BINS + 1)[1:-1])))
        percentiles = np.unique(np.asarray(sketch.get_quantiles(np.linspace(0, 1, _KS_POINTS))))
        points = np.union1d(edges, percentiles)
        cdf = np.asarray(sketch.get_cdf(points))[:-1]  # the last value (1.0) is past every point
        psi_edges = np.searchsorted(points, edges)
        ks_points = np.searchsorted(points, percentiles)
        return cls(
            points=points,
            psi_edges=psi_edges,
            expected=_bin_shares(cdf[psi_edges]),
            ks_points=ks_points,
            reference_cdf=cdf[ks_points],
        )

    def psi(self, live_cdf: np.ndarray) -> float:
        """PSI of a live CDF read at :attr:`points`."""
        # Array methods rather than np.* functions: this runs per feature per
        # check, where numpy's Python-level dispatch was most of the cost.
        actual = _bin_shares(live_cdf[self.psi_edges])
        return float(((actual - self.expected) * np.log(actual / self.expected)).sum())

    def ks(self, live_cdf: np.ndarray) -> float:
        """KS statistic of a live CDF read at :attr:`points`."""
        return float(np.abs(self.reference_cdf - live_cdf[self.ks_points]).max())


def _bin_shares(cdf_at_edges: np.ndarray) -> np.ndarray:
    """The share of each bin between consecutive edges (and below the first,
    above the last), floored so an empty bin gives a large but finite PSI."""
    edges = len(cdf_at_edges)
    shares = np.empty(edges + 1)
    shares[0] = cdf_at_edges[0]
    np.subtract(cdf_at_edges[1:], cdf_at_edges[:-1], out=shares[1:edges])
    shares[edges] = 1.0 - cdf_at_edges[-1]
    return np.maximum(shares, _PSI_FLOOR, out=shares)


def live_cdf(
    windows: Sequence[FeatureStats],
    points: np.ndarray,
    known: Sequence[np.ndarray | None] = (),
) -> np.ndarray | None:
    """The CDF at ``points`` of the values of every window together (each
    window's CDF weighted by its count); ``None`` if they saw no value.

    ``known[i]``, where given, is window ``i``'s CDF at ``points`` already
    read (a window that no longer changes); any read here is stored back
    into ``known`` when it is a list.
    """
    total = sum(w.n for w in windows)
    if total == 0:
        return None
    acc = np.zeros(len(points))
    for i, w in enumerate(windows):
        if not w.n:
            continue
        cdf = known[i] if i < len(known) else None
        if cdf is None:
            cdf = np.asarray(w.sketch.get_cdf(points))[:-1]
            if isinstance(known, list) and i < len(known):
                known[i] = cdf
        acc += w.n * cdf
    out: np.ndarray = acc / total
    return out


def psi(reference: FeatureStats, live: FeatureStats) -> float:
    """Population stability index of ``live`` against ``reference``."""
    cuts = Cuts.of(reference)
    cdf = None if cuts is None else live_cdf([live], cuts.points)
    return 0.0 if cuts is None or cdf is None else cuts.psi(cdf)


def ks_statistic(reference: FeatureStats, live: FeatureStats) -> float:
    """Largest difference between the CDFs of ``reference`` and ``live``
    (read at the reference's percentiles)."""
    cuts = Cuts.of(reference)
    cdf = None if cuts is None else live_cdf([live], cuts.points)
    return 0.0 if cuts is None or cdf is None else cuts.ks(cdf)


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


def reference_cuts(reference: WindowStats) -> dict[str, Cuts | None]:
    """The :class:`Cuts` of every feature of ``reference``."""
    return {name: Cuts.of(stats) for name, stats in reference.features.items()}


def score(
    reference: WindowStats,
    live: WindowStats | Sequence[WindowStats],
    cuts: Mapping[str, Cuts | None] | None = None,
    settled: dict[str, np.ndarray] | None = None,
) -> DriftScores:
    """Compare ``live`` (one window, or several judged together) with
    ``reference`` on everything both measured.

    ``cuts`` are the reference's, if already known.  ``settled`` caches, per
    feature, the CDF of the first of several windows, which the caller
    promises no longer changes (a live window's previous one) until it
    empties the cache.
    """
    windows = [live] if isinstance(live, WindowStats) else list(live)
    if cuts is None:
        cuts = reference_cuts(reference)
    cache = settled if settled is not None and len(windows) > 1 else None
    out = DriftScores()
    for name in reference.features:
        now = [w.features.get(name) for w in windows]
        if not any(s is not None and s.n for s in now):
            continue
        cut = cuts.get(name)
        cdf = None
        if cut is not None:
            parts = [s if s is not None else FeatureStats() for s in now]
            known: list[np.ndarray | None] = [None] * len(parts)
            if cache is not None:
                known[0] = cache.get(name)
            cdf = live_cdf(parts, cut.points, known)
            if cache is not None and known[0] is not None:
                cache[name] = known[0]
        out.psi[name] = 0.0 if cut is None or cdf is None else cut.psi(cdf)
        out.ks[name] = 0.0 if cut is None or cdf is None else cut.ks(cdf)
    for name, ref_counts in reference.classes.items():
        counted = [
            c
            for w in windows
            if (c := w.classes.get(name)) is not None and c.labels == ref_counts.labels
        ]
        if counted and sum(c.n for c in counted):
            mix = sum((c.counts for c in counted), np.zeros(len(ref_counts.labels), np.int64))
            out.class_shift[name] = class_shift(ref_counts.mix(), mix / mix.sum())
    for name, ref_pred in reference.predictions.items():
        preds = [p for w in windows if (p := w.predictions.get(name)) is not None and p.n]
        if preds:
            out.mean_shift[name] = mean_shift(ref_pred, _moments(preds))
    return out


def _moments(parts: Sequence[FeatureStats]) -> FeatureStats:
    """Count, sum and sum of squares of ``parts`` together (no sketch merge)."""
    if len(parts) == 1:
        return parts[0]
    out = FeatureStats()
    for p in parts:
        out.n += p.n
        out.sum += p.sum
        out.sumsq += p.sumsq
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
        self._cuts = {} if reference is None else reference_cuts(reference.stats)
        # CDFs of the previous window at the cuts: it does not change until
        # the window rotates, so each is read once, not at every check.
        self._settled: dict[str, np.ndarray] = {}
        self._settled_window: WindowStats | None = None
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
        self._cuts = {} if reference is None else reference_cuts(reference.stats)
        self._settled = {}
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
        windows = self.window.windows()
        judged_rows = sum(w.rows for w in windows)
        previous = self.state
        if self._settled_window is not self.window.previous:
            self._settled, self._settled_window = {}, self.window.previous
        self.scores = score(self.reference.stats, windows, self._cuts, self._settled)
        self.breaches = tuple(self.scores.breaches(self.thresholds))
        # Never more than a window: the judged rows are at least that once it filled.
        if judged_rows < min(self.config.min_samples, self.config.window):
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
        self._status = self._snapshot(judged_rows)
        if self.state is previous or not (
            self.state is AlertState.ALERTING or previous is AlertState.ALERTING
        ):
            return None
        return Transition(
            self.state, previous, self.breaches, self.scores, judged_rows, time.time()
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
