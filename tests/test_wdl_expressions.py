"""WDL expressions: `{{ path }}` interpolation and the safe condition language.

Interpolation: a string that is exactly one reference keeps the referenced JSON type;
references embedded in text are stringified (strings as-is, other values as JSON).
Conditions: comparisons (chained too), and/or/not, in/not in, literals, unary minus and
paths. Everything else (calls, arithmetic, lambdas, comprehensions, f-strings, ...) is
refused with ExpressionError, and a path only ever indexes JSON dicts and lists.
"""

from __future__ import annotations

from typing import Any

import pytest

from wdl.expressions import (
    ExpressionError,
    compile_expression,
    compile_path,
    evaluate,
    interpolate,
    references,
    roots,
)

SCOPE: dict[str, Any] = {
    "input": {
        "n": 5, "price": 2.5, "flag": True, "off": False, "nothing": None,
        "name": "Ada", "items": [{"sku": "tea", "qty": 2}, {"sku": "mug", "qty": 1}],
        "tags": ["a", "b"], "meta": {"k": "v"},
        "odd": {"with space": 1, "dotted.key": 2, "dash-key": 3, "0": "zero"},
        "empty": [], "nested": {"deep": {"deeper": [10, [20, 30]]}},
    },
    "charge": {"status": 200, "body": {"id": "ch-1", "ok": True}},
    "count": 0,
}


# -- interpolation: types --------------------------------------------------------------------

@pytest.mark.parametrize(("template", "expected"), [
    ("{{ input.n }}", 5),
    ("{{ input.price }}", 2.5),
    ("{{ input.flag }}", True),
    ("{{ input.off }}", False),
    ("{{ input.nothing }}", None),
    ("{{ input.tags }}", ["a", "b"]),
    ("{{ input.meta }}", {"k": "v"}),
    ("{{ input.name }}", "Ada"),
    ("{{ count }}", 0),
    ("{{input.n}}", 5),                      # no spaces
    ("{{   input.n   }}", 5),                # many spaces
    ("  {{ input.n }}  ", 5),                # surrounding whitespace: still whole
    ("{{ charge.status }}", 200),
])
def test_whole_string_reference_keeps_the_json_type(template: str, expected: Any) -> None:
    got = interpolate(template, SCOPE)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(("template", "expected"), [
    ("n={{ input.n }}", "n=5"),
    ("price {{ input.price }} EUR", "price 2.5 EUR"),
    ("flag: {{ input.flag }}", "flag: true"),           # JSON spelling, not Python's True
    ("off: {{ input.off }}", "off: false"),
    ("none: {{ input.nothing }}", "none: null"),
    ("tags={{ input.tags }}", 'tags=["a", "b"]'),
    ("meta={{ input.meta }}", 'meta={"k": "v"}'),
    ("hi {{ input.name }}!", "hi Ada!"),               # strings are not quoted
    ("{{ input.name }} and {{ input.n }} again", "Ada and 5 again"),
    ("no references at all", "no references at all"),
    ("", ""),
])
def test_embedded_references_are_stringified(template: str, expected: str) -> None:
    assert interpolate(template, SCOPE) == expected


def test_nested_structures_are_interpolated_recursively() -> None:
    template = {
        "url": "{{ input.meta.k }}/orders",
        "body": {"amount": "{{ input.n }}", "lines": ["{{ input.items[0] }}", "x{{ input.n }}",
                                                       {"ok": "{{ charge.body.ok }}"}],
                 "literal": 7, "none": None, "yes": True},
        "list": [["{{ input.tags[1] }}"]],
    }
    assert interpolate(template, SCOPE) == {
        "url": "v/orders",
        "body": {"amount": 5, "lines": [{"sku": "tea", "qty": 2}, "x5", {"ok": True}],
                 "literal": 7, "none": None, "yes": True},
        "list": [["b"]],
    }
    assert template["body"]["amount"] == "{{ input.n }}"  # the template is not mutated


@pytest.mark.parametrize("value", [7, 2.5, True, False, None])
def test_non_string_scalars_pass_through(value: Any) -> None:
    assert interpolate(value, SCOPE) is value


def test_interpolated_values_are_independent_of_the_template_keys() -> None:
    # keys are never interpolated: only values
    assert interpolate({"{{ input.n }}": 1}, SCOPE) == {"{{ input.n }}": 1}


@pytest.mark.parametrize("template", [
    "{{ missing }}", "{{ input.missing }}", "{{ input.items[5] }}", "{{ input.tags[0].x }}",
    "x {{ input.meta.nope }} y", {"deep": ["{{ charge.body.nope }}"]},
    "{{ input.n.real }}",                  # an int has no keys (Python attributes unreachable)
    "{{ input.name[0] }}",                 # a string is not indexable
    "{{ input.meta[0] }}",                 # a dict is not indexed by position
    "{{ input.tags['0'] }}",               # a list is not indexed by key
    "{{ input.tags[true] }}",              # a bool is not an index
])
def test_missing_paths_raise_expression_error(template: Any) -> None:
    with pytest.raises(ExpressionError):
        interpolate(template, SCOPE)


