"""A re-run's outputs: bit-identical, within tolerance, or different, and where."""

from __future__ import annotations

import numpy as np
import pytest

from sciserve.errors import MetricInputError
from sciserve.evaluation.reproduce import Verdict, compare_outputs
from sciserve.evaluation.result import to_json


@pytest.fixture
def outputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "probabilities": rng.dirichlet([1, 1, 1], 50).astype(np.float32),
        "label": rng.integers(0, 3, 50),
    }


def test_the_same_outputs_are_bit_identical(outputs) -> None:
    copy = {k: v.copy() for k, v in outputs.items()}
    found = compare_outputs(outputs, copy)
    assert found.verdict is Verdict.BIT_IDENTICAL
    assert found.differences == ()
    assert found.expected_sha256 == found.actual_sha256


def test_last_bit_changes_are_within_tolerance_and_located(outputs) -> None:
    moved = {k: v.copy() for k, v in outputs.items()}
    p = moved["probabilities"]
    p[7, 1] = np.nextafter(p[7, 1], np.float32(2))
    p[31, 0] = np.nextafter(p[31, 0], np.float32(-1))
    found = compare_outputs(outputs, moved)
    assert found.verdict is Verdict.WITHIN_TOLERANCE
    (diff,) = found.differences
    assert (diff.name, diff.differing, diff.rows) == ("probabilities", 2, (7, 31))
    assert 0 < diff.max_abs_difference < 1e-6
    assert diff.reason == "within the tolerance"
    # With no tolerance the same change is a difference.
    strict = compare_outputs(outputs, moved, rtol=0, atol=0)
    assert strict.verdict is Verdict.DIFFERENT
    assert strict.differences[0].reason == "outside the tolerance"
    assert '"verdict":"within-tolerance"' in to_json(found)


def test_real_differences(outputs) -> None:
    changed = {k: v.copy() for k, v in outputs.items()}
    changed["label"][3] += 1
    changed["probabilities"][5] = [1.0, 0.0, 0.0]
    found = compare_outputs(outputs, changed)
    assert found.verdict is Verdict.DIFFERENT
    by_name = {d.name: d for d in found.differences}
    assert by_name["label"].rows == (3,) and by_name["label"].differing == 1
    assert by_name["probabilities"].rows == (5,)
    assert by_name["probabilities"].max_abs_difference > 0.01


def test_missing_outputs_shapes_dtypes_and_nan(outputs) -> None:
    found = compare_outputs(outputs, {"probabilities": outputs["probabilities"]})
    assert found.verdict is Verdict.DIFFERENT
    assert found.differences[0].reason == "missing from the re-run"
    cast = {**outputs, "probabilities": outputs["probabilities"].astype(np.float64)}
    reason = compare_outputs(outputs, cast).differences[0].reason
    assert reason == "float32[50, 3] became float64[50, 3]"
    nan = {k: v.copy() for k, v in outputs.items()}
    nan["probabilities"][0, 0] = np.nan
    assert compare_outputs(outputs, nan).verdict is Verdict.DIFFERENT
    # NaN where NaN was is reproduced.
    assert compare_outputs(nan, {k: v.copy() for k, v in nan.items()}).verdict is (
        Verdict.BIT_IDENTICAL
    )
    with pytest.raises(MetricInputError, match="tolerances"):
        compare_outputs(outputs, outputs, rtol=-1)
