"""One process serving HTTP (OIP REST), gRPC and Prometheus metrics.

All three listen on ``ServingConfig.host`` (loopback by default) and share
one event loop and one :class:`InferenceService`; with ``http_frontends``
or ``grpc_frontends``, processes of their own accept and parse HTTP or gRPC
and relay each request to this one (:mod:`sciserve.protocol.http_relay`,
:mod:`sciserve.protocol.grpc_relay`).  SIGTERM and SIGINT stop
accepting new connections, let requests in flight finish, drain the
batchers and unload the models.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import uvicorn

if TYPE_CHECKING:
    import grpc

from .config import ServingConfig, Settings
from .errors import ConfigError
from .protocol._http_protocol import HttpProtocol
from .registry.registry import Registry
from .serving.service import InferenceService

__all__ = ["Addresses", "Server"]

log = logging.getLogger("sciserve.serving")


@dataclass(frozen=True)
class Addresses:
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    def banner(self) -> str:
        return (
            f"sciserve serving http={self.host}:{self.http_port} "
            f"grpc={self.host}:{self.grpc_port} metrics={self.host}:{self.metrics_port}"
        )


class _Uvicorn(uvicorn.Server):
    # The Server owns signal handling for all three listeners.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _tls_pair(cfg: ServingConfig) -> tuple[bytes, bytes] | None:
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    try:
        return cfg.tls_cert.read_bytes(), cfg.tls_key.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS certificate or key: {exc}") from exc


def _cannot_listen(host: str, port: int, option: str, exc: OSError) -> ConfigError:
    # gRPC says only that binding failed, at length; the OS says why.
    reason = exc.strerror or "the address is in use or cannot be bound"
    return ConfigError(
        f"cannot listen on {host}:{port}: {reason}; stop whatever holds it or pick "
        f"another {option} (0 picks a free port)"
    )


def _bind(host: str, port: int, option: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle off (TCP_NODELAY) only on
    # sockets that say they are TCP, and accepted sockets inherit it.  With
    # Nagle on, every small response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise _cannot_listen(host, port, option, exc) from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _check_free(host: str, port: int, option: str) -> None:
    """Fail now, with the usual error, if front ends could not bind ``port`` later."""
    if port:
        _bind(host, port, option).close()


class _Listener(Protocol):
    """A protocol's server: :meth:`start` returns the port it listens on."""

    async def start(self) -> int: ...
    async def stop(self, grace: float) -> None: ...


class _InProcess:
    """gRPC on this process's event loop."""

    def __init__(self, server: grpc.aio.Server, port: int) -> None:
        self._server = server
        self._port = port

    async def start(self) -> int:
        await self._server.start()
        return self._port

    async def stop(self, grace: float) -> None:
        await self._server.stop(grace)


