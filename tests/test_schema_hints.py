"""Schemas from a handler's type hints (schemas/hints.py), round-tripped through the compiler."""

from __future__ import annotations

import enum
import json
import sys
import textwrap
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, NotRequired

import pytest
from pydantic import BaseModel, Field, ValidationError
from typing_extensions import TypedDict

from schemas.errors import ErrorCode, GuestSourceError, HintError, SignatureError
from schemas.hints import schemas_for, schemas_for_file
from schemas.json_schema import compile_schema

# -- the issue's example, written as a guest writes it (typing.TypedDict) -----------------------


class Line(typing.TypedDict):
    sku: str
    qty: int
    unit_cents: int


class Invoice(typing.TypedDict):
    lines: list[Line]
    discount_pct: int


class Total(typing.TypedDict):
    total_cents: int


def invoice_total(invoice: Invoice) -> Total:
    raise NotImplementedError


# -- a dozen other realistic shapes ------------------------------------------------------------


@dataclass
class Address:
    street: str
    city: str
    zip: str | None = None


@dataclass
class Customer:
    name: str
    addresses: list[Address] = field(default_factory=list)


class Priority(enum.Enum):
    LOW = "low"
    HIGH = "high"


class Ticket(BaseModel):
    title: str = Field(min_length=1, max_length=80)
    priority: Priority = Priority.LOW
    tags: list[str] = []


class Card(BaseModel):
    method: Literal["card"]
    last4: str = Field(pattern=r"^\d{4}$")


class Wire(BaseModel):
    method: Literal["wire"]
    iban: str


class Payment(BaseModel):
    amount_cents: int = Field(ge=0)
    via: Annotated[Card | Wire, Field(discriminator="method")]


@dataclass
class Folder:
    name: str
    children: list[Folder] = field(default_factory=list)


class Query(TypedDict):
    q: str
    limit: NotRequired[int]


class Score(BaseModel):
    by_team: dict[str, Ticket]


def _h(param: Any, result: Any) -> Any:
    def handler(x: Any) -> Any:
        raise NotImplementedError
    handler.__annotations__ = {"x": param, "return": result}
    return handler


# (handler, valid input, invalid input, expected error location)
ROUND_TRIPS: list[tuple[str, Any, Any, Any, tuple[Any, ...]]] = [
    ("invoice", invoice_total,
     {"lines": [{"sku": "a", "qty": 1, "unit_cents": 5}] * 3, "discount_pct": 0},
     {"lines": [{"sku": "a", "qty": 1, "unit_cents": 5}] * 2
      + [{"sku": "a", "qty": "2", "unit_cents": 5}], "discount_pct": 0},
     ("lines", 2, "qty")),
    ("dataclass-nested", _h(Customer, Address),
     {"name": "Ada", "addresses": [{"street": "s", "city": "c"}]},
     {"name": "Ada", "addresses": [{"street": "s", "city": 3}]}, ("addresses", 0, "city")),
    ("model-enum", _h(Ticket, Ticket), {"title": "t", "priority": "high"},
     {"title": "t", "priority": "urgent"}, ("priority",)),
    ("model-constraint", _h(Ticket, Ticket), {"title": "t"}, {"title": ""}, ("title",)),
    ("tagged-union", _h(Payment, Payment),
     {"amount_cents": 5, "via": {"method": "card", "last4": "1234"}},
     {"amount_cents": 5, "via": {"method": "card", "last4": "12x4"}}, ("via", "last4")),
    ("recursive-dataclass", _h(Folder, Folder),
     {"name": "/", "children": [{"name": "a", "children": [{"name": "b"}]}]},
     {"name": "/", "children": [{"name": "a", "children": [{"name": 2}]}]},
     ("children", 0, "children", 0, "name")),
    ("not-required", _h(Query, Query), {"q": "x"}, {"q": "x", "limit": "5"}, ("limit",)),
    ("dict-of-models", _h(Score, Score), {"by_team": {"red": {"title": "t"}}},
     {"by_team": {"red": {"title": 1}}}, ("by_team", "red", "title")),
    ("literal", _h(Literal["a", "b"], int), "a", "c", ()),
    ("optional", _h(str | None, str), None, 3, ()),
    ("union", _h(int | str, int), 3, 1.5, ()),
    ("list-of-int", _h(list[int], list[int]), [1, 2], [1, "2"], (1,)),
    ("tuple", _h(tuple[int, str], int), [1, "a"], [1, 2], (1,)),
    ("dict", _h(dict[str, float], int), {"a": 1.5}, {"a": "x"}, ("a",)),
]


