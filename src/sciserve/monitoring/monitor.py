"""The monitor of a server: request tensors in, drift judgements out.

The request path only hands a request's tensors to :meth:`Monitor.observe`,
which puts a reference to them in a bounded queue (a couple of microseconds,
no lock, no allocation beyond the queue's entry; when the queue is full the
sample is dropped and counted).  Every ``FOLD_INTERVAL`` seconds (sooner
when the queue is half full) what has queued up is folded in: the requests
of each model version stacked and their sketches updated in bulk, in slices
of at most ``_DRAIN_BATCH`` requests.  Prometheus series are refreshed when
a drift check changed them, not on every fold.

Who folds: on a server, the event loop itself (:meth:`Monitor.start_on`),
one slice per callback so requests are served between slices, with the
registry lookups of references done in the loop's executor.  Code with no
event loop (:meth:`Monitor.start`) folds on its own thread, in
:meth:`Monitor.observe` when half the queue is full and in
:meth:`Monitor.flush`.  A thread of the monitor's own cost the serving loop
more than the work does: each time the thread needs the GIL the loop is
made to hand it over (numpy gives it up again in large copies), and in the
serving benchmark those hand-overs, not the sketches, were what cost
throughput (measured with ``bench/monitor_cost.py``).

How much: at most ``max_rows_per_second`` rows a second are taken (a
random share of the requests above it, re-estimated at every fold), so what
the monitor costs stops growing with the traffic once it is past that.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import random
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from ..config import MonitoringConfig, parse_gate
from ..errors import InvalidInput, NotFound, SciserveError
from ..registry.registry import VersionInfo
from .drift import AlertState, DriftMonitor, DriftScores, Transition
from .metrics import MonitoringMetrics
from .reference import Reference, ReferenceStore
from .sketches import Layout, Tensors
from .staleness import Gate, Staleness, StaleReason, check_staleness
from .webhook import WebhookNotifier

__all__ = ["Monitor", "alert_body"]

log = logging.getLogger(__name__)

#: Requests one slice of work takes at most (the loop serves requests between slices).
_DRAIN_BATCH = 128
#: How long requests queue up before they are folded in (s).
#: Folding many at once is what makes monitoring cheap: the cost of a fold
#: is mostly per call (per feature), hardly per row.  The dashboard polls
#: once a second.
FOLD_INTERVAL = 0.5
#: How often a version's staleness gauge is recomputed while it has traffic (s).
_STALE_REFRESH = 1.0
#: Model versions monitored at once (versions a server no longer serves are
#: forgotten, least recently seen first, so memory stays bounded however long it runs).
MAX_VERSIONS = 256
#: How often each version looks for a newer reference in the database (s).
REFERENCE_REFRESH = 30.0


@dataclass(frozen=True)
class _Key:
    model: str
    version: str
    digest: str


@dataclass
class _Entry:
    monitor: DriftMonitor
    reference_checked_at: float
    info: VersionInfo
    last_seen: float = 0.0
    #: The status last published as Prometheus series (a new one after every check).
    published: dict[str, Any] | None = None
    stale_checked_at: float = -math.inf


class Monitor:
    """Drift monitors of every served model version, fed off the request path."""

    def __init__(
        self,
        config: MonitoringConfig,
        registry: CollectorRegistry,
        *,
        references: ReferenceStore | None = None,
        notifier: WebhookNotifier | None = None,
        reference_refresh: float = REFERENCE_REFRESH,
        max_versions: int = MAX_VERSIONS,
        fold_interval: float = FOLD_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._clock = clock
        #: How long requests queue up before they are folded in (s).
        self.fold_interval = fold_interval
        #: Versions monitored at once; the one idle longest is forgotten for a new one.
        self.max_versions = max_versions
        #: How often each version looks for a newer stored reference (s).
        self.reference_refresh = reference_refresh
        self.metrics = MonitoringMetrics(registry)
        self.references = references
        self.notifier = notifier
        if notifier is None and config.webhook_url is not None:
            self.notifier = WebhookNotifier(
                config.webhook_url,
                token=config.webhook_token,
                attempts=config.webhook_attempts,
                backoff=config.webhook_backoff,
                queue_size=config.webhook_queue_size,
                on_outcome=lambda outcome: self.metrics.webhook.labels(outcome).inc(),
            )
        # A deque, not a queue.Queue: appending takes no lock and wakes no
        # thread, so the request path pays about 2 µs; it is folded every
        # FOLD_INTERVAL s, or as soon as it is half full.
        self._queue: deque[tuple[str, VersionInfo, Tensors, int]] = deque()
        self._wake_at = max(1, config.queue_size // 2)
        # Values handed over and values taken: each is written by one side
        # only, so their difference (the values waiting) needs no lock.
        self._added_values = 0
        self._taken_values = 0
        self._busy = threading.Condition()
        self._in_flight = 0
        self._entries: dict[_Key, _Entry] = {}
        # Two locks, so reading the status (on the event loop) never waits for
        # sketch work: one guards the dict of entries, the other the monitors.
        self._entries_lock = threading.Lock()
        self._lock = threading.Lock()
        self._observed: dict[str, str] = {}
        self._evaluations: dict[tuple[str, str], dict[str, float]] = {}
        self._random = random.Random()  # noqa: S311 -- sampling, not secrets
        self._stopping = threading.Event()
        #: The event loop that folds, when :meth:`start_on` was used, and its next fold.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_fold: asyncio.TimerHandle | asyncio.Handle | None = None
        #: Requests dropped because the queue (or its value budget) was full.
        self.dropped = 0
        # The share of requests monitored: ``sample_rate``, lowered while the
        # traffic is above ``max_rows_per_second`` (see _adapt).
        self._keep = config.sample_rate
        self._kept_rows = 0
        self._adapted_at = clock()

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Start delivering alerts to the webhook, with no event loop: requests
        are then folded on the caller's thread (when :meth:`observe` fills
        half the queue, and in :meth:`flush`)."""
        if self.notifier is not None:
            self.notifier.start()

    def start_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fold on ``loop`` (call it from the loop), every ``fold_interval``
        seconds and whenever the queue is half full.

        :meth:`flush` must then be called off the loop (``asyncio.to_thread``).
        """
        self.start()
        self._loop = loop
        self._next_fold = loop.call_later(self.fold_interval, self._fold_on_loop)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
                loop.call_soon_threadsafe(self._cancel_fold)
        if self.notifier is not None:
            self.notifier.stop(timeout)

    # -- the request path ----------------------------------------------------

    def observe(
        self,
        served: str,
        info: VersionInfo,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
    ) -> None:
        """Hand one successful request's tensors to the monitor (never blocks).

        ``served`` is the name the model is served under, ``info`` the
        registry's record of the version that answered.
        """
        keep = self._keep
        if keep < 1.0 and self._random.random() >= keep:
            return
        values = 0
        rows = 1
        for array in inputs.values():
            values += array.size
            rows = array.shape[0] if array.ndim else 1
        self._kept_rows += rows
        for array in outputs.values():
            values += array.size
        if (
            len(self._queue) >= self.config.queue_size
            or self._added_values - self._taken_values + values > self.config.max_pending_values
        ):
            self._drop(served, info.version)
            return
        self._added_values += values
        queue = self._queue
        queue.append((served, info, (inputs, outputs), values))
        if len(queue) == self._wake_at:  # once per filling
            if self._loop is not None:
                self._fold_soon()  # observe runs on the loop that folds
            else:
                self._fold_all()

    def _drop(self, model: str, version: str) -> None:
        self.dropped += 1
        self.metrics.dropped.labels(model, version).inc()

    # -- reading and steering --------------------------------------------------

    def status(self, served: Iterable[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
        """The judgement of each model version: every monitored one, or each
        ``(served name, version)`` in ``served`` (``no_traffic`` if none of its
        requests was monitored yet)."""
        with self._entries_lock:
            entries = list(self._entries.items())
        known = {
            (k.model, k.version): {
                **e.monitor.status(),
                # The snapshot is a check's; rows come in between checks too.
                "rows_seen": e.monitor.window.total_rows,
                "stale": [
                    {"reason": f.reason.value, "detail": f.detail} for f in self._staleness(e)
                ],
            }
            for k, e in entries
        }
        if served is None:
            return [known[key] for key in sorted(known)]
        return [
            known.get(key)
            or {"model": key[0], "version": key[1], "state": AlertState.NO_TRAFFIC.value}
            for key in sorted(set(served))
        ]

    def note_observed(self, key: str, value: str) -> None:
        """Record what the server sees for a ``compatible_with`` key
        (``alert_schema`` → ``lsst:11.1``); versions declared for something
        else are flagged stale."""
        self._observed = {**self._observed, key: value}  # replaced whole: readers never lock

    def note_evaluation(self, model: str, version: str, metric: str, value: float) -> None:
        """Record the latest evaluation of a served model version (judged by
        ``[monitoring.gates]``); until one is noted, the package's own
        recorded metrics count."""
        key = (model, version)
        self._evaluations = {
            **self._evaluations,
            key: {**self._evaluations.get(key, {}), metric: value},
        }

    def _staleness(self, entry: _Entry) -> list[Staleness]:
        max_age = self.config.max_age_days
        model, version = entry.monitor.model, entry.monitor.version
        gates = []
        for metric, text in self.config.gates.get(model, {}).items():
            parsed = parse_gate(text)
            if parsed is not None:
                gates.append(Gate(metric, parsed[1], higher_is_better=parsed[0]))
        evaluations = {m.name: m.value for m in entry.info.manifest.metrics}
        evaluations.update(self._evaluations.get((model, version), {}))
        try:
            return check_staleness(
                entry.info.manifest.compatible_with,
                self._observed,
                published_at=entry.info.published_at,
                max_age=None if max_age is None else timedelta(days=max_age),
                evaluations=evaluations,
                gates=tuple(gates),
            )
        except InvalidInput as exc:  # a constraint the package got wrong
            return [Staleness(StaleReason.INCOMPATIBLE, str(exc))]

    def freeze(self, model: str, version: str) -> Reference:
        """The recorded live window of a model version, as a reference (not stored)."""
        with self._lock:
            entry = self._find(model, version)
            return entry.monitor.freeze()

    def set_reference(self, model: str, version: str, reference: Reference | None) -> None:
        """Judge a model version against ``reference`` from now on (until a
        newer one is stored in the database)."""
        if reference is not None and reference.created_at is None:
            reference = dataclasses.replace(reference, created_at=datetime.now(UTC))
        with self._lock:
            self._find(model, version).monitor.set_reference(reference)

    def _find(self, model: str, version: str) -> _Entry:
        with self._entries_lock:
            entries = list(self._entries.items())
        for key, entry in entries:
            if key.model == model and key.version == version:
                return entry
        raise InvalidInput(f"no traffic of {model} version {version} has been monitored yet")

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued request has been added; ``False`` on timeout."""
        loop = self._loop
        if loop is None:
            self._fold_all()
            return True
        deadline = time.monotonic() + timeout
        with self._busy:
            while self._queue or self._in_flight:
                with contextlib.suppress(RuntimeError):  # closed: nothing will fold
                    loop.call_soon_threadsafe(self._fold_soon)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._busy.wait(min(remaining, 0.05))
        return True

    # -- folding -------------------------------------------------------------

    def _fold_all(self) -> None:
        """Fold everything queued, here and now (a monitor with no loop)."""
        self._adapt(self._clock())
        while self._queue and not self._stopping.is_set():
            self._fold_slice()

    def _adapt(self, now: float) -> None:
        """Set the share of requests monitored from the rows offered since
        the last call: ``sample_rate``, or less if that would take more than
        ``max_rows_per_second``.  The rows taken divided by the share taken
        is an unbiased estimate of the rows offered, whatever the share was."""
        elapsed = now - self._adapted_at
        if elapsed < self.fold_interval:
            return
        budget = self.config.max_rows_per_second
        base = self.config.sample_rate
        offered = self._kept_rows / self._keep / elapsed if self._keep > 0 else 0.0
        self._kept_rows = 0
        self._adapted_at = now
        self._keep = base if budget <= 0 or offered <= 0 else min(base, budget / offered)

    def _fold_on_loop(self) -> None:
        """One slice, then the next one soon if more waits, else a fold later."""
        self._next_fold = None
        if self._stopping.is_set() or self._loop is None:
            return
        self._adapt(self._clock())
        if self._queue:
            self._fold_slice()
        if self._queue:
            self._next_fold = self._loop.call_soon(self._fold_on_loop)
        else:
            self._next_fold = self._loop.call_later(self.fold_interval, self._fold_on_loop)

    def _fold_soon(self) -> None:
        """Fold now rather than at the next interval (on the loop)."""
        due = self._next_fold
        if self._loop is None or (due is not None and not isinstance(due, asyncio.TimerHandle)):
            return  # a slice is already due (call_soon's handle is no TimerHandle)
        self._cancel_fold()
        self._next_fold = self._loop.call_soon(self._fold_on_loop)

    def _cancel_fold(self) -> None:
        if self._next_fold is not None:
            self._next_fold.cancel()
            self._next_fold = None

    def _fold_slice(self) -> None:
        batch: list[tuple[str, VersionInfo, Tensors, int]] = []
        with self._busy:
            queue = self._queue
            while queue and len(batch) < _DRAIN_BATCH:
                batch.append(queue.popleft())
            self._in_flight = len(batch)
        try:
            self._process(batch)
        finally:
            self._taken_values += sum(item[3] for item in batch)
            with self._busy:
                self._in_flight = 0
                self._busy.notify_all()

    def _process(self, batch: list[tuple[str, VersionInfo, Tensors, int]]) -> None:
        # Plain tuples as keys: hashed in C, once per request.
        grouped: dict[tuple[str, str, str], list[Tensors]] = defaultdict(list)
        infos: dict[tuple[str, str, str], VersionInfo] = {}
        for served, info, tensors, _ in batch:
            group = (served, info.version, info.digest)
            grouped[group].append(tensors)
            infos[group] = info
        for group, requests in grouped.items():
            key = _Key(*group)
            try:
                self._add(key, infos[group], requests)
            except Exception:  # one model's failure must not cost the others their samples
                log.exception("monitor: could not add %d requests of %s", len(requests), key.model)

    def _add(self, key: _Key, info: VersionInfo, requests: list[Tensors]) -> None:
        entry = self._entry(key, info)
        with self._lock:
            before = entry.monitor.window.total_rows
            transition = entry.monitor.observe(requests)
            rows = entry.monitor.window.total_rows - before
            status = entry.monitor.status()
            state, scores = entry.monitor.state, entry.monitor.scores
        self.metrics.rows.labels(key.model, key.version).inc(rows)
        self._publish(key, entry, status, state, scores, transition)

    def _publish(
        self,
        key: _Key,
        entry: _Entry,
        status: dict[str, Any],
        state: AlertState,
        scores: DriftScores,
        transition: Transition | None,
    ) -> None:
        """Gauges of a new judgement, and its alert if the state moved."""
        now = time.monotonic()
        if status is not entry.published or now - entry.stale_checked_at >= _STALE_REFRESH:
            # Scores change only when a check ran (it makes a new status);
            # staleness only with time and what is noted, so once a second will do.
            entry.stale_checked_at = now
            self.metrics.stale.labels(key.model, key.version).set(len(self._staleness(entry)))
        if status is not entry.published:
            entry.published = status
            self.metrics.observe(key.model, key.version, state, scores)
        if transition is not None:
            self._announce(key, transition, status)

    def _entry(self, key: _Key, info: VersionInfo) -> _Entry:
        with self._entries_lock:
            entry = self._entries.get(key)
        now = time.monotonic()
        if entry is None:
            layout = Layout(info.manifest, self.config.max_features)
            monitor = DriftMonitor(key.model, key.version, layout, self.config)
            entry = _Entry(monitor, -math.inf, info, last_seen=now)
            with self._entries_lock:
                entry = self._entries.setdefault(key, entry)
                evicted = self._evict() if len(self._entries) > self.max_versions else None
            if evicted is not None:
                self._forget_series(evicted)
        entry.last_seen = now
        if now - entry.reference_checked_at >= self.reference_refresh:
            entry.reference_checked_at = now
            if self._loop is not None:  # a database query: never on the event loop
                self._loop.run_in_executor(None, self._refresh_reference, key, entry)
            else:
                self._refresh_reference(key, entry)
        return entry

    def _refresh_reference(self, key: _Key, entry: _Entry) -> None:
        latest = self._load_reference(key)
        if latest is None:
            return
        with self._lock:
            monitor = entry.monitor
            if not _newer(latest, monitor.reference):
                return
            monitor.set_reference(latest)
            # What the window holds is judged against it at once, not at the
            # next check: the reference may arrive after the traffic did.
            transition = monitor.check() if monitor.window.total_rows else None
            status, state, scores = monitor.status(), monitor.state, monitor.scores
        self._publish(key, entry, status, state, scores, transition)

    def _evict(self) -> _Entry:
        """Forget the version seen least recently (the entries lock is held)."""
        key = min(self._entries, key=lambda k: self._entries[k].last_seen)
        return self._entries.pop(key)

    def _forget_series(self, entry: _Entry) -> None:
        model, version = entry.monitor.model, entry.monitor.version
        for kind, name, _ in entry.monitor.scores.items():
            with contextlib.suppress(KeyError):
                self.metrics.score.remove(model, version, kind, name)
        for gauge in (self.metrics.alert, self.metrics.stale):
            with contextlib.suppress(KeyError):
                gauge.remove(model, version)

    def _load_reference(self, key: _Key) -> Reference | None:
        if self.references is None:
            return None
        try:
            return self.references.latest(key.digest)
        except NotFound:
            return None
        except SciserveError as exc:
            log.warning("monitor: no reference for %s %s: %s", key.model, key.version, exc)
            return None

    def _announce(self, key: _Key, transition: Transition, status: dict[str, Any]) -> None:
        body = alert_body(transition, status, self.config.dashboard_url)
        if transition.state is AlertState.ALERTING:
            log.warning("drift alert raised for %s %s", key.model, key.version)
        else:
            log.info("drift alert cleared for %s %s", key.model, key.version)
        if self.notifier is not None:
            self.notifier.notify(body)


def _newer(stored: Reference, current: Reference | None) -> bool:
    """Whether ``stored`` should replace ``current``."""
    if current is None:
        return True
    if stored.created_at is None or current.created_at is None:
        return False
    return stored.created_at > current.created_at


def alert_body(
    transition: Transition, status: dict[str, Any], dashboard_url: str | None
) -> dict[str, Any]:
    """The JSON document a webhook receives (documented in :mod:`.webhook`)."""
    started = status.get("alert_started_at")
    model = str(status["model"])
    return {
        "kind": "drift" if transition.state is AlertState.ALERTING else "drift_cleared",
        "model": model,
        "version": status["version"],
        "state": transition.state.value,
        "started_at": None if started is None else _iso(float(started)),
        "at": _iso(transition.at),
        "breaches": status["breaches"],
        "scores": status["scores"],
        "thresholds": status["thresholds"],
        "window": {
            "rows_judged": transition.rows,
            "window": status["window"],
            "min_samples": status["min_samples"],
        },
        "url": None if dashboard_url is None else f"{dashboard_url.rstrip('/')}/models/{model}",
    }


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()