class _InProcessHttp:
    """An ASGI application served by uvicorn on this process's event loop."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket) -> None:
        self._server = _Uvicorn(config)
        self._sock = sock
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        self._task = asyncio.get_running_loop().create_task(
            self._server.serve(sockets=[self._sock])
        )
        while not self._server.started:
            if self._task.done():
                self._task.result()  # its error, if it failed
                raise OSError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        port: int = self._sock.getsockname()[1]
        return port

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def stop(self, grace: float) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        self._sock.close()


def _http_config(app: Any, tls: dict[str, Any]) -> uvicorn.Config:
    # No access log: it would record paths and clients, and it costs time on
    # the hot path; requests are counted in the metrics.
    return uvicorn.Config(
        app,
        # httptools, each response in one write and request heads bounded (431).
        http=HttpProtocol,
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=30,
        **tls,
    )


class Server:
    """Serve a registry until stopped."""

    def __init__(self, settings: Settings, config: ServingConfig | None = None) -> None:
        self.settings = settings
        self.config = config or ServingConfig()
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def serve(self, on_ready: Callable[[Addresses], None] | None = None) -> None:
        from .access.bind import check_bind_safety
        from .protocol.grpc_relay import GrpcFrontends
        from .protocol.grpc_server import create_grpc_server
        from .protocol.http_relay import HttpFrontends, Lanes
        from .protocol.rest import create_app, create_metrics_app

        cfg = self.config
        check_bind_safety(cfg.host, self.settings.access.enabled, cfg.insecure)
        if (cfg.tls_cert is None) != (cfg.tls_key is None):
            raise ConfigError("TLS needs both a certificate and its key")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        tls_pair = _tls_pair(cfg)
        tls_files = None
        if cfg.tls_cert is not None and cfg.tls_key is not None:
            tls_files = (cfg.tls_cert, cfg.tls_key)
        # Ports first: a port in use is the likeliest start-up failure.  Front
        # ends bind theirs later; whether it is taken is found out now.
        http_sock = None
        if cfg.http_frontends:
            _check_free(cfg.host, cfg.http_port, "--http-port")
        else:
            http_sock = _bind(cfg.host, cfg.http_port, "--http-port")
        owned = [s for s in (http_sock,) if s is not None]
        try:
            metrics_sock = _bind(cfg.host, cfg.metrics_port, "--metrics-port")
            owned.append(metrics_sock)
            if cfg.grpc_frontends:
                _check_free(cfg.host, cfg.grpc_port, "--grpc-port")
        except ConfigError:
            for sock in owned:
                sock.close()
            raise
        registry = await asyncio.to_thread(Registry, self.settings)
        access = None
        if self.settings.access.enabled:
            from .access.layer import AccessLayer

            access = await asyncio.to_thread(AccessLayer.open, registry)
        service = InferenceService(
            registry, cfg, access=access, monitoring=self.settings.monitoring
        )
        grpc_server: _Listener
        if cfg.grpc_frontends:
            grpc_server = GrpcFrontends(
                service, cfg.host, cfg.grpc_port, processes=cfg.grpc_frontends, tls_files=tls_files
            )
        else:
            try:
                grpc_server = _InProcess(
                    *create_grpc_server(service, cfg.host, cfg.grpc_port, tls=tls_pair)
                )
            except OSError as exc:
                for sock in owned:
                    sock.close()
                if access is not None:
                    await asyncio.to_thread(access.close)
                await asyncio.to_thread(registry.close)
                raise _cannot_listen(cfg.host, cfg.grpc_port, "--grpc-port", exc) from exc
        tls: dict[str, Any] = {}
        if cfg.tls_cert is not None:
            tls = {"ssl_certfile": str(cfg.tls_cert), "ssl_keyfile": str(cfg.tls_key)}
        http_server: _Listener
        if http_sock is None:
            http_server = HttpFrontends(
                create_app(service),
                service,
                cfg.host,
                cfg.http_port,
                processes=cfg.http_frontends,
                tls_files=tls_files,
                lanes=Lanes(cfg.http_interactive_lane, cfg.http_batch_lane),
                fast_path=cfg.http_fast_path,
            )
        else:
            http_server = _InProcessHttp(_http_config(create_app(service), tls), http_sock)
        metrics_server = _InProcessHttp(
            uvicorn.Config(
                create_metrics_app(service), lifespan="off", access_log=False, log_level="warning"
            ),
            metrics_sock,
        )
        try:
            await service.start()
            try:
                grpc_port = await grpc_server.start()
            except OSError as exc:
                raise _cannot_listen(cfg.host, cfg.grpc_port, "--grpc-port", exc) from exc
            try:
                http_port = await http_server.start()
            except OSError as exc:
                await grpc_server.stop(grace=0)
                raise _cannot_listen(cfg.host, cfg.http_port, "--http-port", exc) from exc
            metrics_port = await metrics_server.start()
            addresses = Addresses(cfg.host, http_port, grpc_port, metrics_port)
            if on_ready is not None:
                on_ready(addresses)
            stopper = loop.create_task(self._stop.wait())
            waited = [stopper, *_tasks(http_server, metrics_server)]
            await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
            log.info("sciserve is stopping")
            # HTTP first: its front ends finish what is in flight while gRPC
            # and the service still answer.
            await http_server.stop(grace=10)
            await asyncio.gather(metrics_server.stop(grace=0), grpc_server.stop(grace=10))
            stopper.cancel()
        finally:
            await service.stop()
            if access is not None:
                await asyncio.to_thread(access.close)
            await asyncio.to_thread(registry.close)
            for sock in owned:
                sock.close()


def _tasks(*servers: _Listener) -> list[asyncio.Task[None]]:
    """The serving tasks of the in-process servers (one ending stops the server)."""
    return [
        server.task
        for server in servers
        if isinstance(server, _InProcessHttp) and server.task is not None
    ]
