"""The core request path, in-process, on a real registry and real ONNX models."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import numpy as np
import pytest

from sciserve.access.priority import Priority
from sciserve.config import ServingConfig
from sciserve.errors import InvalidInput, ModelNotReady, NotFound, Overloaded
from sciserve.registry.registry import Registry
from sciserve.runtimes.onnx import OnnxRuntime
from sciserve.serving.service import InferenceService
from sciserve.serving.types import InferenceRequest, InferInput, RequestedOutput

from helpers.packages import expected_linear

MakePackage = Callable[..., Path]


def request(
    x: np.ndarray, model: str = "linear", version: str | None = None, **kwargs: object
) -> InferenceRequest:
    return InferenceRequest(
        model_name=model,
        model_version=version,
        id=None,
        inputs=[InferInput("x", "FP32", x.shape, x)],
        **kwargs,
    )  # type: ignore[arg-type]


@pytest.fixture
async def service(
    sqlite_registry: Registry, onnx_package: MakePackage
) -> AsyncIterator[InferenceService]:
    sqlite_registry.publish(onnx_package())
    svc = InferenceService(sqlite_registry, ServingConfig(poll_interval=0.2))
    await svc.start()
    yield svc
    await svc.stop()


async def test_infer_and_metadata(service: InferenceService) -> None:
    assert service.live() and service.ready()
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    response = await service.infer(request(x))
    np.testing.assert_allclose(response.outputs[0].data, expected_linear(x))
    assert response.model_version == "1.0.0"
    meta = await service.model_metadata("linear")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    config = await service.model_config("linear")
    assert config["max_batch_size"] == 64 and config["input"][0]["dims"] == [4]
    assert config["sciserve"]["files"][0]["path"] == "model.onnx"


async def test_bad_requests_are_invalid_input(service: InferenceService) -> None:
    x = np.ones((1, 4), np.float32)
    cases = [
        (request(np.ones((1, 5), np.float32)), "shape"),
        (
            InferenceRequest(
                "linear", None, None, [InferInput("x", "FP64", (1, 4), np.ones((1, 4)))]
            ),
            "datatype",
        ),
        (InferenceRequest("linear", None, None, [InferInput("z", "FP32", (1, 4), x)]), "no input"),
        (request(x, outputs=[RequestedOutput("nope")]), "no output"),
        (request(np.ones((65, 4), np.float32)), "max_batch_size"),
    ]
    for bad, match in cases:
        with pytest.raises(InvalidInput, match=match):
            await service.infer(bad)
    with pytest.raises(NotFound):
        await service.infer(request(x, model="nothing"))
    with pytest.raises(NotFound):
        await service.infer(request(x, version="9.9.9"))
    assert (await service.infer(request(x))).outputs[0].data.shape == (1, 3)


async def test_concurrent_requests_are_batched_and_get_their_own_rows(
    service: InferenceService,
) -> None:
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(int(rng.integers(1, 6)), 4)).astype(np.float32) for _ in range(200)]
    results = await asyncio.gather(*(service.infer(request(x)) for x in inputs))
    for x, result in zip(inputs, results, strict=True):
        np.testing.assert_allclose(result.outputs[0].data, expected_linear(x), rtol=1e-5)
    stats = (await service.statistics("linear"))["model_stats"][0]
    assert stats["inference_count"] == sum(len(x) for x in inputs)
    assert stats["execution_count"] < len(inputs)
    assert max(b["batch_size"] for b in stats["batch_stats"]) > 5
    assert stats["inference_stats"]["success"]["count"] == len(inputs)


async def test_backpressure(sqlite_registry: Registry, onnx_package: MakePackage) -> None:
    sqlite_registry.publish(onnx_package())
    svc = InferenceService(sqlite_registry, ServingConfig(max_queue_size=4))
    await svc.start()
    try:
        x = np.ones((1, 4), np.float32)
        results = await asyncio.gather(
            *(svc.infer(request(x)) for _ in range(50)), return_exceptions=True
        )
        refused = [r for r in results if isinstance(r, Overloaded)]
        served = [r for r in results if not isinstance(r, BaseException)]
        assert refused and served
        assert all(r.retry_after >= 1 for r in refused)
        assert len(refused) + len(served) == 50
    finally:
        await svc.stop()


async def test_alias_flip_under_load_has_no_failures(
    sqlite_registry: Registry, onnx_package: MakePackage
) -> None:
    reg = sqlite_registry
    reg.publish(onnx_package(version="1.0.0"))
    reg.publish(onnx_package(version="2.0.0", scale=2.0))
    reg.tag("linear:1.0.0", "production")
    svc = InferenceService(reg, ServingConfig(poll_interval=0.1))
    await svc.start()
    x = np.ones((1, 4), np.float32)
    # (started, finished, value) of every request.
    seen: list[tuple[float, float, float]] = []
    stop = asyncio.Event()
    clock = asyncio.get_running_loop().time

    async def client() -> None:
        while not stop.is_set():
            started = clock()
            result = await svc.infer(request(x))  # any failure fails the test
            seen.append((started, clock(), float(result.outputs[0].data[0, 0])))
            await asyncio.sleep(0)

    v1, v2 = float(expected_linear(x)[0, 0]), float(expected_linear(x, scale=2.0)[0, 0])

    async def until(condition: Callable[[], bool], what: str) -> None:
        deadline = clock() + 30
        while not condition():
            assert clock() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.01)

    try:
        clients = [asyncio.create_task(client()) for _ in range(8)]
        await until(lambda: len(seen) >= 50, "answers from the first version")
        flipped = clock()
        await asyncio.to_thread(reg.tag, "linear:2.0.0", "production")
        await until(lambda: any(v == v2 for _, _, v in seen), "an answer from the new version")
        # Enough requests after the switch to show that all of them got it.
        switched_at = min(done for _, done, v in seen if v == v2)
        await until(
            lambda: sum(started > switched_at for started, _, _ in seen) >= 50,
            "requests after the switch",
        )
        stop.set()
        await asyncio.gather(*clients)
        assert {v for _, _, v in seen} == {v1, v2}
        switched = min(done for _, done, v in seen if v == v2)
        assert switched - flipped < 0.1 * 10 + 1  # within the pick-up interval
        # Every request that started after the switch got the new version.
        assert all(v == v2 for started, _, v in seen if started > switched)
        # A request for the old version by number still works (loaded on demand).
        old = await svc.infer(request(x, version="1.0.0"))
        assert float(old.outputs[0].data[0, 0]) == v1
        prod = await svc.infer(request(x, version="production"))
        assert float(prod.outputs[0].data[0, 0]) == v2
    finally:
        stop.set()
        await svc.stop()


async def test_priority_classes_jump_the_queue(
    sqlite_registry: Registry, onnx_package: MakePackage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first execution is held in its model thread until twenty batch
    # requests and then one realtime request wait behind it; when it ends,
    # the thread must take the realtime request before all of them.
    entered, release = threading.Event(), threading.Event()
    real_infer = OnnxRuntime.infer

    def gated(self: OnnxRuntime, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not entered.is_set():
            entered.set()
            assert release.wait(timeout=30), "the test never released the model"
        return real_infer(self, inputs)

    monkeypatch.setattr(OnnxRuntime, "infer", gated)
    sqlite_registry.publish(onnx_package())
    # Nothing runs on the loop (it would hold the loop at the gate); one instance.
    svc = InferenceService(sqlite_registry, ServingConfig(max_inline_compute=0, instances=1))
    await svc.start()
    try:
        order: list[str] = []
        x = np.ones((64, 4), np.float32)  # full batches: one request per batch

        async def call(tag: str, priority: Priority) -> None:
            await svc.infer(request(x), priority=priority)
            order.append(tag)

        tasks = [asyncio.create_task(call("first", Priority.BATCH))]
        assert await asyncio.to_thread(entered.wait, 30), "the first batch never ran"
        batcher = (await svc.manager.get("linear")).require_ready()
        tasks += [asyncio.create_task(call(f"batch{i}", Priority.BATCH)) for i in range(20)]
        tasks.append(asyncio.create_task(call("realtime", Priority.REALTIME)))
        deadline = time.monotonic() + 30
        while batcher.queued < 21:
            assert time.monotonic() < deadline, f"only {batcher.queued} of 21 requests queued"
            await asyncio.sleep(0.001)
        release.set()
        await asyncio.gather(*tasks)
        # First in, first out within a class; realtime ahead of all waiting bulk work.
        assert order == ["first", "realtime", *(f"batch{i}" for i in range(20))]
    finally:
        release.set()
        await svc.stop()


async def test_model_that_fails_to_load_says_why(
    sqlite_registry: Registry, onnx_package: MakePackage
) -> None:
    sqlite_registry.publish(onnx_package(extra={"device": "cuda:0"}))
    svc = InferenceService(sqlite_registry, ServingConfig())
    await svc.start()
    try:
        assert not svc.ready()
        ready, reason = await svc.model_state("linear")
        assert not ready and "cuda" in reason.lower()
        stats = (await svc.statistics("linear"))["model_stats"][0]
        assert stats["state"] == "FAILED" and "cuda" in stats["reason"].lower()
        with pytest.raises(ModelNotReady, match="cuda"):
            await svc.infer(request(np.ones((1, 4), np.float32)))
    finally:
        await svc.stop()
