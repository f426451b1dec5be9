"""The accept-only validation fast path (schemas/fast_check.py) against plain Pydantic.

For every schema and document: when the fast path accepts, Pydantic accepts too; the
validator with the fast path in front accepts exactly what Pydantic accepts and raises
exactly Pydantic's error (type, path, message) otherwise; and the fast path does accept
the ordinary valid documents (it must serve, not just stay sound). A fast path that
accepts too much fails these tests (see test_the_checks_catch_a_fast_path_that_accepts_too_much).
"""

from __future__ import annotations

import enum
import json
import random
from collections import OrderedDict
from pathlib import Path
from typing import Any

import guests
import pytest
from guests import manifest
from pydantic import TypeAdapter, ValidationError

from runtime import errors
from schemas import fast_check
from schemas.fast_check import Check, Validator, compile_fast, compile_validator, is_json
from schemas.json_schema import compile_schema


class Color(enum.StrEnum):
    RED = "red"


class Level(enum.IntEnum):
    ONE = 1


class MyDict(dict[str, Any]):
    pass


class MyList(list[Any]):
    pass


ITEM = {"type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": "string"},
                                         "tags": {"type": "array", "items": {"type": "string"}},
                                         "active": {"type": "boolean"},
                                         "score": {"type": "number"},
                                         "note": {"type": ["string", "null"]},
                                         "nested": {"type": "object", "properties": {
                                             "k": {"type": "string"}, "n": {"type": "integer"}}}},
        "required": ["id", "name"]}
ORDER = {"type": "object", "properties": {
    "sku": {"type": "string", "minLength": 3, "maxLength": 8, "pattern": "^[A-Z]+-[0-9]+$"},
    "qty": {"type": "integer", "minimum": 1, "maximum": 100},
    "price": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1000},
    "color": {"enum": ["red", "green"]},
    "kind": {"const": "order"},
    "level": {"enum": [1, 2.5, True, None, "x"]},
    "email": {"type": "string", "format": "email"},
    "day": {"type": "string", "format": "date"},
    "label": {"type": "string", "maxLength": 3},
    "codes": {"type": "array", "items": {"type": "integer", "minimum": 0},
              "minItems": 1, "maxItems": 3}},
    "required": ["sku", "qty"], "additionalProperties": False}
TREE = {"$defs": {"Node": {"type": "object", "properties": {
    "value": {"type": "integer"},
    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
    "required": ["value"], "additionalProperties": False}},
    "$ref": "#/$defs/Node"}
TYPED_EXTRAS = {"type": "object", "properties": {"a": {"type": "string"}},
                "required": ["a", "b"], "additionalProperties": {"type": "integer"}}
NUMBERS = {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}}
EMPTY = {"type": "object", "additionalProperties": False}
COMPOSED = {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "integer", "minimum": 10},
                      {"type": "array", "items": {"$ref": "#/definitions/Short"}}],
            "definitions": {"Short": {"type": "string", "maxLength": 1}}}
ALL_OF = {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}},
                    {"type": "object", "required": ["a"]}], "description": "annotated"}
PETS = {"oneOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}],
        "discriminator": {"propertyName": "pet",
                          "mapping": {"cat": "#/$defs/Cat", "dog": "#/$defs/Dog"}},
        "$defs": {"Cat": {"type": "object", "properties": {"pet": {"const": "cat"},
                                                           "lives": {"type": "integer"}},
                          "required": ["pet", "lives"]},
                  "Dog": {"type": "object", "properties": {"pet": {"const": "dog"},
                                                           "good": {"type": "boolean"}},
                          "required": ["pet"], "additionalProperties": False}}}
ONE_OF = {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 0}]}  # not fast
TUPLE = {"type": "array", "prefixItems": [{"type": "string"}], "minItems": 1}  # not fast
NULLABLE = {"type": ["number", "null"], "minimum": 0, "maximum": 2 ** 53}
SHORT = {"type": "string", "maxLength": 3}
BIG_INTS = {"type": "integer", "minimum": -10, "maximum": 2 ** 53}

