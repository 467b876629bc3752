"""References in the registry database (SQLite and PostgreSQL)."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from sciserve.access._db import engine_of
from sciserve.errors import InvalidInput, NotFound
from sciserve.monitoring import Layout, Reference, ReferenceSource, ReferenceStore
from sciserve.registry.registry import Registry

from helpers.traffic import Traffic, classifier_manifest


def test_references_are_stored_small_and_the_newest_wins(registry: Registry) -> None:
    store = ReferenceStore(engine_of(registry))
    layout = Layout(classifier_manifest())
    with pytest.raises(NotFound):
        store.latest("sha256:" + "a" * 64)
    old = Reference.from_arrays(layout, *Traffic(seed=1).batch(10_000))
    new = Reference.from_arrays(layout, *Traffic(seed=2, shift=2.0).batch(200_000))
    assert len(new.to_bytes()) < 64 * 1024
    store.save("clf", "1.0.0", "sha256:" + "a" * 64, old)
    store.save("clf", "1.0.0", "sha256:" + "a" * 64, new)
    got = store.latest("sha256:" + "a" * 64)
    assert got.source is ReferenceSource.DATASET
    assert got.stats.rows == 200_000
    assert got.stats.features["mag"].mean == pytest.approx(2.0, abs=0.02)
    assert got.created_at is not None


def test_a_frozen_window_becomes_a_traffic_reference(registry: Registry) -> None:
    from sciserve.config import MonitoringConfig
    from sciserve.monitoring import DriftMonitor

    layout = Layout(classifier_manifest())
    monitor = DriftMonitor("clf", "1.0.0", layout, MonitoringConfig())
    with pytest.raises(InvalidInput):
        monitor.freeze()
    monitor.observe(Traffic(seed=3).requests(700))
    frozen = monitor.freeze()
    assert frozen.source is ReferenceSource.TRAFFIC
    store = ReferenceStore(engine_of(registry))
    store.save("clf", "1.0.0", "sha256:" + "b" * 64, frozen)
    assert store.latest("sha256:" + "b" * 64).stats.rows == 700


_NO_SKETCH = (
    b'{"rows": 1, "skipped": 0, "features": {"f": {"n": 1}}, "classes": {}, "predictions": {}}'
)


@pytest.mark.parametrize(
    "blob",
    [b"", b"not zlib", zlib.compress(b"[1, 2]"), zlib.compress(b'{"rows": "x"}'),
     zlib.compress(_NO_SKETCH), zlib.compress(b" " * (70 * 2**20))],
)  # fmt: skip
def test_malformed_reference_blobs_are_invalid_input(blob: bytes) -> None:
    with pytest.raises(InvalidInput):
        Reference.from_bytes(blob)


def test_an_empty_dataset_is_no_reference() -> None:
    layout = Layout(classifier_manifest())
    with pytest.raises(InvalidInput):
        Reference.from_arrays(layout, {}, {})


def test_a_running_monitor_picks_up_references_stored_later(registry: Registry) -> None:
    from prometheus_client import CollectorRegistry

    from sciserve.config import MonitoringConfig
    from sciserve.monitoring import Monitor

    from helpers.traffic import version_info

    digest = "sha256:" + "9" * 64
    info = version_info(digest)
    layout = Layout(info.manifest)
    store = ReferenceStore(engine_of(registry))
    # No row budget: past it the monitor samples by wall-clock rate, and on a
    # busy machine too few of the 2,500 rows below would reach a drift check.
    monitor = Monitor(
        MonitoringConfig(max_rows_per_second=0),
        CollectorRegistry(),
        references=store,
        reference_refresh=0.0,
    )
    traffic = Traffic(seed=5)

    def send(count: int) -> dict[str, object]:
        for inputs, outputs in traffic.requests(count):
            monitor.observe("clf", info, inputs, outputs)
        assert monitor.flush()
        [status] = monitor.status()
        return status

    monitor.start()
    try:
        assert send(600)["state"] == "no_reference"
        store.save("clf", "1.0.0", digest, Reference.from_arrays(layout, *Traffic(6).batch(20_000)))
        assert send(2500)["state"] == "ok"
        # A newer reference (of shifted data) replaces it: today's traffic now drifts.
        shifted = Reference.from_arrays(layout, *Traffic(7, shift=2.0).batch(20_000))
        store.save("clf", "1.0.0", digest, shifted)
        assert send(2500)["state"] == "alerting"
        # One set by hand wins until a newer one is stored.
        monitor.set_reference("clf", "1.0.0", monitor.freeze("clf", "1.0.0"))
        assert send(2500)["state"] == "ok"
    finally:
        monitor.stop()


def test_a_database_without_the_table_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from sciserve.errors import Unavailable

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        with pytest.raises(Unavailable):
            ReferenceStore(engine).latest("sha256:" + "0" * 64)
    finally:
        engine.dispose()
