"""Promotion gates: a policy refuses an alias to a version without a passing evaluation."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sciserve.errors import InvalidInput, NotFound, PolicyViolation
from sciserve.registry.promotion import Requirement, parse_requirement
from sciserve.registry.registry import Registry

DATA = {"dataset": "lightcurves", "dataset_version": "1.0", "dataset_digest": "sha256:" + "d" * 64}


def _record(registry: Registry, ref: str, split: str = "test", **metrics: float) -> str:
    stored = registry.add_evaluation(
        ref, split=split, metrics=dict(metrics), record={"metrics": metrics}, actor="alice", **DATA
    )
    return stored.record_id


@pytest.fixture
def two_versions(registry: Registry, onnx_package: Callable[..., Path]) -> Registry:
    registry.publish(onnx_package(name="clf", version="1.0.0", scale=1.0))
    registry.publish(onnx_package(name="clf", version="2.0.0", scale=2.0))
    return registry


# -- the grammar ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "lightcurves:weighted_log_loss <= 0.9",
            Requirement("default/lightcurves", None, "weighted_log_loss", "<=", 0.9),
        ),
        (
            "astro/lc:2.1:accuracy>=0.75",
            Requirement("astro/lc", "2.1", "accuracy", ">=", 0.75),
        ),
        ("  d:f1.macro == 1e-3 ", Requirement("default/d", None, "f1.macro", "==", 0.001)),
    ],
)
def test_requirements_are_read_from_the_text_people_write(text: str, expected: Requirement) -> None:
    assert parse_requirement(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "lightcurves",
        "lightcurves:accuracy",
        "lightcurves:accuracy => 0.9",
        "lightcurves:accuracy >= high",
        "lightcurves:accuracy >= nan",
        "lightcurves:accuracy >= inf",
        "lightcurves@production:accuracy >= 0.9",
        "../x:accuracy >= 0.9",
        ":accuracy >= 0.9",
        "lc:accuracy >= 0.9; DROP TABLE evaluations",
        "x" * 600,
    ],
)
def test_a_requirement_that_cannot_be_read_is_refused_with_the_form_to_use(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_requirement(text)


def test_a_nan_metric_never_passes() -> None:
    req = parse_requirement("d:loss <= 1")
    assert req.passes(0.5)
    assert not req.passes(1.5)
    assert not req.passes(math.nan)


# -- the gate ------------------------------------------------------------------


def test_tag_is_refused_with_the_failing_metric_and_allowed_after_a_passing_evaluation(
    two_versions: Registry,
) -> None:
    reg = two_versions
    reg.set_policy("clf", ["lightcurves:weighted_log_loss <= 0.9"], actor="admin")

    with pytest.raises(PolicyViolation, match="no evaluation") as missing:
        reg.tag("clf:2.0.0", "production", actor="bob")
    assert missing.value.failures[0]["record_id"] is None

    failing = _record(reg, "clf:2.0.0", weighted_log_loss=1.25)
    with pytest.raises(PolicyViolation) as refused:
        reg.tag("clf:2.0.0", "production", actor="bob")
    assert "weighted_log_loss <= 0.9" in str(refused.value)
    assert "1.25" in str(refused.value)
    assert refused.value.failures == [
        {
            "requirement": "default/lightcurves:weighted_log_loss <= 0.9",
            "metric": "weighted_log_loss",
            "value": 1.25,
            "threshold": 0.9,
            "record_id": failing,
        }
    ]
    # Refused means unchanged: no alias, no tag event.
    assert "production" not in reg.resolve("clf:2.0.0").aliases
    assert not [e for e in reg.events() if e["action"] == "tag"]

    _record(reg, "clf:2.0.0", weighted_log_loss=0.7)
    assert "production" in reg.tag("clf:2.0.0", "production", actor="bob").aliases
    # Other aliases are not guarded by the production policy.
    assert "staging" in reg.tag("clf:1.0.0", "staging", actor="bob").aliases


def test_the_newest_record_decides_and_records_of_other_versions_do_not_count(
    two_versions: Registry,
) -> None:
    reg = two_versions
    reg.set_policy("clf", ["lightcurves:accuracy >= 0.8"])
    _record(reg, "clf:1.0.0", accuracy=0.95)  # another version's success
    _record(reg, "clf:2.0.0", split="train", accuracy=0.99)  # another split's
    with pytest.raises(PolicyViolation, match="no evaluation"):
        reg.tag("clf:2.0.0", "production")
    _record(reg, "clf:2.0.0", accuracy=0.9)
    _record(reg, "clf:2.0.0", accuracy=0.5)  # a newer, failing record outvotes it
    with pytest.raises(PolicyViolation, match=r"has 0\.5"):
        reg.tag("clf:2.0.0", "production")


def test_every_requirement_must_hold_and_each_failure_is_named(two_versions: Registry) -> None:
    reg = two_versions
    reg.set_policy(
        "clf",
        ["lightcurves:accuracy >= 0.8", "lightcurves:1.0:weighted_log_loss < 0.9", "other:f1 > 0"],
    )
    _record(reg, "clf:2.0.0", accuracy=0.85, weighted_log_loss=0.95)
    with pytest.raises(PolicyViolation) as refused:
        reg.tag("clf:2.0.0", "production")
    failing = [f["requirement"] for f in refused.value.failures]
    assert failing == [
        "default/lightcurves:1.0:weighted_log_loss < 0.9",
        "default/other:f1 > 0",
    ]


def test_a_record_without_the_metric_does_not_pass(two_versions: Registry) -> None:
    reg = two_versions
    reg.set_policy("clf", ["lightcurves:roc_auc >= 0.5"])
    _record(reg, "clf:2.0.0", accuracy=1.0)
    with pytest.raises(PolicyViolation, match="has no metric 'roc_auc'"):
        reg.tag("clf:2.0.0", "production")


def test_a_forced_tag_moves_the_alias_and_the_audit_trail_says_what_failed(
    two_versions: Registry,
) -> None:
    reg = two_versions
    reg.set_policy("clf", ["lightcurves:accuracy >= 0.8"])
    info = reg.tag("clf:2.0.0", "production", actor="root", force=True)
    assert "production" in info.aliases
    (event,) = [e for e in reg.events() if e["action"] == "tag"]
    assert event["actor"] == "root"
    assert event["detail"]["forced"] is True
    assert "accuracy >= 0.8" in event["detail"]["failing"][0]


def test_policies_are_listed_replaced_and_cleared(two_versions: Registry) -> None:
    reg = two_versions
    reg.set_policy("clf", ["lightcurves:accuracy >= 0.8"], actor="a")
    reg.set_policy("clf", ["lightcurves:accuracy >= 0.9"], alias="staging", split="val")
    reg.set_policy("clf", ["lightcurves:accuracy >= 0.85"], actor="b")
    policies = {p.alias: p for p in reg.policies("clf")}
    assert [str(r) for r in policies["production"].requirements] == [
        "default/lightcurves:accuracy >= 0.85"
    ]
    assert policies["production"].updated_by == "b"
    assert policies["staging"].requirements[0].split == "val"

    reg.clear_policy("clf")
    assert [p.alias for p in reg.policies("clf")] == ["staging"]
    reg.tag("clf:2.0.0", "production")  # nothing guards it any more
    with pytest.raises(NotFound):
        reg.clear_policy("clf")
    actions = [e["action"] for e in reg.events()]
    assert actions.count("policy.set") == 3
    assert "policy.clear" in actions


@pytest.mark.parametrize(
    ("model", "requirements", "kwargs", "error"),
    [
        ("missing", ["d:a >= 1"], {}, NotFound),
        ("clf:1.0.0", ["d:a >= 1"], {}, InvalidInput),
        ("clf", [], {}, InvalidInput),
        ("clf", ["d:a >= 1"] * 33, {}, InvalidInput),
        ("clf", ["d:a >= 1"], {"alias": "latest"}, InvalidInput),
        ("clf", ["d:a >= 1"], {"alias": "bad alias!"}, InvalidInput),
        ("clf", ["d:a >= 1"], {"split": "\x00"}, InvalidInput),
    ],
)
def test_a_bad_policy_is_refused_and_nothing_is_stored(
    two_versions: Registry,
    model: str,
    requirements: list[str],
    kwargs: dict[str, Any],
    error: type[Exception],
) -> None:
    with pytest.raises(error):
        two_versions.set_policy(model, requirements, **kwargs)
    assert two_versions.policies("clf") == []


def test_evaluation_records_are_kept_and_listed_newest_first(two_versions: Registry) -> None:
    reg = two_versions
    first = _record(reg, "clf:1.0.0", accuracy=0.5)
    second = _record(reg, "clf@latest", accuracy=0.75, log_loss=math.nan)
    listed = reg.evaluations("clf")
    assert [r.record_id for r in listed] == [second, first]
    assert listed[0].version == "2.0.0"
    assert math.isnan(listed[0].metrics["log_loss"])
    assert [r.record_id for r in reg.evaluations("clf:1.0.0")] == [first]
    assert [r.record_id for r in reg.evaluations(dataset="lightcurves")] == [second, first]
    assert reg.evaluations(dataset="other") == []
    with pytest.raises(NotFound):
        reg.evaluations("missing")
    assert reg.evaluation(first).metrics == {"accuracy": 0.5}
    with pytest.raises(NotFound):
        reg.evaluation("0" * 16)


@pytest.mark.parametrize(
    "metrics",
    [
        {"accuracy": "high"},
        {"accuracy": True},
        {"bad name!": 1.0},
        {f"m{i}": 1.0 for i in range(5000)},
    ],
)
def test_a_malformed_record_is_refused(two_versions: Registry, metrics: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        two_versions.add_evaluation(
            "clf:1.0.0", split="test", metrics=metrics, record={}, **DATA
        )
    assert two_versions.evaluations("clf") == []


def test_a_record_names_an_existing_version(two_versions: Registry) -> None:
    with pytest.raises(NotFound):
        two_versions.add_evaluation(
            "clf:9.9.9", split="test", metrics={"a": 1.0}, record={}, **DATA
        )
