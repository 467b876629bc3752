"""The gRPC codec against the real ``tritonclient.grpc`` message builders."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2
from tritonclient.grpc._utils import _get_inference_request

from sciserve.datatypes import DATATYPES
from sciserve.errors import InvalidInput
from sciserve.protocol.grpc_codec import (
    decode_infer_request,
    decode_parameters,
    encode_infer_response,
    encode_parameters,
)
from sciserve.serving.types import InferenceRequest, InferenceResponse, InferOutput

TYPED = [d for d in DATATYPES if d not in ("FP16", "BF16")]


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray[Any, Any]:
    """A deterministic array of ``datatype``, covering each type's extremes."""
    count = int(np.prod(shape))
    if datatype == "BYTES":
        return np.array([bytes([i]) * i + b"\xff" for i in range(count)], dtype=object).reshape(
            shape
        )
    if datatype == "BOOL":
        return np.asarray(np.arange(count) % 3 == 1).reshape(shape)
    if datatype == "BF16":
        return (np.arange(count) * 0.75 - 1).astype(ml_dtypes.bfloat16).reshape(shape)
    dtype = np.dtype(datatype.lower().replace("fp", "float"))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = [info.min, info.max, 0, 1, info.max // 3, info.min + 1]
        return np.array((values * count)[:count], dtype=dtype).reshape(shape)
    return (np.arange(count) * 2.5 - 4).astype(dtype).reshape(shape)


def client_request(
    inputs: list[grpcclient.InferInput],
    outputs: list[grpcclient.InferRequestedOutput] | None = None,
    **options: Any,
) -> service_pb2.ModelInferRequest:
    """The message tritonclient's ``infer()`` sends, after a trip over the wire."""
    settings = {
        "model_version": "",
        "request_id": "",
        "sequence_id": 0,
        "sequence_start": False,
        "sequence_end": False,
        "priority": 0,
        "timeout": None,
        "parameters": None,
        **options,
    }
    msg = _get_inference_request(model_name="m", inputs=inputs, outputs=outputs, **settings)
    return service_pb2.ModelInferRequest.FromString(msg.SerializeToString())


def client_input(name: str, arr: np.ndarray[Any, Any], datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(arr.shape), datatype)
    tensor.set_data_from_numpy(arr)
    return tensor


def typed_request(
    datatype: str, shape: list[int], field: str, values: list[Any]
) -> service_pb2.ModelInferRequest:
    msg = service_pb2.ModelInferRequest(model_name="m")
    tensor = msg.inputs.add(name="x", datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return msg


# -- requests ------------------------------------------------------------------


@pytest.mark.parametrize("datatype", DATATYPES)
def test_raw_inputs_from_tritonclient(datatype: str) -> None:
    arr = sample(datatype)
    request = decode_infer_request(client_request([client_input("x", arr, datatype)]))
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("x", datatype, (2, 3))
    assert tensor.data.dtype == arr.dtype
    np.testing.assert_array_equal(tensor.data, arr)


def test_full_request_from_tritonclient() -> None:
    a, b, e = sample("FP64", (3, 1)), sample("BYTES", (4,)), np.zeros((2, 0), np.int16)
    msg = client_request(
        [
            client_input("a", a, "FP64"),
            client_input("b", b, "BYTES"),
            client_input("e", e, "INT16"),
        ],
        [grpcclient.InferRequestedOutput("y"), grpcclient.InferRequestedOutput("z")],
        model_version="3",
        request_id="r-9",
        sequence_id="seq",
        sequence_start=True,
        priority=2,
        timeout=500,
        parameters={"note": "hi", "flag": False, "n": -4, "x": 0.25},
    )
    request = decode_infer_request(msg)
    assert (request.model_name, request.model_version, request.id) == ("m", "3", "r-9")
    np.testing.assert_array_equal(request.input("a").data, a)
    assert request.input("b").data.tolist() == b.tolist()
    assert request.input("e").data.shape == (2, 0)
    assert [(o.name, o.binary) for o in request.outputs] == [("y", None), ("z", None)]
    assert request.parameters == {
        "sequence_id": "seq",
        "sequence_start": True,
        "sequence_end": False,
        "priority": 2,
        "timeout": 500,
        "note": "hi",
        "flag": False,
        "n": -4,
        "x": 0.25,
    }


def test_empty_version_and_id_become_none() -> None:
    request = decode_infer_request(client_request([client_input("x", sample("INT8"), "INT8")]))
    assert request.model_version is None
    assert request.id is None


@pytest.mark.parametrize("datatype", TYPED)
def test_typed_contents(datatype: str) -> None:
    arr = sample(datatype)
    field = {
        "BOOL": "bool_contents",
        "INT8": "int_contents",
        "INT16": "int_contents",
        "INT32": "int_contents",
        "INT64": "int64_contents",
        "UINT8": "uint_contents",
        "UINT16": "uint_contents",
        "UINT32": "uint_contents",
        "UINT64": "uint64_contents",
        "FP32": "fp32_contents",
        "FP64": "fp64_contents",
        "BYTES": "bytes_contents",
    }[datatype]
    msg = typed_request(datatype, [2, 3], field, arr.ravel().tolist())
    wire = service_pb2.ModelInferRequest.FromString(msg.SerializeToString())
    (tensor,) = decode_infer_request(wire).inputs
    assert tensor.data.dtype == arr.dtype
    assert tensor.data.shape == (2, 3)
    np.testing.assert_array_equal(tensor.data, arr)


# -- responses -----------------------------------------------------------------


def parse(resp: InferenceResponse) -> grpcclient.InferResult:
    wire = encode_infer_response(resp).SerializeToString()
    return grpcclient.InferResult(service_pb2.ModelInferResponse.FromString(wire))


@pytest.mark.parametrize("datatype", DATATYPES)
def test_response_parsed_by_tritonclient(datatype: str) -> None:
    arr = sample(datatype, (3, 2))
    result = parse(InferenceResponse("m", "1", None, [InferOutput.from_numpy("y", arr)]))
    got = result.as_numpy("y")
    assert got.dtype == arr.dtype
    assert got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)


def test_mixed_response_parsed_by_tritonclient() -> None:
    outputs = {
        "probs": sample("FP32", (2, 5)),
        "names": np.array([b"M31", b"\x00\xff"], dtype=object),
        "empty": np.zeros((0, 4), dtype=np.uint8),
        "mask": sample("BOOL", (2,)),
    }
    resp = InferenceResponse(
        "m",
        "7",
        "req-3",
        [
            InferOutput.from_numpy(n, a, {"unit": "dex"} if n == "probs" else None)
            for n, a in outputs.items()
        ],
        {"batch": 2, "big": 2**64 - 1},
    )
    result = parse(resp)
    for name, arr in outputs.items():
        got = result.as_numpy(name)
        assert got.shape == arr.shape, name
        np.testing.assert_array_equal(got, arr)
    msg = result.get_response()
    assert (msg.model_name, msg.model_version, msg.id) == ("m", "7", "req-3")
    assert decode_parameters(msg.parameters) == {"batch": 2, "big": 2**64 - 1}
    assert msg.parameters["big"].WhichOneof("parameter_choice") == "uint64_param"
    assert decode_parameters(msg.outputs[0].parameters) == {"unit": "dex"}
    assert len(msg.raw_output_contents) == len(outputs)


# -- parameters ----------------------------------------------------------------


def test_parameters_round_trip() -> None:
    params = {"b": True, "i": -(2**63), "u": 2**63, "f": 1.5, "s": "é", "zero": 0}
    msg = service_pb2.ModelInferResponse()
    encode_parameters(params, msg.parameters)
    wire = service_pb2.ModelInferResponse.FromString(msg.SerializeToString())
    decoded = decode_parameters(wire.parameters)
    assert decoded == params
    assert [type(decoded[k]) for k in params] == [bool, int, int, float, str, int]
    kinds = {k: wire.parameters[k].WhichOneof("parameter_choice") for k in params}
    assert kinds == {
        "b": "bool_param",
        "i": "int64_param",
        "u": "uint64_param",
        "f": "double_param",
        "s": "string_param",
        "zero": "int64_param",
    }


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, None, [1]])
def test_encode_parameters_rejects(value: object) -> None:
    with pytest.raises(InvalidInput, match="'p'"):
        encode_parameters({"p": value}, service_pb2.ModelInferResponse().parameters)