SCHEMAS: dict[str, Any] = {
    "anything": {}, "true": True, "object": {"type": "object"}, "array": {"type": "array"},
    "item": ITEM, "order": ORDER, "tree": TREE, "typed_extras": TYPED_EXTRAS,
    "numbers": NUMBERS, "empty": EMPTY, "composed": COMPOSED, "all_of": ALL_OF, "pets": PETS,
    "one_of": ONE_OF, "tuple": TUPLE, "nullable": NULLABLE, "short": SHORT,
    "big_ints": BIG_INTS,
}
NOT_FAST = {"one_of", "tuple"}

GOOD: dict[str, list[Any]] = {
    "anything": [None, 1, "x", [1, {"a": [True, None, 2.5]}], {"a": {"b": []}}],
    "true": [{"a": [1, "b"]}, 3.5],
    "object": [{}, {"id": 12345, "name": "bench", "tags": ["alpha"], "nested": {"k": "v"}}],
    "array": [[], [1, "a", None, {"b": [2]}]],
    "item": [{"id": 1, "name": "a"},
             {"id": 12345, "name": "bench", "tags": ["alpha", "beta"], "active": True,
              "score": 3.25, "note": None, "nested": {"k": "v", "n": 7}, "extra": [1]},
             {"id": -5, "name": "", "score": 3, "note": "n", "tags": []}],
    "order": [{"sku": "AB-12", "qty": 1},
              {"sku": "ABCD-123", "qty": 100, "price": 999.5, "color": "green", "kind": "order",
               "level": 2.5, "email": "a@b.co", "day": "2026-01-31", "label": "żół",
               "codes": [0, 7, 9]},
              {"sku": "A-1", "qty": 50, "level": True}, {"sku": "A-1", "qty": 2, "level": 1},
              {"sku": "A-1", "qty": 2, "level": None}, {"sku": "A-1", "qty": 2, "level": 1.0}],
    "tree": [{"value": 1}, {"value": 1, "children": [{"value": 2, "children": []},
                                                     {"value": 3, "children": [{"value": 4}]}]}],
    "typed_extras": [{"a": "x", "b": 1}, {"a": "x", "b": 2, "c": 3}],
    "numbers": [{}, {"a": 1, "b": 2.5, "c": 0}],
    "empty": [{}],
    "composed": ["abc", 10, 2 ** 40, [], ["a", "b"]],
    "all_of": [{"a": 1}, {"a": 2, "b": "anything"}],
    "pets": [{"pet": "cat", "lives": 9}, {"pet": "dog"}, {"pet": "dog", "good": True},
             {"pet": "cat", "lives": 1, "name": "Tom"}],
    "one_of": [1, 2.5],
    "tuple": [["a"], ["a", 1]],
    "nullable": [None, 0, 1.5, 7, 2 ** 53],
    "short": ["", "abc", "żół"],
    "big_ints": [-10, 0, 2 ** 53],
}

