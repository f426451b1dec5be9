"""`{{ path }}` interpolation and the safe condition language of WDL.

Paths are `name`, `name.key`, `name.list[0]`, `name["odd key"]`. Conditions are parsed
with Python's `ast` and evaluated by walking a whitelist of node types: comparisons,
`and`/`or`/`not`, `in`/`not in`, unary minus, literals (numbers, strings, true/false/null,
lists) and paths. No calls, no operators beyond those, no attribute access into Python
objects: a path only ever indexes JSON dicts and lists.
"""

from __future__ import annotations

import ast
import json
import operator
import re
from collections.abc import Iterator, Mapping
from typing import Any

REF = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
LITERALS = {"true": True, "false": False, "null": None, "True": True, "False": False,
            "None": None}
COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
           ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}


class ExpressionError(ValueError):
    """An expression or path is malformed or refers to something missing."""


def _parse(expr: str) -> ast.expr:
    try:
        return ast.parse(expr.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ExpressionError(f"cannot parse {expr!r}: {exc.msg}") from None


def _check(node: ast.AST, expr: str, *, path_only: bool = False) -> None:
    allowed_path = (ast.Name, ast.Attribute, ast.Subscript)
    if path_only and not isinstance(node, allowed_path):
        raise ExpressionError(f"{expr!r} is not a path (use name.key or name[0])")
    if isinstance(node, ast.BoolOp | ast.Compare | ast.UnaryOp | ast.List | ast.Tuple) \
            and path_only:
        raise ExpressionError(f"{expr!r} is not a path")
    if isinstance(node, ast.BoolOp):
        for v in node.values:
            _check(v, expr)
    elif isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in COMPARE and not isinstance(op, ast.In | ast.NotIn):
                raise ExpressionError(f"operator {type(op).__name__} is not allowed in {expr!r}")
        _check(node.left, expr)
        for c in node.comparators:
            _check(c, expr)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, ast.Not | ast.USub):
            raise ExpressionError(f"operator {type(node.op).__name__} is not allowed")
        _check(node.operand, expr)
    elif isinstance(node, ast.List | ast.Tuple):
        for e in node.elts:
            _check(e, expr)
    elif isinstance(node, ast.Attribute):
        _check(node.value, expr, path_only=True)
    elif isinstance(node, ast.Subscript):
        _check(node.value, expr, path_only=True)
        if not (isinstance(node.slice, ast.Constant)
                and isinstance(node.slice.value, str | int)):
            raise ExpressionError(f"only constant indexes like [0] or ['key'] in {expr!r}")
    elif isinstance(node, ast.Constant):
        if not isinstance(node.value, str | int | float | bool | type(None)):
            raise ExpressionError(f"literal {node.value!r} is not allowed")
    elif not isinstance(node, ast.Name):
        raise ExpressionError(f"{type(node).__name__} is not allowed in {expr!r}")


def compile_expression(expr: str) -> ast.expr:
    node = _parse(expr)
    _check(node, expr)
    return node


def compile_path(path: str) -> ast.expr:
    node = _parse(path)
    _check(node, path, path_only=True)
    return node


def roots(node: ast.AST) -> set[str]:
    """The variable names an expression reads (literals excluded)."""
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id not in LITERALS}


def _eval(node: ast.AST, scope: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in LITERALS:
            return LITERALS[node.id]
        if node.id not in scope:
            raise ExpressionError(f"{node.id!r} is not defined")
        return scope[node.id]
    if isinstance(node, ast.Attribute | ast.Subscript):
        base = _eval(node.value, scope)
        key: Any = node.attr if isinstance(node, ast.Attribute) else node.slice.value  # type: ignore[attr-defined]
        try:
            if isinstance(base, dict) and isinstance(key, str):
                return base[key]
            if isinstance(base, list) and isinstance(key, int) and not isinstance(key, bool):
                return base[key]
        except (KeyError, IndexError):
            pass
        raise ExpressionError(f"{ast.unparse(node)} does not exist")
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            return all(_truthy(_eval(v, scope)) for v in node.values)
        return any(_truthy(_eval(v, scope)) for v in node.values)
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, scope)
        if isinstance(node.op, ast.Not):
            return not _truthy(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ExpressionError(f"cannot negate {value!r}")
        return -value
    if isinstance(node, ast.List | ast.Tuple):
        return [_eval(e, scope) for e in node.elts]
    if isinstance(node, ast.Compare):
        left = _eval(node.left, scope)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            right = _eval(comp, scope)
            try:
                if isinstance(op, ast.In):
                    ok = left in right
                elif isinstance(op, ast.NotIn):
                    ok = left not in right
                else:
                    ok = COMPARE[type(op)](left, right)
            except TypeError:
                raise ExpressionError(f"cannot compare {left!r} and {right!r}") from None
            if not ok:
                return False
            left = right
        return True
    raise ExpressionError(f"{type(node).__name__} is not allowed")  # pragma: no cover


def _truthy(value: Any) -> bool:
    return bool(value)


def evaluate(expr: str, scope: Mapping[str, Any]) -> Any:
    return _eval(compile_expression(expr), scope)


def references(value: Any, pointer: str = "") -> Iterator[tuple[str, str]]:
    """Yield (JSON pointer, path text) for every `{{ path }}` inside a JSON value."""
    if isinstance(value, str):
        for match in REF.finditer(value):
            yield pointer, match.group(1)
    elif isinstance(value, dict):
        for k, v in value.items():
            escaped = str(k).replace("~", "~0").replace("/", "~1")  # RFC 6901
            yield from references(v, f"{pointer}/{escaped}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from references(v, f"{pointer}/{i}")


def interpolate(value: Any, scope: Mapping[str, Any]) -> Any:
    """Replace references. A string that is exactly one reference keeps the value's type."""
    if isinstance(value, str):
        whole = REF.fullmatch(value.strip())
        if whole is not None:
            return _eval(compile_path(whole.group(1)), scope)

        def text(match: re.Match[str]) -> str:
            found = _eval(compile_path(match.group(1)), scope)
            return found if isinstance(found, str) else json.dumps(found)

        return REF.sub(text, value)
    if isinstance(value, dict):
        return {k: interpolate(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, scope) for v in value]
    return value
