"""Hand-written hostile components (component text through wat2wasm): a host function imported
with another signature traps (it used to kill the process, so that case runs in a
subprocess), a second memory is refused at upload, an error record's strings are cut at
max_output_bytes, and an unknown log level is logged as "info" and counted."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from runtime import errors
from runtime.executor import Executor
from runtime.executor.session import LEVELS
from runtime.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
SECRETS = {"TOKEN": "s3cret"}
RESULT_OK = """
      ;; ok: result<string> at 64: disc 0, ptr 128, len 2 = "{}"
      (i32.store8 (i32.const 128) (i32.const 123))
      (i32.store8 (i32.const 129) (i32.const 125))
      (i32.store8 (i32.const 64) (i32.const 0))
      (i32.store (i32.const 68) (i32.const 128))
      (i32.store (i32.const 72) (i32.const 2))
      (i32.const 64)"""


def component(host_iface: str, lowers: str, core_imports: str, body: str, with_: str,
              extra_core: str = "") -> bytes:
    """A component importing loom:activity/host as `host_iface` (its own WIT, whatever the
    host has), one shared memory, and a `run` export that runs `body` and returns "{}"."""
    wat = f'''
(component
  (import "loom:activity/host@1.0.0" (instance $h {host_iface}))
  (core module $mem (memory (export "memory") 40) (global $bump (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      global.get $bump local.set $p
      global.get $bump local.get 3 i32.add global.set $bump
      local.get $p))
  (core instance $mi (instantiate $mem))
  (alias core export $mi "memory" (core memory $memory))
  (alias core export $mi "realloc" (core func $realloc))
  {lowers}
  (core module $m
    (import "mem" "memory" (memory 40))
    {core_imports}
    {extra_core}
    (func (export "run") (param i32 i32) (result i32)
      {body}
      {RESULT_OK}))
  (core instance $i (instantiate $m (with "mem" (instance $mi)) (with "h" (instance {with_}))))
  (func (export "run") (param "input" string) (result (result string))
    (canon lift (core func $i "run") (memory $memory) (realloc $realloc)))
)'''
    return bytes(wasmtime.wat2wasm(wat))


LOG_IFACE = ('(export "log" (func (param "level" string) (param "message" string) '
             '(param "fields" string)))')
LOG_LOWER = '(core func $k (canon lower (func $h "log") (memory $memory) (realloc $realloc)))'
LOG_IMPORT = '(import "h" "k" (func $k (param i32 i32 i32 i32 i32 i32)))'
WITH_K = '(export "k" (func $k))'


def manifest(name: str, **changes: Any) -> dict[str, Any]:
    return {"name": name, "version": "1.0.0", "abi": "component-v1", "reuse_instances": True,
            **changes}


@pytest.fixture
def ex(tmp_path: Path) -> Iterator[Executor]:
    settings = load_settings(blob_url=f"file://{tmp_path}/blobs", home=f"{tmp_path}/home")
    with Executor(settings, secrets=SECRETS, env={}) as executor:
        yield executor


# -- a host function imported with another signature --------------------------------------

SIGNATURES = {
    # idempotency-key: func() -> string, imported with no result: the host wrote a result
    # into an array of none (SIGSEGV on the first call)
    "no_result": ('(export "idempotency-key" (func))',
                  '(core func $k (canon lower (func $h "idempotency-key")))',
                  '(import "h" "k" (func $k))', "(call $k)",
                  "imported with 0 parameter(s) and 0 result(s); it has 0 and 1"),
    # log(level, message, fields) imported with the level only: the host read past the args
    "log_one_param": ('(export "log" (func (param "level" string)))', LOG_LOWER,
                      '(import "h" "k" (func $k (param i32 i32)))',
                      "(call $k (i32.const 300) (i32.const 4))",
                      "imported with 1 parameter(s) and 0 result(s); it has 3 and 0"),
    # secret(name: u32) -> u32: the right counts, the wrong types
    "secret_u32": ('(export "secret" (func (param "name" u32) (result u32)))',
                   '(core func $k (canon lower (func $h "secret")))',
                   '(import "h" "k" (func $k (param i32) (result i32)))',
                   "(drop (call $k (i32.const 7)))",
                   "expected a string argument"),
}

RUNNER = '''
import json, sys
sys.path.insert(0, sys.argv[1])
from runtime import errors
from runtime.executor import Executor
from runtime.settings import load_settings
tmp = sys.argv[2]
settings = load_settings(blob_url=f"file://{tmp}/blobs", home=f"{tmp}/home")
with Executor(settings, secrets={"TOKEN": "s3cret"}, env={}) as ex:
    with open(f"{tmp}/guest.wasm", "rb") as wasm, open(f"{tmp}/manifest.json") as m:
        ex.upload(wasm.read(), json.load(m))
    for i in range(2):
        try:
            result = ex.execute("hostile", {}, idempotency_key=f"k{i}")
            print("OK", json.dumps(result.output), flush=True)
        except errors.LoomError as exc:
            trap = "TRAP" if isinstance(exc, errors.Trap) else "OTHER"
            print("ERR", trap, type(exc).__name__, exc.message, flush=True)
print("DONE", flush=True)
'''


@pytest.mark.parametrize("case", list(SIGNATURES))
def test_host_import_with_another_signature_traps_in_a_live_process(tmp_path: Path,
                                                                   case: str) -> None:
    iface, lowers, imports, body, expected = SIGNATURES[case]
    (tmp_path / "guest.wasm").write_bytes(component(iface, lowers, imports, body, WITH_K))
    (tmp_path / "manifest.json").write_text(json.dumps(
        manifest("hostile", capabilities={"log": True})))
    (tmp_path / "runner.py").write_text(RUNNER)
    done = subprocess.run([sys.executable, str(tmp_path / "runner.py"), str(ROOT),
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    report = f"rc={done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr[-2000:]}"
    assert done.returncode not in (-11, 139), f"the process crashed (SIGSEGV)\n{report}"
    assert done.returncode == 0, report
    lines = done.stdout.splitlines()
    assert lines[-1] == "DONE", report
    calls = lines[:-1]
    assert len(calls) == 2, report  # the same executor survives and traps again
    for line in calls:
        assert line.startswith("ERR TRAP Trap "), report
        assert expected in line, report


# -- one memory per component ------------------------------------------------------------

def test_a_second_memory_is_refused_at_upload(ex: Executor) -> None:
    limits = {"memory_bytes": 16 << 20}
    one = component(LOG_IFACE, LOG_LOWER, LOG_IMPORT, "", WITH_K)
    ex.upload(one, manifest("one-memory", limits=limits))
    assert ex.execute("one-memory", {}).output == {}
    # a core instance of its own with a memory of its own: memory_bytes more to hold
    extra = f'{LOG_LOWER}\n(core module $hog (memory 1))\n(core instance $hi (instantiate $hog))'
    two = component(LOG_IFACE, extra, LOG_IMPORT, "", WITH_K)
    with pytest.raises(errors.ManifestInvalid) as caught:
        ex.upload(two, manifest("two-memories", limits=limits))
    assert "more than 1 linear memory" in caught.value.message
    with pytest.raises(errors.LoomError):
        ex.execute("two-memories", {})


# -- an error record is bounded by max_output_bytes ----------------------------------------

def error_component(size: int) -> bytes:
    """`run` returns err({code: "x", message: "A" * size, retryable: false,
    details: some("B" * size)})."""
    pages = (2 * size + 131072) // 65536 + 2
    wat = f'''
(component
  (type $err (record (field "code" string) (field "message" string) (field "retryable" bool)
                     (field "details" (option string))))
  (export $err2 "error" (type $err))
  (core module $m
    (memory (export "memory") {pages})
    (global $bump (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32) global.get $bump local.set $p
      global.get $bump local.get 3 i32.add global.set $bump local.get $p)
    (func (export "run") (param i32 i32) (result i32)
      (memory.fill (i32.const 131072) (i32.const 65) (i32.const {size}))
      (memory.fill (i32.const {131072 + size}) (i32.const 66) (i32.const {size}))
      (i32.store8 (i32.const 200) (i32.const 120))
      (i32.store8 (i32.const 64) (i32.const 1))
      (i32.store (i32.const 68) (i32.const 200)) (i32.store (i32.const 72) (i32.const 1))
      (i32.store (i32.const 76) (i32.const 131072)) (i32.store (i32.const 80) (i32.const {size}))
      (i32.store8 (i32.const 84) (i32.const 0))
      (i32.store8 (i32.const 88) (i32.const 1))
      (i32.store (i32.const 92) (i32.const {131072 + size}))
      (i32.store (i32.const 96) (i32.const {size}))
      (i32.const 64)))
  (core instance $i (instantiate $m))
  (func (export "run") (param "input" string) (result (result string (error $err2)))
    (canon lift (core func $i "run") (memory (core memory $i "memory"))
                (realloc (core func $i "realloc")))))'''
    return bytes(wasmtime.wat2wasm(wat))


def test_error_record_strings_are_cut_at_max_output_bytes(ex: Executor) -> None:
    ex.upload(error_component(1 << 20), manifest(
        "bigerr", limits={"max_output_bytes": 1024, "memory_bytes": 8 << 20}))
    with pytest.raises(errors.GuestError) as caught:
        ex.execute("bigerr", {})
    err = caught.value
    assert len(err.message) == 1024 and set(err.message) == {"A"}
    assert isinstance(err.details, dict) and set(err.details) == {"code", "details"}
    assert err.details["code"] == "x"
    assert len(err.details["details"]) == 1024 and set(err.details["details"]) == {"B"}
    assert len(str(err)) < 2 * 1024
    assert not err.retryable


# -- guest log levels --------------------------------------------------------------------

def test_unknown_log_level_is_info_and_counted(ex: Executor) -> None:
    size, entries = 16 << 10, 200
    body = f'''(call $k (i32.const 300) (i32.const 7) (i32.const 310) (i32.const 2)
                 (i32.const 0) (i32.const 0))
 (memory.fill (i32.const 65536) (i32.const 97) (i32.const {size}))
 (local.set 0 (i32.const 0))
 (block $b (loop $l
   (call $k (i32.const 65536) (i32.const {size}) (i32.const 0) (i32.const 0) (i32.const 0)
            (i32.const 0))
   (local.set 0 (i32.add (local.get 0) (i32.const 1)))
   (br_if $l (i32.lt_u (local.get 0) (i32.const {entries})))))'''
    data = '(data (i32.const 300) "warning") (data (i32.const 310) "hi")'
    ex.upload(component(LOG_IFACE, LOG_LOWER, LOG_IMPORT, body, WITH_K, extra_core=data),
              manifest("logbomb", capabilities={"log": True},
                       limits={"max_log_bytes": 1024, "memory_bytes": 8 << 20}))
    result = ex.execute("logbomb", {})
    assert result.logs[0]["level"] == "warning" and result.logs[0]["message"] == "hi"
    assert all(entry["level"] in LEVELS for entry in result.logs)
    assert [entry["level"] for entry in result.logs[1:]] == ["info"] * (len(result.logs) - 1)
    assert sum(len(e["level"]) + len(e["message"]) for e in result.logs) <= 1024
    assert result.logs_dropped > 0
    assert len(result.logs) + result.logs_dropped == entries + 1
