"""Manifest validation (errors name the field) and the JSON Schema subset compiler."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from runtime import errors
from runtime.executor import parse_manifest
from schemas.json_schema import SchemaError, compile_schema
from schemas.manifest import ActivityManifest, semver_key

SHA = "ab" * 32


def base(**fields: Any) -> dict[str, Any]:
    return {"name": "greet", "version": "1.0.0", "sha256": SHA, **fields}


def invalid(raw: Any, *paths: str) -> errors.ManifestInvalid:
    """parse_manifest must fail with ManifestInvalid naming every path in `paths`."""
    with pytest.raises(errors.LoomError) as info:
        parse_manifest(raw)
    exc = info.value
    assert type(exc) is errors.ManifestInvalid, f"{type(exc).__name__}: {exc}"
    assert exc.code.value == "manifest_invalid"
    assert exc.retryable is False
    for path in paths:
        assert path in exc.message, f"{path!r} not in {exc.message!r}"
    return exc


# -- the valid baseline ------------------------------------------------------------------------

def test_minimal_manifest_gets_safe_defaults() -> None:
    m = parse_manifest(base())
    assert isinstance(m, ActivityManifest)
    assert m.ref == "greet@1.0.0"
    assert m.abi.value == "core-v1"
    caps = m.capabilities
    assert (caps.env, caps.secrets, caps.dirs, caps.http, caps.log, caps.clock) == (
        [], [], [], None, False, False)
    assert m.reuse_instances is False
    assert m.limits.fuel is None
    assert m.input_schema == {"type": "object"}


def test_full_manifest_round_trips() -> None:
    raw = base(
        abi="wasi-command", description="says hello",
        input_schema={"type": "object", "properties": {"who": {"type": "string"}},
                      "required": ["who"], "additionalProperties": False},
        capabilities={"env": ["REGION"], "secrets": ["API_TOKEN"], "log": True, "clock": True,
                      "dirs": [{"host_path": "/srv/data", "guest_path": "/data"}],
                      "http": {"allow": [{"host": "api.example.com"},
                                         {"scheme": "http", "host": "10.0.0.1", "port": 8080}],
                               "allow_private": True, "max_requests": 3}},
        limits={"memory_bytes": 1 << 20, "timeout_ms": 100, "fuel": 1000,
                "stack_bytes": 64 * 1024, "max_log_bytes": 0},
        retry={"max_attempts": 5, "non_retryable": ["input_invalid"]},
        reuse_instances=True)
    m = parse_manifest(raw)
    assert m.capabilities.http is not None
    assert [t.effective_port() for t in m.capabilities.http.allow] == [443, 8080]
    again = parse_manifest(m.model_dump_json())
    assert again == m
    assert parse_manifest(json.dumps(raw)) == m


def test_manifest_is_immutable() -> None:
    m = parse_manifest(base())
    with pytest.raises(ValidationError):
        m.version = "2.0.0"  # type: ignore[misc]


def test_not_json_text() -> None:
    invalid("{not json", "not valid JSON", "line 1")


# -- field errors name the field ---------------------------------------------------------------

@pytest.mark.parametrize("raw, path", [
    (base(colour="blue"), "colour"),
    (base(limits={"memory": 1}), "limits.memory"),
    (base(capabilities={"network": True}), "capabilities.network"),
    (base(capabilities={"http": {"allow": [{"host": "a.com", "path": "/x"}]}}),
     "capabilities.http.allow.0.path"),
    (base(retry={"tries": 3}), "retry.tries"),
], ids=["top", "limits", "capabilities", "http-target", "retry"])
def test_unknown_fields_rejected(raw: dict[str, Any], path: str) -> None:
    exc = invalid(raw, path, "unknown field (allowed here: ")
    assert "Extra inputs" not in exc.message


@pytest.mark.parametrize("field", ["memory_bytes", "timeout_ms", "fuel", "max_input_bytes",
                                   "max_output_bytes", "host_call_timeout_ms"])
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_limits_rejected(field: str, value: int) -> None:
    invalid(base(limits={field: value}), f"limits.{field}")


@pytest.mark.parametrize("limits, path", [
    ({"max_log_bytes": -1}, "limits.max_log_bytes"),
    ({"stack_bytes": 1024}, "limits.stack_bytes"),
    ({"stack_bytes": 64 * 1024 * 1024}, "limits.stack_bytes"),
    ({"memory_bytes": 5 * 1024 ** 3}, "limits.memory_bytes"),
    ({"timeout_ms": "soon"}, "limits.timeout_ms"),
])
def test_other_limit_bounds(limits: dict[str, Any], path: str) -> None:
    invalid(base(limits=limits), path)


def test_several_errors_are_all_named() -> None:
    exc = invalid(base(name="Bad Name", limits={"timeout_ms": 0, "memory_bytes": -5}),
                  "name", "limits.timeout_ms", "limits.memory_bytes")
    assert {tuple(d["loc"]) for d in exc.details} == {
        ("name",), ("limits", "timeout_ms"), ("limits", "memory_bytes")}


@pytest.mark.parametrize("version", ["1.0", "01.0.0", "v1.0.0", "1.0.0.0", "1.02.0", "1.0.0-",
                                     "1.0.0-01", "1.0.0+", " 1.0.0", "1.0.0 ", "", "latest"])
def test_bad_semver(version: str) -> None:
    invalid(base(version=version), "version", "semantic version")


def test_bug_version_with_trailing_newline() -> None:
    invalid(base(version="1.0.0\n"), "version")


@pytest.mark.parametrize("version", ["0.0.0", "1.0.0", "10.20.30", "1.0.0-alpha",
                                     "1.0.0-alpha.1", "1.0.0-0.3.7", "1.0.0-x-y.z", "1.0.0+build.1",
                                     "1.0.0-rc.1+sha.5114f85"])
def test_good_semver(version: str) -> None:
    assert parse_manifest(base(version=version)).version == version


def test_semver_key_precedence() -> None:
    assert semver_key("1.10.0") > semver_key("1.9.0")
    assert semver_key("2.0.0") > semver_key("1.99.99")
    assert semver_key("1.0.0-rc.1") < semver_key("1.0.0")
    assert semver_key("1.0.0-2") < semver_key("1.0.0-10")
    assert semver_key("1.0.0-10") < semver_key("1.0.0-alpha")
    with pytest.raises(ValueError, match="semantic version"):
        semver_key("1.0")


@pytest.mark.parametrize("sha", ["", "abc", "AB" * 32, "ab" * 31, "ab" * 33, "zz" * 32,
                                 "ab" * 31 + "a\n"])
def test_bad_sha256(sha: str) -> None:
    invalid(base(sha256=sha), "sha256")


def test_sha256_is_required() -> None:
    raw = base()
    del raw["sha256"]
    invalid(raw, "sha256", "Field required")


@pytest.mark.parametrize("name", ["", "Greet", "1greet", "-greet", "greet me", "greet.v2",
                                  "g" * 64, "greet\n", "grüß", "greet/../x"])
def test_bad_name(name: str) -> None:
    invalid(base(name=name), "name")


@pytest.mark.parametrize("name", ["g", "greet", "greet-v2", "greet_v2", "g" * 63])
def test_good_name(name: str) -> None:
    assert parse_manifest(base(name=name)).name == name


@pytest.mark.parametrize("schema, json_path", [
    ({"not": {"type": "string"}}, "#/not"),
    ({"$ref": "#/definitions/x"}, "#/$ref"),
    ({"type": "object", "properties": {"x": {"$ref": "#/defs/x"}}}, "#/properties/x/$ref"),
    ({"type": "array", "items": {"type": "string", "format": "email", "allOf": []}},
     "#/items/allOf"),
    ({"anyOf": [{"type": "string"}, {"not": {}}]}, "#/anyOf/1/not"),
    ({"type": "object", "patternProperties": {}}, "#/patternProperties"),
    ({"type": "object", "properties": {"x": {"type": "date"}}}, "#/properties/x/type"),
], ids=["not", "missing-ref", "nested-ref", "items-allOf", "anyOf-not", "patternProperties",
        "unknown-type"])
@pytest.mark.parametrize("field", ["input_schema", "output_schema"])
def test_unsupported_schema_keyword(schema: dict[str, Any], json_path: str, field: str) -> None:
    invalid(base(**{field: schema}), field, json_path)


def test_bug_lookahead_pattern_gives_manifest_invalid() -> None:
    invalid(base(input_schema={"type": "string", "pattern": "^(?!admin)"}),
            "input_schema", "pattern")


@pytest.mark.parametrize("port", [0, -1, 65536, 100_000])
def test_http_target_port_out_of_range(port: int) -> None:
    invalid(base(capabilities={"http": {"allow": [{"host": "a.com", "port": port}]}}),
            "capabilities.http.allow.0.port")


@pytest.mark.parametrize("http, path", [
    ({"allow": []}, "capabilities.http.allow"),
    ({"allow": [{"host": ""}]}, "capabilities.http.allow.0.host"),
    ({"allow": [{"host": "a.com/evil"}]}, "capabilities.http.allow.0.host"),
    ({"allow": [{"host": "a.com", "scheme": "ftp"}]}, "capabilities.http.allow.0.scheme"),
    ({"allow": [{"host": "a.com"}], "timeout_ms": 0}, "capabilities.http.timeout_ms"),
    ({"allow": [{"host": "a.com"}], "max_requests": 0}, "capabilities.http.max_requests"),
])
def test_http_capability_bounds(http: dict[str, Any], path: str) -> None:
    invalid(base(capabilities={"http": http}), path)


@pytest.mark.parametrize("caps, path", [
    ({"env": ["NOT-VALID"]}, "capabilities.env.0"),
    ({"secrets": ["ok", "1bad"]}, "capabilities.secrets.1"),
    ({"dirs": [{"host_path": "/x", "guest_path": "relative"}]},
     "capabilities.dirs.0.guest_path"),
    ({"log": "yes please"}, "capabilities.log"),
])
def test_capability_fields(caps: dict[str, Any], path: str) -> None:
    invalid(base(capabilities=caps), path)


def test_retry_max_interval_below_initial_rejected() -> None:
    invalid(base(retry={"initial_interval_ms": 1000, "max_interval_ms": 500}),
            "retry", "max_interval_ms must be >= initial_interval_ms")
    ok = parse_manifest(base(retry={"initial_interval_ms": 500, "max_interval_ms": 500}))
    assert ok.retry.max_interval_ms == 500


@pytest.mark.parametrize("retry, path", [
    ({"max_attempts": 0}, "retry.max_attempts"),
    ({"backoff_coefficient": 0.5}, "retry.backoff_coefficient"),
    ({"non_retryable": ["no_such_code"]}, "retry.non_retryable.0"),
])
def test_retry_fields(retry: dict[str, Any], path: str) -> None:
    invalid(base(retry=retry), path)


def test_bad_abi() -> None:
    invalid(base(abi="core-v2"), "abi")


# -- the JSON Schema subset compiler -----------------------------------------------------------

def ok(schema: Any, value: Any) -> Any:
    return compile_schema(schema).validate_python(value, strict=True)


def bad(schema: Any, value: Any, loc: tuple[Any, ...] = ()) -> None:
    with pytest.raises(ValidationError) as info:
        compile_schema(schema).validate_python(value, strict=True)
    if loc:
        assert loc in [e["loc"] for e in info.value.errors()], info.value.errors()


@pytest.mark.parametrize("schema, good, wrong", [
    ({"type": "integer"}, [0, -3, 10 ** 20], ["1", True, False, 1.5, None, [1]]),
    ({"type": "number"}, [0, 1.5, -2], ["1.5", True, None]),
    ({"type": "string"}, ["", "x"], [1, None, b"x", True]),
    ({"type": "boolean"}, [True, False], [1, 0, "true", None]),
    ({"type": "null"}, [None], [0, "", False]),
    ({"type": "array"}, [[], [1, "a"]], [(1,), "ab", {}]),
    ({"type": "object"}, [{}, {"a": 1}], [[], "x", None]),
    ({"type": ["string", "null"]}, ["a", None], [1, False]),
    (True, [1, "a", None, {"x": []}], []),
    ({}, [1, "a", None], []),
], ids=["integer", "number", "string", "boolean", "null", "array", "object", "type-list",
        "true", "empty"])
def test_strict_types(schema: Any, good: list[Any], wrong: list[Any]) -> None:
    for value in good:
        assert ok(schema, value) == value
    for value in wrong:
        bad(schema, value)


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "minLength": 1},
                   "age": {"type": "integer", "minimum": 0},
                   "email": {"type": "string"}},
    "required": ["name", "age"],
}


def test_required_and_optional() -> None:
    assert ok(PERSON, {"name": "Ada", "age": 36}) is not None
    ok(PERSON, {"name": "Ada", "age": 36, "email": "a@b.c"})
    bad(PERSON, {"name": "Ada"}, ("age",))
    bad(PERSON, {"age": 3}, ("name",))
    bad(PERSON, {"name": "Ada", "age": 36, "email": None}, ("email",))
    bad(PERSON, {"name": "Ada", "age": "36"}, ("age",))
    bad(PERSON, {"name": "", "age": 1}, ("name",))


def test_additional_properties() -> None:
    ok(PERSON, {"name": "Ada", "age": 1, "extra": [1]})  # open by default
    closed = {**PERSON, "additionalProperties": False}
    bad(closed, {"name": "Ada", "age": 1, "extra": [1]}, ("extra",))
    ok(closed, {"name": "Ada", "age": 1})
    empty_closed = {"type": "object", "additionalProperties": False}
    ok(empty_closed, {})
    bad(empty_closed, {"a": 1})
    typed_map = {"type": "object", "additionalProperties": {"type": "integer"}}
    ok(typed_map, {"a": 1, "b": 2})
    bad(typed_map, {"a": 1, "b": "2"}, ("b",))


def test_required_without_properties() -> None:
    schema = {"type": "object", "required": ["id"]}
    ok(schema, {"id": None, "x": 1})
    bad(schema, {"x": 1}, ("id",))


def test_nested_arrays_and_objects() -> None:
    schema = {
        "type": "object",
        "properties": {"lines": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "properties": {"sku": {"type": "string"},
                           "tags": {"type": "array", "items": {"type": "string"},
                                    "maxItems": 2}},
            "required": ["sku"], "additionalProperties": False}}},
        "required": ["lines"],
    }
    ok(schema, {"lines": [{"sku": "a"}, {"sku": "b", "tags": ["x", "y"]}]})
    bad(schema, {"lines": []}, ("lines",))
    bad(schema, {"lines": [{"sku": "a"}, {"sku": 2}]}, ("lines", 1, "sku"))
    bad(schema, {"lines": [{"sku": "a", "tags": ["x", 3]}]}, ("lines", 0, "tags", 1))
    bad(schema, {"lines": [{"sku": "a", "tags": ["x", "y", "z"]}]}, ("lines", 0, "tags"))
    bad(schema, {"lines": [{"sku": "a", "colour": "red"}]}, ("lines", 0, "colour"))
    matrix = {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
    ok(matrix, [[1, 2.5], []])
    bad(matrix, [[1], ["2"]], (1, 0))


def test_enum_and_const() -> None:
    colour = {"enum": ["red", "green", None, 3]}
    for v in ("red", "green", None, 3):
        assert ok(colour, v) == v
    for v in ("blue", "RED", 4, "3"):
        bad(colour, v)
    const = {"const": "v1"}
    ok(const, "v1")
    bad(const, "v2")


@pytest.mark.parametrize("schema, value", [
    ({"enum": [1, 2]}, True),
    ({"const": 0}, False),
    ({"const": True}, 1),
], ids=["enum-int-gets-true", "const-0-gets-false", "const-true-gets-1"])
def test_bug_enum_const_confuse_bool_and_int(schema: dict[str, Any], value: Any) -> None:
    bad(schema, value)


def test_any_of() -> None:
    schema = {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "integer", "minimum": 10}]}
    ok(schema, "abc")
    ok(schema, 10)
    for v in ("abcd", 9, 10.5, None, True):
        bad(schema, v)


def test_numeric_bounds() -> None:
    inclusive = {"type": "number", "minimum": 1, "maximum": 2}
    for v in (1, 1.5, 2):
        ok(inclusive, v)
    for v in (0.999, 2.001):
        bad(inclusive, v)
    exclusive = {"type": "integer", "exclusiveMinimum": 1, "exclusiveMaximum": 3}
    ok(exclusive, 2)
    for v in (1, 3):
        bad(exclusive, v)


def test_string_constraints() -> None:
    schema = {"type": "string", "minLength": 2, "maxLength": 4, "pattern": "^[a-z]+$"}
    ok(schema, "abcd")
    for v in ("a", "abcde", "ab1"):
        bad(schema, v)
    unanchored = {"type": "string", "pattern": "b"}
    ok(unanchored, "abc")  # JSON Schema patterns search, they are not anchored
    bad(unanchored, "xyz")


def test_array_length() -> None:
    schema = {"type": "array", "minItems": 1, "maxItems": 2}
    ok(schema, [1])
    ok(schema, [1, 2])
    bad(schema, [])
    bad(schema, [1, 2, 3])


def test_annotations_are_ignored() -> None:
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "x",
              "title": "T", "description": "d", "type": "string",
              "examples": ["a"], "default": "a", "deprecated": False}
    ok(schema, "anything")


# Issue 8 item 12: `format: "email"` was accepted and silently not checked.
@pytest.mark.parametrize("fmt, good, bads", [
    ("email", ["ada@example.com", "a.b+c@x-y.example"],
     ["not-an-email", "a@", "@b.c", "a b@c.d", "a@b..c"]),
    ("uuid", ["123e4567-e89b-12d3-a456-426614174000"], ["123e4567", "g" * 36]),
    ("ipv4", ["10.0.0.1"], ["10.0.0.256", "::1", "01.2.3.4"]),
    ("ipv6", ["::1", "fe80::1"], ["10.0.0.1", "::g"]),
    ("date", ["2026-02-28"], ["2026-02-30", "2026-2-1", "20260228"]),
    ("date-time", ["2026-02-28T12:00:00Z", "2026-02-28T12:00:00.5+01:00"],
     ["2026-02-28", "2026-02-28T25:00:00Z", "2026-02-28T12:00:00"]),
])
def test_checked_formats(fmt: str, good: list[str], bads: list[str]) -> None:
    schema = {"type": "string", "format": fmt}
    for value in good:
        ok(schema, value)
    for value in bads:
        bad(schema, value)


def test_a_format_error_says_what_is_expected() -> None:
    adapter = compile_schema({"type": "object", "properties": {
        "to": {"type": "string", "format": "email"}}})
    with pytest.raises(ValidationError) as info:
        adapter.validate_python({"to": "nobody"}, strict=True)
    [err] = info.value.errors()
    assert err["loc"] == ("to",) and "must be an e-mail address" in err["msg"]


@pytest.mark.parametrize("schema, path, words", [
    ({"type": "string", "format": "hostname"}, "#/format", "not checked by Loom"),
    ({"type": "string", "format": 3}, "#/format", "not checked by Loom"),
    ({"type": "integer", "format": "int32"}, "#/format", "strings only"),
    ({"format": "email"}, "#", "need a 'type'"),
])
def test_formats_that_would_not_be_checked_are_refused(schema: Any, path: str,
                                                      words: str) -> None:
    with pytest.raises(SchemaError) as info:
        compile_schema(schema)
    assert info.value.path == path and words in str(info.value)


def test_unsupported_keyword_error_lists_the_supported_ones() -> None:
    with pytest.raises(SchemaError) as info:
        compile_schema({"type": "string", "not": {}})
    text = str(info.value)
    for keyword in ("anyOf", "enum", "pattern", "additionalProperties", "format", "email"):
        assert keyword in text, text


def test_no_internal_model_name_in_object_errors() -> None:
    """Issue 8 item 7: '<root>: ... instance of Obj0' leaked an internal model name."""
    adapter = compile_schema({"type": "object", "properties": {
        "a": {"type": "object", "properties": {"b": {"type": "integer"}}}}})
    for value, loc in (([1], ()), ({"a": 3}, ("a",)), ({"a": "x"}, ("a",))):
        with pytest.raises(ValidationError) as info:
            adapter.validate_python(value, strict=True)
        [err] = info.value.errors()
        assert err["loc"] == loc and err["msg"].startswith("must be a JSON object, not ")
        assert "Obj" not in err["msg"]


@pytest.mark.parametrize("schema, path", [
    ({"oneOf": []}, "#/oneOf"),
    ({"type": "object", "properties": {"a": {"not": {}}}}, "#/properties/a/not"),
    ({"type": "array", "items": {"type": "wat"}}, "#/items/type"),
    ({"minimum": 3}, "#"),
    ({"enum": []}, "#/enum"),
    ({"enum": [{"a": 1}]}, "#/enum"),
    ({"const": [1]}, "#/const"),
    ({"anyOf": {}}, "#/anyOf"),
    ({"type": []}, "#/type"),
    ({"type": "string", "pattern": "("}, "#/pattern"),
    ({"type": "string", "minLength": -1}, "#/minLength"),
    ({"type": "string", "maxLength": 1.5}, "#/maxLength"),
    ({"type": "integer", "minimum": "0"}, "#/minimum"),
    ({"type": "integer", "exclusiveMinimum": True}, "#/exclusiveMinimum"),
    ({"type": "object", "properties": []}, "#/properties"),
    ({"type": "object", "required": "a"}, "#/required"),
    ({"type": "object", "properties": {"a": {}}, "required": ["b"],
      "additionalProperties": False}, "#/required"),
    ({"type": "object", "properties": {"a": {}}, "additionalProperties": 3},
     "#/additionalProperties"),
    ("string", "#"),
])
def test_schema_errors_name_the_json_path(schema: Any, path: str) -> None:
    with pytest.raises(SchemaError) as info:
        compile_schema(schema)
    assert info.value.path == path
    assert path in str(info.value)
