"""Tensor datatypes (the Open Inference Protocol's) and their three encodings.

The manifest declares tensors in these datatypes, runtimes convert to and
from numpy with them and the protocol codecs put them on the wire, so the
module sits below all three.

A tensor travels in one of three forms:

* **raw**: little-endian, row-major, no padding; ``BOOL`` is one byte
  (0 or 1) per element and ``BYTES`` elements are each a 4-byte
  little-endian length followed by that many bytes.  Used by the binary
  tensor data extension of the REST protocol and by gRPC's
  ``raw_input_contents`` / ``raw_output_contents``.
* **JSON**: a flat or nested list of JSON values (the REST protocol).
* **numpy**: what runtimes consume and produce.

Every function here raises :class:`~sciserve.errors.InvalidInput` for data a
client could have got wrong, so the transports can report it as a client
error, and checks sizes *before* allocating so a hostile declared shape
costs nothing.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any, Literal, get_args

import numpy as np

from .errors import DependencyMissing, InvalidInput

__all__ = [
    "DATATYPES",
    "MAX_DIMS",
    "MAX_ELEMENTS",
    "Datatype",
    "check_element_total",
    "check_shape",
    "datatype_of",
    "deserialize_bytes_tensor",
    "element_count",
    "element_size",
    "from_json_data",
    "from_raw",
    "numpy_dtype",
    "raw_buffer",
    "serialize_bytes_tensor",
    "to_json_data",
    "to_raw",
]

#: Most dimensions a tensor may have (numpy 1.x supports 32).
MAX_DIMS = 32

#: Most elements a shape may declare, zero dimensions left out.  No real
#: tensor has more; the bound keeps the element count of a declared shape
#: representable by numpy even when a zero dimension makes the tensor empty.
MAX_ELEMENTS = 2**56

# Little-endian dtypes of the fixed-size datatypes; BF16 needs ml_dtypes and
# is resolved lazily in numpy_dtype().
_FIXED: MappingProxyType[str, np.dtype[Any]] = MappingProxyType(
    {
        "BOOL": np.dtype(np.bool_),
        "UINT8": np.dtype("<u1"),
        "UINT16": np.dtype("<u2"),
        "UINT32": np.dtype("<u4"),
        "UINT64": np.dtype("<u8"),
        "INT8": np.dtype("<i1"),
        "INT16": np.dtype("<i2"),
        "INT32": np.dtype("<i4"),
        "INT64": np.dtype("<i8"),
        "FP16": np.dtype("<f2"),
        "FP32": np.dtype("<f4"),
        "FP64": np.dtype("<f8"),
    }
)

#: An Open Inference Protocol datatype, in the protocol's spelling.  The
#: manifest's tensor specs and the protocol codecs both use this one list.
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "BF16", "FP32", "FP64", "BYTES",
]  # fmt: skip

#: Every datatype of the protocol, in its spelling.
DATATYPES: tuple[str, ...] = get_args(Datatype)

_SIZES: MappingProxyType[str, int] = MappingProxyType(
    {**{name: dtype.itemsize for name, dtype in _FIXED.items()}, "BF16": 2}
)

_INTEGER = frozenset(name for name in _FIXED if name.startswith(("INT", "UINT")))
_FLOAT = frozenset({"FP16", "BF16", "FP32", "FP64"})

_LENGTH = struct.Struct("<I")


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype holding ``datatype`` (``object`` for ``BYTES``).

    ``BF16`` maps to ``ml_dtypes.bfloat16`` (numpy has no bfloat16);
    :class:`~sciserve.errors.DependencyMissing` is raised when ml_dtypes is
    not installed.
    """
    dtype = _FIXED.get(datatype)
    if dtype is not None:
        return dtype
    if datatype == "BYTES":
        return np.dtype(object)
    if datatype == "BF16":
        return _bfloat16()
    raise _unknown(datatype)


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The protocol datatype for a numpy dtype (strings and bytes are ``BYTES``)."""
    if dtype.kind in "OSU":
        return "BYTES"
    if dtype.name == "bfloat16":
        return "BF16"
    native = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
    for name, candidate in _FIXED.items():
        if candidate == native:
            return name
    raise InvalidInput(f"numpy dtype {dtype} has no Open Inference Protocol datatype")


def element_size(datatype: str) -> int | None:
    """Bytes per element in raw form, or ``None`` for variable-size ``BYTES``."""
    if datatype == "BYTES":
        return None
    size = _SIZES.get(datatype)
    if size is None:
        raise _unknown(datatype)
    return size


def check_shape(shape: object, what: str = "tensor") -> tuple[int, ...]:
    """Validate a declared shape and return it as a tuple.

    Dimensions must be non-negative integers (JSON booleans are not
    integers), at most :data:`MAX_DIMS` of them, and the element count must
    be plausible.  ``what`` names the tensor in error messages.
    """
    if not isinstance(shape, list | tuple):
        raise InvalidInput(f"{what}: shape must be a list of integers, got {_kind(shape)}")
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"{what}: shape has {len(shape)} dimensions; at most {MAX_DIMS}")
    dims: list[int] = []
    for dim in shape:
        if not isinstance(dim, int | np.integer) or isinstance(dim, bool | np.bool_):
            raise InvalidInput(f"{what}: shape must be a list of integers, got {_kind(dim)}")
        if dim < 0:
            raise InvalidInput(f"{what}: shape {list(shape)} has a negative dimension")
        dims.append(int(dim))
    if math.prod(d for d in dims if d) > MAX_ELEMENTS:
        raise InvalidInput(f"{what}: shape {dims} is too large")
    return tuple(dims)


def element_count(shape: Sequence[int]) -> int:
    """Number of elements of a tensor of ``shape`` (1 for a scalar)."""
    return math.prod(shape)


def check_element_total(shapes: Sequence[Sequence[int]], limit: int | None) -> None:
    """Refuse a request whose input ``shapes`` declare more than ``limit``
    elements in all (``None``: no bound), before any of its data is decoded."""
    if limit is None:
        return
    total = sum(element_count(shape) for shape in shapes)
    if total > limit:
        raise InvalidInput(
            f"the inputs declare {total} elements; this model takes at most {limit} "
            "in one request (its input shapes, with max_batch_size rows)"
        )


# -- raw ---------------------------------------------------------------------


def serialize_bytes_tensor(arr: np.ndarray[Any, Any]) -> bytes:
    """Encode a ``BYTES`` tensor: per element, row-major, a 4-byte
    little-endian length followed by the element's bytes.

    Elements may be ``bytes`` or ``str`` (encoded as UTF-8); fixed-width
    numpy ``S``/``U`` arrays are accepted too (numpy strips their trailing
    NUL bytes, which is why object arrays are preferred).
    """
    parts: list[bytes] = []
    for item in arr.ravel(order="C").tolist():
        if isinstance(item, str):
            try:
                item = item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidInput(f"BYTES element is not encodable as UTF-8: {exc}") from exc
        elif isinstance(item, bytearray | memoryview):
            item = bytes(item)
        elif not isinstance(item, bytes):
            raise InvalidInput(f"BYTES elements must be bytes or str, got {_kind(item)}")
        if len(item) > 0xFFFFFFFF:
            raise InvalidInput("BYTES element longer than 4 GiB cannot be encoded")
        parts.append(_LENGTH.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def deserialize_bytes_tensor(
    buf: bytes | bytearray | memoryview, count: int
) -> np.ndarray[Any, np.dtype[np.object_]]:
    """Decode exactly ``count`` length-prefixed elements filling all of ``buf``.

    Returns a flat object array of ``bytes``.  A truncated length prefix, an
    element running past the end, or bytes left over after ``count``
    elements are all :class:`~sciserve.errors.InvalidInput`.
    """
    view = memoryview(buf).cast("B")
    size = len(view)
    # Every element needs at least its 4-byte prefix: reject impossible
    # counts before allocating anything of that length.
    if count * _LENGTH.size > size:
        raise InvalidInput(
            f"BYTES data of {size} bytes cannot hold {count} elements "
            f"(each needs a {_LENGTH.size}-byte length prefix)"
        )
    items: list[bytes] = []
    offset = 0
    for index in range(count):
        if offset + _LENGTH.size > size:
            raise InvalidInput(f"BYTES data truncated in the length prefix of element {index}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if offset + length > size:
            raise InvalidInput(
                f"BYTES data truncated: element {index} declares {length} bytes "
                f"but only {size - offset} remain"
            )
        items.append(view[offset : offset + length].tobytes())
        offset += length
    if offset != size:
        raise InvalidInput(f"BYTES data has {size - offset} trailing bytes after {count} elements")
    return _object_array(items)


def raw_buffer(arr: np.ndarray[Any, Any], datatype: str) -> memoryview:
    """The raw encoding of ``arr`` as a buffer, without copying when possible.

    Contiguous little-endian arrays are exposed as they are, so joining the
    result into a response body copies the tensor once, not twice.
    """
    if datatype == "BYTES":
        return memoryview(serialize_bytes_tensor(arr))
    dtype = numpy_dtype(datatype)
    # ascontiguousarray/astype copy only when the layout or byte order differ.
    flat = np.ascontiguousarray(arr).reshape(-1)
    if flat.dtype != dtype:
        flat = flat.astype(dtype)
    # A uint8 view exports through the buffer protocol for every dtype,
    # including ml_dtypes' bfloat16 which numpy cannot export directly.
    return flat.view(np.uint8).data


def to_raw(arr: np.ndarray[Any, Any], datatype: str) -> bytes:
    """The raw (little-endian, row-major) encoding of ``arr`` as ``bytes``."""
    return raw_buffer(arr, datatype).tobytes()


def from_raw(
    buf: bytes | bytearray | memoryview, datatype: str, shape: Sequence[int]
) -> np.ndarray[Any, Any]:
    """Decode the raw encoding of a tensor of ``datatype`` and ``shape``.

    Fixed-size datatypes are returned as a view over ``buf`` (no copy;
    read-only when ``buf`` is ``bytes``), after checking
    ``len(buf) == prod(shape) * itemsize``.  ``BOOL`` bytes must be 0 or 1.
    """
    count = element_count(shape)
    if datatype == "BYTES":
        return _reshape(deserialize_bytes_tensor(buf, count), shape)
    dtype = numpy_dtype(datatype)
    view = memoryview(buf).cast("B")
    expected = count * dtype.itemsize
    if len(view) != expected:
        raise InvalidInput(
            f"raw data is {len(view)} bytes but shape {list(shape)} of {datatype} needs {expected}"
        )
    if datatype == "BOOL":
        octets = np.frombuffer(view, dtype=np.uint8)
        if octets.size and int(octets.max()) > 1:
            raise InvalidInput("BOOL raw data must hold only the bytes 0 and 1")
    return _reshape(np.frombuffer(view, dtype=dtype), shape)


# -- JSON --------------------------------------------------------------------


def from_json_data(data: object, datatype: str, shape: Sequence[int]) -> np.ndarray[Any, Any]:
    """Decode the JSON ``data`` of a tensor into a numpy array of ``shape``.

    ``data`` is a flat list in row-major order, or lists nested exactly as
    ``shape``.  Elements must be ``true``/``false`` for ``BOOL``, integers in
    range for the integer types (booleans and floats are refused), numbers
    for the floating-point types and strings for ``BYTES`` (stored as their
    UTF-8 bytes).
    """
    dtype = numpy_dtype(datatype)
    flat = _flatten(data, tuple(shape))
    kinds = set(map(type, flat))
    if datatype == "BOOL":
        allowed: tuple[type, ...] = (bool,)
    elif datatype in _INTEGER:
        allowed = (int,)
    elif datatype in _FLOAT:
        allowed = (int, float)
    else:
        allowed = (str,)
    wrong = kinds.difference(allowed)
    if wrong:
        names = " or ".join(_JSON_NAMES[kind] for kind in allowed)
        raise InvalidInput(
            f"{datatype} data must hold {names} values, found {_kind(_first_of(flat, wrong))}"
        )
    if datatype == "BYTES":
        try:
            encoded = [text.encode("utf-8") for text in flat]
        except UnicodeEncodeError as exc:
            raise InvalidInput(f"BYTES data is not valid Unicode: {exc}") from exc
        return _reshape(_object_array(encoded), shape)
    try:
        if datatype == "BF16":
            # ml_dtypes converts from float64, not from Python ints.
            with np.errstate(over="ignore"):
                arr = np.array(flat, dtype=np.float64).astype(dtype)
        else:
            # Overflowing a narrow float type gives inf, as an IEEE cast does.
            with np.errstate(over="ignore"):
                arr = np.array(flat, dtype=dtype)
    except OverflowError as exc:
        raise InvalidInput(f"{datatype} data holds a value out of range: {exc}") from exc
    return _reshape(arr, shape)


def to_json_data(arr: np.ndarray[Any, Any], datatype: str) -> list[Any]:
    """The flat, row-major JSON list for ``arr``.

    ``BYTES`` elements are returned as strings when they are valid UTF-8.
    JSON cannot carry arbitrary bytes, so a ``BYTES`` tensor holding other
    bytes raises :class:`~sciserve.errors.InvalidInput`: clients must ask
    for such outputs in binary form (``"binary_data": true``).  Floats that
    are NaN or infinite are written as ``NaN`` / ``Infinity``, as Python's
    and rapidjson's JSON readers accept.
    """
    flat = arr.reshape(-1)
    if datatype == "BYTES":
        return [_bytes_to_text(item) for item in flat.tolist()]
    if datatype == "BF16":
        flat = flat.astype(np.float32)
    values: list[Any] = flat.tolist()
    return values


# -- helpers -----------------------------------------------------------------

_JSON_NAMES: MappingProxyType[type, str] = MappingProxyType(
    {bool: "boolean", int: "integer", float: "number", str: "string"}
)


def _kind(value: object) -> str:
    """A short, client-facing description of a JSON value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _object_array(items: list[Any]) -> np.ndarray[Any, np.dtype[np.object_]]:
    # np.array(items, dtype=object) would try to nest equal-length sequences;
    # filling a 1-d array keeps every element a scalar.
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


