"""Leaderboards rank by each metric's own direction; requirements parse and gate."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from sciserve.errors import MetricInputError
from sciserve.evaluation import classification_metrics, regression_metrics
from sciserve.evaluation.gate import parse_requirement
from sciserve.evaluation.leaderboard import leaderboard, to_csv
from sciserve.evaluation.runner import RECORD_SCHEMA, EvaluationRecord, Performance, Task

Y = np.array([0, 1, 2, 0, 1, 2])


def _probs(correct: float) -> np.ndarray:
    """Probability ``correct`` on the true class, the rest shared."""
    p = np.full((Y.size, 3), (1 - correct) / 2)
    p[np.arange(Y.size), Y] = correct
    return p


def _record(
    model: str,
    correct: float,
    *,
    when: str = "2026-01-01T00:00:00+00:00",
    dataset: str = "sha256:d",
    digest: str | None = None,
) -> EvaluationRecord:
    return EvaluationRecord(
        schema=RECORD_SCHEMA,
        task=Task.CLASSIFICATION,
        model=model,
        model_digest=digest or f"sha256:{model}",
        dataset="lc",
        dataset_digest=dataset,
        split="test",
        output="probabilities",
        rows=Y.size,
        batch_size=2,
        threads={},
        seeds={},
        code_version="0",
        libraries={},
        hardware={},
        predictions_sha256="0" * 64,
        metrics=classification_metrics(Y, _probs(correct)),
        performance=Performance(1.0, 6.0, 3, 1.0, 1.0, 1.0),
        created_at=when,
    )


def test_losses_rank_low_first_and_scores_high_first() -> None:
    records = [_record("m:1", 0.5), _record("m:2", 0.9), _record("m:3", 0.7)]
    by_loss = leaderboard(records, "weighted_log_loss")
    assert [r.model for r in by_loss] == ["m:2", "m:3", "m:1"]
    assert [r.rank for r in by_loss] == [1, 2, 3]
    assert by_loss[0].value == pytest.approx(-np.log(0.9))
    by_ece = leaderboard(records, "expected_calibration_error")
    assert by_ece[-1].value >= by_ece[0].value
    # All accurate (accuracy 1): a three-way tie, listed by name.
    by_acc = leaderboard(records, "accuracy")
    assert [r.rank for r in by_acc] == [1, 1, 1]
    assert [r.model for r in by_acc] == ["m:1", "m:2", "m:3"]


def test_ties_share_a_rank_and_the_latest_record_counts() -> None:
    records = [
        _record("a:1", 0.8),
        _record("b:1", 0.8),
        _record("c:1", 0.6),
        _record("c:1", 0.95, when="2026-02-01T00:00:00+00:00"),
        _record("d:1", 0.5),
    ]
    rows = leaderboard(records, "log_loss")
    assert [(r.rank, r.model) for r in rows] == [(1, "c:1"), (2, "a:1"), (2, "b:1"), (4, "d:1")]


def test_bias_ranks_by_distance_from_zero() -> None:
    true = np.linspace(1, 2, 20)
    base = _record("x", 0.9)
    recs = []
    for name, shift in [("over", 0.2), ("under", -0.1), ("exact", 0.0)]:
        recs.append(
            EvaluationRecord(
                **{
                    **base.__dict__,
                    "model": name,
                    "model_digest": name,
                    "task": Task.REGRESSION,
                    "metrics": regression_metrics(true, true + shift),
                }
            )
        )
    assert [r.model for r in leaderboard(recs, "bias")] == ["exact", "under", "over"]
    with pytest.raises(MetricInputError, match="not a regression metric"):
        leaderboard(recs, "accuracy")


def test_bad_leaderboards_are_refused() -> None:
    with pytest.raises(MetricInputError, match="unknown metric"):
        leaderboard([_record("a", 0.9)], "speed")
    with pytest.raises(MetricInputError, match="different dataset"):
        leaderboard([_record("a", 0.9), _record("b", 0.9, dataset="sha256:other")], "accuracy")
    assert leaderboard([], "accuracy") == []


def test_csv_export_escapes_formulas() -> None:
    rows = leaderboard([_record('=HYPERLINK("x")', 0.9), _record("m:2", 0.7)], "log_loss")
    text = to_csv(rows, "log_loss")
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0] == ["rank", "model", "model_digest", "log_loss", "rows", "created_at"]
    assert parsed[1][1] == '\'=HYPERLINK("x")'
    assert parsed[1][2] == 'sha256:=HYPERLINK("x")'
    assert float(parsed[1][3]) == pytest.approx(rows[0].value)
    assert parsed[2][1] == "m:2"


@pytest.mark.parametrize(
    ("text", "dataset", "metric", "op", "threshold"),
    [
        (
            "examples/lightcurves:1.0.0:weighted_log_loss <= 0.9",
            "examples/lightcurves:1.0.0",
            "weighted_log_loss",
            "<=",
            0.9,
        ),
        ("lc@production:accuracy>=.75", "lc@production", "accuracy", ">=", 0.75),
        ("  pz:bias > -1e-2 ", "pz", "bias", ">", -0.01),
    ],
)
def test_requirements_parse(text, dataset, metric, op, threshold) -> None:
    req = parse_requirement(text)
    assert (req.dataset, req.metric, req.op, req.threshold) == (dataset, metric, op, threshold)
    assert parse_requirement(str(req)) == req


def test_requirements_gate_with_the_failing_number() -> None:
    req = parse_requirement("lc:weighted_log_loss <= 0.3")
    good = req.check(_record("a", 0.9).metrics.scalars())
    bad = req.check(_record("b", 0.6).metrics.scalars())
    assert good.passed and not bad.passed
    assert bad.actual == pytest.approx(-np.log(0.6))
    assert "fails: weighted_log_loss is 0.5108" in str(bad)
    # An undefined metric never passes.
    undefined = parse_requirement("lc:roc_auc_macro >= 0.5").check({"roc_auc_macro": None})
    assert not undefined.passed and "undefined" in str(undefined)
    with pytest.raises(MetricInputError, match="not among"):
        parse_requirement("lc:mae <= 1").check(_record("a", 0.9).metrics.scalars())


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("weighted_log_loss <= 0.9", "cannot read"),
        ("lc:weighted_log_loss = 0.9", "cannot read"),
        ("lc:weighted_log_loss <= nan", "cannot read"),
        ("lc:weighted_log_loss <= 1e999", "finite"),
        ("lc:speed >= 1", "unknown metric"),
        ("lc:accuracy >= 1; drop table", "cannot read"),
        ("x" * 600 + ":accuracy >= 1", "at most 512"),
    ],
)
def test_bad_requirements_are_refused(text, match) -> None:
    with pytest.raises(MetricInputError, match=match):
        parse_requirement(text)
