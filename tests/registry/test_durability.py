"""Crash safety, concurrency and memory of publishing, with real subprocesses."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from sciserve._hashing import sha256_file
from sciserve.config import Settings
from sciserve.package.manifest import Manifest, dump_manifest
from sciserve.registry.registry import Registry

MakePackage = Callable[..., Path]


def _cli(settings: Settings, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sciserve",
        "--home",
        str(settings.home),
        "--database-url",
        settings.database_url,
        "--json",
        *args,
    ]


def _big_package(root: Path, size: int, *, name: str = "big") -> Path:
    """An ONNX model whose weights live in an external data file of ``size`` bytes.

    The weight file is sparse, so making it costs no disk writes; publishing
    still reads and stores every byte.
    """
    root.mkdir(parents=True)
    n = size // 4
    weights = TensorProto()
    weights.name = "W"
    weights.data_type = TensorProto.FLOAT
    weights.dims.append(n)
    weights.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", "0"), ("length", str(size))):
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "W"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / "model.onnx").write_bytes(model.SerializeToString())
    with open(root / "weights.bin", "wb") as fh:
        fh.truncate(size)
    files = []
    for path, role in (("model.onnx", "model"), ("weights.bin", "other")):
        sha, length = sha256_file(root / path)
        files.append({"path": path, "size": length, "sha256": sha, "role": role})
    manifest = Manifest.model_validate(
        {
            "name": name,
            "version": "1.0.0",
            "runtime": "onnx",
            "model_file": "model.onnx",
            "license": "MIT",
            "files": files,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [n]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [n]}],
        }
    )
    (root / "sciserve.yaml").write_text(dump_manifest(manifest))
    assert onnx.load(str(root / "model.onnx"), load_external_data=False).graph.name == "big"
    return root


@pytest.mark.slow
def test_publishing_1_gib_keeps_peak_rss_under_200_mb(tmp_path: Path) -> None:
    settings = Settings.load(tmp_path / "home", environ={})
    package = _big_package(tmp_path / "pkg", 1 << 30)
    # The publisher reports its own peak RSS (VmHWM belongs to the process's
    # own address space; ru_maxrss would include the parent's pages from
    # before exec, since subprocess uses vfork).
    script = (
        "import sys\n"
        "from sciserve.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "sys.stderr.write('PEAK ' + hwm.split()[1] + '\\n')\n"
        "sys.exit(rc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *_cli(settings, "publish", str(package))[3:]],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    peak_mb = int(done.stderr.rsplit("PEAK ", 1)[1].split()[0]) / 1024  # kB -> MiB
    assert json.loads(done.stdout)["size"] >= 1 << 30
    assert peak_mb < 200, f"publisher peak RSS {peak_mb:.0f} MB"
    with Registry(settings) as reg:
        [report] = reg.verify("big")
        assert report.ok and report.checked == 2


@pytest.mark.slow
def test_kill_9_during_publish_leaves_no_half_visible_version(tmp_path: Path) -> None:
    settings = Settings.load(tmp_path / "home", environ={})
    package = _big_package(tmp_path / "pkg", 400 << 20)
    with Registry(settings):
        pass  # create the schema first so every kill lands inside publishing
    outcomes = set()
    for delay in (0.2, 0.5, 0.9, 1.4):
        proc = subprocess.Popen(
            _cli(settings, "publish", str(package)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with Registry(settings) as reg:
            visible = reg.list_models()
            outcomes.add(bool(visible))
            for report in reg.verify():
                assert report.ok, report.failures
        if visible:
            break
    assert False in outcomes, "no kill landed before the commit; the test proved nothing"
    # The next publish is not tripped by what the killed ones left behind.
    done = subprocess.run(_cli(settings, "publish", str(package)), capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    with Registry(settings) as reg:
        [report] = reg.verify("big")
        assert report.ok and report.checked == 2
        assert reg.store.remove_orphan_temps(older_than_s=0) >= 0


@pytest.mark.parametrize(
    "database_kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_concurrent_publishers_never_corrupt_the_registry(
    tmp_path: Path,
    onnx_package: MakePackage,
    database_kind: str,
    request: pytest.FixtureRequest,
) -> None:
    url = (
        request.getfixturevalue("postgres_url")
        if database_kind == "postgres"
        else f"sqlite:///{tmp_path / 'home' / 'registry.db'}"
    )
    settings = Settings.load(tmp_path / "home", environ={}, database_url=url)
    packages = [
        onnx_package(name="shared", version=f"1.{i}.0", scale=float(i + 1)) for i in range(4)
    ]
    # Two publishers race for the same version with different content...
    rival = onnx_package(name="shared", version="9.0.0", scale=100.0)
    rival_b = onnx_package(name="shared", version="9.0.0", scale=200.0)
    # ...and two with identical content.
    twin = onnx_package(name="shared", version="8.0.0", scale=50.0)
    jobs = [*packages, rival, rival_b, twin, twin]
    # All start at once on a registry that does not exist yet (schema race too).
    procs = [
        subprocess.Popen(
            _cli(settings, "publish", str(p)), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for p in jobs
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        results.append((p.returncode, out, err))
    codes = [code for code, _, _ in results]
    assert codes[:4] == [0, 0, 0, 0], results
    assert sorted(codes[4:6]) == [0, 4], results  # one wins, one gets a conflict
    assert codes[6:] == [0, 0], results
    assert sorted(json.loads(out)["created"] for _, out, _ in results[6:]) == [False, True]
    with Registry(settings) as reg:
        versions = {v.version: v for v in reg.versions("shared")}
        assert set(versions) == {"1.0.0", "1.1.0", "1.2.0", "1.3.0", "8.0.0", "9.0.0"}
        assert all(r.ok for r in reg.verify())
        x = np.ones((1, 4), np.float32)
        import sciserve

        for i in range(4):
            with sciserve.load(f"shared:1.{i}.0", registry=reg) as model:
                expected = x @ (np.arange(12, dtype=np.float32).reshape(4, 3) * (i + 1)) + (i + 1)
                np.testing.assert_allclose(model.predict(x=x)["y"], expected)
