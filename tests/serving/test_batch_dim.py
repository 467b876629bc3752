"""Batch dimensions: the batcher never splits an output whose batch dimension does
not hold the batch's rows, and a time-major model is batched along its real batch
dimension end to end."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import yaml

from sciserve.access.priority import Priority
from sciserve.errors import ModelExecutionError
from sciserve.package.manifest import Manifest
from sciserve.serving.batcher import BatchPolicy, DynamicBatcher

from helpers.packages import make_onnx_package, time_major_gru_onnx
from helpers.server import Running, run_cli, start_server, stop_server


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    root = make_onnx_package(tmp_path / "pkg")
    return Manifest.model_validate(yaml.safe_load((root / "sciserve.yaml").read_text()))


def rows(tag: float, n: int) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 4), tag, np.float32)}


class SummingModel:
    """Answers one row per *request-sized group*, the way a model batching along the
    wrong dimension would: the output's batch dimension holds fewer rows than went in."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        x = inputs["x"]
        return {"y": np.repeat(x.sum(axis=0, keepdims=True)[:, :1], 3, axis=1)}


async def test_a_batch_whose_output_rows_do_not_match_fails_every_waiter(
    manifest: Manifest, caplog: pytest.LogCaptureFixture
) -> None:
    model = SummingModel()
    # Wait long enough for all three requests to form one batch.
    policy = BatchPolicy(max_batch_size=64, max_queue_delay=30.0, preferred_batch_sizes=(6,))
    batcher = DynamicBatcher(model, manifest, policy)
    try:
        with caplog.at_level(logging.ERROR, logger="sciserve.serving"):
            tasks = [
                asyncio.create_task(batcher.submit(rows(i, 2), Priority.INTERACTIVE))
                for i in range(3)
            ]
            results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        assert model.calls == 1  # one batch of 6 rows
        for result in results:
            assert isinstance(result, ModelExecutionError), result
            message = str(result)
            assert "default/linear:1.0.0" in message
            assert "'y'" in message
            assert "6 rows" in message
            assert "(1, 3)" in message
        # Logged once for the batch, not once per waiter.
        logged = [r for r in caplog.records if "batch dimension" in r.getMessage()]
        assert len(logged) == 1
    finally:
        await batcher.close()


async def test_a_single_request_whose_output_rows_do_not_match_fails(
    manifest: Manifest,
) -> None:
    batcher = DynamicBatcher(SummingModel(), manifest, BatchPolicy(max_batch_size=64))
    try:
        with pytest.raises(ModelExecutionError, match=r"'y' has shape \(1, 3\).*5 rows"):
            await batcher.submit(rows(1, 5), Priority.INTERACTIVE)
        # One row in, one row out is right.
        answer = await batcher.submit(rows(2, 1), Priority.INTERACTIVE)
        assert answer["y"].shape == (1, 3)
    finally:
        await batcher.close()


async def test_an_output_without_the_batch_dimension_fails(manifest: Manifest) -> None:
    def scalar(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": np.float32(1.0) * np.ones((), np.float32)}

    batcher = DynamicBatcher(scalar, manifest, BatchPolicy(max_batch_size=64))
    try:
        with pytest.raises(ModelExecutionError, match=r"'y' has shape \(\).*2 rows"):
            await batcher.submit(rows(1, 2), Priority.INTERACTIVE)
    finally:
        await batcher.close()


# -- a time-major recurrent model, from `sciserve init` to a serving server ------


@pytest.fixture
def gru_server(tmp_path: Path) -> Iterator[tuple[Running, Path]]:
    home = tmp_path / "home"
    work = tmp_path / "gru"
    work.mkdir()
    time_major_gru_onnx(work / "model.onnx")
    init = run_cli(
        home,
        *("init", str(work / "model.onnx"), "--name", "gru", "--version", "1.0.0"),
        *("--license", "MIT", "--description", "a time-major GRU classifier"),
    )
    assert init.returncode == 0, init.stderr
    published = run_cli(home, "publish", str(work))
    assert published.returncode == 0, published.stderr
    server = start_server(home, "--max-queue-delay", "0.05")
    try:
        yield server, work
    finally:
        stop_server(server.proc)


def test_init_finds_the_batch_dimension_of_a_time_major_model(
    gru_server: tuple[Running, Path],
) -> None:
    _, work = gru_server
    manifest = yaml.safe_load((work / "sciserve.yaml").read_text())
    assert manifest["max_batch_size"] > 0
    assert manifest["inputs"][0]["batch_dim"] == 1  # [T, B, F]
    assert manifest["outputs"][0].get("batch_dim", manifest.get("batch_dim", 0)) == 0  # [B, C]


def test_concurrent_requests_of_mixed_length_get_their_own_answers(
    gru_server: tuple[Running, Path],
) -> None:
    server, work = gru_server
    session = ort.InferenceSession(str(work / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    # Mixed sequence lengths T and batch sizes B: requests of one T batch along B.
    requests = [
        rng.normal(size=(int(rng.choice([2, 3, 5])), int(rng.choice([1, 2, 3])), 3)).astype(
            np.float32
        )
        for _ in range(48)
    ]

    def ask(client: httpx.Client, x: np.ndarray) -> dict[str, Any]:
        body = {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "data": x.ravel().tolist(),
                }
            ]
        }
        response = client.post(f"http://{server.http}/v2/models/gru/infer", json=body)
        assert response.status_code == 200, response.text
        output: dict[str, Any] = response.json()["outputs"][0]
        return output

    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda x: ask(client, x), requests))
    for x, answer in zip(requests, answers, strict=True):
        (expected,) = session.run(["y"], {"x": x})
        assert answer["shape"] == [x.shape[1], 4]
        got = np.asarray(answer["data"], np.float32).reshape(answer["shape"])
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    stats = httpx.get(f"http://{server.http}/v2/models/gru/stats", timeout=10).json()
    (model,) = stats["model_stats"]
    # Requests were really batched together (else this test could not fail).
    assert model["execution_count"] < len(requests)
    assert model["inference_count"] == sum(x.shape[1] for x in requests)
