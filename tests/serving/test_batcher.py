"""The dynamic batcher alone: priority order and load shedding, made deterministic
by a model that runs only when the test lets it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
import yaml

from sciserve.access.priority import Priority
from sciserve.errors import ModelExecutionError, ModelNotReady, Overloaded
from sciserve.package.manifest import Manifest
from sciserve.serving.batcher import BatchPolicy, DynamicBatcher

from helpers.packages import make_onnx_package


class GatedModel:
    """Doubles its input, once per :meth:`release`; records the row tags it ran."""

    def __init__(self) -> None:
        self.gate = threading.Semaphore(0)
        self.ran: list[float] = []

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.gate.acquire(timeout=30), "the test never released the model"
        x = inputs["x"]
        self.ran.extend(float(v) for v in x[:, 0])
        return {"y": np.repeat(x[:, :1] * 2, 3, axis=1)}

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self.gate.release()


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    root = make_onnx_package(tmp_path / "pkg")
    return Manifest.model_validate(yaml.safe_load((root / "sciserve.yaml").read_text()))


def rows(tag: float, n: int = 64) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 4), tag, np.float32)}


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` on the loop; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def test_a_full_queue_sheds_the_newest_less_urgent_request(manifest: Manifest) -> None:
    model = GatedModel()
    batcher = DynamicBatcher(model, manifest, BatchPolicy(max_batch_size=64, max_queue_size=4))
    try:
        # One batch request runs (held at the gate), four wait: the queue is full.
        batch = [asyncio.create_task(batcher.submit(rows(i), Priority.BATCH)) for i in range(5)]
        await settle()
        assert batcher.queued == 4
        with pytest.raises(Overloaded) as refused:
            await batcher.submit(rows(99), Priority.BATCH)  # same class: nothing to displace
        assert refused.value.retry_after >= 1

        realtime = [
            asyncio.create_task(batcher.submit(rows(100 + i), Priority.REALTIME)) for i in range(2)
        ]
        await settle()
        # Each realtime request took the place of the newest waiting batch request.
        assert batch[4].done() and isinstance(batch[4].exception(), Overloaded)
        assert batch[3].done() and isinstance(batch[3].exception(), Overloaded)
        assert batcher.queued == 4

        model.release(10)
        served = await asyncio.gather(*realtime)
        assert [float(r["y"][0, 0]) for r in served] == [200.0, 202.0]
        for i in range(3):
            assert float((await batch[i])["y"][0, 0]) == 2.0 * i
        # The running batch first, then realtime ahead of the waiting batch work.
        assert model.ran[::64] == [0.0, 100.0, 101.0, 1.0, 2.0]
    finally:
        model.release(10)
        await batcher.close()


async def test_realtime_is_refused_only_when_nothing_less_urgent_waits(
    manifest: Manifest,
) -> None:
    model = GatedModel()
    batcher = DynamicBatcher(model, manifest, BatchPolicy(max_batch_size=64, max_queue_size=2))
    try:
        held = [asyncio.create_task(batcher.submit(rows(i), Priority.REALTIME)) for i in range(3)]
        await settle()
        assert batcher.queued == 2
        with pytest.raises(Overloaded):
            await batcher.submit(rows(9), Priority.REALTIME)
        model.release(3)
        assert len(await asyncio.gather(*held)) == 3
    finally:
        model.release(10)
        await batcher.close()


async def test_requests_left_when_a_drain_times_out_fail_instead_of_hanging(
    manifest: Manifest,
) -> None:
    model = GatedModel()
    batcher = DynamicBatcher(model, manifest, BatchPolicy(max_batch_size=64))
    running = asyncio.create_task(batcher.submit(rows(1), Priority.BATCH))
    waiting = [asyncio.create_task(batcher.submit(rows(i), Priority.BATCH)) for i in (2, 3)]
    await settle()
    await batcher.close(timeout=0.05)  # the model is still held: the drain gives up
    model.release(10)
    assert float((await asyncio.wait_for(running, 10))["y"][0, 0]) == 2.0
    for task in waiting:
        with pytest.raises(ModelNotReady):
            await asyncio.wait_for(task, 10)


class BulkHeldModel:
    """Runs realtime rows (tags >= 100) at once; bulk rows wait for :meth:`release`."""

    def __init__(self) -> None:
        self.gate = threading.Semaphore(0)
        self.started: list[float] = []

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.started.append(float(x[0, 0]))
        if x[0, 0] < 100:
            assert self.gate.acquire(timeout=30), "the test never released the model"
        return {"y": np.repeat(x[:, :1] * 2, 3, axis=1)}


async def test_a_reserved_instance_serves_realtime_while_bulk_work_holds_the_others(
    manifest: Manifest,
) -> None:
    model = BulkHeldModel()
    policy = BatchPolicy(max_batch_size=64, instances=2, realtime_instances=1)
    batcher = DynamicBatcher(model, manifest, policy)
    try:
        bulk = [asyncio.create_task(batcher.submit(rows(i), Priority.BATCH)) for i in range(3)]
        interactive = asyncio.create_task(batcher.submit(rows(7), Priority.INTERACTIVE))
        await until(lambda: bool(model.started), "the first bulk batch to reach the model")
        await settle()  # where the batcher would hand out the reserved instance
        # One bulk batch runs; the reserved instance stays free for realtime.
        assert model.started == [0.0]
        assert batcher.queued == 3
        # Realtime runs now, alone (no bulk rows ride along), while bulk is held.
        answer = await asyncio.wait_for(batcher.submit(rows(100, 2), Priority.REALTIME), 10)
        assert answer["y"].shape == (2, 3) and float(answer["y"][0, 0]) == 200.0
        assert model.started == [0.0, 100.0]
        assert not any(task.done() for task in [*bulk, interactive])
        model.gate.release(10)
        results = await asyncio.wait_for(asyncio.gather(*bulk, interactive), 10)
        assert [float(r["y"][0, 0]) for r in results] == [0.0, 2.0, 4.0, 14.0]
        # After the realtime batch, bulk work never took the reserved instance:
        # the interactive request went first, then the batch class in order.
        assert model.started == [0.0, 100.0, 7.0, 1.0, 2.0]
    finally:
        model.gate.release(10)
        await batcher.close()


def test_every_class_keeps_an_instance() -> None:
    with pytest.raises(ValueError, match="less than instances"):
        BatchPolicy(max_batch_size=64, instances=2, realtime_instances=2)


class ThreadRecordingModel:
    """Doubles its input after ``delay`` seconds; records the thread of every call.

    The first call waits for ``first_gate`` so a test can build a queue behind it.
    """

    def __init__(self, delay: float = 0.0, fail_on: float | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.first_gate = threading.Event()
        self.threads: list[int] = []

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.threads:
            assert self.first_gate.wait(timeout=30), "the test never opened the gate"
        self.threads.append(threading.get_ident())
        x = inputs["x"]
        if self.fail_on is not None and float(x[0, 0]) == self.fail_on:
            raise ValueError("this row is cursed")
        if self.delay:
            time.sleep(self.delay)
        return {"y": np.repeat(x[:, :1] * 2, 3, axis=1)}


async def test_quick_full_batches_run_on_the_loop_unless_a_queue_waits(
    manifest: Manifest,
) -> None:
    model = ThreadRecordingModel()
    policy = BatchPolicy(max_batch_size=64, max_queue_size=500, max_inline_compute=0.01)
    batcher = DynamicBatcher(model, manifest, policy)
    loop_thread = threading.get_ident()
    try:
        # The first batch runs in a thread (nothing is known of the model
        # yet) and 200 full batches queue behind it: a queue means the model
        # is the bottleneck, so they go to the thread too, beside the loop.
        tasks = [asyncio.create_task(batcher.submit(rows(i), Priority.BATCH)) for i in range(200)]
        await settle()
        model.first_gate.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert [float(r["y"][0, 0]) for r in results] == [2.0 * i for i in range(200)]
        assert model.threads.count(loop_thread) <= 1  # at most the last, with nothing behind it
        # Alone, a quick full batch runs on the loop: no hand-over to a thread.
        answer = await batcher.submit(rows(500), Priority.BATCH)
        assert float(answer["y"][0, 0]) == 1000.0
        assert model.threads[-1] == loop_thread
    finally:
        model.first_gate.set()
        await batcher.close()


@pytest.mark.parametrize(
    ("delay", "n", "why"),
    [(0.002, 64, "too slow for the loop"), (0.0, 1, "a partial batch may still grow")],
)
async def test_these_batches_never_run_on_the_loop(
    manifest: Manifest, delay: float, n: int, why: str
) -> None:
    model = ThreadRecordingModel(delay=delay)
    model.first_gate.set()
    policy = BatchPolicy(max_batch_size=64, max_inline_compute=0.001)
    batcher = DynamicBatcher(model, manifest, policy)
    try:
        for i in range(5):
            await batcher.submit(rows(i, n), Priority.INTERACTIVE)
        assert threading.get_ident() not in model.threads, why
        assert len(model.threads) == 5
    finally:
        await batcher.close()


async def test_a_model_failing_on_the_loop_fails_only_its_batch(manifest: Manifest) -> None:
    model = ThreadRecordingModel(fail_on=3.0)
    model.first_gate.set()
    policy = BatchPolicy(max_batch_size=64, max_inline_compute=0.01)
    batcher = DynamicBatcher(model, manifest, policy)
    try:
        for i in range(3):
            await batcher.submit(rows(i), Priority.INTERACTIVE)
        with pytest.raises(ModelExecutionError, match="ValueError: this row is cursed"):
            await batcher.submit(rows(3), Priority.INTERACTIVE)
        assert model.threads[-1] == threading.get_ident()  # it did run on the loop
        assert float((await batcher.submit(rows(4), Priority.INTERACTIVE))["y"][0, 0]) == 8.0
    finally:
        await batcher.close()
