"""The ``onnx`` runtime on tiny real graphs built with onnx.helper."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sciserve.errors import (
    DependencyMissing,
    DeviceUnavailable,
    InvalidInput,
    ManifestError,
    ModelExecutionError,
    ModelNotReady,
)
from sciserve.runtimes import get_runtime
from sciserve.runtimes.onnx import OnnxRuntime, onnx_signature

from .conftest import MakeSource

ELEM_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "BF16": TensorProto.BFLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}
NUMERIC = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
HAS_ML_DTYPES = importlib.util.find_spec("ml_dtypes") is not None


def save(path: Path, graph: onnx.GraphProto, **kwargs: Any) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # within what the installed onnxruntime reads
    onnx.save_model(model, str(path), **kwargs)


def one_node(path: Path, op: str, elem_in: int, elem_out: int, **attrs: Any) -> None:
    """A one-node graph ``y = op(x)`` over ``[N, 3]`` tensors."""
    save(
        path,
        helper.make_graph(
            [helper.make_node(op, ["x"], ["y"], **attrs)],
            op.lower(),
            [helper.make_tensor_value_info("x", elem_in, ["N", 3])],
            [helper.make_tensor_value_info("y", elem_out, ["N", 3])],
        ),
    )


def sample(datatype: str, rng: np.random.Generator) -> np.ndarray:
    dtype: np.dtype[Any] = np.dtype(NUMERIC[datatype])
    if dtype.kind == "b":
        return rng.random((4, 3)) > 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, (4, 3), dtype=dtype, endpoint=True)
    return rng.standard_normal((4, 3)).astype(dtype)


def loaded(source: Any) -> OnnxRuntime:
    runtime = OnnxRuntime(source)
    runtime.load()
    return runtime


# -- datatypes ---------------------------------------------------------------


@pytest.mark.parametrize("datatype", sorted(NUMERIC))
def test_identity_round_trips_each_numeric_datatype(
    tmp_path: Path, make_source: MakeSource, datatype: str
) -> None:
    one_node(tmp_path / "m.onnx", "Identity", ELEM_TYPES[datatype], ELEM_TYPES[datatype])
    source = make_source("onnx", "m.onnx", [("x", datatype, [-1, 3])], [("y", datatype, [-1, 3])])
    x = sample(datatype, np.random.default_rng(7))
    y = loaded(source).infer({"x": x})["y"]
    assert y.dtype == np.dtype(NUMERIC[datatype])
    np.testing.assert_array_equal(y, x)


def test_identity_round_trips_bytes_as_utf8(tmp_path: Path, make_source: MakeSource) -> None:
    one_node(tmp_path / "m.onnx", "Identity", TensorProto.STRING, TensorProto.STRING)
    source = make_source("onnx", "m.onnx", [("x", "BYTES", [-1, 3])], [("y", "BYTES", [-1, 3])])
    runtime = loaded(source)
    x = np.array([[b"gamma", "\u00e9t\u00e9".encode(), b""]], dtype=object)
    y = runtime.infer({"x": x})["y"]
    assert y.dtype == object
    assert y.tolist() == x.tolist()
    # Fixed-width numpy bytes are the same tensor.
    fixed = runtime.infer({"x": np.array([[b"a", b"bc", b"def"]])})["y"]
    assert fixed.tolist() == [[b"a", b"bc", b"def"]]


def test_bytes_that_are_not_utf8_are_refused(tmp_path: Path, make_source: MakeSource) -> None:
    one_node(tmp_path / "m.onnx", "Identity", TensorProto.STRING, TensorProto.STRING)
    source = make_source("onnx", "m.onnx", [("x", "BYTES", [-1, 3])], [("y", "BYTES", [-1, 3])])
    with pytest.raises(InvalidInput, match="UTF-8"):
        loaded(source).infer({"x": np.array([[b"\xff", b"a", b"b"]], dtype=object)})


def test_bytes_input_must_hold_bytes(tmp_path: Path, make_source: MakeSource) -> None:
    one_node(tmp_path / "m.onnx", "Identity", TensorProto.STRING, TensorProto.STRING)
    source = make_source("onnx", "m.onnx", [("x", "BYTES", [-1, 3])], [("y", "BYTES", [-1, 3])])
    with pytest.raises(InvalidInput, match="bytes"):
        loaded(source).infer({"x": np.array([["a", "b", "c"]])})


def test_bf16_round_trips_or_names_the_missing_package(
    tmp_path: Path, make_source: MakeSource
) -> None:
    one_node(tmp_path / "m.onnx", "Identity", TensorProto.BFLOAT16, TensorProto.BFLOAT16)
    source = make_source("onnx", "m.onnx", [("x", "BF16", [-1, 3])], [("y", "BF16", [-1, 3])])
    if not HAS_ML_DTYPES:
        with pytest.raises(DependencyMissing, match="ml_dtypes"):
            OnnxRuntime(source).load()
        return
    import ml_dtypes

    runtime = loaded(source)

    x: np.ndarray = np.array([[1.5, -2.0, 3.25], [0.0, 1e3, -7.5]], dtype=ml_dtypes.bfloat16)
    y = runtime.infer({"x": x})["y"]
    assert y.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(y.astype(np.float32), x.astype(np.float32))


@pytest.mark.parametrize(
    ("src", "dst"), [("FP32", "FP64"), ("INT32", "FP32"), ("FP64", "FP16"), ("UINT8", "INT64")]
)
def test_cast_matches_numpy(tmp_path: Path, make_source: MakeSource, src: str, dst: str) -> None:
    one_node(tmp_path / "m.onnx", "Cast", ELEM_TYPES[src], ELEM_TYPES[dst], to=ELEM_TYPES[dst])
    source = make_source("onnx", "m.onnx", [("x", src, [-1, 3])], [("y", dst, [-1, 3])])
    x: np.ndarray = (np.arange(12).reshape(4, 3) * 3).astype(NUMERIC[src])
    y = loaded(source).infer({"x": x})["y"]
    assert y.dtype == np.dtype(NUMERIC[dst])
    np.testing.assert_array_equal(y, x.astype(NUMERIC[dst]))


# -- a small MLP ---------------------------------------------------------------

RNG = np.random.default_rng(42)
W1 = RNG.standard_normal((4, 8)).astype(np.float32)
B1 = RNG.standard_normal(8).astype(np.float32)
W2 = RNG.standard_normal((8, 3)).astype(np.float32)
B2 = RNG.standard_normal(3).astype(np.float32)


def mlp(path: Path, *, batch: str | int = "batch", **save_kwargs: Any) -> None:
    """softmax(relu(x @ W1 + b1) @ W2 + b2), weights from numpy."""
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h0"]),
        helper.make_node("Add", ["h0", "B1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "W2"], ["o0"]),
        helper.make_node("Add", ["o0", "B2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    weights = [
        numpy_helper.from_array(W1, "W1"),
        numpy_helper.from_array(B1, "B1"),
        numpy_helper.from_array(W2, "W2"),
        numpy_helper.from_array(B2, "B2"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, 3])],
        weights,
    )
    save(path, graph, **save_kwargs)


def mlp_reference(x: np.ndarray) -> np.ndarray:
    logits = np.maximum(x @ W1 + B1, 0) @ W2 + B2
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


def mlp_source(make_source: MakeSource, **kwargs: Any) -> Any:
    return make_source(
        "onnx",
        "mlp.onnx",
        [("x", "FP32", [-1, 4])],
        [("probabilities", "FP32", [-1, 3])],
        **kwargs,
    )


def test_mlp_matches_numpy_reference(tmp_path: Path, make_source: MakeSource) -> None:
    mlp(tmp_path / "mlp.onnx")
    runtime = loaded(mlp_source(make_source, options={"intra_op_threads": 2}))
    x = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    out = runtime.infer({"x": x})
    assert list(out) == ["probabilities"]
    assert out["probabilities"].dtype == np.float32
    np.testing.assert_allclose(out["probabilities"], mlp_reference(x), rtol=1e-5, atol=1e-6)


def test_inspect_reads_names_datatypes_and_dims(tmp_path: Path) -> None:
    mlp(tmp_path / "mlp.onnx")
    signature = OnnxRuntime.inspect(tmp_path / "mlp.onnx")
    assert signature is not None
    assert [(t.name, t.datatype, t.shape) for t in signature.inputs] == [("x", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, t.shape) for t in signature.outputs] == [
        ("probabilities", "FP32", [-1, 3])
    ]
    assert signature.max_batch_size == 1024


def test_inspect_suggests_no_batching_for_a_fixed_leading_dim(tmp_path: Path) -> None:
    mlp(tmp_path / "mlp.onnx", batch=2)
    signature = onnx_signature(tmp_path / "mlp.onnx")
    assert signature.inputs[0].shape == [2, 4]
    assert signature.max_batch_size == 0


def test_weights_listed_as_inputs_are_not_inputs(tmp_path: Path) -> None:
    # Graphs from before ONNX IR version 4 list every initializer as an input.
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["y"])],
        "old-style",
        [
            helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 2]),
            helper.make_tensor_value_info("b", TensorProto.DOUBLE, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [None, 2])],
        [numpy_helper.from_array(np.ones(2), "b")],
    )
    save(tmp_path / "old.onnx", graph)
    signature = onnx_signature(tmp_path / "old.onnx")
    assert [(t.name, t.datatype, t.shape) for t in signature.inputs] == [("x", "FP64", [-1, 2])]


def test_external_weights_load_and_are_never_read_by_inspect(
    tmp_path: Path, make_source: MakeSource
) -> None:
    mlp(
        tmp_path / "mlp.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (tmp_path / "weights.bin").stat().st_size == 4 * (W1.size + B1.size + W2.size + B2.size)
    runtime = loaded(mlp_source(make_source, files=["weights.bin"]))
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(runtime.infer({"x": x})["probabilities"], mlp_reference(x), 1e-5)
    # Without the weights onnx.load (and onnxruntime) fail; inspect does not care.
    (tmp_path / "weights.bin").unlink()
    with pytest.raises((OSError, onnx.checker.ValidationError)):
        onnx.load(str(tmp_path / "mlp.onnx"))
    signature = onnx_signature(tmp_path / "mlp.onnx")
    assert signature.inputs[0].shape == [-1, 4]


def test_inspect_of_a_gigabyte_of_external_weights_is_instant(tmp_path: Path) -> None:
    huge = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[2**16, 2**12])
    huge.data_location = TensorProto.EXTERNAL
    for key, value in {"location": "huge.bin", "offset": "0", "length": str(2**30)}.items():
        huge.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2**16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2**12])],
        [huge],
    )
    save(tmp_path / "huge.onnx", graph)
    assert (tmp_path / "huge.onnx").stat().st_size < 4096
    start = time.perf_counter()
    signature = onnx_signature(tmp_path / "huge.onnx")
    assert time.perf_counter() - start < 1.0
    assert signature.outputs[0].shape == [-1, 4096]


def test_inspect_refuses_tensors_the_protocol_cannot_carry(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x"], ["seq"])],
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, [2])],
    )
    save(tmp_path / "seq.onnx", graph)
    with pytest.raises(InvalidInput, match="not a tensor"):
        onnx_signature(tmp_path / "seq.onnx")
    one_node(tmp_path / "c.onnx", "Identity", TensorProto.COMPLEX64, TensorProto.COMPLEX64)
    with pytest.raises(InvalidInput, match="COMPLEX64"):
        onnx_signature(tmp_path / "c.onnx")


def test_inspect_refuses_files_that_are_not_onnx(tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xfe not a protobuf \x00\x01")
    with pytest.raises(InvalidInput, match=r"junk\.onnx"):
        onnx_signature(tmp_path / "junk.onnx")


# -- refusals ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "missing input 'x'"),
        ({"x": np.ones((2, 4), np.float32), "z": np.ones(1)}, "unknown input 'z'"),
        ({"x": np.ones((2, 4), np.float64)}, "dtype float64.*FP32"),
        ({"x": np.ones((2, 4, 1), np.float32)}, "expected rank 2, got rank 3"),
        ({"x": np.ones((2, 5), np.float32)}, "dimension 1 must be 4, got 5"),
        ({"x": [[1.0, 2.0, 3.0, 4.0]]}, "must be a numpy array"),
    ],
)
def test_bad_inputs_are_invalid_input(
    tmp_path: Path, make_source: MakeSource, inputs: dict[str, Any], message: str
) -> None:
    mlp(tmp_path / "mlp.onnx")
    runtime = loaded(mlp_source(make_source))
    with pytest.raises(InvalidInput, match=message):
        runtime.infer(inputs)


def test_a_failure_inside_the_graph_is_a_model_execution_error(
    tmp_path: Path, make_source: MakeSource
) -> None:
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        [numpy_helper.from_array(np.array([2, 2], np.int64), "shape")],
    )
    save(tmp_path / "r.onnx", graph)
    runtime = loaded(make_source("onnx", "r.onnx", [("x", "FP32", [-1])], [("y", "FP32", [2, 2])]))
    np.testing.assert_array_equal(
        runtime.infer({"x": np.arange(4, dtype=np.float32)})["y"], [[0, 1], [2, 3]]
    )
    with pytest.raises(ModelExecutionError) as info:
        runtime.infer({"x": np.arange(3, dtype=np.float32)})
    assert info.value.__cause__ is not None


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_a_gpu_is_device_unavailable(
    tmp_path: Path, make_source: MakeSource, device: str
) -> None:
    mlp(tmp_path / "mlp.onnx")
    with pytest.raises(DeviceUnavailable, match="CUDA"):
        OnnxRuntime(mlp_source(make_source, device=device)).load()


def test_an_unknown_device_is_refused(tmp_path: Path, make_source: MakeSource) -> None:
    mlp(tmp_path / "mlp.onnx")
    with pytest.raises(DeviceUnavailable, match="tpu"):
        OnnxRuntime(mlp_source(make_source, device="tpu")).load()


def test_a_manifest_that_contradicts_the_graph_is_refused_at_load(
    tmp_path: Path, make_source: MakeSource
) -> None:
    mlp(tmp_path / "mlp.onnx")
    source = make_source(
        "onnx", "mlp.onnx", [("features", "FP64", [-1, 4])], [("probabilities", "FP16", [-1, 3])]
    )
    with pytest.raises(ManifestError) as info:
        OnnxRuntime(source).load()
    paths = {problem.path for problem in info.value.problems}
    assert paths == {"inputs[0].name", "outputs[0].datatype", "inputs"}


def test_infer_before_load_is_not_ready(tmp_path: Path, make_source: MakeSource) -> None:
    mlp(tmp_path / "mlp.onnx")
    runtime = loaded(mlp_source(make_source))
    runtime.unload()
    with pytest.raises(ModelNotReady):
        runtime.infer({"x": np.ones((1, 4), np.float32)})


# -- safety and registration -----------------------------------------------------


def test_a_pickle_disguised_as_onnx_never_runs(
    tmp_path: Path, make_source: MakeSource, evil_pickle: bytes, sentinel: Path
) -> None:
    (tmp_path / "mlp.onnx").write_bytes(evil_pickle)
    source = mlp_source(make_source)
    assert OnnxRuntime.executes_code(source.manifest) is False
    with pytest.raises(InvalidInput):
        OnnxRuntime.inspect(tmp_path / "mlp.onnx")
    with pytest.raises(ModelExecutionError):
        OnnxRuntime(source).load()
    assert not sentinel.exists()


def test_the_entry_point_names_this_runtime() -> None:
    assert get_runtime("onnx") is OnnxRuntime
    assert OnnxRuntime.suffixes == (".onnx",)
