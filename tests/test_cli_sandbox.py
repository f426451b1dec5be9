"""`loom sandbox` and deadlines (issue 8 item 8): the sandbox honours LOOM_HOME (it wrote
`.loom/cache/` into the current folder), and a call with a `timeout_ms` override names that
deadline in its error, not the manifest's."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import guests
import pytest

from runtime import errors
from runtime.cli import main
from runtime.executor import Executor
from runtime.settings import load_settings

BUILD = Path(__file__).resolve().parents[1] / "activities" / "build"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_sandbox_keeps_its_cache_in_loom_home(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("LOOM_HOME", str(home))
    code, out, err = run("sandbox", str(BUILD / "echo.wasm"), "--manifest",
                         str(BUILD / "echo.manifest.json"), "--input", '{"a": 1}')
    assert code == 0, err
    assert json.loads(out) == {"a": 1}
    assert list(cwd.iterdir()) == [], "nothing may be written to the current folder"
    assert any((home / "cache").iterdir()), "compiled module cached under LOOM_HOME"
    assert not (home / "blobs").exists(), "the sandbox's registry is throwaway"


def test_a_timeout_override_names_its_own_deadline(tmp_path: Path) -> None:
    with Executor(load_settings(home=tmp_path)) as ex:
        ex.upload(guests.infinite_loop(), guests.manifest("spin", limits={"timeout_ms": 2000}))
        with pytest.raises(errors.Timeout) as info:
            ex.invoke_sync("spin", {"go": 1}, timeout_ms=200)
        assert "exceeded the 200 ms deadline (this call's timeout_ms; the manifest allows " \
               "2000 ms)" in info.value.message
        assert "2000 ms deadline" not in info.value.message
        with pytest.raises(errors.Timeout) as info:  # an "override" above the limit is ignored
            ex.invoke_sync("spin", {"go": 1}, timeout_ms=5000)
        assert info.value.message.startswith("exceeded the 2000 ms deadline")


def test_invoke_timeout_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOM_HOME", str(tmp_path))
    with Executor(load_settings(home=tmp_path)) as ex:
        ex.upload(guests.infinite_loop(), guests.manifest("spin", limits={"timeout_ms": 2000}))
    code, _, err = run("activity", "invoke", "spin", "--input", '{"go": 1}',
                       "--timeout-ms", "150")
    assert code == 2
    assert "[timeout spin@1.0.0" in err and "exceeded the 150 ms deadline" in err
    assert err.rstrip().endswith("(retryable)")
