"""The fast path for inference: HTTP front ends decode inference requests and
encode their answers; the serving process authorises and runs them.

Against an in-process server on the same registry, under ``--auth``: every
answer of the fast path is the in-process server's, byte for byte apart
from Date and Server: successes (binary and JSON), the client's mistakes
(malformed bodies, wrong datatype or shape, too many elements, oversized
bodies), unknown models, and 401 / 403 / 404 / 429.  The serving process
counts the requests that reached it decoded, so each case also says whether
it took the fast path: only credentials the serving process accepted
before do; unknown credentials, missing ones and bodies the front end
cannot decode go as they came, and the serving process answers them.

The REST suite (``test_rest_server.py``) runs every HTTP behaviour through
front ends too, with the fast path on (authentication off there, so every
inference request may take it)."""

from __future__ import annotations

import gzip
import json
import math
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from sciserve.access.layer import AccessLayer
from sciserve.access.tokens import TokenStore
from sciserve.config import RateLimit, ServingConfig, Settings
from sciserve.errors import InvalidInput
from sciserve.protocol import http_frontend
from sciserve.protocol._infer_frames import (
    RelayedRequest,
    parse_response,
    request_payload,
    response_payload,
    tensors_only,
)
from sciserve.protocol.http_relay import HttpFrontends
from sciserve.protocol.rest import create_app
from sciserve.protocol.rest_codec import decode_infer_request
from sciserve.registry.registry import Registry
from sciserve.serving.service import InferenceService
from sciserve.serving.types import InferenceResponse, InferOutput

from helpers.packages import expected_linear, identity_package, make_onnx_package
from helpers.server import FrontendThread, ServerThread

#: The server's body limit; ``linear``'s own bound is lower (80 KiB: 64 rows of 4).
LIMIT = 256 * 1024
X = np.arange(12, dtype=np.float32).reshape(3, 4)
INFER = "/v2/models/linear/infer"

# -- the payloads ----------------------------------------------------------------


def _decode(body: bytes, header_length: int | None = None) -> Any:
    return decode_infer_request(
        body, header_length, model_name="m", model_version=None, max_body_bytes=1 << 20
    )


def test_a_decoded_request_travels_as_it_was_decoded() -> None:
    raw = np.array([[1, 0, 1]], np.bool_)
    header = json.dumps(
        {
            "id": "r\ud800",  # a lone surrogate: only json reads and writes it
            "parameters": {"nan": math.nan, "big": 2**70, "flag": True, "priority": "batch"},
            "inputs": [
                {"name": "f", "datatype": "FP16", "shape": [2], "data": [1.5, -2]},
                {"name": "s", "datatype": "BYTES", "shape": [1, 2], "data": ["é", ""]},
                {"name": "b", "datatype": "BOOL", "shape": [1, 3],
                 "parameters": {"binary_data_size": 3, "x": 1.5}},
                {"name": "i", "datatype": "INT64", "shape": [0, 4], "data": []},
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True, "k": "v"}}],
        }
    ).encode()  # fmt: skip
    decoded = _decode(header + raw.tobytes(), len(header))
    payload = b"".join(request_payload(decoded, 1234))
    relayed = RelayedRequest(memoryview(payload))
    assert relayed.body_size == 1234
    assert relayed.shapes == [(2,), (1, 2), (1, 3), (0, 4)]
    again = relayed.request("linear", "2")
    assert (again.model_name, again.model_version, again.id) == ("linear", "2", "r\ud800")
    assert math.isnan(again.parameters.pop("nan"))
    assert again.parameters == {"big": 2**70, "flag": True, "priority": "batch"}
    assert again.outputs == decoded.outputs
    for sent, got in zip(decoded.inputs, again.inputs, strict=True):
        assert (got.name, got.datatype, got.shape, got.parameters) == (
            sent.name, sent.datatype, sent.shape, sent.parameters,
        )  # fmt: skip
        assert got.data.dtype == sent.data.dtype
        np.testing.assert_array_equal(got.data, sent.data)


