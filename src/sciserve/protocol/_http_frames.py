"""The wire between HTTP front-end processes and the serving process.

A front end (:mod:`~sciserve.protocol.http_frontend`) parses HTTP/1.1 and
relays every request over a Unix socket to the serving process
(:mod:`~sciserve.protocol.http_relay`), which runs it through the same ASGI
application the in-process HTTP server runs.  Frames are those of
:mod:`~sciserve.protocol._frames`; the call id names one request.

============ ========= =====================================================
kind         direction body
============ ========= =====================================================
REQUEST      to server a :class:`Head` (see :func:`request_body`), then the
                       first part of the request body
BODY         to server more of the request body
END          to server the request body is complete
DISCONNECT   to server the client went away
START        to front  status, headers and whether more body follows
                       (:func:`start_body`), then the first part of the
                       response body
CHUNK        to front  more of the response body
FINISH       to front  the last part of the response body
ADVICE       to front  (call 0) what the front end may decide alone: a
                       credential's priority class, or a model whose queue
                       is full (:func:`advice_body`)
CONSUMED     to front  the application read this many more bytes (u64) of
                       the request body: room to send as many more
DELIVERED    to server the front end wrote this many more bytes (u64) of
                       the response body to its client: room for as many
ABORT        to front  the application failed mid-response: close the
                       client's connection (a truncated body must not look
                       complete)
INFER        to server an inference request the front end decoded: a
                       :class:`Head` (its body complete), then the decoded
                       request (:mod:`~sciserve.protocol._infer_frames`)
OUTPUTS      to front  the answer to an INFER: the output tensors, for the
                       front end to encode (an error comes as START instead)
============ ========= =====================================================

Bodies are flow-controlled both ways: a front end has at most
:data:`WINDOW` bytes of one request's body sent and not yet read by the
application, and the application at most as many of one response's body
sent and not yet written to the client; so a large upload or download to a
slow peer waits in TCP, not in either process's memory.

Heads are lists of byte strings: their count (u32), each one's length
(u32), then the strings; the body follows.  Building and cutting them is a
``struct`` call and a few slices, and a client's bytes are only ever values.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "ABORT",
    "ADVICE",
    "BODY",
    "CHUNK",
    "CONSUMED",
    "CONSUMED_BYTES",
    "DELIVERED",
    "DISCONNECT",
    "END",
    "FINISH",
    "INFER",
    "OUTPUTS",
    "REQUEST",
    "START",
    "WINDOW",
    "Advice",
    "Head",
    "advice_body",
    "parse_advice",
    "parse_infer",
    "parse_request",
    "parse_start",
    "request_body",
    "request_head",
    "start_body",
]

(REQUEST, BODY, END, DISCONNECT, START, CHUNK, FINISH, ADVICE, CONSUMED, DELIVERED,
 ABORT, INFER, OUTPUTS) = range(1, 14)  # fmt: skip

#: Bytes of one body either side may send ahead of the other's reading.
WINDOW = 1 << 20
#: The body of CONSUMED and DELIVERED.
CONSUMED_BYTES = struct.Struct("<Q")

_COUNT = struct.Struct("<I")
_REQUEST_FIELDS = 12

Headers = list[tuple[bytes, bytes]]


class Head(NamedTuple):
    """What the ASGI scope of a relayed request needs, as the front end parsed it.

    (A named tuple: built once per request on both sides, the cheapest record.)
    """

    method: str
    path: str
    raw_path: bytes
    query_string: bytes
    headers: Headers
    client: tuple[str, int] | None
    server: tuple[str, int] | None
    scheme: str
    http_version: str
    #: Keyed hash of the Authorization header (b"" without one).
    credential: bytes
    #: The front end does not know the credential's class: tell it.
    ask_class: bool
    #: More of the body follows in BODY frames, then END.
    more_body: bool
    #: The client waits for "100 Continue": the front end reads its body only
    #: once the application does (the first CONSUMED frame opens the window).
    awaits_read: bool = False


def _pack(fields: list[bytes], body: bytes = b"") -> bytes:
    lengths = struct.pack(f"<I{len(fields)}I", len(fields), *map(len, fields))
    return lengths + b"".join(fields) + body


def _fields(data: bytes) -> tuple[list[bytes], int]:
    """The strings at the start of ``data``, and where what follows them starts."""
    (count,) = _COUNT.unpack_from(data)
    lengths = struct.unpack_from(f"<{count}I", data, _COUNT.size)
    offset = _COUNT.size + 4 * count
    fields = []
    for length in lengths:
        fields.append(data[offset : offset + length])
        offset += length
    return fields, offset


def _unpack(data: bytes) -> tuple[list[bytes], bytes]:
    fields, offset = _fields(data)
    return fields, data[offset:]


def _address(address: tuple[str, int] | None) -> list[bytes]:
    if address is None:
        return [b"", b""]
    return [address[0].encode(), str(address[1]).encode()]


def _parse_address(host: bytes, port: bytes) -> tuple[str, int] | None:
    return None if not port else (host.decode(), int(port))


def _flat(headers: Headers) -> list[bytes]:
    return [part for pair in headers for part in pair]


def _pairs(flat: list[bytes]) -> Headers:
    return list(zip(flat[0::2], flat[1::2], strict=True))


def request_head(head: Head) -> bytes:
    """``head`` as the start of a REQUEST or INFER frame's body."""
    flags = (1 if head.ask_class else 0) | (2 if head.more_body else 0)
    flags |= 4 if head.awaits_read else 0
    fields = [
        head.method.encode(), head.path.encode(), head.raw_path, head.query_string,
        *_address(head.client), *_address(head.server), head.scheme.encode(),
        head.http_version.encode(), head.credential, bytes([flags]),
    ]  # fmt: skip
    return _pack(fields + _flat(head.headers))


