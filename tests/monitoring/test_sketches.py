"""Live statistics: bounded memory, and hostile tensors that must not hurt."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from sciserve.config import MonitoringConfig
from sciserve.monitoring import DriftMonitor, Layout, LiveWindow
from sciserve.monitoring.sketches import FeatureStats, WindowStats
from sciserve.package.manifest import Manifest

from helpers.traffic import Traffic, classifier_manifest


def test_memory_stays_bounded_over_ten_million_values() -> None:
    stats = FeatureStats()
    rng = np.random.default_rng(0)
    sizes = []
    tracemalloc.start()
    try:
        for chunk in range(100):
            stats.update(rng.normal(size=100_000))
            if chunk in (9, 99):
                sizes.append(len(stats.sketch.serialize()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stats.n == 10_000_000
    # The sketch retains a few hundred values however many it saw: the size
    # after 10 M values is that after 1 M, give or take a compaction level.
    assert sizes[1] < 8 * 1024
    assert sizes[1] < 1.5 * sizes[0]
    assert stats.sketch.num_retained < 1000
    # Python-side allocations: the chunk in flight and its copies, nothing that grows.
    assert peak < 8 * 100_000 * 8
    assert abs(stats.mean) < 0.01 and abs(stats.std - 1) < 0.01


def test_live_window_memory_is_two_windows_whatever_the_traffic() -> None:
    layout = Layout(classifier_manifest())
    window = LiveWindow(layout, size=1000)
    traffic = Traffic(seed=1)
    for _ in range(200):
        window.observe([traffic.batch(5000)])
    assert window.total_rows == 1_000_000
    assert window.current.rows < 1000 or window.current.rows == 5000
    assert window.previous is not None and window.previous.rows == 5000
    judged = window.judged()
    assert judged.rows <= 2 * 5000


def test_nan_and_infinities_are_counted_not_sketched() -> None:
    stats = FeatureStats()
    stats.update(np.array([1.0, np.nan, np.inf, -np.inf, 2.0, 1e300]))
    assert stats.n == 3
    assert stats.ignored == 3
    assert np.isfinite(stats.mean) and np.isfinite(stats.std)
    assert stats.sketch.get_max_value() <= np.finfo(np.float32).max


def test_hostile_requests_are_ignored_with_a_count() -> None:
    layout = Layout(classifier_manifest())
    stats = layout.empty()
    good_in, good_out = Traffic(seed=2).batch(10)
    nan_rows = np.full((5, 4), np.nan, np.float32)
    requests = [
        (good_in, good_out),
        ({"x": np.empty((0, 4), np.float32)}, {"probs": np.empty((0, 3), np.float32)}),
        ({"x": nan_rows}, {"probs": np.full((5, 3), np.inf, np.float32)}),
        ({"x": np.ones((3, 7), np.float32)}, {}),  # too wide for the named features
        ({}, {}),  # nothing at all
        ({"x": np.array([["a", "b", "c", "d"]], dtype=object)}, {}),
    ]
    layout.update_many(stats, requests)
    assert stats.features["mag"].n == 10
    assert stats.features["mag"].ignored == 5
    assert stats.classes["probs"].n == 10
    assert stats.classes["probs"].ignored == 5
    assert stats.skipped >= 3
    assert stats.ignored > 0


def test_bytes_inputs_feed_no_sketch_and_are_counted() -> None:
    manifest = Manifest.model_validate(
        {
            "name": "text",
            "version": "1.0.0",
            "runtime": "onnx",
            "model_file": "model.onnx",
            "max_batch_size": 8,
            "inputs": [{"name": "s", "datatype": "BYTES", "shape": [-1, 1]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
            "files": [{"path": "model.onnx", "size": 1, "sha256": "0" * 64}],
            "license": "MIT",
        }
    )
    layout = Layout(manifest)
    stats = layout.empty()
    text = np.array([[b"a"], [b"bb"]], dtype=object)
    layout.update_many(stats, [({"s": text}, {"y": np.ones((2, 2), np.float32)})] * 3)
    assert stats.features == {}
    assert stats.skipped == 6
    assert stats.predictions["y"].n == 12


def test_wide_inputs_are_pooled_into_one_feature() -> None:
    manifest = classifier_manifest(
        inputs=[{"name": "image", "datatype": "FP32", "shape": [-1, 32, 32]}]
    )
    layout = Layout(manifest, max_features=64)
    stats = layout.empty()
    assert list(stats.features) == ["image"]
    layout.update(stats, {"image": np.zeros((2, 32, 32), np.float32)}, {})
    assert stats.features["image"].n == 2048
    assert stats.rows == 2


def test_one_huge_batch_is_one_update() -> None:
    layout = Layout(classifier_manifest())
    monitor = DriftMonitor("clf", "1.0.0", layout, MonitoringConfig())
    inputs, outputs = Traffic(seed=3).batch(1_000_000)
    monitor.observe([(inputs, outputs)])
    assert monitor.window.total_rows == 1_000_000
    assert monitor.window.previous is not None  # rotated: memory of two windows


def test_window_statistics_round_trip() -> None:
    layout = Layout(classifier_manifest())
    stats = layout.empty()
    layout.update(stats, *Traffic(seed=4).batch(1000))
    again = WindowStats.from_dict(stats.to_dict())
    assert again.rows == 1000
    assert again.features["mag"].n == 1000
    assert again.features["mag"].sketch.get_quantile(0.5) == stats.features[
        "mag"
    ].sketch.get_quantile(0.5)
    assert (again.classes["probs"].counts == stats.classes["probs"].counts).all()


def test_the_monitor_holds_no_more_after_ten_million_values_than_after_one() -> None:
    import gc

    from prometheus_client import CollectorRegistry

    from sciserve.monitoring import Monitor

    from helpers.traffic import version_info

    # Every value sketched, however fast they come (no row budget).
    monitor = Monitor(MonitoringConfig(max_rows_per_second=0), CollectorRegistry())
    info = version_info("sha256:" + "7" * 64)
    traffic = Traffic(seed=9)
    inputs, outputs = traffic.batch(1000)  # 4000 input values per request
    monitor.start()
    tracemalloc.start()
    try:
        sizes = []
        for block in range(10):
            for i in range(250):  # 1 M input values per block
                monitor.observe("clf", info, inputs, outputs)
                if i % 64 == 63:  # stay inside the queue's value budget: nothing dropped
                    assert monitor.flush()
            assert monitor.flush()
            gc.collect()
            if block in (0, 9):
                sizes.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
        monitor.stop()
    [status] = monitor.status()
    assert status["rows_seen"] == 2_500_000  # 10 M input values
    assert monitor.dropped == 0
    # What Python holds after 10 M values is what it held after 1 M (the
    # sketches' own memory, in C++, is bounded by their construction: above).
    assert sizes[1] - sizes[0] < 256 * 1024, sizes


def test_updating_columns_at_once_is_updating_each_column() -> None:
    rng = np.random.default_rng(11)
    for dtype in (np.float32, np.float64, np.int32):
        matrix = (rng.normal(size=(3000, 5)) * 10).astype(dtype)
        if dtype is np.float64:
            matrix[0, 1] = 1e300  # beyond float32: clipped, as one column at a time does
        together = [FeatureStats() for _ in range(5)]
        FeatureStats.update_columns(together, matrix)
        for i, stats in enumerate(together):
            alone = FeatureStats()
            alone.update(matrix[:, i])
            assert stats.n == alone.n == 3000
            assert stats.ignored == alone.ignored == 0
            assert stats.sum == pytest.approx(alone.sum, rel=1e-9)
            assert stats.sumsq == pytest.approx(alone.sumsq, rel=1e-9)
            assert stats.sketch.get_min_value() == alone.sketch.get_min_value()
            assert stats.sketch.get_max_value() == alone.sketch.get_max_value()
            # KLL compaction is randomised: equal within the sketch's rank error.
            points = np.quantile(matrix[:, i], [0.1, 0.5, 0.9]).astype(np.float32)
            cdf_together = np.asarray(stats.sketch.get_cdf(points))
            cdf_alone = np.asarray(alone.sketch.get_cdf(points))
            assert np.abs(cdf_together - cdf_alone).max() < 0.03


def test_updating_columns_with_non_finite_values_counts_them_per_column() -> None:
    matrix = np.ones((4, 3), np.float32)
    matrix[1, 0] = np.nan
    matrix[2, 2] = np.inf
    columns = [FeatureStats() for _ in range(3)]
    FeatureStats.update_columns(columns, matrix)
    assert [c.n for c in columns] == [3, 4, 3]
    assert [c.ignored for c in columns] == [1, 0, 1]
    assert [c.sum for c in columns] == [3.0, 4.0, 3.0]


def test_updating_columns_refuses_a_matrix_of_the_wrong_width() -> None:
    with pytest.raises(ValueError, match="not"):
        FeatureStats.update_columns([FeatureStats()], np.ones((2, 3), np.float32))
