"""The filter language: what it evaluates, and everything hostile it refuses."""

from __future__ import annotations

import ast
import contextlib
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sciserve.errors import InvalidInput
from sciserve.streams.expr import (
    FUNCTIONS,
    MAX_DEPTH,
    MAX_LENGTH,
    EvaluationError,
    parse_expression,
)

ALERT = {
    "diaSource": {"band": "g", "psfFlux": 1200.5, "diaSourceId": 17, "nothing": None},
    "prvDiaSources": [{"band": "r", "psfFlux": 10.0}, {"band": "i", "psfFlux": 30.0}],
    "keys": "a field, not the dict method",
}
CONTEXT: dict[str, Any] = {
    "probabilities": [0.05, 0.1, 0.05, 0.1, 0.7],
    "alert": ALERT,
    "label": "kilonova",
    "score": 0.7,
    "i": 4,
}


def value(text: str, context: dict[str, Any] | None = None) -> Any:
    return parse_expression(text).evaluate(CONTEXT if context is None else context)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("probabilities[4] > 0.5 and alert.diaSource.band in ['g', 'r']", True),
        ("probabilities[4] > 0.5 and alert.diaSource.band in ('r', 'i')", False),
        ("probabilities[-1]", 0.7),
        ("probabilities[i]", 0.7),
        ("alert['diaSource']['band']", "g"),
        ("alert.prvDiaSources[1].band", "i"),
        ("alert.keys", "a field, not the dict method"),
        ("alert.diaSource.nothing == None", True),
        ("label == 'kilonova' and score >= 0.7", True),
        ("label != 'kilonova' or score < 0.5", False),
        ("not label", False),
        ("0 < score < 1", True),
        ("0 < score < 0.5", False),
        ("alert.diaSource.band not in ['u', 'y']", True),
        ("'kilo' in label", True),
        ("1 + 2 * 3 - 4 / 2", 5.0),
        ("7 % 4", 3),
        ("-alert.diaSource.psfFlux", -1200.5),
        ("abs(-3)", 3),
        ("max(probabilities)", 0.7),
        ("min(1, 2, 0.5)", 0.5),
        ("len(alert.prvDiaSources)", 2),
        ("argmax(probabilities)", 4),
        ("argmax(probabilities) == 4 and max(probabilities) > 0.5", True),
        ("[1, 2][0] + (3, 4)[1]", 5),
        ("score or 'fallback'", 0.7),
        ("0 and 1", 0),
    ],
)
def test_evaluation(text: str, expected: Any) -> None:
    assert value(text) == expected


def test_numpy_values_behave_like_python_values() -> None:
    context = {"p": np.array([0.1, 0.9], dtype=np.float32), "n": np.int64(3)}
    assert value("argmax(p)", context) == 1
    assert value("max(p) > 0.5", context) is True
    assert value("n % 2", context) == 1
    # Division by a numpy zero is a refused alert, not a numpy warning.
    with pytest.raises(EvaluationError):
        value("1 / (n - n)", context)


def test_and_or_short_circuit() -> None:
    # The right-hand sides would fail: they must not be evaluated.
    assert value("False and alert.missing") is False
    assert value("True or alert.missing") is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alert.diaSource.flux > 1", "no field 'flux'"),
        ("missing > 1", "name 'missing' is not defined"),
        ("label > 1", "cannot compare str > int"),
        ("score / 0", "division by zero"),
        ("label + 'x'", "expected a number"),
        ("probabilities[9]", "no element 9"),
        ("probabilities['x']", "list indices must be integers"),
        ("label.size", "not a record"),
        ("max(alert.prvDiaSources)", "max()"),
        ("argmax([])", "empty"),
        ("1 in label", "needs a string"),
        ("'x' * 100000000000", "expected a number"),
    ],
)
def test_evaluation_errors_are_per_alert(text: str, message: str) -> None:
    expression = parse_expression(text)
    with pytest.raises(EvaluationError, match=message) as info:
        expression.evaluate(CONTEXT)
    # Still a domain error, never a bare TypeError / KeyError.
    assert isinstance(info.value, InvalidInput)


