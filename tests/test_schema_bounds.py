"""Numeric bounds in a manifest's input/output schema that do not fit their type.

`{"type": "integer", "minimum": 0.5}` and the like used to reach Pydantic while the
schema was compiled and came out as a raw `pydantic_core.SchemaError`. They are now a
`ManifestInvalid` naming the manifest field and the JSON path of the keyword, an upload
stores nothing, and bounds that do fit still work.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import guests
import pytest
from pydantic import ValidationError

from runtime import errors
from runtime.backends.blob_fs import FileBlobStore
from runtime.executor import Executor, parse_manifest
from runtime.settings import load_settings
from schemas import json_schema
from schemas.fast_check import compile_validator
from schemas.json_schema import SchemaError, compile_schema

BAD: list[tuple[dict[str, Any], str, str]] = [
    # (schema, keyword it is wrong in, what the message says)
    ({"type": "integer", "minimum": 0.5}, "minimum", 'whole number for type "integer"'),
    ({"type": "integer", "maximum": -2.25}, "maximum", 'whole number for type "integer"'),
    ({"type": "integer", "exclusiveMinimum": 0.1}, "exclusiveMinimum", "whole number"),
    ({"type": "integer", "exclusiveMaximum": 1.5}, "exclusiveMaximum", "whole number"),
    ({"type": ["integer", "null"], "minimum": 0.5}, "minimum", "whole number"),
    ({"type": "integer", "multipleOf": 0.5}, "multipleOf", "keyword is not supported"),
    ({"type": "string", "maxLength": 1.5}, "maxLength", "must be a non-negative integer"),
    ({"type": "string", "minLength": -3}, "minLength", "must be a non-negative integer"),
    ({"type": "string", "maxLength": 2 ** 64}, "maxLength", "must be at most"),
    ({"type": "array", "minItems": -1}, "minItems", "must be a non-negative integer"),
    ({"type": "array", "maxItems": 2.0}, "maxItems", "must be a non-negative integer"),
    ({"type": "array", "maxItems": 2 ** 63}, "maxItems", "must be at most"),
    ({"type": "integer", "minimum": "3"}, "minimum", "must be a number, not a string"),
    ({"type": "integer", "minimum": True}, "minimum", "must be a number, not a boolean"),
    ({"type": "number", "maximum": [1]}, "maximum", "must be a number, not an array"),
    ({"type": "number", "maximum": 10 ** 400}, "maximum", 'out of range for type "number"'),
    ({"type": "number", "minimum": float("inf")}, "minimum", "must be a finite number"),
    ({"type": "number", "minimum": float("nan")}, "minimum", "must be a finite number"),
]
BAD_IDS = [f"{s['type']}-{k}={s[k]!r}"[:48] for s, k, _ in BAD]


def _placed(bad: dict[str, Any], where: str) -> tuple[dict[str, Any], str]:
    """(a whole schema holding `bad` at `where`, the JSON path of `bad` in it)."""
    if where == "property":
        return {"type": "object", "properties": {"n": bad}}, "#/properties/n"
    if where == "items":
        return {"type": "array", "items": bad}, "#/items"
    if where == "nested":
        return ({"type": "object", "required": ["rows"], "properties": {
            "rows": {"type": "array", "items": {"type": "object", "properties": {
                "qty": bad}}}}}, "#/properties/rows/items/properties/qty")
    assert where == "defs"
    return {"$defs": {"Qty": bad}, "$ref": "#/$defs/Qty"}, "#/$defs/Qty"


PLACES = ["property", "items", "nested", "defs"]


def _manifest(field: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "bounds", "version": "1.0.0", field: schema, **extra}


# -- the schema compiler -----------------------------------------------------------------------

@pytest.mark.parametrize("parsed_json", [False, True])
@pytest.mark.parametrize("where", PLACES)
@pytest.mark.parametrize(("bad", "keyword", "says"), BAD, ids=BAD_IDS)
def test_compile_refuses_bound_with_its_path(bad: dict[str, Any], keyword: str, says: str,
                                             where: str, parsed_json: bool) -> None:
    schema, path = _placed(bad, where)
    for compile_ in (compile_schema, compile_validator):
        with pytest.raises(SchemaError) as info:
            compile_(schema, parsed_json=parsed_json)
        assert info.value.path == f"{path}/{keyword}"
        assert says in str(info.value)


# -- manifests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["input_schema", "output_schema"])
@pytest.mark.parametrize("where", PLACES)
@pytest.mark.parametrize(("bad", "keyword", "says"), BAD, ids=BAD_IDS)
def test_manifest_with_bad_bound_is_manifest_invalid(bad: dict[str, Any], keyword: str,
                                                     says: str, where: str, field: str) -> None:
    schema, path = _placed(bad, where)
    with pytest.raises(errors.ManifestInvalid) as info:
        parse_manifest(_manifest(field, schema, sha256="0" * 64))
    message = str(info.value)
    assert f"{field}: schema {path}/{keyword}: " in message
    assert says in message
    for internal in ("SchemaError", "pydantic", "Error building", '"f0"', "Traceback"):
        assert internal not in message
    [detail] = info.value.details
    assert detail["loc"] == [field]
    assert detail["msg"].startswith(f"schema {path}/{keyword}: ")


def test_the_model_itself_refuses_with_a_validation_error() -> None:
    from schemas.manifest import ActivityManifest

    with pytest.raises(ValidationError) as info:
        ActivityManifest.model_validate(_manifest(
            "input_schema", {"type": "integer", "minimum": 0.5}, sha256="0" * 64))
    assert info.value.errors()[0]["loc"] == ("input_schema",)


def test_manifest_text_with_bad_bound_is_manifest_invalid() -> None:
    text = ('{"name": "bounds", "version": "1.0.0", "sha256": "' + "0" * 64 + '",'
            ' "output_schema": {"type": "object", "properties":'
            ' {"n": {"type": "integer", "exclusiveMaximum": 1.5}}}}')
    with pytest.raises(errors.ManifestInvalid, match=r"output_schema: schema "
                       r"#/properties/n/exclusiveMaximum: must be a whole number"):
        parse_manifest(text)


def test_backstop_turns_a_pydantic_schema_error_into_schema_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever Pydantic still cannot build is a SchemaError, so a ManifestInvalid."""
    monkeypatch.setattr(json_schema, "_num", lambda schema, key, path, kind: schema.get(key))
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0.25}}}
    with pytest.raises(SchemaError) as info:
        compile_schema(schema)
    assert info.value.path == "#"
    assert "cannot be compiled into a validator" in str(info.value)
    with pytest.raises(errors.ManifestInvalid, match="input_schema: schema #: cannot be "
                       "compiled"):
        parse_manifest(_manifest("input_schema", schema, sha256="0" * 64))


