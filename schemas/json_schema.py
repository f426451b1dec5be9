"""Compile the JSON Schema subset used by manifests into a Pydantic validator.

Values are checked in strict mode and must be plain JSON values (dict, list, str, int,
float, bool, None): a set or a tuple is refused even where the schema allows anything.

Supported keywords: type (one or a list), properties, required, additionalProperties
(boolean, or a schema when there are no properties), items, minItems, maxItems,
minLength, maxLength, pattern, format (strings only: email, uuid, ipv4, ipv6, date,
date-time; see FORMATS), minimum, maximum, exclusiveMinimum, exclusiveMaximum, enum and
const (scalars), anyOf; annotations (title, description, default, examples, deprecated,
readOnly, writeOnly, $schema, $id, $comment) are accepted and ignored. Anything else,
including a `format` Loom does not check, is refused with the JSON path of the keyword,
so a manifest never silently promises a check that is not made.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import itertools
import json
import re
from collections.abc import Callable
from typing import Annotated, Any, Union

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PydanticSchemaGenerationError,
    StringConstraints,
    TypeAdapter,
    create_model,
)
from pydantic_core import PydanticCustomError
from pydantic_core import SchemaError as PydanticCoreSchemaError

ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment",
               "deprecated", "readOnly", "writeOnly"}
CHECKS = ("type", "properties", "required", "additionalProperties", "items", "minItems",
          "maxItems", "minLength", "maxLength", "pattern", "format", "minimum", "maximum",
          "exclusiveMinimum", "exclusiveMaximum", "enum", "const", "anyOf")
KEYWORDS = ANNOTATIONS | set(CHECKS)
_counter = itertools.count()

# HTML's definition of a valid e-mail address (what <input type=email> accepts).
_EMAIL = re.compile(r"[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}"
                    r"[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                   r"[0-9a-fA-F]{12}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?"
                        r"(?:[Zz]|[+-]\d{2}:\d{2})")


def _is_ip(kind: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]
           ) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        try:
            kind(value)
        except ValueError:
            return False
        return True
    return check


def _is_date(value: str) -> bool:
    try:
        return bool(_DATE.fullmatch(value)) and bool(datetime.date.fromisoformat(value))
    except ValueError:
        return False


def _is_date_time(value: str) -> bool:
    if not _DATE_TIME.fullmatch(value):
        return False
    try:
        datetime.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


FORMATS: dict[str, tuple[Callable[[str], bool], str]] = {
    "email": (lambda v: bool(_EMAIL.fullmatch(v)),
              "an e-mail address (as HTML's <input type=email> checks it)"),
    "uuid": (lambda v: bool(_UUID.fullmatch(v)), "a UUID (8-4-4-4-12 hex digits)"),
    "ipv4": (_is_ip(ipaddress.IPv4Address), "an IPv4 address"),
    "ipv6": (_is_ip(ipaddress.IPv6Address), "an IPv6 address"),
    "date": (_is_date, "a date (YYYY-MM-DD)"),
    "date-time": (_is_date_time, "an RFC 3339 date-time (e.g. 2026-01-31T12:00:00Z)"),
}
"""The `format` values that are checked: name -> (check, what a valid value is)."""

SUPPORTED = (f"supported: {', '.join(CHECKS)}; formats: {', '.join(FORMATS)}; "
             f"annotations: {', '.join(sorted(ANNOTATIONS))}")
"""One line naming every supported keyword, for error messages and docs."""


class SchemaError(ValueError):
    """A schema uses a keyword or value this validator cannot honour."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"schema {path}: {message}")
        self.path = path


def compile_schema(schema: Any, *, parsed_json: bool = False) -> TypeAdapter[Any]:
    """Return a TypeAdapter validating JSON values against `schema` (strict types).

    With `parsed_json=True` the values are known to come from a JSON parser, so where the
    schema allows anything no per-value JSON check is made (faster). Compiling costs
    about a millisecond, so equal schemas share one adapter.
    """
    try:
        key = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError):
        raise SchemaError("#", "must be JSON") from None
    return _compiled(key, parsed_json)


@functools.lru_cache(maxsize=1024)
def _compiled(key: str, parsed_json: bool) -> TypeAdapter[Any]:
    return TypeAdapter(_type_of(json.loads(key), "#", Any if parsed_json else JsonValue))


def _type_of(schema: Any, path: str, anything: Any) -> Any:
    if schema is True or schema == {}:
        return anything
    if not isinstance(schema, dict):
        raise SchemaError(path, "must be an object or true")
    unknown = sorted(set(schema) - KEYWORDS)
    if unknown:
        raise SchemaError(f"{path}/{unknown[0]}", f"keyword is not supported ({SUPPORTED})")
    if "const" in schema:
        return _one_of_values([_scalar(schema["const"], f"{path}/const")], anything)
    if "enum" in schema:
        values = schema["enum"]
        if not isinstance(values, list) or not values:
            raise SchemaError(f"{path}/enum", "must be a non-empty array")
        return _one_of_values([_scalar(v, f"{path}/enum") for v in values], anything)
    if "anyOf" in schema:
        options = schema["anyOf"]
        if not isinstance(options, list) or not options:
            raise SchemaError(f"{path}/anyOf", "must be a non-empty array")
        return Union[tuple(  # noqa: UP007
            _type_of(s, f"{path}/anyOf/{i}", anything) for i, s in enumerate(options))]
    kinds = schema.get("type")
    if kinds is None:
        if set(schema) - ANNOTATIONS:
            raise SchemaError(path, "constraints need a 'type'")
        return anything
    if "format" in schema and "string" not in (kinds if isinstance(kinds, list) else [kinds]):
        raise SchemaError(f"{path}/format", "format applies to strings only; with type "
                          f"{json.dumps(kinds)} it would not be checked")
    if isinstance(kinds, list):
        if not kinds:
            raise SchemaError(f"{path}/type", "must not be empty")
        return Union[tuple(_single(schema, k, path, anything) for k in kinds)]  # noqa: UP007
    return _single(schema, kinds, path, anything)


