"""Build Python and JavaScript activities into component-v1 components.

    <name>.py  -> componentize-py (PyPI, installed by `make activities`)
    <name>.js  -> @bytecodealliance/componentize-js (npm, installed by `make js-toolchain`
                  into activities/.js-toolchain, or LOOM_JS_TOOLCHAIN)

Both wrap the handler in the world `loom:activity` (activities/wit/loom.wit) with the
guest SDK of their language (activities/sdk/<lang>/): `run(input)` parses JSON, calls
the handler's `run`, returns JSON, and turns exceptions into the world's error record.

The manifest is `<name>.manifest.json` beside the source (optional for Python: name,
limits, capabilities, retry...; without sha256). A Python handler's parameter and return
type hints become `input_schema` and `output_schema` (derived on the host with Pydantic,
`schemas.hints.schemas_for_file`), unless the manifest sets them. A JavaScript handler's
schemas come from its manifest or from `input_schema`/`output_schema` given to
`build_component` (the CLI's --input-schema/--output-schema).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WIT = HERE / "wit"
SDK = HERE / "sdk"
JS_TOOLCHAIN = Path(os.environ.get("LOOM_JS_TOOLCHAIN") or HERE / ".js-toolchain")
WORLD = "activity"
RESERVED_MODULES = {"loom", "loom_main", "wit_world", "componentize_py_types",
                    "componentize_py_runtime", "poll_loop"}


class BuildError(Exception):
    """A build failed; the message says why (one line, or the compiler's output)."""


def _sdk_files(lang: str) -> list[Path]:
    return sorted((SDK / lang).glob("*.*")) + sorted(WIT.glob("*.wit"))


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BuildError(f"{path} is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise BuildError(f"{path} must hold a JSON object")
    if "sha256" in manifest:
        raise BuildError(f"{path}: the source manifest must not contain sha256")
    return manifest


def componentize_py() -> str:
    """The componentize-py executable of this interpreter's environment."""
    beside = Path(sys.executable).parent / "componentize-py"
    found = str(beside) if beside.exists() else shutil.which("componentize-py")
    if not found:
        raise BuildError(
            "componentize-py is not installed: run `make activities` (or "
            "`pip install -e '.[dev]'`), which installs it from PyPI")
    return found


def js_toolchain() -> Path:
    entry = JS_TOOLCHAIN / "node_modules" / "@bytecodealliance" / "componentize-js"
    if not entry.exists():
        raise BuildError(
            f"componentize-js is not installed in {JS_TOOLCHAIN}: run `make js-toolchain` "
            "(npm), or point LOOM_JS_TOOLCHAIN at a folder that has it")
    if shutil.which("node") is None:
        raise BuildError("node is not on PATH (JavaScript builds run componentize-js "
                                  "under Node.js 18 or later)")
    return JS_TOOLCHAIN


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None,
         what: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        out = (proc.stderr or "") + (proc.stdout or "")
        raise BuildError(f"{what} failed (exit {proc.returncode}):\n{out.strip()}")
    return proc


def _schemas_from_hints(source: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    sys.path.insert(0, str(HERE.parent))
    try:
        from schemas.hints import schemas_for_file
    except ImportError as exc:
        raise BuildError(
            f"{source.name}: deriving schemas from type hints needs schemas.hints "
            f"({exc}); set input_schema and output_schema in the manifest instead") from None
    finally:
        sys.path.pop(0)
    try:
        return schemas_for_file(source, "run")
    except Exception as exc:  # its errors name the file, line and type
        raise BuildError(f"{source.name}: {exc}") from None


def build_component(source: Path, *, out_dir: Path, manifest_src: Path | None = None,
                    version: str | None = None, force: bool = False,
                    input_schema: dict[str, Any] | None = None,
                    output_schema: dict[str, Any] | None = None,
                    say: Callable[[str], None] = print) -> Path:
    """Build `source` (.py or .js) into `out_dir`/<name>.wasm + <name>.manifest.json."""
    source = source.resolve()
    lang = {".py": "python", ".js": "js", ".mjs": "js"}.get(source.suffix)
    if lang is None or not source.is_file():
        raise BuildError(f"{source}: not a Python (.py) or JavaScript (.js) file")
    name = source.stem
    if lang == "python" and (not name.isidentifier() or name in RESERVED_MODULES):
        raise BuildError(f"{source.name}: a Python activity's file name must be a "
                                  f"module name other than {', '.join(sorted(RESERVED_MODULES))}")
    manifest_src = (manifest_src or source.with_name(f"{name}.manifest.json")).resolve()
    manifest: dict[str, Any] = {}
    if manifest_src.exists():
        manifest = read_manifest(manifest_src)
    elif lang == "js" and (input_schema is None or output_schema is None):
        raise BuildError(
            f"{name}: a JavaScript activity declares its schemas in {manifest_src.name} "
            "(input_schema, output_schema; see activities/README.md) or with "
            "--input-schema/--output-schema")
    manifest.setdefault("name", name)
    if version is not None:
        manifest["version"] = version
    if "version" not in manifest:
        raise BuildError(f"{name}: no version: give --version or set it in "
                                  f"{manifest_src.name}")
    if manifest.get("abi", "component-v1") != "component-v1":
        raise BuildError(f"{name}: {source.suffix} activities use abi component-v1, "
                                  f"not {manifest['abi']!r}")
    manifest["abi"] = "component-v1"
    out_dir = out_dir.resolve()
    wasm = out_dir / f"{name}.wasm"
    manifest_out = out_dir / f"{name}.manifest.json"
    if manifest_out == manifest_src:
        raise BuildError(f"{name}: the output folder must not be the source folder")
    out_dir.mkdir(parents=True, exist_ok=True)

    if lang == "python" and input_schema is None and output_schema is None and not (
            "input_schema" in manifest and "output_schema" in manifest):
        input_schema, output_schema = _schemas_from_hints(source)
    if input_schema is not None:
        manifest["input_schema"] = input_schema
    if output_schema is not None:
        manifest["output_schema"] = output_schema
    siblings = [p for p in source.parent.iterdir()
                if p.suffix in ((".py",) if lang == "python" else (".js", ".mjs"))]
    inputs = [*siblings, *_sdk_files(lang), Path(__file__)]
    if manifest_src.exists():
        inputs.append(manifest_src)
    fresh = (wasm.exists() and manifest_out.exists()
             and wasm.stat().st_mtime > max(p.stat().st_mtime for p in inputs)
             and _same_manifest(manifest_out, manifest))
    if fresh and not force:
        say(f"{name:<14} up to date ({wasm.stat().st_size:,} bytes, {lang})")
        return wasm

    started = time.monotonic()
    tmp = wasm.with_suffix(".wasm.tmp")
    with tempfile.TemporaryDirectory(prefix=f"loom-build-{name}-") as stage_dir:
        stage = Path(stage_dir)
        if lang == "python":
            say(f"{name:<14} componentize-py: bundling CPython and {source.name} (~7 s)")
            _stage_python(stage, source, name)
            env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
            _run([componentize_py(), "-q", "-d", str(WIT), "-w", WORLD, "componentize",
                  "-p", str(stage), "-p", str(source.parent), "-o", str(tmp), "loom_main"],
                 cwd=stage, env=env, what=f"{name}: componentize-py")
        else:
            toolchain = js_toolchain()
            say(f"{name:<14} componentize-js: bundling SpiderMonkey and {source.name} "
                "(~6 s, ~20 s the first time)")
            entry = _stage_js(stage, source, name)
            _run(["node", str(SDK / "js" / "build.mjs"), str(toolchain), str(entry), str(WIT),
                  WORLD, str(tmp)], cwd=stage, what=f"{name}: componentize-js")
    data = tmp.read_bytes()
    tmp.replace(wasm)
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    validate(manifest, name)
    manifest_out.write_text(json.dumps(manifest, indent=2) + "\n")
    say(f"{name:<14} {len(data):>10,} bytes  component-v1 ({lang})  "
        f"{time.monotonic() - started:.1f}s")
    return wasm


def _same_manifest(built: Path, manifest: dict[str, Any]) -> bool:
    try:
        old = json.loads(built.read_bytes())
    except (OSError, ValueError):
        return False
    old.pop("sha256", None)
    return bool(old == manifest)


def validate(manifest: dict[str, Any], name: str) -> None:
    """Check the manifest against the real model when the repo's schemas are importable."""
    sys.path.insert(0, str(HERE.parent))
    try:
        from schemas.manifest import ActivityManifest
    except ImportError:
        return
    finally:
        sys.path.pop(0)
    try:
        ActivityManifest.model_validate(manifest)
    except ValueError as exc:
        raise BuildError(f"{name}: invalid manifest:\n{exc}") from None


def _stage_python(stage: Path, source: Path, name: str) -> None:
    shutil.copy(SDK / "python" / "loom.py", stage / "loom.py")
    main = (SDK / "python" / "loom_main.py").read_text()
    (stage / "loom_main.py").write_text(main.replace("__LOOM_HANDLER_MODULE__", name))


def _stage_js(stage: Path, source: Path, name: str) -> Path:
    for p in source.parent.iterdir():
        if p.suffix in (".js", ".mjs") and p.is_file():
            shutil.copy(p, stage / p.name)
    for helper in ("loom.js",):
        if (stage / helper).exists() and (source.parent / helper).exists():
            raise BuildError(f"{name}: {helper} beside the source clashes with the SDK")
        shutil.copy(SDK / "js" / helper, stage / helper)
    main = (SDK / "js" / "loom_main.js").read_text()
    entry = stage / "__loom_main.js"
    entry.write_text(main.replace("__LOOM_HANDLER_MODULE__", source.name))
    return entry
