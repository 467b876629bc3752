"""An HTTP front-end process: parses HTTP/1.1, relays every request to the server.

``sciserve serve --http-frontends N`` starts N of these.  Each listens on
the HTTP port (sharing it through ``SO_REUSEPORT`` when N > 1), parses
HTTP/1.1 with uvicorn and httptools (keep-alive, pipelining, chunked
bodies, TLS) and hands each request, as its head and body, to the serving
process over a Unix socket (:mod:`~sciserve.protocol._http_frames`).  The
serving process runs the same application as its in-process HTTP server
(:mod:`~sciserve.protocol.http_relay`), so answers, errors, quotas and
audit are the same.  What moves here is accepting connections, TLS and
parsing HTTP, which would otherwise share the serving process's event loop
with batching and everything else.

Admission before the body: for inference requests the front end looks at
the path and the headers first and may answer alone, without reading the
body (and then closing the connection, since the body was not read):

* **429** while a credential is over its quota for a model: the serving
  process answered 429 with ``Retry-After``; until then, that credential's
  requests for that model get the same answer without being relayed.
* **503** to batch-class requests for a model whose queue is full (the
  serving process broadcasts it), so bulk work does not even reach it.
* **503** when a class's lane is full: each front end relays at most
  ``--interactive-lane`` interactive and ``--batch-lane`` batch requests at
  once; realtime requests always have room.

A credential's class is learnt from the serving process (asked with the
first request it makes).  Credentials are known only by a keyed hash whose
key is this process's own random secret: the front end never logs, stores
or compares a token itself.  Requests whose class is not known yet count as
interactive.

The fast path for inference (``--decode-inference``): the front end reads
an inference request's body, decodes it with the REST adapter's own decoder
(:func:`~sciserve.protocol.rest_codec.decode_infer_request`) and sends the
tensors (:mod:`~sciserve.protocol._infer_frames`); the serving process
answers with output tensors, which it encodes with the adapter's own
encoder, or with an error response, relayed as it comes.  Decoding and
encoding are most of a small request's cost, and here they run on another
core.  Access is not decided here: only requests whose credential the
serving process accepted before (its class is known; any request with
``--open-access``, when the server authenticates nobody) take the fast
path, and the serving process authenticates and authorises each of them
again.  Every other request, and any whose body this side cannot decode
(the serving process then gives the in-process answer, an error), is
relayed as it came; so are compressed bodies, bodies over the size limit
and clients awaiting "100 Continue".

The front end exits when the serving process goes away (its relay
connection closes), and on SIGTERM stops accepting, finishes the requests
in flight and exits.  Run by the server as
``python -m sciserve.protocol.http_frontend``; on start-up it prints
``ready <port>`` on standard output, or exits with status 3 and the reason
on standard error when it cannot listen.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import hashlib
import itertools
import json
import logging
import math
import secrets
import signal
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any, cast
from urllib.parse import unquote

import uvicorn

from ..serving.types import InferenceRequest
from ._frames import HEADER, Buffer, FrameReader, frame, frame_of
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
    Head,
    parse_advice,
    parse_start,
    request_body,
    request_head,
)
from ._http_protocol import HttpProtocol
from ._infer_frames import parse_response, request_payload
from ._infer_path import INFER_PATH, infer_model
from ._supervisor import CANNOT_LISTEN
from .rest_codec import (
    decode_infer_request,
    encode_infer_response,
    infer_response_headers,
    wants_binary_output,
)

__all__ = ["main"]

log = logging.getLogger("sciserve.protocol.http_frontend")

#: The priority classes' values (:class:`sciserve.access.priority.Priority`,
#: not imported: it would bring the access layer into this small process).
REALTIME, INTERACTIVE, BATCH = 0, 1, 2
#: How long a credential's class is trusted before it is asked again (s).
CLASS_TTL = 60.0
#: Most credentials (and holds) remembered; past it the table starts afresh.
_MAX_REMEMBERED = 10_000

Message = dict[str, Any]
Scope = dict[str, Any]
_JSON = b"application/json"
_STOPPING = b'{"error":"the server is stopping","type":"Unavailable"}'
#: The serving process's answer to an unexpected error (``rest._INTERNAL``).
_INTERNAL = b'{"error":"internal server error; the server log has the details"}'
#: Bodies up to this size are decoded on the event loop, larger ones in a
#: thread (as the serving process does), so one large body does not stall
#: every other connection of this front end.
_INLINE_DECODE = 256 * 1024
#: Most digits of a length header the serving process reads (``rest._MAX_DIGITS``).
_MAX_DIGITS = 18
#: The largest frame body: its length is a u32.
_MAX_FRAME = (1 << 32) - 1 - HEADER.size


class _Ended(Exception):
    """The relay connection is gone: the serving process stopped."""


class _Call:
    """The frames the serving process sent for one request, awaited in order,
    and how much of its body the front end may still send (the window)."""

    __slots__ = ("_frames", "_room", "_waiter", "ahead", "forwarding", "started")

    def __init__(self) -> None:
        self._frames: collections.deque[tuple[int, bytes]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._room: asyncio.Event | None = None
        #: Body bytes sent and not yet read by the application.
        self.ahead = 0
        #: The task relaying the rest of the body, or watching for the
        #: client leaving, if there is one.
        self.forwarding: asyncio.Task[None] | None = None
        #: Whether the client's response has begun.
        self.started = False

    def consumed(self, count: int) -> None:
        self.ahead -= count
        if self._room is not None and self.ahead < WINDOW:
            self._room.set()

    async def room(self) -> None:
        """Wait until the window has room (or the relay is lost)."""
        while self.ahead >= WINDOW and not self._frames:
            self._room = asyncio.Event()
            await self._room.wait()

    def push(self, kind: int, body: bytes) -> None:
        self._frames.append((kind, body))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> tuple[int, bytes]:
        while not self._frames:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._frames.popleft()


#: Pushed to every call when the relay connection is lost.
_LOST = 0


class Relay(asyncio.Protocol):
    """The front end's side of its relay connection."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._reader = FrameReader()
        self._calls: dict[int, _Call] = {}
        self._ids = itertools.count(1)
        self._transport: asyncio.Transport | None = None
        self._outbox: list[bytes] = []
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        for call, kind, body in self._reader.feed(data):
            if kind == ADVICE:
                self._admission.advise(parse_advice(body))
                continue
            pending = self._calls.get(call)
            if pending is None:
                continue  # its client went away meanwhile
            if kind == CONSUMED:
                pending.consumed(CONSUMED_BYTES.unpack(body)[0])
            else:
                pending.push(kind, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self._writable.set()
        for pending in self._calls.values():
            pending.push(_LOST, b"")
            pending.consumed(0)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def open(self) -> tuple[int, _Call]:
        call = next(self._ids) & 0xFFFFFFFF or next(self._ids)  # 0 is for advice
        pending = _Call()
        self._calls[call] = pending
        return call, pending

    def close(self, call: int) -> None:
        self._calls.pop(call, None)

    async def send(self, call: int, kind: int, body: bytes = b"") -> None:
        await self._queue(frame(call, kind, body))

    async def send_parts(self, call: int, kind: int, parts: list[Buffer]) -> None:
        await self._queue(frame_of(call, kind, parts))

    async def _queue(self, data: bytes) -> None:
        # Waiting while the serving process reads slowly keeps this
        # process's buffer bounded instead of queueing without limit.
        if not self._writable.is_set():
            await self._writable.wait()
        if self.closed.is_set() or self._transport is None:
            raise _Ended
        # Frames sent in one turn of the event loop leave in one write (one
        # system call, one wake-up of the serving process).
        self._outbox.append(data)
        if len(self._outbox) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        frames, self._outbox = self._outbox, []
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(frames))