BAD: dict[str, list[Any]] = {
    "anything": [(1, 2), {1: "a"}, {"a": {1, 2}}, b"x", [1, (2,)]],
    "object": [[], "x", None, {1: 2}, {"a": (1,)}],
    "item": [{"id": 1}, {"name": "a"}, {"id": "1", "name": "a"}, {"id": 1.0, "name": "a"},
             {"id": True, "name": "a"}, {"id": 1, "name": "a", "tags": ["a", 1]},
             {"id": 1, "name": "a", "tags": ("a",)}, {"id": 1, "name": "a", "active": 1},
             {"id": 1, "name": "a", "score": "3"}, {"id": 1, "name": "a", "score": True},
             {"id": 1, "name": "a", "note": 3}, {"id": 1, "name": "a", "nested": {"n": "7"}},
             {"id": 1, "name": "a", "nested": []}, {"id": 1, "name": None},
             {"id": 1, "name": "a", 5: "x"}],
    "order": [{"sku": "AB-12"}, {"sku": "ab-12", "qty": 1}, {"sku": "A-", "qty": 1},
              {"sku": "ABCDEFG-1", "qty": 1}, {"sku": "AB-12", "qty": 0},
              {"sku": "AB-12", "qty": 101}, {"sku": "AB-12", "qty": 1, "price": 0},
              {"sku": "AB-12", "qty": 1, "price": 1000}, {"sku": "AB-12", "qty": 1, "price": -1},
              {"sku": "AB-12", "qty": 1, "color": "blue"},
              {"sku": "AB-12", "qty": 1, "kind": "Order"}, {"sku": "AB-12", "qty": 1, "level": 2},
              {"sku": "AB-12", "qty": 1, "level": "y"}, {"sku": "AB-12", "qty": 1, "level": 0},
              {"sku": "AB-12", "qty": 1, "level": False},
              {"sku": "AB-12", "qty": 1, "email": "not-an-email"},
              {"sku": "AB-12", "qty": 1, "day": "2026-02-30"},
              {"sku": "AB-12", "qty": 1, "label": "abcd"},
              {"sku": "AB-12", "qty": 1, "label": "\ud800"},
              {"sku": "AB-12", "qty": 1, "codes": []}, {"sku": "AB-12", "qty": 1, "codes": [1] * 4},
              {"sku": "AB-12", "qty": 1, "codes": [-1]}, {"sku": "AB-12", "qty": 1, "extra": 1},
              {"sku": "AB-12", "qty": 1, "price": float("nan")},
              {"sku": "AB-12", "qty": 1, "price": float("inf")},
              {"sku": "AB-12", "qty": 2 ** 63}],
    "tree": [{"value": 1, "children": [{"value": "2"}]},
             {"value": 1, "children": [{"value": 2, "children": [{}]}]},
             {"value": 1, "children": [{"value": 2, "x": 1}]}, {"value": 1, "children": {}}],
    "typed_extras": [{"a": "x"}, {"a": "x", "b": "y"}, {"a": "x", "b": 1, "c": "z"},
                     {"a": 1, "b": 1}, {"a": "x", "b": 1, 2: 3}],
    "numbers": [{"a": -1}, {"a": "1"}, {"a": None}, {"a": float("nan")}, {1: 1}],
    "empty": [{"a": 1}, [], {1: None}],
    "composed": ["abcd", 9, [1], ["ab"], None, 5.0, True, ("a",)],
    "all_of": [{}, {"a": "1"}, {"a": 1.5}],
    "pets": [{"pet": "cat"}, {"pet": "cow"}, {"lives": 9}, {"pet": "dog", "good": 1},
             {"pet": "dog", "name": "Rex"}, {"pet": Color.RED}, [], {"pet": 1}],
    "one_of": [3, "x"],
    "tuple": [[], [1], ("a",)],
    "nullable": [-1, "1", True, float("nan"), 10 ** 30],
    "short": ["abcd", "\ud800", 1],
    "big_ints": [-11, 2 ** 53 + 1, 10 ** 30, -(10 ** 30), 1.0, True],
}

_POOL: list[Any] = [
    None, True, False, 0, 1, -1, 7, 10, 100, 2 ** 53, 2 ** 53 + 1, 2 ** 63, -(2 ** 64),
    10 ** 30, 10 ** 400, 0.0, 1.0,
    2.5, -2.5, 1e300, float("nan"), float("inf"), "", "a", "abc", "abcd", "żółw", "\ud800",
    "AB-12", "red", "green", "order", "cat", "dog", "x", "2026-01-31", "a@b.co",
    (1,), b"x", Color.RED, Level.ONE, MyDict(a=1), MyList([1]), OrderedDict(a=1)]
_KEYS = ["id", "name", "tags", "active", "score", "note", "nested", "k", "n", "sku", "qty",
         "price", "color", "kind", "level", "codes", "label", "value", "children", "a", "b",
         "c", "pet", "lives", "good"]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A value shaped like the schemas' documents, often almost valid, sometimes not JSON."""
    roll = rng.random()
    if depth > 3 or roll < 0.45:
        return rng.choice(_POOL)
    if roll < 0.75:
        return {rng.choice(_KEYS): random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}
    return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]