def test_error_names_the_missing_path() -> None:
    with pytest.raises(ExpressionError, match=r"input\.meta\.nope does not exist"):
        interpolate("{{ input.meta.nope }}", SCOPE)
    with pytest.raises(ExpressionError, match="'missing' is not defined"):
        interpolate("{{ missing.x }}", SCOPE)


@pytest.mark.parametrize("template", [
    "{{ input.n + 1 }}", "{{ len(input.tags) }}", "{{ input.n > 1 }}", "{{ }}",
    "{{ input. }}", "{{ input.tags[-1] }}", "{{ input.tags[0:1] }}", "{{ input[input.n] }}",
])
def test_reference_must_be_a_plain_path(template: str) -> None:
    with pytest.raises(ExpressionError):
        interpolate(template, SCOPE)


@pytest.mark.parametrize(("template", "expected"), [
    ("{{ input.name }}-{{ input.n }}", "Ada-5"),
    ("{{ input.name }}{{ input.n }}", "Ada5"),
])
def test_two_references_filling_the_whole_string(template: str, expected: str) -> None:
    assert list(references(template)) == [("", "input.name"), ("", "input.n")]  # validation ok
    assert interpolate(template, SCOPE) == expected


# -- paths ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "expected"), [
    ("input.n", 5),
    ("input.items[0].sku", "tea"),
    ("input.items[1]['qty']", 1),
    ('input["items"][1].sku', "mug"),
    ("input['odd']['with space']", 1),
    ("input.odd['dotted.key']", 2),
    ('input.odd["dash-key"]', 3),
    ("input.odd['0']", "zero"),
    ("input.nested.deep.deeper[1][0]", 20),
    ("input['nested']['deep']['deeper'][0]", 10),
    ("charge.body.id", "ch-1"),
])
def test_paths_with_dots_indexes_and_quoted_keys(path: str, expected: Any) -> None:
    assert interpolate("{{ " + path + " }}", SCOPE) == expected
    assert evaluate(path, SCOPE) == expected


def test_roots_are_the_variables_a_path_reads() -> None:
    assert roots(compile_path("input.items[0].sku")) == {"input"}
    assert roots(compile_expression("charge.status == 200 and input.n > count")) == {
        "charge", "input", "count"}
    assert roots(compile_expression("x == true or y != null and not False")) == {"x", "y"}


def test_references_yield_json_pointers() -> None:
    value = {"a": "{{ x.y }}", "b": ["lit", "{{ z }} and {{ w[0] }}"], "c": {"d": 3}}
    assert list(references(value, "/steps/0/input")) == [
        ("/steps/0/input/a", "x.y"), ("/steps/0/input/b/1", "z"), ("/steps/0/input/b/1", "w[0]")]


def test_reference_pointers_escape_slash_and_tilde() -> None:
    assert list(references({"a/b": "{{ x }}", "t~": "{{ y }}"})) == [("/a~1b", "x"),
                                                                     ("/t~0", "y")]


# -- conditions -------------------------------------------------------------------------------

@pytest.mark.parametrize(("expr", "expected"), [
    ("input.n == 5", True),
    ("input.n != 5", False),
    ("input.n > 4", True),
    ("input.n >= 5", True),
    ("input.n < 5", False),
    ("input.n <= 5", True),
    ("input.price == 2.5", True),
    ("input.name == 'Ada'", True),
    ('input.name == "Ada"', True),
    ("charge.status == 200", True),
    ("charge.body.id != 'ch-2'", True),
    # chained comparisons
    ("1 < input.n < 10", True),
    ("1 < input.n < 5", False),
    ("0 <= count < input.n <= 5", True),
    ("5 == input.n == 5.0", True),
    # and / or / not
    ("input.flag and input.n > 1", True),
    ("input.flag and input.off", False),
    ("input.off or input.n == 5", True),
    ("input.off or input.nothing", False),
    ("not input.off", True),
    ("not input.flag", False),
    ("not (input.n > 1 and input.off)", True),
    ("input.off or input.flag and input.n == 5", True),      # and binds tighter than or
    ("(input.off or input.flag) and not count", True),
    # in / not in
    ("input.name in ['Ada', 'Grace']", True),
    ("input.name not in ['Ada', 'Grace']", False),
    ("'a' in input.tags", True),
    ("'z' not in input.tags", True),
    ("'k' in input.meta", True),                              # dict membership: its keys
    ("'d' in input.name", True),                              # substring
    ("input.n in (1, 5)", True),
    ("input.items[0] in input.items", True),
    # literals
    ("true", True),
    ("false", False),
    ("null == input.nothing", True),
    ("input.nothing == null", True),
    ("input.flag == true", True),
    ("input.off == false", True),
    ("True and not False and None == null", True),
    ("input.empty == []", True),
    ("input.tags == ['a', 'b']", True),
    # unary minus
    ("-1 < 0", True),
    ("-input.n == -5", True),
    ("-input.price < -2", True),
    ("- -input.n == 5", True),
    # truthiness of plain values
    ("input.name", "Ada"),
    ("input.empty", []),
    ("count", 0),
])
def test_conditions(expr: str, expected: Any) -> None:
    assert evaluate(expr, SCOPE) == expected


