"""The gRPC adapter: a real ``grpc.aio`` server on 127.0.0.1, a real registry
with tiny ONNX models, and the real ``tritonclient.grpc`` client."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from sciserve._hashing import sha256_file
from sciserve.config import ServingConfig, Settings
from sciserve.errors import (
    ArchiveError,
    Conflict,
    DependencyMissing,
    IntegrityError,
    InvalidInput,
    ModelExecutionError,
    ModelNotReady,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
    SciserveError,
    VersionConflict,
)
from sciserve.package.manifest import Manifest, dump_manifest
from sciserve.protocol.grpc_relay import GrpcFrontends
from sciserve.protocol.grpc_server import create_grpc_server, status_of
from sciserve.registry.registry import Registry
from sciserve.serving.service import InferenceService

from helpers.packages import expected_linear, make_onnx_package

T = TypeVar("T")

#: Every datatype tritonclient can send over gRPC, and its ONNX element type.
ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}
MAX_REQUEST_BYTES = 1 << 20


def identity_package(root: Path, datatype: str) -> Path:
    """A package whose ONNX model returns its ``[-1, 3]`` input ``x`` as ``y``."""
    root.mkdir(parents=True)
    elem = ONNX_TYPES[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem, ["batch", 3])],
        [helper.make_tensor_value_info("y", elem, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    (root / "model.onnx").write_bytes(model.SerializeToString())
    sha, size = sha256_file(root / "model.onnx")
    manifest = Manifest.model_validate(
        {
            "name": f"identity-{datatype.lower()}",
            "version": "1.0.0",
            "description": f"y = x, {datatype}",
            "runtime": "onnx",
            "model_file": "model.onnx",
            "max_batch_size": 8,
            "inputs": [{"name": "x", "datatype": datatype, "shape": [-1, 3]}],
            "outputs": [{"name": "y", "datatype": datatype, "shape": [-1, 3]}],
            "files": [{"path": "model.onnx", "size": size, "sha256": sha, "role": "model"}],
            "license": "MIT",
            "authors": [{"name": "Test Author"}],
        }
    )
    (root / "sciserve.yaml").write_text(dump_manifest(manifest))
    return root


def sample(datatype: str, rows: int = 2) -> np.ndarray[Any, Any]:
    """A ``[rows, 3]`` array of ``datatype`` including each type's extremes."""
    count = rows * 3
    if datatype == "BYTES":
        words = [b"", b"alert", "\u00fcml\u00e4ut".encode(), b"x" * 100]
        return np.array([words[i % 4] for i in range(count)], dtype=object).reshape(rows, 3)
    if datatype == "BOOL":
        return np.asarray(np.arange(count) % 3 == 1).reshape(rows, 3)
    dtype = np.dtype(datatype.lower().replace("fp", "float"))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = [info.min, info.max, 0, 1, info.max // 3, info.min + 1]
        return np.array((values * count)[:count], dtype=dtype).reshape(rows, 3)
    return (np.arange(count) * 2.5 - 4).astype(dtype).reshape(rows, 3)


class ServerThread:
    """An :class:`InferenceService` and its gRPC server on 127.0.0.1:<free port>,
    on an event loop of their own in a background thread."""

    def __init__(self, service: InferenceService, *, frontends: int = 0) -> None:
        self.service = service
        self.frontends: GrpcFrontends | None = None
        self._frontend_count = frontends
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: grpc.aio.Server | None = None
        self.port = self.run(self._start())
        self.address = f"127.0.0.1:{self.port}"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``coro`` on the server's loop and return its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    async def _start(self) -> int:
        await self.service.start()
        if self._frontend_count:
            self.frontends = GrpcFrontends(
                self.service, "127.0.0.1", 0, processes=self._frontend_count
            )
            return await self.frontends.start()
        self.server, port = create_grpc_server(self.service, "127.0.0.1", 0)
        await self.server.start()
        return port

    async def _stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=1)
        if self.frontends is not None:
            await self.frontends.stop(grace=1)
        await self.service.stop()

    def stop(self) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="module", params=[0, 1], ids=["in-process", "front-end"])
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ServerThread]:
    """One server per gRPC mode: ``linear``, ``spare`` (for load/unload tests)
    and an identity model per datatype; gRPC served in-process, or by a
    front-end process relaying to it."""
    root = tmp_path_factory.mktemp("grpc")
    registry = Registry(Settings.load(root / "home", environ={}))
    registry.publish(make_onnx_package(root / "linear"))
    registry.publish(make_onnx_package(root / "spare", name="spare"))
    for datatype in ONNX_TYPES:
        registry.publish(identity_package(root / datatype, datatype))
    config = ServingConfig(poll_interval=60, max_request_bytes=MAX_REQUEST_BYTES)
    running = ServerThread(InferenceService(registry, config), frontends=request.param)
    try:
        yield running
    finally:
        running.stop()
        registry.close()


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[grpcclient.InferenceServerClient]:
    triton = grpcclient.InferenceServerClient(server.address)
    yield triton
    triton.close()