def test_output_tensors_travel_and_bytes_outputs_stay_with_the_server() -> None:
    y = np.array([[1.0, math.inf], [math.nan, -0.0]], np.float32)
    response = InferenceResponse(
        "linear", "1.0.0", None, [InferOutput.from_numpy("y", y, {"w": math.nan})],
        {"big": 2**70},
    )  # fmt: skip
    assert tensors_only(response)
    back = parse_response(b"".join(response_payload(response)))
    assert (back.model_name, back.model_version, back.id) == ("linear", "1.0.0", None)
    assert back.parameters == {"big": 2**70}
    assert math.isnan(back.outputs[0].parameters["w"])
    assert back.outputs[0].data.tobytes() == y.tobytes()
    words = InferOutput.from_numpy("w", np.array([b"\xff"], object))
    assert not tensors_only(InferenceResponse("m", "1", None, [words]))


def test_a_payload_with_bytes_past_its_tensors_is_refused() -> None:
    decoded = _decode(json.dumps({"inputs": [{"name": "x", "datatype": "INT8", "shape": [2],
                                              "data": [1, 2]}]}).encode())  # fmt: skip
    payload = b"".join(request_payload(decoded, 10)) + b"\x00"
    with pytest.raises(ValueError, match="past its tensors"):
        RelayedRequest(memoryview(payload)).request("m", None)
    short = b"".join(request_payload(decoded, 10))[:-1]
    with pytest.raises(InvalidInput):
        RelayedRequest(memoryview(short)).request("m", None)


def _scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"headers": list(headers)}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ((), (True, None)),
        (((b"content-length", b"100"), (b"inference-header-content-length", b"12")), (True, 12)),
        (((b"content-encoding", b" Identity "),), (True, None)),
        (((b"content-encoding", b"gzip"),), (False, None)),
        (((b"expect", b"100-Continue"),), (False, None)),
        (((b"content-length", b"1000001"),), (False, None)),
        (((b"inference-header-content-length", b"twelve"),), (False, None)),
        (((b"inference-header-content-length", b"-1"),), (False, None)),
        (((b"inference-header-content-length", b"9" * 19),), (False, None)),
        (((b"inference-header-content-length", b"\xb2"),), (False, None)),
        # The first of a repeated header counts, as in the REST adapter.
        (((b"inference-header-content-length", b"7"),
          (b"inference-header-content-length", b"x")), (True, 7)),
    ],
)  # fmt: skip
def test_which_heads_the_front_end_decodes(
    headers: tuple[tuple[bytes, bytes], ...], expected: tuple[bool, int | None]
) -> None:
    assert http_frontend._decodable(_scope(*headers), 1_000_000) == expected


# -- against the in-process server ---------------------------------------------------


@dataclass
class World:
    """One registry served twice under ``--auth``: in-process, and by a front end."""

    plain: str
    relayed: str
    frontends: HttpFrontends
    tokens: dict[str, str]
    token_ids: dict[str, str]
    home: Path
    #: Paths of the requests that reached the serving process decoded.
    decoded: list[str] = field(default_factory=list)


def _settings(home: Path) -> Settings:
    return Settings.load(home, environ={})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("fast")
    home = tmp / "home"
    home.mkdir()
    # No token cache: a revocation is seen at once by both servers.
    (home / "sciserve.toml").write_text("[access]\nenabled = true\ntoken_cache_ttl = 0\n")
    tokens: dict[str, str] = {}
    token_ids: dict[str, str] = {}
    with Registry(_settings(home)) as registry:
        registry.publish(make_onnx_package(tmp / "linear"))
        registry.publish(identity_package(tmp / "words", "BYTES"))
        store = TokenStore(registry)
        grants: list[tuple[str, dict[str, list[str]], dict[str, Any]]] = [
            ("fine", {"*": ["infer"]}, {}),
            ("reader", {"default": ["read"]}, {}),  # sees the model, may not run it: 403
            ("outsider", {"other": ["infer"]}, {}),  # does not see it: 404
            ("slow", {"*": ["infer"]}, {"limit": RateLimit(rate=0.001, burst=1)}),
            ("doomed", {"*": ["infer"]}, {}),
            ("hostile", {"*": ["infer"]}, {}),
        ]
        for name, scopes, extra in grants:
            record, raw = store.create(name, scopes, **extra)
            tokens[name], token_ids[name] = raw, record.token_id
    config = ServingConfig(max_request_bytes=LIMIT)
    with Registry(_settings(home)) as one, Registry(_settings(home)) as two:
        plain_access, relayed_access = AccessLayer.open(one), AccessLayer.open(two)
        plain_service = InferenceService(one, config, access=plain_access)
        relayed_service = InferenceService(two, config, access=relayed_access)
        try:
            thread = FrontendThread(relayed_service, processes=1)
            with (
                ServerThread(create_app(plain_service, manage_service=True)) as plain,
                thread as relayed,
            ):
                frontends = thread.frontends
                world = World(plain, relayed, frontends, tokens, token_ids, home)
                app = frontends.decoding_app
                assert app is not None
                original = app.infer_relayed

                async def counted(scope: Any, receive: Any, payload: memoryview) -> Any:
                    world.decoded.append(scope["path"])
                    return await original(scope, receive, payload)

                app.infer_relayed = counted  # type: ignore[method-assign]
                yield world
        finally:
            plain_access.close()
            relayed_access.close()


