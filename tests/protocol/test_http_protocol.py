"""The HTTP/1.1 protocol of sciserve's listeners: a bounded request head.

Against real ``sciserve serve`` processes, HTTP parsed in the serving
process and in a front end: a request head over ``MAX_HEAD_BYTES`` is
answered 431 and its connection closed (the parser would otherwise keep all
of it in memory), one within the limit is served, and the server goes on
serving.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient

from sciserve.protocol._http_protocol import MAX_HEAD_BYTES

from helpers.packages import expected_linear, home_with_linear
from helpers.server import Running, serving


@pytest.fixture(scope="module", params=["in-process", "front-end"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("head")
    home = home_with_linear(root)
    extra = ("--http-frontends", "1") if request.param == "front-end" else ()
    with serving(home, *extra, stderr_file=root / "server.log") as running:
        yield running


def _exchange(address: str, data: bytes) -> bytes:
    """Send ``data`` on a new connection; everything the server sends until it
    closes the connection (the requests here ask it to)."""
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def _get(extra_header: bytes = b"") -> bytes:
    return (
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + extra_header + b"Connection: close\r\n\r\n"
    )


def _padding(total: int) -> bytes:
    """A header line that makes ``_get``'s request head ``total`` bytes long."""
    fixed = len(_get(b"X-Pad: \r\n"))
    return b"X-Pad: " + b"a" * (total - fixed) + b"\r\n"


def _serves(server: Running) -> None:
    x = np.ones((3, 4), np.float32)
    with httpclient.InferenceServerClient(server.http) as client:
        given = httpclient.InferInput("x", list(x.shape), "FP32")
        given.set_data_from_numpy(x)
        result = client.infer("linear", [given]).as_numpy("y")
    np.testing.assert_allclose(result, expected_linear(x), rtol=1e-6)


def test_a_head_at_the_limit_is_served(server: Running) -> None:
    request = _get(_padding(MAX_HEAD_BYTES))
    assert len(request) == MAX_HEAD_BYTES
    reply = _exchange(server.http, request)
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(_get(_padding(MAX_HEAD_BYTES + 1)), id="one-byte-over"),
        pytest.param(_get(b"X-Many: 1\r\n" * 7000), id="many-headers"),
        pytest.param(b"GET /" + b"a" * MAX_HEAD_BYTES + b" HTTP/1.1\r\n\r\n", id="long-path"),
        # A head that never ends: refused once the limit is passed, not kept.
        pytest.param(b"GET / HTTP/1.1\r\nX-Endless: " + b"a" * (MAX_HEAD_BYTES + 10), id="endless"),
    ],
)
def test_a_head_over_the_limit_is_431_and_the_server_goes_on(
    server: Running, request_bytes: bytes
) -> None:
    reply = _exchange(server.http, request_bytes)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert b"connection: close" in head.lower()
    assert str(MAX_HEAD_BYTES) in json.loads(body)["error"]
    _serves(server)


def test_each_request_of_a_connection_has_its_own_limit(server: Running) -> None:
    # Keep-alive: three requests each just under the limit, one connection;
    # together they are far over it.
    one = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"
    pad = _padding(MAX_HEAD_BYTES - 100)
    keep = one + pad + b"\r\n"
    reply = _exchange(server.http, keep + keep + _get(pad))
    assert reply.count(b"HTTP/1.1 200 ") == 3, reply[:300]
