"""Datatype mapping and the raw / JSON tensor encodings."""

from __future__ import annotations

import struct
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor as triton_deserialize
from tritonclient.utils import serialize_byte_tensor as triton_serialize
from tritonclient.utils import triton_to_np_dtype

from sciserve import datatypes as dt
from sciserve.errors import InvalidInput
from sciserve.serving.types import (
    InferenceRequest,
    InferenceResponse,
    InferInput,
    InferOutput,
    RequestedOutput,
)

FIXED = [d for d in dt.DATATYPES if d != "BYTES"]


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray[Any, Any]:
    """A deterministic array of ``datatype`` exercising each type's range."""
    count = int(np.prod(shape))
    if datatype == "BYTES":
        return np.array([f"é{i}".encode() * i for i in range(count)], dtype=object).reshape(shape)
    dtype = dt.numpy_dtype(datatype)
    if datatype == "BOOL":
        return np.asarray(np.arange(count) % 3 == 0).reshape(shape)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = [info.min, info.max, 0, 1, info.max - 1, info.min + 1]
        return np.array((values * count)[:count], dtype=dtype).reshape(shape)
    return (np.arange(count, dtype=np.float64) * 1.5 - 2.25).astype(dtype).reshape(shape)


@pytest.mark.parametrize("datatype", dt.DATATYPES)
def test_numpy_dtype_agrees_with_tritonclient(datatype: str) -> None:
    assert dt.numpy_dtype(datatype) == np.dtype(triton_to_np_dtype(datatype))
    assert dt.datatype_of(dt.numpy_dtype(datatype)) == datatype


def test_bf16_is_ml_dtypes_bfloat16() -> None:
    assert dt.numpy_dtype("BF16") == np.dtype(ml_dtypes.bfloat16)
    assert dt.element_size("BF16") == 2


@pytest.mark.parametrize(
    ("datatype", "size"),
    [
        ("BOOL", 1),
        ("UINT8", 1),
        ("INT16", 2),
        ("UINT32", 4),
        ("INT64", 8),
        ("FP16", 2),
        ("FP32", 4),
        ("FP64", 8),
        ("BYTES", None),
    ],
)
def test_element_size(datatype: str, size: int | None) -> None:
    assert dt.element_size(datatype) == size


@pytest.mark.parametrize("bad", ["FLOAT32", "fp32", "", "STRING"])
def test_unknown_datatype(bad: str) -> None:
    with pytest.raises(InvalidInput, match="unknown datatype"):
        dt.numpy_dtype(bad)
    with pytest.raises(InvalidInput, match="unknown datatype"):
        dt.element_size(bad)


def test_datatype_of_strings_and_big_endian() -> None:
    assert dt.datatype_of(np.dtype("U3")) == "BYTES"
    assert dt.datatype_of(np.dtype("S3")) == "BYTES"
    assert dt.datatype_of(np.dtype(">f4")) == "FP32"
    with pytest.raises(InvalidInput, match="complex"):
        dt.datatype_of(np.dtype(np.complex64))


# -- shapes ------------------------------------------------------------------


