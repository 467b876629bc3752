"""The REST codec against the real ``tritonclient.http`` encoder and decoder."""

from __future__ import annotations

import contextlib
import json
import math
import tracemalloc
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sciserve import datatypes as dt
from sciserve.datatypes import DATATYPES
from sciserve.errors import InvalidInput, PayloadTooLarge
from sciserve.protocol.rest_codec import (
    decode_infer_request,
    encode_error,
    encode_infer_response,
    wants_binary_output,
)
from sciserve.serving.types import (
    InferenceRequest,
    InferenceResponse,
    InferOutput,
    RequestedOutput,
)

LIMIT = 64 * 2**20

#: What tritonclient can send as JSON (it refuses BF16 outside binary data).
JSON_DATATYPES = [d for d in DATATYPES if d != "BF16"]


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray[Any, Any]:
    """A deterministic array of ``datatype``, covering each type's extremes."""
    count = int(np.prod(shape))
    if datatype == "BYTES":
        return np.array([f"é{i}".encode() * i for i in range(count)], dtype=object).reshape(shape)
    if datatype == "BOOL":
        return np.asarray(np.arange(count) % 2 == 0).reshape(shape)
    if datatype == "BF16":
        return (np.arange(count) * 0.5 - 1).astype(ml_dtypes.bfloat16).reshape(shape)
    dtype = np.dtype(datatype.lower().replace("fp", "float"))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = [info.min, info.max, 0, 1, info.max // 2, info.min + 1]
        return np.array((values * count)[:count], dtype=dtype).reshape(shape)
    return (np.arange(count) * 1.25 - 3).astype(dtype).reshape(shape)


def triton_input(
    name: str, arr: np.ndarray[Any, Any], datatype: str, *, binary: bool
) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(arr.shape), datatype)
    tensor.set_data_from_numpy(arr, binary_data=binary)
    return tensor


def decode(body: bytes | bytearray | memoryview, header_length: int | None) -> InferenceRequest:
    return decode_infer_request(
        body, header_length, model_name="m", model_version="2", max_body_bytes=LIMIT
    )


def decode_doc(doc: object, tail: bytes = b"") -> InferenceRequest:
    """Decode a hand-written JSON header, optionally followed by binary data."""
    header = json.dumps(doc).encode()
    return decode(header + tail, len(header) if tail else None)


# -- requests from tritonclient ----------------------------------------------


@pytest.mark.parametrize("datatype", DATATYPES)
def test_binary_inputs_from_tritonclient(datatype: str) -> None:
    arr = sample(datatype)
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        [triton_input("x", arr, datatype, binary=True)]
    )
    assert header_length is not None
    request = decode(body, header_length)
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("x", datatype, (2, 3))
    assert tensor.data.dtype == arr.dtype
    np.testing.assert_array_equal(tensor.data, arr)
    assert tensor.parameters == {}  # binary_data_size is transport detail


@pytest.mark.parametrize("datatype", JSON_DATATYPES)
def test_json_inputs_from_tritonclient(datatype: str) -> None:
    arr = sample(datatype)
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        [triton_input("x", arr, datatype, binary=False)]
    )
    assert header_length is None
    (tensor,) = decode(body, header_length).inputs
    assert tensor.data.dtype == arr.dtype
    assert tensor.data.shape == arr.shape
    np.testing.assert_array_equal(tensor.data, arr)


def test_mixed_request_from_tritonclient() -> None:
    a, b, c = sample("FP32", (4, 2)), sample("BYTES", (3,)), sample("INT64", (1, 1, 2))
    e = np.zeros((0, 5), dtype=np.float16)
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        [
            triton_input("a", a, "FP32", binary=True),
            triton_input("b", b, "BYTES", binary=False),
            triton_input("c", c, "INT64", binary=True),
            triton_input("empty", e, "FP16", binary=True),
        ],
        outputs=[
            httpclient.InferRequestedOutput("y", binary_data=False),
            httpclient.InferRequestedOutput("z"),
        ],
        request_id="req-7",
        sequence_id=42,
        sequence_start=True,
        priority=3,
        timeout=1000,
        parameters={"note": "hi", "scale": 0.5},
    )
    request = decode(body, header_length)
    assert (request.model_name, request.model_version, request.id) == ("m", "2", "req-7")
    assert [t.name for t in request.inputs] == ["a", "b", "c", "empty"]
    np.testing.assert_array_equal(request.input("a").data, a)
    assert request.input("b").data.tolist() == b.tolist()
    np.testing.assert_array_equal(request.input("c").data, c)
    assert request.input("empty").data.shape == (0, 5)
    assert request.outputs == [RequestedOutput("y", False), RequestedOutput("z", True)]
    assert request.parameters == {
        "sequence_id": 42,
        "sequence_start": True,
        "sequence_end": False,
        "priority": 3,
        "timeout": 1000,
        "note": "hi",
        "scale": 0.5,
    }
    assert not wants_binary_output(request)


