"""The ``python`` runtime: trusted model classes shipped as source in the package."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sciserve.errors import InvalidInput, ManifestError, ModelExecutionError, ModelNotReady
from sciserve.runtimes import get_runtime
from sciserve.runtimes.python import PythonRuntime

from .conftest import MakeSource

DOUBLER = """
from __future__ import annotations

from dataclasses import dataclass

LOADS = []


@dataclass
class Settings:  # a dataclass needs its module registered while it is defined
    factor: float


class Doubler:
    def __init__(self, root, options):
        self.root = root
        self.settings = Settings(options.get("factor", 2))
        self.loaded = False

    def load(self):
        LOADS.append(self)
        self.loaded = True

    def predict(self, inputs):
        if not self.loaded:
            raise RuntimeError("load() was not called")
        return {"y": inputs["x"] * self.settings.factor, "loads": len(LOADS)}


class NoPredict:
    def __init__(self, root, options):
        pass
"""


def write(tmp_path: Path, source: str, name: str = "model.py") -> None:
    (tmp_path / name).write_text(textwrap.dedent(source))


def python_source(
    make_source: MakeSource,
    entrypoint: Any = "model.py:Doubler",
    *,
    files: tuple[str, ...] = ("model.py",),
    outputs: list[Any] | None = None,
    **options: Any,
) -> Any:
    return make_source(
        "python",
        None,
        [("x", "FP32", [-1, 2])],
        outputs or [("y", "FP64", [-1, 2])],
        files=files,
        options={"entrypoint": entrypoint, **options},
    )


def user_modules() -> set[str]:
    return {name for name in sys.modules if name.startswith("sciserve_model_")}


def test_the_entry_point_class_runs_without_touching_sys_path(
    tmp_path: Path, make_source: MakeSource
) -> None:
    write(tmp_path, DOUBLER)
    path_before = list(sys.path)
    modules_before = user_modules()
    runtime = PythonRuntime(python_source(make_source))
    runtime.load()
    assert sys.path == path_before
    assert "model" not in sys.modules  # imported under a private, unique name
    out = runtime.infer({"x": np.array([[1.0, 2.5]], np.float32)})
    assert list(out) == ["y"]  # only declared outputs, cast to their datatype
    assert out["y"].dtype == np.float64
    np.testing.assert_array_equal(out["y"], [[2.0, 5.0]])
    runtime.unload()
    assert user_modules() == modules_before
    with pytest.raises(ModelNotReady):
        runtime.infer({"x": np.ones((1, 2), np.float32)})


def test_options_reach_the_class_and_each_load_gets_its_own_module(
    tmp_path: Path, make_source: MakeSource
) -> None:
    write(tmp_path, DOUBLER)
    outputs = [("y", "FP32", [-1, 2]), ("loads", "INT64", [])]
    first = PythonRuntime(python_source(make_source, outputs=outputs, factor=3))
    second = PythonRuntime(python_source(make_source, outputs=outputs))
    first.load()
    second.load()
    x = np.ones((1, 2), np.float32)
    first_out, second_out = first.infer({"x": x}), second.infer({"x": x})
    np.testing.assert_array_equal(first_out["y"], [[3.0, 3.0]])
    np.testing.assert_array_equal(second_out["y"], [[2.0, 2.0]])
    # Module state is not shared: each load imported the file afresh, so
    # each module-level LOADS list saw exactly one load().
    assert first_out["loads"].shape == ()
    assert (int(first_out["loads"]), int(second_out["loads"])) == (1, 1)
    first.unload()
    second.unload()


def test_inputs_are_checked_before_user_code_sees_them(
    tmp_path: Path, make_source: MakeSource
) -> None:
    write(tmp_path, DOUBLER)
    runtime = PythonRuntime(python_source(make_source))
    runtime.load()
    with pytest.raises(InvalidInput, match="dtype float64"):
        runtime.infer({"x": np.ones((1, 2))})
    runtime.unload()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("raise ValueError('bad physics')", "bad physics"),
        ("return [inputs['x']]", "returned list, not a dict"),
        ("return {'z': inputs['x']}", "returned no 'y'"),
        ("return {'y': inputs['x'][:, :1]}", "dimension 1 must be 2"),
    ],
)
def test_failures_in_predict_are_model_execution_errors(
    tmp_path: Path, make_source: MakeSource, body: str, message: str
) -> None:
    write(
        tmp_path,
        f"""
        class Broken:
            def __init__(self, root, options):
                pass

            def predict(self, inputs):
                {body}
        """,
    )
    runtime = PythonRuntime(python_source(make_source, "model.py:Broken"))
    runtime.load()
    with pytest.raises(ModelExecutionError, match=message):
        runtime.infer({"x": np.ones((3, 2), np.float32)})
    runtime.unload()


@pytest.mark.parametrize(
    "source",
    [
        "def broken(:\n",
        "raise ImportError('no such dependency')\n",
        "class Model:\n    def __init__(self, root, options):\n        1 / 0\n",
        "class Model:\n    def __init__(self, r, o): pass\n    def load(self): raise OSError\n",
    ],
)
def test_failures_while_loading_are_model_execution_errors(
    tmp_path: Path, make_source: MakeSource, source: str
) -> None:
    write(tmp_path, source)
    modules_before = user_modules()
    with pytest.raises(ModelExecutionError, match=r"loading model\.py failed"):
        PythonRuntime(python_source(make_source, "model.py:Model")).load()
    assert user_modules() == modules_before


@pytest.mark.parametrize(
    ("entrypoint", "files", "message"),
    [
        (None, ("model.py",), "expected 'file.py:ClassName'"),
        ("model.py", ("model.py",), "expected 'file.py:ClassName'"),
        ("model.py:Not-A-Name", ("model.py",), "expected 'file.py:ClassName'"),
        ("../model.py:Doubler", ("model.py",), "'..'"),
        ("/abs/model.py:Doubler", ("model.py",), "absolute"),
        ("other.py:Doubler", ("model.py",), "not listed under files"),
        ("model.py:Missing", ("model.py",), "defines no class Missing"),
        ("model.py:NoPredict", ("model.py",), "has no predict"),
    ],
)
def test_bad_entrypoints_are_manifest_errors(
    tmp_path: Path, make_source: MakeSource, entrypoint: Any, files: tuple[str, ...], message: str
) -> None:
    write(tmp_path, DOUBLER)
    source = python_source(make_source, entrypoint, files=files)
    with pytest.raises(ManifestError, match=message):
        PythonRuntime(source).load()


def test_python_packages_always_count_as_code(tmp_path: Path, make_source: MakeSource) -> None:
    write(tmp_path, DOUBLER)
    source = python_source(make_source)
    assert PythonRuntime.executes_code(source.manifest) is True
    assert PythonRuntime.inspect(tmp_path / "model.py") is None
    assert get_runtime("python") is PythonRuntime
