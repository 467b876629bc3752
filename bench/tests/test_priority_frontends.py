"""priority.py and the HTTP front ends: --http-frontends passed to serve when it has
the option (n/a when not), and clients that do not reuse a connection the server
closed after refusing a request."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from priority import Plan, frontend_args, http_request, run_client, serve_command
from servebench.procs import run_command
from servebench.servers import NO_HTTP_FRONTENDS

_WITH = "  --grpc-frontends INTEGER\n  --http-frontends INTEGER  HTTP front ends\n"
_WITHOUT = "  --grpc-frontends INTEGER  gRPC front ends\n"


def test_nothing_is_passed_without_the_option() -> None:
    assert frontend_args(None, _WITH) == []
    assert frontend_args(None, _WITHOUT) == []


def test_the_count_is_passed_when_serve_has_the_option() -> None:
    assert frontend_args(2, _WITH) == ["--http-frontends", "2"]
    # 0 is said too: no front ends, whatever serve's default.
    assert frontend_args(0, _WITH) == ["--http-frontends", "0"]


def test_no_front_end_works_with_a_sciserve_that_has_none() -> None:
    assert frontend_args(0, _WITHOUT) == []


def test_front_ends_on_a_sciserve_without_them_are_not_available() -> None:
    with pytest.raises(LookupError, match=NO_HTTP_FRONTENDS):
        frontend_args(1, _WITHOUT)


def test_this_sciserve_answers_as_its_help_says() -> None:
    help_text = run_command([*serve_command(), "serve", "--help"], timeout=120)
    assert "--http-port" in help_text
    if "--http-frontends" in help_text:
        assert frontend_args(1, help_text) == ["--http-frontends", "1"]
    else:
        with pytest.raises(LookupError):
            frontend_args(1, help_text)


def test_a_negative_count_is_refused_before_anything_starts(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parent.parent / "priority.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--http-frontends", "-1", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert proc.returncode == 2
    assert "use 0 (no front end) or more" in proc.stdout
    assert not any(tmp_path.iterdir())


class _RefusingServer:
    """HTTP/1.1 on loopback: every other request is refused with 503 and
    ``Connection: close`` (as a front end refusing before the body), the others
    answered 200 keep-alive."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self.answered = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as stream:
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = stream.readline()
                    if not line:
                        return
                    head += line
                length = re.search(rb"content-length:\s*(\d+)", head, re.IGNORECASE)
                stream.read(int(length.group(1)) if length else 0)
                with self._lock:
                    self.answered += 1
                    refuse = self.answered % 2 == 0
                if refuse:
                    conn.sendall(
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n"
                        b"connection: close\r\n\r\nbusy"
                    )
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    def close(self) -> None:
        self._sock.close()


@pytest.mark.parametrize("rate", [0.0, 40.0], ids=["closed-loop", "open-loop"])
def test_a_connection_closed_after_a_refusal_is_not_reused(rate: float) -> None:
    server = _RefusingServer()
    try:
        start = time.monotonic() + 0.2
        plan = Plan(
            server.address,
            http_request(server.address, "token", 1, seed=0),
            start,
            start + 1.0,
            rate=rate,
            connections=2,
        )
        outcome = run_client(plan)
    finally:
        server.close()
    statuses = set(outcome.status)
    # Refusals are answers, and the requests after them are answered too:
    # no request fails on a connection the server had closed.
    assert statuses == {200, 503}
    assert outcome.status.count(200) >= 5
    assert outcome.unsent == 0
