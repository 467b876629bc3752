"""Security-relevant actions in the registry's ``events`` table (the audit trail).

Events name their actor by subject or token id, never by a secret.  Denied
requests are sampled (:class:`DeniedRequests`) so a flood of bad requests
cannot fill the database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.engine import Connection

from ..registry.registry import Registry
from ._db import Database, engine_of, writing
from .identity import Identity

__all__ = ["DeniedRequests", "audit", "record_event"]

# Column widths of the events table: longer values are cut, not refused,
# because some (routes, subjects) come from the outside.
_ACTION, _SUBJECT, _ACTOR = 32, 512, 128


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def record_event(
    conn: Connection,
    action: str,
    subject: str,
    actor: str | None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Add an event inside the caller's transaction (so it commits with the change)."""
    # One row format for the whole audit trail: the registry's.
    Registry._event(
        conn,
        _cut(action, _ACTION),
        _cut(subject, _SUBJECT),
        None if actor is None else _cut(actor, _ACTOR),
        dict(detail) if detail else None,
    )


def audit(
    db: Database,
    action: str,
    subject: str,
    actor: str | None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Record one security-relevant action (e.g. ``namespace.trust``) in its own transaction.

    ``actor`` is a subject or token id; ``detail`` must not contain secrets.
    """
    with writing(engine_of(db)) as conn:
        record_event(conn, action, subject, actor, detail)


class DeniedRequests:
    """Writes ``request.denied`` events, at most one per caller and route per
    ``interval`` seconds and at most ``budget`` in all per interval.

    ``route`` should be the route *template* (``"infer"``, ``"POST /v2/models/{name}/infer"``),
    not the raw path, so callers cannot mint new keys at will.  State is in
    memory, per process.
    """

    def __init__(
        self,
        db: Database,
        *,
        interval: float = 60.0,
        budget: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._interval = interval
        self._budget = budget
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], float] = {}
        self._window_start = clock()
        self._window_count = 0

    def _admit(self, key: tuple[str, str]) -> bool:
        now = self._clock()
        with self._lock:
            if now - self._window_start >= self._interval:
                self._window_start, self._window_count = now, 0
                # Forget keys whose minute is over, so memory stays bounded.
                self._last = {k: t for k, t in self._last.items() if now - t < self._interval}
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                return False
            if self._window_count >= self._budget:
                return False
            self._last[key] = now
            self._window_count += 1
            return True

    def record(
        self,
        route: str,
        reason: str,
        identity: Identity | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> bool:
        """Audit a denied request unless one like it was recorded recently.

        ``reason`` is the kind of denial (``unauthenticated``, ``forbidden``,
        ``not_found``, ``rate_limited``).  Returns whether an event was written.
        """
        actor = identity.principal if identity is not None else "unauthenticated"
        if not self._admit((actor, route)):
            return False
        audit(self._db, "request.denied", route, actor, {"reason": reason, **(detail or {})})
        return True
