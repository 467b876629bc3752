"""The sha256 of a model's outputs, for reproducibility records.

Two runs agree bit for bit exactly when their digests do, whatever the
machine's byte order or the arrays' memory layout: each output is hashed as
its name, its dtype in little-endian form, its shape and its values in
C order, little-endian.  Every part is length-prefixed, so no two different
sets of outputs share a byte stream.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import MetricInputError

__all__ = ["canonical_bytes", "predictions_sha256"]

#: Bumped if the canonical form ever changes, so old digests are not compared with new.
_FORMAT = b"sciserve-outputs-v1"


def _frame(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


def canonical_bytes(array: Any) -> bytes:
    """One array as ``dtype · shape · values`` (little-endian, C order), framed."""
    values = np.asarray(array)
    if values.dtype.kind not in "biufc":
        raise MetricInputError(
            f"outputs of dtype {values.dtype} have no canonical bytes; only numbers "
            "and booleans are hashed"
        )
    little = values.dtype.newbyteorder("<")
    data = np.ascontiguousarray(values, dtype=little).tobytes(order="C")
    shape = struct.pack(f"<{values.ndim}Q", *values.shape)
    return _frame(little.str.encode()) + _frame(shape) + _frame(data)


def predictions_sha256(outputs: Mapping[str, Any] | Any) -> str:
    """Hex sha256 of a model's outputs: one array, or outputs by name.

    Names are hashed in sorted order, so a dict's insertion order does not
    matter; a bare array hashes as the single output named ``""``.
    """
    named = dict(outputs) if isinstance(outputs, Mapping) else {"": outputs}
    digest = hashlib.sha256(_frame(_FORMAT))
    for name in sorted(named):
        digest.update(_frame(str(name).encode()))
        digest.update(canonical_bytes(named[name]))
    return digest.hexdigest()