def test_and_or_short_circuit_before_missing_paths() -> None:
    assert evaluate("input.off and input.missing", SCOPE) is False
    assert evaluate("input.flag or input.missing", SCOPE) is True
    with pytest.raises(ExpressionError):
        evaluate("input.flag and input.missing", SCOPE)


def test_chained_comparison_stops_at_the_first_false_link() -> None:
    assert evaluate("input.n < 1 < input.missing", SCOPE) is False


@pytest.mark.parametrize("expr", [
    "input.n < 'x'",                 # int vs str
    "input.tags > 1",
    "input.meta < input.meta",
    "1 in input.n",                  # membership in an int
    "input.missing == 1",
    "missing",
])
def test_bad_comparisons_and_missing_names_raise_expression_error(expr: str) -> None:
    with pytest.raises(ExpressionError):
        evaluate(expr, SCOPE)


@pytest.mark.parametrize("expr", ["-input.name == 1", "-input.tags", "-input.meta",
                                  "-input.nothing"])
def test_unary_minus_on_a_non_number_is_an_expression_error(expr: str) -> None:
    with pytest.raises(ExpressionError):
        evaluate(expr, SCOPE)


# -- refused constructs -----------------------------------------------------------------------

REFUSED = [
    "len(input.tags)",                       # calls
    "input.name.upper()",
    "print('x')",
    "__import__('os').system('true')",
    "lambda: 1",
    "(lambda x: x)(1)",
    "input.n + 1",                           # arithmetic
    "input.n - 1",
    "input.n * 2",
    "input.n / 2",
    "input.n % 2",
    "input.n ** 2",
    "input.name + 'x' == 'Adax'",
    "[x for x in input.tags]",               # comprehensions
    "{x for x in input.tags}",
    "{x: 1 for x in input.tags}",
    "(x for x in input.tags)",
    "f'{input.name}' == 'Ada'",              # f-strings
    "f'{input.__class__}'",
    "input.n if input.flag else 0",          # conditional expressions
    "(y := 1)",                              # walrus
    "{'a': 1} == input.meta",                # dict displays
    "{1, 2}",                                # sets
    "input.tags[0:1]",                       # slices
    "input.tags[-1]",                        # computed index
    "input.tags[input.n]",
    "~input.n",                              # other unary operators
    "+input.n",
    "input.n is 5",                          # identity
    "input.n is not None",
    "b'bytes' == input.name",                # non-JSON literals
    "1j == 1j",
    "... == ...",
    "await input.n",
    "*input.tags",
    "input.n; 1",
    "input.n = 1",
    "",
    "   ",
    "input.",
]


@pytest.mark.parametrize("expr", REFUSED)
def test_refused_constructs_raise_expression_error(expr: str) -> None:
    with pytest.raises(ExpressionError):
        compile_expression(expr)
    with pytest.raises(ExpressionError):
        evaluate(expr, SCOPE)


@pytest.mark.parametrize("path", [
    "input.__class__", "input.__dict__", "input.items.__len__", "charge.body.__class__",
    "input.n.real", "input.name.upper", "input.meta.keys", "input.meta.get", "input.tags.pop",
    "input.__class__.__bases__[0].__subclasses__",
])
def test_attribute_access_never_reaches_python_attributes(path: str) -> None:
    # a path indexes JSON dicts only: dunder or method names are just missing keys
    with pytest.raises(ExpressionError, match="does not exist"):
        evaluate(path, SCOPE)
    with pytest.raises(ExpressionError, match="does not exist"):
        interpolate("{{ " + path + " }}", SCOPE)
    with pytest.raises(ExpressionError):
        evaluate(f"{path} == 1", SCOPE)


def test_a_dict_key_named_like_an_attribute_is_just_a_key() -> None:
    scope = {"input": {"__class__": "mine", "keys": [1], "items": {"x": 1}}}
    assert evaluate("input.__class__ == 'mine'", scope) is True
    assert interpolate("{{ input.keys }}", scope) == [1]
    assert interpolate("{{ input.items.x }}", scope) == 1


@pytest.mark.parametrize("expr", ["a.b(", "a ==", "and", "(", "'unterminated", "a = = b",
                                  "a\x00b"])
def test_syntax_errors_raise_expression_error(expr: str) -> None:
    with pytest.raises(ExpressionError):
        compile_expression(expr)


@pytest.mark.parametrize("path", ["input.n == 1", "not input.n", "[input.n]", "1", "'x'",
                                  "input.n and input.m"])
def test_compile_path_refuses_non_paths(path: str) -> None:
    with pytest.raises(ExpressionError):
        compile_path(path)