def test_binary_inputs_are_views_over_the_body() -> None:
    arr = np.arange(1000, dtype=np.float32)
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        [triton_input("x", arr, "FP32", binary=True)]
    )
    tensor = decode(body, header_length).inputs[0]
    assert np.shares_memory(tensor.data, np.frombuffer(body, dtype=np.uint8))
    assert not tensor.data.flags.writeable


def test_requests_with_the_same_header_stay_independent() -> None:
    # The validated JSON header of binary requests is remembered: two requests
    # sharing it must still carry their own tensors, and what a caller does
    # to one request's objects must not reach the next.
    first, second = np.arange(6, dtype=np.float32), np.arange(6, 12, dtype=np.float32)
    header = json.dumps(
        {
            "parameters": {"scale": 2},
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [6],
                    "parameters": {"binary_data_size": 24, "note": "kept"},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()
    bodies = [(header + arr.tobytes(), len(header)) for arr in (first, second)]
    one = decode(*bodies[0])
    one.parameters["scale"] = 99
    one.inputs[0].parameters["note"] = "changed"
    one.outputs[0].parameters["extra"] = 1
    two = decode(*bodies[1])
    np.testing.assert_array_equal(one.inputs[0].data, first)
    np.testing.assert_array_equal(two.inputs[0].data, second)
    assert two.parameters == {"scale": 2}
    assert two.inputs[0].parameters == {"note": "kept"}
    assert two.outputs == [RequestedOutput("y", True)]
    assert two.outputs[0] is not one.outputs[0]


def test_a_refused_header_is_refused_every_time() -> None:
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2]}]})
    body = header.encode() + bytes(8)
    for _ in range(2):
        with pytest.raises(InvalidInput, match="has no data"):
            decode(body, len(header))


def test_no_requested_outputs_means_binary_for_all() -> None:
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        [triton_input("x", sample("INT8"), "INT8", binary=False)]
    )
    request = decode(body, header_length)
    assert request.outputs == []
    assert wants_binary_output(request)


def test_output_binary_flag_overrides_request_default() -> None:
    request = decode_doc(
        {
            "inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [1]}],
            "parameters": {"binary_data_output": True},
            "outputs": [
                {"name": "a"},
                {"name": "b", "parameters": {"binary_data": False}},
                {"name": "c", "parameters": {"binary_data": True, "other": 1}},
            ],
        }
    )
    assert request.outputs == [
        RequestedOutput("a", True),
        RequestedOutput("b", False),
        RequestedOutput("c", True, {"other": 1}),
    ]
    without_default = decode_doc(
        {
            "inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [1]}],
            "outputs": [{"name": "a"}],
        }
    )
    assert without_default.outputs == [RequestedOutput("a", None)]
    assert not wants_binary_output(without_default)


def test_nested_json_data_and_extra_top_level_keys() -> None:
    # The extension's own example sends model_name in the body; it is ignored.
    request = decode_doc(
        {
            "model_name": "other",
            "inputs": [
                {"name": "x", "datatype": "FP64", "shape": [2, 2], "data": [[1, 2], [3, 4.5]]}
            ],
        }
    )
    assert request.model_name == "m"
    assert request.inputs[0].data.tolist() == [[1.0, 2.0], [3.0, 4.5]]


def test_bf16_json_input_is_accepted() -> None:
    request = decode_doc(
        {"inputs": [{"name": "x", "datatype": "BF16", "shape": [2], "data": [1.5, -2]}]}
    )
    assert request.inputs[0].data.dtype == np.dtype(ml_dtypes.bfloat16)
    assert request.inputs[0].data.tolist() == [1.5, -2.0]


def test_accepts_bytearray_and_memoryview_bodies() -> None:
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        [triton_input("x", sample("UINT16"), "UINT16", binary=True)]
    )
    for variant in (bytearray(body), memoryview(body)):
        np.testing.assert_array_equal(
            decode(variant, header_length).inputs[0].data, sample("UINT16")
        )


# -- responses parsed by tritonclient -----------------------------------------


