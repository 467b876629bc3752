"""Length-prefixed frames on a Unix socket between sciserve processes.

Shared by the gRPC relay (:mod:`~sciserve.protocol._relay_frames`) and the
HTTP relay (:mod:`~sciserve.protocol._http_frames`).  A frame is a header
(body length u32, call id u32, kind u8, little-endian) and a body.  Both
ends are sciserve of the same installation, so the format carries no
version.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

__all__ = ["HEADER", "Buffer", "FrameReader", "frame", "frame_of"]

HEADER = struct.Struct("<IIB")

#: What a frame's body may be built from: tensors travel as views of their arrays.
Buffer = bytes | bytearray | memoryview


def frame(call: int, kind: int, body: bytes = b"") -> bytes:
    """One frame: the header, then ``body``."""
    return HEADER.pack(len(body), call, kind) + body


def frame_of(call: int, kind: int, parts: Sequence[Buffer]) -> bytes:
    """One frame whose body is ``parts`` joined: each part is copied once,
    straight into the frame (a tensor's bytes are not joined first)."""
    size = sum(memoryview(part).nbytes for part in parts)
    return b"".join([HEADER.pack(size, call, kind), *parts])


class FrameReader:
    """Cut a byte stream into ``(call, kind, body)`` frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """The frames ``data`` completes, in order (possibly none)."""
        buffer = self._buffer
        buffer += data
        frames = []
        offset = 0
        size = HEADER.size
        # Bodies are cut through a view: one copy each, not two (a slice of
        # the bytearray, then bytes of it); a tensor may be megabytes.
        with memoryview(buffer) as view:
            while len(buffer) - offset >= size:
                length, call, kind = HEADER.unpack_from(buffer, offset)
                end = offset + size + length
                if len(buffer) < end:
                    break
                frames.append((call, kind, bytes(view[offset + size : end])))
                offset = end
        if offset:
            del buffer[:offset]
        return frames
