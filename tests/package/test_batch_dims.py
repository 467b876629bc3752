"""Batch dimensions from a model file's dimension names: what ``init`` infers, what
``validate`` and the ONNX runtime refuse, and stream pipelines' dim-0 rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from onnx import TensorProto, helper

from sciserve.config import Settings
from sciserve.errors import InvalidInput, ManifestError
from sciserve.package.batch_dims import Dim, infer_batch_dims
from sciserve.package.init import init_package, update_package
from sciserve.package.manifest import MANIFEST_NAME, dump_manifest, load_manifest
from sciserve.package.validate import check_package
from sciserve.registry.registry import Registry
from sciserve.runtimes import ModelSource
from sciserve.runtimes.onnx import OnnxRuntime
from sciserve.streams.pipeline import LocalModel

from helpers.packages import time_major_gru_onnx, write_package

T = tuple[Dim, ...]


@pytest.mark.parametrize(
    ("inputs", "outputs", "expected"),
    [
        # The name every tensor shares is the batch dimension, wherever it is.
        ([("T", "B", 3)], [("B", 4)], ((1,), (0,))),
        ([("batch", 4), ("batch", "T")], [("batch", 2)], ((0, 0), (0,))),
        # Several shared names: the batch-like one, else the leading one.
        ([("T", "batch", 3)], [("T", "batch", 4)], ((1,), (1,))),
        ([("S", "T", 3)], [("S", "T", 4)], ((0,), (0,))),
        ([("S", "T", 3)], [("T", "S", 4)], None),
        # Nothing named: dim 0 is assumed where it is free in every tensor.
        ([(None, 4)], [(None, 3)], ((0,), (0,))),
        ([("batch", 4)], [(None, 3)], ((0,), (0,))),
        ([("unk__3", 4)], [("unk__7", 3)], ((0,), (0,))),
        # Names that disagree, fixed or missing dims: no batching.
        ([("T", "B", 3)], [("N", 4)], None),
        ([(None, None, 3)], [(2, 4)], None),
        ([(2, 4)], [(2, 3)], None),
        ([()], [(None,)], None),
    ],
)
def test_batch_dims_follow_the_shared_dimension_name(
    inputs: list[T], outputs: list[T], expected: tuple[tuple[int, ...], tuple[int, ...]] | None
) -> None:
    found = infer_batch_dims(inputs, outputs)
    if expected is None:
        assert not found.batchable
        assert "max_batch_size: 0" in found.note
    else:
        assert (found.inputs, found.outputs) == expected


def test_init_writes_the_batch_dim_and_says_how_it_found_it(tmp_path: Path) -> None:
    time_major_gru_onnx(tmp_path / "model.onnx")
    notes: list[str] = []
    target = init_package(
        tmp_path / "model.onnx", name="gru", version="1", license="MIT", notes=notes
    )
    manifest = load_manifest(target)
    assert manifest.max_batch_size > 0
    assert [manifest.batch_dim_of(t) for t in manifest.inputs] == [1]
    assert [manifest.batch_dim_of(t) for t in manifest.outputs] == [0]
    assert notes == ["batch dimension 'B', the dimension name every input and output shares"]
    assert not [p for p in check_package(tmp_path) if p.severity == "error"]


def _contradicting(root: Path) -> Path:
    """The GRU package with the manifest ``init`` wrote before: batch_dim 0 everywhere."""
    time_major_gru_onnx(root / "model.onnx")
    init_package(root / "model.onnx", name="gru", version="1", license="MIT")
    manifest = load_manifest(root)
    wrong = manifest.model_copy(
        update={"inputs": [t.model_copy(update={"batch_dim": None}) for t in manifest.inputs]}
    )
    (root / MANIFEST_NAME).write_text(dump_manifest(wrong))
    return root


def test_validate_flags_batch_dims_that_contradict_the_model_file(tmp_path: Path) -> None:
    problems = check_package(_contradicting(tmp_path))
    (problem,) = [p for p in problems if p.severity == "error"]
    assert problem.path == "inputs[0].batch_dim"
    assert "'B' is dim 1" in problem.message
    assert "batch_dim: 1" in problem.hint


def test_the_onnx_runtime_refuses_a_manifest_batching_along_the_wrong_dim(
    tmp_path: Path,
) -> None:
    root = _contradicting(tmp_path)
    runtime = OnnxRuntime(ModelSource(load_manifest(root), root))
    with pytest.raises(ManifestError) as info:
        runtime.load()
    assert [p.path for p in info.value.problems] == ["inputs[0].batch_dim"]


async def test_a_stream_pipeline_refuses_a_model_batching_along_another_dim(
    tmp_path: Path,
) -> None:
    time_major_gru_onnx(tmp_path / "model.onnx")
    init_package(tmp_path / "model.onnx", name="gru", version="1", license="MIT")
    settings = Settings.load(tmp_path / "home", environ={})
    with Registry(settings) as registry:
        registry.publish(tmp_path)
    with pytest.raises(InvalidInput, match=r"input 'x' along dim 1.*dim 0"):
        await LocalModel.load("gru:1", settings)


def test_a_manifest_that_does_not_batch_contradicts_nothing(tmp_path: Path) -> None:
    root = _contradicting(tmp_path)
    data = yaml.safe_load((root / MANIFEST_NAME).read_text())
    data["max_batch_size"] = 0
    (root / MANIFEST_NAME).write_text(yaml.safe_dump(data))
    assert not [p for p in check_package(root) if p.severity == "error"]


def test_init_update_takes_the_batch_dims_the_file_names(tmp_path: Path) -> None:
    root = _contradicting(tmp_path)
    notes: list[str] = []
    update_package(root, notes=notes)
    manifest = load_manifest(root)
    assert [manifest.batch_dim_of(t) for t in manifest.inputs] == [1]
    assert notes and "'B'" in notes[0]
    assert not [p for p in check_package(root) if p.severity == "error"]


def test_batch_dims_named_differently_per_tensor_are_only_a_warning(tmp_path: Path) -> None:
    # Exporters often call one batch dimension "batch" in inputs and "N" in outputs.
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "renamed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (tmp_path / "model.onnx").write_bytes(model.SerializeToString())
    tensor = {"datatype": "FP32", "shape": [-1, 3]}
    root = write_package(
        tmp_path,
        name="renamed",
        runtime="onnx",
        model_file="model.onnx",
        inputs=[{"name": "x", **tensor}],
        outputs=[{"name": "y", **tensor}],
    )
    problems = [p for p in check_package(root) if p.path == "batch_dim"]
    assert [p.severity for p in problems] == ["warning"]
    assert "'batch'" in problems[0].message and "'N'" in problems[0].message
    runtime = OnnxRuntime(ModelSource(load_manifest(root), root))
    runtime.load()  # served as before
    runtime.unload()
