"""Drift scores and the alert lifecycle, on seeded synthetic traffic."""

from __future__ import annotations

import numpy as np
import pytest

from sciserve.config import DriftThresholds, MonitoringConfig
from sciserve.monitoring import AlertState, DriftMonitor, Layout, Reference
from sciserve.monitoring.drift import (
    Transition,
    class_shift,
    ks_statistic,
    mean_shift,
    psi,
    score,
)
from sciserve.monitoring.sketches import FeatureStats

from helpers.traffic import Traffic, classifier_manifest

#: The bound the README states: a 1-sigma shift of one feature, or a class mix
#: moved by 0.3 in total variation, raises the alert within this many
#: one-row requests with the default ``[monitoring]`` settings.
DETECTION_BOUND = 6000
CONFIG = MonitoringConfig()


def _monitor(seed: int = 1, config: MonitoringConfig = CONFIG) -> DriftMonitor:
    layout = Layout(classifier_manifest())
    inputs, outputs = Traffic(seed).batch(50_000)
    reference = Reference.from_arrays(layout, inputs, outputs)
    return DriftMonitor("clf", "1.0.0", layout, config, reference)


def _feed(monitor: DriftMonitor, traffic: Traffic, requests: int, chunk: int = 100) -> int | None:
    """Feed one-row requests; return how many it took to raise the alert, if it was."""
    for done in range(chunk, requests + 1, chunk):
        transition = monitor.observe(traffic.requests(chunk))
        if transition is not None and transition.state is AlertState.ALERTING:
            return done
    return None


def test_reference_like_traffic_raises_no_alert_over_100k_requests() -> None:
    monitor = _monitor()
    worst: dict[str, float] = {}
    traffic = Traffic(seed=2)
    for _ in range(1000):
        transition = monitor.observe(traffic.requests(100))
        assert transition is None, transition
        assert monitor.state in (AlertState.WARMING_UP, AlertState.OK)
        if monitor.state is AlertState.OK:  # judged: min_samples rows or more
            for kind, _name, value in monitor.scores.items():
                worst[kind] = max(worst.get(kind, 0.0), value)
    assert monitor.state is AlertState.OK
    assert monitor.window.total_rows == 100_000
    thresholds = CONFIG.thresholds_for("clf")
    # Well under the thresholds, not merely under them (KLL compaction is
    # randomised: the worst KS over 8 runs of this traffic was 0.038).
    assert worst["psi"] < 0.5 * thresholds.psi  # type: ignore[operator]
    assert worst["ks"] < 0.5 * thresholds.ks  # type: ignore[operator]
    assert worst["class_shift"] < 0.5 * thresholds.class_shift  # type: ignore[operator]
    assert worst["mean_shift"] < 0.5 * thresholds.mean_shift  # type: ignore[operator]


@pytest.mark.parametrize("warmup", [3000, 5000, 7400, 9900])
def test_one_sigma_shift_of_one_feature_alerts_within_the_stated_bound(warmup: int) -> None:
    monitor = _monitor()
    assert _feed(monitor, Traffic(seed=3), warmup) is None
    took = _feed(monitor, Traffic(seed=4, shift=1.0), 3 * DETECTION_BOUND)
    assert took is not None and took <= DETECTION_BOUND, took
    assert {b.name for b in monitor.breaches} == {"mag"}
    assert {b.kind for b in monitor.breaches} <= {"psi", "ks"}
    assert monitor.alert_started_at is not None


def test_class_mix_change_alerts_and_names_the_output() -> None:
    monitor = _monitor()
    assert _feed(monitor, Traffic(seed=5), 6000) is None
    changed = Traffic(seed=6, mix=np.array([0.3, 0.3, 0.4]))
    took = _feed(monitor, changed, 3 * DETECTION_BOUND)
    assert took is not None and took <= DETECTION_BOUND, took
    assert [(b.kind, b.name) for b in monitor.breaches] == [("class_shift", "probs")]


def test_alert_clears_with_hysteresis_once_traffic_is_back() -> None:
    monitor = _monitor()
    _feed(monitor, Traffic(seed=7), 3000)
    assert _feed(monitor, Traffic(seed=8, shift=1.0), 20_000) is not None
    cleared: list[Transition] = []
    normal = Traffic(seed=9)
    for _ in range(300):
        transition = monitor.observe(normal.requests(100))
        if transition is not None:
            cleared.append(transition)
    assert [(t.previous, t.state) for t in cleared] == [(AlertState.ALERTING, AlertState.OK)]
    assert monitor.state is AlertState.OK
    assert monitor.alert_started_at is None


def test_hysteresis_keeps_the_alert_while_a_score_lingers_above_the_clear_level() -> None:
    monitor = _monitor()
    _feed(monitor, Traffic(seed=10), 3000)
    shifted = Traffic(seed=11, shift=1.0)
    assert _feed(monitor, shifted, 20_000) is not None
    _feed(monitor, shifted, 2 * CONFIG.window)  # the window now holds shifted rows only
    # A 0.5-sigma shift scores a KS of about 0.2 (2Φ(0.25) - 1): below the raise
    # level of a 0.3 threshold but above the clear level (half of it).
    monitor.thresholds = DriftThresholds(psi=10.0, ks=0.3, class_shift=0.9, mean_shift=10.0)
    lingering = Traffic(seed=12, shift=0.5)
    for _ in range(200):
        assert monitor.observe(lingering.requests(100)) is None
    assert monitor.state is AlertState.ALERTING
    assert 0.15 < max(monitor.scores.ks.values()) < 0.3