def as_json(value: Any) -> Any:
    """What a JSON parser would hand over for `value`, or a KeyError if it is not JSON."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        raise KeyError("not JSON") from None


def outcome(validate: Any, value: Any) -> tuple[Any, ...]:
    try:
        validate(value)
    except ValidationError as exc:
        return ("rejected", str(exc),
                [(e["type"], e["loc"], e["msg"]) for e in exc.errors(include_url=False)])
    return ("accepted",)


def accepts(fast: Check, value: Any) -> bool:
    try:
        return fast(value)
    except RecursionError:
        return False


def mismatches(schema: Any, docs: list[Any], parsed_json: bool,
               fast: Check | None) -> list[str]:
    """How `fast` in front of the compiled validator differs from the validator alone."""
    adapter: TypeAdapter[Any] = compile_schema(schema, parsed_json=parsed_json)

    def plain(value: Any) -> None:
        adapter.validate_python(value, strict=True)

    combined = Validator(adapter, fast).validate
    found = []
    for doc in docs:
        expected = outcome(plain, doc)
        if fast is not None and accepts(fast, doc) and expected[0] != "accepted":
            found.append(f"fast path accepts {doc!r}, Pydantic rejects it: {expected[1]}")
        got = outcome(combined, doc)
        if got != expected:
            found.append(f"{doc!r}: {got} != {expected}")
    return found


def documents(name: str, parsed_json: bool, n_random: int = 300) -> list[Any]:
    rng = random.Random(f"{name}-{parsed_json}")
    docs = GOOD.get(name, []) + BAD.get(name, []) + _POOL + [
        random_value(rng) for _ in range(n_random)]
    if not parsed_json:
        return docs
    out = []
    for doc in docs:
        try:
            out.append(as_json(doc))
        except KeyError:
            continue
    return out


@pytest.mark.parametrize("parsed_json", [False, True], ids=["python", "parsed"])
@pytest.mark.parametrize("name", list(SCHEMAS))
def test_fast_path_agrees_with_pydantic(name: str, parsed_json: bool) -> None:
    schema = SCHEMAS[name]
    fast = compile_fast(schema, parsed_json=parsed_json)
    assert (fast is None) == (name in NOT_FAST)
    assert mismatches(schema, documents(name, parsed_json), parsed_json, fast) == []


@pytest.mark.parametrize("parsed_json", [False, True], ids=["python", "parsed"])
@pytest.mark.parametrize("name", sorted(set(SCHEMAS) - NOT_FAST))
def test_fast_path_serves_valid_documents(name: str, parsed_json: bool) -> None:
    """Every GOOD document is valid, and the fast path accepts it without Pydantic."""
    schema = SCHEMAS[name]
    fast = compile_fast(schema, parsed_json=parsed_json)
    assert fast is not None
    adapter = compile_schema(schema, parsed_json=parsed_json)
    for doc in GOOD.get(name, []):
        adapter.validate_python(doc, strict=True)
        assert fast(doc), doc
    for doc in [] if parsed_json else BAD.get(name, []):  # honest: Pydantic rejects each
        with pytest.raises(ValidationError):
            adapter.validate_python(doc, strict=True)
            pytest.fail(f"{doc!r} is valid")


@pytest.mark.parametrize("loose, name", [
    ({k: v for k, v in ORDER.items() if k != "additionalProperties"}, "order"),
    ({**ORDER, "required": ["sku"]}, "order"),
    ({**ORDER, "properties": {**ORDER["properties"], "label": {"type": "string"}}}, "order"),
    ({**ORDER, "properties": {**ORDER["properties"], "color": {"type": "string"}}}, "order"),
    ({**ORDER, "properties": {**ORDER["properties"], "sku": {"type": "string"}}}, "order"),
    ({**ORDER, "properties": {**ORDER["properties"], "qty": {"type": "number"}}}, "order"),
    ({**ITEM, "properties": {**ITEM["properties"], "tags": {"type": "array"}}}, "item"),
    ({"type": "object", "properties": {"value": {"type": "integer"}}}, "tree"),
    ({"type": "object", "required": ["pet"]}, "pets"),
    ({"type": "object"}, "object"),  # parsed_json's: keys and values unchecked
    (True, "true"),  # parsed_json's: accepts all
])
def test_the_checks_catch_a_fast_path_that_accepts_too_much(loose: Any, name: str) -> None:
    """The fast path of a looser schema put in front of the real validator is caught."""
    wrong = compile_fast(loose, parsed_json=loose == SCHEMAS[name])
    assert wrong is not None
    assert mismatches(SCHEMAS[name], documents(name, False), False, wrong)


def _loose_object(self: fast_check._Fast, schema: dict[str, Any]) -> Check:
    return _object(self, {k: v for k, v in schema.items() if k != "additionalProperties"})


_object = fast_check._Fast.object
_number = fast_check._number
MUTANTS: dict[str, tuple[Any, str, Any]] = {
    "string limits ignored": (fast_check._Fast, "string",
                              lambda self, schema: lambda v: type(v) is str),
    "additionalProperties ignored": (fast_check._Fast, "object", _loose_object),
    "enum and const ignored": (fast_check, "_equal_to", lambda values: lambda v: True),
    "number bounds ignored": (fast_check, "_number", lambda schema, kind: _number({}, kind)),
    "array items ignored": (fast_check._Fast, "array",
                            lambda self, schema: lambda v: type(v) is list),
}


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_the_checks_catch_a_broken_fast_path(mutant: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Each deliberately broken fast path compiler is caught by the equivalence checks."""
    owner, attr, broken = MUTANTS[mutant]
    monkeypatch.setattr(owner, attr, broken)
    fast_check._compiled.cache_clear()
    try:
        caught = [n for n in SCHEMAS if mismatches(SCHEMAS[n], documents(n, False), False,
                                                   compile_fast(SCHEMAS[n]))]
    finally:
        monkeypatch.undo()
        fast_check._compiled.cache_clear()
    assert caught