class _Refusal:
    """An answer the front end gives alone, until ``until`` (monotonic)."""

    __slots__ = ("body", "status", "until")

    def __init__(self, status: int, until: float, body: bytes) -> None:
        self.status = status
        self.until = until
        self.body = body


class Admission:
    """What the front end knows about credentials, models and its lanes."""

    def __init__(self, interactive_lane: int, batch_lane: int) -> None:
        self._key = secrets.token_bytes(32)  # this process's own; never leaves it
        self._classes: dict[bytes, tuple[int, float]] = {}
        self._holds: dict[tuple[bytes, str], _Refusal] = {}
        self._saturated: dict[str, _Refusal] = {}
        self._limits = {INTERACTIVE: interactive_lane, BATCH: batch_lane}
        self._in_flight = {REALTIME: 0, INTERACTIVE: 0, BATCH: 0}

    def credential(self, authorization: bytes) -> bytes:
        """The keyed hash a credential is known by here."""
        return hashlib.blake2b(authorization, key=self._key, digest_size=16).digest()

    def priority(self, credential: bytes) -> int | None:
        known = self._classes.get(credential)
        if known is None or known[1] < time.monotonic():
            return None
        return known[0]

    def refusal(self, credential: bytes, model: str, priority: int) -> _Refusal | None:
        """Why to answer a request for ``model`` alone, if there is a reason."""
        now = time.monotonic()
        hold = self._holds.get((credential, model)) if credential else None
        if hold is not None:
            if hold.until > now:
                return hold
            del self._holds[credential, model]
        if priority == BATCH:
            full = self._saturated.get(model)
            if full is not None and full.until > now:
                return full
        limit = self._limits.get(priority)
        if limit is not None and self._in_flight[priority] >= limit:
            name = "batch" if priority == BATCH else "interactive"
            message = f"too many {name} requests in flight; try again later"
            body = json.dumps({"error": message, "type": "Overloaded"}).encode()
            return _Refusal(503, now + 1.0, body)
        return None

    @contextlib.contextmanager
    def lane(self, priority: int) -> Iterator[None]:
        self._in_flight[priority] += 1
        try:
            yield
        finally:
            self._in_flight[priority] -= 1

    def forget(self, credential: bytes) -> None:
        """The serving process refused ``credential`` (401): no longer known."""
        self._classes.pop(credential, None)

    def learn(
        self, credential: bytes, model: str, status: int, retry_after: float, body: bytes
    ) -> None:
        """Remember a 429 the serving process answered."""
        if status != 429 or not credential or retry_after <= 0:
            return
        if len(self._holds) >= _MAX_REMEMBERED:
            self._holds.clear()
        self._holds[credential, model] = _Refusal(429, time.monotonic() + retry_after, body)

    def advise(self, advice: Any) -> None:
        now = time.monotonic()
        if advice.kind == "class":
            if len(self._classes) >= _MAX_REMEMBERED:
                self._classes.clear()
            self._classes[advice.key] = (int(advice.value), now + CLASS_TTL)
        elif advice.kind == "saturated":
            model = advice.key.decode()
            self._saturated[model] = _Refusal(503, now + advice.value, advice.body)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _has_body(scope: Scope) -> bool:
    if _header(scope, b"transfer-encoding") is not None:
        return True
    length = _header(scope, b"content-length")
    return length is not None and length.strip() not in (b"", b"0")


