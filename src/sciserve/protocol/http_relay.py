"""HTTP from front-end processes: the serving process's side.

:class:`HttpFrontends` starts ``processes`` front ends
(:mod:`~sciserve.protocol.http_frontend`), which accept and parse HTTP/1.1
on the HTTP port and relay each request over a private Unix socket
(:mod:`~sciserve.protocol._http_frames`).  Here every relayed request runs
through the very ASGI application the in-process HTTP server runs
(:func:`~sciserve.protocol.rest.create_app`), with an ASGI scope, ``receive``
and ``send`` built from the frames; so status codes, quotas, audit and
errors are one code path, and responses are the same bytes.

Why: in one process, accepting connections and parsing HTTP run on the
event loop that also batches and answers, which then bounds the server to
about one core.  Relayed, that work runs in other processes, and this one
reads compact frames instead.

The fast path for inference (on unless ``fast_path=False``; the server
passes ``ServingConfig.http_fast_path``, off by default): a front end
may decode an inference request itself and send it as tensors (INFER,
:mod:`~sciserve.protocol._infer_frames`).  Here it runs through the same
application's inference endpoint (:meth:`~sciserve.protocol.rest.RestApp.infer_relayed`),
which authenticates and authorises it from its headers, checks the model's
limits and calls the service exactly as for a body it decodes itself; the
output tensors go back (OUTPUTS) for the front end to encode, and an error
goes back as a response like any other.  The front end saves this process
the decoding and the encoding; it decides nothing about access.

The front ends also decide some requests alone, before reading their body
(see :mod:`~sciserve.protocol.http_frontend`); for that this side advises
them: the priority class of a credential they ask about, and which model's
queue is full (broadcast to every front end).

A front end that dies is restarted on the same port; one that cannot
listen makes :meth:`HttpFrontends.start` raise :class:`OSError`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from pathlib import Path
from typing import Any, cast

from starlette.types import ASGIApp, Message

from ..errors import SciserveError
from ..serving.service import InferenceService
from ._frames import Buffer, FrameReader, frame, frame_of
from ._http_frames import (
    ABORT,
    ADVICE,
    BODY,
    CHUNK,
    CONSUMED,
    CONSUMED_BYTES,
    DELIVERED,
    DISCONNECT,
    END,
    FINISH,
    INFER,
    OUTPUTS,
    REQUEST,
    START,
    WINDOW,
    Advice,
    Head,
    advice_body,
    parse_infer,
    parse_request,
    start_body,
)
from ._infer_path import infer_model
from ._supervisor import Supervisor, private_directory, remove_directory
from .rest import RestApp, Tensors

__all__ = ["HttpFrontends", "Lanes"]

log = logging.getLogger("sciserve.protocol.rest")

#: Seconds between two broadcasts that the same model's queue is full.
_BROADCAST_EVERY = 0.1
#: The longest a front end refuses bulk work for a full queue on one
#: broadcast (s): the queue may drain sooner than the Retry-After it says.
_SATURATION_HOLD = 1.0

_DISCONNECT: Message = {"type": "http.disconnect"}
_END: Message = {"type": "http.request", "body": b"", "more_body": False}
_ERROR_BODY = b"Internal Server Error"
_ERROR_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(_ERROR_BODY)).encode()),
    (b"connection", b"close"),
]


class Lanes:
    """In-flight relayed inference requests each front end allows per class.

    Realtime requests always have room; interactive (and requests whose
    class the front end does not know yet) and batch ones are bounded, so
    bulk traffic cannot take every slot.
    """

    def __init__(self, interactive: int = 1024, batch: int = 64) -> None:
        if interactive < 1 or batch < 1:
            raise ValueError("every lane needs room for at least one request")
        self.interactive = interactive
        self.batch = batch


class _Exchange:
    """One relayed request: its ASGI scope, ``receive`` and ``send``."""

    __slots__ = (
        "_awaits_read",
        "_delivered",
        "_headers",
        "_messages",
        "_unacknowledged",
        "_undelivered",
        "_waiter",
        "call",
        "connection",
        "finished",
        "first_body",
        "head",
        "retry_after",
        "started",
        "status",
    )  # fmt: skip

    def __init__(self, connection: _Connection, call: int, head: Head, body: bytes) -> None:
        self.connection = connection
        self.call = call
        self.head = head
        self._messages: collections.deque[Message] = collections.deque(
            [{"type": "http.request", "body": body, "more_body": head.more_body}]
        )
        self._waiter: asyncio.Future[None] | None = None
        self._unacknowledged = 0
        self._awaits_read = head.awaits_read
        #: Response body bytes sent and not yet written to the client.
        self._undelivered = 0
        self._delivered: asyncio.Event | None = None
        self.started = False
        self.finished = False
        self.status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self.retry_after: bytes | None = None
        self.first_body = b""

    def scope(self) -> dict[str, Any]:
        head = self.head
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": head.http_version,
            "server": head.server,
            "client": head.client,
            "scheme": head.scheme,
            "method": head.method,
            "root_path": "",
            "path": head.path,
            "raw_path": head.raw_path,
            "query_string": head.query_string,
            "headers": head.headers,
            "state": {},
        }

    def push(self, message: Message) -> None:
        self._messages.append(message)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def receive(self) -> Message:
        while not self._messages:
            if self.finished:
                return _DISCONNECT
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        message = self._messages.popleft()
        if self._awaits_read:
            # The application reads the body: now the client may send it.
            self._awaits_read = False
            self.connection.send(self.call, CONSUMED, CONSUMED_BYTES.pack(WINDOW))
        if self.head.more_body:
            # Read: the front end may send as much again (see _http_frames).
            self._unacknowledged += len(message.get("body", b""))
            if self._unacknowledged >= WINDOW // 4:
                read, self._unacknowledged = self._unacknowledged, 0
                self.connection.send(self.call, CONSUMED, CONSUMED_BYTES.pack(read))
        return message

    async def send(self, message: Message) -> None:
        if self.finished:
            return  # as uvicorn: nothing more goes out after the response
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            self._headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            return
        if kind != "http.response.body":
            return
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        if not self.started:
            self.started = True
            if self.status in (429, 503):
                self.first_body = body
                self.retry_after = next(
                    (v for k, v in self._headers if k.lower() == b"retry-after"), None
                )
            self.connection.send(
                self.call, START, start_body(self.status, self._headers, more, body)
            )
        else:
            self.connection.send(self.call, CHUNK if more else FINISH, body)
        if not more:
            self.finished = True
            self.push(_DISCONNECT)
        await self.connection.drain()
        if more:
            # A slow client holds the application back here, as uvicorn's
            # own flow control does in-process.
            self._undelivered += len(body)
            while self._undelivered >= WINDOW and not self.connection.lost:
                self._delivered = asyncio.Event()
                await self._delivered.wait()

    def tensors(self, payload: list[Buffer]) -> None:
        """Answer with output tensors, for the front end to encode."""
        self.started = self.finished = True
        self.status = 200
        self.connection.send_parts(self.call, OUTPUTS, payload)
        self.push(_DISCONNECT)

    def delivered(self, count: int) -> None:
        """The front end wrote ``count`` more response bytes to the client."""
        self._undelivered -= count
        if self._delivered is not None:
            self._delivered.set()

    def fail(self) -> None:
        """End a response the application did not end."""
        if not self.started:
            self.started = True
            self.status = 500
            self.connection.send(
                self.call, START, start_body(500, _ERROR_HEADERS, False, _ERROR_BODY)
            )
        elif not self.finished:
            self.connection.send(self.call, ABORT, b"")
        self.finished = True


class _Connection(asyncio.Protocol):
    """One front end's relay connection: every request on it, by call id."""

    def __init__(self, relay: HttpFrontends) -> None:
        self._relay = relay
        self._reader = FrameReader()
        self._transport: asyncio.Transport | None = None
        self._exchanges: dict[int, _Exchange] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._outbox: list[bytes] = []
        self._writable = asyncio.Event()
        self._writable.set()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._relay.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # Requests in flight run to their end (their work is done and
        # accounted either way); there is just nobody to answer.
        self.lost = True
        self._relay.connections.discard(self)
        self._writable.set()
        for exchange in self._exchanges.values():
            exchange.push(_DISCONNECT)
            exchange.delivered(0)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def drain(self) -> None:
        # A slow front end holds its responses here rather than in memory.
        if not self._writable.is_set():
            await self._writable.wait()

    def send(self, call: int, kind: int, body: bytes) -> None:
        self._queue(frame(call, kind, body))

    def send_parts(self, call: int, kind: int, parts: list[Buffer]) -> None:
        self._queue(frame_of(call, kind, parts))

    def _queue(self, data: bytes) -> None:
        # Frames sent in one turn of the event loop leave in one write: a
        # write to the relay socket is a system call that wakes the front
        # end, and under load many responses are ready in the same turn.
        self._outbox.append(data)
        if len(self._outbox) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        frames, self._outbox = self._outbox, []
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(frames))

    def data_received(self, data: bytes) -> None:
        for call, kind, body in self._reader.feed(data):
            if kind == REQUEST:
                head, first = parse_request(body)
                self._start(_Exchange(self, call, head, first), None)
                continue
            if kind == INFER:
                head, payload = parse_infer(body)
                self._start(_Exchange(self, call, head, b""), payload)
                continue
            known = self._exchanges.get(call)
            if known is None:
                continue  # its response is complete: nothing waits for more
            if kind == BODY:
                known.push({"type": "http.request", "body": body, "more_body": True})
            elif kind == END:
                known.push(_END)
            elif kind == DISCONNECT:
                known.push(_DISCONNECT)
            elif kind == DELIVERED:
                known.delivered(CONSUMED_BYTES.unpack(body)[0])

    def _start(self, exchange: _Exchange, payload: memoryview | None) -> None:
        self._exchanges[exchange.call] = exchange
        task = asyncio.get_running_loop().create_task(self._run(exchange, payload))
        self._tasks.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)

    async def _run(self, exchange: _Exchange, payload: memoryview | None) -> None:
        try:
            scope = exchange.scope()
            if payload is None:
                await self._relay.app(scope, exchange.receive, exchange.send)
            else:
                await self._infer(exchange, scope, payload)
        except Exception:
            # The application answers every error itself; this is a bug.
            head = exchange.head
            log.exception("unexpected error in relayed %s %s", head.method, head.path)
        finally:
            exchange.fail()
            self._exchanges.pop(exchange.call, None)
        await self._relay.advise(self, exchange)

    async def _infer(self, exchange: _Exchange, scope: dict[str, Any], payload: memoryview) -> None:
        app = self._relay.decoding_app
        if app is None:  # only a front end told to decode sends INFER
            raise RuntimeError("a front end sent decoded inference, which it was not told to")
        answer = await app.infer_relayed(scope, exchange.receive, payload)
        if isinstance(answer, Tensors):
            exchange.tensors(answer.payload)
        else:
            await answer(scope, exchange.receive, exchange.send)


