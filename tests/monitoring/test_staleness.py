"""Staleness: compatibility constraints, policy age, evaluation gates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sciserve.errors import InvalidInput
from sciserve.monitoring import Gate, StaleReason, check_staleness, compatible


@pytest.mark.parametrize(
    ("constraint", "observed", "ok"),
    [
        ("lsst:<10", "lsst:9.0", True),
        ("lsst:<10", "lsst:11.1", False),
        ("lsst:>=7.0", "lsst:7.0", True),
        ("lsst:>=7.0,<10", "lsst:10.0", False),
        ("lsst:7.0", "lsst:7.0", True),
        ("lsst:7.0", "lsst:7.1", False),
        ("lsst", "lsst:11.1", True),
        ("lsst:<10", "ztf:4.0", False),
        ("lsst:<10", "lsst", False),
        ("lsst:<10", "lsst:not-a-version", False),
        ("sciserve.examples.features v1", "sciserve.examples.features v1", True),
        ("sciserve.examples.features v1", "sciserve.examples.features v2", False),
    ],
)
def test_compatible(constraint: str, observed: str, ok: bool) -> None:
    assert compatible(constraint, observed) is ok


@pytest.mark.parametrize("constraint", ["lsst:<<10", "lsst:>=seven", "lsst:~=1"])
def test_malformed_constraints_are_invalid_input(constraint: str) -> None:
    with pytest.raises(InvalidInput):
        compatible(constraint, "lsst:11.1")


def test_a_model_declared_for_old_schemas_is_stale_on_new_data() -> None:
    found = check_staleness({"alert_schema": "lsst:<10"}, {"alert_schema": "lsst:11.1"})
    assert [f.reason for f in found] == [StaleReason.INCOMPATIBLE]
    assert "lsst:11.1" in found[0].detail
    assert check_staleness({"alert_schema": "lsst:<10"}, {"alert_schema": "lsst:9.0"}) == []
    # What the server does not observe is not judged.
    assert check_staleness({"alert_schema": "lsst:<10"}, {}) == []


def test_age_and_gates() -> None:
    now = datetime(2026, 12, 6, tzinfo=UTC)
    found = check_staleness(
        {},
        {},
        published_at=now - timedelta(days=400),
        max_age=timedelta(days=365),
        evaluations={"auc": 0.81, "logloss": 0.2},
        gates=(Gate("auc", 0.85), Gate("logloss", 0.3, higher_is_better=False)),
        now=now,
    )
    assert [f.reason for f in found] == [StaleReason.TOO_OLD, StaleReason.BELOW_GATE]
    assert "auc" in found[1].detail
    fresh = check_staleness(
        {},
        {},
        published_at=now - timedelta(days=10),
        max_age=timedelta(days=365),
        evaluations={"auc": 0.9},
        gates=(Gate("auc", 0.85), Gate("missing", 1.0)),
        now=now,
    )
    assert fresh == []


def test_the_monitor_flags_stale_versions_in_status_and_metrics() -> None:
    from prometheus_client import CollectorRegistry

    from sciserve.config import MonitoringConfig
    from sciserve.monitoring import Monitor

    from helpers.traffic import Traffic, version_info

    registry = CollectorRegistry()
    monitor = Monitor(MonitoringConfig(max_age_days=30), registry)
    old = version_info(
        "sha256:" + "1" * 64,
        published_at=datetime.now(UTC) - timedelta(days=400),
        compatible_with={"alert_schema": "lsst:<10"},
    )
    monitor.note_observed("alert_schema", "lsst:11.1")
    monitor.start()
    try:
        for inputs, outputs in Traffic(seed=1).requests(10):
            monitor.observe("clf", old, inputs, outputs)
        assert monitor.flush()
    finally:
        monitor.stop()
    [status] = monitor.status()
    assert [s["reason"] for s in status["stale"]] == ["incompatible", "too_old"]
    assert (
        registry.get_sample_value("sciserve_monitor_stale", {"model": "clf", "version": "1.0.0"})
        == 2
    )


def test_a_version_whose_latest_evaluation_misses_its_gate_is_stale() -> None:
    from prometheus_client import CollectorRegistry

    from sciserve.config import MonitoringConfig
    from sciserve.monitoring import Monitor

    from helpers.traffic import Traffic, version_info

    config = MonitoringConfig(gates={"clf": {"auc": ">=0.85", "logloss": "<=0.4"}})
    monitor = Monitor(config, CollectorRegistry())
    info = version_info(
        "sha256:" + "2" * 64, metrics=[{"name": "auc", "value": 0.9, "dataset": "dp1"}]
    )

    def stale() -> list[str]:
        for inputs, outputs in Traffic(seed=1).requests(5):
            monitor.observe("clf", info, inputs, outputs)
        assert monitor.flush()
        [status] = monitor.status()
        return [s["detail"] for s in status["stale"]]

    monitor.start()
    try:
        assert stale() == []  # the package's own evaluation passes
        monitor.note_evaluation("clf", "1.0.0", "auc", 0.8)
        assert stale() == ["latest auc is 0.8; the gate wants at least 0.85"]
        monitor.note_evaluation("clf", "1.0.0", "logloss", 0.5)
        assert len(stale()) == 2
    finally:
        monitor.stop()
