"""HTTP from front-end processes: the relay's frames, and a real ``sciserve
serve --http-frontends`` process driven by ``tritonclient`` and raw sockets.

Every HTTP behaviour (answers, errors, hostile bodies) is also run through
two front ends by ``test_rest_server.py``; these tests cover what only the
process split has: front ends that die, drain or cannot listen, malformed
HTTP reaching a front end, admission before the body, and the private
socket directory."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from sciserve.access.priority import Priority
from sciserve.access.tokens import TokenStore
from sciserve.config import RateLimit, ServingConfig, Settings, frontends_for_cores
from sciserve.protocol import http_frontend
from sciserve.protocol._frames import FrameReader, frame
from sciserve.protocol._http_frames import (
    ADVICE,
    REQUEST,
    START,
    Advice,
    Head,
    advice_body,
    parse_advice,
    parse_request,
    parse_start,
    request_body,
    start_body,
)
from sciserve.registry.registry import Registry
from sciserve.serving.service import InferenceService

from helpers.packages import expected_linear, home_with_linear, make_onnx_package
from helpers.server import FrontendThread, Running, run_cli, serving, start_server, stop_server

X = np.arange(12, dtype=np.float32).reshape(3, 4)

# -- frames ------------------------------------------------------------------


def test_request_start_and_advice_frames_round_trip_in_any_split() -> None:
    head = Head(
        "POST", "/v2/models/ümlaut/infer", b"/v2/models/%C3%BCmlaut/infer", b"a=1&b=%20",
        [(b"authorization", b"Bearer secret"), (b"x-empty", b""), (b"x-bin", bytes(range(256)))],
        ("127.0.0.1", 5555), ("127.0.0.1", 8000), "https", "1.1", b"\x00" * 16, True, True, True,
    )  # fmt: skip
    no_peer = Head("GET", "/", b"/", b"", [], None, None, "http", "1.0", b"", False, False)
    frames = [
        (1, REQUEST, request_body(head, b"\x00body")),
        (2, REQUEST, request_body(no_peer, b"")),
        (1, START, start_body(429, [(b"retry-after", b"3")], False, b'{"error":"x"}')),
        (0, ADVICE, advice_body(Advice("saturated", b"linear", 0.25, b"{}"))),
        (3, START, start_body(200, [], True, bytes(range(256)) * 300)),
    ]
    stream = b"".join(frame(call, kind, body) for call, kind, body in frames)
    for size in (1, 5, 4096, len(stream)):
        reader = FrameReader()
        got = []
        for start in range(0, len(stream), size):
            got += reader.feed(stream[start : start + size])
        assert got == frames
    assert parse_request(frames[0][2]) == (head, b"\x00body")
    assert parse_request(frames[1][2]) == (no_peer, b"")
    assert parse_start(frames[2][2]) == (429, [(b"retry-after", b"3")], False, b'{"error":"x"}')
    assert parse_advice(frames[3][2]) == Advice("saturated", b"linear", 0.25, b"{}")


def test_front_end_classes_are_the_priority_classes() -> None:
    # The front end does not import the access layer; its numbers must agree.
    assert (http_frontend.REALTIME, http_frontend.INTERACTIVE, http_frontend.BATCH) == (
        Priority.REALTIME, Priority.INTERACTIVE, Priority.BATCH,
    )  # fmt: skip


def test_front_ends_for_the_core_count() -> None:
    assert [frontends_for_cores(n) for n in (1, 2, 4, 32)] == [1, 1, 3, 8]


def test_admission_lanes_keep_room_for_realtime() -> None:
    admission = http_frontend.Admission(interactive_lane=2, batch_lane=1)
    with admission.lane(http_frontend.BATCH):
        refusal = admission.refusal(b"", "linear", http_frontend.BATCH)
        assert refusal is not None and refusal.status == 503
        assert json.loads(refusal.body)["type"] == "Overloaded"
        assert admission.refusal(b"", "linear", http_frontend.INTERACTIVE) is None
    assert admission.refusal(b"", "linear", http_frontend.BATCH) is None
    with admission.lane(http_frontend.INTERACTIVE), admission.lane(http_frontend.INTERACTIVE):
        assert admission.refusal(b"", "linear", http_frontend.INTERACTIVE) is not None
        for _ in range(100):  # realtime always has room
            assert admission.refusal(b"", "linear", http_frontend.REALTIME) is None


def test_admission_holds_an_over_quota_credential_per_model_and_batch_on_a_full_queue() -> None:
    admission = http_frontend.Admission(interactive_lane=8, batch_lane=8)
    key = admission.credential(b"Bearer ssv_abc")
    assert key != admission.credential(b"Bearer ssv_abd") and len(key) == 16
    assert http_frontend.Admission(8, 8).credential(b"Bearer ssv_abc") != key  # own secret
    admission.learn(key, "linear", 429, 30.0, b'{"error":"quota"}')
    held = admission.refusal(key, "linear", http_frontend.REALTIME)
    assert held is not None and (held.status, held.body) == (429, b'{"error":"quota"}')
    assert admission.refusal(key, "other", http_frontend.REALTIME) is None
    admission.advise(parse_advice(advice_body(Advice("saturated", b"linear", 5.0, b"{}"))))
    assert admission.refusal(b"", "linear", http_frontend.BATCH) is not None
    assert admission.refusal(b"", "linear", http_frontend.INTERACTIVE) is None
    admission.advise(Advice("class", key, float(Priority.BATCH)))
    assert admission.priority(key) == http_frontend.BATCH


# -- a real server with front ends ---------------------------------------------


def _children(pid: int) -> set[int]:
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children |= {int(child) for child in (task / "children").read_text().split()}
    return children


def _frontends(server: Running) -> set[int]:
    return {
        child
        for child in _children(server.proc.pid)
        if b"sciserve.protocol.http_frontend" in Path(f"/proc/{child}/cmdline").read_bytes()
    }


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _owner(port: int, client_port: int, candidates: set[int]) -> int:
    """Which of ``candidates`` holds the server side of a TCP connection (Linux /proc)."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) == client_port:
            inode = fields[9]
    assert inode is not None
    for pid in candidates:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError("no front end holds the connection")


