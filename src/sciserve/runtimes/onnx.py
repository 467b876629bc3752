"""The ``onnx`` runtime: ONNX graphs through onnxruntime.

ONNX files are pure data (a protobuf graph and its weights), so loading one
never runs code shipped in a package.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnx import TensorProto

from ..errors import (
    DeviceUnavailable,
    InvalidInput,
    ManifestError,
    ModelExecutionError,
    ModelNotReady,
    Problem,
)
from ..package.batch_dims import Dim, batch_dim_problems, infer_batch_dims
from ..package.manifest import TensorSpec
from ._tensors import check_inputs, conform_output, numpy_dtype
from .base import ModelSource, Runtime, Signature

__all__ = ["OnnxRuntime", "onnx_signature"]

#: ONNX element types with an Open Inference Protocol datatype.
_DATATYPES: Mapping[int, str] = {
    TensorProto.BOOL: "BOOL",
    TensorProto.UINT8: "UINT8",
    TensorProto.UINT16: "UINT16",
    TensorProto.UINT32: "UINT32",
    TensorProto.UINT64: "UINT64",
    TensorProto.INT8: "INT8",
    TensorProto.INT16: "INT16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.FLOAT: "FP32",
    TensorProto.DOUBLE: "FP64",
    TensorProto.STRING: "BYTES",
}

#: onnxruntime names types like ``tensor(float)``: the ONNX enum name, lowercased.
_ORT_TYPES: Mapping[str, str] = {
    f"tensor({TensorProto.DataType.Name(elem).lower()})": datatype
    for elem, datatype in _DATATYPES.items()
}

#: Suggested ``max_batch_size`` when the leading dimension is free.
DEFAULT_MAX_BATCH = 1024


def onnx_signature(path: str | Path) -> Signature:
    """The inputs and outputs the ONNX graph at ``path`` declares.

    External weight files are never opened, so inspecting a model with
    gigabytes of external data takes milliseconds.  Symbolic or unknown
    dimensions become ``-1``.  Raises :class:`InvalidInput` when the file is
    not an ONNX model or uses tensors the Open Inference Protocol cannot carry.
    """
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError) as exc:
        raise InvalidInput(f"{path.name} is not a readable ONNX model: {exc}") from exc
    graph = model.graph
    if not graph.output:
        raise InvalidInput(f"{path.name} is not an ONNX model: its graph has no outputs")
    # Before IR version 4, weights were also listed as graph inputs.
    weights = {init.name for init in graph.initializer}
    values = [v for v in graph.input if v.name not in weights]
    inputs = [_tensor_spec(path, v) for v in values]
    outputs = [_tensor_spec(path, v) for v in graph.output]
    input_dims = tuple(_dims(v) for v in values)
    output_dims = tuple(_dims(v) for v in graph.output)
    found = infer_batch_dims(input_dims, output_dims)
    if found.inputs is not None and found.outputs is not None:
        # Dim 0 is the manifest's default: only other dims are spelled out.
        inputs = [_with_batch_dim(t, d) for t, d in zip(inputs, found.inputs, strict=True)]
        outputs = [_with_batch_dim(t, d) for t, d in zip(outputs, found.outputs, strict=True)]
    return Signature(
        inputs,
        outputs,
        DEFAULT_MAX_BATCH if found.batchable else 0,
        input_dims=input_dims,
        output_dims=output_dims,
        batch_note=found.note,
    )


def _with_batch_dim(spec: TensorSpec, dim: int) -> TensorSpec:
    return spec if dim == 0 else spec.model_copy(update={"batch_dim": dim})


def _dims(value: onnx.ValueInfoProto) -> tuple[str | int | None, ...]:
    """Each dim of ``value``: its symbolic name, its fixed size, or None."""
    out: list[str | int | None] = []
    for dim in value.type.tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            out.append(dim.dim_value)
        elif dim.HasField("dim_param") and dim.dim_param:
            out.append(dim.dim_param)
        else:
            out.append(None)
    return tuple(out)


def _tensor_spec(path: Path, value: onnx.ValueInfoProto) -> TensorSpec:
    if value.type.WhichOneof("value") != "tensor_type":
        raise InvalidInput(
            f"{path.name}: {value.name!r} is not a tensor; the Open Inference Protocol carries "
            "tensors only (for scikit-learn exports, convert with zipmap=False)"
        )
    tensor = value.type.tensor_type
    datatype = _DATATYPES.get(tensor.elem_type)
    if datatype is None:
        name = TensorProto.DataType.Name(tensor.elem_type)
        raise InvalidInput(f"{path.name}: {value.name!r} has element type {name}, unsupported")
    if not tensor.HasField("shape"):
        raise InvalidInput(
            f"{path.name}: {value.name!r} has no declared rank; "
            "give its shape explicitly (sciserve init --input/--output)"
        )
    shape = [
        dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else -1
        for dim in tensor.shape.dim
    ]
    return TensorSpec.model_validate(
        {
            "name": value.name,
            "datatype": datatype,
            "shape": shape,
            "description": value.doc_string or None,
        }
    )


class OnnxRuntime(Runtime):
    """Runs ONNX graphs with onnxruntime on the CPU or, when present, CUDA.

    Runtime options: ``intra_op_threads`` (default 1) bounds the threads one
    inference may use, so several models can share a machine.
    """

    name = "onnx"
    suffixes = (".onnx",)
    in_process = True

    def __init__(self, source: ModelSource) -> None:
        super().__init__(source)
        self._session: ort.InferenceSession | None = None

    @classmethod
    def inspect(cls, model_file: Path) -> Signature | None:
        return onnx_signature(model_file)

    def load(self) -> None:
        path = self.source.model_path
        providers = _providers(self.source.device)
        for spec in (*self.source.manifest.inputs, *self.source.manifest.outputs):
            numpy_dtype(spec.datatype)  # BF16 without ml_dtypes fails here, not mid-request
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(self.source.options.get("intra_op_threads", 1))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises bare RuntimeError subclasses
            raise ModelExecutionError(f"onnxruntime cannot load {path.name}: {exc}") from exc
        self._check_signature(session)
        self._session = session

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session
        if session is None:
            raise ModelNotReady(f"{self.source.manifest.ref} is not loaded")
        manifest = self.source.manifest
        arrays = check_inputs(manifest.inputs, inputs)
        feed = {
            spec.name: _to_ort(spec, array)
            for spec, array in zip(manifest.inputs, arrays, strict=True)
        }
        names = [spec.name for spec in manifest.outputs]
        try:
            if any(spec.datatype == "BF16" for spec in manifest.outputs):
                values = _run_via_ortvalues(session, names, feed)
            else:
                values = session.run(names, feed)
        except Exception as exc:  # any failure inside the graph is the model's
            raise ModelExecutionError(f"{manifest.ref} failed: {exc}") from exc
        return {
            spec.name: _from_ort(spec, value)
            for spec, value in zip(manifest.outputs, values, strict=True)
        }

    def unload(self) -> None:
        self._session = None

    def _check_signature(self, session: ort.InferenceSession) -> None:
        """Refuse a manifest whose tensors the graph does not have."""
        manifest = self.source.manifest
        graph_inputs = {arg.name: arg.type for arg in session.get_inputs()}
        graph_outputs = {arg.name: arg.type for arg in session.get_outputs()}
        problems = []
        for group, specs, graph in (
            ("inputs", manifest.inputs, graph_inputs),
            ("outputs", manifest.outputs, graph_outputs),
        ):
            for index, spec in enumerate(specs):
                where = f"{group}[{index}]"
                if spec.name not in graph:
                    known = ", ".join(map(repr, graph))
                    problems.append(
                        Problem(f"{where}.name", f"the graph has no {spec.name!r}", f"use {known}")
                    )
                elif _ORT_TYPES.get(graph[spec.name]) != spec.datatype:
                    actual = graph[spec.name]
                    problems.append(
                        Problem(f"{where}.datatype", f"the graph's {spec.name!r} is {actual}")
                    )
        declared = {spec.name for spec in manifest.inputs}
        for name in graph_inputs:
            if name not in declared:
                problems.append(Problem("inputs", f"the graph input {name!r} is not declared"))
        if not problems:
            # A manifest batching along a dimension the graph calls something
            # else would have the batcher mix requests up: refuse it here.
            shapes = {arg.name: arg.shape for arg in session.get_inputs()}
            out_shapes = {arg.name: arg.shape for arg in session.get_outputs()}
            found = batch_dim_problems(
                manifest,
                [_ort_dims(shapes[spec.name]) for spec in manifest.inputs],
                [_ort_dims(out_shapes[spec.name]) for spec in manifest.outputs],
                self.source.model_path.name,
            )
            problems += [p for p in found if p.severity == "error"]
        if problems:
            raise ManifestError(problems, manifest.ref)


def _ort_dims(shape: Any) -> tuple[Dim, ...]:
    """onnxruntime's shape of a graph tensor (names, sizes, None) as :data:`Dim` values."""
    if not isinstance(shape, list | tuple):
        return ()
    return tuple(d if isinstance(d, str | int) and not isinstance(d, bool) else None for d in shape)