@pytest.mark.parametrize("handler, good, bad, loc", [r[1:] for r in ROUND_TRIPS],
                         ids=[r[0] for r in ROUND_TRIPS])
def test_schemas_from_hints_compile_and_validate(handler: Any, good: Any, bad: Any,
                                                 loc: tuple[Any, ...]) -> None:
    input_schema, output_schema = schemas_for(handler)
    compile_schema(output_schema)
    check = compile_schema(input_schema)
    check.validate_python(good, strict=True)
    with pytest.raises(ValidationError) as info:
        check.validate_python(bad, strict=True)
    assert loc in [e["loc"] for e in info.value.errors()], info.value.errors()


def test_the_issue_example_gives_refs_and_the_output_schema() -> None:
    input_schema, output_schema = schemas_for(invoice_total)
    assert input_schema["properties"]["lines"]["items"] == {"$ref": "#/$defs/Line"}
    assert input_schema["$defs"]["Line"]["required"] == ["sku", "qty", "unit_cents"]
    assert output_schema["required"] == ["total_cents"]
    out = compile_schema(output_schema)
    out.validate_python({"total_cents": 3}, strict=True)
    with pytest.raises(ValidationError):
        out.validate_python({"total_cents": "3"}, strict=True)


def test_postponed_annotations_are_resolved() -> None:
    # This module has `from __future__ import annotations`: the hints are strings.
    assert isinstance(invoice_total.__annotations__["invoice"], str)
    assert schemas_for(invoice_total)[0]["title"] == "Invoice"


def test_none_return_is_null() -> None:
    def ping(x: int) -> None:
        raise NotImplementedError
    assert schemas_for(ping) == ({"type": "integer"}, {"type": "null"})


# -- signatures that give no schema: typed errors naming the function and the parameter --------

def no_params() -> int:
    raise NotImplementedError


def two_params(a: int, b: int) -> int:
    raise NotImplementedError


def bare(invoice) -> int:  # type: ignore[no-untyped-def]
    raise NotImplementedError


def no_return(invoice: int):  # type: ignore[no-untyped-def]
    raise NotImplementedError


def keyword_only(*, invoice: int) -> int:
    raise NotImplementedError


class Opaque:
    pass


def opaque(invoice: Opaque) -> int:
    raise NotImplementedError


def unresolvable(invoice: Nowhere) -> int:  # type: ignore[name-defined]  # noqa: F821
    raise NotImplementedError


def callable_out(invoice: int) -> typing.Callable[[], int]:
    raise NotImplementedError


@pytest.mark.parametrize("func, param, words", [
    (no_params, None, "exactly one parameter"),
    (two_params, "b", "exactly one parameter"),
    (bare, "invoice", "no type annotation"),
    (no_return, "return", "no type annotation"),
    (keyword_only, "invoice", "positional"),
    (opaque, "invoice", "Pydantic cannot make a JSON Schema of"),
    (unresolvable, "invoice", "cannot be resolved"),
    (callable_out, "return", "Pydantic cannot make a JSON Schema"),
])
def test_bad_signatures_are_typed_errors(func: Any, param: str | None, words: str) -> None:
    with pytest.raises(SignatureError) as info:
        schemas_for(func)
    error = info.value
    assert error.function == func.__qualname__ and error.param == param
    assert func.__qualname__ in str(error) and words in str(error)
    if param:
        assert (param if param != "return" else "return annotation") in str(error)
    assert isinstance(error, HintError) and error.code is ErrorCode.MANIFEST_INVALID


# -- guest files -------------------------------------------------------------------------------

