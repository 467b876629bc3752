"""Batch jobs on real Dask clusters: a local one of 2 worker processes on
127.0.0.1, and a separately started ``dask scheduler`` + ``dask worker``.

The archive mixes hive-partitioned Parquet (two row groups per file) and
JSON Lines, with rows that cannot be converted; the models are tiny real
ONNX (and one slow Python) packages in a real registry.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from sciserve.batch.executor import dask_client
from sciserve.batch.job import BatchJob
from sciserve.batch.worker import MANIFEST_FORMAT
from sciserve.config import Settings
from sciserve.errors import InvalidInput, NotFound
from sciserve.registry.registry import Registry
from sciserve.streams.base import OutRecord, open_sink
from sciserve.streams.results import ResultStore
from sciserve.streams.simulate import AlertSimulator, features_from_alert
from sciserve.streams.spec import parse_batch_spec

from helpers.batch import NULL_IDS, TEXT_ID
from helpers.batch import archive as _archive
from helpers.batch import outputs as _outputs
from helpers.batch import spec as _spec
from helpers.cli import Cli
from helpers.packages import expected_linear, make_onnx_package, python_package
from helpers.s3 import S3_BUCKET, S3_KEY, S3_REGION, S3_SECRET, moto_server
from helpers.s3 import client as s3_client
from helpers.server import start_server, stop_server

SLOW_MODEL = """
import os
import time
from pathlib import Path

import numpy as np


class Model:
    def __init__(self, root, options):
        self.marks = Path(options["marks"])
        self.delay = float(options["delay"])
        (self.marks / f"loaded-{os.getpid()}-{time.monotonic_ns()}").touch()

    def predict(self, inputs):
        (self.marks / f"busy-{os.getpid()}").touch()
        time.sleep(self.delay)  # a slow model: the test kills a worker meanwhile
        x = inputs["x"]
        return {"y": x.sum(axis=1, keepdims=True).astype(np.float32)}
"""


PICKY_MODEL = """
import numpy as np


class Model:
    def __init__(self, root, options):
        pass

    def predict(self, inputs):
        x = inputs["x"]
        if (x[:, 0] > 100).any():
            raise RuntimeError("cannot score a first feature over 100")
        return {"z": x[:, :1] * 2}