def test_the_checks_catch_a_fast_path_that_accepts_everything() -> None:
    for name in ("object", "item", "order", "short", "empty"):
        assert mismatches(SCHEMAS[name], documents(name, False), False, lambda v: True)


def test_is_json_is_strict_json_value() -> None:
    strict = compile_schema(True)
    for doc in documents("anything", False):
        if is_json(doc):
            strict.validate_python(doc, strict=True)
    assert not is_json((1,)) and not is_json({1: 2}) and not is_json(MyList([1]))
    assert is_json({"a": [1, 2.5, None, True, "x", {"b": []}]})


def test_unhandled_schemas_fall_back_whole() -> None:
    assert compile_fast(ONE_OF) is None and compile_fast(TUPLE) is None
    assert compile_fast({"type": "integer", "minimum": 2 ** 60}) is None  # beyond 2**53
    assert compile_validator(ONE_OF).fast is None


def test_a_failing_fast_path_falls_back() -> None:
    deep: Any = "x"
    for _ in range(5000):  # deeper than Python's recursion limit
        deep = [deep]
    fast = compile_fast(True)
    assert fast is not None
    assert fast(deep) is False  # past MAX_DEPTH it declines (it used to hit RecursionError)
    assert outcome(compile_validator(True).validate, deep) == outcome(
        lambda v: compile_schema(True).validate_python(v, strict=True), deep)


# -- in the executor ------------------------------------------------------------------------

def test_executor_errors_are_pydantics_with_and_without_the_fast_path(tmp_path: Path) -> None:
    bad_output = {"id": 1, "name": "x", "tags": ["a", 2]}
    with guests.executor_at(tmp_path / "home") as ex:
        ex.upload(guests.constant(json.dumps(bad_output)),
                  manifest("typed", input_schema=ITEM, output_schema=ITEM))
        plan = ex._plan(ex.registry.get("typed", "1.0.0"))
        assert plan.input_check.fast is not None and plan.output_check.fast is not None
        seen = []
        for fast in (True, False):
            if not fast:
                plan.input_check.fast = plan.output_check.fast = None
            with pytest.raises(errors.InputInvalid) as bad_in:
                ex.execute("typed", {"id": "1", "name": "a", "nested": {"n": "7"}})
            with pytest.raises(errors.OutputInvalid) as bad_out:
                ex.execute("typed", {"id": 1, "name": "a"})
            seen.append([(e.message, e.details) for e in (bad_in.value, bad_out.value)])
        assert seen[0] == seen[1]
        (in_msg, in_details), (out_msg, out_details) = seen[0]
        assert in_msg == ("input is not JSON matching the schema: id: Input should be a valid "
                          "integer; nested.n: Input should be a valid integer")
        assert [d["loc"] for d in in_details] == [("id",), ("nested", "n")]
        assert out_msg == ("output does not match the schema: tags.1: Input should be a valid "
                           "string")
        assert out_details[0]["type"] == "string_type"