def _triton_input() -> httpclient.InferInput:
    tensor = httpclient.InferInput("x", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X, binary_data=True)
    return tensor


def _infer(client: httpclient.InferenceServerClient, **kwargs: Any) -> None:
    out = client.infer("linear", [_triton_input()], **kwargs).as_numpy("y")
    np.testing.assert_allclose(out, expected_linear(X), rtol=1e-5)


def _raw(address: str, request: bytes, *, timeout: float = 3) -> bytes:
    """Send ``request`` on a new connection; what the server sends until it
    closes the connection or stays silent for ``timeout`` seconds."""
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        reply = b""
        try:
            sock.sendall(request)
            while chunk := sock.recv(65536):
                reply += chunk
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            pass
    return reply


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return home_with_linear(tmp_path)


@pytest.fixture
def server(home: Path, tmp_path: Path) -> Iterator[Running]:
    with serving(home, "--http-frontends", "2", stderr_file=tmp_path / "server.log") as running:
        yield running


def test_a_killed_front_end_fails_no_request_on_the_other_and_is_replaced(
    server: Running,
) -> None:
    before = _frontends(server)
    assert len(before) == 2
    port = int(server.http.split(":")[1])
    failures: list[BaseException] = []
    done = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal done
        # tritonclient.http runs on gevent: the client lives in this thread.
        with httpclient.InferenceServerClient(server.http) as client:  # one connection
            while not stop.is_set():
                try:
                    _infer(client)
                    done += 1
                except BaseException as exc:
                    failures.append(exc)
                    return

    loader = threading.Thread(target=load)
    loader.start()
    try:
        deadline = time.monotonic() + 30
        while done < 3 and not failures and time.monotonic() < deadline:
            time.sleep(0.02)
        client_port = next(  # the client's side of its one connection
            int(line.split()[1].split(":")[1], 16)
            for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
            if int(line.split()[2].split(":")[1], 16) == port and line.split()[3] == "01"
        )
        survivor = _owner(port, client_port, before)
        victim = (before - {survivor}).pop()
        os.kill(victim, signal.SIGKILL)
        killed_at = done
        now = before
        while time.monotonic() < deadline:
            now = _frontends(server)
            if victim not in now and len(now) == 2:
                break
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        stop.set()
        loader.join(30)
    assert not failures, failures
    assert done > killed_at + 3
    assert victim not in now and survivor in now and len(now) == 2, now
    for _ in range(10):  # new connections land on either, the new one included
        with httpclient.InferenceServerClient(server.http) as fresh:
            _infer(fresh)


