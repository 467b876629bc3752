"""The HTTP server for real: uvicorn on 127.0.0.1, the unmodified
``tritonclient.http`` for everything a client does right, raw ``httpx`` and
sockets for everything a hostile client does wrong.

Every test against a server runs twice: HTTP served in-process, and by two
front-end processes (``serve --http-frontends 2``) relaying to it."""

from __future__ import annotations

import gzip
import json
import logging
import socket
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tritonclient.utils import InferenceServerException

from sciserve import errors
from sciserve._hashing import sha256_file
from sciserve.config import ServingConfig, Settings
from sciserve.package.manifest import Manifest, dump_manifest
from sciserve.protocol.rest import _guarded, create_app, create_metrics_app, status_of
from sciserve.registry.registry import Registry
from sciserve.serving.service import InferenceService

from helpers.packages import expected_linear, make_onnx_package
from helpers.server import FrontendThread, ServerThread

#: Small enough that oversized bodies are cheap to send.
LIMIT = 64 * 1024


def pair_package(root: Path) -> Path:
    """A package whose model has two outputs: ``double = 2x`` and ``neg = -x``."""
    root.mkdir(parents=True)
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["double"]),
            helper.make_node("Neg", ["x"], ["neg"]),
        ],
        "pair",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [
            helper.make_tensor_value_info("double", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("neg", TensorProto.FLOAT, ["batch", 2]),
        ],
        [numpy_helper.from_array(np.array(2, np.float32), "two")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / "model.onnx").write_bytes(model.SerializeToString())
    sha, size = sha256_file(root / "model.onnx")
    manifest = Manifest.model_validate(
        {
            "name": "pair",
            "version": "1.0.0",
            "namespace": "examples",
            "description": "two outputs",
            "runtime": "onnx",
            "model_file": "model.onnx",
            "max_batch_size": 8,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
            "outputs": [
                {"name": "double", "datatype": "FP32", "shape": [-1, 2]},
                {"name": "neg", "datatype": "FP32", "shape": [-1, 2]},
            ],
            "files": [{"path": "model.onnx", "size": size, "sha256": sha, "role": "model"}],
            "license": "MIT",
            "authors": [{"name": "Test Author"}],
        }
    )
    (root / "sciserve.yaml").write_text(dump_manifest(manifest))
    return root


@pytest.fixture(scope="module", params=["in-process", "front-ends"])
def mode(request: pytest.FixtureRequest) -> str:
    """How HTTP is served: in the serving process, or by front ends relaying to it."""
    return str(request.param)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, mode: str) -> Iterator[InferenceService]:
    tmp = tmp_path_factory.mktemp("rest")
    with Registry(Settings.load(tmp / "home", environ={})) as registry:
        registry.publish(make_onnx_package(tmp / "v1"))
        registry.publish(make_onnx_package(tmp / "v2", version="2.0.0", scale=2.0))
        registry.tag("linear:1.0.0", "stable")
        registry.publish(pair_package(tmp / "pair"))
        yield InferenceService(registry, ServingConfig(max_request_bytes=LIMIT))


@pytest.fixture(scope="module")
def address(service: InferenceService, mode: str) -> Iterator[str]:
    if mode == "front-ends":
        with FrontendThread(service, processes=2) as address:
            yield address
        return
    with ServerThread(create_app(service, manage_service=True)) as address:
        yield address


@pytest.fixture
def triton(address: str) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(address)
    yield client
    client.close()


@pytest.fixture
def http(address: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{address}", timeout=30) as client:
        yield client


def triton_input(x: np.ndarray, *, binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


X = np.arange(8, dtype=np.float32).reshape(2, 4)


def binary_body(x: np.ndarray = X, **extra: Any) -> tuple[bytes, dict[str, str]]:
    """A well-formed binary request for ``linear`` and its headers."""
    doc = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": list(x.shape),
                "parameters": {"binary_data_size": x.nbytes},
            }
        ],
        **extra,
    }
    header = json.dumps(doc).encode()
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def json_body(x: np.ndarray = X) -> bytes:
    doc = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        ]
    }
    return json.dumps(doc).encode()


def assert_serving(http: httpx.Client) -> None:
    """A good request right after a bad one is answered correctly."""
    response = http.post("/v2/models/linear/infer", content=json_body())
    assert response.status_code == 200, response.text
    y = np.array(response.json()["outputs"][0]["data"], np.float32).reshape(2, 3)
    np.testing.assert_allclose(y, expected_linear(X, scale=2.0))


def assert_error(response: httpx.Response, status: int, fragment: str = "") -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert fragment.lower() in body["error"].lower()