class HttpFrontends:
    """HTTP served by ``processes`` front-end processes relaying to ``app``.

    ``app`` is the ASGI application (:func:`~sciserve.protocol.rest.create_app`)
    serving ``service``.  Call :meth:`start` from the event loop that runs
    ``service``; it returns the bound port (``port`` 0 picks a free one).
    :meth:`stop` lets requests in flight finish, up to ``grace`` seconds.

    With ``fast_path`` (and ``app`` a :class:`~sciserve.protocol.rest.RestApp`)
    the front ends decode inference requests whose credential this process
    has accepted before (any request when authentication is off), and encode
    their answers; the rest they relay as they are.
    """

    def __init__(
        self,
        app: ASGIApp,
        service: InferenceService,
        host: str,
        port: int,
        *,
        processes: int = 1,
        tls_files: tuple[Path, Path] | None = None,
        lanes: Lanes | None = None,
        fast_path: bool = True,
    ) -> None:
        self.app = app
        #: The application that answers decoded inference (the fast path), if on.
        self.decoding_app = app if fast_path and isinstance(app, RestApp) else None
        self.service = service
        self.host = host
        self.port = port
        self.processes = processes
        self.tls_files = tls_files
        self.lanes = lanes or Lanes()
        self.connections: set[_Connection] = set()
        self._directory: Path | None = None
        self._relay: asyncio.AbstractServer | None = None
        self._broadcast: dict[str, float] = {}
        self._supervisor = Supervisor(
            "sciserve.protocol.http_frontend", "HTTP", processes, self._argv, log
        )

    @property
    def pids(self) -> list[int]:
        """The front ends' process ids (for tests and operators)."""
        return self._supervisor.pids

    @property
    def socket_directory(self) -> Path | None:
        """The private directory holding the relay socket (for tests)."""
        return self._directory

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._directory = private_directory("sciserve-http-")
        socket_path = self._directory / "relay.sock"
        self._relay = await loop.create_unix_server(lambda: _Connection(self), str(socket_path))
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
            "--max-request-bytes", str(self.service.config.max_request_bytes),
            "--interactive-lane", str(self.lanes.interactive),
            "--batch-lane", str(self.lanes.batch),
        ]  # fmt: skip
        if self.processes > 1:
            argv.append("--reuse-port")
        if self.decoding_app is not None:
            argv.append("--decode-inference")
            if self.service.access is None:
                # Nobody is authenticated: no credential to have been accepted first.
                argv.append("--open-access")
        if self.tls_files is not None:
            argv += ["--tls-cert", str(self.tls_files[0]), "--tls-key", str(self.tls_files[1])]
        return argv

    async def advise(self, connection: _Connection, exchange: _Exchange) -> None:
        """Tell the front ends what this response teaches them."""
        head = exchange.head
        if exchange.status == 503 and exchange.retry_after is not None:
            self._saturated(exchange)
        if not (head.ask_class and head.credential):
            return
        authorization = next((v for k, v in head.headers if k == b"authorization"), None)
        if authorization is None:
            return
        try:
            identity = await self.service.identify(authorization.decode("latin-1"))
        except SciserveError:
            return  # not a credential: nothing to learn
        advice = Advice("class", head.credential, float(identity.priority))
        connection.send(0, ADVICE, advice_body(advice))

    def _saturated(self, exchange: _Exchange) -> None:
        model = infer_model(exchange.head.method, exchange.head.path)
        if model is None:
            return  # not inference: a 503 from the registry or a job
        now = time.monotonic()
        if now - self._broadcast.get(model, 0.0) < _BROADCAST_EVERY:
            return
        self._broadcast[model] = now
        try:
            seconds = min(float(exchange.retry_after or b"1"), _SATURATION_HOLD)
        except ValueError:
            seconds = _SATURATION_HOLD
        advice = advice_body(Advice("saturated", model.encode(), seconds, exchange.first_body))
        for connection in list(self.connections):
            connection.send(0, ADVICE, advice)

    async def stop(self, grace: float = 10.0) -> None:
        await self._supervisor.stop(grace)
        if self._relay is not None:
            self._relay.close()
        remove_directory(self._directory)
