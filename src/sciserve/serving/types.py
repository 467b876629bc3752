"""Inference requests and responses, independent of any transport.

The REST and gRPC codecs translate wire messages into these classes and
back; everything between (routing, batching, runtimes) sees only them.
Construction validates the invariants every codec relies on, so a value of
these types is always internally consistent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from ..datatypes import (
    MAX_DIMS,
    MAX_ELEMENTS,
    check_shape,
    datatype_of,
    element_count,
    numpy_dtype,
)
from ..errors import InvalidInput

__all__ = [
    "InferInput",
    "InferOutput",
    "InferenceRequest",
    "InferenceResponse",
    "ParameterValue",
    "Parameters",
    "RequestedOutput",
    "check_parameters",
    "refuse_extensions",
]

#: The value types the protocol allows for parameters.
ParameterValue = bool | int | float | str
Parameters = dict[str, ParameterValue]


def check_parameters(value: object, where: str = "parameters") -> Parameters:
    """Validate a parameters object and return it as a fresh dict.

    The protocol allows only booleans, integers, floats and strings as
    values; ``where`` locates the object in error messages.
    """
    if value is None or (type(value) is dict and not value):
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{where} must be an object, got {type(value).__name__}")
    params: Parameters = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise InvalidInput(f"{where}: parameter names must be strings")
        if not isinstance(item, bool | int | float | str):
            raise InvalidInput(
                f"{where}.{key} must be a boolean, number or string, "
                f"got {'null' if item is None else type(item).__name__}"
            )
        params[key] = item
    return params


# Parameters of Triton extensions sciserve does not implement.  Refusing them
# beats ignoring them: a client asking for shared memory or top-k classes
# would otherwise get a well-formed but wrong answer.
_UNSUPPORTED = MappingProxyType(
    {
        "classification": "classification",
        "shared_memory_region": "shared-memory",
        "shared_memory_byte_size": "shared-memory",
        "shared_memory_offset": "shared-memory",
    }
)


def refuse_extensions(parameters: Mapping[str, object], label: str) -> None:
    """Raise :class:`~sciserve.errors.InvalidInput` if a tensor's parameters
    use the classification or shared-memory extension (not supported)."""
    if not parameters:
        return
    for key, extension in _UNSUPPORTED.items():
        if key in parameters:
            raise InvalidInput(f"{label}: the {extension} extension is not supported")


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{what} name must be a non-empty string")
    return name


def _check_tensor(
    name: str, datatype: str, shape: object, data: np.ndarray[Any, Any], what: str
) -> tuple[tuple[int, ...], np.ndarray[Any, Any]]:
    """Validate a tensor and return its shape and data shaped accordingly."""
    expected = numpy_dtype(datatype)
    # Data that already has the declared shape (the codecs build it so) needs
    # only what check_shape asks beyond "integers, none negative", and asking
    # it here is cheaper: this runs for every tensor of every request.
    if (
        type(shape) is tuple
        and shape == data.shape
        and data.dtype == expected
        and len(shape) <= MAX_DIMS
        and 0 not in shape  # else the element count of the shape is not data.size
        and data.size <= MAX_ELEMENTS
    ):
        return shape, data
    label = f"{what} {name!r}"
    dims = check_shape(shape, label)
    if data.dtype != expected:
        raise InvalidInput(f"{label}: data of dtype {data.dtype} does not match {datatype}")
    count = element_count(dims)
    if data.size != count:
        raise InvalidInput(
            f"{label}: data has {data.size} elements but shape {list(dims)} needs {count}"
        )
    # Flat data for a declared shape is fine: reshaping a view copies nothing.
    return dims, data if data.shape == dims else data.reshape(dims)


@dataclass(frozen=True, slots=True)
class InferInput:
    """One input tensor of a request; ``data`` has exactly ``shape``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray[Any, Any]
    parameters: Parameters = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name(self.name, "input")
        shape, data = _check_tensor(self.name, self.datatype, self.shape, self.data, "input")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "parameters", check_parameters(self.parameters))


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An output the client asked for.

    ``binary`` is the client's choice of encoding on transports that offer
    one (REST's binary tensor data extension); ``None`` means it did not
    say, and the server's default applies.
    """

    name: str
    binary: bool | None = None
    parameters: Parameters = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name(self.name, "output")
        object.__setattr__(self, "parameters", check_parameters(self.parameters))


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """An inference request for one model.

    ``outputs`` empty means "every output of the model".  Input and output
    names are unique.
    """

    model_name: str
    model_version: str | None
    id: str | None
    inputs: list[InferInput]
    outputs: list[RequestedOutput] = field(default_factory=list)
    parameters: Parameters = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise InvalidInput("an inference request needs at least one input")
        _check_unique([tensor.name for tensor in self.inputs], "input")
        _check_unique([output.name for output in self.outputs], "requested output")
        object.__setattr__(self, "parameters", check_parameters(self.parameters))

    def input(self, name: str) -> InferInput:
        """The input called ``name``; :class:`~sciserve.errors.InvalidInput` if absent."""
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        raise InvalidInput(f"the request has no input {name!r}")


@dataclass(frozen=True, slots=True)
class InferOutput:
    """One output tensor of a response; ``data`` has exactly ``shape``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray[Any, Any]
    parameters: Parameters = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name(self.name, "output")
        shape, data = _check_tensor(self.name, self.datatype, self.shape, self.data, "output")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "parameters", check_parameters(self.parameters))

    @classmethod
    def from_numpy(
        cls, name: str, data: np.ndarray[Any, Any], parameters: Parameters | None = None
    ) -> InferOutput:
        """An output whose datatype and shape are taken from ``data``.

        Fixed-width string arrays (``S``/``U``) become ``BYTES`` object arrays
        and big-endian arrays are converted to little-endian.
        """
        datatype = datatype_of(data.dtype)
        if datatype == "BYTES" and data.dtype.kind != "O":
            data = data.astype(object)
        elif data.dtype.byteorder == ">":
            data = data.astype(data.dtype.newbyteorder("<"))
        return cls(name, datatype, data.shape, data, dict(parameters or {}))


@dataclass(frozen=True, slots=True)
class InferenceResponse:
    """The result of an inference request."""

    model_name: str
    model_version: str
    id: str | None
    outputs: list[InferOutput]
    parameters: Parameters = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_unique([tensor.name for tensor in self.outputs], "output")
        object.__setattr__(self, "parameters", check_parameters(self.parameters))


def _check_unique(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidInput(f"{what} {name!r} is given more than once")
        seen.add(name)