def test_no_alert_before_min_samples() -> None:
    monitor = _monitor(config=MonitoringConfig(min_samples=4000, check_every=500))
    # Shifted from the first request: judged only once 4000 rows are in.
    shifted = Traffic(seed=13, shift=3.0)
    for _ in range(39):
        monitor.observe(shifted.requests(100))
        assert monitor.state is AlertState.WARMING_UP
    took = _feed(monitor, shifted, 2000)
    assert took is not None and took <= 600


def test_without_reference_nothing_is_judged() -> None:
    layout = Layout(classifier_manifest())
    monitor = DriftMonitor("clf", "1.0.0", layout, CONFIG)
    for _ in range(50):
        assert monitor.observe(Traffic(seed=14, shift=5.0).requests(100)) is None
    assert monitor.state is AlertState.NO_REFERENCE
    assert monitor.status()["rows_seen"] == 5000


def test_per_model_thresholds_override_the_section() -> None:
    config = MonitoringConfig(
        thresholds=DriftThresholds(ks=0.2),
        models={"clf": DriftThresholds(psi=5.0), "other": DriftThresholds(ks=0.05)},
    )
    got = config.thresholds_for("clf")
    assert (got.psi, got.ks, got.class_shift, got.mean_shift) == (5.0, 0.2, 0.1, 0.5)
    assert config.thresholds_for("other").ks == 0.05
    assert config.thresholds_for("unknown").psi == 0.25


def test_scores_of_known_distributions() -> None:
    rng = np.random.default_rng(0)
    ref, same, moved = FeatureStats(), FeatureStats(), FeatureStats()
    ref.update(rng.normal(size=100_000))
    same.update(rng.normal(size=100_000))
    moved.update(rng.normal(1.0, 1.0, size=100_000))
    # KS of N(0,1) against N(1,1) is 2Φ(0.5) - 1 = 0.383.
    assert ks_statistic(ref, moved) == pytest.approx(0.383, abs=0.03)
    assert ks_statistic(ref, same) < 0.03
    assert psi(ref, same) < 0.01
    assert psi(ref, moved) > 0.5
    assert mean_shift(ref, moved) == pytest.approx(1.0, abs=0.02)
    assert class_shift(np.array([0.6, 0.3, 0.1]), np.array([0.3, 0.3, 0.4])) == pytest.approx(0.3)
    assert class_shift(np.zeros(3), np.array([1.0, 0.0, 0.0])) == 0.0
    constant = FeatureStats()
    constant.update(np.ones(10))
    assert mean_shift(constant, constant) == 0.0
    assert mean_shift(constant, moved) == float("inf")


def test_min_samples_beyond_the_window_waits_for_one_window_only() -> None:
    monitor = _monitor(config=MonitoringConfig(window=1000, min_samples=50_000, check_every=100))
    took = _feed(monitor, Traffic(seed=15, shift=3.0), 5000)
    assert took is not None and took <= 1000


def test_two_windows_are_scored_as_their_merge() -> None:
    layout = Layout(classifier_manifest())
    reference = Reference.from_arrays(layout, *Traffic(seed=20).batch(20_000))
    previous, current = layout.empty(), layout.empty()
    layout.update(previous, *Traffic(seed=21).batch(4000))
    layout.update(current, *Traffic(seed=22, shift=0.7, mix=np.array([0.3, 0.3, 0.4])).batch(1500))
    apart = score(reference.stats, [previous, current])
    merged = score(reference.stats, previous.merged(current))
    for kind, name, value in merged.items():
        # The same within the sketches' rank error (merging re-compacts).
        assert getattr(apart, kind)[name] == pytest.approx(value, abs=0.02), (kind, name)
    assert merged.ks["mag"] > 0.05  # and the comparison is not between zeros
    assert apart.class_shift["probs"] == pytest.approx(merged.class_shift["probs"], abs=1e-12)
    assert apart.mean_shift["score"] == pytest.approx(merged.mean_shift["score"], rel=1e-9)


def test_the_settled_window_is_read_once_and_forgotten_when_the_window_rotates() -> None:
    monitor = _monitor(config=MonitoringConfig(window=1000, min_samples=500, check_every=100))
    _feed(monitor, Traffic(seed=23), 1500)  # previous window full, current half
    assert monitor.window.previous is not None
    first = monitor._settled_window
    assert first is monitor.window.previous and set(monitor._settled) == {
        "mag",
        "color",
        "snr",
        "ext",
    }
    cached = dict(monitor._settled)
    _feed(monitor, Traffic(seed=24), 200)  # no rotation: the cache is reused as it was
    assert monitor._settled_window is first
    assert all(monitor._settled[k] is cached[k] for k in cached)
    # Scores with the cache are the scores without it.
    assert monitor.reference is not None
    fresh = score(monitor.reference.stats, monitor.window.windows())
    assert monitor.scores.items()
    for kind, name, value in monitor.scores.items():
        assert getattr(fresh, kind)[name] == pytest.approx(value, abs=1e-12), (kind, name)
    shifted = Traffic(seed=25, shift=2.0)
    for _ in range(10):  # 2700 rows in all: rotated, the previous window half shifted
        monitor.observe(shifted.requests(100))
    assert [w.rows for w in monitor.window.windows()] == [1000, 700]
    assert monitor._settled_window is monitor.window.previous
    assert monitor._settled_window is not first
    # 1000 of the 1700 judged rows moved by 2 sigma: KS about 0.68 * 1000 / 1700.
    assert monitor.scores.ks["mag"] > 0.3
    fresh = score(monitor.reference.stats, monitor.window.judged())
    assert monitor.scores.ks["mag"] == pytest.approx(fresh.ks["mag"], abs=0.02)