def test_sigterm_drains_a_request_in_flight(home: Path) -> None:
    running = start_server(home, "--http-frontends", "2")
    try:
        pids = _frontends(running)
        body = json.dumps(
            {
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [3, 4], "data": X.ravel().tolist()}
                ]
            }
        ).encode()
        host, port = running.http.split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            head = (
                f"POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            sock.sendall(head + body[:10])  # in flight: the body is still coming
            time.sleep(0.5)
            # The server alone, not its process group: it stops its front ends.
            running.proc.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            with pytest.raises(httpx.ConnectError):  # no longer accepting
                httpx.get(f"http://{running.http}/v2/health/live", timeout=5)
            sock.sendall(body[10:])
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        status, _, rest = reply.partition(b"\r\n")
        assert status == b"HTTP/1.1 200 OK", reply
        answer = json.loads(rest.partition(b"\r\n\r\n")[2])
        assert answer["outputs"][0]["data"] == expected_linear(X).ravel().tolist()
        assert running.proc.wait(timeout=30) == 0
    finally:
        stop_server(running.proc)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)


HOSTILE_HTTP = [
    pytest.param(b"GARBAGE\r\n\r\n", id="malformed-request-line"),
    pytest.param(b"GET / HTTP/1.1\r\nHost x\r\n\r\n", id="malformed-header"),
    pytest.param(
        b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
        id="bad-content-length",
    ),
    pytest.param(
        b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Content-Length: 7\r\n\r\n{}",
        id="two-content-lengths",
    ),
    pytest.param(
        b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nnot hex\r\n0\r\n\r\n",
        id="bad-chunk-size",
    ),
    pytest.param(
        b'POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{"in',
        id="truncated-body",
    ),
    pytest.param(
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Huge: " + b"a" * (1 << 20) + b"\r\n\r\n",
        id="huge-header",
    ),
    pytest.param(
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + b"X-Many: 1\r\n" * 20_000 + b"\r\n",
        id="many-headers",
    ),
    pytest.param(
        b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        id="length-and-chunked",
    ),
    pytest.param(b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", id="huge-path"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64), id="tls-to-plain"),
]


@pytest.fixture(scope="module")
def abused_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One server for every hostile request: each must leave it serving the next."""
    root = tmp_path_factory.mktemp("abused")
    home = home_with_linear(root)
    with serving(home, "--http-frontends", "2", stderr_file=root / "server.log") as running:
        yield running


@pytest.mark.parametrize("request_bytes", HOSTILE_HTTP)
def test_malformed_http_gets_an_error_not_a_crash(
    abused_server: Running, request_bytes: bytes
) -> None:
    server = abused_server
    pids = _frontends(server)
    reply = _raw(server.http, request_bytes)
    if reply:  # an answer is a client error; closing without one is fine too
        status = int(reply.split(b" ", 2)[1])
        assert 400 <= status < 500 or status == 200, reply[:200]
    assert _frontends(server) == pids  # none died
    with httpclient.InferenceServerClient(server.http) as client:
        for _ in range(4):
            _infer(client)
    assert server.proc.poll() is None


def test_oversized_body_through_a_front_end_is_refused_and_the_next_served(
    server: Running,
) -> None:
    limit = 64 * 2**20
    reply = _raw(
        server.http,
        b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Length: {limit + 1}\r\n\r\n".encode()
        + b" " * 1000,
    )
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"connection: close" in reply.lower()
    with httpclient.InferenceServerClient(server.http) as client:
        _infer(client)


def test_the_relay_socket_is_alone_in_a_private_directory(server: Running) -> None:
    for pid in _frontends(server):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        relay = Path(argv[argv.index(b"--relay") + 1].decode())
        directory = relay.parent
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert directory.stat().st_uid == os.getuid()
        assert [p.name for p in directory.iterdir()] == ["relay.sock"]
        assert stat.S_ISSOCK(relay.stat().st_mode)


def test_a_taken_http_port_is_named(home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            home,
            "serve", "--grpc-port", "0", "--metrics-port", "0",
            "--http-port", str(port), "--http-frontends", "2",
            timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "--http-port" in result.stderr
    assert "Traceback" not in result.stderr


def test_front_ends_do_not_outlive_a_killed_server(home: Path) -> None:
    running = start_server(home, "--http-frontends", "1")
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


# -- admission -----------------------------------------------------------------


def test_an_over_quota_token_is_refused_before_its_body_and_never_logged(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    with Registry(Settings.load(home, environ={})) as registry:
        registry.publish(make_onnx_package(tmp_path / "linear"))
        store = TokenStore(registry)
        _, slow = store.create("slow", {"*": ["infer"]}, limit=RateLimit(rate=0.05, burst=1))
        _, fine = store.create("fine", {"*": ["infer"]})
    log = tmp_path / "server.log"
    running = start_server(home, "--auth", "--http-frontends", "1", stderr_file=log)
    try:
        with httpclient.InferenceServerClient(running.http) as client:
            _infer(client, headers={"Authorization": f"Bearer {slow}"})
            with pytest.raises(Exception, match="rate limit"):  # the serving process says 429
                _infer(client, headers={"Authorization": f"Bearer {slow}"})
        # Now the front end knows: headers alone get the 429, the body never comes.
        started = time.monotonic()
        reply = _raw(
            running.http,
            b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {slow}\r\nContent-Length: 100000\r\n\r\n".encode(),
        )
        assert time.monotonic() - started < 5
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 429"), reply[:300]
        assert b"connection: close" in head.lower()
        retry = int(
            next(h for h in head.split(b"\r\n") if h.lower().startswith(b"retry-after:")).split(
                b":"
            )[1]
        )
        assert 1 <= retry <= 20
        assert "rate limit" in json.loads(body)["error"]
        # Other credentials, and bad ones, are not affected.
        with httpclient.InferenceServerClient(running.http) as client:
            _infer(client, headers={"Authorization": f"Bearer {fine}"})
        bad = httpx.post(
            f"http://{running.http}/v2/models/linear/infer",
            content=b"{}",
            headers={"Authorization": f"Bearer {slow[:-4]}XXXX"},
        )
        assert bad.status_code == 401
    finally:
        stop_server(running.proc)
    text = log.read_text(errors="replace")
    for token in (slow, fine, slow[:-4] + "XXXX"):
        assert token not in text
        assert token[-16:] not in text  # nor its secret part


def test_a_body_larger_than_the_relay_window_streams_through(server: Running) -> None:
    # 8 MiB, chunked: many times the relay's window, so the front end must be
    # told as the application reads (a lost acknowledgement would hang here).
    def chunks() -> Iterator[bytes]:
        for i in range(128):
            yield bytes([i]) * 65536

    url = f"http://{server.http}/v2/sciserve/registry/models"
    response = httpx.post(url, content=chunks(), timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["type"] in ("InvalidInput", "ArchiveError")
    with httpclient.InferenceServerClient(server.http) as client:
        _infer(client)


def test_batch_work_for_a_full_queue_is_refused_at_the_front_end_realtime_is_not(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    with Registry(Settings.load(home, environ={})) as registry:
        registry.publish(make_onnx_package(tmp_path / "linear"))
        store = TokenStore(registry)
        _, bulk = store.create("bulk", {"*": ["infer"]}, priority="batch")
        _, urgent = store.create("urgent", {"*": ["infer"]}, priority="realtime")
    # One waiting request fills the queue, and each waits 0.3 s for a batch.
    serve = ["--auth", "--http-frontends", "1", "--max-queue-size", "1"]
    running = start_server(home, *serve, "--max-queue-delay", "0.3")
    url = f"http://{running.http}/v2/models/linear/infer"
    tensor = {"name": "x", "datatype": "FP32", "shape": [3, 4], "data": X.ravel().tolist()}
    body = json.dumps({"inputs": [tensor]}).encode()

    def post(token: str) -> httpx.Response:
        return httpx.post(url, content=body, headers={"Authorization": f"Bearer {token}"})

    try:
        assert post(bulk).status_code == 200  # the front end learns the class
        statuses: list[int] = []
        threads = [threading.Thread(target=lambda: statuses.append(post(bulk).status_code))]
        threads.append(threading.Thread(target=lambda: statuses.append(post(bulk).status_code)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(statuses) == [200, 503]  # the serving process refused one
        # Now the front end refuses batch work for this model from the headers.
        started = time.monotonic()
        reply = _raw(
            running.http,
            b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {bulk}\r\nContent-Length: 100000\r\n\r\n".encode(),
        )
        assert time.monotonic() - started < 1
        head, _, answer = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), reply[:300]
        assert b"retry-after: 1" in head.lower() and b"connection: close" in head.lower()
        assert json.loads(answer)["type"] == "Overloaded"
        assert post(urgent).status_code == 200  # realtime still goes through
    finally:
        stop_server(running.proc)


@pytest.mark.parametrize(
    ("value", "fragment"), [("many", "'auto'"), ("-1", "'auto'"), ("65", "--http-frontends")]
)
def test_a_bad_front_end_count_is_a_clear_usage_error(
    home: Path, value: str, fragment: str
) -> None:
    result = run_cli(
        home,
        "serve", "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
        "--http-frontends", value,
        timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_auto_front_ends_follow_the_core_count(home: Path) -> None:
    running = start_server(home, "--http-frontends", "auto")
    try:
        assert len(_frontends(running)) == frontends_for_cores()
        with httpclient.InferenceServerClient(running.http) as client:
            _infer(client)
    finally:
        stop_server(running.proc)


def test_a_client_expecting_100_continue_is_refused_before_sending_its_body(
    server: Running,
) -> None:
    tensor = {"name": "x", "datatype": "FP32", "shape": [3, 4], "data": X.ravel().tolist()}
    body = json.dumps({"inputs": [tensor]}).encode()
    host, port = server.http.split(":")

    def head(model: str) -> bytes:
        return (
            f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()

    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head("nope"))  # no such model: answered from the head alone
        reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 404"), reply
        assert b"100 Continue" not in reply
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head("linear"))
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        reply = b""
        while not reply.endswith(b"}"):
            reply += sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200"), reply
        answer = json.loads(reply.partition(b"\r\n\r\n")[2])
        assert answer["outputs"][0]["data"] == expected_linear(X).ravel().tolist()


# -- flow control, with an application of the test's own ----------------------------


@pytest.fixture
def bare_service(tmp_path: Path) -> Iterator[InferenceService]:
    with Registry(Settings.load(tmp_path / "home", environ={})) as registry:
        yield InferenceService(registry, ServingConfig())


def test_a_slow_client_holds_a_streaming_response_back_and_gets_every_byte(
    bare_service: InferenceService,
) -> None:
    chunk, chunks = 64 * 1024, 1024  # 64 MiB in all
    produced = 0

    async def pieces() -> AsyncIterator[bytes]:
        nonlocal produced
        for i in range(chunks):
            produced += chunk
            yield bytes([i % 251]) * chunk

    async def download(request: Request) -> Response:
        return StreamingResponse(pieces(), media_type="application/octet-stream")

    app = Starlette(routes=[Route("/download", download)])
    with FrontendThread(bare_service, processes=1, app=app) as address:
        digest = hashlib.sha256()
        received = 0
        with httpx.stream("GET", f"http://{address}/download", timeout=60) as response:
            assert response.status_code == 200
            for part in response.iter_raw():
                if received == 0:
                    time.sleep(1.0)  # a slow reader: the server must wait for it
                    # Sockets and buffers hold some; nowhere near all 64 MiB.
                    assert produced < 24 * 2**20, produced
                received += len(part)
                digest.update(part)
    assert received == chunk * chunks
    expected = hashlib.sha256()
    for i in range(chunks):
        expected.update(bytes([i % 251]) * chunk)
    assert digest.hexdigest() == expected.hexdigest()


def test_an_application_failing_mid_response_leaves_the_body_visibly_cut(
    bare_service: InferenceService,
) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        raise RuntimeError("the application failed mid-response")

    async def broken(request: Request) -> Response:
        return StreamingResponse(pieces())

    async def fine(request: Request) -> Response:
        return Response(b"fine")

    app = Starlette(routes=[Route("/broken", broken), Route("/fine", fine)])
    with FrontendThread(bare_service, processes=1, app=app) as address:
        with pytest.raises(httpx.RemoteProtocolError):  # never a body that looks complete
            httpx.get(f"http://{address}/broken", timeout=30)
        assert httpx.get(f"http://{address}/fine", timeout=30).content == b"fine"


# -- the same bytes ------------------------------------------------------------------


def _exchange(address: str, request: bytes) -> bytes:
    """One request on a new connection (closed by ``Connection: close``): the
    raw response without its Date and Server lines."""
    reply = _raw(address, request, timeout=10)
    lines = reply.split(b"\r\n")
    return b"\r\n".join(
        line for line in lines if not line.lower().startswith((b"date:", b"server:"))
    )


def test_responses_are_the_same_bytes_as_in_process(home: Path) -> None:
    tensor = {"name": "x", "datatype": "FP32", "shape": [3, 4], "data": X.ravel().tolist()}
    infer_json = json.dumps({"inputs": [tensor], "id": "r1"}).encode()
    header = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 4],
                     "parameters": {"binary_data_size": X.nbytes}}],
         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
    ).encode()  # fmt: skip
    infer_binary = header + X.tobytes()

    def post(path: str, body: bytes, *extra: str) -> bytes:
        lines = [f"POST {path} HTTP/1.1", "Host: x", "Connection: close", *extra]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def get(path: str) -> bytes:
        return f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()

    requests = [
        get("/v2/health/ready"),
        get("/v2"),
        get("/v2/models/linear"),
        get("/v2/models/linear/config"),
        get("/v2/models/nope"),
        get("/v3/nothing"),
        get("/v2/models/linear/infer"),
        b"HEAD /v2/models/linear HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        post("/v2/models/linear/infer", infer_json),
        post(
            "/v2/models/linear/infer",
            infer_binary,
            f"Inference-Header-Content-Length: {len(header)}",
            "Content-Type: application/octet-stream",
        ),
        post("/v2/models/linear/infer", b'{"inputs": ['),
        post("/v2/models/linear/infer", b"[1, 2]"),
        post("/v2/models/nope/infer", infer_json),
        post("/v2/models/linear/infer", infer_json, "Content-Encoding: br"),
        post("/v2/models/linear/infer", b" " * 100_000),
        get("/v2/sciserve/registry/models"),
        # With the fast path, decoded by the front ends and answered by the serving process.
        post("/v2/models/linear/versions/1.0.0/infer", infer_json),
        post("/v2/models/linear/infer", _infer_body(X, binary_data_output=True)),
        post("/v2/models/linear/infer", infer_json.replace(b"0.0", b"NaN", 1)),
        post("/v2/models/linear/infer", _infer_body(X, "INT32")),
        post("/v2/models/linear/infer", _infer_body(np.zeros((2, 5), np.float32))),
        post("/v2/models/linear/infer", _infer_body(np.zeros((65, 4), np.float32))),
        post("/v2/models/linear/infer", _infer_body(X, outputs=[{"name": "nope"}])),
        post("/v2/models/linear/infer", _infer_body(X, parameters={"priority": "urgent"})),
        post("/v2/models/linear/infer", infer_json + b" " * 90_000),  # over linear's 80 KiB
        b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + _chunked(infer_json + b" " * 90_000),
        post("/v2/models/nope/infer", _infer_body(X, binary_data_output=True)),
    ]
    plain = start_server(home)
    try:
        expected = [_exchange(plain.http, request) for request in requests]
        for request, answer in zip(requests, expected, strict=True):
            assert answer.startswith(b"HTTP/1.1 "), (request[:60], answer[:200])
        # Relayed as they came (the default) and through the fast path.
        for fast_path in ("--no-http-fast-path", "--http-fast-path"):
            relayed = start_server(home, "--http-frontends", "2", fast_path)
            try:
                for request, answer in zip(requests, expected, strict=True):
                    assert _exchange(relayed.http, request) == answer, (fast_path, request[:60])
            finally:
                stop_server(relayed.proc)
    finally:
        stop_server(plain.proc)


def _infer_body(x: np.ndarray, datatype: str = "FP32", **extra: Any) -> bytes:
    data = x.ravel().tolist() if datatype.startswith("FP") else x.astype(int).ravel().tolist()
    tensor = {"name": "x", "datatype": datatype, "shape": list(x.shape), "data": data}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def _chunked(body: bytes, size: int = 8192) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts) + b"0\r\n\r\n"


def test_fast_path_answers_under_auth_are_the_same_bytes_as_in_process(tmp_path: Path) -> None:
    # Accepted credentials take the fast path once the front end knows them:
    # what they may not do (403), their quota (429) and a credential never
    # accepted (401, relayed as it came) answer as in-process.
    home = tmp_path / "home"
    with Registry(Settings.load(home, environ={})) as registry:
        registry.publish(make_onnx_package(tmp_path / "linear"))
        store = TokenStore(registry)
        _, fine = store.create("fine", {"*": ["infer"]})
        _, reader = store.create("reader", {"default": ["read"]})
        _, slow = store.create("slow", {"*": ["infer"]}, limit=RateLimit(rate=0.001, burst=1))
    body = _infer_body(X, id="r1")

    def post(token: str | None, payload: bytes = body) -> bytes:
        auth = "" if token is None else f"Authorization: Bearer {token}\r\n"
        return (
            f"POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"{auth}Content-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload

    warm_up = [post(fine), post(reader), post(slow)]  # relayed: the classes are learnt
    requests = [
        post(fine),
        post(fine, _infer_body(X, binary_data_output=True)),
        post(fine, b'{"inputs": ['),
        post(fine, _infer_body(np.zeros((2, 5), np.float32))),
        post(fine, _infer_body(X, "INT32")),
        post(reader),
        post(slow),
        post(None),
        post(fine[:-4] + "XXXX"),
    ]
    statuses = []
    plain = start_server(home, "--auth")
    try:
        relayed = start_server(home, "--auth", "--http-frontends", "1", "--http-fast-path")
        try:
            for request in warm_up:
                assert _exchange(relayed.http, request) == _exchange(plain.http, request)
            time.sleep(0.5)  # a class is advised after its answer
            for request in requests:
                expected = _exchange(plain.http, request)
                assert _exchange(relayed.http, request) == expected, (request[:200], expected)
                statuses.append(int(expected.split(b" ", 2)[1]))
        finally:
            stop_server(relayed.proc)
    finally:
        stop_server(plain.proc)
    assert statuses == [200, 200, 400, 400, 400, 403, 429, 401, 401]


def test_a_full_batch_lane_refuses_batch_work_and_realtime_still_has_room(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    with Registry(Settings.load(home, environ={})) as registry:
        registry.publish(make_onnx_package(tmp_path / "linear"))
        store = TokenStore(registry)
        _, bulk = store.create("bulk", {"*": ["infer"]}, priority="batch")
        _, urgent = store.create("urgent", {"*": ["infer"]}, priority="realtime")
    # Each request waits 0.5 s for a batch to fill: long enough to be "in flight".
    serve = ["--auth", "--http-frontends", "1", "--http-batch-lane", "1"]
    running = start_server(home, *serve, "--max-queue-delay", "0.5")
    url = f"http://{running.http}/v2/models/linear/infer"
    tensor = {"name": "x", "datatype": "FP32", "shape": [3, 4], "data": X.ravel().tolist()}
    body = json.dumps({"inputs": [tensor]}).encode()

    def post(token: str) -> httpx.Response:
        return httpx.post(url, content=body, headers={"Authorization": f"Bearer {token}"})

    try:
        assert post(bulk).status_code == 200  # the front end learns the class
        statuses: list[int] = []
        flight = threading.Thread(target=lambda: statuses.append(post(bulk).status_code))
        flight.start()
        time.sleep(0.2)  # the lane's one slot is taken
        reply = _raw(
            running.http,
            b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {bulk}\r\nContent-Length: 100000\r\n\r\n".encode(),
        )
        head, _, answer = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), reply[:300]
        assert "batch requests in flight" in json.loads(answer)["error"]
        assert post(urgent).status_code == 200  # realtime always has room
        flight.join(30)
        assert statuses == [200]
        assert post(bulk).status_code == 200  # the slot is free again
    finally:
        stop_server(running.proc)