def _json_equal(a: Any, b: Any) -> bool:
    """JSON equality: true/false are not 1/0, but 1 equals 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return bool(a == b) and (a is None) == (b is None)


def _format(name: Any, path: str) -> Callable[[str], str]:
    if not isinstance(name, str) or name not in FORMATS:
        raise SchemaError(path, f"format {json.dumps(name)} is not checked by Loom (checked "
                          f"formats: {', '.join(FORMATS)}); use 'pattern' instead, or "
                          "put the hint in 'description'")
    is_valid, meaning = FORMATS[name]

    def check(value: str) -> str:
        if not is_valid(value):
            raise PydanticCustomError("format", "must be {meaning}", {"meaning": meaning})
        return value

    return check


def _require_object(value: Any) -> Any:
    if not isinstance(value, dict):
        raise PydanticCustomError("object_type", "must be a JSON object, not {kind}",
                                  {"kind": _kind(value)})
    return value


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {list: "an array", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__)


def _one_of_values(values: list[Any], anything: Any) -> Any:
    def check(value: Any) -> Any:
        if not any(_json_equal(value, v) for v in values):
            shown = ", ".join(json.dumps(v) for v in values)
            raise ValueError(f"must be {'one of ' if len(values) > 1 else ''}{shown}")
        return value

    return Annotated[anything, AfterValidator(check)]


def _scalar(value: Any, path: str) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise SchemaError(path, "only scalar values are supported")


def _num(schema: dict[str, Any], key: str, path: str) -> Any:
    v = schema.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
        raise SchemaError(f"{path}/{key}", "must be a number")
    return v


def _count(schema: dict[str, Any], key: str, path: str) -> int | None:
    v = schema.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        raise SchemaError(f"{path}/{key}", "must be a non-negative integer")
    return v


def _single(schema: dict[str, Any], kind: Any, path: str, anything: Any) -> Any:
    if kind == "string":
        pattern = schema.get("pattern")
        if pattern is not None:
            if not isinstance(pattern, str):
                raise SchemaError(f"{path}/pattern", "must be a string")
            try:  # pydantic's regex engine decides what is supported (no look-around)
                TypeAdapter(Annotated[str, StringConstraints(pattern=pattern)])
            except (PydanticCoreSchemaError, PydanticSchemaGenerationError) as exc:
                reason = str(exc).strip().splitlines()[-1]
                raise SchemaError(f"{path}/pattern",
                                  f"unsupported regular expression: {reason}") from None
        text = Annotated[str, StringConstraints(
            min_length=_count(schema, "minLength", path),
            max_length=_count(schema, "maxLength", path), pattern=pattern)]
        if "format" in schema:
            return Annotated[text, AfterValidator(_format(schema["format"], f"{path}/format"))]
        return text
    if kind in ("integer", "number"):
        base: type = int if kind == "integer" else float
        return Annotated[base, Field(
            ge=_num(schema, "minimum", path), le=_num(schema, "maximum", path),
            gt=_num(schema, "exclusiveMinimum", path), lt=_num(schema, "exclusiveMaximum", path))]
    if kind == "boolean":
        return bool
    if kind == "null":
        return None
    if kind == "array":
        item = _type_of(schema.get("items", True), f"{path}/items", anything)
        return Annotated[list[item], Field(  # type: ignore[valid-type]
            min_length=_count(schema, "minItems", path),
            max_length=_count(schema, "maxItems", path))]
    if kind == "object":
        return _object(schema, path, anything)
    raise SchemaError(f"{path}/type", f"unknown type {kind!r}")


def _object(schema: dict[str, Any], path: str, anything: Any) -> Any:
    props = schema.get("properties", {})
    required = schema.get("required", [])
    extra = schema.get("additionalProperties", True)
    if not isinstance(props, dict):
        raise SchemaError(f"{path}/properties", "must be an object")
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise SchemaError(f"{path}/required", "must be an array of strings")
    missing = [r for r in required if r not in props]
    if missing and extra is not True:
        raise SchemaError(f"{path}/required", f"{missing[0]!r} is not among the properties")
    is_object = BeforeValidator(_require_object)  # "must be a JSON object, not an array"
    if not props and not required:
        if extra is True:
            return Annotated[dict[str, anything], is_object]
        if extra is False:
            return Annotated[dict[str, anything], Field(max_length=0), is_object]
        values = _type_of(extra, f"{path}/additionalProperties", anything)
        return Annotated[dict[str, values], is_object]  # type: ignore[valid-type]
    if not isinstance(extra, bool):
        raise SchemaError(f"{path}/additionalProperties",
                          "must be a boolean when 'properties' are given")
    fields: dict[str, Any] = {}
    for i, (prop, sub) in enumerate(props.items()):
        t = _type_of(sub, f"{path}/properties/{prop}", anything)
        if prop in required:
            fields[f"f{i}"] = (t, Field(alias=prop))
        else:
            fields[f"f{i}"] = (t, Field(default=None, alias=prop))
    for j, prop in enumerate(r for r in required if r not in props):
        fields[f"r{j}"] = (anything, Field(alias=prop))
    config = ConfigDict(extra="allow" if extra else "forbid", strict=True)
    model = create_model(f"Obj{next(_counter)}", __config__=config, **fields)
    return Annotated[model, is_object]  # no internal model name in messages
