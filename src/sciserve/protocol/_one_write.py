"""uvicorn's HTTP/1.1 protocol with each response leaving in one system call.

Used by the serving process's HTTP listener and by the HTTP front ends.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["OneWriteHttp"]


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


class OneWriteHttp(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools), writing through :class:`_OneWrite`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(
            cast(asyncio.Transport, _OneWrite(cast(asyncio.Transport, transport)))
        )