"""


def _python_package(root: Path, name: str, source: str, output: str, **options: object) -> Path:
    inputs = [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    outputs = [{"name": output, "datatype": "FP32", "shape": [-1, 1]}]
    return python_package(root, name, source, inputs=inputs, outputs=outputs, **options)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path]:
    """A registry with ``default/linear`` (4 → 3), ``default/lc`` (features → 2),
    the slow Python model ``lab/slow`` and ``lab/picky``, which fails on
    batches with a first feature over 100; and the directory the slow model marks."""
    base = tmp_path_factory.mktemp("batch")
    marks = base / "marks"
    marks.mkdir()
    settings = Settings.load(base / "home", environ={})
    width = len(features_from_alert(next(AlertSimulator(seed=1).alerts(1)).alert))
    with Registry(settings) as registry:
        registry.publish(make_onnx_package(base / "linear"))
        labelled = {
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2], "labels": ["a", "b"]}]
        }
        registry.publish(
            make_onnx_package(base / "lc", name="lc", n_in=width, n_out=2, extra=labelled)
        )
        registry.create_namespace("lab", trusted=True)
        registry.publish(
            _python_package(base / "slow", "slow", SLOW_MODEL, "y", marks=str(marks), delay=0.4)
        )
        registry.publish(_python_package(base / "picky", "picky", PICKY_MODEL, "z"))
    return settings, marks


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with dask_client(None, workers=2) as c:
        yield c


@pytest.fixture
def cli(lab: tuple[Settings, Path], capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(lab[0].home, capsys)


def test_a_job_annotates_every_row_once_with_provenance(tmp_path: Path, cli: Cli) -> None:
    good = _archive(tmp_path / "archive")
    report = cli.json(
        "batch", "run", str(_spec(tmp_path)), "--workers", "2", "--out", str(tmp_path / "out")
    )
    assert report["verified"] is True
    assert report["shards"] == 5  # 2 row groups in each Parquet file, and the JSON Lines file
    assert report["rows"] == 105 and report["outputs"] == len(good) == 101
    assert report["dead_letters"] == 4
    out_dir = Path(report["out_dir"])
    table, dead = _outputs(out_dir)
    rows = table.to_pylist()
    ids = [r["row_id"] for r in rows]
    assert sorted(ids) == sorted(good) and len(set(ids)) == len(ids)
    for row in rows:
        np.testing.assert_allclose(
            row["y"], expected_linear(good[row["row_id"]][None, :])[0], rtol=1e-5
        )
        assert row["selected"] is (row["y"][2] > 30)
    assert any(r["selected"] for r in rows) and not all(r["selected"] for r in rows)
    first = rows[0]
    assert (first["model"], first["model_version"], first["runtime"]) == (
        "default/linear",
        "1.0.0",
        "onnx",
    )
    assert first["model_digest"].startswith("sha256:") or len(first["model_digest"]) >= 64
    assert "onnxruntime" in json.loads(first["library_versions"])
    assert {r["job_id"] for r in rows} == {report["job_id"]}
    assert {r["shard_id"] for r in rows} == {f"{i:05d}" for i in range(5)}
    by_id = {d["row_id"]: d for d in dead}
    assert set(by_id) == {*map(str, NULL_IDS), str(TEXT_ID), "extra.jsonl:2"}
    assert "column 'f0' is null" in by_id["1053"]["reason"]
    assert "'abc' is not a number" in by_id[str(TEXT_ID)]["reason"]
    assert by_id["extra.jsonl:2"]["error"] == "not-json"
    assert "verified" in cli(
        "batch", "run", str(_spec(tmp_path)), "--workers", "1", "--out", str(tmp_path / "out")
    )
    assert not list(out_dir.glob(".*"))  # nothing half-written left


def test_rerunning_a_job_redoes_only_the_missing_shards(
    tmp_path: Path, lab: tuple[Settings, Path], client: Any
) -> None:
    _archive(tmp_path / "archive")
    spec = parse_batch_spec(yaml.safe_load(_spec(tmp_path).read_text()), base_dir=tmp_path)
    job = BatchJob(spec, lab[0], tmp_path / "out")
    job.plan()
    first = job.run(client)
    assert first.ran == [f"{i:05d}" for i in range(5)] and first.verified
    stamps = {p.name: p.stat().st_mtime_ns for p in job.out_dir.glob("shard-*")}
    # An interrupted job: shard 2 never got its manifest, shard 3 none of its files.
    (job.out_dir / "shard-00002.json").unlink()
    for p in job.out_dir.glob("shard-00003.*"):
        p.unlink()
    again = BatchJob(spec, lab[0], tmp_path / "out")
    again.plan()
    assert again.job_id == job.job_id
    report = again.run(client)
    assert report.ran == ["00002", "00003"] and report.skipped == ["00000", "00001", "00004"]
    assert report.verified and report.outputs == first.outputs
    for p in job.out_dir.glob("shard-*"):
        if not p.name.startswith(("shard-00002", "shard-00003")):
            assert p.stat().st_mtime_ns == stamps[p.name], p.name
    # A damaged output is not trusted either.
    (job.out_dir / "shard-00004.parquet").write_bytes(b"garbage")
    assert again.run(client).ran == ["00004"]
    # A job named on the command line is planned by its first run.
    named = BatchJob(spec, lab[0], tmp_path / "out", job_id="night-2024.1")
    assert named.run(client).ran == [f"{i:05d}" for i in range(5)]
    assert (tmp_path / "out" / "night-2024.1" / "shard-00004.json").is_file()
    with pytest.raises(InvalidInput, match="is not a job id"):
        BatchJob(spec, lab[0], tmp_path / "out", job_id="../escape")


def test_shard_files_torn_after_their_manifest_are_redone_on_resume(
    tmp_path: Path, lab: tuple[Settings, Path], client: Any
) -> None:
    """What a power cut can leave, since shards are not flushed one by one:
    files cut short or with other bytes than the manifest recorded, a
    manifest cut short.  None of them is trusted; the next run redoes them."""
    from sciserve.batch.worker import make_durable

    _archive(tmp_path / "archive")
    spec = parse_batch_spec(yaml.safe_load(_spec(tmp_path).read_text()), base_dir=tmp_path)
    job = BatchJob(spec, lab[0], tmp_path / "out")
    job.plan()
    first = job.run(client)
    assert first.verified and first.dead_letters == 4
    out = job.out_dir
    output = out / "shard-00001.parquet"
    output.write_bytes(output.read_bytes()[: output.stat().st_size // 2])
    torn_letters = next(p for p in sorted(out.glob("shard-*.dead.jsonl")) if p.stat().st_size > 0)
    letters = bytearray(torn_letters.read_bytes())
    letters[len(letters) // 2] ^= 0x01  # one bit flipped, the size kept
    torn_letters.write_bytes(bytes(letters))
    manifest = out / "shard-00003.json"
    manifest.write_bytes(manifest.read_bytes()[:40])
    torn = sorted({"00001", "00003", torn_letters.name.split(".")[0].removeprefix("shard-")})
    pending = [s.id for s in job.pending()]
    assert pending == torn
    report = job.run(client)
    assert report.ran == torn and report.verified
    assert (report.rows, report.outputs, report.dead_letters) == (
        first.rows,
        first.outputs,
        first.dead_letters,
    )
    assert job.pending() == []
    # Every file of every shard and the job file, flushed once more at will;
    # a missing one is verification's business, not the flush's.
    assert make_durable(str(out), [s.id for s in job.shards]) == 1 + 3 * 5
    output.unlink()
    assert make_durable(str(out), [s.id for s in job.shards]) == 3 * 5
    with pytest.raises(FileNotFoundError):
        make_durable(str(tmp_path / "nowhere"), ["00000"])


def test_alert_archives_go_through_the_codec_and_features(
    tmp_path: Path, lab: tuple[Settings, Path], client: Any
) -> None:
    alerts = list(AlertSimulator(seed=5).alerts(30))
    archive = tmp_path / "alerts"
    archive.mkdir()

    async def write(path: Path, values: list[bytes]) -> None:
        sink = open_sink(f"file://{path}")
        await sink.start()
        await sink.write([OutRecord(v) for v in values])
        await sink.close()

    asyncio.run(write(archive / "a.avro", [a.payload for a in alerts[:15]] + [b"\x00garbage"]))
    asyncio.run(write(archive / "b.avro", [a.payload for a in alerts[15:25]]))
    asyncio.run(write(archive / "c.parquet", [a.payload for a in alerts[25:]]))
    spec = parse_batch_spec(
        {
            "name": "alerts",
            "input": str(archive),
            "models": [{"ref": "default/lc"}],
            "filter": "alert.diaSource.band in ['g', 'r']",
            "results": True,
        }
    )
    job = BatchJob(spec, lab[0], tmp_path / "out")
    job.plan()
    report = job.run(client)
    assert report.verified and report.shards == 3
    assert (report.rows, report.outputs, report.dead_letters) == (31, 30, 1)
    table, dead = _outputs(job.out_dir)
    assert sorted(table.column("alert_id").to_pylist()) == sorted(a.alert_id for a in alerts)
    bands = {a.alert_id: a.alert["diaSource"]["band"] for a in alerts}
    for row in table.to_pylist():
        assert row["selected"] is (bands[row["alert_id"]] in ("g", "r"))
        assert row["label"] == "ab"[int(np.argmax(row["y"]))]
        assert row["score"] == pytest.approx(max(row["y"]))
    assert [(d["row_id"], d["stage"]) for d in dead] == [("a.avro:15", "decode")]
    # The annotations are in the result store too, once each, even after a
    # shard is redone.
    with ResultStore.open(lab[0]) as store:
        assert sorted(store.alert_ids(pipeline="alerts")) == sorted(a.alert_id for a in alerts)
        stored = store.get(alerts[0].alert_id, "default/lc", "1.0.0")
        assert stored is not None and stored.published is (bands[alerts[0].alert_id] in "gr")
    (job.out_dir / "shard-00000.json").unlink()
    assert job.run(client).ran == ["00000"]
    with ResultStore.open(lab[0]) as store:
        assert store.count(pipeline="alerts") == 30


def test_results_need_alert_input() -> None:
    with pytest.raises(InvalidInput, match="results: needs alert input"):
        parse_batch_spec(
            {"name": "t", "input": "x", "columns": ["a"], "models": [{"ref": "m"}], "results": True}
        )


def test_a_worker_killed_mid_shard_is_retried_without_duplicates(
    tmp_path: Path, lab: tuple[Settings, Path], client: Any
) -> None:
    settings, marks = lab
    for mark in marks.iterdir():
        mark.unlink()
    ids = np.arange(40)
    x = np.random.default_rng(0).normal(size=(40, 4))
    (tmp_path / "archive").mkdir()
    pq.write_table(
        pa.table({"obj": ids, "x": [list(r) for r in x]}),
        tmp_path / "archive" / "data.parquet",
        row_group_size=10,
    )
    spec = parse_batch_spec(
        {
            "name": "slow",
            "input": str(tmp_path / "archive"),
            "columns": "x",
            "id": "obj",
            "models": [{"ref": "lab/slow"}],
            "batch": 5,
        }
    )
    job = BatchJob(spec, settings, tmp_path / "out")
    job.plan()
    assert len(job.shards) == 4
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["report"] = job.run(client)
        except BaseException as exc:  # handed to the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    busy: list[Path] = []
    while not busy and time.monotonic() < deadline:
        busy = list(marks.glob("busy-*"))
        time.sleep(0.02)
    assert busy, "no shard started"
    victim = int(busy[0].name.removeprefix("busy-"))
    os.kill(victim, signal.SIGKILL)
    thread.join(120)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    report = outcome["report"]
    assert report.verified and (report.rows, report.outputs, report.dead_letters) == (40, 40, 0)
    table, _ = _outputs(job.out_dir)
    row_ids = table.column("row_id").to_pylist()
    assert sorted(row_ids, key=int) == [str(i) for i in ids]
    np.testing.assert_allclose(
        np.array(table.column("y").to_pylist())[:, 0],
        x[np.array(row_ids, dtype=int)].sum(axis=1),
        rtol=1e-5,
    )
    # The killed process ran nothing to the end; the model was loaded once per process.
    assert victim not in {
        json.loads(p.read_text())["pid"] for p in job.out_dir.glob("shard-*.json")
    }
    # 4 shards done by at most 2 processes (the survivor and the victim's
    # replacement): some process did several, and loaded the model once.
    pids = [json.loads(p.read_text())["pid"] for p in job.out_dir.glob("shard-*.json")]
    assert max(pids.count(pid) for pid in pids) > 1
    loads = [p.name.split("-")[1] for p in marks.glob("loaded-*")]
    assert len(loads) == len(set(loads))


def test_rows_a_model_fails_on_are_dead_letters_of_that_model(
    tmp_path: Path, lab: tuple[Settings, Path], client: Any
) -> None:
    x = np.random.default_rng(1).normal(size=(20, 4))
    x[12, 0] = 1000.0
    vectors: list[list[float]] = [list(r) for r in x]
    vectors[3] = vectors[3][:3]  # one value short
    (tmp_path / "archive").mkdir()
    pq.write_table(
        pa.table({"obj": np.arange(20), "x": vectors}), tmp_path / "archive" / "data.parquet"
    )
    spec = parse_batch_spec(
        {
            "name": "two-models",
            "input": str(tmp_path / "archive"),
            "columns": "x",
            "id": "obj",
            "models": [{"ref": "default/linear"}, {"ref": "lab/picky"}],
            "batch": 5,
        }
    )
    job = BatchJob(spec, lab[0], tmp_path / "out")
    job.plan()
    report = job.run(client)
    assert report.verified and report.rows == 20
    table, dead = _outputs(job.out_dir)
    rows = table.to_pylist()
    linear = sorted(int(r["row_id"]) for r in rows if r["model"] == "default/linear")
    picky = sorted(int(r["row_id"]) for r in rows if r["model"] == "lab/picky")
    good = [i for i in range(20) if i != 3]
    # Rows go to the models in batches of 5 (of the rows that converted): the
    # batch holding row 12 (rows 11-15) fails twice for lab/picky only.
    failed = good[10:15]
    assert linear == good and picky == [i for i in good if i not in failed]
    assert [(d["row_id"], d["stage"], d["model"]) for d in dead] == [
        ("3", "convert", None),
        *((str(i), "model", "lab/picky:1.0.0") for i in failed),
    ]
    assert "3 values per row; the models take shape [4]" in dead[0]["reason"]
    assert dead[1]["reason"].startswith("lab/picky:1.0.0 failed twice: ")
    assert "cannot score a first feature over 100" in dead[1]["reason"]
    assert report.outputs == len(linear) + len(picky) and report.dead_letters == 6


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"columns": ["f0", "f1", "f2", "nope"]}, "has no column 'nope'"),
        (
            {"columns": ["f0", "f1", "f2", "note"]},
            "column 'note' is string, which does not convert",
        ),
        ({"columns": ["f0", "f1", "f2"]}, "3 columns do not fit the models' input of shape [4]"),
        ({"id": "missing_id"}, "has no column 'missing_id'"),
        ({"filter": "z > 1"}, "the filter reads ['z']"),
        ({"models": [{"ref": "default/absent"}]}, "no model default/absent"),
        (
            {"models": [{"ref": "default/linear", "server": "http://127.0.0.1:9"}]},
            "http://127.0.0.1:9",
        ),
        ({"columns": "f0"}, "column 'f0' is double, not a list column"),
    ],
)
def test_a_bad_spec_fails_before_any_work(
    tmp_path: Path, cli: Cli, fields: dict[str, Any], message: str
) -> None:
    _archive(tmp_path / "archive")
    (tmp_path / "archive" / "extra.jsonl").unlink()
    code = 3 if "no model" in message else 7 if "127.0.0.1:9" in message else 2
    out = cli(
        "batch", "run", str(_spec(tmp_path, **fields)), "--out", str(tmp_path / "out"), code=code
    )
    assert message in out
    assert not (tmp_path / "out").exists()


def test_an_unreadable_parquet_file_fails_before_any_work(tmp_path: Path, cli: Cli) -> None:
    _archive(tmp_path / "archive")
    (tmp_path / "archive" / "night=3").mkdir()
    (tmp_path / "archive" / "night=3" / "part-0.parquet").write_bytes(b"PAR1 cut off")
    out = cli("batch", "run", str(_spec(tmp_path)), "--out", str(tmp_path / "out"), code=2)
    assert "cannot read Parquet file night=3/part-0.parquet" in out
    assert not (tmp_path / "out").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_an_unreachable_scheduler_is_reported(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sciserve.batch.executor.CONNECT_TIMEOUT", 2)
    _archive(tmp_path / "archive")
    address = f"tcp://127.0.0.1:{_free_port()}"
    out = cli(
        "batch",
        "run",
        str(_spec(tmp_path)),
        "--scheduler",
        address,
        "--out",
        str(tmp_path / "out"),
        code=7,
    )
    assert f"cannot reach the Dask scheduler at {address}" in out
    assert not list((tmp_path / "out").glob("*/shard-*"))
    out = cli("batch", "run", str(_spec(tmp_path)), "--scheduler", "localhost", code=2)
    assert "not a scheduler address" in out


def test_the_same_spec_runs_on_a_separately_started_cluster(tmp_path: Path, cli: Cli) -> None:
    good = _archive(tmp_path / "archive")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    logs = [open(tmp_path / name, "wb") for name in ("scheduler.log", "worker.log")]  # noqa: SIM115
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--no-dashboard"],
            stdout=logs[0], stderr=subprocess.STDOUT, env=env,
        )
    ]  # fmt: skip
    try:
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "dask", "worker", address, "--host", "127.0.0.1",
                 "--nworkers", "1", "--nthreads", "1", "--no-dashboard"],
                stdout=logs[1], stderr=subprocess.STDOUT, env=env,
            )
        )  # fmt: skip
        from distributed import Client

        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(address, timeout=5) as probe:
                    probe.wait_for_workers(1, timeout=60)
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "scheduler.log").read_text()
                time.sleep(0.1)
        report = cli.json(
            "batch",
            "run",
            str(_spec(tmp_path)),
            "--scheduler",
            address,
            "--out",
            str(tmp_path / "out"),
        )
        assert report["verified"] and report["outputs"] == len(good) and report["dead_letters"] == 4
        table, _ = _outputs(Path(report["out_dir"]))
        assert sorted(table.column("row_id").to_pylist()) == sorted(good)
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in reversed(processes):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs:
            log.close()


def test_the_progress_bar_counts_shards_and_rows() -> None:
    from rich.console import Console

    from sciserve.batch.worker import ShardResult
    from sciserve.cli._batch import _progress
    from sciserve.cli._context import State

    screen = io.StringIO()
    st = State(err=Console(file=screen, force_terminal=True, width=120))
    with _progress(st, 2) as advance:
        advance(ShardResult("00000", 1000, 1000, 0, 0.1, 1))
        advance(ShardResult("00001", 1000, 999, 1, 0.1, 1))
    assert "2/2" in screen.getvalue() and "rows/s" in screen.getvalue()
    quiet = io.StringIO()
    with _progress(State(json=True, err=Console(file=quiet, force_terminal=True)), 1) as advance:
        advance(ShardResult("00000", 5, 5, 0, 0.1, 1))
    assert quiet.getvalue() == ""


def test_without_dask_the_job_says_what_to_install(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    _archive(tmp_path / "archive")
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    out = cli("batch", "run", str(_spec(tmp_path)), "--out", str(tmp_path / "out"), code=8)
    assert "pip install 'sciserve[dask]'" in out


def test_the_registry_can_be_named_on_the_command(
    tmp_path: Path, lab: tuple[Settings, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _archive(tmp_path / "archive")
    elsewhere = Cli(tmp_path / "empty-home", capsys)
    spec = str(_spec(tmp_path))
    out = elsewhere("batch", "run", spec, "--out", str(tmp_path / "out"), code=3)
    assert "no registry at" in out
    report = elsewhere.json(
        "batch", "run", spec, "--home", str(lab[0].home), "--workers", "1",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert report["verified"] and report["outputs"] == 101


def test_an_archive_damaged_past_its_start_fails_its_shard_cleanly(
    tmp_path: Path, cli: Cli
) -> None:
    alerts = [a.payload for a in AlertSimulator(seed=9).alerts(40)]
    archive = tmp_path / "alerts"
    archive.mkdir()

    async def write(path: Path, values: list[bytes]) -> None:
        sink = open_sink(f"file://{path}")
        await sink.start()
        for value in values:  # one Avro block per write: the damage is past the first
            await sink.write([OutRecord(value)])
        await sink.close()

    asyncio.run(write(archive / "a.avro", alerts[:20]))
    asyncio.run(write(archive / "b.avro", alerts[20:]))
    data = (archive / "b.avro").read_bytes()
    (archive / "b.avro").write_bytes(data[: len(data) - 700])
    spec = tmp_path / "alerts.yaml"
    spec.write_text(
        yaml.safe_dump({"name": "alerts", "input": "alerts", "models": [{"ref": "default/lc"}]})
    )
    out = cli("batch", "run", str(spec), "--workers", "1", "--out", str(tmp_path / "out"), code=2)
    assert "b.avro: truncated or damaged Avro file" in out
    assert not list((tmp_path / "out").glob("*/shard-00001.*"))
    assert not list((tmp_path / "out").glob("*/.*.partial"))


def test_an_archive_on_s3_runs_like_a_local_one(
    tmp_path: Path, lab: tuple[Settings, Path], client: Any
) -> None:
    good = _archive(tmp_path / "archive")
    with moto_server(tmp_path / "moto.log") as endpoint:
        s3 = s3_client(endpoint)
        for path in sorted((tmp_path / "archive").rglob("*")):
            if path.is_file():
                key = f"lsst/{path.relative_to(tmp_path).as_posix()}"
                s3.put_object(Bucket=S3_BUCKET, Key=key, Body=path.read_bytes())
        options = {
            "key": S3_KEY,
            "secret": S3_SECRET,
            "client_kwargs": {"endpoint_url": endpoint, "region_name": S3_REGION},
        }
        doc = yaml.safe_load(_spec(tmp_path).read_text())
        doc.update(input=f"s3://{S3_BUCKET}/lsst/archive", storage_options=options)
        job = BatchJob(parse_batch_spec(doc), lab[0], tmp_path / "out")
        job.plan()
        report = job.run(client)
        assert report.verified and report.shards == 5
        assert (report.rows, report.outputs, report.dead_letters) == (105, 101, 4)
        table, dead = _outputs(job.out_dir)
        assert sorted(table.column("row_id").to_pylist()) == sorted(good)
        assert "extra.jsonl:2" in {d["row_id"] for d in dead}
        # The credentials are not written with the job.
        assert S3_SECRET not in (job.out_dir / "job.json").read_text()
        s3.put_object(Bucket=S3_BUCKET, Key="lsst/archive/night=3/bad.parquet", Body=b"PAR1 no")
        with pytest.raises(InvalidInput, match=r"cannot read Parquet file night=3/bad\.parquet"):
            BatchJob(parse_batch_spec(doc), lab[0], tmp_path / "out").plan()


def test_a_worker_that_cannot_see_the_registry_says_so_and_creates_none(
    tmp_path: Path, lab: tuple[Settings, Path]
) -> None:
    import dataclasses

    from sciserve.batch.worker import run_shard

    _archive(tmp_path / "archive")
    spec = parse_batch_spec(yaml.safe_load(_spec(tmp_path).read_text()), base_dir=tmp_path)
    job = BatchJob(spec, lab[0], tmp_path / "out")
    job.plan()
    elsewhere = Settings.load(tmp_path / "not-shared", environ={})
    task = dataclasses.replace(job._task(job.shards[0]), settings=elsewhere)
    with pytest.raises(NotFound, match="no registry"):
        run_shard(task)
    assert not (tmp_path / "not-shared").exists()


def test_the_final_check_catches_an_output_that_lost_a_row(
    tmp_path: Path, lab: tuple[Settings, Path], client: Any
) -> None:
    import hashlib

    from sciserve.errors import IntegrityError

    _archive(tmp_path / "archive")
    spec = parse_batch_spec(yaml.safe_load(_spec(tmp_path).read_text()), base_dir=tmp_path)
    job = BatchJob(spec, lab[0], tmp_path / "out")
    job.plan()
    assert job.run(client).verified
    # A row goes missing behind the manifest's back (its checksums redone to match).
    output = job.out_dir / "shard-00001.parquet"
    pq.write_table(pq.read_table(output).slice(1), output)
    manifest = job.out_dir / "shard-00001.json"
    doc = json.loads(manifest.read_text())
    doc["files"]["output"]["sha256"] = hashlib.sha256(output.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match=r"shard 00001, default/linear:1\.0\.0: 24 rows out"):
        job.run(client)


def test_the_final_check_catches_a_manifest_whose_ids_are_not_the_inputs(
    tmp_path: Path, lab: tuple[Settings, Path], client: Any
) -> None:
    from sciserve.errors import IntegrityError

    _archive(tmp_path / "archive")
    spec = parse_batch_spec(yaml.safe_load(_spec(tmp_path).read_text()), base_dir=tmp_path)
    job = BatchJob(spec, lab[0], tmp_path / "out")
    job.plan()
    assert job.run(client).verified
    manifests = {p: json.loads(p.read_text()) for p in sorted(job.out_dir.glob("shard-*.json"))}
    # A shard with dead letters: its ids are compared as a set, and the
    # manifest's checksum of them against the input's.
    lettered = next(p for p, doc in manifests.items() if doc["dead_letters"])
    doc = manifests[lettered]
    lettered.write_text(json.dumps({**doc, "ids_sha256": "0" * 64}))
    shard = lettered.name.removeprefix("shard-").removesuffix(".json")
    with pytest.raises(IntegrityError, match=rf"shard {shard}: the manifest's ids are not"):
        job.run(client)
    lettered.write_text(json.dumps(doc))
    assert job.run(client).verified
    # Any shard: its row count.
    clean = next(p for p, doc in manifests.items() if not doc["dead_letters"])
    clean.write_text(json.dumps({**manifests[clean], "rows": manifests[clean]["rows"] + 1}))
    shard = clean.name.removeprefix("shard-").removesuffix(".json")
    with pytest.raises(IntegrityError, match=rf"shard {shard}: the manifest's ids are not"):
        job.run(client)


def test_a_step_with_server_runs_its_model_on_a_sciserve_server(
    tmp_path: Path, lab: tuple[Settings, Path], client: Any
) -> None:
    good = _archive(tmp_path / "archive")
    running = start_server(lab[0].home, "--model", "default/linear")
    try:
        doc = yaml.safe_load(_spec(tmp_path).read_text())
        doc["models"] = [{"ref": "default/linear", "server": f"http://{running.http}"}]
        job = BatchJob(parse_batch_spec(doc, base_dir=tmp_path), lab[0], tmp_path / "out")
        job.plan()
        report = job.run(client)
    finally:
        stop_server(running.proc)
    assert report.verified and (report.outputs, report.dead_letters) == (101, 4)
    table, _ = _outputs(job.out_dir)
    for row in table.to_pylist():
        np.testing.assert_allclose(
            row["y"], expected_linear(good[row["row_id"]][None, :])[0], rtol=1e-5
        )
    versions = json.loads(table.column("library_versions")[0].as_py())
    assert "sciserve-server" in versions


def test_service_errors_are_waited_out_and_then_fail_the_shard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sciserve.batch import worker
    from sciserve.errors import Unavailable

    monkeypatch.setattr(worker, "_SERVICE_WAITS", (0.0, 0.0))

    class Restarting:
        model, version, digest, runtime = "default/m", "1", "sha256:0", "onnx"
        outputs: tuple[Any, ...] = ()
        library_versions: dict[str, str] = {}

        def __init__(self, failures: int) -> None:
            self.failures = failures

        def predict_now(self, features: np.ndarray) -> dict[str, np.ndarray]:
            if self.failures:
                self.failures -= 1
                raise Unavailable("the server is restarting")
            return {"y": features[:, :1]}

    outputs, reasons = worker._predict(Restarting(failures=2), np.ones((3, 4)), 10)
    assert reasons == [""] and outputs[0] is not None and len(outputs[0]["y"]) == 3
    with pytest.raises(Unavailable, match="restarting"):
        worker._predict(Restarting(failures=3), np.ones((3, 4)), 10)


def test_the_ids_checksum_changes_with_any_lost_added_changed_or_moved_id() -> None:
    from sciserve.batch.worker import ids_checksum

    ids = ["a", "bc", "d", "17"]
    base = ids_checksum(pa.array(ids))
    assert base == ids_checksum(ids) == ids_checksum(pa.chunked_array([ids[:1], ids[1:]]))
    assert base == ids_checksum(pa.array(["x", *ids]).slice(1))  # an array with an offset
    for other in (
        ids[:-1],  # lost
        [*ids, "17"],  # duplicated
        ["a", "bd", "d", "17"],  # changed
        ["ab", "c", "d", "17"],  # the same bytes, cut elsewhere
        ["bc", "a", "d", "17"],  # moved
        [],
    ):
        assert ids_checksum(other) != base, other
    assert ids_checksum([]) == ids_checksum(pa.array([], pa.string()))
    with pytest.raises(ValueError, match="null"):
        ids_checksum(pa.array(["a", None]))


def test_row_ids_of_an_id_column_are_its_text_or_the_row_position() -> None:
    from sciserve.batch.shards import Shard, _id_array

    shard = Shard("00000", "x.parquet", "part/x.parquet", "parquet", 0, first_row=10, rows=4)
    ints = pa.chunked_array([[5, None], [-7, 2**62]])
    assert _id_array(shard, ints).to_pylist() == ["5", "part/x.parquet:11", "-7", str(2**62)]
    texts = pa.array(["", "b", None, "d"])
    assert _id_array(shard, texts).to_pylist() == [
        "part/x.parquet:10", "b", "part/x.parquet:12", "d",
    ]  # fmt: skip
    floats = pa.array([1.0, 2.5, None, 4.0])  # value by value, as str() writes them
    assert _id_array(shard, floats).to_pylist() == ["1.0", "2.5", "part/x.parquet:12", "4.0"]


def test_the_final_check_catches_an_output_with_a_changed_id_and_accepts_another_order(
    tmp_path: Path, lab: tuple[Settings, Path], client: Any
) -> None:
    import hashlib

    import pyarrow.compute as pc

    from sciserve.errors import IntegrityError

    _archive(tmp_path / "archive")
    spec = parse_batch_spec(yaml.safe_load(_spec(tmp_path).read_text()), base_dir=tmp_path)
    job = BatchJob(spec, lab[0], tmp_path / "out")
    job.plan()
    assert job.run(client).verified
    output = job.out_dir / "shard-00001.parquet"
    manifest = job.out_dir / "shard-00001.json"
    original = pq.read_table(output)

    def replace(table: pa.Table) -> None:
        pq.write_table(table, output)
        doc = json.loads(manifest.read_text())
        doc["files"]["output"]["sha256"] = hashlib.sha256(output.read_bytes()).hexdigest()
        manifest.write_text(json.dumps(doc))

    # Rows in another order: still every id once.
    replace(original.take(pc.sort_indices(original, sort_keys=[("row_id", "descending")])))
    assert job.run(client).verified
    # One id changed, the count kept.
    ids = original.column("row_id").to_pylist()
    ids[3] = "not-an-input-id"
    replace(original.set_column(0, "row_id", pa.array(ids, pa.string())))
    with pytest.raises(IntegrityError, match=r"shard 00001, default/linear:1\.0\.0: 25 rows out"):
        job.run(client)


def test_a_shard_written_under_another_manifest_format_is_redone(
    tmp_path: Path, lab: tuple[Settings, Path], client: Any
) -> None:
    _archive(tmp_path / "archive")
    spec = parse_batch_spec(yaml.safe_load(_spec(tmp_path).read_text()), base_dir=tmp_path)
    job = BatchJob(spec, lab[0], tmp_path / "out")
    job.plan()
    first = job.run(client)
    assert first.verified
    # A manifest of the first version (no "format", ids checksummed otherwise).
    manifest = job.out_dir / "shard-00001.json"
    doc = json.loads(manifest.read_text())
    del doc["format"]
    doc["ids_sha256"] = "0" * 64
    manifest.write_text(json.dumps(doc))
    report = job.run(client)
    assert report.ran == ["00001"] and report.verified and report.outputs == first.outputs
    assert json.loads(manifest.read_text())["format"] == MANIFEST_FORMAT


def test_a_shard_checked_from_the_bytes_it_wrote_still_catches_a_lost_or_replaced_row(
    tmp_path: Path, lab: tuple[Settings, Path]
) -> None:
    """The task that writes a shard checks the table it encoded rather than
    decoding the file again, as long as the file holds those very bytes:
    rows missing from that table, a footer that does not count them, and a
    file replaced since (decoded then) are all still caught."""
    import dataclasses
    import hashlib

    from sciserve.batch import worker

    _archive(tmp_path / "archive")
    spec = parse_batch_spec(yaml.safe_load(_spec(tmp_path).read_text()), base_dir=tmp_path)
    job = BatchJob(spec, lab[0], tmp_path / "out")
    job.plan()
    job.out_dir.mkdir(parents=True)
    shard = next(s for s in job.shards if s.format == "parquet")
    task = job._task(shard)
    rows, outputs, dead_letters, written = worker._annotate(task)
    assert (rows, outputs, dead_letters) == (25, 25, 0)
    assert worker._verify(task, written) == []
    assert worker.verify_shard(task) == []  # the same file, decoded
    # The table checked is the one encoded: a row lost from it is missing,
    # and the file's footer no longer counts the table's rows.
    lost = dataclasses.replace(written, ids=written.ids.slice(1))
    problems = worker._verify(task, lost)
    assert any("footer counts 25 rows, not the 24 written" in p for p in problems)
    assert any("default/linear:1.0.0: 24 rows out for 25 in (1 ids missing)" in p for p in problems)
    # The file replaced after it was written (another attempt's, one row
    # short, its manifest redone to match): no longer the bytes written, it
    # is decoded, and the lost row is found.
    output, _, manifest = worker.paths(task.out_dir, shard.id)
    pq.write_table(pq.read_table(output).slice(1), output)
    doc = json.loads(manifest.read_text())
    doc["files"]["output"]["sha256"] = hashlib.sha256(output.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(doc))
    assert worker._verify(task, written) == [
        f"shard {shard.id}, default/linear:1.0.0: 24 rows out for 25 in (1 ids missing)"
    ]


def test_a_shard_whose_input_ids_changed_after_it_was_read_fails_its_check(
    tmp_path: Path, lab: tuple[Settings, Path]
) -> None:
    """The task that wrote a shard takes the ids it made from the input's id
    column only if the input's column, read again, holds the same values."""
    from sciserve.batch import worker

    _archive(tmp_path / "archive")
    spec = parse_batch_spec(yaml.safe_load(_spec(tmp_path).read_text()), base_dir=tmp_path)
    job = BatchJob(spec, lab[0], tmp_path / "out")
    job.plan()
    job.out_dir.mkdir(parents=True)
    shard = next(s for s in job.shards if s.format == "parquet")
    task = job._task(shard)
    *_, written = worker._annotate(task)
    assert worker._verify(task, written) == []
    # The input file rewritten meanwhile: one id of the shard's row group changed.
    path = Path(shard.path)
    table = pq.read_table(path)
    ids = table.column("obj").to_pylist()
    ids[shard.first_row + 2] = 99_999
    table = table.set_column(table.schema.get_field_index("obj"), "obj", pa.array(ids, pa.int64()))
    pq.write_table(table, path, row_group_size=25)
    problems = worker._verify(task, written)
    assert f"shard {shard.id}: the manifest's ids are not the input's" in problems
    assert f"shard {shard.id}, default/linear:1.0.0: 25 rows out for 25 in (1 ids missing)" in (
        problems
    )


