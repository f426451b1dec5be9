"""`loom activity build` and `loom activity new`: make activities in C, Python or JavaScript.

The builds themselves live in activities/build.py (C with ziglang) and
activities/build_component.py (Python with componentize-py, JavaScript with
componentize-js), so `make activities` and the CLI run the same code.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from runtime import errors
from schemas.manifest import NAME_PATTERN

CHECKOUT = Path(__file__).resolve().parents[1]
LANGS = {"c": ".c", "python": ".py", "py": ".py", "js": ".js", "javascript": ".js"}


def _build_module() -> ModuleType:
    script = CHECKOUT / "activities" / "build.py"
    spec = importlib.util.spec_from_file_location("loom_activity_build", script)
    if spec is None or spec.loader is None or not script.exists():
        raise errors.NotFound(f"building needs {script} (a Loom source checkout)")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build


def _schema_arg(text: str | None, what: str) -> dict[str, Any] | None:
    """A JSON Schema given inline or as @file."""
    if text is None:
        return None
    try:
        raw = Path(text[1:]).read_text() if text.startswith("@") else text
        value = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise errors.InputInvalid(f"--{what}: not a JSON Schema (inline JSON or @file): "
                                  f"{exc}") from None
    if not isinstance(value, dict):
        raise errors.InputInvalid(f"--{what}: a JSON Schema must be a JSON object")
    return value


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_build(args: argparse.Namespace) -> int:
    """Build a C, Python or JavaScript activity wherever it lives."""
    build = _build_module()
    options: dict[str, Any] = {}
    source = Path(args.source)
    if source.suffix in (".py", ".js", ".mjs"):
        options = {"input_schema": _schema_arg(args.input_schema, "input-schema"),
                   "output_schema": _schema_arg(args.output_schema, "output-schema"),
                   "say": _say}
    elif args.input_schema or args.output_schema:
        raise errors.InputInvalid("--input-schema/--output-schema are for JavaScript and "
                                  "Python activities; a C activity's manifest has its schemas")
    try:
        wasm = build.build_file(source, manifest_src=Path(args.manifest) if args.manifest
                                else None, out_dir=Path(args.out) if args.out else None,
                                force=args.force, version=args.version, **options)
    except build.BuildError as exc:
        raise errors.InputInvalid(str(exc)) from None
    manifest = wasm.with_name(wasm.stem + ".manifest.json")
    print(f"built {wasm} and {manifest}")
    print(f"next: loom activity upload {wasm}")
    return 0


# -- loom activity new ----------------------------------------------------------------------

C_SKELETON = """\
/* {name} (core-v1): {{"name": str}} -> {{"greeting": str}}. See activities/README.md. */
#include "loom.h"

static int handle(loom_input *in, loom_output *out) {{
    size_t n;
    char *who = loom_json_string(in->data, in->len, "name", &n);
    char *text;
    if (!who) return loom_fail_code(out, "input_invalid", "\\"name\\" must be a string", 0);
    if (!(text = malloc(n + 7))) {{
        free(who);
        return loom_fail_code(out, "memory_limit", "out of memory", 0);
    }}
    memcpy(text, "Hello, ", 7), memcpy(text + 7, who, n);
    loom_begin_object(out);
    loom_key(out, "greeting"), loom_string(out, text, n + 7);
    loom_end_object(out);
    free(who), free(text);
    return 0;
}}

LOOM_ACTIVITY(handle)
"""

PY_SKELETON = '''\
"""{name} (component-v1, Python). The handler's type hints are its schemas."""

from typing import TypedDict

import loom


class Request(TypedDict):
    name: str


class Greeting(TypedDict):
    greeting: str


def run(request: Request) -> Greeting:
    if not request["name"].strip():
        raise loom.ActivityError("name is blank", code="input_invalid")
    return {{"greeting": f"Hello, {{request['name']}}"}}
