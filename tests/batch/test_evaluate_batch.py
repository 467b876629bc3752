"""``sciserve evaluate --batch``: the built-in benchmark evaluated as a batch job
on a real two-worker Dask ``LocalCluster``, against the in-process path."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sciserve.batch.evaluation import evaluation_spec, read_outputs
from sciserve.batch.executor import dask_client
from sciserve.batch.job import BatchJob
from sciserve.config import Settings
from sciserve.errors import IntegrityError
from sciserve.evaluation import registered
from sciserve.examples import build_examples
from sciserve.examples.benchmark import build_benchmark
from sciserve.package.manifest import DATASET
from sciserve.registry.registry import Registry

from helpers.cli import Cli

MODEL = "examples/lc-classifier"
DATA = "examples/synthetic-lightcurves"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with the example classifiers and the built-in benchmark."""
    root = tmp_path_factory.mktemp("evaluate-batch")
    with Registry(Settings.load(root / "home", environ={})) as reg:
        for package in build_examples(root / "built"):
            reg.publish(package)
        build_benchmark(root / "bench")
        reg.publish(root / "bench")
    return root / "home"


@pytest.fixture
def cli(home: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(home, capsys)


def _settings(home: Path) -> Settings:
    return Settings.load(home, environ={})


def _outputs(home: Path, record: dict[str, Any]) -> dict[str, np.ndarray]:
    kept = registered.stored_outputs(record)
    assert kept is not None
    with Registry(_settings(home), create=False) as reg:
        return registered.load_outputs(reg, kept)


def _record_ids(home: Path) -> set[str]:
    with Registry(_settings(home), create=False) as reg:
        return {e.record_id for e in reg.evaluations(MODEL)}


def test_the_batch_path_gives_the_in_process_metrics_and_outputs(cli: Cli, home: Path) -> None:
    # The train split: four Parquet row groups, so four shards on two workers.
    common = ("evaluate", MODEL, DATA, "--split", "train", "--batch-size", "256")
    local = cli.json(*common)
    batch = cli.json(*common, "--batch", "--workers", "2")
    one, two = local["record"], batch["record"]
    assert two["executor"]["kind"] == "batch" and two["executor"]["workers"] == 2
    assert two["executor"]["shards"] == 4
    assert "executor" not in one
    assert one["rows"] == two["rows"] == 4000
    assert (one["dataset_digest"], one["model_digest"]) == (
        two["dataset_digest"],
        two["model_digest"],
    )
    assert two["batch_size"] == 256 and two["split"] == "train"
    # Row for row: the batch job's outputs, joined back by id, are the in-process ones.
    a, b = _outputs(home, one), _outputs(home, two)
    assert set(a) == set(b) and a["probabilities"].dtype == b["probabilities"].dtype
    np.testing.assert_allclose(b["probabilities"], a["probabilities"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(b["probabilities"].argmax(1), a["probabilities"].argmax(1))
    # The workers run ONNX Runtime with its own thread settings (the record
    # says none were set) and the same batches: the same values, bit for bit.
    assert two["threads"] == {} and one["threads"] == {"intra_op_threads": 1}
    assert two["predictions_sha256"] == one["predictions_sha256"]
    assert local["metrics"].keys() == batch["metrics"].keys()
    for name, value in local["metrics"].items():
        assert batch["metrics"][name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    assert one["metrics"]["confusion_matrix"] == two["metrics"]["confusion_matrix"]
    assert batch["record_id"] in _record_ids(home)
    # The record re-runs in this process as recorded (batch size, no thread setting).
    verdict = cli.json("evaluate", "--reproduce", batch["record_id"])
    assert verdict["verdict"] == "bit-identical" and verdict["rows_checked"] is True
    # The scratch output of the job is gone once the record is stored.
    assert not [p for p in (home / "tmp").glob("evaluate-*") if p.is_dir()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_an_unreachable_scheduler_is_exit_7_and_records_nothing(
    cli: Cli, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sciserve.batch.executor.CONNECT_TIMEOUT", 2)
    before = _record_ids(home)
    address = f"tcp://127.0.0.1:{_free_port()}"
    out = cli("evaluate", MODEL, DATA, "--batch", "--scheduler", address, code=7)
    assert f"cannot reach the Dask scheduler at {address}" in out
    assert _record_ids(home) == before


class _LosingJob(BatchJob):
    """A real job whose output loses a row after the job verified it (a file
    changed under the evaluation): what the join to the labels must catch."""

    def run(self, client: Any, on_shard: Any = None) -> Any:
        report = super().run(client, on_shard)
        first = sorted(report.out_dir.glob("shard-*.parquet"))[0]
        pq.write_table(pq.read_table(first).slice(1), first)
        return report


def test_an_output_that_lost_a_row_is_exit_5_and_records_nothing(
    cli: Cli, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sciserve.batch.evaluation.BatchJob", _LosingJob)
    before = _record_ids(home)
    out = cli("evaluate", MODEL, DATA, "--batch", "--workers", "2", code=5)
    assert "does not hold every input row exactly once" in out and "missing ids" in out
    assert _record_ids(home) == before


def test_options_that_do_not_go_together_are_refused(cli: Cli, home: Path) -> None:
    before = _record_ids(home)
    out = cli("evaluate", MODEL, DATA, "--workers", "2", code=2)
    assert "add --batch" in out
    out = cli("evaluate", MODEL, DATA, "--batch", "--server", "http://127.0.0.1:1", code=2)
    assert "exclude each other" in out
    out = cli(
        "evaluate", MODEL, DATA, "--batch", "--workers", "2", "--scheduler", "tcp://a:1", code=2
    )
    assert "local cluster" in out
    assert _record_ids(home) == before


def test_outputs_missing_repeating_or_inventing_a_row_are_refused(
    home: Path, tmp_path: Path
) -> None:
    """The job verifies its own shards; the join to the labels checks again,
    on what it reads: every input id exactly once."""
    settings = _settings(home)
    with Registry(settings, create=False) as reg:
        split = registered.open_split(reg, DATA, "train")
        # What --batch opens: the labels and ids alone, the feature columns named.
        light = registered.open_split(reg, DATA, "train", features=False)
        root = reg.pull(split.info.ref, kind=DATASET)
        model = reg.resolve(MODEL).ref
    assert light.data.features.shape == (4000, 0) and split.data.features.shape == (4000, 21)
    assert light.data.feature_names == split.data.feature_names
    np.testing.assert_array_equal(light.data.labels, split.data.labels)
    np.testing.assert_array_equal(light.data.ids, split.data.ids)  # type: ignore[arg-type]
    spec = evaluation_spec(model, light, root / "train.parquet", batch_size=512)
    assert spec.columns == split.data.feature_names and spec.id == "id"
    with dask_client(None, 2) as client:
        report = BatchJob(spec, settings, tmp_path / "out").run(client)
    assert report.verified and report.rows == 4000
    ids = [str(i) for i in split.data.ids.tolist()]  # type: ignore[union-attr]
    # Read back in the split's order whatever order the ids are asked in.
    shuffled = list(reversed(ids))
    good = read_outputs(report.out_dir, ids, ["probabilities"])["probabilities"]
    back = read_outputs(report.out_dir, shuffled, ["probabilities"])["probabilities"]
    np.testing.assert_array_equal(back, good[::-1])
    assert good.shape == (4000, 5) and good.dtype == np.float32

    first = sorted(report.out_dir.glob("shard-*.parquet"))[0]
    table = pq.read_table(first)
    for damaged, said in (
        (table.slice(1), "missing ids"),
        (pa.concat_tables([table, table.slice(0, 1)]), "repeated ids"),
    ):
        pq.write_table(damaged, first)
        with pytest.raises(IntegrityError, match=said):
            read_outputs(report.out_dir, ids, ["probabilities"])
    pq.write_table(table, first)
    with pytest.raises(IntegrityError, match="unknown ids"):
        read_outputs(report.out_dir, ids[1:], ["probabilities"])
    # An output without rows: every id missing.
    empty = tmp_path / "empty"
    empty.mkdir()
    pq.write_table(table.slice(0, 0), empty / "shard-0.parquet")
    with pytest.raises(IntegrityError, match="0 output rows for 4000 input rows; missing ids"):
        read_outputs(empty, ids, ["probabilities"])
    with pytest.raises(IntegrityError, match="wrote no output"):
        read_outputs(tmp_path / "nothing", ids, ["probabilities"])
    (report.out_dir / "shard-0.dead.jsonl").write_text('{"row_id": "1"}\n')
    with pytest.raises(IntegrityError, match="dead letters"):
        read_outputs(report.out_dir, ids, ["probabilities"])