def test_a_schema_nested_too_deeply_is_manifest_invalid() -> None:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(3000):
        schema = {"type": "array", "items": schema}
    with pytest.raises(errors.ManifestInvalid, match="input_schema: schema #: nests too deeply"):
        parse_manifest(_manifest("input_schema", schema, sha256="0" * 64))


# -- bounds that fit still work ----------------------------------------------------------------

GOOD: list[tuple[dict[str, Any], list[Any], list[Any]]] = [
    # (schema, accepted values, refused values)
    ({"type": "integer", "minimum": 0}, [0, 7], [-1, 0.5, True]),
    ({"type": "integer", "minimum": 1.0, "maximum": 3.0}, [1, 3], [0, 4]),
    ({"type": "integer", "exclusiveMaximum": 10 ** 30}, [10 ** 29], [10 ** 30]),
    ({"type": "number", "minimum": 0.5}, [0.5, 1, 2.5], [0.25, 0, "1"]),
    ({"type": "number", "exclusiveMinimum": -1.5, "exclusiveMaximum": 1.5},
     [-1.25, 0, 1], [-1.5, 1.5]),
    ({"type": "number", "maximum": 10 ** 30}, [1e29], [1e31]),
    ({"type": "string", "minLength": 0, "maxLength": 2}, ["", "ab"], ["abc"]),
    ({"type": "array", "minItems": 1, "maxItems": 2 ** 63 - 1}, [[1]], [[]]),
]


@pytest.mark.parametrize("parsed_json", [False, True])
@pytest.mark.parametrize(("schema", "good", "bad"), GOOD)
def test_bounds_that_fit_compile_and_check(schema: dict[str, Any], good: list[Any],
                                           bad: list[Any], parsed_json: bool) -> None:
    validator = compile_validator(schema, parsed_json=parsed_json)
    for value in good:
        validator.validate(value)
    for value in bad:
        with pytest.raises(ValidationError):
            validator.validate(value)
    manifest = parse_manifest(_manifest("input_schema", schema, sha256="0" * 64,
                                        output_schema=schema))
    assert manifest.input_schema == schema


# -- upload through the real folder registry ---------------------------------------------------

@pytest.fixture
def executor(tmp_path: Path) -> Iterator[Executor]:
    settings = load_settings(home=tmp_path / "home", pool_size=2, epoch_tick_ms=5)
    with Executor(settings, blob=FileBlobStore(tmp_path / "blobs"), secrets={}, env={},
                  prewarm=False) as ex:
        yield ex


def _stored(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("field", ["input_schema", "output_schema"])
@pytest.mark.parametrize(("bad", "keyword", "says"), BAD[:8] + BAD[12:14], ids=BAD_IDS[:8]
                         + BAD_IDS[12:14])
def test_upload_with_bad_bound_stores_nothing(executor: Executor, tmp_path: Path,
                                              bad: dict[str, Any], keyword: str, says: str,
                                              field: str) -> None:
    schema, path = _placed(bad, "property")
    wasm = guests.echo()
    for manifest in (_manifest(field, schema),
                     guests.dumps(_manifest(field, schema)).encode()):
        with pytest.raises(errors.ManifestInvalid) as info:
            executor.upload(wasm, manifest)
        assert f"{field}: schema {path}/{keyword}: " in str(info.value)
        assert says in str(info.value)
    assert _stored(tmp_path / "blobs") == []
    assert executor.registry.blob.list("") == []
    with pytest.raises(errors.NotFound):
        executor.registry.get("bounds")


def test_upload_with_bounds_that_fit_stores_and_checks(executor: Executor,
                                                       tmp_path: Path) -> None:
    schema = {"type": "object", "required": ["n", "x"], "properties": {
        "n": {"type": "integer", "minimum": 0}, "x": {"type": "number", "minimum": 0.5}}}
    up = executor.upload(guests.echo(), _manifest("input_schema", schema,
                                                  output_schema=schema))
    assert up.created
    assert _stored(tmp_path / "blobs") == ["manifests/bounds/1.0.0.json",
                                           f"wasm/{up.manifest.sha256}.wasm"]
    assert executor.invoke_sync("bounds", {"n": 0, "x": 0.5}) == {"n": 0, "x": 0.5}
    with pytest.raises(errors.InputInvalid, match="n"):
        executor.invoke_sync("bounds", {"n": -1, "x": 0.5})
    with pytest.raises(errors.InputInvalid, match="x"):
        executor.invoke_sync("bounds", {"n": 1, "x": 0.25})
