"""The REST (HTTP/JSON) encoding of inference requests and responses.

Implements the request and response bodies of the Open Inference Protocol
with Triton's *binary tensor data* extension, so that the unmodified
``tritonclient.http`` works against sciserve:

* The body is a JSON object, optionally followed by a *binary section*.  The
  ``Inference-Header-Content-Length`` HTTP header gives the JSON length;
  without it the whole body is JSON.
* An input with ``parameters.binary_data_size`` takes that many bytes of the
  binary section, in input order, in raw form (see
  :mod:`sciserve.datatypes`); the binary section must be consumed
  exactly.
* ``outputs[].parameters.binary_data`` asks for one output in binary form;
  the request parameter ``binary_data_output`` sets the default for all.

Triton's *classification* and *shared-memory* extensions are not
implemented; requests using them are refused with a clear message rather
than answered wrongly.

Everything a client can get wrong raises
:class:`~sciserve.errors.InvalidInput` (or its subclass
:class:`~sciserve.errors.PayloadTooLarge`); mapping that to an HTTP status is
the server's job.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ..datatypes import (
    DATATYPES,
    check_element_total,
    check_shape,
    from_json_data,
    from_raw,
    raw_buffer,
    to_json_data,
)
from ..errors import InvalidInput, PayloadTooLarge
from ..serving.types import (
    InferenceRequest,
    InferenceResponse,
    InferInput,
    Parameters,
    RequestedOutput,
    check_parameters,
    refuse_extensions,
)

__all__ = [
    "HEADER_LENGTH_HEADER",
    "decode_infer_request",
    "encode_error",
    "encode_infer_response",
    "infer_response_headers",
    "wants_binary_output",
]

#: The HTTP header that carries the JSON length when a binary section follows.
HEADER_LENGTH_HEADER = "Inference-Header-Content-Length"


@dataclass(frozen=True, slots=True)
class _InputSpec:
    """An input whose JSON is validated but whose data is not decoded yet."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    parameters: Parameters
    data: object
    binary_size: int | None


def decode_infer_request(
    body: bytes | bytearray | memoryview,
    header_length: int | None,
    *,
    model_name: str,
    model_version: str | None,
    max_body_bytes: int,
    max_elements: int | None = None,
) -> InferenceRequest:
    """Decode an inference request body.

    ``header_length`` is the value of the ``Inference-Header-Content-Length``
    header (``None`` when absent); ``model_name`` and ``model_version`` come
    from the URL.  Binary input tensors are returned as read-only views over
    ``body``, without copying.  Inputs declaring more than ``max_elements``
    elements in all are refused before any tensor is built.
    """
    view = memoryview(body).cast("B")
    size = len(view)
    if size > max_body_bytes:
        raise PayloadTooLarge(f"request body is {size} bytes; the limit is {max_body_bytes} bytes")
    whole_body = header_length is None
    if header_length is None:
        header_length = size
    elif header_length < 0:
        raise InvalidInput(f"{HEADER_LENGTH_HEADER} must not be negative, got {header_length}")
    elif header_length > size:
        raise InvalidInput(f"{HEADER_LENGTH_HEADER} ({header_length}) exceeds body length ({size})")
    if whole_body or header_length > _REMEMBERED_HEADER:
        head = _header(_parse_json(view[:header_length], whole_body))
    else:
        head = _binary_header(bytes(view[:header_length]))
    binary = view[header_length:]
    specs = head.inputs
    check_element_total([spec.shape for spec in specs], max_elements)
    _check_binary_section(specs, len(binary))
    inputs: list[InferInput] = []
    offset = 0
    for spec in specs:
        chunk = None
        if spec.binary_size is not None:
            chunk = binary[offset : offset + spec.binary_size]
            offset += spec.binary_size
        data = _decode_data(spec, chunk)
        inputs.append(InferInput(spec.name, spec.datatype, spec.shape, data, spec.parameters))

    # Fresh objects for every request: the dataclasses copy the parameters,
    # so nothing a caller does to one request reaches a remembered header.
    outputs = [RequestedOutput(out.name, out.binary, out.parameters) for out in head.outputs]
    return InferenceRequest(
        model_name=model_name,
        model_version=model_version,
        id=head.id,
        inputs=inputs,
        outputs=outputs,
        parameters=head.parameters,
    )


@dataclass(frozen=True, slots=True)
class _Header:
    """What the JSON of a request says, validated, before any tensor is built."""

    id: str | None
    parameters: Parameters
    inputs: tuple[_InputSpec, ...]
    outputs: tuple[RequestedOutput, ...]


