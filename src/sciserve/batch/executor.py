"""The Dask cluster a batch job runs on.

By default a local cluster of worker *processes* (one thread each, so a
shard has a core to itself) bound to 127.0.0.1 with no dashboard (its
HTTP endpoint on a free loopback port), closed when the job ends; with
``scheduler`` an existing cluster, whose workers must be able to read the
registry (``--home`` on a shared file system).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

from ..errors import DependencyMissing, InvalidInput, Unavailable

__all__ = ["dask_client"]

_SCHEDULER_RE = re.compile(r"^(tcp|tls)://[^\s/:]+:\d{1,5}$")
#: Seconds to wait for an existing scheduler to answer.
CONNECT_TIMEOUT = 10


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise DependencyMissing("batch jobs need Dask: pip install 'sciserve[dask]'") from exc
    return distributed


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int = 2) -> Iterator[Any]:
    """A ``distributed.Client`` of ``scheduler``, or of a new local cluster of
    ``workers`` processes; everything it started is closed on exit."""
    distributed = _distributed()
    if scheduler is not None:
        if not _SCHEDULER_RE.fullmatch(scheduler):
            raise InvalidInput(f"{scheduler!r} is not a scheduler address like tcp://HOST:PORT")
        try:
            client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc
        with client:
            yield client
        return
    if workers < 1:
        raise InvalidInput("--workers must be at least 1")
    cluster = distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        # The scheduler serves health and metrics over HTTP even without a
        # dashboard, by default on port 8787 of every interface: loopback and
        # a free port instead, so that jobs side by side do not collide.
        scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
        silence_logs=logging.ERROR,
    )
    with cluster, distributed.Client(cluster) as client:
        yield client
