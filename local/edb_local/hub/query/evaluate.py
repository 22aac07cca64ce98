"""Evaluate query-language expressions with IoT Hub's three-valued logic. Pure code.

A path that resolves to nothing is *undefined*. Comparisons with undefined, or between values of
different types (a string and a number), are undefined; ``AND``/``OR``/``NOT`` propagate undefined
(false AND undefined is false, true OR undefined is true); a condition matches only when the
result is exactly ``true``, so undefined counts as false. ``IS_DEFINED`` and the ``IS_*`` type
checks are never undefined.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from edb_local.hub.query.expr import Binary, Call, ListLiteral, Literal, Node, Path, QuerySyntaxError, Unary


class _Undefined:
    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False


UNDEFINED: Any = _Undefined()

Resolver = Callable[[tuple[str, ...]], Any]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _type_class(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if _is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _compare(op: str, left: Any, right: Any) -> Any:
    if left is UNDEFINED or right is UNDEFINED:
        return UNDEFINED
    kind = _type_class(left)
    if kind != _type_class(right):
        return UNDEFINED
    if op == "=":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    if kind not in ("number", "string"):
        return UNDEFINED
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)


def _arith(op: str, left: Any, right: Any) -> Any:
    if op == "+" and isinstance(left, str) and isinstance(right, str):
        return left + right
    if not (_is_number(left) and _is_number(right)):
        return UNDEFINED
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    if right == 0:
        return UNDEFINED
    if op == "/":
        return left / right
    return left % right


def _string_fn(fn: Callable[..., Any], *args: Any) -> Any:
    if not all(isinstance(a, str) for a in args):
        return UNDEFINED
    return fn(*args)


def _substring(s: Any, start: Any, length: Any = UNDEFINED) -> Any:
    if not isinstance(s, str) or not _is_number(start):
        return UNDEFINED
    begin = max(int(start), 0)
    if length is UNDEFINED:
        return s[begin:]
    if not _is_number(length):
        return UNDEFINED
    return s[begin:begin + max(int(length), 0)]


def _as_number(value: Any) -> Any:
    if _is_number(value):
        return value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return UNDEFINED
        if math.isfinite(number):
            return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
    return UNDEFINED


def _math(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: fn(value) if _is_number(value) else UNDEFINED


_FUNCTIONS: dict[str, tuple[int, int, Callable[..., Any]]] = {
    # name: (min args, max args, implementation)
    "IS_DEFINED": (1, 1, lambda v: v is not UNDEFINED),
    "IS_NULL": (1, 1, lambda v: v is None),
    "IS_BOOL": (1, 1, lambda v: isinstance(v, bool)),
    "IS_NUMBER": (1, 1, _is_number),
    "IS_STRING": (1, 1, lambda v: isinstance(v, str)),
    "IS_OBJECT": (1, 1, lambda v: isinstance(v, dict)),
    "IS_PRIMITIVE": (1, 1, lambda v: v is None or isinstance(v, bool | str) or _is_number(v)),
    "STARTS_WITH": (2, 2, lambda s, p: _string_fn(str.startswith, s, p)),
    "ENDS_WITH": (2, 2, lambda s, p: _string_fn(str.endswith, s, p)),
    "CONTAINS": (2, 2, lambda s, p: _string_fn(str.__contains__, s, p)),
    "INDEX_OF": (2, 2, lambda s, p: _string_fn(str.find, s, p)),
    "LOWER": (1, 1, lambda s: _string_fn(str.lower, s)),
    "UPPER": (1, 1, lambda s: _string_fn(str.upper, s)),
    "LENGTH": (1, 1, lambda s: _string_fn(len, s)),
    "CONCAT": (2, 16, lambda *a: _string_fn(lambda *x: "".join(x), *a)),
    "SUBSTRING": (2, 3, _substring),
    "AS_NUMBER": (1, 1, _as_number),
    "ABS": (1, 1, _math(abs)),
    "CEILING": (1, 1, _math(math.ceil)),
    "FLOOR": (1, 1, _math(math.floor)),
}


def check_functions(node: Node) -> None:
    """Reject unknown functions and wrong arities at parse time, not per message."""
    if isinstance(node, Call):
        spec = _FUNCTIONS.get(node.name)
        if spec is None:
            raise QuerySyntaxError(f"unknown function {node.name}")
        if not spec[0] <= len(node.args) <= spec[1]:
            raise QuerySyntaxError(f"{node.name} takes {spec[0]}..{spec[1]} arguments")
        for arg in node.args:
            check_functions(arg)
    elif isinstance(node, Unary):
        check_functions(node.operand)
    elif isinstance(node, Binary):
        check_functions(node.left)
        check_functions(node.right)


def evaluate(node: Node, resolve: Resolver) -> Any:
    if isinstance(node, Literal):
        return node.value
    if isinstance(node, Path):
        return resolve(node.parts)
    if isinstance(node, Binary):
        op = node.op
        if op in ("AND", "OR"):
            # three-valued logic: an operand equal to the dominant value (false for AND, true for OR)
            # decides; both operands the other boolean give that boolean; anything else is undefined
            dominant = op == "OR"
            left = evaluate(node.left, resolve)
            if left is dominant:
                return dominant
            right = evaluate(node.right, resolve)
            if right is dominant:
                return dominant
            if left is (not dominant) and right is (not dominant):
                return not dominant
            return UNDEFINED
        left = evaluate(node.left, resolve)
        if op in ("IN", "NIN"):
            assert isinstance(node.right, ListLiteral)
            if left is UNDEFINED:
                return UNDEFINED
            found = any(_compare("=", left, item) is True for item in node.right.items)
            return found if op == "IN" else not found
        right = evaluate(node.right, resolve)
        if op in ("+", "-", "*", "/", "%"):
            if left is UNDEFINED or right is UNDEFINED:
                return UNDEFINED
            return _arith(op, left, right)
        return _compare(op, left, right)
    if isinstance(node, Unary):
        value = evaluate(node.operand, resolve)
        if node.op == "NOT":
            return (not value) if isinstance(value, bool) else UNDEFINED
        return -value if _is_number(value) else UNDEFINED
    if isinstance(node, Call):
        spec = _FUNCTIONS.get(node.name)
        if spec is None:
            raise QuerySyntaxError(f"unknown function {node.name}")
        args = [evaluate(arg, resolve) for arg in node.args]
        if node.name != "IS_DEFINED" and not node.name.startswith("IS_") and any(a is UNDEFINED for a in args):
            return UNDEFINED
        return spec[2](*args)
    if isinstance(node, ListLiteral):
        return list(node.items)
    raise QuerySyntaxError("unsupported expression node")


def matches(node: Node | None, resolve: Resolver) -> bool:
    """A condition holds only when it evaluates to exactly true (no condition: always)."""
    return True if node is None else evaluate(node, resolve) is True


def lookup_path(document: Any, parts: tuple[str, ...]) -> Any:
    """Walk a JSON document; anything missing is UNDEFINED."""
    value = document
    for part in parts:
        if isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return UNDEFINED
    return value
