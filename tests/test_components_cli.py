"""`loom activity new` writes a working skeleton in C, Python and JavaScript, and
`loom activity build` / `upload` / `invoke` take it all the way, saying what they do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from component_builds import HOME

ROOT = Path(__file__).resolve().parents[1]
LOOM = [sys.executable, "-m", "runtime.cli"]


def loom(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOOM, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=240)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A registry of its own; compiled code shared with the other component tests."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    return {**base, "PYTHONPATH": str(ROOT), "LOOM_HOME": str(HOME),
            "LOOM_BLOB_URL": f"file://{tmp_path / 'blobs'}"}


@pytest.mark.parametrize("lang,suffix", [("c", ".c"), ("python", ".py"), ("js", ".js")])
def test_new_build_upload_invoke(tmp_path: Path, env: dict[str, str], lang: str,
                                 suffix: str) -> None:
    name = f"greet_{lang}"
    made = loom("activity", "new", name, "--lang", lang, "--dir", "acts", env=env,
                cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "acts" / f"{name}{suffix}").exists()
    assert (tmp_path / "acts" / f"{name}.manifest.json").exists() is (lang != "python")

    built = loom("activity", "build", f"acts/{name}{suffix}", "--version", "0.2.0", env=env,
                 cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    wasm = tmp_path / "acts" / "build" / f"{name}.wasm"
    manifest = json.loads(wasm.with_name(f"{name}.manifest.json").read_text())
    assert manifest["version"] == "0.2.0"
    assert manifest["input_schema"]["required"] == ["name"]
    if lang != "c":
        assert manifest["abi"] == "component-v1"
        assert "componentize" in built.stderr  # it said what it was doing

    up = loom("activity", "upload", str(wasm), env=env, cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    assert f"{name}@0.2.0 uploaded" in up.stdout
    if lang != "c":
        assert "starts within its limits" in up.stderr

    ok = loom("activity", "invoke", name, "--input", '{"name": "Ada"}', env=env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"greeting": "Hello, Ada"}
    bad = loom("activity", "invoke", name, "--input", '{"name": 7}', env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "input_invalid" in bad.stderr
    if lang != "c":
        blank = loom("activity", "invoke", name, "--input", '{"name": " "}', env=env,
                     cwd=tmp_path)
        assert blank.returncode == 2 and "name is blank" in blank.stderr


def test_new_refuses_to_overwrite_and_bad_names(tmp_path: Path, env: dict[str, str]) -> None:
    assert loom("activity", "new", "x1", "--lang", "js", env=env, cwd=tmp_path).returncode == 0
    again = loom("activity", "new", "x1", "--lang", "js", env=env, cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    bad = loom("activity", "new", "Bad-Name", "--lang", "c", env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "lowercase" in bad.stderr


def test_a_js_build_without_schemas_says_where_they_go(tmp_path: Path,
                                                       env: dict[str, str]) -> None:
    (tmp_path / "lone.js").write_text("export function run(x) { return x; }\n")
    out = loom("activity", "build", "lone.js", "--version", "1.0.0", env=env, cwd=tmp_path)
    assert out.returncode == 2
    assert "lone.manifest.json" in out.stderr and "--input-schema" in out.stderr