def _retry_after(headers: list[tuple[bytes, bytes]]) -> float:
    for key, value in headers:
        if key.lower() == b"retry-after":
            with contextlib.suppress(ValueError):
                return float(value)
    return 0.0


class FrontEnd:
    """The ASGI application of a front end: admission, then the relay (or
    the fast path)."""

    def __init__(
        self,
        admission: Admission,
        max_request_bytes: int,
        *,
        decode: bool = False,
        open_access: bool = False,
    ) -> None:
        self.admission = admission
        self.limit = max_request_bytes
        #: Decode inference requests here (the fast path).
        self.decode = decode
        #: The serving process authenticates nobody: a request need not
        #: carry a credential it accepted before to take the fast path.
        self.open_access = open_access
        self.relay: Relay | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # no lifespan, no websockets: nothing else reaches here
        admission = self.admission
        model = infer_model(scope["method"], scope["path"])
        authorization = _header(scope, b"authorization")
        credential = b"" if authorization is None else admission.credential(authorization)
        if model is None:
            await self._relay(scope, receive, send, credential, False, None)
            return
        known = admission.priority(credential) if credential else None
        priority = INTERACTIVE if known is None else known
        refusal = admission.refusal(credential, model, priority)
        if refusal is not None:
            await _refuse(scope, send, refusal)
            return
        with admission.lane(priority):
            ask = bool(credential) and known is None
            # Decoding is for requests the serving process will most likely
            # serve: unknown credentials go as they are, to be refused there.
            if self.decode and (known is not None or self.open_access):
                decodable, header_length = _decodable(scope, self.limit)
                if decodable:
                    await self._decoded(scope, receive, send, credential, ask, model, header_length)
                    return
            await self._relay(scope, receive, send, credential, ask, model)

    async def _relay(
        self,
        scope: Scope,
        receive: Any,
        send: Any,
        credential: bytes,
        ask: bool,
        model: str | None,
        first: tuple[bytes, bool] | None = None,
    ) -> None:
        """Relay the request as it came; ``first`` is the body already read
        (and whether more follows), if any was."""
        relay = self.relay
        assert relay is not None
        # A client waiting for "100 Continue" sends the body only once it is
        # read: the serving process sees the head first and may refuse it
        # unread, as it does in-process.  Any other client sends the body
        # right away; it goes with the head, in one frame.
        waits = first is None and _expects_continue(scope)
        body, more = b"", True
        if first is not None:
            body, more = first
        elif not waits:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before its request was complete
            body = message.get("body", b"")
            more = bool(message.get("more_body", False))
        head = _head(scope, credential, ask, more, waits)
        call, pending = relay.open()
        try:
            await relay.send(call, REQUEST, request_body(head, body))
            # A waiting client's body is read once the application wants it.
            pending.ahead = WINDOW if waits else len(body)
            if more:
                pending.forwarding = asyncio.create_task(
                    self._forward(relay, pending, call, receive, len(body))
                )
            await self._respond(send, relay, pending, call, receive, credential, model)
        except _Ended:
            if not pending.started:  # else uvicorn closes a connection whose response did not end
                await _answer(send, 503, _STOPPING, close=True)
        finally:
            relay.close(call)
            if pending.forwarding is not None:
                pending.forwarding.cancel()

    async def _decoded(
        self,
        scope: Scope,
        receive: Any,
        send: Any,
        credential: bytes,
        ask: bool,
        model: str,
        header_length: int | None,
    ) -> None:
        """The fast path: read and decode the body here, send the tensors,
        encode the output tensors that come back."""
        relay = self.relay
        assert relay is not None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before its request was complete
            chunk = message.get("body", b"")
            if chunk:
                chunks.append(chunk)
                size += len(chunk)
            more = bool(message.get("more_body", False))
            if not more or size > self.limit:
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        decoded = None
        if not more and size <= self.limit:
            decoded = await self._decode(scope, body, header_length)
        payload = None if decoded is None else _payload(decoded, size)
        if decoded is None or payload is None:
            # Over the limit, or not decodable: the serving process reads it
            # and answers as in-process (the refusal, the client's mistake).
            await self._relay(scope, receive, send, credential, ask, model, (body, more))
            return
        head = _head(scope, credential, ask, False, False)
        call, pending = relay.open()
        try:
            await relay.send_parts(call, INFER, [request_head(head), *payload])
            await self._respond(send, relay, pending, call, receive, credential, model, decoded)
        except _Ended:
            if not pending.started:
                await _answer(send, 503, _STOPPING, close=True)
        finally:
            relay.close(call)
            if pending.forwarding is not None:
                pending.forwarding.cancel()

    async def _decode(
        self, scope: Scope, body: bytes, header_length: int | None
    ) -> InferenceRequest | None:
        """The request ``body`` holds, decoded as the REST adapter decodes
        it (within the server's size limit; the model's own limits are the
        serving process's to check), or ``None`` when it cannot be."""
        match = INFER_PATH.fullmatch(scope["path"])
        if match is None:  # pragma: no cover - infer_model matched it
            return None
        name, version = match.groups()
        decode = functools.partial(
            decode_infer_request,
            body,
            header_length,
            model_name=unquote(name),
            model_version=None if version is None else unquote(version),
            max_body_bytes=self.limit,
        )
        try:
            if len(body) <= _INLINE_DECODE:
                return decode()
            return await asyncio.get_running_loop().run_in_executor(None, decode)
        except Exception:
            # Whatever is wrong with it, the serving process decodes it again
            # and words the error: this side never answers for a body.
            return None

    async def _respond(
        self,
        send: Any,
        relay: Relay,
        pending: _Call,
        call: int,
        receive: Any,
        credential: bytes,
        model: str | None,
        decoded: InferenceRequest | None = None,
    ) -> None:
        """Send the client what the serving process answers to ``call``."""
        kind, data = await pending.get()
        if kind == OUTPUTS and decoded is not None:
            pending.started = True
            await _encode(send, data, decoded)
            return
        if kind != START:
            await _answer(send, 503, _STOPPING, close=True)
            return
        status, headers, streaming, first = parse_start(data)
        if model is not None and status == 429:
            self.admission.learn(credential, model, status, _retry_after(headers), first)
        if status == 401 and credential:
            self.admission.forget(credential)
        pending.started = True
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": first, "more_body": streaming})
        if not streaming:
            return
        if pending.forwarding is None:  # tell the serving process if the client leaves
            pending.forwarding = asyncio.create_task(self._forward(relay, pending, call, receive))
        delivered = len(first)
        while True:
            if delivered >= WINDOW // 4:
                # Written to the client (uvicorn's send waits for that):
                # the application may send as much more.
                await relay.send(call, DELIVERED, CONSUMED_BYTES.pack(delivered))
                delivered = 0
            kind, data = await pending.get()
            if kind in (_LOST, ABORT):
                return  # uvicorn closes a connection whose response did not end
            await send({"type": "http.response.body", "body": data, "more_body": kind == CHUNK})
            if kind == FINISH:
                return
            delivered += len(data)

    async def _forward(
        self, relay: Relay, pending: _Call, call: int, receive: Any, sent: int = 0
    ) -> None:
        """Relay the rest of the body (``sent`` bytes of it went with the head),
        then watch for the client leaving."""
        try:
            while True:
                # Not reading the client while the application has not read
                # what was sent: TCP flow control then slows the client down.
                await pending.room()
                message = await receive()
                if message["type"] == "http.disconnect":
                    await relay.send(call, DISCONNECT)
                    return
                chunk = message.get("body", b"")
                if chunk:
                    await relay.send(call, BODY, chunk)
                    pending.ahead += len(chunk)
                    sent += len(chunk)
                    if sent > self.limit:
                        # The serving process refuses it with 413 now: more is waste.
                        return
                if not message.get("more_body", False):
                    await relay.send(call, END)
                    break
            message = await receive()  # returns when the client leaves
            await relay.send(call, DISCONNECT)
        except _Ended:
            pass  # the answering side sees the same