def test_labels_are_indices_into_the_models_labels_and_non_finite_scores_are_null() -> None:
    from types import SimpleNamespace

    from sciserve.batch import worker
    from sciserve.package.manifest import TensorSpec

    labelled = TensorSpec(name="y", datatype="FP32", shape=[-1, 3], labels=["a", "b", "c"])
    model: Any = SimpleNamespace(outputs=[labelled])
    y = np.array([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0], [np.nan, 0.9, 0.0], [0.0, np.inf, 1.0]])
    labels, scores = worker._top_classes(model, {"y": y.astype(np.float32)}, len(y))
    # The first largest element wins, as numpy's argmax (a NaN counts as largest).
    assert labels.to_pylist() == ["b", "a", "a", "b"]
    assert labels.dictionary.to_pylist() == ["a", "b", "c"]
    column = worker._scores(scores, len(y))
    assert column.to_pylist() == [pytest.approx(0.7), 0.5, None, None]
    finite = worker._scores(scores[:2], 2)
    assert finite.null_count == 0 and finite.to_pylist() == column.to_pylist()[:2]
    # A model without labels: null labels of the output's label type.
    bare: Any = SimpleNamespace(outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 3])])
    labels, scores = worker._top_classes(bare, {"y": y}, len(y))
    assert scores is None and labels.null_count == len(y)
    assert labels.type == worker._schema().field("label").type
    assert worker._scores(None, 2).to_pylist() == [None, None]
