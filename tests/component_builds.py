"""Real guests for the component and conformance tests, built by the real toolchains.

`built(name)` builds tests/component_guests/<name>.{c,py,js} with activities/build.py
(ziglang, componentize-py, componentize-js) into .loom/test-guests/ once per session; a
build that is up to date is skipped, so later sessions pay nothing. Executors made by
`executor_at` share one LOOM_HOME for compiled code (.loom/test-components): a component
is compiled (5-15 s) the first time only, later uploads load it from the authenticated
disk cache (~50 ms).
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

from runtime.executor import Executor
from runtime.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
GUESTS = ROOT / "tests" / "component_guests"
OUT = ROOT / ".loom" / "test-guests"
HOME = ROOT / ".loom" / "test-components"
SECRETS = {"TOKEN": "s3cret"}
ENV = {"REGION": "eu-west"}
LANG_OF = {"conf_core": "c", "conf_cmd": "c", "conf_py": "python", "conf_js": "js"}


@functools.cache
def build_module() -> ModuleType:
    script = ROOT / "activities" / "build.py"
    spec = importlib.util.spec_from_file_location("loom_build_for_tests", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def built(name: str) -> tuple[bytes, dict[str, Any]]:
    """(wasm bytes, manifest with sha256) of a test guest, built if out of date."""
    source = next(p for p in GUESTS.iterdir()
                  if p.stem == name and p.suffix in (".c", ".py", ".js"))
    options: dict[str, Any] = {} if source.suffix == ".c" else {"say": lambda _line: None}
    wasm = build_module().build_file(source, out_dir=OUT, **options)
    manifest = json.loads(wasm.with_name(f"{name}.manifest.json").read_text())
    return wasm.read_bytes(), manifest


@functools.cache
def built_sample(path: str) -> tuple[bytes, dict[str, Any]]:
    """A sample under activities/ (e.g. "py/invoice_total.py") built into activities/build."""
    source = ROOT / "activities" / path
    options: dict[str, Any] = {} if source.suffix == ".c" else {"say": lambda _line: None}
    wasm = build_module().build_file(source, out_dir=ROOT / "activities" / "build", **options)
    manifest = json.loads(wasm.with_name(f"{source.stem}.manifest.json").read_text())
    return wasm.read_bytes(), manifest


def executor_at(blobs: Path, *, home: Path = HOME, **kw: Any) -> Executor:
    """An executor on its own registry (`blobs`) sharing the compiled-code cache."""
    kw.setdefault("secrets", SECRETS)
    kw.setdefault("env", ENV)
    return Executor(load_settings(blob_url=f"file://{blobs}", home=home), **kw)


def upload(ex: Executor, name: str, **changes: Any) -> str:
    """Upload guest `name` with manifest fields changed (e.g. limits=..., version=...);
    returns the activity name."""
    wasm, manifest = built(name)
    manifest = {**manifest, **changes}
    if "limits" in changes:
        manifest["limits"] = {**built(name)[1].get("limits", {}), **changes["limits"]}
    ex.upload(wasm, manifest)
    return str(manifest["name"])
