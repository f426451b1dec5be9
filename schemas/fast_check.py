"""An accept-only fast path in front of the Pydantic validators of schemas/json_schema.py.

`compile_fast(schema, parsed_json=...)` turns a schema into a predicate, or None when the
schema uses something it does not handle (oneOf without distinct tags, prefixItems). The
predicate answers True only when the strict validator of `compile_schema(schema,
parsed_json=...)` would accept the value; False means "not sure", and the caller then runs
that validator, so every rejection (and its typed error with the field path) still comes
from Pydantic. `Validator` does exactly that.

It is sound by construction, never by approximation: values are accepted only when their
types are exactly JSON's (dict with str keys, list, str, int, float, bool, None);
anything else (a subclass, a tuple, a number beyond 2**53 where floats and ints could
compare differently, a lone surrogate where Pydantic checks Unicode) is left to Pydantic,
and `pattern` and `format` are checked by the very functions Pydantic uses.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import StringConstraints, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from schemas.json_schema import (
    ANNOTATIONS,
    COMPOSITION,
    FORMATS,
    _Compiler,
    _json_equal,
    compile_schema,
)

Check = Callable[[Any], bool]
MAX_DEPTH = 200  # levels of nesting the fast path checks (below JsonValue's 255)
"""True: the Pydantic validator accepts the value. False (or an exception): ask it."""

_EXACT = 2 ** 53
"""Numbers within +-2**53 compare the same as Python ints, Python floats and Rust f64s."""
_INT64 = 2 ** 63 - 1
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _anything(value: Any) -> bool:
    return True


def _is(kind: type) -> Check:
    def check(value: Any) -> bool:
        return type(value) is kind
    return check


_IS: dict[type, Check] = {t: _is(t) for t in (str, int, bool, type(None))}
_TYPE_OF: dict[Check, type] = {check: t for t, check in _IS.items()}
"""Checks that are one exact-type test: containers make that test inline (no call)."""
_MISSING = object()


class _Unsupported(Exception):
    """The schema needs a check this fast path does not make."""


class Validator:
    """Validate like `adapter.validate_python(value, strict=True)`, trying `fast` first."""

    __slots__ = ("adapter", "fast")

    def __init__(self, adapter: TypeAdapter[Any], fast: Check | None) -> None:
        self.adapter = adapter
        self.fast = fast

    def validate(self, value: Any) -> None:
        """Return if `value` is valid; else raise Pydantic's own ValidationError."""
        fast = self.fast
        if fast is not None:
            try:
                if fast(value):
                    return
            except Exception:  # e.g. RecursionError on a very deep value: ask Pydantic
                pass
        try:
            self.adapter.validate_python(value, strict=True)
        except RecursionError:  # a recursive schema ($ref) and a value deeper than Python
            raise ValidationError.from_exception_data("value", [{  # goes: one typed error
                "type": PydanticCustomError("too_deep", "the value nests too deeply to check"),
                "loc": (), "input": None}]) from None


def compile_validator(schema: Any, *, parsed_json: bool = False) -> Validator:
    """`compile_schema(schema, parsed_json=...)` with the fast path in front (both cached;
    the Validator itself is new, so one plan can turn its fast path off)."""
    return Validator(compile_schema(schema, parsed_json=parsed_json),
                     compile_fast(schema, parsed_json=parsed_json))


def compile_fast(schema: Any, *, parsed_json: bool = False) -> Check | None:
    """The accept-only predicate for `schema`, or None (then always ask Pydantic).

    The predicate may raise (RecursionError on a very deep value): that means False.
    With `parsed_json=True` values are known to come from a JSON parser (exact types, str
    keys, finite numbers), as for `compile_schema(..., parsed_json=True)`. The schema must
    be one `compile_schema` accepts (it raises SchemaError otherwise).
    """
    compile_schema(schema, parsed_json=parsed_json)  # refuses what the compiler refuses
    return _compiled(json.dumps(schema, sort_keys=True), parsed_json)


@functools.lru_cache(maxsize=1024)
def _compiled(key: str, parsed_json: bool) -> Check | None:
    try:
        return _Fast(json.loads(key), parsed_json).compile()
    except _Unsupported:
        return None