def _providers(device: str) -> list[Any]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if match is None:
        raise DeviceUnavailable(f"unknown device {device!r}; use 'cpu' or 'cuda:N'")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise DeviceUnavailable(
            f"device {device!r} was requested but this onnxruntime has no CUDA support "
            f"(available: {', '.join(ort.get_available_providers())}); "
            "install onnxruntime-gpu on a machine with a GPU, or use device 'cpu'"
        )
    index = int(match.group(1) or 0)
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


def _to_ort(spec: TensorSpec, array: np.ndarray) -> Any:
    if spec.datatype == "BYTES":
        # onnxruntime turns a bytes element into its repr ("b'x'"), so string
        # tensors must be handed over as text.
        try:
            return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(array)
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"input {spec.name!r}: ONNX strings must be UTF-8") from exc
    if spec.datatype == "BF16":
        # numpy arrays of ml_dtypes.bfloat16 are not understood by
        # onnxruntime; the same bits reinterpreted as uint16 are.
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
            np.ascontiguousarray(array).view(np.uint16), TensorProto.BFLOAT16
        )
    return array


def _run_via_ortvalues(
    session: ort.InferenceSession, names: list[str], feed: dict[str, Any]
) -> list[Any]:
    # Plain ``run`` converts outputs to numpy and fails for bfloat16, so
    # models with BF16 outputs are run on OrtValues and copied out by hand.
    values = {
        name: value if isinstance(value, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(value)
        for name, value in feed.items()
    }
    return list(session.run_with_ort_values(names, values))


def _from_ort(spec: TensorSpec, value: Any) -> np.ndarray:
    if isinstance(value, ort.OrtValue):
        if value.data_type() == "tensor(bfloat16)":
            value = _bfloat16_from_ortvalue(value)
        else:
            value = value.numpy()
    # String outputs come back as str; conform_output encodes them as UTF-8.
    return conform_output(spec, value)


def _bfloat16_from_ortvalue(value: Any) -> np.ndarray:
    if value.device_name().lower() != "cpu":
        raise ModelExecutionError("BF16 outputs are only supported in CPU memory")
    raw = ctypes.string_at(value.data_ptr(), value.tensor_size_in_bytes())
    bits = np.frombuffer(raw, dtype=np.uint16).reshape(value.shape())
    return bits.view(numpy_dtype("BF16"))
