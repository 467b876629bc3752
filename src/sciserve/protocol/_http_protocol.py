"""uvicorn's HTTP/1.1 protocol as sciserve's HTTP listeners use it.

Used by the serving process's HTTP listener and by the HTTP front ends.  Two
things differ from uvicorn's own:

* each response leaves in one system call (:class:`_OneWrite`);
* a request's head (request line and headers) is bounded: the parser
  keeps a head in memory until it ends, and uvicorn sets no limit of its
  own with httptools, so a client that never ended its headers kept the
  connection and the memory.  A head over :data:`MAX_HEAD_BYTES` is answered
  431 (a JSON error, as every other) and the connection closed, before more
  of it is parsed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["MAX_HEAD_BYTES", "HttpProtocol"]

#: Largest request head (request line and headers, in bytes) a listener
#: reads; nginx's default allows 32 KiB of headers, uvicorn's h11 16 KiB.
MAX_HEAD_BYTES = 64 * 1024


class _OneWrite:
    """A client connection's transport whose writes of one turn of the event
    loop leave in one system call.

    uvicorn writes a response's head and its body separately: two system
    calls, and two TCP segments the client wakes up for, where one does.
    Writes wait here until the turn ends (the head and body of a response are
    written in the same turn); everything else is the transport's own.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        data, self._pending = self._pending, []
        if data and not self._transport.is_closing():
            self._transport.write(data[0] if len(data) == 1 else b"".join(data))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools), writing through
    :class:`_OneWrite`, with a request head of at most :data:`MAX_HEAD_BYTES`."""

    # Bytes received since the current request's head began; None while its
    # body is read (the head is complete).
    _head_bytes: int | None = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(
            cast(asyncio.Transport, _OneWrite(cast(asyncio.Transport, transport)))
        )

    def data_received(self, data: bytes) -> None:
        # While a head is read, the parser gets no more than the head may
        # still take, so a head over the limit is caught at its first byte
        # too many, whatever the reads' sizes.  A head that ends within a
        # piece ends the counting: what follows is a body, or a pipelined
        # next head, counted from the next piece on (so it may take up to
        # twice the limit).  Bodies pass whole.
        while self._head_bytes is not None and data:
            room = MAX_HEAD_BYTES - self._head_bytes
            if room <= 0:
                self._refuse_head()
                return
            piece, data = (data, b"") if len(data) <= room else (data[:room], data[room:])
            self._head_bytes += len(piece)
            super().data_received(piece)
            if self.transport.is_closing():  # a parse error was answered
                return
        if data:
            super().data_received(data)

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._head_bytes = 0
        super().on_message_complete()

    def _refuse_head(self) -> None:
        self._head_bytes = None  # nothing more is read from this connection
        body = json.dumps(
            {"error": f"the request line and headers are over {MAX_HEAD_BYTES} bytes"}
        ).encode()
        head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        defaults = self.server_state.default_headers
        head += [name + b": " + value + b"\r\n" for name, value in defaults]
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body)
        )
        self.transport.write(b"".join(head) + body)
        self.transport.close()