@pytest.fixture
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as chan:
        yield chan


def linear_input(x: np.ndarray[Any, Any]) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def status(exc: InferenceServerException) -> str:
    return str(exc.status())


# -- health and metadata -----------------------------------------------------


def test_health_and_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("linear")
    assert client.is_model_ready("linear", "1.0.0")
    server_meta = client.get_server_metadata()
    assert server_meta.name == "sciserve"
    assert {"statistics", "model_repository"} <= set(server_meta.extensions)
    meta = client.get_model_metadata("linear")
    assert meta.name == "linear" and list(meta.versions) == ["1.0.0"]
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("y", "FP32", [-1, 3])]


def test_model_config_is_tritons(client: grpcclient.InferenceServerClient) -> None:
    config = client.get_model_config("linear").config
    assert config.name == "linear"
    assert config.max_batch_size == 64  # what SonicTriton reads at start-up
    assert config.platform == "onnxruntime_onnx" and config.backend == "onnx"
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("x", model_config_pb2.TYPE_FP32, [4])  # batch dimension left out, as Triton does
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        ("y", model_config_pb2.TYPE_FP32, [3])
    ]
    assert config.HasField("dynamic_batching")
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.instance_group[0].count == 1
    assert config.parameters["sciserve_digest"].string_value.startswith("sha256:")
    strings = client.get_model_config("identity-bytes").config
    assert strings.input[0].data_type == model_config_pb2.TYPE_STRING
    assert strings.max_batch_size == 8


# -- inference ---------------------------------------------------------------


