"""What a pooled core-v1 instance trusts about its guest and its per-call session.

A guest's optional `_initialize` is called once per instance through Wasmtime's
unchecked call path, which trusts the export's type. An `_initialize` of any other type
than `() -> ()` made Wasmtime's trampoline execute `ud2`: SIGILL, the whole worker gone,
whoever's call it was. It is refused at upload, and again when an instance is prepared
from a module stored before the rule (found in a registry or cache). And a call's logs
are its own even when its instance is taken by the next call as soon as it is released."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import sys, tempfile
    from pathlib import Path
    sys.path[:0] = [{root!r}, {tests!r}]
    import guests, wasmtime
    from runtime import errors
    from runtime.executor import abi_core

    wasm = wasmtime.wat2wasm(guests.core_wat(
        "(call $pack (local.get $ptr) (local.get $len))",
        funcs='(func (export "_initialize") {signature})'))
    with tempfile.TemporaryDirectory() as home, guests.executor_at(Path(home) / "h") as ex:
        if {stored_before!r}:  # stored by a Loom that did not check _initialize
            real, abi_core.check_module = abi_core.check_module, lambda module, manifest: None
            ex.upload(wasm, guests.manifest("init", reuse_instances=True))
            abi_core.check_module = real
        try:
            if not {stored_before!r}:
                ex.upload(wasm, guests.manifest("init", reuse_instances=True))
            print("ran", ex.execute("init", {{"a": 1}}).output)
        except errors.ModuleInvalid as exc:
            print("refused", exc.message)
""")


@pytest.mark.parametrize("stored_before", [False, True], ids=["upload", "stored-before"])
@pytest.mark.parametrize("signature", ["(result i64) (i64.const 7)", "(param i64)",
                                       "(param i32 i32 i64) (result i32 i32) (i32.const 1) "
                                       "(i32.const 2)"])
def test_an_initialize_of_another_type_is_refused_not_run(signature: str,
                                                          stored_before: bool) -> None:
    script = SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), signature=signature,
                           stored_before=stored_before)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])  # -4: SIGILL
    assert "refused export _initialize must have type () -> ()" in done.stdout, done.stdout


def test_an_initialize_of_the_right_type_still_runs() -> None:
    script = SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), signature="",
                           stored_before=False)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ran {'a': 1}" in done.stdout, done.stdout


def test_a_call_returns_its_own_logs_when_its_instance_is_taken_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pooled instance may be taken by another call the moment it is released; that call
    begins its own session (new logs). The first call's result must still carry the logs
    of the first call, read before the release."""
    sys.path.insert(0, str(ROOT / "tests"))
    import guests

    with guests.executor_at(tmp_path / "h", pool_size=1) as ex:
        ex.upload(guests.host_proxy(), guests.manifest("logger", reuse_instances=True,
                                                       capabilities={"log": True}))
        pool = ex.pool
        real = type(pool).release

        def release_then_taken(self: Any, key: Any, instance: Any, **kw: Any) -> None:
            real(self, key, instance, **kw)
            instance.session.begin("another call", float("inf"))  # what acquire + begin do
            instance.session.logs.append({"message": "another call's"})

        monkeypatch.setattr(type(pool), "release", release_then_taken)
        for tag in ("first", "second"):
            result = ex.execute("logger", {"op": "log", "message": tag})
            assert [e.get("message") for e in result.logs] == [tag]