def _raw(address: str, request: bytes, timeout: float = 10) -> bytes:
    host, port = address.split(":")
    reply = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            sock.sendall(request)
            while chunk := sock.recv(65536):
                reply += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
    return reply


def _exchange(address: str, request: bytes) -> bytes:
    """The response without its Date and Server lines (``Connection: close``)."""
    lines = _raw(address, request).split(b"\r\n")
    return b"\r\n".join(
        line for line in lines if not line.lower().startswith((b"date:", b"server:"))
    )


def _post(body: bytes, *extra: str, path: str = INFER, token: str | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", "Connection: close", *extra]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if not any(line.lower().startswith("transfer-encoding") for line in extra):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _chunked(body: bytes, size: int = 4096) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts) + b"0\r\n\r\n"


def _json(x: np.ndarray = X, datatype: str = "FP32", **extra: Any) -> bytes:
    tensor = {"name": "x", "datatype": datatype, "shape": list(x.shape),
              "data": x.ravel().tolist()}  # fmt: skip
    return json.dumps({"inputs": [tensor], **extra}).encode()


def _binary(x: np.ndarray = X, *, binary_output: bool = True) -> tuple[bytes, str]:
    doc: dict[str, Any] = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes}}],
    }  # fmt: skip
    if binary_output:
        doc["outputs"] = [{"name": "y", "parameters": {"binary_data": True}}]
    header = json.dumps(doc).encode()
    return header + x.tobytes(), f"Inference-Header-Content-Length: {len(header)}"


def _same(world: World, request: bytes, *, decoded: bool | None) -> bytes:
    """``request`` answered by both servers: the same bytes, and through the
    fast path or not as ``decoded`` says (``None``: either); returns the answer."""
    before = len(world.decoded)
    expected = _exchange(world.plain, request)
    got = _exchange(world.relayed, request)
    assert expected.startswith(b"HTTP/1.1 "), (request[:80], expected[:200])
    assert got == expected, (request[:80], expected[:300], got[:300])
    if decoded is not None:
        assert len(world.decoded) - before == (1 if decoded else 0), request[:80]
    return got