def nests_deeper(value: Any, limit: int) -> bool:
    """Whether mappings, lists and tuples in `value` nest more than `limit` levels deep."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        t = type(item)
        if t is dict or (t is not list and t is not tuple and isinstance(item, Mapping)):
            children: Any = item.values()
        elif t is list or t is tuple or isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((c, depth + 1) for c in children if not isinstance(c, _SCALAR))
    return False


_SCALAR = (str, int, float, bool, type(None))


def is_json(value: Any, depth: int = 0) -> bool:
    """Whether `value` is made only of JSON's exact types (strict JsonValue accepts these,
    and subclasses too) and nests less than `MAX_DEPTH` deep (JsonValue's own limit is
    255: deeper, Pydantic decides)."""
    if depth > MAX_DEPTH:
        return False
    t = type(value)
    if t is dict:
        for k in value:
            if type(k) is not str:
                return False
        items = value.values()
    elif t is list:
        items = value
    else:
        return t in _SCALARS
    for x in items:  # noqa: SIM110 - a loop is faster than all() on the hot path
        if type(x) not in _SCALARS and not is_json(x, depth + 1):
            return False
    return True


class _Fast:
    """Compiles one schema document, mirroring `json_schema._Compiler` keyword by keyword."""

    def __init__(self, root: Any, parsed_json: bool) -> None:
        self.root = root
        self.parsed_json = parsed_json
        self.anything: Check = _anything if parsed_json else is_json
        self.refs = _Compiler(root, Any)  # resolves $ref and discriminator tags
        self.done: dict[str, Check] = {}
        self.active: set[str] = set()
        self.late: dict[str, Check] = {}

    def compile(self) -> Check:
        check = self.ref("#")
        self.late.update(self.done)
        return check

    def ref(self, ref: str) -> Check:
        key, target = self.refs.resolve(ref, "#")
        if key in self.done:
            return self.done[key]
        if key in self.active:  # recursion: look the finished check up when called
            late = self.late
            return lambda value: late[key](value)
        self.active.add(key)
        try:
            check = self.node(target)
        finally:
            self.active.discard(key)
        self.done[key] = check
        return check

    def node(self, schema: Any) -> Check:
        if schema is True or schema == {}:
            return self.anything
        if not isinstance(schema, dict) or "prefixItems" in schema:
            raise _Unsupported
        parts: list[Check] = []
        own = self.own(schema)
        if own is not None:
            parts.append(own)
        if "$ref" in schema:
            parts.append(self.ref(schema["$ref"]))
        parts.extend(self.node(s) for s in schema.get("allOf", []))
        for keyword in ("anyOf", "oneOf"):
            if keyword in schema:
                parts.append(self.choice(schema, keyword))
        return _all_of(parts) if parts else self.anything

    def choice(self, schema: dict[str, Any], keyword: str) -> Check:
        options = schema[keyword]
        tags = self.refs.tags(schema, keyword, options, "#")
        if tags is not None:  # a discriminated union: the tag picks the only branch
            name, where = tags
            by_tag = {tag: self.node(options[i]) for tag, i in where.items()}

            def tagged(value: Any) -> bool:
                if type(value) is not dict:
                    return False
                tag = value.get(name)
                check = by_tag.get(tag) if type(tag) is str else None
                return check is not None and check(value)
            return tagged
        if keyword == "oneOf":  # "exactly one" needs proof that the others reject
            raise _Unsupported
        return _any_of([self.node(s) for s in options])

    def own(self, schema: dict[str, Any]) -> Check | None:
        values: list[Any] | None = None
        if "const" in schema:
            values = [schema["const"]]
        elif "enum" in schema:
            values = list(schema["enum"])
        kinds = schema.get("type")
        if kinds is None:
            if set(schema) - ANNOTATIONS - COMPOSITION - {"const", "enum"}:
                raise _Unsupported  # the compiler refuses this; never reached
            typed = None if values is None else self.anything
        else:
            typed = _any_of([self.single(schema, k)
                             for k in (kinds if isinstance(kinds, list) else [kinds])])
        if values is None or typed is None:
            return typed
        equal = _equal_to(values)
        if typed is _anything:
            return equal
        base = typed
        return lambda value: base(value) and equal(value)

    def single(self, schema: dict[str, Any], kind: Any) -> Check:
        if kind == "string":
            return self.string(schema)
        if kind == "integer":
            return _number(schema, int)
        if kind == "number":
            return _number(schema, float)
        if kind == "boolean":
            return _IS[bool]
        if kind == "null":
            return _IS[type(None)]
        if kind == "array":
            return self.array(schema)
        if kind == "object":
            return self.object(schema)
        raise _Unsupported

    def string(self, schema: dict[str, Any]) -> Check:
        low, high = schema.get("minLength"), schema.get("maxLength")
        pattern = schema.get("pattern")
        text: Check
        if pattern is not None:  # Pydantic's own regex engine, with the same constraints
            matcher = TypeAdapter(Annotated[str, StringConstraints(
                min_length=low, max_length=high, pattern=pattern)]).validator

            def text(value: Any) -> bool:
                return type(value) is str and matcher.isinstance_python(value, strict=True)
        elif low is None and high is None:
            text = _IS[str]
        else:
            lo, hi = low or 0, _INT64 if high is None else high

            def text(value: Any) -> bool:  # with limits Pydantic refuses lone surrogates
                return (type(value) is str and lo <= len(value) <= hi
                        and (value.isascii() or _utf8(value)))
        if "format" not in schema:
            return text
        is_valid = FORMATS[schema["format"]][0]
        return lambda value: text(value) and is_valid(value)

    def array(self, schema: dict[str, Any]) -> Check:
        item = self.node(schema.get("items", True))
        lo, hi = schema.get("minItems") or 0, schema.get("maxItems")
        hi = _INT64 if hi is None else hi
        exact = _TYPE_OF.get(item)

        def array(value: Any) -> bool:
            if type(value) is not list or not lo <= len(value) <= hi:
                return False
            if exact is not None:
                for x in value:
                    if type(x) is not exact:
                        return False
            elif item is not _anything:
                for x in value:
                    if not item(x):
                        return False
            return True
        return array

    def object(self, schema: dict[str, Any]) -> Check:
        props: dict[str, Any] = schema.get("properties", {})
        required: list[str] = schema.get("required", [])
        extra = schema.get("additionalProperties", True)
        others = self.anything if isinstance(extra, bool) else self.node(extra)
        str_keys = not self.parsed_json
        if not props and not required:
            if extra is False:
                return lambda value: type(value) is dict and not value
            return _dict_of(others, str_keys)
        wanted = set(required)
        # the fields, as the compiler's model has them: properties, then required names
        # that are not properties (typed like additionalProperties)
        checks = [(p, self.node(s), p in wanted) for p, s in props.items()]
        checks += [(r, others, True) for r in required if r not in props]
        fields = [(name, _TYPE_OF.get(check), check, needed) for name, check, needed in checks]
        names = {f[0] for f in fields}
        forbid = extra is False
        extras = others  # additionalProperties true: any JSON value

        def obj(value: Any) -> bool:
            if type(value) is not dict:
                return False
            seen = 0
            for name, exact, check, needed in fields:
                x = value.get(name, _MISSING)
                if x is _MISSING:
                    if needed:
                        return False
                    continue
                seen += 1
                if exact is not None:
                    if type(x) is not exact:
                        return False
                elif check is not _anything and not check(x):
                    return False
            if seen == len(value):
                if str_keys:
                    for k in value:
                        if type(k) is not str:
                            return False
                return True
            if forbid:
                return False
            for k, x in value.items():
                if type(k) is not str:
                    return False
                if k not in names and not extras(x):
                    return False
            return True
        return obj


def _all_of(parts: list[Check]) -> Check:
    parts = [p for p in parts if p is not _anything]
    if not parts:
        return _anything
    if len(parts) == 1:
        return parts[0]
    return lambda value: all(p(value) for p in parts)


def _any_of(parts: list[Check]) -> Check:
    if _anything in parts:
        return _anything
    if len(parts) == 1:
        return parts[0]
    return lambda value: any(p(value) for p in parts)


def _equal_to(values: list[Any]) -> Check:
    """enum/const as `json_schema._one_of_values` compares (true is not 1, 1 is 1.0)."""
    if all(type(v) is str for v in values):
        allowed = frozenset(values)
        return lambda value: type(value) is str and value in allowed
    return lambda value: any(_json_equal(value, v) for v in values)


def _number(schema: dict[str, Any], kind: type) -> Check:
    """integer (strict int) or number (strict float, which also takes ints)."""
    bounds = [schema.get(k) for k in ("minimum", "maximum", "exclusiveMinimum",
                                      "exclusiveMaximum")]
    if any(b is not None and not -_EXACT <= b <= _EXACT for b in bounds):
        raise _Unsupported
    if kind is int and bounds == [None] * 4:
        return _IS[int]  # strict int takes any int, however big
    ge, le, gt, lt = bounds
    limit = _INT64 if kind is int else _EXACT

    def number(value: Any) -> bool:
        t = type(value)
        if t is int:
            if not -limit <= value <= limit:
                return False
        elif t is not float or kind is int:
            return False
        return ((ge is None or value >= ge) and (le is None or value <= le)
                and (gt is None or value > gt) and (lt is None or value < lt))
    return number


def _dict_of(values: Check, str_keys: bool) -> Check:
    if values is _anything and not str_keys:
        return lambda value: type(value) is dict

    def mapping(value: Any) -> bool:
        if type(value) is not dict:
            return False
        for k, x in value.items():
            if str_keys and type(k) is not str:
                return False
            if not values(x):
                return False
        return True
    return mapping


def _utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


__all__ = ["Check", "Validator", "compile_fast", "compile_validator", "is_json"]