'''

JS_SKELETON = """\
// {name} (component-v1, JavaScript). Schemas: {name}.manifest.json.
export function run({{ name }}) {{
  if (!name.trim()) {{
    throw new loom.ActivityError("name is blank", {{ code: "input_invalid" }});
  }}
  return {{ greeting: `Hello, ${{name}}` }};
}}
"""

SCHEMAS = {
    "input_schema": {"type": "object", "properties": {"name": {"type": "string"}},
                     "required": ["name"], "additionalProperties": False},
    "output_schema": {"type": "object", "properties": {"greeting": {"type": "string"}},
                      "required": ["greeting"]},
}


def _skeleton(name: str, suffix: str) -> tuple[str, dict[str, Any] | None]:
    """(source text, manifest or None) of a working skeleton."""
    manifest: dict[str, Any] = {"name": name, "version": "0.1.0"}
    if suffix == ".c":
        return C_SKELETON.format(name=name), {**manifest, "abi": "core-v1", **SCHEMAS}
    if suffix == ".py":
        return PY_SKELETON.format(name=name), None
    return JS_SKELETON.format(name=name), {**manifest, "abi": "component-v1", **SCHEMAS}


def cmd_new(args: argparse.Namespace) -> int:
    """Write a working skeleton: source + manifest (C, JS) or typed signature (Python)."""
    import re

    name, suffix = args.name, LANGS[args.lang]
    if not re.fullmatch(NAME_PATTERN, name) or (suffix == ".py" and not name.isidentifier()):
        raise errors.InputInvalid(f"{name!r}: an activity name is 1-63 lowercase letters, "
                                  "digits, '_' or '-', starting with a letter"
                                  + (" (no '-' for Python)" if suffix == ".py" else ""))
    folder = Path(args.dir)
    source = folder / f"{name}{suffix}"
    text, manifest = _skeleton(name, suffix)
    manifest_path = folder / f"{name}.manifest.json"
    written = [source] + ([manifest_path] if manifest is not None else [])
    existing = [p for p in written if p.exists()]
    if existing and not args.force:
        raise errors.InputInvalid(f"{', '.join(map(str, existing))} already exists (--force "
                                  "overwrites)")
    folder.mkdir(parents=True, exist_ok=True)
    source.write_text(text)
    if manifest is not None:
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    for p in written:
        print(f"wrote {p}")
    version = " --version 0.1.0" if suffix == ".py" else ""
    print(f"next: loom activity build {source}{version} && loom activity upload "
          f"{folder / 'build' / (name + '.wasm')}")
    return 0


def register(acts: Any, leaf: Callable[[Any, str, str], argparse.ArgumentParser]) -> None:
    """Add `build` and `new` to the `loom activity` command group."""
    bld = leaf(acts, "build", "build a C, Python or JavaScript activity (wherever it lives) "
                              "to .wasm + manifest")
    bld.add_argument("source", help="path/to/<name>.c, <name>.py or <name>.js")
    bld.add_argument("--manifest", help="default: <name>.manifest.json next to the source")
    bld.add_argument("--out", help="output folder (default: build/ next to the source)")
    bld.add_argument("--version", help="the activity's version (overrides the manifest's)")
    bld.add_argument("--input-schema", help="JS/Python: input JSON Schema (JSON or @file)")
    bld.add_argument("--output-schema", help="JS/Python: output JSON Schema (JSON or @file)")
    bld.add_argument("--force", action="store_true", help="rebuild even if up to date")
    bld.set_defaults(func=None, direct=cmd_build)
    new = leaf(acts, "new", "write a working skeleton activity in C, Python or JavaScript")
    new.add_argument("name", help="the activity's name (lowercase, e.g. greet)")
    new.add_argument("--lang", required=True, choices=sorted(LANGS))
    new.add_argument("--dir", default=".", help="folder to write into (default: .)")
    new.add_argument("--force", action="store_true", help="overwrite existing files")
    new.set_defaults(func=None, direct=cmd_new)
