"""Check that a server's answer to the benchmark request is right, before timing it.

Each check sends the very bytes the load generator will send and compares
the decoded output with in-process ONNX Runtime, so a server that answers
fast but wrong (or with an error) is never measured.
"""

from __future__ import annotations

import json

import grpc
import httpx
import numpy as np
from tritonclient.grpc import service_pb2

from .model import MODEL_NAME, OUTPUT_NAME
from .payloads import Payloads

__all__ = ["WrongAnswer", "check_grpc", "check_http_binary", "check_http_json", "infer_url"]

# Servers may sum in a different order (batched vs single GEMMs).
_RTOL = 1e-4
_ATOL = 1e-5


class WrongAnswer(RuntimeError):
    """The server failed the request or its output differs from ONNX Runtime's."""


def infer_url(http_address: str) -> str:
    """The OIP REST inference URL of the benchmark model at ``host:port``."""
    return f"http://{http_address}/v2/models/{MODEL_NAME}/infer"


def _compare(server: str, got: np.ndarray, expected: np.ndarray) -> None:
    if got.shape != expected.shape:
        raise WrongAnswer(f"{server}: output shape {got.shape}, expected {expected.shape}")
    if not np.allclose(got, expected, rtol=_RTOL, atol=_ATOL):
        worst = float(np.max(np.abs(got - expected)))
        raise WrongAnswer(f"{server}: output differs from ONNX Runtime by up to {worst:.3g}")


def _post(server: str, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=30.0)
    except httpx.HTTPError as exc:
        raise WrongAnswer(f"{server}: {type(exc).__name__}: {exc}") from exc
    if response.status_code != 200:
        raise WrongAnswer(f"{server}: HTTP {response.status_code}: {response.text[:300]}")
    return response


def _output_from_json(server: str, document: dict[str, object], raw: bytes) -> np.ndarray:
    outputs = document.get("outputs")
    if not isinstance(outputs, list):
        raise WrongAnswer(f"{server}: the response has no outputs")
    for output in outputs:
        if output.get("name") != OUTPUT_NAME:
            continue
        shape = [int(d) for d in output["shape"]]
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            # Binary outputs follow the JSON header in the order they are listed.
            return np.frombuffer(raw[: int(size)], dtype=np.float32).reshape(shape)
        return np.asarray(output["data"], dtype=np.float32).reshape(shape)
    raise WrongAnswer(f"{server}: the response has no {OUTPUT_NAME}")


def check_http_binary(server: str, http_address: str, payloads: Payloads) -> None:
    """Send the binary-tensor body and check the (binary or JSON) answer."""
    response = _post(
        server,
        infer_url(http_address),
        payloads.http_binary,
        {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(payloads.http_binary_header_length),
        },
    )
    content = response.content
    length = response.headers.get("inference-header-content-length")
    if length is None:
        raise WrongAnswer(f"{server}: asked for a binary output, got a JSON-only response")
    header = json.loads(content[: int(length)])
    got = _output_from_json(server, header, content[int(length) :])
    _compare(server, got, payloads.expected)


def check_http_json(server: str, http_address: str, payloads: Payloads) -> None:
    """Send the JSON body and check the JSON answer."""
    response = _post(
        server, infer_url(http_address), payloads.http_json, {"Content-Type": "application/json"}
    )
    got = _output_from_json(server, response.json(), b"")
    _compare(server, got, payloads.expected)


def check_grpc(server: str, grpc_address: str, payloads: Payloads) -> None:
    """Send the serialized ``ModelInferRequest`` and check the response."""
    with grpc.insecure_channel(grpc_address) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        try:
            response = infer(payloads.grpc, timeout=30.0)
        except grpc.RpcError as exc:
            raise WrongAnswer(f"{server}: gRPC {exc.code()}: {exc.details()}") from exc
    for index, output in enumerate(response.outputs):
        if output.name != OUTPUT_NAME:
            continue
        shape = list(output.shape)
        if index < len(response.raw_output_contents):
            got = np.frombuffer(response.raw_output_contents[index], dtype=np.float32)
        else:
            got = np.asarray(output.contents.fp32_contents, dtype=np.float32)
        _compare(server, got.reshape(shape), payloads.expected)
        return
    raise WrongAnswer(f"{server}: the response has no {OUTPUT_NAME}")