def _header(doc: dict[str, Any]) -> _Header:
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    parameters = check_parameters(doc.get("parameters"), "parameters")
    default_binary = _optional_bool(parameters, "binary_data_output", "parameters")
    inputs = tuple(_input_specs(doc.get("inputs")))
    outputs = tuple(_requested_outputs(doc.get("outputs"), default_binary))
    return _Header(request_id, parameters, inputs, outputs)


#: Binary-extension headers up to this many bytes are remembered.
_REMEMBERED_HEADER = 4096


@functools.lru_cache(maxsize=256)
def _binary_header(header: bytes) -> _Header:
    """:func:`_header` of a binary-extension request's JSON, remembered.

    A client sending tensors in binary sends the same small JSON header
    (names, datatypes, shapes) with every request of a given shape, and
    validating it costs more than the rest of decoding; the tensors, which
    differ every time, are never part of it.  A pure function of the bytes,
    so remembering it changes no answer; errors are not remembered.
    """
    return _header(_parse_json(memoryview(header), False))


def wants_binary_output(request: InferenceRequest) -> bool:
    """Whether outputs the client did not specify should be sent in binary.

    That is the request's ``binary_data_output`` parameter; pass it as
    ``binary_default`` to :func:`encode_infer_response`.
    """
    return request.parameters.get("binary_data_output") is True


def encode_infer_response(
    resp: InferenceResponse, requested: Sequence[RequestedOutput], *, binary_default: bool
) -> tuple[bytes, int | None]:
    """Encode a response body; returns ``(body, header_length)``.

    Every output of ``resp`` is encoded, in order (choosing which outputs
    to return is the caller's business); ``requested`` only decides each
    output's encoding, and outputs it does not mention, or whose
    ``binary`` is ``None``, follow ``binary_default``.  Binary outputs carry
    ``parameters.binary_data_size`` instead of ``data`` and their bytes
    follow the JSON in output order.

    ``header_length`` is the JSON length for the
    ``Inference-Header-Content-Length`` header, or ``None`` when no output
    is binary and the header must be omitted.
    """
    choice = {output.name: output.binary for output in requested}
    finite = True  # no NaN or infinity among the JSON data
    entries: list[dict[str, Any]] = []
    blobs: list[memoryview] = []
    for output in resp.outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
        }
        parameters: dict[str, Any] = dict(output.parameters)
        binary = choice.get(output.name)
        if binary is None:
            binary = binary_default
        if binary:
            blob = raw_buffer(output.data, output.datatype)
            parameters["binary_data_size"] = blob.nbytes
            blobs.append(blob)
        else:
            entry["data"] = to_json_data(output.data, output.datatype)
            if output.data.dtype.kind in "fc" and not np.isfinite(output.data).all():
                finite = False
        if parameters:
            entry["parameters"] = parameters
        entries.append(entry)

    doc: dict[str, Any] = {"model_name": resp.model_name, "model_version": resp.model_version}
    if resp.id is not None:
        doc["id"] = resp.id
    if resp.parameters:
        doc["parameters"] = resp.parameters
    doc["outputs"] = entries
    header = _dumps(doc, finite)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def infer_response_headers(length: int, header_length: int | None) -> list[tuple[bytes, bytes]]:
    """The HTTP headers of an inference response body of ``length`` bytes
    (``header_length`` as :func:`encode_infer_response` returns it).

    One list, in one order, for the in-process server and the HTTP front
    ends that encode responses themselves: their answers are the same bytes.
    """
    size = str(length).encode()
    if header_length is None:
        return [(b"content-length", size), (b"content-type", b"application/json")]
    return [
        (HEADER_LENGTH_HEADER.lower().encode(), str(header_length).encode()),
        (b"content-length", size),
        (b"content-type", b"application/octet-stream"),
    ]


def _dumps(doc: dict[str, Any], finite: bool) -> bytes:
    """Compact JSON for a response header.

    orjson is several times faster on long lists of floats but writes NaN
    and infinities as ``null``; the protocol's readers (rapidjson, Python)
    expect ``NaN`` / ``Infinity``, which only json writes.
    """
    if finite:
        try:
            return orjson.dumps(doc)
        except TypeError:  # e.g. an integer beyond 64 bits in the parameters
            pass
    # ensure_ascii (the default) keeps the body plain ASCII.
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


def encode_error(message: str) -> bytes:
    """The protocol's error body, ``{"error": message}``."""
    return json.dumps({"error": message}).encode("ascii")


# -- request parts -----------------------------------------------------------


