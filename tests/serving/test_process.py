"""Runtimes in a child process: same answers, and crashes that stay in the child."""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from sciserve._hashing import sha256_file
from sciserve.errors import (
    InvalidInput,
    ManifestError,
    ModelExecutionError,
    ModelNotReady,
    NotFound,
)
from sciserve.package.manifest import load_manifest, parse_manifest
from sciserve.runtimes import ModelSource
from sciserve.runtimes.python import PythonRuntime
from sciserve.serving.process import ProcessRuntime

from helpers.packages import expected_linear, make_onnx_package

#: A trusted model whose first input value picks a way to misbehave.
MODEL = """
import os
import signal
import time

import numpy as np

HANGING = "hanging"


class Model:
    def __init__(self, root, options):
        self.root = root
        self.factor = float(options.get("factor", 2))

    def predict(self, inputs):
        x = inputs["x"]
        trigger = float(x.flat[0]) if x.size else 0.0
        if trigger == -1:
            os._exit(3)
        if trigger == -2:
            os.kill(os.getpid(), signal.SIGSEGV)
        if trigger == -3:
            open(os.path.join(self.root, HANGING), "w").close()  # tell the test
            time.sleep(3600)
        if trigger == -4:
            raise ValueError("bad physics")
        return {"y": x * self.factor, "tag": inputs["tag"][::-1], "pid": os.getpid()}
"""

CRASH, SEGFAULT, HANG, RAISE = -1.0, -2.0, -3.0, -4.0


def python_package(
    root: Path, source: str = MODEL, *, entrypoint: str = "model.py:Model", runtime: str = "python"
) -> ModelSource:
    """A python-runtime package in ``root`` and the source a runtime receives."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.py").write_text(textwrap.dedent(source))
    digest, size = sha256_file(root / "model.py")
    manifest = parse_manifest(
        {
            "name": "misbehaving",
            "version": "1.0.0",
            "runtime": runtime,
            "runtime_options": {"entrypoint": entrypoint, "factor": 3},
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [-1, -1]},
                {"name": "tag", "datatype": "BYTES", "shape": [-1]},
            ],
            "outputs": [
                {"name": "y", "datatype": "FP64", "shape": [-1, -1]},
                {"name": "tag", "datatype": "BYTES", "shape": [-1]},
                {"name": "pid", "datatype": "INT64", "shape": []},
            ],
            "files": [{"path": "model.py", "size": size, "sha256": digest}],
        }
    )
    return ModelSource(manifest, root, "cpu", dict(manifest.runtime_options))


def inputs(first: float = 1.0, rows: int = 2) -> dict[str, np.ndarray]:
    x = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    x.flat[0] = first
    return {"x": x, "tag": np.array([b"a", b"\x00b"], dtype=object)}


def child_pids() -> set[int]:
    """This process's model processes (not multiprocessing's resource tracker)."""
    pids = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                pids.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


def exited(pid: int) -> bool:
    """Whether child ``pid`` has exited, without reaping it (its owner still must)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def source(tmp_path: Path) -> ModelSource:
    return python_package(tmp_path / "pkg")


@pytest.fixture
def runtime(source: ModelSource) -> Iterator[ProcessRuntime]:
    runtime = ProcessRuntime(source, start_timeout=30)
    runtime.load()
    yield runtime
    runtime.unload()


def test_answers_equal_in_process_execution(runtime: ProcessRuntime, source: ModelSource) -> None:
    local = PythonRuntime(source)
    local.load()
    given = inputs()
    expected = local.infer(given)
    local.unload()
    out = runtime.infer(given)
    assert out.keys() == expected.keys() == {"y", "tag", "pid"}
    for name in ("y", "tag"):
        assert out[name].dtype == expected[name].dtype
        np.testing.assert_array_equal(out[name], expected[name])
    assert list(out["tag"]) == [b"\x00b", b"a"]  # BYTES travel intact
    assert int(out["pid"]) == runtime.pid != os.getpid()
    # A large array (out of band on the wire) arrives bit for bit.
    x = np.random.default_rng(0).random((512, 1024)).astype(np.float32)
    big = {"x": x, "tag": given["tag"]}
    expected_big = (x * 3).astype(np.float64)
    np.testing.assert_array_equal(runtime.infer(big)["y"], expected_big)


