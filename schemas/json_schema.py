"""Compile the JSON Schema subset used by manifests into a Pydantic validator.

Values are checked in strict mode and must be plain JSON values (dict, list, str, int,
float, bool, None): a set or a tuple is refused even where the schema allows anything.

Supported keywords: type (one or a list), properties, required, additionalProperties
(boolean or a schema), items, prefixItems (with minItems covering it, as Pydantic emits
for tuples), minItems, maxItems, minLength, maxLength, pattern, format (strings only:
email, uuid, ipv4, ipv6, date, date-time; see FORMATS), minimum, maximum,
exclusiveMinimum, exclusiveMaximum (finite numbers, whole ones for type integer), enum
and const (scalars), anyOf, oneOf (exactly one branch), allOf, discriminator (beside
oneOf/anyOf), $ref to this document's own definitions (#/$defs/NAME, #/definitions/NAME
or # itself; recursion allowed), $defs and definitions (at the root); annotations
(title, description, default, examples, deprecated, readOnly, writeOnly, $schema, $id,
$comment) are accepted and ignored. So whatever `TypeAdapter(...).json_schema()` emits
for JSON-shaped types compiles. Anything else, including a remote or missing `$ref` and
a `format` Loom does not check, is refused with the JSON path of the keyword, so a
manifest never silently promises a check that is not made.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import itertools
import json
import math
import re
import urllib.parse
from collections.abc import Callable
from typing import Annotated, Any, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    JsonValue,
    PlainValidator,
    PydanticSchemaGenerationError,
    PydanticUserError,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    create_model,
)
from pydantic_core import PydanticCustomError, core_schema
from pydantic_core import SchemaError as PydanticCoreSchemaError

ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment",
               "deprecated", "readOnly", "writeOnly"}
CHECKS = ("type", "properties", "required", "additionalProperties", "items", "minItems",
          "maxItems", "minLength", "maxLength", "pattern", "format", "minimum", "maximum",
          "exclusiveMinimum", "exclusiveMaximum", "enum", "const", "anyOf", "oneOf", "allOf",
          "discriminator", "prefixItems", "$ref", "$defs", "definitions")
COMPOSITION = {"$ref", "allOf", "anyOf", "oneOf", "discriminator", "$defs", "definitions"}
DEFS = ("$defs", "definitions")
KEYWORDS = ANNOTATIONS | set(CHECKS)
MAX_COUNT = 2 ** 63 - 1
"""The largest minLength/maxLength/minItems/maxItems accepted (Pydantic keeps them in
a 64-bit size; the fast path treats 2**63 - 1 as "no limit")."""
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
    except RecursionError:
        raise SchemaError("#", "nests too deeply") from None
    try:
        return _compiled(key, parsed_json)
    except SchemaError:
        raise
    except RecursionError:
        raise SchemaError("#", "nests too deeply") from None
    except (PydanticCoreSchemaError, PydanticUserError, OverflowError) as exc:
        # A backstop: the checks above should refuse whatever Pydantic cannot build.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(exc).__name__
        raise SchemaError("#", f"cannot be compiled into a validator ({reason})") from None


@functools.lru_cache(maxsize=1024)
def _compiled(key: str, parsed_json: bool) -> TypeAdapter[Any]:
    return _Compiler(json.loads(key), Any if parsed_json else JsonValue).compile()


def _strict(adapter: TypeAdapter[Any]) -> Callable[[Any], Any]:
    def validate(value: Any) -> Any:
        # A ValidationError raised inside a validator keeps its locations; the outer
        # validators prefix them with theirs, so nested errors still read `lines.2.qty`.
        return adapter.validate_python(value, strict=True)
    return validate


class _Compiler:
    """Compiles one schema document; `$ref`s resolve against its root `$defs`.

    A definition is compiled once and its type inlined wherever it is referenced, so a
    nested model costs what the same schema written out flat costs. A reference back to
    a definition still being compiled (recursion) becomes a validator that looks the
    finished definition's adapter up at validation time, so compiling terminates and
    only recursive positions pay a Python call.
    """

    def __init__(self, root: Any, anything: Any) -> None:
        self.root = root
        self.anything = anything
        self.done: dict[str, Any] = {}
        self.active: set[str] = set()
        self.late: dict[str, TypeAdapter[Any]] = {}
        self.wanted_late: set[str] = set()

    def compile(self) -> TypeAdapter[Any]:
        if isinstance(self.root, dict):
            for key in DEFS:
                defs = self.root.get(key)
                if defs is None:
                    continue
                if not isinstance(defs, dict):
                    raise SchemaError(f"#/{key}", "must be an object")
                for name in defs:  # a broken definition is refused even if unused
                    where = f"#/{key}/{_escape(name)}"
                    self.ref(where, where)
        root = self.ref("#", "#")
        for ref in self.wanted_late:
            self.late[ref] = TypeAdapter(self.done[ref])
        return TypeAdapter(root)

    # -- references ------------------------------------------------------------------------

    def ref(self, ref: Any, path: str) -> Any:
        key, target = self.resolve(ref, path)
        if key in self.done:
            return self.done[key]
        if key in self.active:
            self.wanted_late.add(key)
            late = self.late

            def recurse(value: Any) -> Any:
                return late[key].validate_python(value, strict=True)
            return Annotated[self.anything, PlainValidator(recurse)]
        self.active.add(key)
        try:
            compiled = self.type_of(target, key, root=key == "#")
        finally:
            self.active.discard(key)
        self.done[key] = compiled
        return compiled

    def resolve(self, ref: Any, path: str) -> tuple[str, Any]:
        """(canonical reference, target schema), or SchemaError naming `path`."""
        if not isinstance(ref, str):
            raise SchemaError(path, "must be a string")
        if ref == "#":
            return ref, self.root
        parts = ref.split("/")
        if not ref.startswith("#/") or len(parts) != 3 or parts[1] not in DEFS:
            raise SchemaError(path, f"{json.dumps(ref)}: only local references to this "
                              "document's definitions (#/$defs/NAME or #/definitions/NAME) "
                              "are supported; remote and nested references are not fetched")
        name = urllib.parse.unquote(parts[2]).replace("~1", "/").replace("~0", "~")
        defs = self.root.get(parts[1]) if isinstance(self.root, dict) else None
        if not isinstance(defs, dict) or name not in defs:
            raise SchemaError(path, f"{json.dumps(ref)}: no such definition")
        return f"#/{parts[1]}/{_escape(name)}", defs[name]

    def definition(self, schema: Any, path: str) -> Any:
        """Follow `$ref`s (for reading discriminator tags); None if not an object."""
        seen: set[str] = set()
        while isinstance(schema, dict) and "$ref" in schema and schema["$ref"] not in seen:
            seen.add(schema["$ref"])
            schema = self.resolve(schema["$ref"], f"{path}/$ref")[1]
        return schema if isinstance(schema, dict) else None

    # -- one schema ------------------------------------------------------------------------

    def type_of(self, schema: Any, path: str, root: bool = False) -> Any:
        if schema is True or schema == {}:
            return self.anything
        if not isinstance(schema, dict):
            raise SchemaError(path, "must be an object or true")
        unknown = sorted(set(schema) - KEYWORDS)
        if unknown:
            raise SchemaError(f"{path}/{unknown[0]}", f"keyword is not supported ({SUPPORTED})")
        if not root:
            for key in DEFS:
                if key in schema:
                    raise SchemaError(f"{path}/{key}", "definitions are only supported at "
                                      "the root of input_schema / output_schema")
        if "discriminator" in schema and not ({"oneOf", "anyOf"} & set(schema)):
            raise SchemaError(f"{path}/discriminator", "needs 'oneOf' or 'anyOf' beside it")
        # Every keyword applies (JSON Schema 2020-12, also beside $ref): the value must
        # pass each part, so several parts compile to their intersection.
        parts: list[Any] = []
        if "$ref" in schema:
            parts.append(self.ref(schema["$ref"], f"{path}/$ref"))
        if "allOf" in schema:
            parts.extend(self.type_of(s, f"{path}/allOf/{i}")
                         for i, s in enumerate(_branches(schema, "allOf", path)))
        if "anyOf" in schema:
            parts.append(self.choice(schema, "anyOf", path))
        if "oneOf" in schema:
            parts.append(self.choice(schema, "oneOf", path))
        own = self.own(schema, path)
        if own is not _NO_CHECK:
            parts.insert(0, own)
        if not parts:
            return self.anything
        return _all_of(parts)

    def own(self, schema: dict[str, Any], path: str) -> Any:
        """The type for `type`, `const`/`enum` and the constraints; _NO_CHECK if none."""
        values: list[Any] | None = None
        if "const" in schema:
            values = [_scalar(schema["const"], f"{path}/const")]
        elif "enum" in schema:
            options = schema["enum"]
            if not isinstance(options, list) or not options:
                raise SchemaError(f"{path}/enum", "must be a non-empty array")
            values = [_scalar(v, f"{path}/enum") for v in options]
        kinds = schema.get("type")
        if kinds is None:
            if set(schema) - ANNOTATIONS - COMPOSITION - {"const", "enum"}:
                raise SchemaError(path, "constraints need a 'type'")
            return _NO_CHECK if values is None else _one_of_values(values, self.anything)
        if "format" in schema and "string" not in (kinds if isinstance(kinds, list) else [kinds]):
            raise SchemaError(f"{path}/format", "format applies to strings only; with type "
                              f"{json.dumps(kinds)} it would not be checked")
        if isinstance(kinds, list):
            if not kinds:
                raise SchemaError(f"{path}/type", "must not be empty")
            typed = _any_of([self.single(schema, k, path) for k in kinds], "type")
        else:
            typed = self.single(schema, kinds, path)
        return typed if values is None else _one_of_values(values, typed)

    def choice(self, schema: dict[str, Any], keyword: str, path: str) -> Any:
        options = _branches(schema, keyword, path)
        types = [self.type_of(s, f"{path}/{keyword}/{i}") for i, s in enumerate(options)]
        tags = self.tags(schema, keyword, options, path)
        if tags is not None:
            return _tagged(tags[0], {tag: types[i] for tag, i in tags[1].items()})
        if keyword == "anyOf":
            return _any_of(types, keyword)
        return _one_of(types)

    def tags(self, schema: dict[str, Any], keyword: str, options: list[Any], path: str
             ) -> tuple[str, dict[Any, int]] | None:
        """(property, tag -> branch) when every branch requires a distinct constant tag.

        Then at most one branch can match, so oneOf and anyOf mean the same and validation
        goes straight to the tagged branch. Otherwise None; the discriminator is then
        only a hint and the keyword's own semantics apply.
        """
        spec = schema.get("discriminator")
        if spec is None:
            return None
        where = f"{path}/discriminator"
        if not isinstance(spec, dict) or not isinstance(spec.get("propertyName"), str) \
                or set(spec) - {"propertyName", "mapping"}:
            raise SchemaError(where, "must be {\"propertyName\": NAME} with an optional "
                              "\"mapping\" of tag to $ref")
        mapping = spec.get("mapping", {})
        if not isinstance(mapping, dict):
            raise SchemaError(f"{where}/mapping", "must be an object")
        for tag, ref in mapping.items():
            self.resolve(ref, f"{where}/mapping/{_escape(str(tag))}")
        name = spec["propertyName"]
        found: dict[Any, int] = {}
        for i, option in enumerate(options):
            branch = self.definition(option, f"{path}/{keyword}/{i}")
            if branch is None or name not in branch.get("required", []):
                return None
            prop = self.definition(branch.get("properties", {}).get(name),
                                   f"{path}/{keyword}/{i}/properties/{_escape(name)}")
            if prop is None:
                return None
            tag = prop["const"] if "const" in prop else (
                prop["enum"][0] if isinstance(prop.get("enum"), list)
                and len(prop["enum"]) == 1 else _NO_TAG)
            if not isinstance(tag, str) or tag in found:
                return None
            found[tag] = i
        return name, found

    def single(self, schema: dict[str, Any], kind: Any, path: str) -> Any:
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
                return Annotated[text,
                                 AfterValidator(_format(schema["format"], f"{path}/format"))]
            return text
        if kind in ("integer", "number"):
            base: type = int if kind == "integer" else float
            return Annotated[base, Field(
                ge=_num(schema, "minimum", path, kind), le=_num(schema, "maximum", path, kind),
                gt=_num(schema, "exclusiveMinimum", path, kind),
                lt=_num(schema, "exclusiveMaximum", path, kind))]
        if kind == "boolean":
            return bool
        if kind == "null":
            return None
        if kind == "array":
            if "prefixItems" in schema:
                return self.tuple(schema, path)
            item = self.type_of(schema.get("items", True), f"{path}/items")
            return Annotated[list[item], Field(  # type: ignore[valid-type]
                min_length=_count(schema, "minItems", path),
                max_length=_count(schema, "maxItems", path))]
        if kind == "object":
            return self.object(schema, path)
        raise SchemaError(f"{path}/type", f"unknown type {kind!r}")

    def tuple(self, schema: dict[str, Any], path: str) -> Any:
        prefix = _branches(schema, "prefixItems", path)
        low = _count(schema, "minItems", path) or 0
        if low < len(prefix):
            raise SchemaError(f"{path}/prefixItems", f"needs minItems >= {len(prefix)} (as "
                              "Pydantic emits for tuples): shorter arrays are not supported")
        types = [self.type_of(s, f"{path}/prefixItems/{i}") for i, s in enumerate(prefix)]
        rest = schema.get("items", True)
        tail = None if rest is False else self.type_of(rest, f"{path}/items")
        return Annotated[list[self.anything], Field(  # type: ignore[name-defined]
            min_length=low, max_length=_count(schema, "maxItems", path)),
            _Tuple(types, tail)]

    def object(self, schema: dict[str, Any], path: str) -> Any:
        props = schema.get("properties", {})
        required = schema.get("required", [])
        extra = schema.get("additionalProperties", True)
        if not isinstance(props, dict):
            raise SchemaError(f"{path}/properties", "must be an object")
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise SchemaError(f"{path}/required", "must be an array of strings")
        missing = [r for r in required if r not in props]
        if missing and extra is False:
            raise SchemaError(f"{path}/required", f"{missing[0]!r} is not among the properties")
        is_object = BeforeValidator(_require_object)  # "must be a JSON object, not an array"
        values = self.anything if isinstance(extra, bool) else self.type_of(
            extra, f"{path}/additionalProperties")
        if not props and not required:
            if extra is False:
                return Annotated[dict[str, self.anything],  # type: ignore[name-defined]
                                 Field(max_length=0), is_object]
            return Annotated[dict[str, values], is_object]  # type: ignore[valid-type]
        fields: dict[str, Any] = {}
        for i, (prop, sub) in enumerate(props.items()):
            t = self.type_of(sub, f"{path}/properties/{_escape(prop)}")
            if prop in required:
                fields[f"f{i}"] = (t, Field(alias=prop))
            else:
                fields[f"f{i}"] = (t, Field(default=None, alias=prop))
        for j, prop in enumerate(missing):
            fields[f"r{j}"] = (values, Field(alias=prop))
        config = ConfigDict(extra="forbid" if extra is False else "allow", strict=True)
        model = create_model(f"Obj{next(_counter)}", __config__=config, **fields)
        if extra is False or (extra is True and self.anything is Any):
            return Annotated[model, is_object]  # no internal model name in messages
        # Properties not listed: each value must match additionalProperties (true: be JSON,
        # unless the values came from a JSON parser).
        check = _strict(TypeAdapter(dict[str, values]))  # type: ignore[valid-type]

        def others(obj: BaseModel) -> BaseModel:
            check(obj.__pydantic_extra__ or {})
            return obj
        return Annotated[model, is_object, AfterValidator(others)]



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


def _num(schema: dict[str, Any], key: str, path: str, kind: str) -> int | float | None:
    """A numeric bound that fits `kind`: finite, and for "integer" a whole number (1.0 is
    taken as 1: JSON does not tell them apart), for "number" within a float's range."""
    v = schema.get(key)
    if v is None:
        return None
    where = f"{path}/{key}"
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SchemaError(where, f"must be a number, not {_kind(v)}")
    if isinstance(v, float) and not math.isfinite(v):
        raise SchemaError(where, "must be a finite number")
    if kind == "integer":
        if isinstance(v, float) and not v.is_integer():
            raise SchemaError(where, f"must be a whole number for type \"integer\", not {v!r}")
        return int(v)
    try:
        float(v)
    except OverflowError:
        raise SchemaError(where, "is out of range for type \"number\" (a 64-bit float)") from None
    return v


