"""Dynamic batching with priority queues and backpressure.

Requests for one model version wait in one bounded queue per priority class.
Whenever an execution slot is free, the batcher takes the most urgent waiting
request and adds more requests *of the same shape signature* (identical
non-batch dimensions and dtypes, so nothing is ever padded) in priority
order, up to ``max_batch_size`` rows.  A waiting higher-class request always
goes into the next batch the model forms.  The batch runs in a worker thread
(ONNX Runtime and friends release the GIL), and its outputs are split back
along each output's batch dimension.  When a batch ends, its thread takes the
next one from the queues itself (they are guarded by a lock) and hands the
answers to the event loop: the model never waits for the loop to come round,
which under overload may take many milliseconds.  A batch predicted (from the model's
measured time per row) to compute in less than ``max_inline_compute`` runs
on the event loop instead, if it is full (or the model does not batch) and
nothing else waits: a full batch cannot grow by waiting, and for a model
that computes one in a fraction of a millisecond, waking a thread and
handing the GIL back and forth costs more than the computation.  Partial
batches still go to the thread, so that requests arriving meanwhile form
the next batch, and so does everything once a queue builds up: then the
hand-over latency is hidden and computing beside the loop adds capacity.

With ``realtime_instances`` set, that many of the model's instances take
only realtime requests: batch and interactive work shares the others, so a
realtime request never waits for a running batch however much bulk work is
queued.  The price is that bulk work has fewer instances.

When the queue holds ``max_queue_size`` requests, a new request takes the
place of the newest waiting request of a less urgent class, which fails with
:class:`~sciserve.errors.Overloaded` (503 + ``Retry-After``); with none to
displace, the new request fails so at once.  Memory stays bounded however
hard clients push, and a flood of batch work never turns realtime requests away.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..access.priority import Priority
from ..errors import InvalidInput, ModelExecutionError, ModelNotReady, Overloaded, SciserveError
from ..package.manifest import Manifest

__all__ = ["BatchPolicy", "DynamicBatcher"]

log = logging.getLogger("sciserve.serving")


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay: float = 0.0
    max_queue_size: int = 1024
    instances: int = 1
    #: Of ``instances``, how many only realtime requests may use.
    realtime_instances: int = 0
    #: Batches predicted to compute faster than this (s) run on the event
    #: loop; 0 never does.  Only for runtimes that never block on I/O.
    max_inline_compute: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.realtime_instances < self.instances:
            raise ValueError(
                f"realtime_instances ({self.realtime_instances}) must be at least 0 and "
                f"less than instances ({self.instances})"
            )


@dataclass(frozen=True)
class BatchTiming:
    """What one execution cost, handed to the statistics observer."""

    rows: int
    requests: int
    queue_ns: list[int]
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int


@dataclass
class _Pending:
    inputs: Mapping[str, np.ndarray]
    rows: int
    key: tuple[Any, ...]
    future: asyncio.Future[dict[str, np.ndarray]]
    enqueued: int = field(default_factory=time.perf_counter_ns)


Infer = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
#: What an execution returns: each request's outputs, and the compute timings
#: (ns) of merging the inputs, inferring and splitting the outputs.
_Outcome = tuple[list[dict[str, np.ndarray]], tuple[int, int, int]]


class DynamicBatcher:
    """Batches requests for one loaded model version."""

    def __init__(
        self,
        infer: Infer,
        manifest: Manifest,
        policy: BatchPolicy,
        *,
        observe: Callable[[BatchTiming], None] | None = None,
    ) -> None:
        self._infer = infer
        self._manifest = manifest
        self._policy = policy
        self._observe = observe
        self._in_dims = {t.name: manifest.batch_dim_of(t) for t in manifest.inputs}
        self._out_dims = {t.name: manifest.batch_dim_of(t) for t in manifest.outputs}
        self._batching = manifest.max_batch_size > 0
        self._queues: list[collections.deque[_Pending]] = [collections.deque() for _ in Priority]
        self._queued = 0
        self._busy = 0
        # Executions running on the instances every class may use.
        self._busy_shared = 0
        self._shared = policy.instances - policy.realtime_instances
        self._closed = False
        # Shutting down after a drain timed out: model threads take no more work.
        self._stopped = False
        # Guards the queues and the instance counts: model threads take their
        # next batch themselves (see _chain).  Re-entrant: a batch run on the
        # loop releases its instance from inside the dispatch that started it.
        self._lock = threading.RLock()
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(
            max_workers=policy.instances, thread_name_prefix=f"sciserve-{manifest.name}"
        )
        self._timer: asyncio.TimerHandle | None = None
        # Mean execution time, to suggest a Retry-After when overloaded.
        self._mean_exec_s = 0.01
        # Mean compute time per row (ns), once a batch has run; a batch of n
        # rows is predicted to take n times it (an overestimate for small
        # batches, whose fixed cost is spread over few rows).
        self._ns_per_row: float | None = None
        self._inline_ns = policy.max_inline_compute * 1e9
        # Outputs whose batch dimension did not hold the batch's rows, logged once each.
        self._mismatch_logged: set[str] = set()

    @property
    def queued(self) -> int:
        return self._queued

    def _rows_and_key(self, inputs: Mapping[str, np.ndarray]) -> tuple[int, tuple[Any, ...]]:
        if not self._batching:
            return 1, ()
        rows = -1
        key: list[Any] = []
        for name in sorted(inputs):
            array = inputs[name]
            dim = self._in_dims.get(name)
            if dim is None:
                key.append((name, array.shape, array.dtype.str))
                continue
            n = array.shape[dim]
            if rows not in (-1, n):
                raise InvalidInput(
                    f"inputs disagree on the batch size ({rows} and {n} along the batch dim)"
                )
            rows = n
            key.append((name, array.shape[:dim] + array.shape[dim + 1 :], array.dtype.str))
        if rows > self._policy.max_batch_size:
            raise InvalidInput(
                f"batch of {rows} exceeds max_batch_size {self._policy.max_batch_size} "
                f"of {self._manifest.ref}"
            )
        return max(rows, 0), tuple(key)

    async def submit(
        self, inputs: Mapping[str, np.ndarray], priority: Priority = Priority.INTERACTIVE
    ) -> dict[str, np.ndarray]:
        """Queue one request and wait for its own rows of the outputs."""
        if self._closed:
            raise ModelNotReady(f"{self._manifest.ref} is unloading")
        rows, key = self._rows_and_key(inputs)
        future: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._queued >= self._policy.max_queue_size and not self._shed_below(priority):
                raise self._overloaded()
            self._queues[priority].append(_Pending(inputs, rows, key, future))
            self._queued += 1
        self._idle.clear()
        self._dispatch()
        return await future

    @staticmethod
    def _fail(items: Iterable[_Pending], error: BaseException) -> None:
        """Fail the waiters of ``items`` (those still waiting: a caller may have gone)."""
        for item in items:
            if not item.future.done():
                item.future.set_exception(error)

    def _unloaded(self) -> ModelNotReady:
        return ModelNotReady(f"{self._manifest.ref} unloaded")

    def _overloaded(self) -> Overloaded:
        retry = max(1.0, self._mean_exec_s * self._queued / self._policy.instances)
        return Overloaded(
            f"{self._manifest.ref} has {self._queued} requests waiting; try again later",
            retry_after=retry,
        )

    def _shed_below(self, priority: Priority) -> bool:
        """Fail the newest waiting request of a class less urgent than ``priority``, if any."""
        for level in range(len(self._queues) - 1, priority, -1):
            queue = self._queues[level]
            if queue:
                self._queued -= 1
                self._fail([queue.pop()], self._overloaded())
                return True
        return False

    def _dispatch(self, *, force: bool = False) -> None:
        """Start batches on the free instances (on the event loop)."""
        while True:
            with self._lock:
                step = self._next(force=force, arm=True)
            if step is None:
                return
            self._start(*step)

    def _next(self, *, force: bool, arm: bool) -> tuple[list[_Pending], bool] | None:
        """Take the next batch for a free instance, and the instance; with the lock held.

        ``arm``: on the loop, a batch that should wait for more rows arms
        the timer that starts it; a model thread leaves that to the loop.
        """
        if self._busy >= self._policy.instances or not self._queued:
            return None
        shared = self._busy_shared < self._shared
        if shared:
            queues = self._queues
        elif self._queues[Priority.REALTIME]:
            # Only the reserved instances are free: realtime rows alone,
            # so no bulk rows slow the realtime batch down.
            queues = self._queues[: Priority.REALTIME + 1]
        else:
            return None
        batch = self._take(queues, force=force, arm=arm)
        if batch is None:
            return None
        self._busy += 1
        self._busy_shared += shared
        return batch, shared

    def _take(
        self, queues: list[collections.deque[_Pending]], *, force: bool, arm: bool
    ) -> list[_Pending] | None:
        """Remove and return the next batch from ``queues``, or None to wait for more."""
        head = next(q for q in queues if q)[0]
        if not self._batching:
            self._queues[self._level_of(head)].popleft()
            self._queued -= 1
            return [head]
        limit = self._policy.max_batch_size
        rows = 0
        chosen: list[_Pending] = []
        for queue in queues:  # most urgent class first
            for item in queue:
                if item.key == head.key and rows + item.rows <= limit:
                    chosen.append(item)
                    rows += item.rows
                    if rows >= limit:
                        break
            if rows >= limit:
                break
        if not force and self._should_wait(rows, head):
            if arm:
                self._arm_timer(head)
            return None
        taken = {id(item) for item in chosen}
        for queue in queues:
            if any(id(item) in taken for item in queue):
                kept = [item for item in queue if id(item) not in taken]
                queue.clear()
                queue.extend(kept)
        self._queued -= len(chosen)
        return chosen

    def _level_of(self, head: _Pending) -> int:
        return next(level for level, queue in enumerate(self._queues) if queue and queue[0] is head)

    def _should_wait(self, rows: int, head: _Pending) -> bool:
        delay_ns = int(self._policy.max_queue_delay * 1e9)
        if delay_ns <= 0 or rows >= self._policy.max_batch_size:
            return False
        if rows in self._policy.preferred_batch_sizes:
            return False
        return time.perf_counter_ns() - head.enqueued < delay_ns

    def _arm_timer(self, head: _Pending) -> None:
        if self._timer is not None:
            return
        waited = (time.perf_counter_ns() - head.enqueued) / 1e9
        remaining = max(self._policy.max_queue_delay - waited, 0.0)

        def fire() -> None:
            # The head has waited long enough: run what is there.
            self._timer = None
            self._dispatch(force=True)

        self._timer = asyncio.get_running_loop().call_later(remaining, fire)

    def _start(self, batch: list[_Pending], shared: bool) -> None:
        """Run ``batch`` on the loop if it is predicted to be quick, else hand it
        to a model thread, which goes on with the next batches (:meth:`_chain`).
        """
        started = time.perf_counter_ns()
        rows = sum(item.rows for item in batch)
        if self._ns_per_row is not None and self._inline_ns > 0:
            full = not self._batching or rows >= self._policy.max_batch_size
            if full and not self._queued and max(rows, 1) * self._ns_per_row < self._inline_ns:
                self._run_inline(batch, rows, started, shared)
                return
        loop = asyncio.get_running_loop()
        try:
            running = loop.run_in_executor(
                self._executor, self._chain, loop, batch, rows, started, shared
            )
        except RuntimeError:  # the executor is shut down: closed while draining timed out
            self._abandon(batch, started, shared, self._unloaded())
            return
        running.add_done_callback(functools.partial(self._chain_ended, batch, started, shared))

    def _chain(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[_Pending],
        rows: int,
        started: int,
        shared: bool,
    ) -> None:
        """Run ``batch`` in this model thread, then take and run the next ones
        until none is ready; each batch's answers go back to the loop.

        The thread takes its next batch itself, the moment one ends: were
        the loop to hand it over, the model would sit idle for a whole turn
        of the loop each time, and under overload (a turn reading and
        refusing hundreds of requests) a model serving full batches would
        run one batch a turn.
        """
        while True:
            outcome: _Outcome | Exception
            try:
                outcome = self._execute(batch)
            except Exception as exc:
                outcome = exc
            with self._lock:
                self._release(started, shared)
                if not isinstance(outcome, Exception):
                    self._learn(rows, outcome[1])
                step = None if self._stopped else self._next(force=False, arm=False)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to answer
                loop.call_soon_threadsafe(self._settle, batch, rows, started, outcome)
            if step is None:
                return
            batch, shared = step
            rows = sum(item.rows for item in batch)
            started = time.perf_counter_ns()

    def _chain_ended(
        self, batch: list[_Pending], started: int, shared: bool, running: asyncio.Future[None]
    ) -> None:
        """A chain's end, on the loop: only a chain that never started (the
        executor shut down under it) has anything left to answer."""
        if running.cancelled():
            self._abandon(batch, started, shared, self._unloaded())
            if self._queued:
                self._dispatch()
        elif (exc := running.exception()) is not None:  # pragma: no cover - _chain catches
            log.error("a model thread of %s failed: %r", self._manifest.ref, exc)

    def _settle(
        self,
        batch: list[_Pending],
        rows: int,
        started: int,
        outcome: _Outcome | Exception,
    ) -> None:
        """Answer a batch a model thread ran (on the loop)."""
        if isinstance(outcome, Exception):
            self._fail(batch, self._execution_error(outcome))
        else:
            self._deliver(batch, rows, started, *outcome)
        if self._queued:
            # The thread took no batch: it stopped, or the head waits for rows.
            self._dispatch()
        self._check_idle()

    def _run_inline(self, batch: list[_Pending], rows: int, started: int, shared: bool) -> None:
        # No dispatch from here: it runs only with nothing queued, so the
        # caller's dispatch loop ends after it and the stack stays flat.
        try:
            outputs, timing = self._execute(batch)
        except Exception as exc:
            self._abandon(batch, started, shared, self._execution_error(exc))
            return
        with self._lock:
            self._release(started, shared)
            self._learn(rows, timing)
        self._deliver(batch, rows, started, outputs, timing)
        self._check_idle()

    def _release(self, started: int, shared: bool) -> None:
        """An execution ended: free its instance, remember how long it took
        (with the lock held)."""
        elapsed = (time.perf_counter_ns() - started) / 1e9
        self._mean_exec_s = 0.9 * self._mean_exec_s + 0.1 * elapsed
        self._busy -= 1
        self._busy_shared -= shared

    def _abandon(
        self, batch: list[_Pending], started: int, shared: bool, error: BaseException
    ) -> None:
        """An execution ended without answers: free its instance, fail its waiters."""
        with self._lock:
            self._release(started, shared)
        self._fail(batch, error)
        self._check_idle()

    def _check_idle(self) -> None:
        if self._busy == 0 and not self._queued:
            self._idle.set()

    def _learn(self, rows: int, timing: tuple[int, int, int]) -> None:
        per_row = sum(timing) / max(rows, 1)
        self._ns_per_row = (
            per_row if self._ns_per_row is None else 0.9 * self._ns_per_row + 0.1 * per_row
        )

    def _execution_error(self, exc: BaseException) -> BaseException:
        if isinstance(exc, SciserveError):
            return exc
        return ModelExecutionError(f"{self._manifest.ref} failed: {type(exc).__name__}: {exc}")

    def _deliver(
        self,
        batch: list[_Pending],
        rows: int,
        started: int,
        outputs: list[dict[str, np.ndarray]],
        timing: tuple[int, int, int],
    ) -> None:
        for item, result in zip(batch, outputs, strict=True):
            if not item.future.done():  # its caller may have gone already
                item.future.set_result(result)
        if self._observe is not None:
            self._observe(
                BatchTiming(
                    rows=rows,
                    requests=len(batch),
                    queue_ns=[started - i.enqueued for i in batch],
                    compute_input_ns=timing[0],
                    compute_infer_ns=timing[1],
                    compute_output_ns=timing[2],
                )
            )

    def _execute(self, batch: list[_Pending]) -> _Outcome:
        t0 = time.perf_counter_ns()
        if len(batch) == 1:
            merged = batch[0].inputs
        else:
            merged = {
                name: np.concatenate([item.inputs[name] for item in batch], axis=dim or 0)
                if dim is not None
                else batch[0].inputs[name]
                for name, dim in self._in_dims.items()
                if name in batch[0].inputs
            }
        t1 = time.perf_counter_ns()
        outputs = self._infer(merged)
        t2 = time.perf_counter_ns()
        if self._batching:
            self._check_rows(outputs, sum(item.rows for item in batch))
        if len(batch) == 1:
            split = [outputs]
        else:
            split = [{} for _ in batch]
            for name, array in outputs.items():
                dim = self._out_dims.get(name)
                if dim is None:  # not batched: every request gets the whole tensor
                    for part in split:
                        part[name] = array
                    continue
                offsets = np.cumsum([item.rows for item in batch])[:-1]
                for part, piece in zip(split, np.split(array, offsets, axis=dim), strict=True):
                    part[name] = piece
        t3 = time.perf_counter_ns()
        return split, (t1 - t0, t2 - t1, t3 - t2)

    def _check_rows(self, outputs: Mapping[str, np.ndarray], rows: int) -> None:
        """Refuse outputs whose batch dimension does not hold the ``rows`` that went in.

        Splitting such an output at the requests' row offsets would hand out
        other requests' rows, or empty arrays, as answers: a manifest naming
        the wrong batch dimension (a time-major model batched along time,
        say) must fail loudly instead.
        """
        for name, array in outputs.items():
            dim = self._out_dims.get(name)
            if dim is None:
                continue
            shape = np.shape(array)
            if dim < len(shape) and shape[dim] == rows:
                continue
            message = (
                f"{self._manifest.ref}: output {name!r} has shape {tuple(shape)}, but its "
                f"batch dimension {dim} must hold the {rows} rows of the batch; the "
                "manifest's batch_dim does not match the model (check it with "
                "'sciserve validate')"
            )
            if name not in self._mismatch_logged:
                # Once per output: a misdescribed model fails every batch alike.
                self._mismatch_logged.add(name)
                log.error("%s (logged once for this output)", message)
            raise ModelExecutionError(message)

    async def close(self, *, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop accepting requests; finish (or fail) the queued ones; free threads."""
        self._closed = True
        if not drain:
            with self._lock:
                for queue in self._queues:
                    self._fail(queue, self._unloaded())
                    queue.clear()
                self._queued = 0
            self._check_idle()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        with self._lock:
            self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