def test_parameter_without_value() -> None:
    msg = typed_request("INT32", [1], "int_contents", [1])
    msg.parameters["empty"].CopyFrom(service_pb2.InferParameter())
    with pytest.raises(InvalidInput, match="request parameters: parameter 'empty' has no value"):
        decode_infer_request(msg)


# -- hostile and malformed requests --------------------------------------------


def raw_request(
    *tensors: tuple[str, str, list[int]], raw: list[bytes]
) -> service_pb2.ModelInferRequest:
    msg = service_pb2.ModelInferRequest(model_name="m")
    for name, datatype, shape in tensors:
        msg.inputs.add(name=name, datatype=datatype, shape=shape)
    msg.raw_input_contents.extend(raw)
    return msg


FOUR = np.arange(4, dtype="<f4").tobytes()


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        (
            raw_request(("a", "FP32", [4]), ("b", "FP32", [4]), raw=[FOUR]),
            "raw_input_contents has 1 entries but the request has 2 inputs",
        ),
        (
            raw_request(("a", "FP32", [4]), raw=[FOUR, FOUR]),
            "raw_input_contents has 2 entries but the request has 1 inputs",
        ),
        (
            raw_request(("a", "FP32", [5]), raw=[FOUR]),
            "input 'a': raw data is 16 bytes .* needs 20",
        ),
        (raw_request(("a", "FP64", [4]), raw=[FOUR[:15]]), "raw data is 15 bytes"),
        (raw_request(("a", "FP32", [2**40]), raw=[FOUR]), "needs 4398046511104"),
        (raw_request(("a", "BYTES", [2**40]), raw=[FOUR]), "cannot hold 1099511627776 elements"),
        (raw_request(("a", "BYTES", [1]), raw=[b"\x09\0\0\0abc"]), "element 0 declares 9 bytes"),
        (raw_request(("a", "BYTES", [1]), raw=[b"\x01\0\0\0ab"]), "1 trailing bytes"),
        (raw_request(("a", "BOOL", [2]), raw=[b"\x00\x02"]), "only the bytes 0 and 1"),
        (
            raw_request(("a", "FP32", [-1, 4]), raw=[FOUR]),
            "input 'a': shape \\[-1, 4\\] has a negative",
        ),
        (raw_request(("a", "FLOAT", [4]), raw=[FOUR]), "input 'a': unknown datatype 'FLOAT'"),
        (raw_request(("", "FP32", [4]), raw=[FOUR]), "inputs\\[0\\].name must be a non-empty"),
        (
            raw_request(("a", "FP32", [4]), ("a", "FP32", [4]), raw=[FOUR, FOUR]),
            "input 'a' is given more than once",
        ),
        (raw_request(raw=[]), "at least one input"),
        (raw_request(("a", "FP32", [1] * 40), raw=[FOUR[:4]]), "at most 32"),
        (
            typed_request("INT32", [3], "int_contents", [1, 2]),
            "int_contents has 2 elements .* needs 3",
        ),
        (typed_request("INT32", [2**40], "int_contents", [1]), "needs 1099511627776"),
        (typed_request("INT32", [1], "fp32_contents", [1.0]), "must be in int_contents, not fp32"),
        (typed_request("FP16", [1], "fp32_contents", [1.0]), "FP16 data has no typed contents"),
        (typed_request("BF16", [1], "fp32_contents", [1.0]), "BF16 data has no typed contents"),
        (typed_request("INT8", [2], "int_contents", [1, 128]), "out of range for INT8"),
        (typed_request("INT16", [1], "int_contents", [-40000]), "out of range for INT16"),
        (typed_request("UINT8", [1], "uint_contents", [256]), "out of range for UINT8"),
        (typed_request("FP32", [2], "fp32_contents", []), "has 0 elements"),
    ],
)
def test_invalid_requests(msg: service_pb2.ModelInferRequest, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_infer_request(msg)


def test_raw_and_typed_contents_do_not_mix() -> None:
    msg = raw_request(("a", "FP32", [4]), ("b", "INT32", [1]), raw=[FOUR])
    msg.inputs[1].contents.int_contents.append(3)
    with pytest.raises(InvalidInput):  # count mismatch is reported first
        decode_infer_request(msg)
    msg.raw_input_contents.append(b"\0" * 4)
    with pytest.raises(
        InvalidInput, match="input 'b': int_contents is set, but raw_input_contents"
    ):
        decode_infer_request(msg)


def test_unsupported_extensions() -> None:
    classification = client_request(
        [client_input("x", sample("INT8"), "INT8")], [grpcclient.InferRequestedOutput("y", 3)]
    )
    with pytest.raises(InvalidInput, match="output 'y': the classification extension"):
        decode_infer_request(classification)
    shared = grpcclient.InferInput("x", [1], "INT8")
    shared.set_shared_memory("region", 1)
    with pytest.raises(InvalidInput, match="input 'x': the shared-memory extension"):
        decode_infer_request(client_request([shared]))


def test_missing_data_for_a_non_empty_tensor() -> None:
    msg = raw_request(("a", "FP32", [2**40]), raw=[])
    with pytest.raises(InvalidInput, match="fp32_contents has 0 elements but shape"):
        decode_infer_request(msg)


def test_typed_bytes_contents_are_bytes_objects() -> None:
    msg = typed_request("BYTES", [2], "bytes_contents", [b"a", b"\xff\x00"])
    data = decode_infer_request(msg).inputs[0].data
    assert data.dtype == object
    assert data.tolist() == [b"a", b"\xff\x00"]


@settings(max_examples=300, deadline=None, database=None)
@given(wire=st.binary(max_size=200))
def test_random_messages_raise_only_invalid_input(wire: bytes) -> None:
    try:
        msg = service_pb2.ModelInferRequest.FromString(wire)
    except DecodeError:
        return  # not a message at all: the gRPC layer rejects it
    try:
        request = decode_infer_request(msg)
    except InvalidInput:
        return
    assert isinstance(request, InferenceRequest)


@settings(max_examples=200, deadline=None, database=None)
@given(
    datatype=st.sampled_from(DATATYPES) | st.text(max_size=5),
    shape=st.lists(st.integers(-2, 2**62), max_size=4),
    raw=st.lists(st.binary(max_size=24), max_size=2),
    ints=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=4),
)
def test_random_tensors_raise_only_invalid_input(
    datatype: str, shape: list[int], raw: list[bytes], ints: list[int]
) -> None:
    msg = service_pb2.ModelInferRequest(model_name="m")
    tensor = msg.inputs.add(name="x", datatype=datatype, shape=shape)
    tensor.contents.int_contents.extend(ints)
    msg.raw_input_contents.extend(raw)
    try:
        request = decode_infer_request(msg)
    except InvalidInput:
        return
    assert request.inputs[0].data.shape == request.inputs[0].shape
