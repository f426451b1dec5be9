"""Write the JSON Schema of every public contract to schemas/json/ (`--check`: fail if stale)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from schemas.guest import GuestErrorResult, HostCallRequest
from schemas.manifest import ActivityManifest
from schemas.wdl import Workflow

OUT = Path(__file__).parent / "json"
EXPORTS: dict[str, Any] = {
    "activity-manifest": ActivityManifest,
    "guest-error-result": GuestErrorResult,
    "host-call-request": HostCallRequest,
    "workflow": Workflow,
}


def render() -> dict[str, str]:
    files = {}
    for name, model in EXPORTS.items():
        schema = TypeAdapter(model).json_schema()
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                  "$id": f"https://loom.dev/schemas/{name}.schema.json", **schema}
        files[f"{name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files


def stale() -> list[str]:
    return [name for name, text in render().items()
            if not (OUT / name).is_file() or (OUT / name).read_text() != text]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        names = stale()
        if names:
            print(f"stale JSON Schema files: {', '.join(names)}; run python -m schemas.export")
            return 1
        print(f"schemas/json is up to date ({len(EXPORTS)} files)")
        return 0
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote schemas/json/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
