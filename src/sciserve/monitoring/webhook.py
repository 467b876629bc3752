"""Deliver alerts to a webhook: a JSON POST, retried with exponential backoff.

The body of every alert (``Content-Type: application/json``)::

    {
      "kind": "drift",                 # or "drift_cleared"
      "model": "ztf-classifier",       # the served name
      "version": "1.2.0",
      "state": "alerting",             # or "ok"
      "started_at": "2026-12-06T23:40:01+00:00",   # when the alert was raised
      "at": "2026-12-06T23:40:01+00:00",           # when this message was made
      "breaches": [{"kind": "ks", "name": "flux[0]", "score": 0.21, "threshold": 0.1}],
      "scores": {"psi": {...}, "ks": {...}, "class_shift": {...}, "mean_shift": {...}},
      "thresholds": {"psi": 0.25, "ks": 0.1, "class_shift": 0.1, "mean_shift": 0.5},
      "window": {"rows_judged": 7500, "window": 5000, "min_samples": 2000},
      "url": "https://dashboard.example/models/ztf-classifier"   # or null
    }

Delivery never blocks the caller: alerts wait in a bounded queue (more are
dropped and counted) for one sender thread, which tries each alert up to
``attempts`` times, waiting ``backoff``, ``2 * backoff``, ... between tries.
Connection errors, timeouts, 408, 429 and 5xx answers are retried; other
answers are final.  The bearer token is sent, never logged, and so is
the URL beyond its host.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from pydantic import SecretStr

__all__ = ["WebhookNotifier"]

log = logging.getLogger(__name__)

#: Longest wait between two attempts (s), however many failures came before.
MAX_BACKOFF = 300.0
_RETRIED_STATUS = frozenset({408, 429})


class WebhookNotifier:
    """A sender thread that POSTs alerts to one URL."""

    def __init__(
        self,
        url: str,
        *,
        token: SecretStr | None = None,
        attempts: int = 5,
        backoff: float = 1.0,
        queue_size: int = 256,
        timeout: float = 10.0,
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url
        self._headers = {"Content-Type": "application/json"}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token.get_secret_value()}"
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=queue_size)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_outcome = on_outcome
        #: Alerts delivered, given up on, and dropped because the queue was full.
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        # Only scheme and host are ever logged: many webhook URLs carry their
        # secret in the path (chat services) or the query.
        parts = urlsplit(url)
        self._shown = f"{parts.scheme}://{parts.hostname}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sciserve-webhook", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the sender; alerts still waiting after ``timeout`` are not sent."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def notify(self, alert: dict[str, Any]) -> bool:
        """Queue ``alert`` for delivery; ``False`` (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.dropped += 1
            self._outcome("dropped")
            log.warning("webhook %s: queue full, alert dropped", self._shown)
            return False
        return True

    def _outcome(self, outcome: str) -> None:
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
            while not self._stopping.is_set():
                try:
                    alert = self._queue.get(timeout=0.2)
                except queue.Empty:
                    continue
                if self._deliver(client, alert):
                    self.delivered += 1
                    self._outcome("delivered")
                else:
                    self.failed += 1
                    self._outcome("failed")

    def _deliver(self, client: httpx.Client, alert: dict[str, Any]) -> bool:
        body = orjson.dumps(alert)
        for attempt in range(self.attempts):
            if attempt:
                delay = min(self.backoff * 2 ** (attempt - 1), MAX_BACKOFF)
                if self._stopping.wait(delay):
                    return False
            try:
                response = client.post(self.url, content=body, headers=self._headers)
            except httpx.HTTPError as exc:
                # The exception's text may repeat the URL (and its query): log its kind only.
                log.warning(
                    "webhook %s: attempt %d failed (%s)",
                    self._shown,
                    attempt + 1,
                    type(exc).__name__,
                )
                continue
            if response.is_success:
                return True
            status = response.status_code
            log.warning("webhook %s: attempt %d answered %d", self._shown, attempt + 1, status)
            if status < 500 and status not in _RETRIED_STATUS:
                return False
        return False
