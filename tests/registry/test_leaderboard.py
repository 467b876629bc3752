"""Leaderboards rank model versions by their newest evaluation record on a dataset."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from sciserve.cli import main
from sciserve.errors import InvalidInput
from sciserve.registry.leaderboard import Board, Direction, direction_of
from sciserve.registry.registry import Registry

DIGEST = "sha256:" + "e" * 64


def _record(reg: Registry, ref: str, dataset: str = "lc", split: str = "test", **m: float) -> str:
    return reg.add_evaluation(
        ref,
        dataset=dataset,
        dataset_version="1.0",
        dataset_digest=DIGEST,
        split=split,
        metrics=m,
        record={},
    ).record_id


@pytest.fixture
def models(registry: Registry, onnx_package: Callable[..., Path]) -> Registry:
    for name, version in (("a", "1.0.0"), ("a", "2.0.0"), ("b", "1.0.0"), ("c", "1.0.0")):
        registry.publish(onnx_package(name=name, version=version, scale=float(len(version))))
    return registry


def test_versions_are_ranked_by_their_newest_record_in_the_metric_s_direction(
    models: Registry,
) -> None:
    reg = models
    _record(reg, "a:1.0.0", accuracy=0.70, weighted_log_loss=1.1)
    _record(reg, "a:2.0.0", accuracy=0.99, weighted_log_loss=0.2)
    newest = _record(reg, "a:2.0.0", accuracy=0.80, weighted_log_loss=0.9)  # decides for a:2
    _record(reg, "b:1.0.0", accuracy=0.80, weighted_log_loss=0.5)
    _record(reg, "c:1.0.0", accuracy=math.nan)  # cannot be ranked
    _record(reg, "c:1.0.0", split="train", accuracy=1.0)  # another split
    _record(reg, "c:1.0.0", dataset="other", accuracy=1.0)  # another dataset

    board = reg.leaderboard("lc", "accuracy")
    assert board.direction is Direction.HIGHER
    assert [(e.rank, e.model, e.value) for e in board.entries] == [
        (1, "default/a:2.0.0", 0.80),  # a tie shares the rank, in reference order
        (1, "default/b:1.0.0", 0.80),
        (3, "default/a:1.0.0", 0.70),
    ]
    assert board.entries[0].record_id == newest
    assert board.unranked == ("default/c:1.0.0",)

    losses = reg.leaderboard("lc", "weighted_log_loss")
    assert losses.direction is Direction.LOWER
    assert [e.model for e in losses.entries] == [
        "default/b:1.0.0",
        "default/a:2.0.0",
        "default/a:1.0.0",
    ]
    flipped = reg.leaderboard("lc", "weighted_log_loss", direction=Direction.HIGHER)
    assert [e.model for e in flipped.entries] == [e.model for e in losses.entries][::-1]
    # The train split holds only c.
    assert [e.model for e in reg.leaderboard("lc", "accuracy", split="train").entries] == [
        "default/c:1.0.0"
    ]


def test_a_leaderboard_leaves_out_what_the_caller_may_not_see(models: Registry) -> None:
    _record(models, "a:1.0.0", accuracy=0.5)
    assert models.leaderboard("lc", "accuracy", visible=lambda ns: ns != "default").entries == ()
    assert models.leaderboard("nothing", "accuracy").entries == ()


def test_the_direction_follows_the_metric_name() -> None:
    assert direction_of("log_loss") is Direction.LOWER
    assert direction_of("per_class.SNIa.f1") is Direction.HIGHER
    assert direction_of("balanced_accuracy") is Direction.HIGHER
    assert direction_of("bias") is Direction.ZERO
    assert direction_of("novel_score") is None


def test_a_bias_ranks_nearest_zero_first(models: Registry) -> None:
    _record(models, "a:1.0.0", bias=-0.1)
    _record(models, "b:1.0.0", bias=0.3)
    _record(models, "c:1.0.0", bias=0.05)
    board = models.leaderboard("lc", "bias")
    assert [(e.model, e.value) for e in board.entries] == [
        ("default/c:1.0.0", 0.05),
        ("default/a:1.0.0", -0.1),
        ("default/b:1.0.0", 0.3),
    ]
    # A metric of unknown direction needs one said.
    with pytest.raises(InvalidInput, match="which way is better"):
        models.leaderboard("lc", "novel_score")
    _record(models, "a:1.0.0", novel_score=2.0)
    ranked = models.leaderboard("lc", "novel_score", direction=Direction.LOWER)
    assert [e.model for e in ranked.entries] == ["default/a:1.0.0"]


def test_csv_cells_that_a_spreadsheet_would_run_are_defused() -> None:
    board = Board.from_dict(
        {
            "dataset": "default/lc",
            "split": "test",
            "metric": "accuracy",
            "direction": "higher",
            "entries": [
                {
                    "rank": 1,
                    "model": "=HYPERLINK(1)",
                    "model_digest": "@x",
                    "value": 0.5,
                    "record_id": "+1",
                    "dataset_version": "-2",
                }
            ],
            "unranked": [],
        }
    )
    (row,) = list(csv.DictReader(io.StringIO(board.to_csv())))
    assert row["model"] == "'=HYPERLINK(1)"
    assert (row["record_id"], row["dataset_version"], row["digest"]) == ("'+1", "'-2", "'@x")
    assert row["accuracy"] == "0.5"


@pytest.mark.parametrize(("dataset", "metric"), [("lc:1.0", "accuracy"), ("lc", ""), ("lc@x", "a")])
def test_a_bad_leaderboard_request_is_refused(
    models: Registry, dataset: str, metric: str
) -> None:
    with pytest.raises(InvalidInput):
        models.leaderboard(dataset, metric)


def test_the_cli_prints_and_exports_a_leaderboard(
    sqlite_registry: Registry,
    onnx_package: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reg = sqlite_registry
    reg.publish(onnx_package(name="a", version="1.0.0"))
    reg.publish(onnx_package(name="b", version="1.0.0", scale=2.0))
    _record(reg, "a:1.0.0", weighted_log_loss=0.7)
    _record(reg, "b:1.0.0", weighted_log_loss=0.3)
    home = str(tmp_path / "home")

    assert main(["--home", home, "leaderboard", "lc", "--metric", "weighted_log_loss"]) == 0
    table = capsys.readouterr().out
    assert table.index("default/b:1.0.0") < table.index("default/a:1.0.0")

    out = tmp_path / "board.csv"
    args = ["--home", home, "leaderboard", "lc", "--metric", "weighted_log_loss"]
    assert main([*args, "--format", "csv", "--output", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [(r["rank"], r["model"], float(r["weighted_log_loss"])) for r in rows] == [
        ("1", "default/b:1.0.0", 0.3),
        ("2", "default/a:1.0.0", 0.7),
    ]
    capsys.readouterr()
    assert main([*args, "--format", "json"]) == 0
    board = Board.from_dict(json.loads(capsys.readouterr().out))
    assert [e.model for e in board.entries] == ["default/b:1.0.0", "default/a:1.0.0"]
    assert board == reg.leaderboard("lc", "weighted_log_loss")

    assert main(["--home", home, "leaderboard", "lc:1.0", "--metric", "x"]) == 2