def _expects_continue(scope: Scope) -> bool:
    return (_header(scope, b"expect") or b"").lower() == b"100-continue"


def _head(scope: Scope, credential: bytes, ask: bool, more: bool, waits: bool) -> Head:
    return Head(
        scope["method"], scope["path"], scope.get("raw_path") or scope["path"].encode(),
        scope["query_string"], [(bytes(k), bytes(v)) for k, v in scope["headers"]],
        scope.get("client"), scope.get("server"), scope["scheme"], scope["http_version"],
        credential, ask, more, waits,
    )  # fmt: skip


def _decodable(scope: Scope, limit: int) -> tuple[bool, int | None]:
    """Whether the head lets this front end decode the body, and the value
    of ``Inference-Header-Content-Length``.

    Not when the client awaits "100 Continue" (the serving process may
    refuse it unread), when the body is compressed, when its declared
    length is over the limit (refused unread), or when the length header is
    not a number (refused with the serving process's words); as the REST
    adapter, each header is read from its first occurrence.
    """
    expect = encoding = length = header_length = None
    for key, value in scope["headers"]:
        if key == b"content-length":
            length = value if length is None else length
        elif key == b"inference-header-content-length":
            header_length = value if header_length is None else header_length
        elif key == b"content-encoding":
            encoding = value if encoding is None else encoding
        elif key == b"expect":
            expect = value if expect is None else expect
    if expect is not None and expect.lower() == b"100-continue":
        return False, None
    if encoding is not None and encoding.strip().lower() not in (b"", b"identity"):
        return False, None
    if length is not None and not _number(length, limit):
        return False, None
    if header_length is None:
        return True, None
    if not _number(header_length, None):
        return False, None
    return True, int(header_length)


