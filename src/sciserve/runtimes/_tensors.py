"""Tensors at the runtime boundary: OIP datatypes, numpy dtypes and checks.

Every runtime checks what callers send against the manifest signature before
handing it to a library, so a wrong dtype or shape is reported as
:class:`InvalidInput` naming the tensor, never as a library traceback.  The
outputs go the other way: cast to the manifest's datatype and rank, so what a
model returns is exactly what its manifest promises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..datatypes import numpy_dtype
from ..errors import InvalidInput, ManifestError, ModelExecutionError, Problem
from ..package.manifest import TensorSpec

__all__ = [
    "check_inputs",
    "conform_output",
    "numpy_dtype",
    "only_tensor",
    "shape_mismatch",
]


def shape_mismatch(expected: Sequence[int], actual: Sequence[int]) -> str | None:
    """Why ``actual`` does not fit ``expected`` (``-1`` = any size), or ``None``."""
    if len(actual) != len(expected):
        return f"expected rank {len(expected)}, got rank {len(actual)}"
    for axis, (want, got) in enumerate(zip(expected, actual, strict=True)):
        if want != -1 and want != got:
            return f"dimension {axis} must be {want}, got {got}"
    return None


def check_inputs(specs: Sequence[TensorSpec], inputs: Mapping[str, Any]) -> list[np.ndarray]:
    """Check ``inputs`` against the manifest's input ``specs``.

    Returns the arrays in the order of ``specs`` (the order positional
    runtimes pass them in).  Raises :class:`InvalidInput` for an unknown or
    missing name, a wrong dtype, rank or fixed dimension.
    """
    declared = [spec.name for spec in specs]
    unknown = sorted(set(inputs) - set(declared))
    if unknown:
        raise InvalidInput(
            f"unknown input {', '.join(map(repr, unknown))}; "
            f"the model takes {', '.join(map(repr, declared)) or 'no inputs'}"
        )
    arrays = []
    for spec in specs:
        if spec.name not in inputs:
            raise InvalidInput(f"missing input {spec.name!r} ({spec.datatype} {spec.shape})")
        arrays.append(_check_tensor(spec, inputs[spec.name]))
    return arrays


def _check_tensor(spec: TensorSpec, value: Any) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise InvalidInput(f"input {spec.name!r} must be a numpy array, not {type(value).__name__}")
    array: np.ndarray = value
    if spec.datatype == "BYTES":
        array = _bytes_input(spec, array)
    elif array.dtype != numpy_dtype(spec.datatype):
        raise InvalidInput(
            f"input {spec.name!r} has dtype {array.dtype}, but the model takes "
            f"{spec.datatype} ({numpy_dtype(spec.datatype)})"
        )
    problem = shape_mismatch(spec.shape, array.shape)
    if problem:
        raise InvalidInput(
            f"input {spec.name!r} has shape {list(array.shape)}, but the model takes "
            f"{spec.shape} (-1 = any size): {problem}"
        )
    return array


def _bytes_input(spec: TensorSpec, value: np.ndarray) -> np.ndarray:
    # Fixed-width numpy bytes ("S") are accepted and widened to the object
    # form every runtime sees, so there is a single BYTES representation.
    if value.dtype.kind == "S":
        widened: np.ndarray = value.astype(object)
        return widened
    if value.dtype.kind == "O" and all(isinstance(item, bytes) for item in value.flat):
        return value
    raise InvalidInput(
        f"input {spec.name!r} is BYTES and must be an array of bytes objects, "
        f"not dtype {value.dtype}"
    )


def conform_output(spec: TensorSpec, value: Any) -> np.ndarray:
    """Cast one model output to the manifest's datatype and rank.

    Only unit dimensions may be added or removed (a binary classifier's
    ``[N]`` becomes a declared ``[-1, 1]``); anything else that contradicts
    the manifest is a :class:`ModelExecutionError`, since the model did not
    return what its package promises.
    """
    try:
        array = np.asarray(value)
        if spec.datatype == "BYTES":
            array = _as_bytes(array)
        else:
            array = array.astype(numpy_dtype(spec.datatype), copy=False)
    except (TypeError, ValueError) as exc:
        raise ModelExecutionError(
            f"output {spec.name!r} cannot be converted to {spec.datatype}: {exc}"
        ) from exc
    if array.ndim != len(spec.shape):
        array = _reshape_unit_dims(spec, array)
    problem = shape_mismatch(spec.shape, array.shape)
    if problem:
        raise ModelExecutionError(
            f"output {spec.name!r} has shape {list(array.shape)}, but the manifest declares "
            f"{spec.shape}: {problem}"
        )
    return array


def _reshape_unit_dims(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    try:
        reshaped = array.reshape(spec.shape)
    except ValueError:
        return array  # reported by the caller with both shapes
    # Reshaping [N, 3] to [-1] would silently flatten rows together: only
    # accept reshapes that leave every dimension other than 1 where it was.
    if [d for d in reshaped.shape if d != 1] != [d for d in array.shape if d != 1]:
        return array
    return reshaped


def _as_bytes(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind == "O" and all(isinstance(item, bytes) for item in array.flat):
        return array
    out = np.empty(array.shape, dtype=object)
    for index, item in np.ndenumerate(array):
        out[index] = item if isinstance(item, bytes) else str(item).encode()
    return out


def only_tensor(specs: Sequence[TensorSpec], group: str, runtime: str) -> TensorSpec:
    """The single tensor of ``group`` (``inputs``/``outputs``) a runtime supports.

    Raises :class:`ManifestError` when the manifest declares another number.
    """
    if len(specs) != 1:
        raise ManifestError(
            [
                Problem(
                    group,
                    f"the {runtime} runtime takes exactly one tensor here, "
                    f"the manifest declares {len(specs)}",
                    "declare one tensor, e.g. a [-1, n_features] matrix",
                )
            ]
        )
    return specs[0]
