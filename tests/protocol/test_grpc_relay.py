"""gRPC from front-end processes: the relay's frames, and a real ``sciserve
serve --grpc-frontends`` process driven by ``tritonclient``.

Every gRPC behaviour (answers, errors, streams, health) is also run through a
front end by ``test_grpc_server.py``; these tests cover what only the
process split has: front ends that die, shut down, or cannot listen."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2

from sciserve.config import Settings
from sciserve.protocol._relay_frames import (
    CALL,
    METHODS,
    REPLY,
    STATUS,
    FrameReader,
    call_body,
    frame,
    parse_call,
    parse_status,
    status_body,
)
from sciserve.registry.registry import Registry

from helpers.packages import expected_linear, make_onnx_package
from helpers.server import Running, run_cli, serving, start_server, stop_server

# -- frames ------------------------------------------------------------------


def test_frames_survive_any_split_of_the_byte_stream() -> None:
    frames = [
        (1, CALL, call_body(5, (("authorization", "Bearer x"),), b"\x00payload")),
        (2, REPLY, b""),
        (3, STATUS, status_body(14, "the server is stopping: ümlaut", (("retry-after", "1"),))),
        (4, REPLY, bytes(range(256)) * 40),
    ]
    stream = b"".join(frame(call, kind, body) for call, kind, body in frames)
    for chunk in (1, 7, 4096, len(stream)):
        reader = FrameReader()
        got = []
        for start in range(0, len(stream), chunk):
            got += reader.feed(stream[start : start + chunk])
        assert got == frames


def test_call_and_status_bodies_round_trip() -> None:
    metadata = (("authorization", "Bearer abc"), ("x-request", "é"))
    assert parse_call(call_body(7, metadata, b"\xffmessage")) == (7, metadata, b"\xffmessage")
    assert parse_status(status_body(8, "quota: 3 requests/s", metadata)) == (
        8,
        "quota: 3 requests/s",
        metadata,
    )


def test_every_method_of_both_services_is_relayed() -> None:
    paths = {method.path for method in METHODS}
    for name in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name:
        assert f"/inference.GRPCInferenceService/{name}" in paths
    assert {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"} <= paths


# -- a real server with front ends ---------------------------------------------


def _children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (Linux /proc)."""
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children |= {int(child) for child in text}
    return children


def _frontends(server: Running) -> set[int]:
    pids = set()
    for child in _children(server.proc.pid):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"sciserve.protocol.grpc_frontend" in cmdline:
            pids.add(child)
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _infer(address: str, rows: int = 3) -> np.ndarray[Any, Any]:
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    with grpcclient.InferenceServerClient(address) as client:
        out = client.infer("linear", [tensor]).as_numpy("y")
    np.testing.assert_allclose(out, expected_linear(x), rtol=1e-5)
    return out


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    registry = Registry(Settings.load(home, environ={}))
    try:
        registry.publish(make_onnx_package(tmp_path / "linear"))
    finally:
        registry.close()
    return home


@pytest.fixture
def server(home: Path) -> Iterator[Running]:
    with serving(home, "--grpc-frontends", "2") as running:
        yield running


def test_a_dead_front_end_is_replaced_and_serving_goes_on(server: Running) -> None:
    before = _frontends(server)
    assert len(before) == 2
    _infer(server.grpc)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = _frontends(server)
        if victim not in now and len(now) == 2:
            break
        time.sleep(0.1)
    assert victim not in now and len(now) == 2, now
    for _ in range(20):  # whichever front end the connection lands on
        _infer(server.grpc)


def test_stopping_the_server_stops_its_front_ends(home: Path) -> None:
    running = start_server(home, "--grpc-frontends", "1")
    try:
        pids = _frontends(running)
        assert len(pids) == 1
        _infer(running.grpc)
        # The server alone, not its process group: it must stop them itself.
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(timeout=30) == 0
    finally:
        stop_server(running.proc)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)


def test_a_garbage_stream_message_is_invalid_and_the_stream_server_goes_on(
    server: Running,
) -> None:
    with grpc.insecure_channel(server.grpc) as channel:
        stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as garbage:
            list(stream(iter([b"\xff\xff\xff\xff not protobuf"]), timeout=10))
    assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ModelInferRequest" in (garbage.value.details() or "")
    _infer(server.grpc)


def test_a_client_that_gives_up_does_not_disturb_the_others(server: Running) -> None:
    with grpc.insecure_channel(server.grpc) as channel:
        call = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
        )
        x = np.ones((1, 4), np.float32)
        request = service_pb2.ModelInferRequest(
            model_name="linear",
            inputs=[
                service_pb2.ModelInferRequest.InferInputTensor(
                    name="x", datatype="FP32", shape=[1, 4]
                )
            ],
            raw_input_contents=[x.tobytes()],
        )

        def endless() -> Iterator[service_pb2.ModelInferRequest]:
            while True:
                yield request

        responses = call(endless())
        assert next(responses).infer_response.model_name == "linear"
        responses.cancel()
    for _ in range(5):
        _infer(server.grpc)


def test_a_taken_grpc_port_is_named(home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            home,
            "serve", "--http-port", "0", "--metrics-port", "0",
            "--grpc-port", str(port), "--grpc-frontends", "1",
            timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "--grpc-port" in result.stderr
    assert "Traceback" not in result.stderr


def test_front_ends_do_not_outlive_a_killed_server(home: Path) -> None:
    running = start_server(home, "--grpc-frontends", "1")
    try:
        pids = _frontends(running)
        assert len(pids) == 1
        running.proc.send_signal(signal.SIGKILL)  # no chance to stop them
        running.proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in pids)
    finally:
        stop_server(running.proc)
