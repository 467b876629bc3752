"""Tiny real model packages for tests (ONNX built from numpy weights)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sciserve._hashing import sha256_file
from sciserve.config import Settings
from sciserve.package.manifest import Manifest, dump_manifest
from sciserve.registry.registry import Registry


def linear_onnx(path: Path, weight: np.ndarray, bias: np.ndarray) -> None:
    """Write ``y = x @ weight + bias`` (FP32, batch dim symbolic) to ``path``."""
    n_in, n_out = weight.shape
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_out])],
        [
            numpy_helper.from_array(weight.astype(np.float32), "W"),
            numpy_helper.from_array(bias.astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def make_onnx_package(
    root: Path,
    *,
    name: str = "linear",
    version: str = "1.0.0",
    namespace: str = "default",
    n_in: int = 4,
    n_out: int = 3,
    scale: float = 1.0,
    extra: dict[str, Any] | None = None,
) -> Path:
    """A complete, valid package directory with a linear ONNX model."""
    root.mkdir(parents=True, exist_ok=True)
    weight = np.arange(n_in * n_out, dtype=np.float32).reshape(n_in, n_out) * scale
    linear_onnx(root / "model.onnx", weight, np.full(n_out, scale, np.float32))
    sha, size = sha256_file(root / "model.onnx")
    data: dict[str, Any] = {
        "name": name,
        "version": version,
        "namespace": namespace,
        "description": "y = x @ W + b",
        "runtime": "onnx",
        "model_file": "model.onnx",
        "max_batch_size": 64,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, n_in]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, n_out]}],
        "files": [{"path": "model.onnx", "size": size, "sha256": sha, "role": "model"}],
        "license": "MIT",
        "authors": [{"name": "Test Author", "orcid": "0000-0002-1825-0097"}],
    }
    data.update(extra or {})
    (root / "sciserve.yaml").write_text(dump_manifest(Manifest.model_validate(data)))
    return root


def expected_linear(x: np.ndarray, n_in: int = 4, n_out: int = 3, scale: float = 1.0) -> np.ndarray:
    weight = np.arange(n_in * n_out, dtype=np.float32).reshape(n_in, n_out) * scale
    return x.astype(np.float32) @ weight + np.float32(scale)


def write_package(
    root: Path,
    *,
    name: str,
    runtime: str,
    model_file: str | None,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    version: str = "1.0.0",
    namespace: str = "default",
    files: tuple[str, ...] = (),
    max_batch_size: int = 8,
    runtime_options: dict[str, Any] | None = None,
) -> Path:
    """Write ``sciserve.yaml`` for files already under ``root``."""
    entries = []
    for path in [*([model_file] if model_file else []), *files]:
        sha, size = sha256_file(root / path)
        entries.append({"path": path, "size": size, "sha256": sha})
    manifest = Manifest.model_validate(
        {
            "name": name,
            "version": version,
            "namespace": namespace,
            "runtime": runtime,
            "model_file": model_file,
            "runtime_options": runtime_options or {},
            "max_batch_size": max_batch_size,
            "inputs": inputs,
            "outputs": outputs,
            "files": entries,
            "license": "MIT",
            "description": f"test model {name}",
        }
    )
    (root / "sciserve.yaml").write_text(dump_manifest(manifest))
    return root


def python_package(
    root: Path,
    name: str,
    source: str,
    *,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    namespace: str = "lab",
    **options: Any,
) -> Path:
    """A ``python``-runtime package of ``source`` (a module with a ``Model``
    class) under ``root``; ``options`` go to its runtime options.  Its
    namespace must be trusted to publish it."""
    root.mkdir(parents=True)
    (root / "model.py").write_text(source)
    return write_package(
        root,
        name=name,
        runtime="python",
        model_file="model.py",
        inputs=inputs,
        outputs=outputs,
        namespace=namespace,
        max_batch_size=1024,
        runtime_options={"entrypoint": "model.py:Model", **options},
    )


#: OIP datatype → ONNX element type, for identity models.
ONNX_TYPES = {
    "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING, "BF16": TensorProto.BFLOAT16,
}  # fmt: skip


def identity_package(root: Path, datatype: str, *, name: str | None = None) -> Path:
    """An ONNX ``OUTPUT0 = Identity(INPUT0)`` package for one datatype, shape [-1, 3]."""
    root.mkdir(parents=True, exist_ok=True)
    elem = ONNX_TYPES[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "identity",
        [helper.make_tensor_value_info("INPUT0", elem, ["batch", 3])],
        [helper.make_tensor_value_info("OUTPUT0", elem, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / "model.onnx").write_bytes(model.SerializeToString())
    tensor = {"datatype": datatype, "shape": [-1, 3]}
    return write_package(
        root,
        name=name or f"identity_{datatype.lower()}",
        runtime="onnx",
        model_file="model.onnx",
        inputs=[{"name": "INPUT0", **tensor}],
        outputs=[{"name": "OUTPUT0", **tensor}],
    )


def time_major_gru_onnx(
    path: Path, *, n_features: int = 3, hidden: int = 5, classes: int = 4
) -> None:
    """A recurrent classifier: a GRU over ``x`` ``[T, B, F]`` (time-major, batch on
    dim 1), its last hidden state times a matrix gives ``y`` ``[B, C]``."""
    rng = np.random.default_rng(11)
    weights = {
        "W": rng.normal(size=(1, 3 * hidden, n_features)),
        "R": rng.normal(size=(1, 3 * hidden, hidden)) * 0.5,
        "B": rng.normal(size=(1, 6 * hidden)) * 0.1,
        "C": rng.normal(size=(hidden, classes)),
        "axes": np.array([0], np.int64),
    }
    graph = helper.make_graph(
        [
            helper.make_node("GRU", ["x", "W", "R", "B"], ["", "h_n"], hidden_size=hidden),
            helper.make_node("Squeeze", ["h_n", "axes"], ["h"]),
            helper.make_node("MatMul", ["h", "C"], ["y"]),
        ],
        "gru",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", n_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", classes])],
        [
            numpy_helper.from_array(
                value if value.dtype == np.int64 else value.astype(np.float32), name
            )
            for name, value in weights.items()
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def make_softmax_package(
    root: Path,
    *,
    labels: tuple[str, ...],
    name: str = "softmax",
    namespace: str = "default",
    n_in: int = 2,
) -> Path:
    """A classifier: ``probabilities = softmax(x @ W + b)``, columns named ``labels``."""
    root.mkdir(parents=True, exist_ok=True)
    n_out = len(labels)
    weight = (np.arange(n_in * n_out, dtype=np.float32).reshape(n_in, n_out) % 3 - 1) * 0.5
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", n_out])],
        [
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(np.linspace(-0.5, 0.5, n_out, dtype=np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    sha, size = hashlib.sha256(data).hexdigest(), len(data)
    make_onnx_package(
        root,
        name=name,
        namespace=namespace,
        n_in=n_in,
        n_out=n_out,
        extra={
            "outputs": [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": [-1, n_out],
                    "labels": list(labels),
                }
            ],
            "files": [{"path": "model.onnx", "size": size, "sha256": sha, "role": "model"}],
        },
    )
    (root / "model.onnx").write_bytes(data)
    return root


def home_with_linear(root: Path) -> Path:
    """A sciserve home under ``root`` whose embedded registry holds the
    ``linear`` model of :func:`make_onnx_package`."""
    home = root / "home"
    with Registry(Settings.load(home, environ={})) as registry:
        registry.publish(make_onnx_package(root / "linear"))
    return home