def _count(schema: dict[str, Any], key: str, path: str) -> int | None:
    v = schema.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        raise SchemaError(f"{path}/{key}", "must be a non-negative integer, not "
                          f"{json.dumps(v) if isinstance(v, int | float) else _kind(v)}")
    if v is not None and v > MAX_COUNT:
        raise SchemaError(f"{path}/{key}", f"must be at most {MAX_COUNT}")
    return v


_NO_TAG = object()
_NO_CHECK = object()  # (`None` is the type of JSON null)


def _escape(name: str) -> str:
    """A JSON-pointer segment (RFC 6901)."""
    return name.replace("~", "~0").replace("/", "~1")


def _branches(schema: dict[str, Any], keyword: str, path: str) -> list[Any]:
    options = schema[keyword]
    if not isinstance(options, list) or not options:
        raise SchemaError(f"{path}/{keyword}", "must be a non-empty array")
    return options


def _all_of(parts: list[Any]) -> Any:
    """The value must pass every part; the first part's errors are reported first."""
    if len(parts) == 1:
        return parts[0]
    others = [_strict(TypeAdapter(p)) for p in parts[1:]]

    def every(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        out = handler(value)
        for check in others:
            check(value)
        return out
    return Annotated[parts[0], WrapValidator(every)]


def _any_of(types: list[Any], keyword: str) -> Any:
    """At least one branch must match (a Pydantic union, which is exactly anyOf).

    A failing union reports every branch's errors under a location naming the branch's
    internal type; instead the errors of the branch that got furthest are reported, so
    paths stay `lines.2.qty`.
    """
    if len(types) == 1:
        return types[0]
    union: Any = Union[tuple(types)]  # noqa: UP007
    if len(types) == 2 and None in types:
        return union  # Optional: Pydantic reports the other branch's errors cleanly
    checks = [_strict(TypeAdapter(t)) for t in types]

    def explain(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise _closest(value, checks, keyword) from None
    return Annotated[union, WrapValidator(explain)]


def _one_of(types: list[Any]) -> Any:
    """Exactly one branch must match.

    Not a Pydantic union: unions are smart-mode, they return the best-matching branch
    and never say that a value also fits another one, so a value matching two branches
    would pass. Instead every branch is tried (stopping at the second match) and a value
    that two branches accept is refused, naming them.
    """
    if len(types) == 1:
        return types[0]
    checks = [_strict(TypeAdapter(t)) for t in types]

    def exactly_one(value: Any) -> Any:
        matched: list[int] = []
        result = None
        for i, check in enumerate(checks):
            try:
                out = check(value)
            except ValidationError:
                continue
            if not matched:
                result = out
            matched.append(i)
            if len(matched) == 2:
                raise PydanticCustomError(
                    "one_of", "matches oneOf branches {first} and {second}; exactly one "
                    "must match", {"first": matched[0], "second": matched[1]})
        if matched:
            return result
        raise _closest(value, checks, "oneOf")
    return Annotated[Any, PlainValidator(exactly_one)]


def _tagged(name: str, branches: dict[Any, Any]) -> Any:
    """A discriminated union: the tag property picks the only branch that can match."""
    checks = {tag: _strict(TypeAdapter(t)) for tag, t in branches.items()}
    shown = ", ".join(json.dumps(t) for t in checks)

    def dispatch(value: Any) -> Any:
        _require_object(value)
        if name not in value:
            raise ValidationError.from_exception_data("tagged", [{
                "type": "missing", "loc": (name,), "input": value}])
        check = checks.get(value[name]) if isinstance(value[name], str) else None
        if check is None:
            raise ValidationError.from_exception_data("tagged", [{
                "type": PydanticCustomError("tag", "must be one of {tags}", {"tags": shown}),
                "loc": (name,), "input": value[name]}])
        return check(value)
    return Annotated[Any, PlainValidator(dispatch)]


def _closest(value: Any, checks: list[Callable[[Any], Any]], keyword: str) -> Exception:
    """The errors of the branch that got deepest into `value`, or one error at its root."""
    failures: list[ValidationError] = []
    for check in checks:
        try:
            check(value)
        except ValidationError as exc:
            failures.append(exc)
    if len(failures) < len(checks):  # cannot happen for a failed union; be safe
        return PydanticCustomError(keyword, "does not match {keyword}", {"keyword": keyword})

    def depth(exc: ValidationError) -> tuple[int, int]:
        errors = exc.errors()
        return min(len(e["loc"]) for e in errors), -len(errors)

    best = max(failures, key=depth)
    if depth(best)[0] > 0:
        return best
    reasons = "; ".join(dict.fromkeys(exc.errors()[0]["msg"] for exc in failures))
    return PydanticCustomError(keyword, "matches no branch of {keyword} ({reasons})",
                               {"keyword": keyword, "reasons": reasons})


class _Tuple:
    """prefixItems: validates a JSON array as a tuple of positions plus a rest."""

    def __init__(self, types: list[Any], rest: Any) -> None:
        self.types = types
        self.rest = rest

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler
                                     ) -> core_schema.CoreSchema:
        items = [handler.generate_schema(t) for t in self.types]
        if self.rest is not None:
            items.append(handler.generate_schema(self.rest))
        shape = core_schema.tuple_schema(
            items, variadic_item_index=len(self.types) if self.rest is not None else None,
            strict=True)
        return core_schema.chain_schema([
            handler(source),  # a JSON array with the length limits
            core_schema.no_info_plain_validator_function(tuple),
            core_schema.no_info_after_validator_function(list, shape)])
