"""gRPC from front-end processes: the serving process's side.

:class:`GrpcFrontends` starts ``processes`` front ends
(:mod:`~sciserve.protocol.grpc_frontend`), which terminate gRPC on the gRPC
port and relay each call over a private Unix socket.  Here every relayed
call runs through the very servicers the in-process gRPC server uses
(:class:`~sciserve.protocol.grpc_server.InferenceServicer` and
:class:`~sciserve.protocol.grpc_server.HealthServicer`), with a
:class:`RelayContext` standing in for gRPC's servicer context; so status
codes, error details, retry metadata and authentication are identical.

Why: in one process, gRPC's own per-call work (HTTP/2 framing, its
completion queue, Python call objects) runs on the event loop that also
parses HTTP, batches and answers.  Relayed, that work runs in another
process on another core, and this process reads compact frames instead.
On two cores that is ~1.5x the gRPC calls per second (``bench/serve.py``).

A front end that dies is restarted on the same port; one that cannot
listen makes :meth:`GrpcFrontends.start` raise :class:`OSError`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError

from ..serving.service import InferenceService
from ._relay_frames import (
    CALL,
    CANCEL,
    HALF_CLOSE,
    MESSAGE,
    METHODS,
    REPLY,
    STATUS,
    FrameReader,
    Metadata,
    Method,
    frame,
    parse_call,
    status_body,
)
from ._supervisor import Supervisor, private_directory, remove_directory
from .grpc_server import (
    HealthServicer,
    InferenceServicer,
    Undecodable,
    is_undecodable,
    undecodable_details,
)

__all__ = ["GrpcFrontends", "RelayContext"]

log = logging.getLogger("sciserve.protocol.grpc")


class _Aborted(Exception):
    """Raised by :meth:`RelayContext.abort`, as gRPC's own abort raises."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: Metadata) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing = trailing


class RelayContext:
    """What the servicers use of ``grpc.aio.ServicerContext``, for a relayed call."""

    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> None:
        trailing = tuple((str(k), str(v)) for k, v in trailing_metadata or ())
        raise _Aborted(code, details, trailing)


def _status(code: grpc.StatusCode, details: str = "", trailing: Metadata = ()) -> bytes:
    return status_body(code.value[0], details, trailing)


_OK = _status(grpc.StatusCode.OK)


class _Connection(asyncio.Protocol):
    """One front end's relay connection: every call on it, by call id."""

    def __init__(self, servicers: dict[str, Any]) -> None:
        self._servicers = servicers
        self._reader = FrameReader()
        self._transport: asyncio.Transport | None = None
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._inboxes: dict[int, asyncio.Queue[bytes | None]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        for task in list(self._tasks.values()):
            task.cancel()

    def data_received(self, data: bytes) -> None:
        for call, kind, body in self._reader.feed(data):
            if kind == CALL:
                self._start(call, body)
            elif kind in (MESSAGE, HALF_CLOSE):
                inbox = self._inboxes.get(call)
                if inbox is not None:
                    inbox.put_nowait(body if kind == MESSAGE else None)
            elif kind == CANCEL:
                task = self._tasks.get(call)
                if task is not None:
                    task.cancel()

    def _send(self, call: int, kind: int, body: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(frame(call, kind, body))

    def _start(self, call: int, body: bytes) -> None:
        index, metadata, message = parse_call(body)
        method = METHODS[index]
        context = RelayContext(metadata)
        handler = getattr(self._servicers[method.service], method.name)
        if method.client_streaming:
            inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
            self._inboxes[call] = inbox
            work = self._run(call, method, handler(_requests(method, inbox), context))
        else:
            work = self._run_unary_request(call, method, handler, message, context)
        task = asyncio.get_running_loop().create_task(work)
        self._tasks[call] = task
        task.add_done_callback(lambda _: self._forget(call))

    def _forget(self, call: int) -> None:
        self._tasks.pop(call, None)
        self._inboxes.pop(call, None)

    async def _run_unary_request(
        self, call: int, method: Method, handler: Any, message: bytes, context: RelayContext
    ) -> None:
        try:
            request = method.request.FromString(message)
        except DecodeError:
            self._send(call, STATUS, _undecodable(method))
            return
        await self._run(call, method, handler(request, context))

    async def _run(self, call: int, method: Method, result: Any) -> None:
        try:
            if method.server_streaming:
                async for response in result:
                    self._send(call, REPLY, response.SerializeToString())
                self._send(call, STATUS, _OK)
            else:
                response = await result
                self._send(call, REPLY, response.SerializeToString())
        except _Aborted as aborted:
            self._send(call, STATUS, _status(aborted.code, aborted.details, aborted.trailing))
        except asyncio.CancelledError:
            raise  # the client went away: nobody to answer
        except Exception as exc:
            if is_undecodable(exc):
                self._send(call, STATUS, _undecodable(method))
                return
            # The servicers report every error themselves; this is a bug.
            log.exception("relayed gRPC call %s failed", method.path)
            self._send(call, STATUS, _status(grpc.StatusCode.INTERNAL, "internal server error"))


def _undecodable(method: Method) -> bytes:
    return _status(grpc.StatusCode.INVALID_ARGUMENT, undecodable_details(method))


async def _requests(method: Method, inbox: asyncio.Queue[bytes | None]) -> AsyncIterator[Any]:
    while (message := await inbox.get()) is not None:
        try:
            yield method.request.FromString(message)
        except DecodeError as exc:
            raise Undecodable from exc


class GrpcFrontends:
    """gRPC served by ``processes`` front-end processes relaying to ``service``.

    Call :meth:`start` from the event loop that runs ``service``; it returns
    the bound port (``port`` 0 picks a free one).  :meth:`stop` lets calls in
    flight finish, up to ``grace`` seconds.
    """

    def __init__(
        self,
        service: InferenceService,
        host: str,
        port: int,
        *,
        processes: int = 1,
        tls_files: tuple[Path, Path] | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError("GrpcFrontends needs at least one process")
        self.service = service
        self.host = host
        self.port = port
        self.processes = processes
        self.tls_files = tls_files
        self._servicers = {
            "inference.GRPCInferenceService": InferenceServicer(service),
            "grpc.health.v1.Health": HealthServicer(service),
        }
        self._directory: Path | None = None
        self._relay: asyncio.AbstractServer | None = None
        self._supervisor = Supervisor(
            "sciserve.protocol.grpc_frontend", "gRPC", processes, self._argv, log
        )

    @property
    def pids(self) -> list[int]:
        """The front ends' process ids (for tests and operators)."""
        return self._supervisor.pids

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._directory = private_directory("sciserve-grpc-")
        socket_path = self._directory / "relay.sock"
        self._relay = await loop.create_unix_server(
            lambda: _Connection(self._servicers), str(socket_path)
        )
        try:
            self.port = await self._supervisor.start(socket_path, self.port)
        except BaseException:
            await self.stop(grace=0)
            raise
        return self.port

    def _argv(self, socket_path: Path, port: int) -> list[str]:
        argv = [
            "--relay", str(socket_path),
            "--host", self.host,
            "--port", str(port),
            "--max-message-bytes", str(self.service.config.max_request_bytes),
        ]  # fmt: skip
        if self.processes > 1:
            argv.append("--reuse-port")
        if self.tls_files is not None:
            argv += ["--tls-cert", str(self.tls_files[0]), "--tls-key", str(self.tls_files[1])]
        return argv

    async def stop(self, grace: float = 10.0) -> None:
        await self._supervisor.stop(grace)
        if self._relay is not None:
            self._relay.close()
        remove_directory(self._directory)