GUEST = '''\
"""An activity written for componentize-py."""
from typing import TypedDict
from dataclasses import dataclass

import loom
from loom import ActivityError
from wit_world.imports import host
from componentize_py_types import Err


class Line(TypedDict):
    sku: str
    qty: int


class Invoice(TypedDict):
    lines: list[Line]
    discount_pct: int


@dataclass
class Total:
    total_cents: int


class Refused(ActivityError):
    pass


def run(invoice: Invoice) -> Total:
    loom.log("pricing")
    return Total(0)
'''


def _write(tmp_path: Path, text: str, name: str = "guest.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_schemas_for_file_stubs_guest_modules_and_restores_sys_modules(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sentinel = object()
    monkeypatch.setitem(sys.modules, "wit_world", sentinel)  # type: ignore[arg-type]
    before = set(sys.modules)
    input_schema, output_schema = schemas_for_file(_write(tmp_path, GUEST))
    assert input_schema["$defs"]["Line"]["required"] == ["sku", "qty"]
    assert output_schema["title"] == "Total"
    check = compile_schema(input_schema)
    with pytest.raises(ValidationError) as info:
        check.validate_python({"lines": [{"sku": "a", "qty": 1}, {"sku": "b"}],
                               "discount_pct": 0}, strict=True)
    assert [e["loc"] for e in info.value.errors()] == [("lines", 1, "qty")]
    assert sys.modules["wit_world"] is sentinel
    assert set(sys.modules) - before == set()
    assert "loom" not in sys.modules and "componentize_py_types" not in sys.modules


def test_two_guest_files_with_the_same_names_do_not_collide(tmp_path: Path) -> None:
    one = _write(tmp_path, "def run(x: int) -> int:\n    return x\n", "a.py")
    (tmp_path / "b").mkdir()
    two = _write(tmp_path / "b", "def run(x: str) -> str:\n    return x\n", "a.py")
    assert schemas_for_file(one)[0] == {"type": "integer"}
    assert schemas_for_file(two)[0] == {"type": "string"}
    assert schemas_for_file(one, "run")[1] == {"type": "integer"}


def test_another_handler_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "def handle(x: list[int]) -> bool:\n    return True\n")
    assert schemas_for_file(path, "handle") == (
        {"items": {"type": "integer"}, "type": "array"}, {"type": "boolean"})


@pytest.mark.parametrize("source, line, words", [
    ("def run(x: int) -> int\n    return x\n", 1, "syntax error"),
    ("import os\n\nimport not_installed_anywhere\n", 3, "not_installed_anywhere"),
    ("x = 1\nraise ValueError('boom')\n", 2, "ValueError: boom"),
    ("import loom\n\nREGION = loom.env('REGION')\n", 3, "only inside the component"),
    ("def handle(x: int) -> int:\n    return x\n", None, "no function 'run'"),
    ("run = 3\n", None, "non-callable function 'run'"),
], ids=["syntax", "import", "raises", "capability-at-import", "missing", "not-callable"])
def test_guest_files_that_cannot_load(tmp_path: Path, source: str, line: int | None,
                                      words: str) -> None:
    path = _write(tmp_path, source)
    with pytest.raises(GuestSourceError) as info:
        schemas_for_file(path)
    error = info.value
    assert error.file == str(path) and error.line == line, str(error)
    assert words in str(error) and str(path) in str(error)
    assert "loom" not in sys.modules


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GuestSourceError) as info:
        schemas_for_file(tmp_path / "nope.py")
    assert "nope.py" in str(info.value) and "cannot read" in str(info.value)


def test_a_bad_handler_signature_in_a_file_names_file_line_and_parameter(
        tmp_path: Path) -> None:
    path = _write(tmp_path, "import loom\n\n\ndef run(invoice, extra: int) -> int:\n"
                            "    return 1\n")
    with pytest.raises(SignatureError) as info:
        schemas_for_file(path)
    error = info.value
    assert (error.file, error.line, error.function, error.param) == (
        str(path), 4, "run", "extra")
    assert f"{path}:4: function 'run', parameter 'extra'" in str(error)


def test_every_round_trip_schema_is_json() -> None:
    for _, handler, *_ in ROUND_TRIPS:
        for schema in schemas_for(handler):
            assert json.loads(json.dumps(schema)) == schema