def response(*outputs: InferOutput, **extra: Any) -> InferenceResponse:
    return InferenceResponse("m", "2", extra.pop("id", None), list(outputs), **extra)


def parse(body: bytes, header_length: int | None) -> Any:
    return httpclient.InferenceServerClient.parse_response_body(body, header_length=header_length)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_response_parsed_by_tritonclient(datatype: str, binary: bool) -> None:
    arr = sample(datatype, (3, 2))
    body, header_length = encode_infer_response(
        response(InferOutput.from_numpy("y", arr)),
        [RequestedOutput("y", binary)],
        binary_default=False,
    )
    assert (header_length is not None) == binary
    got = parse(body, header_length).as_numpy("y")
    assert got.shape == arr.shape
    if datatype == "BYTES" and not binary:
        # JSON carries text; tritonclient hands it back as str.
        assert got.tolist() == [[x.decode() for x in row] for row in arr.tolist()]
    else:
        assert got.dtype == arr.dtype
        np.testing.assert_array_equal(got, arr)


def test_mixed_response_parsed_by_tritonclient() -> None:
    outputs = {
        "probs": sample("FP32", (4, 3)),
        "labels": np.array([b"star", b"galaxy", b"qso", b"\xff\x00"], dtype=object),
        "flags": sample("BOOL", (4,)),
        "ids": sample("UINT64", (4,)),
        "empty": np.zeros((0,), dtype=np.int32),
    }
    requested = [
        RequestedOutput("probs", False),
        RequestedOutput("labels", True),
        RequestedOutput("flags", None),  # falls back to binary_default
    ]
    body, header_length = encode_infer_response(
        response(*(InferOutput.from_numpy(n, a) for n, a in outputs.items()), id="req-1"),
        requested,
        binary_default=True,
    )
    assert header_length is not None
    result = parse(body, header_length)
    for name, arr in outputs.items():
        got = result.as_numpy(name)
        assert got.shape == arr.shape, name
        np.testing.assert_array_equal(got, arr)
    header = json.loads(body[:header_length])
    assert header["id"] == "req-1"
    kinds = {o["name"]: ("data" in o, o.get("parameters", {})) for o in header["outputs"]}
    assert kinds["probs"] == (True, {})
    assert kinds["labels"] == (False, {"binary_data_size": 4 * 4 + 4 + 6 + 3 + 2})
    assert kinds["flags"] == (False, {"binary_data_size": 4})
    assert kinds["empty"] == (False, {"binary_data_size": 0})
    assert len(body) == header_length + sum(p.get("binary_data_size", 0) for _, p in kinds.values())


def test_json_only_response_document() -> None:
    out = InferOutput.from_numpy("y", np.array([[1, 2]], dtype=np.int32), {"unit": "mag"})
    body, header_length = encode_infer_response(
        response(out, id="abc", parameters={"sequence_id": 3}), [], binary_default=False
    )
    assert header_length is None
    assert json.loads(body) == {
        "model_name": "m",
        "model_version": "2",
        "id": "abc",
        "parameters": {"sequence_id": 3},
        "outputs": [
            {
                "name": "y",
                "datatype": "INT32",
                "shape": [1, 2],
                "data": [1, 2],
                "parameters": {"unit": "mag"},
            }
        ],
    }
    np.testing.assert_array_equal(parse(body, None).as_numpy("y"), [[1, 2]])


def test_response_without_id_omits_it() -> None:
    body, _ = encode_infer_response(
        response(InferOutput.from_numpy("y", np.zeros(1, np.int8))), [], binary_default=False
    )
    assert set(json.loads(body)) == {"model_name", "model_version", "outputs"}


def test_non_utf8_bytes_output_needs_binary() -> None:
    out = InferOutput.from_numpy("y", np.array([b"\xff"], dtype=object))
    with pytest.raises(InvalidInput, match=r"not valid UTF-8.*binary"):
        encode_infer_response(response(out), [RequestedOutput("y", False)], binary_default=True)
    body, header_length = encode_infer_response(response(out), [], binary_default=True)
    assert parse(body, header_length).as_numpy("y").tolist() == [b"\xff"]


def test_encode_error() -> None:
    body = encode_error('bad "input" é')
    assert json.loads(body) == {"error": 'bad "input" é'}
    body.decode("ascii")


# -- hostile and malformed requests --------------------------------------------