# -- tritonclient: the happy paths -----------------------------------------


def test_health_and_server_metadata(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    metadata = triton.get_server_metadata()
    assert metadata["name"] == "sciserve"
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_config_and_readiness(triton: httpclient.InferenceServerClient) -> None:
    metadata = triton.get_model_metadata("linear")
    assert metadata["name"] == "linear"
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
    config = triton.get_model_config("linear")
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]
    assert config["sciserve"]["ref"] == "default/linear:2.0.0"
    assert triton.is_model_ready("linear")
    assert triton.is_model_ready("examples.pair")
    assert triton.is_model_ready("linear", "1.0.0")  # loaded on demand
    assert triton.get_model_metadata("linear", "1.0.0")["name"] == "linear"


@pytest.mark.parametrize("binary", [True, False])
def test_infer_round_trip(triton: httpclient.InferenceServerClient, binary: bool) -> None:
    result = triton.infer(
        "linear",
        [triton_input(X, binary=binary)],
        outputs=[httpclient.InferRequestedOutput("y", binary_data=binary)],
        request_id="req-42",
    )
    np.testing.assert_allclose(result.as_numpy("y"), expected_linear(X, scale=2.0))
    response = result.get_response()
    assert response["id"] == "req-42"
    assert response["model_version"] == "2.0.0"
    assert ("data" in response["outputs"][0]) is not binary


def test_infer_a_version_and_an_alias(triton: httpclient.InferenceServerClient) -> None:
    for selector in ("1.0.0", "stable"):
        result = triton.infer("linear", [triton_input(X, binary=True)], model_version=selector)
        np.testing.assert_allclose(result.as_numpy("y"), expected_linear(X))
        assert result.get_response()["model_version"] == "1.0.0"


def test_requested_outputs(triton: httpclient.InferenceServerClient) -> None:
    x = np.array([[1.0, -2.0]], np.float32)
    tensor = httpclient.InferInput("x", [1, 2], "FP32")
    tensor.set_data_from_numpy(x)
    only_neg = triton.infer(
        "examples.pair", [tensor], outputs=[httpclient.InferRequestedOutput("neg")]
    )
    assert [o["name"] for o in only_neg.get_response()["outputs"]] == ["neg"]
    np.testing.assert_array_equal(only_neg.as_numpy("neg"), -x)
    both = triton.infer("examples.pair", [tensor])
    np.testing.assert_array_equal(both.as_numpy("double"), 2 * x)
    np.testing.assert_array_equal(both.as_numpy("neg"), -x)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(triton: httpclient.InferenceServerClient, algorithm: str) -> None:
    result = triton.infer(
        "linear", [triton_input(X, binary=True)], request_compression_algorithm=algorithm
    )
    np.testing.assert_allclose(result.as_numpy("y"), expected_linear(X, scale=2.0))


def test_statistics(triton: httpclient.InferenceServerClient) -> None:
    triton.infer("linear", [triton_input(X, binary=True)])
    stats = triton.get_inference_statistics("linear")["model_stats"]
    default = next(s for s in stats if s["version"] == "2.0.0")
    assert default["inference_count"] >= 2  # the batch of 2 rows just sent
    assert default["inference_stats"]["success"]["count"] >= 1
    every = triton.get_inference_statistics()["model_stats"]
    assert {"linear", "examples.pair"} <= {s["name"] for s in every}


def test_repository_index_unload_and_load(triton: httpclient.InferenceServerClient) -> None:
    index = triton.get_model_repository_index()
    assert {"name": "examples.pair", "version": "1.0.0", "state": "READY", "reason": ""} in index
    triton.unload_model("examples.pair")
    try:
        assert not triton.is_model_ready("examples.pair")
        states = {r["name"]: r["state"] for r in triton.get_model_repository_index()}
        assert states["examples.pair"] != "READY"
    finally:
        triton.load_model("examples.pair")
    assert triton.is_model_ready("examples.pair")
    tensor = httpclient.InferInput("x", [1, 2], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 2), np.float32))
    assert triton.infer("examples.pair", [tensor]).as_numpy("double").tolist() == [[2.0, 2.0]]


