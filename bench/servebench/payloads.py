"""Prebuilt request bodies, one set per batch size, shared by every server.

Bodies are encoded once, before timing, so the load generators only copy
bytes: the cost of building a request never lands in the measurement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tritonclient.grpc import service_pb2

from .model import IN_FEATURES, INPUT_NAME, MODEL_NAME, OUTPUT_NAME

__all__ = ["BodyFiles", "Payloads", "make_payloads"]


@dataclass(frozen=True)
class BodyFiles:
    """The request bodies on disk, where wrk and h2load read them."""

    binary: Path
    json: Path
    #: The ``ModelInferRequest`` as a gRPC message on the wire: a compression
    #: flag (0) and a 4-byte big-endian length before the serialized message.
    grpc: Path


@dataclass(frozen=True)
class Payloads:
    """The same input rows encoded for every protocol, and the expected output."""

    batch: int
    inputs: np.ndarray
    expected: np.ndarray
    #: OIP binary tensor extension: a JSON header followed by the raw FP32 bytes.
    http_binary: bytes
    #: Length of the JSON header, sent as ``Inference-Header-Content-Length``.
    http_binary_header_length: int
    #: Plain OIP JSON with a flat ``data`` list.
    http_json: bytes
    #: A serialized ``inference.ModelInferRequest`` with ``raw_input_contents``.
    grpc: bytes

    def write(self, directory: Path) -> BodyFiles:
        """Write the bodies under ``directory`` for the load generators."""
        directory.mkdir(parents=True, exist_ok=True)
        files = BodyFiles(
            binary=directory / f"binary-{self.batch}.bin",
            json=directory / f"json-{self.batch}.json",
            grpc=directory / f"grpc-{self.batch}.bin",
        )
        files.binary.write_bytes(self.http_binary)
        files.json.write_bytes(self.http_json)
        files.grpc.write_bytes(b"\x00" + len(self.grpc).to_bytes(4, "big") + self.grpc)
        return files


def make_payloads(inputs: np.ndarray, expected: np.ndarray) -> Payloads:
    """Encode ``inputs`` (FP32, ``[batch, 64]``) for HTTP-binary, HTTP-JSON and gRPC."""
    if inputs.dtype != np.float32 or inputs.ndim != 2 or inputs.shape[1] != IN_FEATURES:
        raise ValueError(f"expected FP32 [batch, {IN_FEATURES}], got {inputs.dtype} {inputs.shape}")
    batch = int(inputs.shape[0])
    shape = [batch, IN_FEATURES]
    raw = np.ascontiguousarray(inputs).tobytes()

    header = json.dumps(
        {
            "inputs": [
                {
                    "name": INPUT_NAME,
                    "shape": shape,
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": OUTPUT_NAME, "parameters": {"binary_data": True}}],
        },
        separators=(",", ":"),
    ).encode()

    as_json = json.dumps(
        {
            "inputs": [
                {
                    "name": INPUT_NAME,
                    "shape": shape,
                    "datatype": "FP32",
                    "data": inputs.ravel().tolist(),
                }
            ]
        },
        separators=(",", ":"),
    ).encode()

    request = service_pb2.ModelInferRequest(model_name=MODEL_NAME)
    tensor = request.inputs.add()
    tensor.name = INPUT_NAME
    tensor.datatype = "FP32"
    tensor.shape.extend(shape)
    request.outputs.add().name = OUTPUT_NAME
    request.raw_input_contents.append(raw)

    return Payloads(
        batch=batch,
        inputs=inputs,
        expected=expected,
        http_binary=header + raw,
        http_binary_header_length=len(header),
        http_json=as_json,
        grpc=request.SerializeToString(),
    )
