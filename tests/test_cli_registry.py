"""Registry commands (issue 8 item 12): yank a version, upload a folder of builds, and build
a C activity wherever it lives."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from runtime import errors
from runtime.cli import main
from runtime.executor import Executor
from runtime.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "activities" / "build"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOOM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def upload_version(version: str, tmp_path: Path) -> None:
    manifest = json.loads((BUILD / "echo.manifest.json").read_text())
    manifest["version"] = version
    path = tmp_path / f"echo-{version}.json"
    path.write_text(json.dumps(manifest))
    code, _, err = run("activity", "upload", str(BUILD / "echo.wasm"), "--manifest", str(path))
    assert code == 0, err


def test_yank_keeps_pinned_callers_and_moves_latest_back(home: Path, tmp_path: Path) -> None:
    for version in ("1.0.0", "1.1.0"):
        upload_version(version, tmp_path)
    code, out, _ = run("activity", "yank", "echo@1.1.0", "--reason", "bad test upload")
    assert code == 0 and "latest is now 1.0.0" in out
    with Executor(load_settings(home=home)) as ex:
        assert ex.registry.get("echo").version == "1.0.0"
        assert ex.registry.get("echo", "1.1.0").version == "1.1.0"  # pinned: still served
        assert ex.execute("echo", {"a": 1}).version == "1.0.0"
        assert ex.execute("echo", {"a": 1}, version="1.1.0").version == "1.1.0"
    code, out, _ = run("activity", "list")
    assert "echo                     1.0.0" in out and "1.1.0 (yanked)" in out
    run("activity", "yank", "echo@1.0.0")
    code, _, err = run("activity", "invoke", "echo", "--input", "{}")
    assert code == 2 and "every version of 'echo' is yanked" in err
    code, out, _ = run("activity", "yank", "--undo", "echo@1.1.0")
    assert code == 0
    with Executor(load_settings(home=home)) as ex:
        assert ex.registry.get("echo").version == "1.1.0"
    code, _, err = run("activity", "yank", "echo")
    assert code == 2 and "needs an exact version" in err
    code, _, err = run("activity", "yank", "echo@9.0.0")
    assert code == 2 and "not registered" in err


def test_upload_a_folder_and_find_the_manifest_beside_the_wasm(home: Path) -> None:
    code, out, err = run("activity", "upload", str(BUILD))
    assert code == 0, err
    names = sorted(p.stem for p in BUILD.glob("*.wasm"))
    assert [line.split("@")[0] for line in out.splitlines() if "@" in line] == names
    code, out, _ = run("activity", "upload", str(BUILD / "echo.wasm"))  # manifest found
    assert code == 0 and "already present (identical)" in out
    code, _, err = run("activity", "upload", str(BUILD), "--manifest", "x.json")
    assert code == 2 and "not a folder" in err


HELLO_C = r"""
#include "loom.h"
#include "greeting.h"

static int handle(loom_input *in, loom_output *out) {
    (void)in;
    loom_set_output(out, GREETING, sizeof(GREETING) - 1);
    return 0;
}
LOOM_ACTIVITY(handle)
"""


def test_build_a_c_file_wherever_it_lives(home: Path, tmp_path: Path) -> None:
    """Issue 8 item 12: build.py only built sources under activities/src/."""
    project = tmp_path / "my project" / "acts"
    project.mkdir(parents=True)
    (project / "hello.c").write_text(HELLO_C)
    (project / "greeting.h").write_text('#define GREETING "{\\"hello\\": \\"world\\"}"\n')
    (project / "hello.manifest.json").write_text(json.dumps(
        {"name": "hello", "version": "0.1.0", "abi": "core-v1"}))
    code, out, err = run("activity", "build", str(project / "hello.c"))
    assert code == 0, err
    wasm = project / "build" / "hello.wasm"
    assert wasm.is_file() and (project / "build" / "hello.manifest.json").is_file()
    code, out, err = run("activity", "upload", str(wasm))
    assert code == 0, err
    code, out, err = run("activity", "invoke", "hello")
    assert code == 0 and json.loads(out) == {"hello": "world"}, err
    code, _, err = run("activity", "build", str(project / "greeting.h"))
    assert code == 2 and "not a C source file" in err


def test_build_script_takes_paths_too(tmp_path: Path) -> None:
    import subprocess
    import sys

    shutil.copy(ROOT / "activities" / "src" / "echo.c", tmp_path / "echo.c")
    shutil.copy(ROOT / "activities" / "src" / "echo.manifest.json",
                tmp_path / "echo.manifest.json")
    done = subprocess.run([sys.executable, str(ROOT / "activities" / "build.py"),
                           str(tmp_path / "echo.c"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    built = tmp_path / "out" / "echo.wasm"
    assert built.read_bytes() == (BUILD / "echo.wasm").read_bytes()  # reproducible


def test_registry_yank_api(tmp_path: Path) -> None:
    with Executor(load_settings(home=tmp_path)) as ex:
        ex.upload((BUILD / "echo.wasm").read_bytes(),
                  json.loads((BUILD / "echo.manifest.json").read_text()))
        ex.registry.yank("echo", "1.0.0")
        assert ex.registry.yanked("echo") == {"1.0.0"}
        with pytest.raises(errors.NotFound):
            ex.registry.get("echo")
        ex.registry.unyank("echo", "1.0.0")
        assert ex.registry.get("echo").version == "1.0.0"


def test_wdl_validate_on_a_fresh_home_says_how_to_get_the_samples(home: Path) -> None:
    """Issue 8 item 10: on a fresh clone nothing had put the samples into LOOM_HOME."""
    example = str(ROOT / "wdl" / "examples" / "onboarding.json")
    code, _, err = run("wdl", "validate", example)
    assert code == 2 and "activity http_post is not registered" in err
    assert f"(looked in the registry file://{home.resolve()}/blobs" in err
    assert "upload the samples with `loom activity upload activities/build`" in err
    assert run("activity", "upload", str(BUILD))[0] == 0
    code, out, err = run("wdl", "validate", example)
    assert code == 0 and "customer-onboarding@1.0.0 is valid" in out, err
