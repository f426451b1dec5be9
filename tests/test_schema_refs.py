"""The manifest schema compiler on what Pydantic emits: $ref/$defs, recursion, unions."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, ValidationError

from schemas.json_schema import SchemaError, compile_schema


def ok(schema: Any, value: Any) -> None:
    compile_schema(schema).validate_python(value, strict=True)


def locs(schema: Any, value: Any) -> list[tuple[Any, ...]]:
    """The error locations of a value the schema must refuse."""
    with pytest.raises(ValidationError) as info:
        compile_schema(schema).validate_python(value, strict=True)
    return [e["loc"] for e in info.value.errors()]


def refused(schema: Any) -> SchemaError:
    with pytest.raises(SchemaError) as info:
        compile_schema(schema)
    return info.value


class Line(BaseModel):
    sku: str
    qty: int = Field(ge=1)


class Invoice(BaseModel):
    lines: list[Line]
    note: str | None = None


def test_a_nested_model_schema_compiles_and_errors_name_the_field_path() -> None:
    schema = Invoice.model_json_schema()
    assert "$ref" in json.dumps(schema)  # the shape this test is about
    lines = [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}, {"sku": "c", "qty": 3}]
    ok(schema, {"lines": lines})
    ok(schema, {"lines": [], "note": None})
    assert locs(schema, {"lines": [*lines[:2], {"sku": "c", "qty": 0}]}) == [("lines", 2, "qty")]
    assert locs(schema, {"lines": [{"sku": 1, "qty": 1}]}) == [("lines", 0, "sku")]
    assert locs(schema, {"lines": [{"sku": "a"}]}) == [("lines", 0, "qty")]
    assert locs(schema, {"lines": "x"}) == [("lines",)]


class Tree(BaseModel):
    value: int
    children: list[Tree] = []


class Even(BaseModel):
    n: int
    next: Odd | None = None


class Odd(BaseModel):
    n: int
    next: Even | None = None


def _chain(depth: int, leaf: Any) -> dict[str, Any]:
    node: dict[str, Any] = {"value": leaf, "children": []}
    for i in range(depth):
        node = {"value": i, "children": [{"value": -1}, node]}
    return node


def test_a_recursive_tree_compiles_and_validates_at_any_depth() -> None:
    schema = Tree.model_json_schema()
    ok(schema, _chain(60, 7))
    where = locs(schema, _chain(3, "x"))
    assert where == [("children", 1, "children", 1, "children", 1, "value")]


def test_mutual_recursion_and_a_reference_to_the_root() -> None:
    schema = Even.model_json_schema()
    ok(schema, {"n": 0, "next": {"n": 1, "next": {"n": 2}}})
    assert locs(schema, {"n": 0, "next": {"n": 1, "next": {"n": "2"}}}) == [
        ("next", "next", "n")]
    root = {"type": "object", "properties": {"name": {"type": "string"},
                                             "parts": {"type": "array", "items": {"$ref": "#"}}},
            "additionalProperties": False}
    ok(root, {"name": "a", "parts": [{"name": "b", "parts": [{}]}]})
    assert locs(root, {"parts": [{"parts": [{"x": 1}]}]}) == [("parts", 0, "parts", 0, "x")]


def test_definitions_and_escaped_names() -> None:
    schema = {"definitions": {"a/b": {"type": "integer"}, "c~d": {"type": "string"}},
              "type": "array", "prefixItems": [{"$ref": "#/definitions/a~1b"},
                                               {"$ref": "#/definitions/c~0d"}],
              "minItems": 2, "items": False}
    ok(schema, [1, "x"])
    assert locs(schema, ["1", "x"]) == [(0,)]
    assert locs(schema, [1, "x", 3]) == [()]


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Pets(BaseModel):
    pets: list[Annotated[Cat | Dog, Field(discriminator="kind")]]


def test_a_discriminated_union_reports_the_tagged_branch() -> None:
    schema = Pets.model_json_schema()
    assert "discriminator" in json.dumps(schema) and "oneOf" in json.dumps(schema)
    ok(schema, {"pets": [{"kind": "cat", "lives": 9}, {"kind": "dog", "good": True}]})
    assert locs(schema, {"pets": [{"kind": "cat", "lives": 9}, {"kind": "dog", "good": 1}]}
                ) == [("pets", 1, "good")]
    assert locs(schema, {"pets": [{"kind": "cow"}]}) == [("pets", 0, "kind")]
    assert locs(schema, {"pets": [{"lives": 1}]}) == [("pets", 0, "kind")]
    assert locs(schema, {"pets": [3]}) == [("pets", 0)]


def test_one_of_refuses_a_value_that_two_branches_accept() -> None:
    schema = {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 10}]}
    ok(schema, 3)
    ok(schema, 10.5)
    with pytest.raises(ValidationError) as info:
        ok(schema, 12)  # an integer and a number >= 10: both branches
    assert "exactly one" in str(info.value)
    assert locs(schema, "x") == [()]
    # The same with anyOf passes: the difference is the point.
    ok({"anyOf": schema["oneOf"]}, 12)


def test_a_discriminator_over_overlapping_branches_keeps_exactly_one() -> None:
    shared = {"type": "object", "properties": {"t": {"type": "string"}}, "required": ["t"]}
    schema = {"oneOf": [shared, shared], "discriminator": {"propertyName": "t"}}
    with pytest.raises(ValidationError):
        ok(schema, {"t": "a"})


def test_any_of_errors_name_the_path_not_the_branch() -> None:
    schema = {"type": "object", "properties": {"x": {"anyOf": [
        {"type": "object", "properties": {"q": {"type": "integer"}}}, {"type": "string"}]}}}
    assert locs(schema, {"x": {"q": "z"}}) == [("x", "q")]
    assert locs(schema, {"x": 3}) == [("x",)]
    assert locs({"type": ["integer", "string"]}, 1.5) == [()]


def test_all_of_and_ref_siblings_are_all_checked() -> None:
    defs = {"Small": {"type": "integer", "maximum": 9}}
    both = {"$defs": defs, "allOf": [{"$ref": "#/$defs/Small"},
                                     {"type": "integer", "minimum": 3}]}
    ok(both, 5)
    assert locs(both, 10) == [()]
    assert locs(both, 2) == [()]
    described = {"$defs": defs, "$ref": "#/$defs/Small", "description": "d", "default": 1}
    ok(described, 1)
    assert locs(described, 10) == [()]
    typed = {"type": "string", "minLength": 2, "anyOf": [{"type": "string"}, {"type": "integer"}]}
    assert locs(typed, 5) == [()]  # `type` beside anyOf is not ignored any more
    assert locs(typed, "a") == [()]


def test_additional_properties_as_a_schema_beside_properties() -> None:
    schema = {"type": "object", "properties": {"id": {"type": "string"}},
              "additionalProperties": {"type": "integer"}}
    ok(schema, {"id": "a", "x": 1, "y": 2})
    assert locs(schema, {"id": "a", "x": 1, "y": "2"}) == [("y",)]
    assert locs(schema, {"id": 1}) == [("id",)]


def test_const_enum_and_null() -> None:
    ok({"const": "a", "type": "string"}, "a")
    assert locs({"const": 1, "type": "integer"}, True) == [()]
    assert locs({"enum": ["r", "g"], "type": "string"}, "b") == [()]
    ok({"type": ["string", "null"]}, None)
    assert locs({"type": "null"}, 0) == [()]


# -- refusals at upload: every one names the JSON path of the offending keyword ----------------

REFUSED = [
    ({"$ref": "http://example.com/s.json"}, "#/$ref", "remote"),
    ({"$ref": "other.json#/$defs/A"}, "#/$ref", "remote"),
    ({"$ref": "#/$defs/Missing", "$defs": {"A": {}}}, "#/$ref", "no such definition"),
    ({"type": "array", "items": {"$ref": "#/definitions/x"}}, "#/items/$ref",
     "no such definition"),
    ({"$ref": "#/properties/a"}, "#/$ref", "only local references"),
    ({"$ref": 3}, "#/$ref", "must be a string"),
    ({"$defs": {"A": {"type": "wat"}}, "type": "string"}, "#/$defs/A/type", "unknown type"),
    ({"$defs": {"A": {"$ref": "#/$defs/B"}}}, "#/$defs/A/$ref", "no such definition"),
    ({"$defs": []}, "#/$defs", "must be an object"),
    ({"type": "object", "properties": {"a": {"$defs": {}, "type": "string"}}},
     "#/properties/a/$defs", "only supported at the root"),
    ({"not": {"type": "string"}}, "#/not", "not supported"),
    ({"if": {}, "then": {}}, "#/if", "not supported"),
    ({"$dynamicRef": "#x"}, "#/$dynamicRef", "not supported"),
    ({"oneOf": []}, "#/oneOf", "non-empty"),
    ({"allOf": {}}, "#/allOf", "non-empty"),
    ({"discriminator": {"propertyName": "t"}, "type": "object"}, "#/discriminator",
     "oneOf"),
    ({"oneOf": [{"type": "object"}], "discriminator": {"name": "t"}}, "#/discriminator",
     "propertyName"),
    ({"oneOf": [{"type": "object"}], "discriminator": {"propertyName": "t",
                                                      "mapping": {"a": "#/$defs/A"}}},
     "#/discriminator/mapping/a", "no such definition"),
    ({"type": "array", "prefixItems": [{"type": "string"}]}, "#/prefixItems", "minItems"),
    ({"anyOf": [{"type": "string"}], "minimum": 1}, "#", "need a 'type'"),
]


@pytest.mark.parametrize("schema, path, words", REFUSED,
                         ids=[f"{i}-{r[1]}" for i, r in enumerate(REFUSED)])
def test_refused_schemas_name_the_path(schema: Any, path: str, words: str) -> None:
    error = refused(schema)
    assert error.path == path, str(error)
    assert words in str(error)


_segment = st.text(alphabet="abcxyz_", min_size=1, max_size=4)


@st.composite
def _nested_bad_ref(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A bad $ref buried under random properties/items/anyOf, and its JSON path."""
    bad = draw(st.sampled_from(["http://x/y.json", "#/$defs/nope", "#/definitions/nope",
                                "#/properties/a", "#/$defs/a/b"]))
    schema: dict[str, Any] = {"$ref": bad}
    path = "$ref"
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["properties", "items", "anyOf", "additionalProperties"]))
        if kind == "properties":
            name = draw(_segment)
            schema, path = ({"type": "object", "properties": {name: schema}},
                            f"properties/{name}/{path}")
        elif kind == "items":
            schema, path = {"type": "array", "items": schema}, f"items/{path}"
        elif kind == "anyOf":
            schema, path = {"anyOf": [{"type": "null"}, schema]}, f"anyOf/1/{path}"
        else:
            schema, path = ({"type": "object", "additionalProperties": schema},
                            f"additionalProperties/{path}")
    return {"$defs": {"a": {"type": "string"}}, **schema}, f"#/{path}"


@settings(max_examples=60, deadline=None)
@given(_nested_bad_ref())
def test_a_bad_reference_anywhere_is_refused_at_its_path(case: tuple[dict[str, Any], str]
                                                        ) -> None:
    schema, path = case
    assert refused(schema).path == path


def test_compiled_schemas_are_shared_and_recursion_is_compiled_once() -> None:
    schema = Tree.model_json_schema()
    assert compile_schema(schema) is compile_schema(json.loads(json.dumps(schema)))