def test_names_and_alert_paths_are_reported() -> None:
    expression = parse_expression(
        "probabilities[4] > 0.5 and alert.diaSource.band in ['g'] and alert['diaObject']['ra'] > 0"
        " and alert.diaSource.psfFlux > 0"
    )
    assert expression.names == {"probabilities", "alert"}
    assert expression.alert_paths == {
        ("diaSource", "band"),
        ("diaSource", "psfFlux"),
        ("diaObject", "ra"),
    }


HOSTILE = [
    "__import__('os')",
    "__import__('os').system('true')",
    "().__class__",
    "().__class__.__bases__[0].__subclasses__()",
    "alert.__class__",
    "alert['__class__']",
    "_secret",
    "lambda: 1",
    "(lambda x: x)(1)",
    "[x for x in alert]",
    "{x for x in alert}",
    "{k: 1 for k in alert}",
    "(x for x in alert)",
    "(y := 1)",
    "f'{abs(1)}'",
    "f'{alert}'",
    "9**9**9",
    "2 ** 10",
    "10 // 3",
    "1 << 100",
    "~1",
    "+1",
    "1 if score else 0",
    "{'a': 1}",
    "{1, 2}",
    "probabilities[1:3]",
    "probabilities[score + 1]",
    "open('/etc/passwd')",
    "eval('1')",
    "getattr(alert, 'x')",
    "alert.get('x')",
    "max(probabilities, key=abs)",
    "max(*probabilities)",
    "b'bytes'",
    "1j",
    "...",
    "score is None",
    "await score",
    "1; 2",
    "import os",
    "x = 1",
    "",
    "   ",
    "(" * 300 + "1" + ")" * 300,
    "not " * 200 + "score",
    "-" * 3000 + "1",
    "[" * 40 + "]" * 40,
    "a" * (MAX_LENGTH + 1),
    " + ".join(["1"] * 600),
    "score\x00",
]


@pytest.mark.parametrize("text", HOSTILE, ids=lambda t: repr(t)[:40])
def test_hostile_expressions_are_refused_at_parse_time(text: str) -> None:
    started = time.perf_counter()
    with pytest.raises(InvalidInput):
        parse_expression(text)
    assert time.perf_counter() - started < 1.0


def test_refusals_name_the_position() -> None:
    with pytest.raises(InvalidInput, match=r"\*\* is not allowed at line 1, column 18"):
        parse_expression("score > 0.5 and (2 ** 8) > 1")
    with pytest.raises(
        InvalidInput, match="filter: comprehensions are not allowed at line 2, column 5"
    ):
        parse_expression("(score > 0.5 and\n    [x for x in alert])", what="filter")


def test_nesting_is_bounded() -> None:
    shallow = "-" * (MAX_DEPTH - 1) + "1"
    assert parse_expression(shallow).evaluate(CONTEXT) == -1
    deep = "-" * (MAX_DEPTH + 5) + "1"
    with pytest.raises(InvalidInput, match="nesting deeper"):
        parse_expression(deep)


_TOKENS = [
    "alert", "probabilities", "label", "score", ".", "__class__", "__dict__", "_x", "band",
    "diaSource", "(", ")", "[", "]", ",", "0", "1", "-1", "0.5", "'g'", "and", "or", "not",
    "in", "not in", "is", "==", "<", "+", "*", "/", "%", "**", "//", "abs", "max", "len",
    "argmax", "__import__", "lambda", ":", "for", "if", "else", "{", "}", "f'{x}'", ":=", "*",
]  # fmt: skip


def _check_hostile_or_safe(text: str) -> None:
    try:
        expression = parse_expression(text)
    except InvalidInput:
        return
    # Whatever was accepted names nothing private...
    tree = ast.parse(text.strip(), mode="eval")
    for node in ast.walk(tree):
        assert not (isinstance(node, ast.Attribute) and node.attr.startswith("_"))
        assert not (isinstance(node, ast.Name) and node.id.startswith("_"))
        assert not isinstance(node, ast.Call) or (
            isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
        )
    # ...and evaluating it fails, if at all, only as a refused alert.
    with contextlib.suppress(EvaluationError):
        expression.evaluate(CONTEXT)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=12).map(" ".join))
def test_fuzz_token_soup(text: str) -> None:
    _check_hostile_or_safe(text)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=80))
def test_fuzz_random_text(text: str) -> None:
    _check_hostile_or_safe(text)