def test_executor_validates_typed_documents_on_the_fast_path(tmp_path: Path) -> None:
    doc = GOOD["item"][1]
    with guests.executor_at(tmp_path / "home") as ex:
        ex.upload(guests.echo(), manifest("typed", input_schema=ITEM, output_schema=ITEM))
        plan = ex._plan(ex.registry.get("typed", "1.0.0"))
        calls = []
        for check in (plan.input_check, plan.output_check):
            fast = check.fast
            assert fast is not None

            def counted(value: Any, fast: Check = fast) -> bool:
                calls.append(fast(value))
                return calls[-1]
            check.fast = counted
        assert ex.execute("typed", doc).output == doc
        assert calls == [True, True]  # neither side needed Pydantic


def _nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [199, 240, 400])
def test_a_value_too_deep_for_a_recursive_schema_is_a_validation_error(depth: int) -> None:
    """A recursive schema ($ref to itself) meets Python's recursion limit long before JSON's
    parsers do: the validator says so as a ValidationError (the executor makes it a typed
    InputInvalid/OutputInvalid), never a bare RecursionError."""
    tree = {"anyOf": [{"type": "integer"}, {"type": "array", "items": {"$ref": "#"}}]}
    check = compile_validator(tree, parsed_json=True)
    check.validate(_nested(100))
    with pytest.raises(ValidationError) as info:
        check.validate(_nested(depth))
    assert info.value.errors()[0]["type"] in ("too_deep", "recursion_loop",
                                              "recursion_depth_exceeded")


@pytest.mark.parametrize("schema", [{}, {"type": "array"}, {"type": "object"}])
@pytest.mark.parametrize("depth", [150, 254, 256, 600])
def test_the_fast_path_leaves_deep_values_to_pydantic(schema: dict[str, Any],
                                                      depth: int) -> None:
    """Pydantic's JsonValue gives up at 255 levels: the fast path, which must never accept
    what Pydantic refuses, stops accepting at MAX_DEPTH and lets Pydantic decide."""
    from schemas.fast_check import MAX_DEPTH, compile_fast

    value: Any = _nested(depth) if schema.get("type") != "object" else {"a": _nested(depth)}
    fast = compile_fast(schema)
    adapter = compile_schema(schema)
    try:
        adapter.validate_python(value, strict=True)
        pydantic_accepts = True
    except ValidationError:
        pydantic_accepts = False
    assert fast is not None
    if fast(value):
        assert pydantic_accepts and depth < MAX_DEPTH
    assert (depth < MAX_DEPTH) == fast(value)


@pytest.mark.parametrize("extra", [{1, 2}, b"x", (1,), enum.Enum("E", "A").A])
def test_extra_properties_must_be_json_too(extra: Any) -> None:
    """With `properties` and additionalProperties true (the default), the properties not
    listed may hold any JSON value, and only JSON: a set, bytes or a tuple from a Python
    caller is refused there as it is everywhere else (slow and fast path alike)."""
    schema = {"type": "object", "properties": {"a": {}}}
    check = compile_validator(schema)
    check.validate({"a": 1, "b": {"c": [1, "x", None]}})
    fast = compile_fast(schema)
    assert fast is not None and fast({"a": 1, "b": [1]})
    assert not fast({"a": 1, "b": extra})
    with pytest.raises(ValidationError) as info:
        check.validate({"a": 1, "b": extra})
    assert info.value.errors()[0]["loc"][0] == "b"
    compile_validator(schema, parsed_json=True).validate({"a": 1, "b": [1]})