X = {"name": "x", "datatype": "FP32", "shape": [2]}
BIN8 = {**X, "parameters": {"binary_data_size": 8}}
FOUR_FLOATS = np.arange(2, dtype="<f4").tobytes()


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b'{"inputs": []}', 15, "exceeds body length"),
        (b'{"inputs": []}', -1, "must not be negative"),
        (b"\xff\xfe{}", None, "not valid UTF-8"),
        (b'{"inputs": [{"name": "\xc3"}]}', None, "not valid UTF-8"),
        (b"", None, "not valid JSON"),
        (b"{", None, "not valid JSON"),
        (b"{} {}", None, "not valid JSON"),
        (b"\xef\xbb\xbf{}", None, "not valid JSON"),
        (b"[" * 100_000, None, "nested too deeply|not valid JSON"),
        (b'{"a":' * 100_000, None, "nested too deeply|not valid JSON"),
        (b"[]", None, "must be a JSON object, got list"),
        (b"3", None, "must be a JSON object, got number"),
        (b"null", None, "must be a JSON object, got null"),
        (b'"inputs"', None, "must be a JSON object, got string"),
        (b'{"inputs": [1' + b"0" * 5000 + b"]}", None, "not valid JSON"),
    ],
)
def test_malformed_bodies(body: bytes, header_length: int | None, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode(body, header_length)


def test_deeply_nested_data_inside_an_input() -> None:
    data = "[" * 50_000 + "]" * 50_000
    body = '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ' + data + "}]}"
    with pytest.raises(InvalidInput):
        decode(body.encode(), None)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({}, "'inputs' must be a non-empty list"),
        ({"inputs": []}, "'inputs' must be a non-empty list"),
        ({"inputs": {"x": 1}}, "'inputs' must be a non-empty list"),
        ({"inputs": [[1]]}, "inputs\\[0\\] must be an object, got list"),
        ({"inputs": [{**X, "name": 1, "data": [1, 2]}]}, "inputs\\[0\\].name must be a non-empty"),
        ({"inputs": [{**X, "name": "", "data": [1, 2]}]}, "inputs\\[0\\].name must be a non-empty"),
        ({"inputs": [{**X, "datatype": 32, "data": [1, 2]}]}, "'datatype' must be a string"),
        ({"inputs": [{**X, "datatype": "FLOAT32", "data": [1, 2]}]}, "unknown datatype 'FLOAT32'"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "data": [1]}]}, "'shape' is missing"),
        ({"inputs": [{**X, "shape": "2", "data": [1, 2]}]}, "shape must be a list of integers"),
        ({"inputs": [{**X, "shape": [2, -1], "data": [1, 2]}]}, "negative dimension"),
        ({"inputs": [{**X, "shape": [2.0], "data": [1, 2]}]}, "integers, got number"),
        ({"inputs": [X]}, "input 'x' has no data"),
        ({"inputs": [{**X, "data": [1, 2, 3]}]}, "input 'x': tensor data has 3 elements"),
        ({"inputs": [{**X, "data": [1, "2"]}]}, "input 'x': FP32 data must hold"),
        ({"inputs": [{**X, "data": [[1], [2]]}]}, "found list"),
        ({"inputs": [{**X, "data": {"a": 1}}]}, "must be a list, got object"),
        ({"inputs": [{**X, "data": [1, 2], "parameters": [1]}]}, "parameters must be an object"),
        (
            {"inputs": [{**X, "data": [1, 2], "parameters": {"p": {"q": 1}}}]},
            "inputs\\[0\\].parameters.p must be a boolean, number or string",
        ),
        (
            {"inputs": [{**X, "data": [1, 2], "parameters": {"binary_data_size": 8}}]},
            "input 'x' has both 'data' and parameters.binary_data_size",
        ),
        (
            {"inputs": [{**X, "parameters": {"binary_data_size": -8}}]},
            "binary_data_size must be a non-negative integer",
        ),
        (
            {"inputs": [{**X, "parameters": {"binary_data_size": True}}]},
            "binary_data_size must be a non-negative integer",
        ),
        (
            {"inputs": [{**X, "parameters": {"binary_data_size": 8.0}}]},
            "binary_data_size must be a non-negative integer",
        ),
        (
            {"inputs": [{**X, "data": [1, 2]}, {**X, "data": [3, 4]}]},
            "input 'x' is given more than once",
        ),
        ({"inputs": [{**X, "data": [1, 2]}], "id": 7}, "'id' must be a string"),
        ({"inputs": [{**X, "data": [1, 2]}], "parameters": 1}, "parameters must be an object"),
        (
            {"inputs": [{**X, "data": [1, 2]}], "parameters": {"binary_data_output": "yes"}},
            "binary_data_output must be a boolean",
        ),
        ({"inputs": [{**X, "data": [1, 2]}], "outputs": {"y": 1}}, "'outputs' must be a list"),
        ({"inputs": [{**X, "data": [1, 2]}], "outputs": ["y"]}, "outputs\\[0\\] must be an object"),
        ({"inputs": [{**X, "data": [1, 2]}], "outputs": [{}]}, "outputs\\[0\\].name must be"),
        (
            {"inputs": [{**X, "data": [1, 2]}], "outputs": [{"name": "y"}, {"name": "y"}]},
            "requested output 'y' is given more than once",
        ),
        (
            {
                "inputs": [{**X, "data": [1, 2]}],
                "outputs": [{"name": "y", "parameters": {"binary_data": 1}}],
            },
            "binary_data must be a boolean",
        ),
        (
            {
                "inputs": [{**X, "data": [1, 2]}],
                "outputs": [{"name": "y", "parameters": {"classification": 3}}],
            },
            "output 'y': the classification extension is not supported",
        ),
        (
            {
                "inputs": [{**X, "data": [1, 2]}],
                "outputs": [{"name": "y", "parameters": {"shared_memory_region": "r"}}],
            },
            "output 'y': the shared-memory extension is not supported",
        ),
        (
            {"inputs": [{**X, "parameters": {"shared_memory_region": "r"}}]},
            "input 'x': the shared-memory extension is not supported",
        ),
    ],
)
def test_invalid_documents(doc: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_doc(doc)


@pytest.mark.parametrize(
    ("inputs", "tail", "message"),
    [
        ([BIN8], FOUR_FLOATS[:7], "binary data truncated: inputs declare 8 bytes .* holds 7"),
        ([BIN8], FOUR_FLOATS + b"\0", "1 trailing bytes"),
        ([BIN8, {**BIN8, "name": "y"}], FOUR_FLOATS, "declare 16 bytes"),
        ([{**X, "data": [1, 2]}], b"\0\0", "2 trailing bytes"),
        ([{**X, "parameters": {"binary_data_size": 4}}], b"\0" * 4, "raw data is 4 bytes"),
        (
            [
                {
                    "name": "s",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 6},
                }
            ],
            b"\x05\0\0\0ab",
            "input 's': BYTES data truncated: element 0 declares 5 bytes",
        ),
        (
            [
                {
                    "name": "s",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": 8},
                }
            ],
            b"\x01\0\0\0a\0\0\0",
            "input 's': BYTES data truncated in the length prefix of element 1",
        ),
        (
            [
                {
                    "name": "b",
                    "datatype": "BOOL",
                    "shape": [2],
                    "parameters": {"binary_data_size": 2},
                }
            ],
            b"\x01\x07",
            "only the bytes 0 and 1",
        ),
    ],
)
def test_invalid_binary_sections(inputs: list[Any], tail: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_doc({"inputs": inputs}, tail)


def test_binary_data_without_header_length_is_trailing_garbage() -> None:
    header = json.dumps({"inputs": [BIN8]}).encode()
    with pytest.raises(InvalidInput, match="needs the Inference-Header-Content-Length header"):
        decode(header + FOUR_FLOATS, None)
    with pytest.raises(
        InvalidInput, match=r"not valid JSON: Extra data.*needs the Inference-Header"
    ):
        decode(header + b" 1", None)
    with pytest.raises(InvalidInput, match="declare 8 bytes"):
        decode(header, None)


def test_body_over_the_limit() -> None:
    body = json.dumps({"inputs": [{**X, "data": [1, 2]}]}).encode()
    with pytest.raises(PayloadTooLarge, match="limit is 10 bytes"):
        decode_infer_request(body, None, model_name="m", model_version=None, max_body_bytes=10)


@pytest.mark.parametrize(
    ("entry", "tail"),
    [
        ({"name": "x", "datatype": "FP64", "shape": [2**40]}, b""),
        ({"name": "x", "datatype": "FP64", "shape": [2**40], "data": [1.0]}, b""),
        (
            {
                "name": "x",
                "datatype": "FP64",
                "shape": [2**40],
                "parameters": {"binary_data_size": 8},
            },
            b"\0" * 8,
        ),
        (
            {
                "name": "x",
                "datatype": "BYTES",
                "shape": [2**40],
                "parameters": {"binary_data_size": 8},
            },
            b"\0" * 8,
        ),
        ({"name": "x", "datatype": "INT8", "shape": [2**20, 2**20, 2**20], "data": [1]}, b""),
    ],
)
def test_huge_declared_shape_does_not_allocate(entry: dict[str, Any], tail: bytes) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput):
            decode_doc({"inputs": [entry]}, tail)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


