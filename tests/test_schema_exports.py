"""The exported JSON Schema files match the models, and the public API is pinned."""

import runtime
import schemas
from schemas import export


def test_exported_json_schemas_are_current() -> None:
    assert export.stale() == [], "run `python -m schemas.export` and commit schemas/json/"


def test_manifest_schema_rejects_unknown_fields() -> None:
    schema = export.render()["activity-manifest.schema.json"]
    assert '"additionalProperties": false' in schema


def test_public_exports_are_pinned() -> None:
    assert sorted(runtime.__all__) == ["Executor", "InvocationResult", "LoomSettings",
                                       "UploadResult", "errors", "load_settings"]
    assert "ActivityManifest" in schemas.__all__ and "ErrorCode" in schemas.__all__