def _parse_json(header: memoryview, whole_body: bool) -> dict[str, Any]:
    try:
        # orjson parses a tensor of floats ten times faster than json.  It is
        # stricter (no NaN / Infinity, no integers beyond 64 bits, nesting up
        # to 1024), so what it refuses goes through json, which decides and
        # words the error: the accepted language is json's either way.
        doc = orjson.loads(header)
    except orjson.JSONDecodeError:
        doc = _parse_json_strictly(header, whole_body)
    if not isinstance(doc, dict):
        raise InvalidInput(f"request body must be a JSON object, got {_json_type(doc)}")
    return doc


def _parse_json_strictly(header: memoryview, whole_body: bool) -> object:
    """Parse with json, turning every failure into a clear :class:`InvalidInput`."""
    # A client that sends binary data but forgets the length header makes the
    # whole body look like broken JSON: say so.
    hint = f" (binary data needs the {HEADER_LENGTH_HEADER} header)" if whole_body else ""
    try:
        text = str(header, "utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"request body is not valid UTF-8: {exc}{hint}") from exc
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise InvalidInput("request body is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, or an integer with too many digits
        raise InvalidInput(f"request body is not valid JSON: {exc}{hint}") from exc


def _input_specs(raw: object) -> list[_InputSpec]:
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("'inputs' must be a non-empty list of input tensors")
    specs: list[_InputSpec] = []
    for index, entry in enumerate(raw):
        where = f"inputs[{index}]"
        if not isinstance(entry, dict):
            raise InvalidInput(f"{where} must be an object, got {_json_type(entry)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"{where}.name must be a non-empty string")
        label = f"input {name!r}"
        datatype = entry.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidInput(f"{label}: 'datatype' must be a string")
        if datatype not in DATATYPES:
            raise InvalidInput(
                f"{label}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
            )
        if "shape" not in entry:
            raise InvalidInput(f"{label}: 'shape' is missing")
        shape = check_shape(entry["shape"], label)
        parameters = check_parameters(entry.get("parameters"), f"{where}.parameters")
        refuse_extensions(parameters, label)
        binary_size = _binary_data_size(parameters, label)
        has_data = "data" in entry
        if has_data and binary_size is not None:
            raise InvalidInput(f"{label} has both 'data' and parameters.binary_data_size")
        if not has_data and binary_size is None:
            raise InvalidInput(f"{label} has no data: give 'data' or parameters.binary_data_size")
        specs.append(_InputSpec(name, datatype, shape, parameters, entry.get("data"), binary_size))
    return specs


def _binary_data_size(parameters: Parameters, label: str) -> int | None:
    size = parameters.pop("binary_data_size", None)
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"{label}: binary_data_size must be a non-negative integer")
    return size


def _check_binary_section(specs: Sequence[_InputSpec], available: int) -> None:
    declared = sum(spec.binary_size or 0 for spec in specs)
    if declared > available:
        raise InvalidInput(
            f"binary data truncated: inputs declare {declared} bytes of binary data "
            f"but the body holds {available} after the JSON header"
        )
    if declared < available:
        raise InvalidInput(
            f"body has {available - declared} trailing bytes after the binary data of "
            f"the inputs (check {HEADER_LENGTH_HEADER} and binary_data_size)"
        )


def _requested_outputs(raw: object, default_binary: bool | None) -> list[RequestedOutput]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be a list")
    outputs: list[RequestedOutput] = []
    for index, entry in enumerate(raw):
        where = f"outputs[{index}]"
        if not isinstance(entry, dict):
            raise InvalidInput(f"{where} must be an object, got {_json_type(entry)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"{where}.name must be a non-empty string")
        label = f"output {name!r}"
        parameters = check_parameters(entry.get("parameters"), f"{where}.parameters")
        refuse_extensions(parameters, label)
        binary = _optional_bool(parameters, "binary_data", f"{where}.parameters")
        parameters.pop("binary_data", None)
        outputs.append(
            RequestedOutput(name, binary if binary is not None else default_binary, parameters)
        )
    return outputs


def _optional_bool(parameters: Parameters, key: str, where: str) -> bool | None:
    value = parameters.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise InvalidInput(f"{where}.{key} must be a boolean")


def _decode_data(spec: _InputSpec, chunk: memoryview | None) -> np.ndarray[Any, Any]:
    """Decode one input's data, naming the input in any error."""
    try:
        if chunk is None:
            return from_json_data(spec.data, spec.datatype, spec.shape)
        return from_raw(chunk, spec.datatype, spec.shape)
    except InvalidInput as exc:
        raise InvalidInput(f"input {spec.name!r}: {exc}") from exc


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"