def _number(raw: bytes, limit: int | None) -> bool:
    """Whether ``raw`` is a number of at most 18 digits and ``limit``."""
    if not raw.isdigit() or len(raw) > _MAX_DIGITS:
        return False
    return limit is None or int(raw) <= limit


def _payload(decoded: InferenceRequest, size: int) -> list[Buffer] | None:
    """The INFER payload of ``decoded``, or ``None`` when it does not fit a frame."""
    try:
        payload = request_payload(decoded, size)
    except Exception:  # pragma: no cover - a decoded request always encodes
        log.exception("cannot encode a decoded inference request")
        return None
    total = sum(memoryview(part).nbytes for part in payload)
    return payload if total < _MAX_FRAME - (1 << 20) else None


async def _encode(send: Any, data: bytes, decoded: InferenceRequest) -> None:
    """Answer with the outputs of an OUTPUTS frame, encoded as the REST adapter does."""
    try:
        result = parse_response(data)
        body, json_length = encode_infer_response(
            result, decoded.outputs, binary_default=wants_binary_output(decoded)
        )
    except Exception:  # pragma: no cover - the serving process sends only what encodes
        log.exception("cannot encode the outputs of an inference request")
        await _answer(send, 500, _INTERNAL)
        return
    headers = infer_response_headers(len(body), json_length)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _refuse(scope: Scope, send: Any, refusal: _Refusal) -> None:
    retry = max(1, math.ceil(refusal.until - time.monotonic()))
    # A body left unread would be taken for the next request: close instead.
    await _answer(send, refusal.status, refusal.body, close=_has_body(scope), retry=retry)


