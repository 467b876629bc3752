"""``sciserve evaluate``, ``evaluate --reproduce`` and ``compare`` on the example
classifiers and the built-in light-curve benchmark."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sciserve.config import Settings
from sciserve.evaluation import registered
from sciserve.examples import build_examples
from sciserve.examples.benchmark import build_benchmark
from sciserve.registry.registry import Registry

from helpers.cli import Cli
from helpers.packages import make_onnx_package

MODEL = "examples/lc-classifier"
GBM = "examples/lc-classifier-gbm"
DATA = "examples/synthetic-lightcurves"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with both example classifiers, a regressor and the benchmark."""
    root = tmp_path_factory.mktemp("evaluate")
    built = build_examples(root / "built")
    with Registry(Settings.load(root / "home", environ={})) as reg:
        for package in built:
            reg.publish(package)
        reg.publish(make_onnx_package(root / "scalar", name="scalar", n_in=21, n_out=1))
        build_benchmark(root / "bench")
        reg.publish(root / "bench")
    return root / "home"


@pytest.fixture
def cli(home: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(home, capsys)


@pytest.fixture
def own(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    """A private copy of the registry, for tests that damage it."""
    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    return Cli(copy, capsys)


def _records(cli: Cli, model: str = MODEL) -> list[dict[str, object]]:
    found = cli.json("evaluations", model)["evaluations"]
    assert isinstance(found, list)
    return found


def test_evaluating_twice_gives_identical_records_and_reproduces_bit_for_bit(cli: Cli) -> None:
    first = cli.json("evaluate", MODEL, DATA, "--batch-size", "100", "--seed", "simulate=43")
    second = cli.json("evaluate", MODEL, DATA, "--batch-size", "100", "--seed", "simulate=43")
    assert first["record_id"] != second["record_id"]
    one, two = dict(first["record"]), dict(second["record"])
    for r in (one, two):
        del r["performance"], r["created_at"]
    assert one == two
    assert one["threads"] == {"intra_op_threads": 1}
    assert one["batch_size"] == 100 and one["split"] == "test" and one["seeds"] == {"simulate": 43}
    assert one["dataset"] == f"{DATA}:1.0.0" and one["task"] == "classification"
    # The metrics stored for gates and leaderboards are the record's scalars.
    stored = {e["record_id"]: e for e in _records(cli)}[first["record_id"]]
    assert stored["metrics"]["accuracy"] == pytest.approx(first["metrics"]["accuracy"])
    assert 0.5 < first["metrics"]["accuracy"] <= 1.0  # the example classifier learned something
    board = cli.json("leaderboard", DATA, "--metric", "accuracy")
    assert MODEL + ":" in json.dumps(board)

    verdict = cli.json("evaluate", "--reproduce", first["record_id"])
    assert verdict["verdict"] == "bit-identical" and verdict["rows_checked"] is True
    assert verdict["expected_sha256"] == one["predictions_sha256"] == verdict["actual_sha256"]
    assert "bit-identical" in cli("evaluate", "--reproduce", first["record_id"])


def test_the_stored_outputs_are_the_evaluated_ones(cli: Cli, home: Path) -> None:
    out = cli.json("evaluate", GBM, DATA)
    kept = registered.stored_outputs(out["record"])
    assert kept is not None
    with Registry(Settings.load(home, environ={}), create=False) as reg:
        outputs = registered.load_outputs(reg, kept)
        info = reg.evaluation(out["record_id"])
    from sciserve.evaluation import predictions_sha256

    assert predictions_sha256(outputs) == out["record"]["predictions_sha256"]
    assert outputs["probabilities"].shape[0] == out["record"]["rows"]
    assert info.record["threads"] == {"num_threads": 1}
    # Same outputs, same bytes: the archive is deterministic.
    assert registered.outputs_npz(outputs) == registered.outputs_npz(dict(outputs))


def test_reproduce_says_which_outputs_and_rows_differ(own: Cli) -> None:
    out = own.json("evaluate", MODEL, DATA)
    record_id = out["record_id"]
    kept = registered.stored_outputs(out["record"])
    assert kept is not None
    # Swap the stored outputs for altered ones under the same record: a re-run
    # now disagrees with what is "recorded" at known rows.
    with Registry(Settings.load(own.home, environ={}), create=False) as reg:
        outputs = registered.load_outputs(reg, kept)
        changed = {k: v.copy() for k, v in outputs.items()}
        changed["probabilities"][[3, 7]] = changed["probabilities"][[3, 7]][:, ::-1]
        tiny = {k: v.copy() for k, v in outputs.items()}
        tiny["probabilities"][5, 0] = np.nextafter(tiny["probabilities"][5, 0], np.float32(2))
        for altered, expect, code in ((changed, "different", 10), (tiny, "within-tolerance", 0)):
            with reg.scratch() as scratch:
                path = Path(scratch) / "o.npz"
                path.write_bytes(registered.outputs_npz(altered))
                sha, size = reg.store.put_file(path)
            from sciserve.evaluation.digest import predictions_sha256
            from sciserve.registry import db

            record = {
                **reg.evaluation(record_id).record,
                "stored_outputs": {"sha256": sha, "size": size, "format": "npz"},
                "predictions_sha256": predictions_sha256(altered),
            }
            with reg._write() as conn:  # forging a record, as an attacker would
                conn.execute(
                    db.sa.text("update evaluations set record = :r where record_id = :i"),
                    {"r": json.dumps(record), "i": record_id},
                )
            verdict = own.json("evaluate", "--reproduce", record_id, code=code)
            assert verdict["verdict"] == expect
            (diff,) = verdict["differences"]
            assert diff["name"] == "probabilities"
            assert diff["rows"] == ([3, 7] if expect == "different" else [5])


def test_report_writes_real_plots_and_a_self_contained_page(cli: Cli, tmp_path: Path) -> None:
    out = cli.json("evaluate", MODEL, DATA, "--report", str(tmp_path / "r"))
    page = Path(out["report"]).read_text()
    assert out["record_id"] in page and "data:image/png;base64," in page
    assert "http://" not in page.replace("http://www.w3.org", "")
    for name in ("roc", "confusion", "reliability"):
        assert (tmp_path / "r" / f"{name}.svg").stat().st_size > 1000
        with Image.open(tmp_path / "r" / f"{name}.png") as image:
            assert image.size == (640, 480)
            lo, hi = image.convert("L").getextrema()
            assert hi - lo > 100  # not blank


def test_compare_shows_deltas_confusion_difference_and_changed_objects(cli: Cli) -> None:
    found = cli.json("compare", MODEL, GBM, DATA, "--n-bootstrap", "200")
    assert found["a"].startswith(MODEL + ":") and found["b"].startswith(GBM + ":")
    deltas = {d["metric"]: d for d in found["deltas"]}
    acc = deltas["accuracy"]
    assert acc["delta"] == pytest.approx(acc["b"] - acc["a"])
    assert acc["low"] <= acc["delta"] <= acc["high"]
    diff = np.array(found["confusion_difference"])
    assert diff.shape == (len(found["classes"]),) * 2
    assert (diff.sum(axis=1) == 0).all()  # same true rows, moved between columns
    assert found["n_changed"] == len(found["changed"]) > 0
    row = found["changed"][0]
    assert row["a"] != row["b"] and row["id"].isdigit()
    text = cli("compare", MODEL, GBM, DATA, "--n-bootstrap", "50")
    assert "changed class" in text and "B - A" in text
    # Same inputs, same seed: the same intervals.
    assert cli.json("compare", MODEL, GBM, DATA, "--n-bootstrap", "200") == found


def test_one_changed_byte_of_the_dataset_is_found_before_anything_runs(own: Cli) -> None:
    before = len(_records(own))
    with Registry(Settings.load(own.home, environ={}), create=False) as reg:
        entry = reg.resolve_dataset(DATA).manifest.file("test.parquet")
    (blob,) = [p for p in (own.home / "artifacts").rglob("*") if p.name.startswith(entry.sha256)]
    data = bytearray(blob.read_bytes())
    data[100] ^= 0x01
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    shutil.rmtree(own.home / "cache", ignore_errors=True)
    assert "sha256" in own("evaluate", MODEL, DATA, code=5)
    assert len(_records(own)) == before


def test_bad_input_is_a_clear_error_and_records_nothing(cli: Cli) -> None:
    before = len(_records(cli))
    assert "no split 'validation'" in cli("evaluate", MODEL, DATA, "--split", "validation", code=3)
    assert "is a dataset, not a model" in cli("evaluate", DATA, DATA, code=3)
    assert "is a model, not a dataset" in cli("evaluate", MODEL, MODEL, code=3)
    assert "does not fit the classification task" in cli("evaluate", "scalar", DATA, code=2)
    assert "no evaluation record" in cli("evaluate", "--reproduce", "feedface", code=3)
    assert "record id alone" in cli("evaluate", MODEL, "--reproduce", "x", code=2)
    assert "name a MODEL and a DATASET" in cli("evaluate", MODEL, code=2)
    assert "--seed takes NAME=INTEGER" in cli("evaluate", MODEL, DATA, "--seed", "x", code=2)
    a_file = cli.home / "registry.db"
    assert "cannot make that directory" in cli(
        "evaluate", MODEL, DATA, "--report", str(a_file), code=2
    )
    assert "takes an http(s) URL" in cli("evaluate", MODEL, DATA, "--server", "ftp://x", code=2)
    assert len(_records(cli)) == before


def test_labels_outside_the_models_classes_are_refused(own: Cli, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sciserve.examples import CLASSES
    from sciserve.examples.features import FEATURE_NAMES

    data = tmp_path / "alien"
    data.mkdir()
    for split in ("train", "test"):
        columns = {n: pa.array(np.ones(4, np.float32)) for n in FEATURE_NAMES}
        columns["label"] = pa.array([CLASSES[0], "alien", CLASSES[1], CLASSES[0]])
        pq.write_table(pa.table(columns), data / f"{split}.parquet")
    own("datasets", "add", str(data), "--version", "1.0.0", "--license", "CC0-1.0")
    before = len(_records(own))
    text = own("evaluate", MODEL, "alien", code=2)
    assert "labels alien" in text and "does not predict" in text
    assert len(_records(own)) == before


def test_evaluate_on_a_server_records_the_same_numbers(cli: Cli, home: Path) -> None:
    from helpers.server import start_server, stop_server

    local = cli.json("evaluate", MODEL, DATA)
    server = start_server(home)
    try:
        url = f"http://{server.http}"
        remote = cli.json("evaluate", MODEL, DATA, "--server", url, "--batch-size", "50")
        assert "no model examples/ghost" in cli(
            "evaluate", "examples/ghost", DATA, "--server", url, code=3
        )
        bad = cli("evaluate", MODEL, DATA, "--server", "http://user:pw@127.0.0.1:1/", code=2)
        assert "SCISERVE_TOKEN" in bad and "pw" not in bad
        assert "cannot reach" in cli(
            "evaluate", MODEL, DATA, "--server", "http://127.0.0.1:9", code=7
        )
    finally:
        stop_server(server.proc)
    record = remote["record"]
    assert record["server"] == url and record["threads"] == {}
    assert record["model_digest"] == local["record"]["model_digest"]
    assert record["rows"] == local["record"]["rows"]
    with Registry(Settings.load(home, environ={}), create=False) as reg:
        a = registered.load_outputs(reg, registered.stored_outputs(local["record"]) or "")
        b = registered.load_outputs(reg, registered.stored_outputs(record) or "")
    np.testing.assert_allclose(b["probabilities"], a["probabilities"], rtol=1e-5, atol=1e-6)
    assert remote["metrics"]["accuracy"] == local["metrics"]["accuracy"]


def test_a_regressor_on_a_regression_dataset_and_a_classifier_that_does_not_fit(
    own: Cli, tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sciserve.examples.features import FEATURE_NAMES

    data = tmp_path / "redshifts"
    data.mkdir()
    rng = np.random.default_rng(7)
    for split, rows in (("train", 40), ("test", 60)):
        x = rng.normal(size=(rows, len(FEATURE_NAMES))).astype(np.float32)
        columns = {n: pa.array(x[:, i]) for i, n in enumerate(FEATURE_NAMES)}
        # The scalar package computes x @ range(21) + 1: labels near it.
        truth = x @ np.arange(x.shape[1], dtype=np.float32) + 1 + rng.normal(0, 0.5, rows)
        columns["z"] = pa.array(truth.astype(np.float64))
        pq.write_table(pa.table(columns), data / f"{split}.parquet")
    own(
        "datasets",
        "add",
        str(data),
        "--version",
        "1.0.0",
        "--license",
        "CC0-1.0",
        "--task",
        "regression",
        "--label",
        "z",
    )
    before = len(_records(own))
    text = own("evaluate", MODEL, "redshifts", code=2)
    assert "does not fit the regression task" in text
    assert len(_records(own)) == before
    out = own.json(
        "evaluate", "scalar", "redshifts", "--batch-size", "16", "--report", str(tmp_path / "r")
    )
    assert out["record"]["task"] == "regression"
    assert 0.2 < out["metrics"]["rmse"] < 1.0  # the label noise, 0.5
    with Image.open(tmp_path / "r" / "residuals.png") as image:
        assert image.size == (640, 480)
    assert own.json("evaluate", "--reproduce", out["record_id"])["verdict"] == "bit-identical"