def test_binary_response_headers(http: httpx.Client) -> None:
    body, headers = binary_body(parameters={"binary_data_output": True})
    response = http.post("/v2/models/linear/infer", content=body, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    y = np.frombuffer(response.content[length:], np.float32).reshape(2, 3)
    np.testing.assert_allclose(y, expected_linear(X, scale=2.0))
    plain = http.post("/v2/models/linear/infer", content=json_body())
    assert plain.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in plain.headers


def test_ready_only_repository_index_and_unready_model(http: httpx.Client) -> None:
    ready = http.post("/v2/repository/index", json={"ready": True}).json()
    assert ready and all(r["state"] == "READY" for r in ready)
    assert_error(http.post("/v2/repository/index", json={"ready": "yes"}), 400, "ready")
    assert http.post("/v2/repository/models/examples.pair/unload").status_code == 200
    try:
        response = http.get("/v2/models/examples.pair/ready")
        assert response.status_code == 503
        assert response.json()["ready"] is False and response.json()["reason"]
        names = [r["name"] for r in http.post("/v2/repository/index", json={"ready": True}).json()]
        assert "examples.pair" not in names
        assert_error(http.post("/v2/models/examples.pair/infer", content=json_body()), 503, "pair")
    finally:
        assert http.post("/v2/repository/models/examples.pair/load").status_code == 200


# -- hostile clients -----------------------------------------------------------


def _request(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def _x(shape: list[int], data: list[Any], datatype: str = "FP32") -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}]}


INFER = "/v2/models/linear/infer"
HLEN = "Inference-Header-Content-Length"


def hostile(
    case: str,
    body: bytes,
    status: int,
    fragment: str,
    *,
    method: str = "POST",
    path: str = INFER,
    headers: dict[str, str] | None = None,
) -> Any:
    return pytest.param(method, path, body, headers or {}, status, fragment, id=case)


HOSTILE = [
    hostile("wrong-shape", _request(_x([2, 5], [0.0] * 10)), 400, "shape"),
    hostile("wrong-datatype", _request(_x([2, 4], [0] * 8, "INT32")), 400, "datatype"),
    hostile("too-little-data", _request(_x([2, 4], [0.0] * 7)), 400, "'x'"),
    hostile("truncated-binary", binary_body()[0][:-8], 400, "truncated", headers=binary_body()[1]),
    hostile("header-past-body", b"{}", 400, "exceeds", headers={HLEN: "99"}),
    hostile("header-not-integer", json_body(), 400, "integer", headers={HLEN: "twelve"}),
    hostile("header-negative", json_body(), 400, "integer", headers={HLEN: "-1"}),
    hostile(
        "unknown-output",
        _request({**_x([2, 4], [0.0] * 8), "outputs": [{"name": "nope"}]}),
        400,
        "nope",
    ),
    hostile(
        "classification-extension",
        _request(
            {
                **_x([2, 4], [0.0] * 8),
                "outputs": [{"name": "y", "parameters": {"classification": 2}}],
            }
        ),
        400,
        "classification",
    ),
    hostile("not-utf8", b'{"inputs": "\xff\xfe"}', 400, "utf-8"),
    hostile("json-array", b"[1, 2, 3]", 400, "object"),
    hostile("not-json", b'{"inputs": [', 400, "json"),
    hostile("unknown-encoding", json_body(), 400, "br", headers={"Content-Encoding": "br"}),
    hostile(
        "corrupt-gzip",
        b"\x1f\x8bnot gzip at all",
        400,
        "compressed",
        headers={"Content-Encoding": "gzip"},
    ),
    hostile(
        "truncated-gzip",
        gzip.compress(json_body())[:-12],
        400,
        "truncated",
        headers={"Content-Encoding": "gzip"},
    ),
    hostile(
        "gzip-bomb",
        gzip.compress(b" " * (64 * LIMIT)),
        413,
        "limit",
        headers={"Content-Encoding": "gzip"},
    ),
    hostile(
        "deflate-bomb",
        zlib.compress(b"0" * (64 * LIMIT)),
        413,
        "limit",
        headers={"Content-Encoding": "deflate"},
    ),
    hostile("oversized", b" " * (LIMIT + 1), 413, "limit"),
    hostile("unknown-model", json_body(), 404, "nope", path="/v2/models/nope/infer"),
    hostile(
        "unknown-version",
        json_body(),
        404,
        "9.9.9",
        path="/v2/models/linear/versions/9.9.9/infer",
    ),
    hostile("unknown-model-metadata", b"", 404, "nope", method="GET", path="/v2/models/nope"),
    hostile("unknown-model-ready", b"", 404, "nope", method="GET", path="/v2/models/nope/ready"),
    hostile("wrong-method", b"", 405, "GET", method="GET"),
    hostile("wrong-method-health", b"", 405, "POST", path="/v2/health/live"),
    hostile("unknown-route", b"", 404, "/v3/everything", method="GET", path="/v3/everything"),
    hostile(
        "load-with-config",
        _request({"parameters": {"config": "{}"}}),
        400,
        "not supported",
        path="/v2/repository/models/linear/load",
    ),
    hostile("load-unknown-model", b"", 404, "nope", path="/v2/repository/models/nope/load"),
    hostile("index-not-json", b"ready", 400, "json", path="/v2/repository/index"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "fragment"), HOSTILE)
