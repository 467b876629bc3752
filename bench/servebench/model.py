"""The benchmark model: an FP32 MLP 64 → 256 → 256 → 10 built from seeded weights.

Every server loads the very same ``model.onnx`` bytes, so differences in the
results come from the serving stack and not from the model.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "INPUT_NAME",
    "IN_FEATURES",
    "MAX_BATCH",
    "MODEL_NAME",
    "OUTPUT_NAME",
    "OUT_FEATURES",
    "build_mlp",
    "write_model",
    "write_package",
]

MODEL_NAME = "mlp"
INPUT_NAME = "INPUT0"
OUTPUT_NAME = "OUTPUT0"
IN_FEATURES = 64
HIDDEN = 256
OUT_FEATURES = 10
MAX_BATCH = 64

# Old enough for every onnxruntime the peers install, new enough for onnx.
_OPSET = 17
_IR_VERSION = 8


def build_mlp(seed: int = 0, hidden: int = HIDDEN) -> onnx.ModelProto:
    """Build the MLP (``hidden`` units per hidden layer) with He-initialised
    weights drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    sizes = [IN_FEATURES, hidden, hidden, OUT_FEATURES]
    initializers = []
    nodes = []
    current = INPUT_NAME
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        weight = rng.normal(0.0, np.sqrt(2.0 / fan_in), (fan_in, fan_out)).astype(np.float32)
        bias = rng.normal(0.0, 0.01, fan_out).astype(np.float32)
        initializers += [
            numpy_helper.from_array(weight, f"w{layer}"),
            numpy_helper.from_array(bias, f"b{layer}"),
        ]
        if layer == len(sizes) - 2:
            nodes.append(
                helper.make_node("Gemm", [current, f"w{layer}", f"b{layer}"], [OUTPUT_NAME])
            )
        else:
            nodes.append(
                helper.make_node("Gemm", [current, f"w{layer}", f"b{layer}"], [f"z{layer}"])
            )
            nodes.append(helper.make_node("Relu", [f"z{layer}"], [f"h{layer}"]))
            current = f"h{layer}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", IN_FEATURES])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", OUT_FEATURES])],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="sciserve-bench"
    )
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    return model


def write_model(path: Path, seed: int = 0, hidden: int = HIDDEN) -> Path:
    """Write the MLP to ``path`` and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(build_mlp(seed, hidden).SerializeToString())
    return path


def write_package(
    directory: Path, model_path: Path, version: str = "1.0.0", hidden: int = HIDDEN
) -> Path:
    """Write a sciserve model package (``sciserve.yaml`` + ``model.onnx``) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    data = model_path.read_bytes()
    (directory / "model.onnx").write_bytes(data)
    manifest = f"""\
schema_version: 1
name: {MODEL_NAME}
version: {version}
description: Benchmark MLP {IN_FEATURES}-{hidden}-{hidden}-{OUT_FEATURES}, FP32, seeded weights.
runtime: onnx
model_file: model.onnx
max_batch_size: {MAX_BATCH}
inputs:
  - name: {INPUT_NAME}
    datatype: FP32
    shape: [-1, {IN_FEATURES}]
outputs:
  - name: {OUTPUT_NAME}
    datatype: FP32
    shape: [-1, {OUT_FEATURES}]
files:
  - path: model.onnx
    size: {len(data)}
    sha256: {hashlib.sha256(data).hexdigest()}
    role: model
license: MIT
authors:
  - name: The sciserve developers
tags: [benchmark]
"""
    (directory / "sciserve.yaml").write_text(manifest, encoding="utf-8")
    return directory
