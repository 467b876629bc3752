"""A small, safe expression language for pipeline filters.

::

    probabilities[4] > 0.5 and alert.diaSource.band in ['g', 'r']

The text is parsed with :func:`ast.parse` in ``eval`` mode and the syntax
tree is then translated *by this module* into a tree of closures; nothing is
ever handed to ``eval``, ``exec`` or ``compile``.  Only this syntax is
accepted, anything else is refused with :class:`~sciserve.errors.InvalidInput`
and its position when the pipeline spec is loaded:

* literals: numbers, strings, ``True``, ``False``, ``None``, lists, tuples;
* names, bound per alert: each model output by its name, ``alert`` (the
  decoded alert), ``label`` and ``score`` (the top class and its value);
* ``a.b`` reads the key ``"b"`` of the mapping ``a`` (for nested alert
  fields such as ``alert.diaSource.band``); Python attributes are never read
  and no name or field may start with ``_``;
* ``a[i]`` with ``i`` a constant, a negated constant or a name;
* ``and``, ``or``, ``not``, unary ``-``;
* comparisons ``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``, ``in``,
  ``not in``, chained as in Python;
* ``+``, ``-``, ``*``, ``/``, ``%`` on numbers only (so no expression can
  build a huge string or list), and no ``**``;
* calls of :data:`FUNCTIONS` only: ``abs``, ``min``, ``max``, ``len`` and
  ``argmax`` (the index of the largest element).

The size of an expression is bounded (:data:`MAX_LENGTH` characters,
:data:`MAX_NODES` syntax nodes, :data:`MAX_DEPTH` levels of nesting), so
neither parsing nor evaluating one can exhaust the stack or the memory.

Evaluating an expression on one alert raises :class:`EvaluationError` when
the alert does not fit it (a missing field, a comparison of a string with a
number, a division by zero, …); the pipeline then keeps the annotation but
does not publish it.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np

from ..errors import InvalidInput

__all__ = [
    "FUNCTIONS",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "MAX_NODES",
    "EvaluationError",
    "Expression",
    "parse_expression",
]

#: Longest expression accepted (characters).
MAX_LENGTH = 4096
#: Most syntax nodes in one expression.
MAX_NODES = 512
#: Deepest nesting of sub-expressions.
MAX_DEPTH = 32

#: The functions an expression may call.
FUNCTIONS = frozenset({"abs", "min", "max", "len", "argmax"})

Context = Mapping[str, Any]
_Evaluator = Callable[[Context], Any]


class EvaluationError(InvalidInput):
    """An expression cannot be evaluated on one particular input."""


@dataclass(frozen=True)
class Expression:
    """A parsed, checked expression, ready to be evaluated many times."""

    text: str
    #: The free names the expression reads from its context.
    names: frozenset[str]
    #: Field paths read below ``alert`` (``("diaSource", "band")``); a path
    #: that is a prefix of another is left out.
    alert_paths: frozenset[tuple[str, ...]]
    _evaluate: _Evaluator = field(repr=False, compare=False)
    #: The paths below ``alert`` when the expression reads the alert only
    #: as values at the end of such paths (``alert.diaSource.band``), never a
    #: record or the alert itself whole; ``None`` otherwise.  With these, the
    #: alert a filter sees can be built from those values alone.
    alert_leaves: frozenset[tuple[str, ...]] | None = field(default=None, compare=False)

    def evaluate(self, context: Context) -> Any:
        """The value of the expression with its names bound by ``context``."""
        return self._evaluate(context)

    def matches(self, context: Context) -> bool:
        """Whether the expression is true for ``context`` (Python truthiness)."""
        return _truth(self._evaluate(context))


def parse_expression(text: str, *, what: str = "expression") -> Expression:
    """Parse and check ``text``; raise :class:`InvalidInput` naming the problem.

    ``what`` names the expression in messages (``"filter"``).
    """
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be a string")
    if len(text) > MAX_LENGTH:
        raise InvalidInput(f"{what} is {len(text)} characters long; the limit is {MAX_LENGTH}")
    if not text.strip():
        raise InvalidInput(f"{what} is empty")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        where = f" at line {exc.lineno}, column {exc.offset}" if exc.lineno else ""
        raise InvalidInput(f"{what}: invalid syntax{where}: {exc.msg}") from exc
    except ValueError as exc:  # e.g. NUL characters
        raise InvalidInput(f"{what} cannot be parsed: {exc}") from exc
    except (RecursionError, MemoryError) as exc:
        # Nesting so deep that the parser itself gives up.
        raise InvalidInput(f"{what} is nested too deeply") from exc
    count = sum(1 for _ in ast.walk(tree))
    if count > MAX_NODES:
        raise InvalidInput(f"{what} has {count} syntax nodes; the limit is {MAX_NODES}")
    compiler = _Compiler(text.strip(), what)
    evaluate = compiler.compile(tree.body, 0)
    return Expression(
        text=text,
        names=frozenset(compiler.names),
        alert_paths=_maximal(compiler.alert_paths),
        _evaluate=evaluate,
        alert_leaves=_alert_leaves(tree),
    )


def _alert_leaves(tree: ast.AST) -> frozenset[tuple[str, ...]] | None:
    """Every path read below ``alert``, if each use of ``alert`` is such a
    path and none of them is the start of another (a record read whole)."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def step(node: ast.AST) -> str | None:
        """The key ``node`` reads from its value, if it is ``x.key`` or ``x["key"]``."""
        if isinstance(node, ast.Attribute):
            return node.attr
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            return node.slice.value
        return None

    paths: set[tuple[str, ...]] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Name) and node.id == "alert"):
            continue
        path: list[str] = []
        current: ast.AST = node
        while (parent := parents.get(current)) is not None:
            key = step(parent)
            if key is None or getattr(parent, "value", None) is not current:
                break
            path.append(key)
            current = parent
        if not path:
            return None  # the alert itself, whole
        paths.add(tuple(path))
    if any(len(q) > len(p) and q[: len(p)] == p for p in paths for q in paths):
        return None  # a record read whole as well as a value inside it
    return frozenset(paths)