@pytest.mark.parametrize("datatype", list(ONNX_TYPES))
def test_infer_every_datatype(client: grpcclient.InferenceServerClient, datatype: str) -> None:
    data = sample(datatype)
    tensor = grpcclient.InferInput("x", list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    result = client.infer(f"identity-{datatype.lower()}", [tensor], request_id=f"r-{datatype}")
    out = result.as_numpy("y")
    assert out.shape == data.shape
    if datatype == "BYTES":
        assert out.tolist() == data.tolist()
    else:
        assert out.dtype == data.dtype
        np.testing.assert_array_equal(out, data)
    response = result.get_response()
    assert response.id == f"r-{datatype}"
    assert response.model_version == "1.0.0"
    assert response.outputs[0].datatype == datatype


def test_infer_linear_by_version_and_requested_output(
    client: grpcclient.InferenceServerClient,
) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    result = client.infer(
        "linear",
        [linear_input(x)],
        model_version="1.0.0",
        outputs=[grpcclient.InferRequestedOutput("y")],
    )
    np.testing.assert_allclose(result.as_numpy("y"), expected_linear(x))


# -- streaming -----------------------------------------------------------------


def test_stream_answers_every_request_and_survives_a_bad_one(
    client: grpcclient.InferenceServerClient,
) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        inputs = {f"good-{i}": np.full((i + 1, 4), i, np.float32) for i in range(6)}
        for request_id, x in list(inputs.items())[:3]:
            client.async_stream_infer("linear", [linear_input(x)], request_id=request_id)
        bad = np.ones((1, 5), np.float32)  # the model takes 4 features
        client.async_stream_infer("linear", [linear_input(bad)], request_id="bad")
        for request_id, x in list(inputs.items())[3:]:
            client.async_stream_infer("linear", [linear_input(x)], request_id=request_id)

        received = [answers.get(timeout=20) for _ in range(7)]
        errors = [error for result, error in received if error is not None]
        assert len(errors) == 1 and "shape" in str(errors[0])
        results = {result.get_response().id: result for result, error in received if error is None}
        assert set(results) == set(inputs)
        for request_id, x in inputs.items():
            np.testing.assert_allclose(results[request_id].as_numpy("y"), expected_linear(x))

        # After the error the same stream still answers.
        x = np.ones((2, 4), np.float32)
        client.async_stream_infer("linear", [linear_input(x)], request_id="after")
        result, error = answers.get(timeout=20)
        assert error is None and result.get_response().id == "after"
        np.testing.assert_allclose(result.as_numpy("y"), expected_linear(x))
    finally:
        client.stop_stream()


def test_stream_error_keeps_the_request_id(channel: grpc.Channel) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    x = service_pb2.ModelInferRequest.InferInputTensor(
        name="x",
        datatype="FP32",
        shape=[1, 4],
        contents=service_pb2.InferTensorContents(fp32_contents=[1, 2, 3, 4]),
    )
    requests = [
        service_pb2.ModelInferRequest(model_name="nothing", id="lost", inputs=[x]),
        service_pb2.ModelInferRequest(model_name="linear", id="found", inputs=[x]),
    ]
    answers = list(stub.ModelStreamInfer(iter(requests), timeout=20))
    by_id = {a.infer_response.id: a for a in answers}
    assert set(by_id) == {"lost", "found"}
    assert "nothing" in by_id["lost"].error_message
    assert by_id["found"].error_message == ""
    assert len(by_id["found"].infer_response.raw_output_contents) == 1


# -- statistics and repository ----------------------------------------------------


def test_statistics_count_requests(client: grpcclient.InferenceServerClient) -> None:
    def linear_stats() -> Any:
        (stats,) = client.get_inference_statistics("linear").model_stats
        return stats

    before = linear_stats()
    for rows in (1, 2, 3):
        client.infer("linear", [linear_input(np.ones((rows, 4), np.float32))])
    after = linear_stats()
    assert after.name == "linear" and after.version == "1.0.0"
    assert after.inference_stats.success.count - before.inference_stats.success.count == 3
    assert after.inference_count - before.inference_count == 6
    assert after.inference_stats.success.ns > before.inference_stats.success.ns
    assert after.last_inference > 0
    assert {b.batch_size for b in after.batch_stats} >= {1, 2, 3}
    everything = client.get_inference_statistics().model_stats
    assert {"linear", "identity-fp32"} <= {s.name for s in everything}


def test_repository_index_load_and_unload(
    client: grpcclient.InferenceServerClient, channel: grpc.Channel
) -> None:
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert {"linear", "spare", "identity-bytes"} <= set(index)
    assert index["spare"].state == "READY" and index["spare"].version == "1.0.0"
    health = health_pb2_grpc.HealthStub(channel)

    client.unload_model("spare")
    assert not client.is_model_ready("spare")
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["spare"].state == "UNAVAILABLE"  # Triton's word for unloaded
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    ready_request = service_pb2.RepositoryIndexRequest(ready=True)
    ready_only = {m.name for m in stub.RepositoryIndex(ready_request, timeout=10).models}
    assert "spare" not in ready_only and "linear" in ready_only
    check = health.Check(health_pb2.HealthCheckRequest(service="spare"), timeout=10)
    assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert client.is_server_ready()  # an unloaded model no longer counts

    client.load_model("spare")
    assert client.is_model_ready("spare")
    with pytest.raises(InferenceServerException) as refused:
        client.load_model("spare", config='{"max_batch_size": 1}')
    assert status(refused.value) == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as unknown:
        client.load_model("nothing")
    assert status(unknown.value) == "StatusCode.NOT_FOUND"


def test_health_service(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    for name in ("", "inference.GRPCInferenceService", "linear", "identity-fp16"):
        request = health_pb2.HealthCheckRequest(service=name)
        assert health.Check(request, timeout=10).status == serving, name
    with pytest.raises(grpc.RpcError) as unknown:
        health.Check(health_pb2.HealthCheckRequest(service="nothing"), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    watch = health.Watch(health_pb2.HealthCheckRequest(service="linear"), timeout=10)
    assert next(watch).status == serving
    watch.cancel()


# -- errors ------------------------------------------------------------------


def test_undecodable_messages_are_invalid_argument_and_logged_briefly(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    stream = channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    watch = channel.unary_stream(
        "/grpc.health.v1.Health/Watch",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    calls = [
        lambda: garbage(b"\xff\xff\xff\xff not protobuf", timeout=10),
        lambda: list(stream(iter([b"\xff\xff\xff\xff not protobuf"]), timeout=10)),
        lambda: list(watch(b"\xff\xff\xff\xff not protobuf", timeout=10)),
    ]
    with caplog.at_level(logging.WARNING):
        for call in calls * 10:
            with pytest.raises(grpc.RpcError) as undecodable:
                call()
            assert undecodable.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid" in (undecodable.value.details() or "")
    # A client's mistake, not the server's: no traceback, and not a line per message.
    assert [r for r in caplog.records if r.exc_info] == []
    assert len(caplog.records) <= 1, [r.getMessage() for r in caplog.records]


def test_a_huge_model_name_stays_not_found(channel: grpc.Channel) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    name = "x" * 100_000
    request = service_pb2.ModelInferRequest(model_name=name)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend(
        [1, 2, 3, 4]
    )
    calls = [
        lambda: stub.ModelInfer(request, timeout=10),
        lambda: stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=name), timeout=10),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as missing:
            call()
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert len(missing.value.details() or "") < 1000


def test_hostile_requests_get_errors_and_the_server_keeps_serving(
    client: grpcclient.InferenceServerClient, channel: grpc.Channel
) -> None:
    garbage = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.RpcError) as undecodable:
        garbage(b"\xff\xff\xff\xff not protobuf", timeout=10)
    assert undecodable.value.code() != grpc.StatusCode.OK

    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    mismatch = service_pb2.ModelInferRequest(
        model_name="linear",
        inputs=[service_pb2.ModelInferRequest.InferInputTensor(
            name="x", datatype="FP32", shape=[1, 4]
        )],
        raw_input_contents=[bytes(16), bytes(16)],
    )  # fmt: skip
    with pytest.raises(grpc.RpcError) as counted:
        stub.ModelInfer(mismatch, timeout=10)
    assert counted.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents" in counted.value.details()

    with pytest.raises(InferenceServerException) as shape:
        client.infer("linear", [linear_input(np.ones((1, 5), np.float32))])
    assert status(shape.value) == "StatusCode.INVALID_ARGUMENT"
    assert "shape" in str(shape.value.message())

    with pytest.raises(InferenceServerException) as too_many:
        client.infer("linear", [linear_input(np.ones((65, 4), np.float32))])
    assert status(too_many.value) == "StatusCode.INVALID_ARGUMENT"

    with pytest.raises(InferenceServerException) as unknown:
        client.infer("nothing", [linear_input(np.ones((1, 4), np.float32))])
    assert status(unknown.value) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as unknown_meta:
        client.get_model_metadata("nothing")
    assert status(unknown_meta.value) == "StatusCode.NOT_FOUND"

    huge = np.zeros((MAX_REQUEST_BYTES // 12 + 1, 3), np.float32)
    tensor = grpcclient.InferInput("x", list(huge.shape), "FP32")
    tensor.set_data_from_numpy(huge)
    with pytest.raises(InferenceServerException) as oversized:
        client.infer("identity-fp32", [tensor])
    assert status(oversized.value) == "StatusCode.RESOURCE_EXHAUSTED"

    assert client.is_server_live() and client.is_server_ready()
    result = client.infer("linear", [linear_input(np.ones((1, 4), np.float32))])
    np.testing.assert_allclose(result.as_numpy("y"), expected_linear(np.ones((1, 4))))


def test_unimplemented_triton_extensions_say_so(
    client: grpcclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as shm:
        client.get_system_shared_memory_status()
    assert status(shm.value) == "StatusCode.UNIMPLEMENTED"
    assert "shared-memory" in str(shm.value.message())
    with pytest.raises(InferenceServerException) as trace:
        client.get_trace_settings()
    assert status(trace.value) == "StatusCode.UNIMPLEMENTED"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInput("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (ArchiveError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (PayloadTooLarge("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (Conflict("x"), grpc.StatusCode.ALREADY_EXISTS),
        (VersionConflict("x"), grpc.StatusCode.ALREADY_EXISTS),
        (PermissionDenied("x"), grpc.StatusCode.PERMISSION_DENIED),
        (ModelNotReady("x"), grpc.StatusCode.UNAVAILABLE),
        (Overloaded("x", 2.5), grpc.StatusCode.UNAVAILABLE),
        (DependencyMissing("x"), grpc.StatusCode.UNAVAILABLE),
        (IntegrityError("x"), grpc.StatusCode.DATA_LOSS),
        (ModelExecutionError("x"), grpc.StatusCode.INTERNAL),
        (SciserveError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_status_table(error: SciserveError, code: grpc.StatusCode) -> None:
    assert status_of(error) == code


class FaultyService(InferenceService):
    """A service whose statistics fail with a bug (an exception sciserve did
    not mean to raise), to see what a client and the log get."""

    async def statistics(
        self, name: str | None = None, version: str | None = None, identity: Any = None
    ) -> Any:
        raise RuntimeError("secret internals")


#: Features of the slow model: big enough that one batch of 64 rows takes
#: milliseconds, far longer than the server needs to take in a request.
SLOW_IN, SLOW_OUT = 512, 1024


@pytest.fixture
def small_server(sqlite_registry: Registry, onnx_package: Any) -> Iterator[ServerThread]:
    """A faulty service with a slow model, whose queues hold one request."""
    sqlite_registry.publish(onnx_package(name="slow", n_in=SLOW_IN, n_out=SLOW_OUT))
    running = ServerThread(FaultyService(sqlite_registry, ServingConfig(max_queue_size=1)))
    yield running
    running.stop()


def test_unexpected_errors_are_internal_and_logged(
    small_server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with grpc.insecure_channel(small_server.address) as chan:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(chan)
        with (
            caplog.at_level(logging.ERROR, "sciserve.protocol.grpc"),
            pytest.raises(grpc.RpcError) as failed,
        ):
            stub.ModelStatistics(service_pb2.ModelStatisticsRequest(), timeout=10)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in failed.value.details()
    assert "server log" in failed.value.details()
    assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)


def test_overload_is_unavailable_with_retry_after(small_server: ServerThread) -> None:
    x = np.ones((64, SLOW_IN), np.float32)  # a full batch each: nothing shares a batch
    request = service_pb2.ModelInferRequest(
        model_name="slow",
        inputs=[service_pb2.ModelInferRequest.InferInputTensor(
            name="x", datatype="FP32", shape=list(x.shape)
        )],
        raw_input_contents=[x.tobytes()],
    )  # fmt: skip
    with grpc.insecure_channel(small_server.address) as chan:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(chan)
        calls = [stub.ModelInfer.future(request, timeout=30) for _ in range(50)]
        codes = [call.code() for call in calls]
        refused = [c for c in calls if c.code() == grpc.StatusCode.UNAVAILABLE]
    assert grpc.StatusCode.OK in codes and refused
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
    metadata = dict(refused[0].trailing_metadata())
    assert int(metadata["retry-after"]) >= 1
    assert int(metadata["grpc-retry-pushback-ms"]) >= 0


def test_a_busy_port_is_an_os_error(server: ServerThread) -> None:
    async def bind_again() -> None:
        create_grpc_server(server.service, "127.0.0.1", server.port)

    with pytest.raises(OSError, match="cannot listen"):
        server.run(bind_again())
