"""A real ``sciserve serve`` process, driven by the unmodified ``tritonclient``.

Every runtime is served (ONNX for every datatype, TorchScript, LightGBM,
scikit-learn, XGBoost, the Python runtime in its own process, and a
third-party runtime installed as a separate package) and every answer is
compared with in-process execution of the same package.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import sciserve
from sciserve.config import Settings
from sciserve.package.card import render_card
from sciserve.registry.registry import Registry

from helpers.packages import expected_linear, identity_package, make_onnx_package, write_package
from helpers.server import Running, start_server, stop_server

HTTP_DATATYPES = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


def _sample(datatype: str, rows: int = 2) -> np.ndarray:
    rng = np.random.default_rng(7)
    if datatype == "BYTES":
        return np.array(
            [[f"r{r}c{c}".encode() for c in range(3)] for r in range(rows)], dtype=object
        )
    if datatype == "BOOL":
        return rng.integers(0, 2, size=(rows, 3)).astype(bool)
    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(datatype)
    if dtype is not None:
        return rng.normal(size=(rows, 3)).astype(dtype)
    return rng.integers(0, 100, size=(rows, 3)).astype(np.dtype(datatype.lower()))


def _build_registry(home: Path, work: Path) -> None:
    with Registry(Settings.load(home, environ={})) as reg:
        reg.create_namespace("trusted", trusted=True)
        for dt in HTTP_DATATYPES:
            reg.publish(identity_package(work / f"id-{dt}", dt))
        reg.publish(make_onnx_package(work / "linear1"))
        reg.publish(make_onnx_package(work / "linear2", version="2.0.0", scale=2.0))
        reg.tag("linear:1.0.0", "production")
        for build in (_torchscript, _lightgbm, _sklearn, _xgboost, _python, _echo):
            reg.publish(build(work))


def _torchscript(work: Path) -> Path:
    import warnings

    import torch

    root = work / "ts"
    root.mkdir()

    class Net(torch.nn.Module):  # type: ignore[misc]
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(x) * 3.0

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Net()).save(str(root / "model.pt"))
    return write_package(
        root,
        name="tanh",
        namespace="trusted",
        runtime="torchscript",
        model_file="model.pt",
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        outputs=[{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    )


def _tree_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1).astype(int)
    return x, y


def _lightgbm(work: Path) -> Path:
    import lightgbm

    root = work / "lgb"
    root.mkdir()
    x, y = _tree_data()
    booster = lightgbm.train(
        {
            "objective": "multiclass",
            "num_class": 3,
            "verbose": -1,
            "num_threads": 1,
            "deterministic": True,
        },
        lightgbm.Dataset(x, y),
        num_boost_round=5,
    )
    booster.save_model(str(root / "model.txt"))
    return write_package(
        root,
        name="gbm",
        runtime="lightgbm",
        model_file="model.txt",
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        outputs=[{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
    )


def _sklearn(work: Path) -> Path:
    import skops.io
    from sklearn.linear_model import LogisticRegression

    root = work / "sk"
    root.mkdir()
    x, y = _tree_data()
    skops.io.dump(LogisticRegression(max_iter=200).fit(x, y), root / "model.skops")
    return write_package(
        root,
        name="logreg",
        runtime="sklearn",
        model_file="model.skops",
        inputs=[{"name": "x", "datatype": "FP64", "shape": [-1, 4]}],
        outputs=[{"name": "probabilities", "datatype": "FP64", "shape": [-1, 3]}],
    )


def _xgboost(work: Path) -> Path:
    import xgboost

    root = work / "xgb"
    root.mkdir()
    x, y = _tree_data()
    booster = xgboost.train(
        {"objective": "multi:softprob", "num_class": 3, "nthread": 1},
        xgboost.DMatrix(x, label=y),
        num_boost_round=3,
    )
    booster.save_model(str(root / "model.json"))
    return write_package(
        root,
        name="xgb",
        runtime="xgboost",
        model_file="model.json",
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        outputs=[{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
    )


PYTHON_MODEL = """
import os
import numpy as np


class Model:
    def __init__(self, root, options):
        self.offset = float(options.get("offset", 1.0))

    def predict(self, inputs):
        x = inputs["x"]
        if float(x.sum()) == 666.0:
            os._exit(3)  # a crash the server must survive
        return {"y": (x + self.offset).astype(np.float32)}