def test_check_shape_accepts_lists_and_tuples() -> None:
    assert dt.check_shape([2, 0, 3]) == (2, 0, 3)
    assert dt.check_shape(()) == ()
    assert dt.check_shape((np.int64(4),)) == (4,)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([2, -1], "negative"),
        ([True, 2], "integers, got boolean"),
        ([2.0], "integers, got number"),
        (["2"], "integers, got string"),
        ("2,3", "list of integers"),
        (None, "list of integers"),
        ([1] * 33, "at most 32"),
        ([2**40, 2**40], "too large"),
        ([0, 2**62, 2**62], "too large"),
    ],
)
def test_check_shape_rejects(shape: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        dt.check_shape(shape, "input 'x'")


# -- BYTES serialisation -----------------------------------------------------


def test_bytes_layout_is_length_prefixed_row_major() -> None:
    arr = np.array([[b"ab", b""], [b"\x00\xff", b"xyz"]], dtype=object)
    expected = b"".join(struct.pack("<I", len(x)) + x for x in [b"ab", b"", b"\x00\xff", b"xyz"])
    assert dt.serialize_bytes_tensor(arr) == expected
    assert dt.serialize_bytes_tensor(arr) == triton_serialize(arr).item()
    # Transposed (non-contiguous) input is still written in row-major order.
    assert dt.serialize_bytes_tensor(arr.T) == triton_serialize(np.ascontiguousarray(arr.T)).item()


def test_bytes_serialisation_encodes_str_as_utf8() -> None:
    arr = np.array(["é", b"\xe9"], dtype=object)
    assert dt.serialize_bytes_tensor(arr) == b"\x02\x00\x00\x00\xc3\xa9\x01\x00\x00\x00\xe9"
    assert dt.serialize_bytes_tensor(np.array(["ab", "c"])) == b"\x02\0\0\0ab\x01\0\0\0c"


def test_bytes_serialisation_refuses_other_objects() -> None:
    with pytest.raises(InvalidInput, match="bytes or str, got integer"):
        dt.serialize_bytes_tensor(np.array([b"a", 3], dtype=object))


def test_bytes_round_trip_against_tritonclient() -> None:
    arr = sample("BYTES", (7,))
    decoded = dt.deserialize_bytes_tensor(triton_serialize(arr).item(), 7)
    assert decoded.dtype == object
    assert decoded.tolist() == arr.tolist()
    assert triton_deserialize(dt.serialize_bytes_tensor(arr)).tolist() == arr.tolist()


def test_deserialize_empty() -> None:
    assert dt.deserialize_bytes_tensor(b"", 0).shape == (0,)
    assert dt.deserialize_bytes_tensor(b"\0\0\0\0", 1).tolist() == [b""]


@pytest.mark.parametrize(
    ("buf", "count", "message"),
    [
        (b"\x05\x00\x00", 1, "cannot hold 1 elements"),
        (b"\x01\x00\x00\x00a\x01\x00", 2, "cannot hold 2 elements"),
        (b"\x01\x00\x00\x00a\x01\x00\x00", 2, "truncated in the length prefix of element 1"),
        (b"\x05\x00\x00\x00abc", 1, "element 0 declares 5 bytes but only 3 remain"),
        (b"\xff\xff\xff\xff", 1, "declares 4294967295 bytes"),
        (b"\x01\x00\x00\x00ab", 1, "1 trailing bytes"),
        (b"\x00\x00\x00\x00", 0, "4 trailing bytes"),
        (b"", 2**40, "cannot hold"),
    ],
)
def test_deserialize_bytes_is_strict(buf: bytes, count: int, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        dt.deserialize_bytes_tensor(buf, count)


# -- raw ---------------------------------------------------------------------


@pytest.mark.parametrize("datatype", dt.DATATYPES)
def test_raw_round_trip(datatype: str) -> None:
    arr = sample(datatype)
    raw = dt.to_raw(arr, datatype)
    if datatype == "BYTES":
        assert raw == triton_serialize(arr).item()
    else:
        # tritonclient sends arr.tobytes(): little-endian on this machine.
        assert raw == arr.tobytes()
    back = dt.from_raw(raw, datatype, arr.shape)
    assert back.dtype == arr.dtype
    assert back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_from_raw_is_zero_copy_and_read_only() -> None:
    raw = np.arange(6, dtype="<f4").tobytes()
    arr = dt.from_raw(raw, "FP32", (2, 3))
    assert not arr.flags.writeable
    assert np.shares_memory(arr, np.frombuffer(raw, dtype=np.uint8))


def test_to_raw_writes_little_endian_and_row_major() -> None:
    big = np.array([[1, 2], [3, 4]], dtype=">i4")
    assert dt.to_raw(big, "INT32") == np.array([1, 2, 3, 4], dtype="<i4").tobytes()
    assert dt.to_raw(big.T, "INT32") == np.array([1, 3, 2, 4], dtype="<i4").tobytes()


def test_raw_buffer_does_not_copy_contiguous_arrays() -> None:
    arr = np.arange(4, dtype=np.float64)
    view = dt.raw_buffer(arr, "FP64")
    assert view.nbytes == 32
    assert np.shares_memory(np.frombuffer(view, dtype=np.uint8), arr)


@pytest.mark.parametrize(
    ("datatype", "shape", "size"),
    [("FP32", (2, 3), 23), ("FP32", (2, 3), 25), ("INT64", (1,), 4), ("BOOL", (3,), 0)],
)
def test_from_raw_checks_size(datatype: str, shape: tuple[int, ...], size: int) -> None:
    with pytest.raises(InvalidInput, match=f"raw data is {size} bytes"):
        dt.from_raw(b"\0" * size, datatype, shape)


def test_from_raw_huge_shape_does_not_allocate() -> None:
    with pytest.raises(InvalidInput, match="needs 8796093022208"):
        dt.from_raw(b"\0" * 8, "FP64", (2**40,))
    with pytest.raises(InvalidInput, match="cannot hold"):
        dt.from_raw(b"\0" * 8, "BYTES", (2**40,))


def test_from_raw_bool_bytes_must_be_0_or_1() -> None:
    assert dt.from_raw(b"\x01\x00", "BOOL", (2,)).tolist() == [True, False]
    with pytest.raises(InvalidInput, match="only the bytes 0 and 1"):
        dt.from_raw(b"\x01\x02", "BOOL", (2,))


# -- JSON --------------------------------------------------------------------


@pytest.mark.parametrize("datatype", dt.DATATYPES)
def test_json_round_trip(datatype: str) -> None:
    arr = sample(datatype)
    data = dt.to_json_data(arr, datatype)
    assert len(data) == arr.size
    back = dt.from_json_data(data, datatype, arr.shape)
    assert back.dtype == arr.dtype
    np.testing.assert_array_equal(back, arr)


def test_json_accepts_nested_data() -> None:
    arr = dt.from_json_data([[1, 2, 3], [4, 5, 6]], "INT32", (2, 3))
    assert arr.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert dt.from_json_data([[[True], [False]]], "BOOL", (1, 2, 1)).shape == (1, 2, 1)
    assert dt.from_json_data([[], []], "FP32", (2, 0)).shape == (2, 0)
    assert dt.from_json_data([], "FP32", (0, 3)).shape == (0, 3)


def test_json_values_take_the_declared_type() -> None:
    assert dt.from_json_data([1, 2.5], "FP16", (2,)).dtype == np.float16
    assert dt.from_json_data([2**64 - 1], "UINT64", (1,)).tolist() == [2**64 - 1]
    assert dt.from_json_data([-(2**63)], "INT64", (1,)).tolist() == [-(2**63)]
    assert dt.from_json_data(["é"], "BYTES", (1,)).tolist() == [b"\xc3\xa9"]
    # A finite number beyond FP32's range becomes infinity, as a cast does.
    assert np.isinf(dt.from_json_data([1e300], "FP32", (1,))[0])


@pytest.mark.parametrize(
    ("data", "datatype", "shape", "message"),
    [
        ([1, 2, 3], "INT32", (2, 2), "has 3 elements but shape \\[2, 2\\] needs 4"),
        ([[1, 2], [3]], "INT32", (2, 2), "dimension 1 has 1 entries, expected 2"),
        ([[1, 2], 3], "INT32", (2, 2), "expected a list at depth 1, got integer 3"),
        ([[1, 2], [3, 4], [5, 6]], "INT32", (2, 2), "dimension 0 has 3 entries"),
        ([[1, 2], [3, [4]]], "INT32", (2, 2), "integer values, found list"),
        ([1, [2], 3, 4], "INT32", (2, 2), "found list"),
        (5, "INT32", (), "must be a list, got integer"),
        ({"a": 1}, "INT32", (1,), "must be a list, got object"),
        (None, "FP32", (1,), "must be a list, got null"),
        ([1.5], "INT32", (1,), "integer values, found number 1.5"),
        ([True], "INT8", (1,), "integer values, found boolean"),
        ([1, True], "INT64", (2,), "found boolean"),
        ([300], "INT8", (1,), "out of range"),
        ([-1], "UINT16", (1,), "out of range"),
        ([2**64], "UINT64", (1,), "out of range"),
        ([2**63], "INT64", (1,), "out of range"),
        ([1], "BOOL", (1,), "boolean values, found integer 1"),
        (["true"], "BOOL", (1,), "found string"),
        ([True], "FP32", (1,), "integer or number values, found boolean"),
        (["1.0"], "FP64", (1,), "found string"),
        ([None], "FP64", (1,), "found null"),
        ([10**400], "FP64", (1,), "out of range"),
        ([1], "BYTES", (1,), "string values, found integer"),
        (["\ud800"], "BYTES", (1,), "not valid Unicode"),
        ([1], "COMPLEX", (1,), "unknown datatype"),
        ([1], "INT32", (2**40,), "needs 1099511627776"),
    ],
)
def test_from_json_data_rejects(
    data: object, datatype: str, shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        dt.from_json_data(data, datatype, shape)


def test_to_json_data_bytes() -> None:
    arr = np.array([b"ok", "str"], dtype=object)
    assert dt.to_json_data(arr, "BYTES") == ["ok", "str"]
    with pytest.raises(InvalidInput, match=r"not valid UTF-8.*binary"):
        dt.to_json_data(np.array([b"\xff"], dtype=object), "BYTES")
    with pytest.raises(InvalidInput, match="bytes or str"):
        dt.to_json_data(np.array([None], dtype=object), "BYTES")


def test_to_json_data_is_flat_python() -> None:
    data = dt.to_json_data(np.array([[1, 2], [3, 4]], dtype=np.uint8), "UINT8")
    assert data == [1, 2, 3, 4]
    assert all(type(x) is int for x in data)
    assert dt.to_json_data(np.array([True]), "BOOL") == [True]
    bf16 = dt.to_json_data(np.array([1.5, -2], dtype=ml_dtypes.bfloat16), "BF16")
    assert bf16 == [1.5, -2.0]
    assert all(type(x) is float for x in bf16)


# -- core types ----------------------------------------------------------------


def test_infer_input_reshapes_flat_data() -> None:
    tensor = InferInput("x", "FP32", (2, 2), np.arange(4, dtype=np.float32))
    assert tensor.data.shape == (2, 2)
    assert tensor.shape == (2, 2)


@pytest.mark.parametrize(
    ("shape", "data", "message"),
    [
        ((2, -2), np.zeros(4, np.float32), "negative"),
        ((3,), np.zeros(4, np.float32), "has 4 elements but shape \\[3\\] needs 3"),
        ((4,), np.zeros(4, np.float64), "dtype float64 does not match FP32"),
    ],
)
def test_infer_input_validates(
    shape: tuple[int, ...], data: np.ndarray[Any, Any], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        InferInput("x", "FP32", shape, data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # The data already has the declared shape, yet the shape is refused.
        (np.zeros((1,) * 33, np.float32), "at most 32"),
        (np.zeros((0, 2**30, 2**30), np.float32), "too large"),
        (np.zeros((2, 2), np.float64), "dtype float64 does not match FP32"),
    ],
)
@pytest.mark.parametrize("cls", [InferInput, InferOutput])
def test_a_tensor_of_its_declared_shape_is_still_validated(
    cls: type[InferInput] | type[InferOutput], data: np.ndarray[Any, Any], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        cls("x", "FP32", data.shape, data)


def test_a_tensor_of_its_declared_shape_is_kept_as_it_is() -> None:
    data = np.zeros((2, 0, 3), np.float32)
    tensor = InferOutput("y", "FP32", (2, 0, 3), data)
    assert tensor.shape == (2, 0, 3)
    assert tensor.data is data


@pytest.mark.parametrize("value", [None, [1], {"a": 1}, b"x"])
def test_parameters_are_scalars(value: object) -> None:
    with pytest.raises(InvalidInput, match="must be a boolean, number or string"):
        InferInput("x", "INT8", (1,), np.zeros(1, np.int8), {"p": value})  # type: ignore[dict-item]


def test_request_and_response_invariants() -> None:
    tensor = InferInput("x", "INT8", (1,), np.zeros(1, np.int8))
    with pytest.raises(InvalidInput, match="at least one input"):
        InferenceRequest("m", None, None, [])
    with pytest.raises(InvalidInput, match="input 'x' is given more than once"):
        InferenceRequest("m", None, None, [tensor, tensor])
    with pytest.raises(InvalidInput, match="output 'y' is given more than once"):
        InferenceRequest("m", None, None, [tensor], [RequestedOutput("y"), RequestedOutput("y")])
    request = InferenceRequest("m", None, None, [tensor])
    assert request.input("x") is tensor
    with pytest.raises(InvalidInput, match="no input 'z'"):
        request.input("z")
    out = InferOutput.from_numpy("y", np.zeros(1, np.int8))
    with pytest.raises(InvalidInput, match="output 'y' is given more than once"):
        InferenceResponse("m", "1", None, [out, out])


def test_infer_output_from_numpy() -> None:
    out = InferOutput.from_numpy("s", np.array([["a", "bc"]]))
    assert (out.datatype, out.shape) == ("BYTES", (1, 2))
    assert out.data.tolist() == [["a", "bc"]]
    big = InferOutput.from_numpy("b", np.array([1.0], dtype=">f8"))
    assert big.datatype == "FP64"
    assert big.data.dtype == np.dtype("<f8")