# -- property-based: nothing but InvalidInput escapes --------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)
elements = {
    "BOOL": st.booleans(),
    "BYTES": st.text(max_size=3),
    **{d: st.integers(-(2**64), 2**64) for d in DATATYPES if "INT" in d},
    **{d: st.floats() | st.integers(-1000, 1000) for d in DATATYPES if d.startswith(("FP", "BF"))},
}


@st.composite
def near_valid_requests(draw: st.DrawFn) -> tuple[bytes, int | None]:
    """A request body that is valid or one mutation away from it."""
    inputs: list[dict[str, Any]] = []
    binary = b""
    for index in range(draw(st.integers(1, 3))):
        datatype = draw(st.sampled_from(DATATYPES))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        count = int(np.prod(shape))
        entry: dict[str, Any] = {"name": f"in{index}", "datatype": datatype, "shape": shape}
        if draw(st.booleans()):
            exact = count * (dt.element_size(datatype) or 5)  # BYTES: guess 1-byte elements
            size = draw(st.just(exact) | st.integers(0, exact + 4))
            chunk = draw(st.binary(min_size=size, max_size=size))
            entry["parameters"] = {"binary_data_size": len(chunk)}
            binary += chunk
        else:
            values = elements[datatype] | json_values
            entry["data"] = draw(st.lists(values, min_size=count, max_size=count + 1))
        inputs.append(entry)
    doc: dict[str, Any] = {"inputs": inputs}
    if draw(st.booleans()):
        doc["outputs"] = [{"name": "y", "parameters": {"binary_data": draw(st.booleans())}}]
    if draw(st.booleans()):
        doc["parameters"] = {"binary_data_output": True, "note": "x"}
    # One mutation: replace a field anywhere with an arbitrary JSON value.
    if draw(st.booleans()):
        target: Any = doc
        while True:
            keys = list(target) if isinstance(target, dict) else list(range(len(target)))
            if not keys:
                break
            key = draw(st.sampled_from(keys))
            if isinstance(target[key], dict | list) and draw(st.booleans()):
                target = target[key]
            else:
                target[key] = draw(json_values)
                break
    header = json.dumps(doc).encode()
    if binary or draw(st.booleans()):
        return header + binary, len(header)
    return header, None


