"""Hostile inputs against a real ``sciserve serve --auth`` process.

* The server authenticates the caller, checks the scope and resolves the
  model *before* it reads an inference body: a read-only token, a missing
  model or a model the caller may not see is answered without waiting for
  (let alone inflating or parsing) the body.
* A body is bounded by what the model's inputs can hold (their shapes, with
  ``max_batch_size`` rows): a small gzip body that inflates to megabytes is
  refused once it inflates past that bound, and more elements than the
  model takes are refused before any tensor is built.
* An upload to the registry API needs the publish scope somewhere before its
  body is read, and ``[limits] max_upload_bytes`` bounds it.
* No error body shows a path of the server.
* The acceptance test: while gzip bombs, huge JSON and an alias-bomb upload
  are sent, the server's peak RSS stays within 100 MB of what it was before
  and ``/v2/health/live`` keeps answering within 50 ms.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from sciserve.access.tokens import TokenStore
from sciserve.config import Limits, Settings
from sciserve.package.archive import pack
from sciserve.registry.registry import Registry

from helpers.packages import make_onnx_package
from helpers.server import Running, start_server, stop_server

pytestmark = pytest.mark.slow

MODEL = "alpha.m"
#: What the model takes in one request: shape [-1, 4] with max_batch_size 64.
MAX_ELEMENTS = 64 * 4
UPLOAD_LIMIT = 8 * 2**20
REGISTRY = "/v2/sciserve/registry"
#: How long a refusal that needs no body may take (s); the body never comes.
PROMPT = 10.0
#: The acceptance bounds.
RSS_GROWTH = 100 * 2**20
LIVE_LATENCY = 0.050


@dataclass
class World:
    server: Running
    home: Path
    work: Path
    tokens: dict[str, str]

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.server.http.rsplit(":", 1)
        return host, int(port)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("hostile")
    home = work / "home"
    home.mkdir()
    (home / "sciserve.toml").write_text(
        f"[limits]\nmax_upload_bytes = {UPLOAD_LIMIT}\n"
        "[access]\ndefault_rate = { rate = 1000.0, burst = 1000 }\n"
    )
    with Registry(Settings.load(home, environ={})) as reg:
        reg.publish(make_onnx_package(work / "m", name="m", namespace="alpha"))
        reg.publish(make_onnx_package(work / "b", name="b", namespace="beta"))
        store = TokenStore(reg)
        grants = {
            "reader": {"alpha": {"read"}},
            "inferrer": {"alpha": {"infer"}},
            "publisher": {"alpha": {"publish"}},
            "outsider": {"beta": {"read"}},
        }
        tokens = {name: store.create(name, scopes)[1] for name, scopes in grants.items()}
    server = start_server(home, "--auth")
    try:
        yield World(server, home, work, tokens)
    finally:
        stop_server(server.proc)


# -- raw HTTP, so a body can be announced and never sent ---------------------------


def _status_without_body(world: World, path: str, headers: dict[str, str]) -> int:
    """Send only the head of a POST whose body never comes; the answer's status."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {world.server.http}"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    with socket.create_connection(world.host_port, timeout=PROMPT) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = sock.recv(4096).decode("latin-1")
    match = re.match(r"HTTP/1\.1 (\d{3}) ", head)
    assert match, head
    return int(match.group(1))


def _bearer(world: World, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.tokens[who]}"}


