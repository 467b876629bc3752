"""The gRPC encoding of inference requests and responses.

Works on the ``inference.ModelInferRequest`` / ``ModelInferResponse``
messages of the Open Inference Protocol, as compiled in
``tritonclient.grpc.service_pb2`` (so field numbers match Triton exactly).

Input data arrives either

* in ``raw_input_contents``: one raw buffer per input, in input order (what
  ``tritonclient`` sends), in which case no input may also carry typed
  ``contents``; or
* in each input's typed ``contents`` field matching its datatype
  (``int_contents`` for ``INT8``/``INT16``/``INT32``, ``uint_contents`` for
  the narrow unsigned types, and so on).  ``FP16`` and ``BF16`` have no
  typed field and must be sent raw.

Responses always use ``raw_output_contents``, as Triton does.  Triton's
classification and shared-memory extensions are refused, as over REST.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from types import MappingProxyType
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from ..datatypes import (
    DATATYPES,
    check_element_total,
    check_shape,
    element_count,
    from_raw,
    numpy_dtype,
    to_raw,
)
from ..errors import InvalidInput
from ..serving.types import (
    InferenceRequest,
    InferenceResponse,
    InferInput,
    Parameters,
    RequestedOutput,
    refuse_extensions,
)

__all__ = [
    "decode_infer_request",
    "decode_parameters",
    "encode_infer_response",
    "encode_parameters",
]

# The typed contents field for each datatype, and the numpy dtype of the
# values protobuf hands back from it.
_CONTENTS: MappingProxyType[str, tuple[str, np.dtype[Any]]] = MappingProxyType(
    {
        "BOOL": ("bool_contents", np.dtype(np.bool_)),
        "INT8": ("int_contents", np.dtype(np.int32)),
        "INT16": ("int_contents", np.dtype(np.int32)),
        "INT32": ("int_contents", np.dtype(np.int32)),
        "INT64": ("int64_contents", np.dtype(np.int64)),
        "UINT8": ("uint_contents", np.dtype(np.uint32)),
        "UINT16": ("uint_contents", np.dtype(np.uint32)),
        "UINT32": ("uint_contents", np.dtype(np.uint32)),
        "UINT64": ("uint64_contents", np.dtype(np.uint64)),
        "FP32": ("fp32_contents", np.dtype(np.float32)),
        "FP64": ("fp64_contents", np.dtype(np.float64)),
        "BYTES": ("bytes_contents", np.dtype(object)),
    }
)
_CONTENTS_FIELDS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
)
_INT64 = (-(2**63), 2**63 - 1)
_UINT64_MAX = 2**64 - 1


def decode_infer_request(
    msg: service_pb2.ModelInferRequest, *, max_elements: int | None = None
) -> InferenceRequest:
    """Decode a ``ModelInferRequest`` into an :class:`InferenceRequest`.

    Raw input tensors are read-only views over the message's bytes.  An
    empty ``model_version`` or ``id`` becomes ``None``.  Inputs declaring
    more than ``max_elements`` elements in all are refused before any
    tensor is built.
    """
    raw_contents = msg.raw_input_contents
    if raw_contents and len(raw_contents) != len(msg.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw_contents)} entries but the request has "
            f"{len(msg.inputs)} inputs; give exactly one per input, in input order"
        )
    shapes = [check_shape(list(t.shape), f"input {t.name!r}") for t in msg.inputs]
    check_element_total(shapes, max_elements)
    inputs: list[InferInput] = []
    for index, tensor in enumerate(msg.inputs):
        name = tensor.name
        if not name:
            raise InvalidInput(f"inputs[{index}].name must be a non-empty string")
        label = f"input {name!r}"
        datatype = tensor.datatype
        if datatype not in DATATYPES:
            raise InvalidInput(
                f"{label}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
            )
        shape = shapes[index]
        parameters = decode_parameters(tensor.parameters, f"{label} parameters")
        refuse_extensions(parameters, label)
        try:
            if raw_contents:
                _require_no_contents(tensor)
                data = from_raw(raw_contents[index], datatype, shape)
            else:
                data = _from_contents(tensor.contents, datatype, shape)
        except InvalidInput as exc:
            raise InvalidInput(f"{label}: {exc}") from exc
        inputs.append(InferInput(name, datatype, shape, data, parameters))

    outputs: list[RequestedOutput] = []
    for index, requested in enumerate(msg.outputs):
        if not requested.name:
            raise InvalidInput(f"outputs[{index}].name must be a non-empty string")
        label = f"output {requested.name!r}"
        parameters = decode_parameters(requested.parameters, f"{label} parameters")
        refuse_extensions(parameters, label)
        outputs.append(RequestedOutput(requested.name, None, parameters))

    return InferenceRequest(
        model_name=msg.model_name,
        model_version=msg.model_version or None,
        id=msg.id or None,
        inputs=inputs,
        outputs=outputs,
        parameters=decode_parameters(msg.parameters, "request parameters"),
    )


def encode_infer_response(resp: InferenceResponse) -> service_pb2.ModelInferResponse:
    """Encode an :class:`InferenceResponse`, every output in ``raw_output_contents``."""
    msg = service_pb2.ModelInferResponse(
        model_name=resp.model_name, model_version=resp.model_version, id=resp.id or ""
    )
    if resp.parameters:
        encode_parameters(resp.parameters, msg.parameters)
    for output in resp.outputs:
        tensor = msg.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        if output.parameters:
            encode_parameters(output.parameters, tensor.parameters)
        msg.raw_output_contents.append(to_raw(output.data, output.datatype))
    return msg


def decode_parameters(
    params: Mapping[str, service_pb2.InferParameter], where: str = "parameters"
) -> Parameters:
    """Convert a map of ``InferParameter`` messages to a plain dict.

    A parameter with no value set is :class:`~sciserve.errors.InvalidInput`.
    """
    out: Parameters = {}
    if not params:
        return out
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        if choice is None:
            raise InvalidInput(f"{where}: parameter {key!r} has no value")
        value = getattr(param, choice)
        if choice == "bool_param":
            out[key] = bool(value)
        elif choice == "double_param":
            out[key] = float(value)
        elif choice == "string_param":
            out[key] = str(value)
        else:  # int64_param, uint64_param
            out[key] = int(value)
    return out


def encode_parameters(
    params: Mapping[str, Any], target: MutableMapping[str, service_pb2.InferParameter]
) -> None:
    """Store ``params`` into a protobuf map of ``InferParameter`` messages.

    Integers use ``int64_param`` unless only ``uint64_param`` can hold them.
    """
    for key, value in params.items():
        param = target[key]
        # bool before int: True is an int in Python.
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            if _INT64[0] <= value <= _INT64[1]:
                param.int64_param = value
            elif 0 <= value <= _UINT64_MAX:
                param.uint64_param = value
            else:
                raise InvalidInput(f"parameter {key!r} = {value} does not fit in 64 bits")
        elif isinstance(value, float):
            param.double_param = value
        elif isinstance(value, str):
            param.string_param = value
        else:
            raise InvalidInput(
                f"parameter {key!r} must be a boolean, number or string, got {type(value).__name__}"
            )


def _from_contents(
    contents: service_pb2.InferTensorContents, datatype: str, shape: tuple[int, ...]
) -> np.ndarray[Any, Any]:
    """Decode an input's typed ``contents`` field."""
    entry = _CONTENTS.get(datatype)
    if entry is None:
        raise InvalidInput(f"{datatype} data has no typed contents field; send it raw")
    field, source = entry
    for other in _CONTENTS_FIELDS:
        if other != field and len(getattr(contents, other)):
            raise InvalidInput(f"{datatype} data must be in {field}, not {other}")
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"{field} has {len(values)} elements but shape {list(shape)} needs {count}"
        )
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    arr = np.fromiter(values, dtype=source, count=count)
    target = numpy_dtype(datatype)
    if target != source:
        # Protobuf has no 8- or 16-bit fields; narrower values travel widened.
        info = np.iinfo(target)
        if arr.size and (int(arr.min()) < info.min or int(arr.max()) > info.max):
            raise InvalidInput(f"{field} holds values out of range for {datatype}")
        arr = arr.astype(target)
    return arr.reshape(shape)


def _require_no_contents(tensor: service_pb2.ModelInferRequest.InferInputTensor) -> None:
    if not tensor.HasField("contents"):
        return
    contents = tensor.contents
    for field in _CONTENTS_FIELDS:
        if len(getattr(contents, field)):
            raise InvalidInput(
                f"{field} is set, but raw_input_contents is used: when raw_input_contents is "
                "given every input must be sent there"
            )