def _learn(world: World, name: str, *, first: bool = False) -> None:
    """Make the front end learn a credential's class (a request it relays as it
    came the first time, answered by the serving process), on both servers
    alike; ``first``: this is the credential's first request."""
    _same(world, _post(_json(), token=world.tokens[name]), decoded=False if first else None)
    time.sleep(0.5)  # the class arrives after the answer


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_fast_path_answers_are_the_in_process_bytes(world: World) -> None:
    _learn(world, "fine")
    fine = world.tokens["fine"]
    binary, length = _binary()
    binary_in_json_out, length_2 = _binary(binary_output=False)
    padded = _json() + b" " * 90_000  # decodes; over linear's own bound (80 KiB)
    nan = _json().replace(b"0.0", b"NaN", 1)  # json, not orjson, reads it
    cases: list[tuple[bytes, int, bool]] = [
        # (request, status, through the fast path)
        (_post(_json(id="r1"), token=fine), 200, True),
        (_post(binary, length, "Content-Type: application/octet-stream", token=fine), 200, True),
        (_post(binary_in_json_out, length_2, token=fine), 200, True),
        (_post(_json(binary_data_output=True), token=fine), 200, True),
        (_post(_json(parameters={"binary_data_output": True}), token=fine), 200, True),
        (_post(nan, token=fine), 200, True),
        (_post(_json(X[:1]), path="/v2/models/linear/versions/1.0.0/infer", token=fine), 200,
         True),
        (_post(b"", "Transfer-Encoding: chunked", token=fine) + _chunked(_json()), 200, True),
        # The client's mistakes the front end cannot decode: relayed, the
        # serving process words them.
        (_post(b'{"inputs": [', token=fine), 400, False),
        (_post(b"[1, 2]", token=fine), 400, False),
        (_post(_json(datatype="INT32").replace(b".0", b""), token=fine), 400, True),
        (_post(_json(np.zeros((2, 5), np.float32)), token=fine), 400, True),
        (_post(_json(outputs=[{"name": "nope"}]), token=fine), 400, True),
        (_post(_json(parameters={"priority": 3.5}), token=fine), 400, True),
        (_post(binary[:-4], length, token=fine), 400, False),
        (_post(_json(), "Inference-Header-Content-Length: twelve", token=fine), 400, False),
        (_post(_json(), "Content-Encoding: br", token=fine), 400, False),
        # Decodable, but over what the model takes: the serving process says so.
        (_post(_json(np.zeros((65, 4), np.float32)), token=fine), 400, True),
        (_post(padded, token=fine), 413, True),
        (_post(b"", "Transfer-Encoding: chunked", token=fine) + _chunked(padded), 413, True),
        # Over the server's own limit: refused before the body, as in-process.
        (_post(b" " * (LIMIT + 1), token=fine), 413, False),
        (_post(_json(), path="/v2/models/nope/infer", token=fine), 404, True),
        (_post(_json(), path="/v2/models/linear/versions/9.9.9/infer", token=fine), 404, True),
        (_post(gzip.compress(_json()), "Content-Encoding: gzip", token=fine), 200, False),
        # No credential, or one the serving process never accepted: relayed.
        (_post(_json()), 401, False),
        (_post(_json(), token=fine[:-4] + "XXXX"), 401, False),
        (_post(_json(), "Authorization: Basic Zm9vOmJhcg=="), 401, False),
    ]  # fmt: skip
    for request, status, decoded in cases:
        answer = _same(world, request, decoded=decoded)
        assert _status(answer) == status, answer[:300]
    assert world.frontends.pids and all(
        Path(f"/proc/{pid}").exists() for pid in world.frontends.pids
    )


def test_403_404_and_429_of_accepted_credentials_are_the_in_process_bytes(world: World) -> None:
    for name, status in (("reader", 403), ("outsider", 404)):
        _learn(world, name, first=True)  # a good credential; what it may do is another matter
        answer = _same(world, _post(_json(), token=world.tokens[name]), decoded=True)
        assert _status(answer) == status, answer[:300]
    _learn(world, "slow", first=True)  # its one request of the next 1000 s
    answer = _same(world, _post(_json(), token=world.tokens["slow"]), decoded=True)
    assert _status(answer) == 429 and b"retry-after: 1000" in answer.lower(), answer[:300]


def test_a_credential_revoked_after_it_was_accepted_is_refused_by_the_serving_process(
    world: World,
) -> None:
    _learn(world, "doomed", first=True)
    doomed = world.tokens["doomed"]
    with Registry(_settings(world.home)) as registry:
        TokenStore(registry).revoke(world.token_ids["doomed"])
    # The front end still knows its class: decoded, and refused by the server.
    answer = _same(world, _post(_json(), token=doomed), decoded=True)
    assert _status(answer) == 401, answer[:300]
    time.sleep(0.2)
    # Refused once: the front end forgets it, and relays it as it comes.
    assert _status(_same(world, _post(_json(), token=doomed), decoded=False)) == 401