def _bytes_to_text(item: object) -> str:
    if isinstance(item, str):
        return item
    if not isinstance(item, bytes):
        raise InvalidInput(f"BYTES elements must be bytes or str, got {_kind(item)}")
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            "a BYTES output holds bytes that are not valid UTF-8 and cannot be "
            "sent as JSON; request it as binary data"
        ) from exc


def _first_of(flat: list[Any], kinds: set[type]) -> object:
    return next(item for item in flat if type(item) in kinds)


def _flatten(data: object, shape: tuple[int, ...]) -> list[Any]:
    """Flatten row-major JSON data, checking nesting and element count."""
    count = element_count(shape)
    if not isinstance(data, list):
        raise InvalidInput(f"tensor data must be a list, got {_kind(data)}")
    if len(shape) > 1 and data and isinstance(data[0], list):
        flat: list[Any] = []
        _flatten_nested(data, shape, 0, flat)
        return flat
    if len(data) != count:
        raise InvalidInput(
            f"tensor data has {len(data)} elements but shape {list(shape)} needs {count}"
        )
    return data


def _flatten_nested(data: list[Any], shape: tuple[int, ...], depth: int, out: list[Any]) -> None:
    # Recursion depth is bounded by len(shape) <= MAX_DIMS.
    if len(data) != shape[depth]:
        raise InvalidInput(
            f"nested tensor data does not match shape {list(shape)}: dimension {depth} "
            f"has {len(data)} entries, expected {shape[depth]}"
        )
    if depth == len(shape) - 1:
        out.extend(data)  # element types are checked by the caller
        return
    for row in data:
        if not isinstance(row, list):
            raise InvalidInput(
                f"nested tensor data does not match shape {list(shape)}: "
                f"expected a list at depth {depth + 1}, got {_kind(row)}"
            )
        _flatten_nested(row, shape, depth + 1, out)


def _reshape(arr: np.ndarray[Any, Any], shape: Sequence[int]) -> np.ndarray[Any, Any]:
    try:
        return arr.reshape(tuple(shape))
    except ValueError as exc:  # e.g. absurd dimensions around a zero
        raise InvalidInput(f"cannot shape tensor as {list(shape)}: {exc}") from exc


def _unknown(datatype: object) -> InvalidInput:
    return InvalidInput(f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")


def _bfloat16() -> np.dtype[Any]:
    try:
        import ml_dtypes
    except ImportError as exc:
        raise DependencyMissing(
            "the BF16 datatype needs the 'ml_dtypes' package (pip install ml_dtypes)"
        ) from exc
    dtype: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
    return dtype