def test_hostile_requests_get_clear_errors(
    http: httpx.Client,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    fragment: str,
) -> None:
    response = http.request(method, path, content=body or None, headers=headers)
    assert_error(response, status, fragment)
    assert_serving(http)


def test_wrong_method_lists_the_allowed_ones(http: httpx.Client) -> None:
    response = http.delete("/v2/models/linear/infer")
    assert_error(response, 405)
    assert response.headers["allow"] == "POST"


def test_oversized_chunked_body_is_refused_while_streaming(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(64):  # 4 MiB, far past the limit, without a Content-Length
            yield b" " * 65536

    response = http.post("/v2/models/linear/infer", content=chunks())
    assert_error(response, 413, "limit")
    assert_serving(http)


def test_compression_bomb_is_never_inflated_in_memory(http: httpx.Client) -> None:
    bomb = zlib.compress(bytes(60 * 2**20), 9)  # 60 MiB of zeros
    assert len(bomb) < LIMIT
    tracemalloc.start()
    try:
        response = http.post(INFER, content=bomb, headers={"Content-Encoding": "deflate"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_error(response, 413, "inflates")
    assert peak < 8 * 2**20  # the server stopped near the limit of 64 KiB
    assert_serving(http)


def test_lying_content_length_is_refused_before_the_body(address: str) -> None:
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 1000000000\r\n\r\n" + json_body()
        )
        reply = b""
        while chunk := sock.recv(65536):  # the server closes the connection after answering
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert b"connection: close" in head.lower()
    assert "limit" in json.loads(body)["error"]


def test_errors_from_the_client_come_back_through_tritonclient(
    triton: httpclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException, match="no output"):
        triton.infer(
            "linear", [triton_input(X, binary=True)], outputs=[httpclient.InferRequestedOutput("z")]
        )
    with pytest.raises(InferenceServerException, match="unknown model"):
        triton.get_model_metadata("nope")


# -- the error table and the metrics app ------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.InvalidInput("x"), 400),
        (errors.ManifestError([errors.Problem("name", "bad")]), 400),
        (errors.InvalidReference("x"), 400),
        (errors.PayloadTooLarge("x"), 413),
        (errors.NotFound("x"), 404),
        (errors.VersionConflict("x"), 409),
        (errors.PermissionDenied("x"), 403),
        (errors.ModelNotReady("x"), 503),
        (errors.Overloaded("x", 0.2), 503),
        (errors.DependencyMissing("x"), 503),
        (errors.DeviceUnavailable("x"), 503),
        (errors.IntegrityError("x"), 500),
        (errors.ModelExecutionError("x"), 500),
        (errors.SciserveError("x"), 500),
    ],
)
def test_status_table(error: errors.SciserveError, status: int) -> None:
    assert status_of(error) == status


def _raiser(exc: Exception) -> Starlette:
    async def endpoint(request: Request) -> Response:
        raise exc

    return Starlette(routes=[Route("/", _guarded(endpoint))])


def test_overloaded_answers_with_retry_after() -> None:
    with ServerThread(_raiser(errors.Overloaded("queue full", retry_after=2.2))) as address:
        response = httpx.get(f"http://{address}/")
    assert_error(response, 503, "queue full")
    assert response.headers["retry-after"] == "3"


def test_unexpected_errors_are_logged_not_leaked(caplog: pytest.LogCaptureFixture) -> None:
    app = _raiser(KeyError("secret-internal-detail"))
    with caplog.at_level(logging.ERROR, "sciserve.protocol.rest"), ServerThread(app) as address:
        response = httpx.get(f"http://{address}/")
    assert response.status_code == 500
    assert "secret" not in response.text
    assert "internal server error" in response.json()["error"]
    assert any(
        r.exc_info and "secret-internal-detail" in str(r.exc_info[1]) for r in caplog.records
    )


def test_metrics_app(service: InferenceService, triton: httpclient.InferenceServerClient) -> None:
    triton.infer("linear", [triton_input(X, binary=True)])
    with ServerThread(create_metrics_app(service)) as address:
        response = httpx.get(f"http://{address}/metrics")
        missing = httpx.get(f"http://{address}/v2")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert (
        'sciserve_inference_requests_total{model="linear",outcome="success",version="2.0.0"}'
        in response.text
    )
    assert_error(missing, 404)
