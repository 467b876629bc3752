"""The wire between gRPC front-end processes and the serving process.

A front end (:mod:`~sciserve.protocol.grpc_frontend`) terminates gRPC and
relays every call, as the serialized protobuf messages it received, over a
Unix socket to the serving process (:mod:`~sciserve.protocol.grpc_relay`),
which runs the same servicers the in-process gRPC server runs.  Both ends
are sciserve of the same installation, so the format carries no version.

A frame (:mod:`~sciserve.protocol._frames`) is a header (body length, call
id, kind) and a body:

=========== ========= ======================================================
kind        direction body
=========== ========= ======================================================
CALL        to server method index (u16), metadata length (u32), metadata
                      (JSON list of [key, value]), then the request message
                      (empty for a client-streaming call)
MESSAGE     to server one more request message of a streaming call
HALF_CLOSE  to server the client sent its last request message
CANCEL      to server the client has gone: stop the call
REPLY       to front   one response message (the only one of a unary call,
                      which ends it)
STATUS      to front   the call ended: code (u8), details length (u32),
                      details (UTF-8), trailing metadata (JSON)
=========== ========= ======================================================
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from google.protobuf import message_factory
from grpc_health.v1 import health_pb2
from tritonclient.grpc import service_pb2

from ._frames import HEADER, FrameReader, frame

__all__ = [
    "CALL",
    "CANCEL",
    "HALF_CLOSE",
    "HEADER",
    "MESSAGE",
    "METHODS",
    "REPLY",
    "STATUS",
    "FrameReader",
    "Method",
    "call_body",
    "frame",
    "parse_call",
    "parse_status",
    "status_body",
]

_CALL = struct.Struct("<HI")
_STATUS = struct.Struct("<BI")

CALL, MESSAGE, HALF_CLOSE, CANCEL, REPLY, STATUS = range(1, 7)

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Method:
    """One RPC both ends serve, found by its index in :data:`METHODS`."""

    service: str
    name: str
    client_streaming: bool
    server_streaming: bool
    request: Any  # the generated message class
    response: Any

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"


def _methods() -> tuple[Method, ...]:
    services = (
        service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
        health_pb2.DESCRIPTOR.services_by_name["Health"],
    )
    return tuple(
        Method(
            service.full_name,
            method.name,
            method.client_streaming,
            method.server_streaming,
            message_factory.GetMessageClass(method.input_type),
            message_factory.GetMessageClass(method.output_type),
        )
        for service in services
        for method in service.methods
    )


#: Every method of Triton's inference service and of the gRPC health service.
METHODS: tuple[Method, ...] = _methods()


def _metadata_json(metadata: Metadata) -> bytes:
    return json.dumps(metadata, separators=(",", ":")).encode()


def call_body(method: int, metadata: Metadata, message: bytes) -> bytes:
    packed = _metadata_json(metadata)
    return _CALL.pack(method, len(packed)) + packed + message


def parse_call(body: bytes) -> tuple[int, Metadata, bytes]:
    method, length = _CALL.unpack_from(body)
    start = _CALL.size
    pairs = json.loads(body[start : start + length])
    metadata = tuple((str(key), str(value)) for key, value in pairs)
    return method, metadata, body[start + length :]


def status_body(code: int, details: str, trailing: Metadata = ()) -> bytes:
    text = details.encode()
    return _STATUS.pack(code, len(text)) + text + _metadata_json(trailing)


def parse_status(body: bytes) -> tuple[int, str, Metadata]:
    code, length = _STATUS.unpack_from(body)
    start = _STATUS.size
    details = body[start : start + length].decode()
    pairs = json.loads(body[start + length :])
    return code, details, tuple((str(key), str(value)) for key, value in pairs)