def request_body(head: Head, body: bytes) -> bytes:
    return request_head(head) + body


def _head(fields: list[bytes]) -> Head:
    (method, path, raw_path, query, client_host, client_port, server_host, server_port,
     scheme, version, credential, flags) = fields[:_REQUEST_FIELDS]  # fmt: skip
    return Head(
        method.decode(), path.decode(), raw_path, query, _pairs(fields[_REQUEST_FIELDS:]),
        _parse_address(client_host, client_port), _parse_address(server_host, server_port),
        scheme.decode(), version.decode(), credential, bool(flags[0] & 1), bool(flags[0] & 2),
        bool(flags[0] & 4),
    )  # fmt: skip


def parse_request(data: bytes) -> tuple[Head, bytes]:
    fields, body = _unpack(data)
    return _head(fields), body


def parse_infer(data: bytes) -> tuple[Head, memoryview]:
    """An INFER frame's head, and the decoded request after it as a view
    (its tensors are read in place, not copied again)."""
    fields, offset = _fields(data)
    return _head(fields), memoryview(data)[offset:]


def start_body(status: int, headers: Headers, more: bool, body: bytes) -> bytes:
    return _pack([str(status).encode(), b"1" if more else b"", *_flat(headers)], body)


def parse_start(data: bytes) -> tuple[int, Headers, bool, bytes]:
    fields, body = _unpack(data)
    return int(fields[0]), _pairs(fields[2:]), bool(fields[1]), body


@dataclass(frozen=True)
class Advice:
    """One piece of advice from the serving process.

    ``kind`` is ``"class"`` (``key`` is a credential's keyed hash, ``value``
    its priority class) or ``"saturated"`` (``key`` is a model's name as
    it appears in paths, ``value`` the seconds its queue stays full, and
    ``body`` the JSON error the server answered with).
    """

    kind: str
    key: bytes
    value: float
    body: bytes = b""


def advice_body(advice: Advice) -> bytes:
    return _pack([advice.kind.encode(), advice.key, repr(advice.value).encode(), advice.body])


def parse_advice(data: bytes) -> Advice:
    (kind, key, value, body), _ = _unpack(data)
    return Advice(kind.decode(), key, float(value), body)
