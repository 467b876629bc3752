"""The Open Inference Protocol (KServe v2), as spoken by NVIDIA Triton.

* :mod:`~sciserve.protocol.types`: transport-free requests and responses.
* :mod:`~sciserve.protocol.datatypes`: protocol datatypes and their raw,
  JSON and numpy forms.
* :mod:`~sciserve.protocol.rest_codec`: HTTP bodies, including Triton's
  binary tensor data extension.
* :mod:`~sciserve.protocol.grpc_codec`: the gRPC messages (imported on its
  own, since it needs ``tritonclient``'s compiled protobuf module).

Codecs raise :class:`~sciserve.errors.InvalidInput` for anything a client
got wrong; servers map it to their transport's status code.
"""

from __future__ import annotations

from .datatypes import DATATYPES, datatype_of, numpy_dtype
from .types import (
    InferenceRequest,
    InferenceResponse,
    InferInput,
    InferOutput,
    Parameters,
    ParameterValue,
    RequestedOutput,
)

__all__ = [
    "DATATYPES",
    "InferInput",
    "InferOutput",
    "InferenceRequest",
    "InferenceResponse",
    "ParameterValue",
    "Parameters",
    "RequestedOutput",
    "datatype_of",
    "numpy_dtype",
]
