"""The model, its package and the prebuilt request bodies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from servebench.model import build_mlp, write_model, write_package
from servebench.payloads import make_payloads
from tritonclient.grpc import service_pb2

from sciserve.package.validate import check_package


def _run(model_path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["OUTPUT0"], {"INPUT0": x})
    return np.asarray(out)


def test_the_model_is_seeded() -> None:
    assert build_mlp(3).SerializeToString() == build_mlp(3).SerializeToString()
    assert build_mlp(3).SerializeToString() != build_mlp(4).SerializeToString()


def test_the_model_maps_64_features_to_10_outputs(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((5, 64), dtype=np.float32)
    out = _run(path, x)
    assert out.shape == (5, 10)
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out))


def test_the_package_passes_sciserve_validation(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m.onnx")
    package = write_package(tmp_path / "pkg", model)
    problems = check_package(package)
    assert [p for p in problems if p.severity == "error"] == []
    assert sorted(p.name for p in package.iterdir()) == ["model.onnx", "sciserve.yaml"]


@pytest.mark.parametrize("batch", [1, 64])
def test_every_body_carries_the_same_rows(tmp_path: Path, batch: int) -> None:
    x = np.random.default_rng(batch).standard_normal((batch, 64), dtype=np.float32)
    expected = np.zeros((batch, 10), dtype=np.float32)
    payloads = make_payloads(x, expected)

    length = payloads.http_binary_header_length
    header = json.loads(payloads.http_binary[:length])
    (tensor,) = header["inputs"]
    assert tensor["shape"] == [batch, 64]
    assert tensor["parameters"]["binary_data_size"] == x.nbytes
    assert header["outputs"] == [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]
    raw = np.frombuffer(payloads.http_binary[length:], dtype=np.float32)
    np.testing.assert_array_equal(raw.reshape(batch, 64), x)

    (as_json,) = json.loads(payloads.http_json)["inputs"]
    np.testing.assert_array_equal(np.asarray(as_json["data"], dtype=np.float32).reshape(x.shape), x)

    request = service_pb2.ModelInferRequest.FromString(payloads.grpc)
    assert request.model_name == "mlp"
    assert list(request.inputs[0].shape) == [batch, 64]
    grpc_rows = np.frombuffer(request.raw_input_contents[0], dtype=np.float32)
    np.testing.assert_array_equal(grpc_rows.reshape(batch, 64), x)

    files = payloads.write(tmp_path)
    assert files.binary.read_bytes() == payloads.http_binary
    assert files.json.read_bytes() == payloads.http_json
    framed = files.grpc.read_bytes()
    assert framed[0] == 0  # not compressed
    assert int.from_bytes(framed[1:5], "big") == len(payloads.grpc)
    assert framed[5:] == payloads.grpc


def test_payloads_refuse_other_shapes() -> None:
    with pytest.raises(ValueError, match="FP32"):
        make_payloads(np.zeros((2, 3), dtype=np.float32), np.zeros((2, 10), dtype=np.float32))
    with pytest.raises(ValueError, match="FP32"):
        make_payloads(np.zeros((2, 64), dtype=np.float64), np.zeros((2, 10), dtype=np.float32))