def test_errors_in_the_model_keep_their_class_and_the_process(runtime: ProcessRuntime) -> None:
    pid = runtime.pid
    with pytest.raises(ModelExecutionError, match="bad physics") as info:
        runtime.infer(inputs(RAISE))
    assert "ValueError" in str(info.value.__cause__)  # the child's traceback
    with pytest.raises(InvalidInput, match="dtype float64"):
        runtime.infer({**inputs(), "x": np.ones((1, 3))})
    with pytest.raises(InvalidInput, match="missing input 'tag'"):
        runtime.infer({"x": inputs()["x"]})
    assert int(runtime.infer(inputs())["pid"]) == pid == runtime.pid


@pytest.mark.parametrize(
    ("trigger", "message"),
    [(CRASH, r"exited with code 3 while"), (SEGFAULT, r"exited with code -11 \(SIGSEGV\)")],
)
def test_a_crash_fails_one_call_and_the_next_starts_a_new_process(
    runtime: ProcessRuntime, caplog: pytest.LogCaptureFixture, trigger: float, message: str
) -> None:
    first = runtime.pid
    assert first is not None
    with pytest.raises(ModelExecutionError, match=message) as info:
        runtime.infer(inputs(trigger))
    assert "default/misbehaving:1.0.0" in str(info.value)
    assert not psutil.pid_exists(first)  # killed and reaped
    with caplog.at_level(logging.WARNING, logger="sciserve.serving"):
        out = runtime.infer(inputs())
    assert int(out["pid"]) == runtime.pid != first
    assert "restarting the model process for default/misbehaving:1.0.0" in caplog.text
    np.testing.assert_array_equal(out["y"], inputs()["x"] * 3)


def test_a_process_killed_between_calls_is_replaced_silently(runtime: ProcessRuntime) -> None:
    first = runtime.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: exited(first), "the killed model process to exit")
    assert int(runtime.infer(inputs())["pid"]) not in (first, os.getpid())


def test_without_restart_a_crashed_model_is_not_ready(source: ModelSource) -> None:
    runtime = ProcessRuntime(source, restart=False)
    runtime.load()
    with pytest.raises(ModelExecutionError, match="exited with code 3"):
        runtime.infer(inputs(CRASH))
    with pytest.raises(ModelNotReady, match="restarting is off"):
        runtime.infer(inputs())
    assert runtime.pid is None
    runtime.unload()


def test_a_call_over_its_timeout_kills_the_process(source: ModelSource) -> None:
    runtime = ProcessRuntime(source, call_timeout=1)
    runtime.load()
    first = runtime.pid
    assert first is not None
    started = time.monotonic()
    with pytest.raises(ModelExecutionError, match="did not answer within 1 s"):
        runtime.infer(inputs(HANG))
    assert time.monotonic() - started < 5
    assert not psutil.pid_exists(first)  # killed and reaped
    assert int(runtime.infer(inputs())["pid"]) == runtime.pid != first
    runtime.unload()