async def _answer(
    send: Any, status: int, body: bytes, *, close: bool = False, retry: int | None = None
) -> None:
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", _JSON)]
    if retry is not None:
        headers.append((b"retry-after", str(retry).encode()))
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Uvicorn(uvicorn.Server):
    # This process owns its signal handling.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP so asyncio turns Nagle off on the accepted sockets.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    admission = Admission(args.interactive_lane, args.batch_lane)
    app = FrontEnd(
        admission,
        args.max_request_bytes,
        decode=args.decode_inference,
        open_access=args.open_access,
    )
    _, relay = await loop.create_unix_connection(lambda: Relay(admission), args.relay)
    app.relay = relay
    try:
        sock = _listen(args.host, args.port, args.reuse_port)
    except OSError as exc:
        sys.stderr.write(f"cannot listen for HTTP on {args.host}:{args.port}: {exc.strerror}\n")
        return CANNOT_LISTEN
    tls: dict[str, Any] = {}
    if args.tls_cert is not None:
        tls = {"ssl_certfile": args.tls_cert, "ssl_keyfile": args.tls_key}
    server = _Uvicorn(
        uvicorn.Config(
            app,
            http=HttpProtocol,
            ws="none",
            lifespan="off",
            # No access log: it would record paths and clients.
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=args.grace,
            **tls,
        )
    )
    serving = loop.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            sys.stderr.write("the HTTP front end could not start\n")
            return 1
        await asyncio.sleep(0.01)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(f"ready {sock.getsockname()[1]}\n")
    sys.stdout.flush()
    stopper = loop.create_task(stop.wait())
    orphaned = loop.create_task(relay.closed.wait())
    await asyncio.wait([stopper, orphaned, serving], return_when=asyncio.FIRST_COMPLETED)
    # Stop accepting; requests in flight finish (while the serving process
    # is there to answer them).
    server.should_exit = True
    await serving
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sciserve.protocol.http_frontend")
    parser.add_argument("--relay", required=True, help="the serving process's Unix socket")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-request-bytes", type=int, required=True)
    parser.add_argument("--interactive-lane", type=int, default=1024)
    parser.add_argument("--batch-lane", type=int, default=64)
    parser.add_argument("--reuse-port", action="store_true")
    parser.add_argument(
        "--decode-inference", action="store_true", help="decode inference requests here"
    )
    parser.add_argument(
        "--open-access", action="store_true", help="the server authenticates nobody"
    )
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