def _infer_json(rows: int, columns: int = 4) -> bytes:
    head = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[%d,%d],"data":[' % (rows, columns)
    return head + b"0," * (rows * columns - 1) + b"0]}]}"


def _gzip_bomb(rows: int) -> bytes:
    """A gzip body that inflates to an inference request of ``rows`` by 4 zeros."""
    out = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [
        out.compress(b'{"inputs":[{"name":"x","datatype":"FP32","shape":[%d,4],"data":[' % rows)
    ]
    chunk = b"0," * 2**20
    left = rows * 4 - 1
    while left > 0:
        n = min(left, 2**20)
        parts.append(out.compress(chunk[: 2 * n]))
        left -= n
    parts.append(out.compress(b"0]}]}"))
    parts.append(out.flush())
    return b"".join(parts)


# -- 4a: inference is admitted before its body is read ---------------------------


@pytest.mark.parametrize(
    ("who", "model", "status"),
    [
        ("reader", MODEL, 403),  # may see the model, may not run it
        ("inferrer", "alpha.ghost", 404),  # no such model
        ("outsider", MODEL, 404),  # may not see the model
        ("outsider", "ghost", 404),
    ],
)
def test_refused_inference_never_waits_for_its_body(
    world: World, who: str, model: str, status: int
) -> None:
    headers = {
        **_bearer(world, who),
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Content-Length": str(50 * 2**20),
    }
    assert _status_without_body(world, f"/v2/models/{model}/infer", headers) == status


def test_a_gzip_body_inflating_past_what_the_model_takes_is_refused(world: World) -> None:
    body = _gzip_bomb(rows=1_250_000)  # 10 MB of JSON from ~10 KB
    assert len(body) < 64 * 1024
    response = httpx.post(
        f"http://{world.server.http}/v2/models/{MODEL}/infer",
        content=body,
        headers={**_bearer(world, "inferrer"), "Content-Encoding": "gzip"},
        timeout=30,
    )
    assert response.status_code == 413, response.text
    assert response.json()["type"] == "PayloadTooLarge"


def test_more_elements_than_the_model_takes_are_refused_before_decoding(world: World) -> None:
    response = httpx.post(
        f"http://{world.server.http}/v2/models/{MODEL}/infer",
        content=_infer_json(rows=65),
        headers=_bearer(world, "inferrer"),
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert f"at most {MAX_ELEMENTS}" in response.json()["error"]
    # Within the bound the same model answers.
    response = httpx.post(
        f"http://{world.server.http}/v2/models/{MODEL}/infer",
        content=_infer_json(rows=64),
        headers=_bearer(world, "inferrer"),
        timeout=30,
    )
    assert response.status_code == 200, response.text


def test_grpc_refuses_more_elements_than_the_model_takes(world: World) -> None:
    x = np.zeros((65, 4), np.float32)
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    with grpc.insecure_channel(world.server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        metadata = (("authorization", f"Bearer {world.tokens['inferrer']}"),)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, metadata=metadata, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"at most {MAX_ELEMENTS}" in (caught.value.details() or "")
        # A read-only caller is refused as before, whatever the tensors hold.
        metadata = (("authorization", f"Bearer {world.tokens['reader']}"),)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, metadata=metadata, timeout=30)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


# -- 4b: uploads ------------------------------------------------------------------


@pytest.mark.parametrize("who", ["reader", "outsider"])
def test_an_upload_from_a_caller_who_may_publish_nowhere_is_refused_before_its_body(
    world: World, who: str
) -> None:
    headers = {**_bearer(world, who), "Content-Length": str(UPLOAD_LIMIT // 2)}
    assert _status_without_body(world, f"{REGISTRY}/models", headers) == 403


def test_an_upload_over_the_configured_limit_is_refused_before_its_body(world: World) -> None:
    headers = {**_bearer(world, "publisher"), "Content-Length": str(UPLOAD_LIMIT + 1)}
    assert _status_without_body(world, f"{REGISTRY}/models", headers) == 413


def test_the_default_upload_limit_is_two_gib() -> None:
    assert Limits().max_upload_bytes == 2 * 2**30


# -- 4c: no server paths in error bodies ------------------------------------------


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _package_files(world: World, name: str, **extra: object) -> dict[str, bytes]:
    root = make_onnx_package(world.work / f"up-{name}", name=name, namespace="alpha", extra=extra)
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def _broken_uploads(world: World) -> dict[str, bytes]:
    good = _package_files(world, "good")
    wrong_sha = dict(good)
    wrong_sha["model.onnx"] = good["model.onnx"][:-1] + b"\x00"
    not_onnx = _package_files(world, "notonnx")
    manifest = not_onnx["sciserve.yaml"].decode()
    junk = b"this is not an onnx model"
    old_sha = hashlib.sha256(not_onnx["model.onnx"]).hexdigest()
    manifest = manifest.replace(f"size: {len(not_onnx['model.onnx'])}", f"size: {len(junk)}")
    manifest = manifest.replace(old_sha, hashlib.sha256(junk).hexdigest())
    not_onnx = {"sciserve.yaml": manifest.encode(), "model.onnx": junk}
    aliased = dict(good)
    aliased["sciserve.yaml"] = good["sciserve.yaml"] + b"runtime_options: {a: &a 1, b: *a}\n"
    packed = pack(world.work / "up-good", world.work / "good.tar.gz").read_bytes()
    return {
        "truncated": packed[: len(packed) // 2],
        "not a tar": b"\x1f\x8b" + b"garbage" * 100,
        "plain garbage": b"garbage" * 100,
        "wrong sha256": _tar_gz(wrong_sha),
        "not onnx": _tar_gz(not_onnx),
        "alias": _tar_gz(aliased),
        "unlisted member": _tar_gz({**good, "extra.txt": b"x"}),
        "missing file": _tar_gz({"sciserve.yaml": good["sciserve.yaml"]}),
        "link": _link_archive(good),
    }


def _link_archive(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("evil")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    return buffer.getvalue()


#: An absolute path: "/" and a name, at the start or after a space, quote or bracket.
_ABSOLUTE = re.compile(r"(?:^|[\s'\"(\[=])/[\w.-]+/")


def test_error_bodies_show_no_server_paths(world: World) -> None:
    seen: dict[str, str] = {}
    with httpx.Client(base_url=f"http://{world.server.http}", timeout=60) as client:
        for what, body in _broken_uploads(world).items():
            response = client.post(
                f"{REGISTRY}/models", content=body, headers=_bearer(world, "publisher")
            )
            assert 400 <= response.status_code < 500, (what, response.text)
            message = response.json()["error"]
            seen[what] = message
    leaks = {
        what: message
        for what, message in seen.items()
        if str(world.home) in message or "/tmp" in message or _ABSOLUTE.search(message)
    }
    assert leaks == {}, leaks
    # The messages still say what is wrong (not just "bad request").
    assert "truncated" in seen["truncated"]
    assert "sha256" in seen["wrong sha256"]
    assert "alias" in seen["alias"]
    assert "extra.txt" in seen["unlisted member"]


# -- the acceptance test: bounded memory, live server ------------------------------


def _rss(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1)) * 1024


#: Asks ``/v2/health/live`` over and over until its stdin closes, then prints
#: how long each answer took.  A process of its own, so that building and
#: sending the hostile requests in the test's process (with its GIL) is not
#: counted as the server's latency.
PROBER = """
import json, sys, threading, time
import httpx

stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
latencies, failures = [], []
with httpx.Client(base_url="http://" + sys.argv[1], timeout=10) as client:
    while not stop.is_set():
        started = time.perf_counter()
        try:
            status = client.get("/v2/health/live").status_code
        except httpx.HTTPError as exc:
            failures.append(repr(exc))
            continue
        latencies.append(time.perf_counter() - started)
        if len(latencies) == 1:
            print("answered", flush=True)
        if status != 200:
            failures.append("status %d" % status)
        stop.wait(0.005)
print(json.dumps({"latencies": latencies, "failures": failures}), flush=True)
"""


def _send(world: World, path: str, body: bytes, headers: dict[str, str]) -> int | None:
    """POST over a raw socket; the status, or ``None`` when the server closed
    the connection before answering (it may refuse without reading the body)."""
    head = [f"POST {path} HTTP/1.1", f"Host: {world.server.http}", "Connection: close"]
    head += [f"{key}: {value}" for key, value in headers.items()]
    head.append(f"Content-Length: {len(body)}")
    with socket.create_connection(world.host_port, timeout=120) as sock:
        try:
            # Head and body apart: joining them would copy the body while
            # holding the GIL, which the prober thread would count as latency.
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
            sock.sendall(body)
            answer = sock.recv(4096).decode("latin-1")
        except (BrokenPipeError, ConnectionResetError):
            return None
    match = re.match(r"HTTP/1\.1 (\d{3}) ", answer)
    return int(match.group(1)) if match else None


def _alias_bomb_upload(world: World) -> bytes:
    files = _package_files(world, "bomb")
    lines = ["runtime_options:", "  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    files["sciserve.yaml"] += ("\n".join(lines) + "\n").encode()
    return _tar_gz(files)


def test_hostile_inputs_leave_memory_bounded_and_the_server_live(world: World) -> None:
    pid = world.server.proc.pid
    # Warm up: the model has run once.
    url = f"http://{world.server.http}/v2/models/{MODEL}/infer"
    ok = httpx.post(url, content=_infer_json(rows=2), headers=_bearer(world, "inferrer"))
    assert ok.status_code == 200, ok.text
    bomb = _gzip_bomb(rows=8_000_000)  # 61 KB that inflate to 64 MB of JSON
    assert len(bomb) < 100 * 1024
    huge = _infer_json(rows=5_000_000)  # 40 MB of JSON, under the server's 64 MiB limit
    upload = _alias_bomb_upload(world)
    assert len(upload) < 64 * 1024
    gzip_json = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    infer, ghost = f"/v2/models/{MODEL}/infer", "/v2/models/alpha.ghost/infer"
    # (path, body, headers, the answers it may get)
    hostile: list[tuple[str, bytes, dict[str, str], set[int | None]]] = [
        (infer, bomb, {**_bearer(world, "reader"), **gzip_json}, {403}),
        (ghost, bomb, {**_bearer(world, "inferrer"), **gzip_json}, {404}),
        (infer, bomb, {**_bearer(world, "inferrer"), **gzip_json}, {413}),
        # Refused on its Content-Length: the server may close before reading it.
        (infer, huge, _bearer(world, "inferrer"), {413, None}),
        (f"{REGISTRY}/models", upload, _bearer(world, "publisher"), {400}),
    ]
    # From here on VmHWM is the peak of what follows (Linux: "5" resets it).
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    baseline = _rss(pid, "VmRSS")
    prober = subprocess.Popen(
        [sys.executable, "-c", PROBER, world.server.http],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert prober.stdin is not None and prober.stdout is not None
    try:
        assert prober.stdout.readline().strip() == "answered"
        answers = [
            (path, _send(world, path, body, headers), allowed)
            for _ in range(3)
            for path, body, headers, allowed in hostile
        ]
    finally:
        prober.stdin.close()
        probed = json.loads(prober.stdout.read().strip().splitlines()[-1])
        prober.wait(timeout=30)
        prober.stdout.close()
    peak = _rss(pid, "VmHWM")
    assert peak - baseline < RSS_GROWTH, f"peak RSS grew by {(peak - baseline) / 2**20:.0f} MB"
    assert probed["failures"] == []
    assert len(probed["latencies"]) >= 2  # some while the hostile requests were sent
    slowest = max(probed["latencies"])
    assert slowest < LIVE_LATENCY, f"/v2/health/live took {slowest * 1000:.1f} ms"
    unexpected = [(path, status) for path, status, allowed in answers if status not in allowed]
    assert unexpected == []