"""


def _python(work: Path) -> Path:
    root = work / "py"
    root.mkdir()
    (root / "model.py").write_text(PYTHON_MODEL)
    return write_package(
        root,
        name="pyplus",
        namespace="trusted",
        runtime="python",
        model_file=None,
        files=("model.py",),
        runtime_options={"entrypoint": "model.py:Model", "offset": 1.5},
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        outputs=[{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    )


def _echo(work: Path) -> Path:
    root = work / "echo"
    root.mkdir()
    (root / "echo.json").write_text('{"scale": 2.0}')
    return write_package(
        root,
        name="echo",
        runtime="echo",
        model_file="echo.json",
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        outputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    base = tmp_path_factory.mktemp("e2e")
    _build_registry(base / "home", base / "work")
    running = start_server(base / "home")
    try:
        yield running
    finally:
        stop_server(running.proc)
    assert running.proc.returncode == 0, "the server did not shut down cleanly on SIGTERM"


@pytest.fixture(scope="module")
def registry(server: Running) -> Iterator[Registry]:
    with Registry(Settings.load(server.home, environ={})) as reg:
        yield reg


def _http(server: Running) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.http)


def _infer_http(
    client: Any,
    model: str,
    name: str,
    data: np.ndarray,
    datatype: str,
    *,
    binary: bool,
    output: str = "OUTPUT0",
) -> np.ndarray:
    inp = httpclient.InferInput(name, list(data.shape), datatype)
    inp.set_data_from_numpy(data, binary_data=binary)
    out = httpclient.InferRequestedOutput(output, binary_data=binary)
    result = client.infer(model, [inp], outputs=[out], request_id="req-1")
    assert result.get_response()["id"] == "req-1"
    array: np.ndarray = result.as_numpy(output)
    return array


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", HTTP_DATATYPES)
def test_http_every_datatype(server: Running, datatype: str, binary: bool) -> None:
    data = _sample(datatype)
    out = _infer_http(
        _http(server), f"identity_{datatype.lower()}", "INPUT0", data, datatype, binary=binary
    )
    if datatype == "BYTES" and not binary:
        # tritonclient hands JSON BYTES back as str, as it does for Triton.
        out = np.vectorize(lambda v: v.encode(), otypes=[object])(out)
    np.testing.assert_array_equal(out, data)


@pytest.mark.parametrize("datatype", HTTP_DATATYPES)
def test_grpc_every_datatype(server: Running, datatype: str) -> None:
    client = grpcclient.InferenceServerClient(server.grpc)
    data = _sample(datatype)
    inp = grpcclient.InferInput("INPUT0", list(data.shape), datatype)
    inp.set_data_from_numpy(data)
    result = client.infer(f"identity_{datatype.lower()}", [inp])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def test_grpc_streaming(server: Running) -> None:
    client = grpcclient.InferenceServerClient(server.grpc)
    results: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    sent = {}
    try:
        for i in range(10):
            x = np.full((1, 4), i, np.float32)
            inp = grpcclient.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(x)
            client.async_stream_infer("linear", [inp], request_id=str(i))
            sent[str(i)] = x
        bad = grpcclient.InferInput("x", [1, 5], "FP32")
        bad.set_data_from_numpy(np.ones((1, 5), np.float32))
        client.async_stream_infer("linear", [bad], request_id="bad")
        got = [results.get(timeout=30) for _ in range(11)]
    finally:
        client.stop_stream()
    errors = [e for _, e in got if e is not None]
    assert len(errors) == 1 and "shape" in str(errors[0])
    for result, error in got:
        if error is None:
            rid = result.get_response().id
            expected = sent[rid] @ (np.arange(12, dtype=np.float32).reshape(4, 3)) + 1
            np.testing.assert_allclose(result.as_numpy("y"), expected)


@pytest.mark.parametrize(
    ("model", "ref", "out_name", "datatype"),
    [
        ("trusted.tanh", "trusted/tanh", "y", "FP32"),
        ("gbm", "gbm", "probabilities", "FP32"),
        ("logreg", "logreg", "probabilities", "FP64"),
        ("xgb", "xgb", "probabilities", "FP32"),
        ("trusted.pyplus", "trusted/pyplus", "y", "FP32"),
        ("echo", "echo", "x", "FP32"),
    ],
)
def test_every_runtime_matches_in_process(
    server: Running, registry: Registry, model: str, ref: str, out_name: str, datatype: str
) -> None:
    dtype = np.float64 if datatype == "FP64" else np.float32
    x = np.random.default_rng(5).normal(size=(3, 4)).astype(dtype)
    with sciserve.load(ref, registry=registry) as local:
        expected = local.predict(x=x)[out_name]
    http_out = _infer_http(_http(server), model, "x", x, datatype, binary=True, output=out_name)
    np.testing.assert_allclose(http_out, expected, rtol=1e-6)
    client = grpcclient.InferenceServerClient(server.grpc)
    inp = grpcclient.InferInput("x", [3, 4], datatype)
    inp.set_data_from_numpy(x)
    np.testing.assert_allclose(client.infer(model, [inp]).as_numpy(out_name), expected, rtol=1e-6)


def test_crash_in_the_model_process_fails_in_flight_and_recovers(server: Running) -> None:
    client = _http(server)
    boom = np.zeros((1, 4), np.float32)
    boom[0, 0] = 666.0
    inp = httpclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(boom)
    with pytest.raises(InferenceServerException) as err:
        client.infer("trusted.pyplus", [inp])
    assert "exit" in str(err.value).lower()
    ok = _infer_http(
        client, "trusted.pyplus", "x", np.ones((1, 4), np.float32), "FP32", binary=True, output="y"
    )
    np.testing.assert_allclose(ok, np.full((1, 4), 2.5, np.float32))


def test_metadata_config_and_versions(server: Running) -> None:
    client = _http(server)
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_model_metadata("linear")
    assert meta["inputs"][0]["shape"] == [-1, 4]
    config = client.get_model_config("linear")
    assert config["max_batch_size"] == 64
    grpc_config = grpcclient.InferenceServerClient(server.grpc).get_model_config("linear")
    assert grpc_config.config.max_batch_size == 64
    x = np.ones((1, 4), np.float32)
    inp = httpclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    v1 = client.infer("linear", [inp]).as_numpy("y")
    v2 = client.infer("linear", [inp], model_version="2.0.0").as_numpy("y")
    prod = client.infer("linear", [inp], model_version="production").as_numpy("y")
    np.testing.assert_allclose(v2, v1 * 2)
    np.testing.assert_allclose(prod, v1)


def test_batching_shows_in_statistics_and_metrics(server: Running) -> None:
    # tritonclient.http runs concurrent requests on gevent greenlets.
    client = httpclient.InferenceServerClient(server.http, concurrency=32)
    rng = np.random.default_rng(11)
    inputs = [rng.normal(size=(int(rng.integers(1, 5)), 3)).astype(np.float32) for _ in range(300)]
    before = _metric(
        server, "sciserve_inference_requests_total", 'model="identity_fp32",outcome="success"'
    )
    pending = []
    for x in inputs:
        inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        pending.append(client.async_infer("identity_fp32", [inp]))
    for x, request in zip(inputs, pending, strict=True):
        np.testing.assert_array_equal(request.get_result().as_numpy("OUTPUT0"), x)
    stats = _http(server).get_inference_statistics("identity_fp32")["model_stats"][0]
    assert max(b["batch_size"] for b in stats["batch_stats"]) > 1
    after = _metric(
        server, "sciserve_inference_requests_total", 'model="identity_fp32",outcome="success"'
    )
    assert after - before == len(inputs)


def _metric(server: Running, name: str, labels: str) -> float:
    with urllib.request.urlopen(f"http://{server.metrics}/metrics") as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(p in line for p in labels.split(",")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_grpc_streaming_every_datatype(server: Running) -> None:
    client = grpcclient.InferenceServerClient(server.grpc)
    results: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    sent = {}
    try:
        for datatype in HTTP_DATATYPES:
            data = _sample(datatype)
            inp = grpcclient.InferInput("INPUT0", list(data.shape), datatype)
            inp.set_data_from_numpy(data)
            client.async_stream_infer(f"identity_{datatype.lower()}", [inp], request_id=datatype)
            sent[datatype] = data
        got = [results.get(timeout=30) for _ in HTTP_DATATYPES]
    finally:
        client.stop_stream()
    for result, error in got:
        assert error is None, error
        datatype = result.get_response().id
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), sent[datatype])


def test_the_cards_usage_snippets_run_as_written(
    server: Running,
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The SDK, tritonclient and curl examples of a model card work, with only the
    server's address changed."""
    info = registry.resolve("linear:2.0.0")
    card = render_card(info.manifest, digest=info.digest)
    usage = card.split("\n## Use it\n", 1)[1]
    sdk, triton, curl = (code for _, code in re.findall(r"```(\w+)\n(.*?)```", usage, re.S))
    expected = expected_linear(np.zeros((1, 4), np.float32), scale=2.0)

    monkeypatch.setenv("SCISERVE_HOME", str(server.home))
    exec(sdk, {})
    exec(triton.replace("localhost:8000", server.http), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed == [str(expected), str(expected)]

    done = subprocess.run(
        ["sh", "-c", curl.replace("localhost:8000", server.http)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    (output,) = json.loads(done.stdout)["outputs"]
    assert output["name"] == "y"
    np.testing.assert_allclose(np.reshape(output["data"], output["shape"]), expected)