# -- values ------------------------------------------------------------------


def _truth(value: Any) -> bool:
    try:
        return bool(value)
    except (TypeError, ValueError) as exc:  # e.g. a numpy array of several elements
        raise EvaluationError(f"{_kind(value)} has no truth value") from exc


def _kind(value: Any) -> str:
    return type(value).__name__


def _number(value: Any, where: str) -> int | float:
    """``value`` as a Python number; numpy scalars are converted so that
    arithmetic raises Python's exceptions rather than emitting warnings."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | int | float):
        return value
    raise EvaluationError(f"{where}: expected a number, got {_kind(value)}")


def _sequence(value: Any, where: str) -> Sequence[Any]:
    if isinstance(value, list | tuple):
        return value
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return list(value.tolist())
    raise EvaluationError(f"{where}: expected a list, got {_kind(value)}")


def _argmax(values: Any) -> int:
    items = _sequence(values, "argmax()")
    if not items:
        raise EvaluationError("argmax() of an empty list")
    best = 0
    for index in range(1, len(items)):
        if items[index] > items[best]:
            best = index
    return best


def _min_max(choose: Callable[..., Any], name: str) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        items = _sequence(args[0], f"{name}()") if len(args) == 1 else args
        if not items:
            raise EvaluationError(f"{name}() of an empty list")
        return choose(items)

    return call


def _length(value: Any) -> int:
    if isinstance(value, str | list | tuple | Mapping):
        return len(value)
    return len(_sequence(value, "len()"))


def _absolute(value: Any) -> int | float:
    return abs(_number(value, "abs()"))


_CALLABLES: Mapping[str, Callable[..., Any]] = {
    "abs": _absolute,
    "min": _min_max(min, "min"),
    "max": _min_max(max, "max"),
    "len": _length,
    "argmax": _argmax,
}
_ARITY: Mapping[str, tuple[int, int]] = {
    "abs": (1, 1),
    "min": (1, 64),
    "max": (1, 64),
    "len": (1, 1),
    "argmax": (1, 1),
}

_BINARY: Mapping[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
}

_COMPARE: Mapping[type[ast.cmpop], tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Eq: ("==", operator.eq),
    ast.NotEq: ("!=", operator.ne),
    ast.Lt: ("<", operator.lt),
    ast.LtE: ("<=", operator.le),
    ast.Gt: (">", operator.gt),
    ast.GtE: (">=", operator.ge),
    ast.In: ("in", lambda a, b: _contains(b, a)),
    ast.NotIn: ("not in", lambda a, b: not _contains(b, a)),
}

# Spelled out so that a refused construct gets a message a scientist
# recognises, not the name of a syntax-tree class.
_REFUSED: Mapping[type[ast.AST], str] = {
    ast.Lambda: "lambdas",
    ast.IfExp: "conditional expressions",
    ast.Dict: "dict literals",
    ast.Set: "set literals",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "generator expressions",
    ast.NamedExpr: "assignment expressions (:=)",
    ast.JoinedStr: "f-strings",
    ast.FormattedValue: "f-strings",
    ast.Await: "await expressions",
    ast.Yield: "yield expressions",
    ast.YieldFrom: "yield expressions",
    ast.Starred: "* unpacking",
    ast.Slice: "slices",
}


def _contains(container: Any, item: Any) -> bool:
    if isinstance(container, str):
        if not isinstance(item, str):
            raise EvaluationError(f"'in <string>' needs a string on the left, not {_kind(item)}")
        return item in container
    if isinstance(container, list | tuple | Mapping):
        return item in container
    return item in _sequence(container, "in")


def _maximal(paths: set[tuple[str, ...]]) -> frozenset[tuple[str, ...]]:
    return frozenset(
        p for p in paths if not any(len(q) > len(p) and q[: len(p)] == p for q in paths)
    )


# -- compilation -------------------------------------------------------------


class _Compiler:
    """Translates a checked syntax tree into closures, refusing everything
    outside the whitelist."""

    def __init__(self, text: str, what: str) -> None:
        self.text = text
        self.what = what
        self.names: set[str] = set()
        self.alert_paths: set[tuple[str, ...]] = set()

    def refuse(self, node: ast.AST, message: str) -> NoReturn:
        raise InvalidInput(f"{self.what}: {message} {self.position(node)}")

    def position(self, node: ast.AST) -> str:
        line = getattr(node, "lineno", None)
        offset = getattr(node, "col_offset", None)
        if line is None or offset is None:
            return ""
        # col_offset counts UTF-8 bytes; report characters.
        source = self.text.splitlines()[line - 1] if self.text.splitlines() else ""
        column = len(source.encode()[:offset].decode(errors="ignore")) + 1
        return f"at line {line}, column {column}"

    def compile(self, node: ast.AST, depth: int) -> _Evaluator:
        if depth > MAX_DEPTH:
            self.refuse(node, f"nesting deeper than {MAX_DEPTH} levels")
        handler = self._HANDLERS.get(type(node))
        if handler is None:
            refused = _REFUSED.get(type(node))
            if refused is None:
                refused = f"{type(node).__name__} expressions"
            self.refuse(node, f"{refused} are not allowed")
        return handler(self, node, depth + 1)

    # Each handler receives the node of its type; the annotations say ast.AST
    # because the handlers are looked up by the node's type at run time.

    def _constant(self, node: ast.AST, depth: int) -> _Evaluator:
        assert isinstance(node, ast.Constant)
        value = node.value
        if value is not None and not isinstance(value, bool | int | float | str):
            self.refuse(node, f"{_kind(value)} constants are not allowed")
        if isinstance(value, float) and not math.isfinite(value):
            self.refuse(node, "non-finite numbers are not allowed")
        return lambda ctx: value

    def _name(self, node: ast.AST, depth: int) -> _Evaluator:
        assert isinstance(node, ast.Name)
        name = node.id
        if name.startswith("_"):
            self.refuse(node, f"names starting with '_' are not allowed ({name!r})")
        self.names.add(name)

        def lookup(ctx: Context) -> Any:
            try:
                return ctx[name]
            except KeyError:
                raise EvaluationError(f"name {name!r} is not defined") from None

        return lookup

    def _attribute(self, node: ast.AST, depth: int) -> _Evaluator:
        assert isinstance(node, ast.Attribute)
        key = node.attr
        if key.startswith("_"):
            self.refuse(node, f"fields starting with '_' are not allowed ({key!r})")
        self._record_path(node)
        base = self.compile(node.value, depth)
        where = ast.unparse(node.value)

        def read(ctx: Context) -> Any:
            mapping = base(ctx)
            if not isinstance(mapping, Mapping):
                raise EvaluationError(f"{where} is {_kind(mapping)}, not a record with fields")
            try:
                return mapping[key]
            except KeyError:
                raise EvaluationError(f"{where} has no field {key!r}") from None

        return read

    def _subscript(self, node: ast.AST, depth: int) -> _Evaluator:
        assert isinstance(node, ast.Subscript)
        index_node = node.slice
        simple = isinstance(index_node, ast.Constant | ast.Name) or (
            isinstance(index_node, ast.UnaryOp)
            and isinstance(index_node.op, ast.USub)
            and isinstance(index_node.operand, ast.Constant)
        )
        if not simple:
            what = _REFUSED.get(type(index_node), "computed indices")
            self.refuse(index_node, f"{what} are not allowed; use a constant or a name as index")
        if isinstance(index_node, ast.Constant) and isinstance(index_node.value, str):
            if index_node.value.startswith("_"):
                self.refuse(index_node, "fields starting with '_' are not allowed")
            self._record_path(node)
        base = self.compile(node.value, depth)
        index = self.compile(index_node, depth)
        where = ast.unparse(node)

        def item(ctx: Context) -> Any:
            container = base(ctx)
            key = index(ctx)
            if isinstance(container, Mapping):
                if not isinstance(key, str):
                    raise EvaluationError(f"{where}: record fields are named by strings")
            elif isinstance(key, bool) or not isinstance(key, int):
                raise EvaluationError(f"{where}: list indices must be integers")
            elif not isinstance(container, str | list | tuple):
                container = _sequence(container, where)
            try:
                return container[key]
            except (KeyError, IndexError):
                raise EvaluationError(f"{where}: no element {key!r}") from None

        return item

    def _record_path(self, node: ast.Attribute | ast.Subscript) -> None:
        path: list[str] = []
        current: ast.AST = node
        while True:
            if isinstance(current, ast.Attribute):
                path.append(current.attr)
                current = current.value
            elif (
                isinstance(current, ast.Subscript)
                and isinstance(current.slice, ast.Constant)
                and isinstance(current.slice.value, str)
            ):
                path.append(current.slice.value)
                current = current.value
            else:
                break
        if isinstance(current, ast.Name) and current.id == "alert":
            self.alert_paths.add(tuple(reversed(path)))

    def _sequence_literal(self, node: ast.AST, depth: int) -> _Evaluator:
        assert isinstance(node, ast.List | ast.Tuple)
        items = [self.compile(element, depth) for element in node.elts]
        if isinstance(node, ast.Tuple):
            return lambda ctx: tuple(item(ctx) for item in items)
        return lambda ctx: [item(ctx) for item in items]

    def _bool_op(self, node: ast.AST, depth: int) -> _Evaluator:
        assert isinstance(node, ast.BoolOp)
        values = [self.compile(value, depth) for value in node.values]
        if isinstance(node.op, ast.And):

            def both(ctx: Context) -> Any:
                result: Any = True
                for value in values:
                    result = value(ctx)
                    if not _truth(result):
                        return result
                return result

            return both

        def either(ctx: Context) -> Any:
            result: Any = False
            for value in values:
                result = value(ctx)
                if _truth(result):
                    return result
            return result

        return either

    def _unary_op(self, node: ast.AST, depth: int) -> _Evaluator:
        assert isinstance(node, ast.UnaryOp)
        operand = self.compile(node.operand, depth)
        if isinstance(node.op, ast.Not):
            return lambda ctx: not _truth(operand(ctx))
        if isinstance(node.op, ast.USub):
            where = f"-{ast.unparse(node.operand)}"
            return lambda ctx: -_number(operand(ctx), where)
        self.refuse(node, f"the operator {_op_symbol(node.op)} is not allowed")

    def _bin_op(self, node: ast.AST, depth: int) -> _Evaluator:
        assert isinstance(node, ast.BinOp)
        function = _BINARY.get(type(node.op))
        if function is None:
            self.refuse(node, f"the operator {_op_symbol(node.op)} is not allowed")
        left = self.compile(node.left, depth)
        right = self.compile(node.right, depth)
        where = ast.unparse(node)

        def arithmetic(ctx: Context) -> Any:
            a = _number(left(ctx), where)
            b = _number(right(ctx), where)
            try:
                return function(a, b)
            except (ZeroDivisionError, OverflowError) as exc:
                raise EvaluationError(f"{where}: {exc}") from None

        return arithmetic

    def _compare(self, node: ast.AST, depth: int) -> _Evaluator:
        assert isinstance(node, ast.Compare)
        links: list[tuple[str, Callable[[Any, Any], Any], _Evaluator]] = []
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            entry = _COMPARE.get(type(op))
            if entry is None:
                self.refuse(node, f"the comparison {_op_symbol(op)!r} is not allowed")
            links.append((*entry, self.compile(comparator, depth)))
        first = self.compile(node.left, depth)

        def compare(ctx: Context) -> bool:
            left = first(ctx)
            for symbol, function, evaluate in links:
                right = evaluate(ctx)
                try:
                    outcome = function(left, right)
                except TypeError:
                    raise EvaluationError(
                        f"cannot compare {_kind(left)} {symbol} {_kind(right)}"
                    ) from None
                if not _truth(outcome):
                    return False
                left = right
            return True

        return compare

    def _call(self, node: ast.AST, depth: int) -> _Evaluator:
        assert isinstance(node, ast.Call)
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            self.refuse(node, f"only the functions {', '.join(sorted(FUNCTIONS))} may be called")
        if node.keywords:
            self.refuse(node, "keyword arguments are not allowed")
        name = node.func.id
        low, high = _ARITY[name]
        if not low <= len(node.args) <= high:
            self.refuse(node, f"{name}() takes {low} to {high} arguments, not {len(node.args)}")
        arguments = [self.compile(arg, depth) for arg in node.args]
        function = _CALLABLES[name]

        def call(ctx: Context) -> Any:
            values = [argument(ctx) for argument in arguments]
            try:
                return function(*values)
            except (TypeError, ValueError) as exc:
                raise EvaluationError(f"{name}(): {exc}") from None

        return call

    _HANDLERS: Mapping[type[ast.AST], Callable[[_Compiler, ast.AST, int], _Evaluator]] = {
        ast.Constant: _constant,
        ast.Name: _name,
        ast.Attribute: _attribute,
        ast.Subscript: _subscript,
        ast.List: _sequence_literal,
        ast.Tuple: _sequence_literal,
        ast.BoolOp: _bool_op,
        ast.UnaryOp: _unary_op,
        ast.BinOp: _bin_op,
        ast.Compare: _compare,
        ast.Call: _call,
    }


_SYMBOLS: Mapping[type[ast.AST], str] = {
    ast.Pow: "**",
    ast.FloorDiv: "//",
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.Invert: "~",
    ast.UAdd: "unary +",
    ast.Is: "is",
    ast.IsNot: "is not",
}


def _op_symbol(op: ast.AST) -> str:
    return _SYMBOLS.get(type(op), type(op).__name__)
