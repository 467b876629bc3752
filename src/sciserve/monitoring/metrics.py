"""Prometheus series of the monitor, on a server instance's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from .drift import AlertState, DriftScores

__all__ = ["MonitoringMetrics"]


class MonitoringMetrics:
    """Drift scores, alert state, and the samples the monitor did not take."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("model", "version")
        self.score = Gauge(
            "sciserve_monitor_drift_score",
            "Latest drift score of a feature or output (kind: psi, ks, class_shift, mean_shift)",
            (*labels, "kind", "name"),
            registry=registry,
        )
        self.alert = Gauge(
            "sciserve_monitor_alert",
            "1 while the model version's drift alert is raised",
            labels,
            registry=registry,
        )
        self.stale = Gauge(
            "sciserve_monitor_stale",
            "Reasons the model version is stale (incompatible data, too old, below its gate)",
            labels,
            registry=registry,
        )
        self.rows = Counter(
            "sciserve_monitor_rows",
            "Rows the monitor added to its live statistics",
            labels,
            registry=registry,
        )
        self.dropped = Counter(
            "sciserve_monitor_dropped_samples",
            "Requests not monitored because the monitor's queue was full",
            labels,
            registry=registry,
        )
        self.webhook = Counter(
            "sciserve_monitor_webhook_alerts",
            "Alerts sent to the webhook, by outcome (delivered, failed, dropped)",
            ("outcome",),
            registry=registry,
        )

    def observe(self, model: str, version: str, state: AlertState, scores: DriftScores) -> None:
        self.alert.labels(model, version).set(1 if state is AlertState.ALERTING else 0)
        for kind, name, value in scores.items():
            self.score.labels(model, version, kind, name).set(value)
