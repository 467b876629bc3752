"""Decoded inference requests and their outputs, on the HTTP relay.

The fast path for inference: an HTTP front end
(:mod:`~sciserve.protocol.http_frontend`) decodes an inference request's
body itself, with the very decoder the serving process runs in-process
(:func:`~sciserve.protocol.rest_codec.decode_infer_request`), and sends the
decoded request in an INFER frame (:mod:`~sciserve.protocol._http_frames`);
the serving process answers with the output tensors (OUTPUTS), which the
front end encodes as the REST adapter would.  Decoding JSON and encoding
responses were most of the serving process's work per request: with the
fast path they run in the front ends, on the other cores.

A payload here is the length of its *meta* (u32, little-endian), the meta
(a JSON object), then the raw bytes (:func:`~sciserve.datatypes.raw_buffer`)
of each tensor, in order, each copied once into the frame and read in place
at the other end::

    request:  {"id", "parameters", "size": bytes of the HTTP body,
               "inputs":  [[name, datatype, shape, parameters, nbytes], ...],
               "outputs": [[name, binary, parameters], ...]}
    response: {"model_name", "model_version", "id", "parameters",
               "outputs": [[name, datatype, shape, parameters, nbytes], ...]}

The model's name and version are not sent: the serving process takes them
from the request's path, as it does in-process.  Every value is rebuilt
into the checked types of :mod:`sciserve.serving.types`, so a malformed
payload fails there rather than reaching a model.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from typing import Any

import orjson

from ..datatypes import from_raw, raw_buffer
from ..serving.types import (
    InferenceRequest,
    InferenceResponse,
    InferInput,
    InferOutput,
    Parameters,
    RequestedOutput,
)
from ._frames import Buffer

__all__ = [
    "RelayedRequest",
    "parse_response",
    "request_payload",
    "response_payload",
    "tensors_only",
]

_LENGTH = struct.Struct("<I")


def _finite(parameters: Parameters) -> bool:
    return all(math.isfinite(v) for v in parameters.values() if type(v) is float)


def _dumps(doc: dict[str, Any], parameters: Iterable[Parameters]) -> bytes:
    """``doc`` as JSON that reads back to equal values.

    orjson is the fast way, but it writes NaN and infinities as ``null`` and
    refuses integers beyond 64 bits; parameters may hold either (json reads
    them from a client), and then json writes them.
    """
    if all(_finite(p) for p in parameters):
        try:
            return orjson.dumps(doc)
        except TypeError:
            pass
    return json.dumps(doc, separators=(",", ":")).encode()


def _loads(data: memoryview) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:  # what only json writes (see _dumps)
        return json.loads(bytes(data))


def _payload(
    meta: dict[str, Any], parameters: list[Parameters], blobs: list[Buffer]
) -> list[Buffer]:
    header = _dumps(meta, parameters)
    return [_LENGTH.pack(len(header)), header, *blobs]


def _split(payload: memoryview) -> tuple[Any, memoryview]:
    (length,) = _LENGTH.unpack_from(payload)
    end = _LENGTH.size + length
    return _loads(payload[_LENGTH.size : end]), payload[end:]


def _tensors(
    entries: list[Any], raw: memoryview
) -> list[tuple[str, str, tuple[int, ...], Any, Parameters]]:
    """``(name, datatype, shape, data, parameters)`` of each tensor entry,
    its data read in place from ``raw``, which they must fill exactly."""
    tensors = []
    offset = 0
    for name, datatype, shape, parameters, nbytes in entries:
        shape = tuple(shape)
        data = from_raw(raw[offset : offset + nbytes], datatype, shape)
        offset += nbytes
        tensors.append((name, datatype, shape, data, parameters))
    if offset != len(raw):
        raise ValueError(f"a relayed payload holds {len(raw) - offset} bytes past its tensors")
    return tensors


def _entries(tensors: Iterable[InferInput | InferOutput]) -> tuple[list[list[Any]], list[Buffer]]:
    """Each tensor's entry ``[name, datatype, shape, parameters, nbytes]``
    (what :func:`_tensors` reads back) and its raw bytes, in order."""
    entries: list[list[Any]] = []
    blobs: list[Buffer] = []
    for tensor in tensors:
        blob = raw_buffer(tensor.data, tensor.datatype)
        blobs.append(blob)
        entries.append([tensor.name, tensor.datatype, tensor.shape, tensor.parameters, blob.nbytes])
    return entries, blobs


# -- requests (front end → serving process) ------------------------------------


def request_payload(request: InferenceRequest, body_size: int) -> list[Buffer]:
    """The payload of an INFER frame: ``request`` as decoded from an HTTP
    body of ``body_size`` bytes."""
    inputs, blobs = _entries(request.inputs)
    outputs = [[o.name, o.binary, o.parameters] for o in request.outputs]
    meta = {
        "id": request.id,
        "parameters": request.parameters,
        "size": body_size,
        "inputs": inputs,
        "outputs": outputs,
    }
    parameters = [request.parameters, *(t.parameters for t in request.inputs)]
    parameters += [o.parameters for o in request.outputs]
    return _payload(meta, parameters, blobs)


class RelayedRequest:
    """An INFER frame's decoded request, as the serving process reads it."""

    __slots__ = ("_meta", "_raw", "body_size", "shapes")

    def __init__(self, payload: memoryview) -> None:
        self._meta, self._raw = _split(payload)
        #: Bytes of the HTTP body the front end read.
        self.body_size: int = int(self._meta["size"])
        #: Each input's shape, known before any tensor is built.
        self.shapes: list[tuple[int, ...]] = [tuple(i[2]) for i in self._meta["inputs"]]

    def request(self, model_name: str, model_version: str | None) -> InferenceRequest:
        """The request for the model the path names, checked as any request is."""
        meta = self._meta
        inputs = [InferInput(*tensor) for tensor in _tensors(meta["inputs"], self._raw)]
        outputs = [
            RequestedOutput(name, binary, params) for name, binary, params in meta["outputs"]
        ]
        return InferenceRequest(
            model_name=model_name,
            model_version=model_version,
            id=meta["id"],
            inputs=inputs,
            outputs=outputs,
            parameters=meta["parameters"],
        )


# -- responses (serving process → front end) ----------------------------------


def tensors_only(response: InferenceResponse) -> bool:
    """Whether ``response`` may travel as tensors for the front end to encode.

    ``BYTES`` outputs do not: encoding them can fail on what a model put in
    them (bytes that are not UTF-8, for JSON), and that error must be the
    one the in-process server gives, so the serving process encodes them.
    """
    return all(output.datatype != "BYTES" for output in response.outputs)


def response_payload(response: InferenceResponse) -> list[Buffer]:
    """The payload of an OUTPUTS frame."""
    outputs, blobs = _entries(response.outputs)
    meta = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "parameters": response.parameters,
        "outputs": outputs,
    }
    parameters = [response.parameters, *(t.parameters for t in response.outputs)]
    return _payload(meta, parameters, blobs)


def parse_response(payload: bytes) -> InferenceResponse:
    """An OUTPUTS frame's response, its tensors read in place from ``payload``."""
    meta, raw = _split(memoryview(payload))
    return InferenceResponse(
        model_name=meta["model_name"],
        model_version=meta["model_version"],
        id=meta["id"],
        outputs=[InferOutput(*tensor) for tensor in _tensors(meta["outputs"], raw)],
        parameters=meta["parameters"],
    )
