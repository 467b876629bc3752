"""A gRPC front-end process: terminates gRPC, relays every call to the server.

``sciserve serve --grpc-frontends N`` starts N of these.  Each listens on
the gRPC port (sharing it through ``SO_REUSEPORT`` when N > 1) and hands
every call of Triton's inference service and of the health service, as the
serialized messages it received, to the serving process over a Unix socket
(:mod:`~sciserve.protocol._relay_frames`).  The serving process runs the
same servicers as its in-process gRPC server, so answers, errors and
authentication are the same.  What moves here is gRPC's own per-call work
(HTTP/2, TLS, message framing), which would otherwise share the serving
process's event loop with HTTP, batching and everything else.

The front end never parses a message, never sees a model and holds no
credentials: it enforces the message size limit and relays.  It exits when
the serving process goes away (its relay connection closes), and stops
gracefully on SIGTERM.

Run by the server as ``python -m sciserve.protocol.grpc_frontend``; on
start-up it prints ``ready <port>`` on standard output, or exits with status
3 and the reason on standard error when it cannot listen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import grpc

from ._grpc_listen import listen, server_options
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
    call_body,
    frame,
    parse_status,
)
from ._supervisor import CANNOT_LISTEN

__all__ = ["main"]

log = logging.getLogger("sciserve.protocol.grpc_frontend")

#: Requests of one ModelStreamInfer stream relayed but not yet answered.  Past
#: it the front end stops reading the stream, so HTTP/2 flow control slows
#: the client down (the serving process's own window is the same).
STREAM_WINDOW = 256

_Item = tuple[int, bytes]  # (REPLY or STATUS, body)

_CODES = {status.value[0]: status for status in grpc.StatusCode}
_STOPPING = "the server is stopping"


class _Ended(Exception):
    """The relay connection is gone: the serving process stopped."""


class Relay(asyncio.Protocol):
    """The front end's side of one relay connection."""

    def __init__(self) -> None:
        self._reader = FrameReader()
        self._calls: dict[int, asyncio.Queue[_Item]] = {}
        self._ids = itertools.count(1)
        self._transport: asyncio.Transport | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed = asyncio.Event()

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        for call, kind, body in self._reader.feed(data):
            queue = self._calls.get(call)
            if queue is not None:  # else the call was cancelled meanwhile
                queue.put_nowait((kind, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self._writable.set()
        for queue in self._calls.values():
            queue.put_nowait((STATUS, b""))  # an empty status body: relay gone

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- calls ---------------------------------------------------------------

    def open(self) -> tuple[int, asyncio.Queue[_Item]]:
        call = next(self._ids) & 0xFFFFFFFF
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._calls[call] = queue
        return call, queue

    def close(self, call: int) -> None:
        self._calls.pop(call, None)

    async def send(self, call: int, kind: int, body: bytes = b"") -> None:
        # Waiting while the serving process reads slowly keeps this
        # process's buffer bounded instead of queueing without limit.
        if not self._writable.is_set():
            await self._writable.wait()
        if self.closed.is_set() or self._transport is None:
            raise _Ended
        self._transport.write(frame(call, kind, body))


def _metadata(context: grpc.aio.ServicerContext) -> Metadata:
    # Binary ("-bin") values are not relayed: sciserve reads none.
    return tuple(
        (key, value)
        for key, value in (context.invocation_metadata() or ())
        if isinstance(value, str)
    )


async def _finish(context: grpc.aio.ServicerContext, body: bytes) -> None:
    """End the call with the status the serving process sent."""
    if not body:
        await context.abort(grpc.StatusCode.UNAVAILABLE, _STOPPING)
    code, details, trailing = parse_status(body)
    status = _CODES.get(code, grpc.StatusCode.UNKNOWN)
    if status is not grpc.StatusCode.OK:
        await context.abort(status, details, trailing)


@contextlib.asynccontextmanager
async def _relayed(
    relay: Relay, context: grpc.aio.ServicerContext
) -> AsyncIterator[tuple[int, asyncio.Queue[_Item]]]:
    """One relayed call, ended properly however it ends: the client leaving
    cancels it in the serving process, a lost relay answers UNAVAILABLE."""
    call, queue = relay.open()
    try:
        yield call, queue
    except asyncio.CancelledError:
        with contextlib.suppress(_Ended):
            await relay.send(call, CANCEL)
        raise
    except _Ended:
        await context.abort(grpc.StatusCode.UNAVAILABLE, _STOPPING)
    finally:
        relay.close(call)


async def _replies(
    queue: asyncio.Queue[_Item], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    """A call's response messages, until the status that ends it."""
    while True:
        kind, body = await queue.get()
        if kind != REPLY:
            await _finish(context, body)
            return
        yield body


def _handler(relay: Relay, index: int, method: Method) -> grpc.RpcMethodHandler:
    """The handler of ``method``: raw bytes in and out, relayed."""

    async def unary_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        async with _relayed(relay, context) as (call, queue):
            await relay.send(call, CALL, call_body(index, _metadata(context), request))
            kind, body = await queue.get()
            if kind == REPLY:
                return body
            await _finish(context, body)
        raise AssertionError("unreachable: a unary call ends with a reply or an error")

    async def unary_stream(
        request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async with _relayed(relay, context) as (call, queue):
            await relay.send(call, CALL, call_body(index, _metadata(context), request))
            async for body in _replies(queue, context):
                yield body

    async def stream_stream(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        window = asyncio.Semaphore(STREAM_WINDOW)

        async def forward(call: int) -> None:
            try:
                async for request in requests:
                    await window.acquire()
                    await relay.send(call, MESSAGE, request)
                await relay.send(call, HALF_CLOSE)
            except (_Ended, grpc.RpcError):
                pass  # the answering side sees the same and ends the call

        forwarding: asyncio.Task[None] | None = None
        try:
            async with _relayed(relay, context) as (call, queue):
                await relay.send(call, CALL, call_body(index, _metadata(context), b""))
                forwarding = asyncio.create_task(forward(call))
                async for body in _replies(queue, context):
                    yield body
                    window.release()  # answered: room for one more request
        finally:
            if forwarding is not None:
                forwarding.cancel()

    handlers: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
        (False, False): lambda: grpc.unary_unary_rpc_method_handler(unary_unary),
        (False, True): lambda: grpc.unary_stream_rpc_method_handler(unary_stream),
        (True, True): lambda: grpc.stream_stream_rpc_method_handler(stream_stream),
    }
    return handlers[method.client_streaming, method.server_streaming]()


def _generic_handlers(relay: Relay) -> list[grpc.GenericRpcHandler]:
    by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for index, method in enumerate(METHODS):
        by_service.setdefault(method.service, {})[method.name] = _handler(relay, index, method)
    return [grpc.method_handlers_generic_handler(s, h) for s, h in by_service.items()]


async def serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    _, relay = await loop.create_unix_connection(Relay, args.relay)
    server = grpc.aio.server(
        options=server_options(args.max_message_bytes, reuse_port=args.reuse_port)
    )
    server.add_generic_rpc_handlers(_generic_handlers(relay))
    try:
        tls = None
        if args.tls_cert is not None:
            tls = (Path(args.tls_cert).read_bytes(), Path(args.tls_key).read_bytes())
        port = listen(server, args.host, args.port, tls)
    except OSError as exc:
        sys.stderr.write(f"{exc}\n")
        return CANNOT_LISTEN
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(f"ready {port}\n")
    sys.stdout.flush()
    stopper = asyncio.create_task(stop.wait())
    orphaned = asyncio.create_task(relay.closed.wait())
    await asyncio.wait([stopper, orphaned], return_when=asyncio.FIRST_COMPLETED)
    # Calls in flight finish (while the serving process is there to answer).
    await server.stop(grace=None if relay.closed.is_set() else args.grace)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sciserve.protocol.grpc_frontend")
    parser.add_argument("--relay", required=True, help="the serving process's Unix socket")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-message-bytes", type=int, required=True)
    parser.add_argument("--reuse-port", action="store_true")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--grace", type=float, default=10.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(serve(args))
    return uvloop.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