def test_rows_in_are_rows_out(world: World) -> None:
    _learn(world, "fine")
    headers = {"Authorization": f"Bearer {world.tokens['fine']}"}
    url = f"http://{world.relayed}{INFER}"
    before = len(world.decoded)
    with httpx.Client(timeout=30) as client:
        for rows in (1, 2, 17, 64):
            x = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
            reply = client.post(url, content=_json(x), headers=headers)
            assert reply.status_code == 200, reply.text
            [y] = reply.json()["outputs"]
            assert y["shape"] == [rows, 3]
            got = np.array(y["data"], np.float32).reshape(y["shape"])
            np.testing.assert_allclose(got, expected_linear(x), rtol=1e-5)
            body, length = _binary(x)
            name, value = length.split(": ")
            reply = client.post(url, content=body, headers={**headers, name: value})
            assert reply.status_code == 200, reply.text
            start = int(reply.headers["inference-header-content-length"])
            [y] = json.loads(reply.content[:start])["outputs"]
            assert y["shape"] == [rows, 3]
            got = np.frombuffer(reply.content[start:], np.float32).reshape(rows, 3)
            np.testing.assert_allclose(got, expected_linear(x), rtol=1e-5)
    assert len(world.decoded) - before == 8


def test_bytes_tensors_are_the_in_process_bytes(world: World) -> None:
    _learn(world, "fine")
    fine = world.tokens["fine"]
    words = ["a", "é", "", "x" * 100, "b", "c"]
    tensor = {"name": "INPUT0", "datatype": "BYTES", "shape": [2, 3], "data": words}
    path = "/v2/models/identity_bytes/infer"
    for outputs in ([], [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]):
        body = json.dumps({"inputs": [tensor], "outputs": outputs}).encode()
        answer = _same(world, _post(body, path=path, token=fine), decoded=True)
        assert _status(answer) == 200, answer[:300]


@pytest.mark.parametrize("seed", range(3))
def test_hostile_bodies_of_an_accepted_credential_get_the_in_process_answer(
    world: World, seed: int
) -> None:
    _learn(world, "hostile")
    token = world.tokens["hostile"]
    rng = np.random.default_rng(seed)
    good = _json()
    bodies = [rng.bytes(int(rng.integers(0, 300))) for _ in range(5)]
    for _ in range(10):  # a well-formed body with a few bytes changed
        mutated = bytearray(good)
        for index in rng.integers(0, len(mutated), size=3):
            mutated[index] = int(rng.integers(0, 256))
        bodies.append(bytes(mutated))
    bodies += [good[:cut] for cut in rng.integers(1, len(good), size=5)]
    for body in bodies:
        expected = _exchange(world.plain, _post(body, token=token))
        got = _exchange(world.relayed, _post(body, token=token))
        assert got == expected, (body, expected[:300], got[:300])
        assert _status(got) in (200, 400), got[:300]
    assert all(Path(f"/proc/{pid}").exists() for pid in world.frontends.pids)


# -- the switch -----------------------------------------------------------------------


def test_with_the_fast_path_off_every_request_is_relayed_as_it_came(tmp_path: Path) -> None:
    with Registry(Settings.load(tmp_path / "home", environ={})) as registry:
        registry.publish(make_onnx_package(tmp_path / "linear"))
        service = InferenceService(registry, ServingConfig())
        thread = FrontendThread(service, processes=1, fast_path=False)
        with thread as address:
            assert thread.frontends.decoding_app is None
            [pid] = thread.frontends.pids
            assert b"--decode-inference" not in Path(f"/proc/{pid}/cmdline").read_bytes()
            reply = httpx.post(f"http://{address}{INFER}", content=_json(), timeout=30)
            assert reply.status_code == 200
            y = np.array(reply.json()["outputs"][0]["data"], np.float32).reshape(3, 3)
            np.testing.assert_allclose(y, expected_linear(X), rtol=1e-5)


def test_the_front_ends_are_told_to_decode_only_with_the_fast_path_on(tmp_path: Path) -> None:
    with Registry(Settings.load(tmp_path / "home", environ={})) as registry:
        service = InferenceService(registry, ServingConfig())
        app = create_app(service)
        argv = HttpFrontends(app, service, "127.0.0.1", 0)._argv(tmp_path / "s", 1)
        assert "--decode-inference" in argv and "--open-access" in argv  # auth off here
        off = HttpFrontends(app, service, "127.0.0.1", 0, fast_path=False)
        assert off.decoding_app is None
        assert "--decode-inference" not in off._argv(tmp_path / "s", 1)
    assert ServingConfig().http_fast_path is False