def test_concurrent_calls_each_get_their_own_answer(runtime: ProcessRuntime) -> None:
    results: dict[int, np.ndarray] = {}

    def work(worker: int) -> None:
        for rows in range(1, 6):
            x = np.full((rows, 3), worker * 10 + rows, np.float32)
            out = runtime.infer({"x": x, "tag": np.array([b"t"] * rows, dtype=object)})
            results[worker * 10 + rows] = out["y"]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(1, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 30
    for key, y in results.items():
        np.testing.assert_array_equal(y, np.full((key % 10, 3), key * 3.0))


def test_unload_stops_the_process_and_load_starts_another(runtime: ProcessRuntime) -> None:
    first = runtime.pid
    assert first is not None and first in child_pids()
    runtime.unload()
    unloaded_pid = runtime.pid  # (a local: the property changes again on load)
    assert unloaded_pid is None
    assert first not in child_pids() and not psutil.pid_exists(first)
    assert multiprocessing.active_children() == []
    with pytest.raises(ModelNotReady):
        runtime.infer(inputs())
    runtime.load()
    assert runtime.pid not in (None, first)
    assert runtime.infer(inputs())["y"].shape == (2, 3)


def test_unload_kills_a_process_stuck_in_a_call(source: ModelSource) -> None:
    runtime = ProcessRuntime(source, stop_timeout=0.5)
    runtime.load()
    pid = runtime.pid
    assert pid is not None
    failure: list[BaseException] = []

    def call() -> None:
        try:
            runtime.infer(inputs(HANG))
        except ModelExecutionError as exc:
            failure.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    # The model marks the call's arrival before it hangs.
    wait_for(lambda: (source.root / "hanging").exists(), "the call to reach the model")
    runtime.unload()
    thread.join(10)
    assert not thread.is_alive()
    assert "SIGKILL" in str(failure[0])
    assert not psutil.pid_exists(pid)
    with pytest.raises(ModelNotReady):
        runtime.infer(inputs())


def test_a_forgotten_runtime_takes_its_process_with_it(source: ModelSource) -> None:
    runtime = ProcessRuntime(source)
    runtime.load()
    pid = runtime.pid
    assert pid is not None and pid in child_pids()
    del runtime
    gc.collect()
    assert not psutil.pid_exists(pid)


@pytest.mark.parametrize(
    ("source_code", "entrypoint", "error", "message"),
    [
        (MODEL, "model.py:Missing", ManifestError, "defines no class Missing"),
        (
            "class Model:\n    def __init__(self, r, o):\n        1 / 0\n",
            "model.py:Model",
            ModelExecutionError,
            "loading model.py failed: division by zero",
        ),
        (
            "import os\nos._exit(5)\n",
            "model.py:Model",
            ModelExecutionError,
            "exited with code 5 while loading",
        ),
    ],
)
def test_load_errors_arrive_with_their_class(
    tmp_path: Path, source_code: str, entrypoint: str, error: type[Exception], message: str
) -> None:
    runtime = ProcessRuntime(python_package(tmp_path, source_code, entrypoint=entrypoint))
    with pytest.raises(error, match=message) as info:
        runtime.load()
    if isinstance(info.value, ManifestError):  # the findings survive the trip
        assert [p.path for p in info.value.problems] == ["runtime_options.entrypoint"]
    assert runtime.pid is None
    assert child_pids() == set()
    with pytest.raises(ModelNotReady):
        runtime.infer(inputs())


def test_an_unknown_runtime_and_a_slow_load(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no runtime named 'nope'"):
        ProcessRuntime(python_package(tmp_path / "a", runtime="nope")).load()
    slow = python_package(tmp_path / "b", "import time\ntime.sleep(3600)\n")
    with pytest.raises(ModelExecutionError, match="did not load within 1 s"):
        ProcessRuntime(slow, start_timeout=1).load()
    assert child_pids() == set()


def test_onnx_models_run_in_a_process_too(tmp_path: Path, source: ModelSource) -> None:
    root = make_onnx_package(tmp_path / "onnx")
    manifest = load_manifest(root / "sciserve.yaml")
    assert ProcessRuntime.executes_code(manifest) is False
    assert ProcessRuntime.executes_code(source.manifest) is True
    runtime = ProcessRuntime(ModelSource(manifest, root))
    runtime.load()
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    out: dict[str, Any] = runtime.infer({"x": x})
    np.testing.assert_allclose(out["y"], expected_linear(x))
    with pytest.raises(InvalidInput, match="shape"):
        runtime.infer({"x": np.ones((2, 5), np.float32)})
    runtime.unload()
