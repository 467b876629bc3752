"""Start and stop a real ``sciserve serve`` process for tests."""

from __future__ import annotations

import os
import queue
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Running:
    home: Path
    http: str
    grpc: str
    metrics: str
    proc: subprocess.Popen[str]


def start_server(
    home: Path,
    *extra: str,
    stderr_file: Path | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Running:
    """``sciserve serve`` on free ports of 127.0.0.1, returned once ready.

    ``stderr_file`` keeps the server's log (its stderr) in a file a test can
    read; ``ssl_context`` is how to trust a server started with TLS.
    """
    log_to: Any = subprocess.PIPE if stderr_file is None else stderr_file.open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sciserve",
            "--home",
            str(home),
            "serve",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            "--poll-interval",
            "0.3",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=log_to,
        text=True,
        start_new_session=True,
    )
    if stderr_file is not None:
        log_to.close()  # the server has its own copy
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"server exited: {err}") from None
            continue
        match = re.search(r"http=(\S+) grpc=(\S+) metrics=(\S+)", line)
        if match:
            running = Running(home, *match.groups(), proc=proc)
            try:
                _wait_ready(running, ssl_context)
            except BaseException:
                stop_server(proc)
                raise
            return running
    stop_server(proc)
    raise RuntimeError("server did not start")


def _wait_ready(running: Running, context: ssl.SSLContext | None = None) -> None:
    scheme = "http" if context is None else "https"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            url = f"{scheme}://{running.http}/v2/health/ready"
            with urllib.request.urlopen(url, context=context) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server never became ready")


def stop_server(proc: subprocess.Popen[Any], timeout: float = 30) -> int:
    """SIGTERM the server's own process group, SIGKILL it after ``timeout``;
    returns the exit code."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return proc.returncode


@contextmanager
def serving(
    home: Path,
    *extra: str,
    stderr_file: Path | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Iterator[Running]:
    """:func:`start_server` for the block, :func:`stop_server` after it."""
    running = start_server(home, *extra, stderr_file=stderr_file, ssl_context=ssl_context)
    try:
        yield running
    finally:
        stop_server(running.proc)


def run_cli(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``sciserve --home HOME ARGS…`` in a subprocess, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "sciserve", "--home", str(home), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


class ServerThread:
    """uvicorn serving an ASGI app on a free port of 127.0.0.1 from a thread,
    with the HTTP protocol class of sciserve's own listener (one write per
    response, bounded request heads), so tests meet what clients meet.

    ``with ServerThread(app) as address:`` gives ``"127.0.0.1:PORT"``.
    """

    def __init__(self, app: Any) -> None:
        import uvicorn

        from sciserve.protocol._http_protocol import HttpProtocol

        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            http=HttpProtocol,
            log_level="warning",
            ws="none",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


class FrontendThread:
    """An :class:`InferenceService` served over HTTP by ``processes`` real
    front-end processes (``serve --http-frontends``), the service and the
    relay on an event loop of their own in a background thread.

    ``with FrontendThread(service) as address:`` gives ``"127.0.0.1:PORT"``;
    :attr:`frontends` is the :class:`~sciserve.protocol.http_relay.HttpFrontends`.
    """

    def __init__(self, service: Any, processes: int = 2, app: Any = None, **options: Any) -> None:
        import asyncio

        self.service = service
        self.app = app  # default: the service's own application
        self.processes = processes
        self.options = options
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.frontends: Any = None

    def run(self, coro: Any, timeout: float = 60) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> int:
        from sciserve.protocol.http_relay import HttpFrontends
        from sciserve.protocol.rest import create_app

        await self.service.start()
        self.frontends = HttpFrontends(
            self.app if self.app is not None else create_app(self.service),
            self.service,
            "127.0.0.1",
            0,
            processes=self.processes,
            **self.options,
        )
        port: int = await self.frontends.start()
        return port

    async def _stop(self) -> None:
        if self.frontends is not None:
            await self.frontends.stop(grace=5)
        await self.service.stop()

    def __enter__(self) -> str:
        self.thread.start()
        return f"127.0.0.1:{self.run(self._start())}"

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