FUZZ = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@FUZZ
@given(body=st.binary(max_size=300), header_length=st.none() | st.integers(-5, 320))
def test_random_bytes_raise_only_invalid_input(body: bytes, header_length: int | None) -> None:
    with contextlib.suppress(InvalidInput):
        decode(body, header_length)


@FUZZ
@given(request=near_valid_requests())
def test_near_valid_requests_raise_only_invalid_input(request: tuple[bytes, int | None]) -> None:
    try:
        decoded = decode(*request)
    except InvalidInput:
        return
    # Whatever is accepted is internally consistent.
    for tensor in decoded.inputs:
        assert tensor.data.shape == tensor.shape


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[1.5, NaN, Infinity, -Infinity]", [1.5, math.nan, math.inf, -math.inf]),
        ("[18446744073709551616]", None),  # beyond 64 bits: the FP64 cast decides
    ],
)
def test_what_the_fast_parser_refuses_the_standard_one_still_reads(
    text: str, expected: list[float] | None
) -> None:
    count = text.count(",") + 1
    tensor = f'{{"name": "x", "datatype": "FP64", "shape": [{count}], "data": {text}}}'
    body = f'{{"inputs": [{tensor}]}}'.encode()
    request = decode_infer_request(
        body, None, model_name="m", model_version=None, max_body_bytes=2**20
    )
    data = request.inputs[0].data
    if expected is None:
        assert data.tolist() == [float(18446744073709551616)]
    else:
        np.testing.assert_array_equal(data, np.array(expected))


@pytest.mark.parametrize("value", [math.nan, math.inf, 0.5])
def test_json_outputs_keep_nan_and_infinity_and_non_ascii_ids(value: float) -> None:
    arr = np.array([[value, 1.0]], dtype=np.float32)
    body, header_length = encode_infer_response(
        response(InferOutput.from_numpy("y", arr), id="réq-ü"), [], binary_default=False
    )
    assert header_length is None
    got = parse(body, None)
    np.testing.assert_array_equal(got.as_numpy("y"), arr)
    assert json.loads(body)["id"] == "réq-ü"
