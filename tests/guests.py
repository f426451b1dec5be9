"""Inline-WAT guests for the executor tests, plus small helpers to build manifests and executors.

Core-v1 guests share one layout: static data below 4096, host-call results at 4096..65535,
the input buffer (returned by `loom_alloc`) from INPUT_BASE = 65536 upwards. The memory
starts at two pages unless a guest says otherwise.

Many hostile guests take `gate=True`: an input of exactly two bytes (`{}`) is echoed back,
anything else triggers the hostile behaviour. That lets one activity serve a healthy call
(to warm the pool) and a hostile one (to check that the poisoned instance is retired).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import wasmtime

from runtime.executor import Executor
from runtime.settings import load_settings

INPUT_BASE = 65536
DATA_BASE = 1024
RESULT_BASE = 4096
RESULT_CAP = INPUT_BASE - RESULT_BASE
MiB = 1024 * 1024

HOST_IMPORTS = """
  (import "loom" "host_call" (func $host_call (param i32 i32) (result i32)))
  (import "loom" "host_result" (func $host_result (param i32) (result i32)))"""

_ALLOC = f"""
  (func $alloc (export "loom_alloc") (param $n i32) (result i32)
    (local $need i32)
    ;; pages needed so that [INPUT_BASE, INPUT_BASE + n) fits
    (local.set $need (i32.shr_u (i32.add (i32.add (i32.const {INPUT_BASE}) (local.get $n))
                                         (i32.const 65535)) (i32.const 16)))
    (if (i32.gt_u (local.get $need) (memory.size))
      (then (if (i32.eq (memory.grow (i32.sub (local.get $need) (memory.size))) (i32.const -1))
              (then (return (i32.const 0))))))
    (i32.const {INPUT_BASE}))"""

_PACK = """
  (func $pack (param $p i32) (param $l i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $l)) (i64.const 32))
            (i64.extend_i32_u (local.get $p))))"""

_ITOA = """
  ;; write the decimal form of $v at $dst, return its length
  (func $itoa (param $v i32) (param $dst i32) (result i32)
    (local $len i32) (local $t i32) (local $i i32)
    (local.set $t (local.get $v))
    (local.set $len (i32.const 1))
    (block $b (loop $l
      (br_if $b (i32.lt_u (local.get $t) (i32.const 10)))
      (local.set $t (i32.div_u (local.get $t) (i32.const 10)))
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (br $l)))
    (local.set $i (local.get $len))
    (local.set $t (local.get $v))
    (loop $w
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (local.get $dst) (local.get $i))
                  (i32.add (i32.const 48) (i32.rem_u (local.get $t) (i32.const 10))))
      (local.set $t (i32.div_u (local.get $t) (i32.const 10)))
      (br_if $w (local.get $i)))
    (local.get $len))
  ;; write {"<key>":<v>} at RESULT_BASE where the prefix {"<key>": is at DATA_BASE
  (func $json_int (param $prefix_len i32) (param $v i32) (result i64)
    (local $n i32)
    (memory.copy (i32.const 4096) (i32.const 1024) (local.get $prefix_len))
    (local.set $n (call $itoa (local.get $v)
                              (i32.add (i32.const 4096) (local.get $prefix_len))))
    (local.set $n (i32.add (local.get $prefix_len) (local.get $n)))
    (i32.store8 (i32.add (i32.const 4096) (local.get $n)) (i32.const 125))
    (call $pack (i32.const 4096) (i32.add (local.get $n) (i32.const 1))))"""

_GATE = """
    (if (i32.eq (local.get $len) (i32.const 2))
      (then (return (call $pack (local.get $ptr) (local.get $len)))))"""


def wat_string(data: bytes | str) -> str:
    """Escape bytes for a WAT string literal."""
    raw = data.encode() if isinstance(data, str) else data
    return "".join(f"\\{b:02x}" for b in raw)


def core_wat(run: str, *, imports: str = "", funcs: str = "", data: bytes | str = b"",
             pages: int = 2, max_pages: int | None = None, gate: bool = False,
             globals_: str = "", exports_alloc: bool = True, run_export: str = "loom_run",
             run_signature: str = "(param $ptr i32) (param $len i32) (result i64)") -> str:
    memory = f"{pages}" + (f" {max_pages}" if max_pages is not None else "")
    data_seg = f'(data (i32.const {DATA_BASE}) "{wat_string(data)}")' if data else ""
    alloc = _ALLOC if exports_alloc else ""
    return f"""(module
  {imports}
  (memory (export "memory") {memory})
  {data_seg}
  {globals_}
  {alloc}
  {_PACK}
  {_ITOA}
  {funcs}
  (func (export "{run_export}") {run_signature}
    (local $i i32) (local $n i32)
    {_GATE if gate else ""}
    {run}))"""


def core(run: str, **kw: Any) -> bytes:
    return wasmtime.wat2wasm(core_wat(run, **kw))


# -- well-behaved guests -------------------------------------------------------------------

def echo() -> bytes:
    """Returns its input unchanged."""
    return core("(call $pack (local.get $ptr) (local.get $len))")


def constant(text: str | bytes, *, error: bool = False) -> bytes:
    """Returns `text` (from a data segment); with error=True, sets bit 63 (guest error)."""
    raw = text.encode() if isinstance(text, str) else text
    result = f"(call $pack (i32.const {DATA_BASE}) (i32.const {len(raw)}))"
    if error:
        result = f"(i64.or {result} (i64.const 0x8000000000000000))"
    return core(result, data=raw)


def raw_result(value: int, *, gate: bool = True) -> bytes:
    """loom_run returns the 64-bit `value` verbatim (pointer/length tricks)."""
    signed = value - (1 << 64) if value >= 1 << 63 else value
    return core(f"(i64.const {signed})", gate=gate)


def counter() -> bytes:
    """Counts its calls in a global and returns {"count":N}. State persists in a reused
    instance only."""
    prefix = b'{"count":'
    return core(f"""
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (call $json_int (i32.const {len(prefix)}) (global.get $count))""",
                data=prefix, globals_="(global $count (mut i32) (i32.const 0))")


def host_proxy() -> bytes:
    """Passes its input to loom.host_call as the request and returns the response JSON."""
    return core(f"""
    (local.set $n (call $host_call (local.get $ptr) (local.get $len)))
    (if (i32.gt_u (local.get $n) (i32.const {RESULT_CAP})) (then (unreachable)))
    (drop (call $host_result (i32.const {RESULT_BASE})))
    (call $pack (i32.const {RESULT_BASE}) (local.get $n))""", imports=HOST_IMPORTS)


def clock_reader(*, gate: bool = False) -> bytes:
    """Calls WASI clock_time_get, then echoes its input."""
    imports = """(import "wasi_snapshot_preview1" "clock_time_get"
               (func $clock (param i32 i64 i32) (result i32)))"""
    return core("""
    (drop (call $clock (i32.const 0) (i64.const 1) (i32.const 16)))
    (call $pack (local.get $ptr) (local.get $len))""", imports=imports, gate=gate)


_CLOCK_IMPORTS = """
  (import "wasi_snapshot_preview1" "clock_time_get"
    (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_res_get" (func $res (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))"""

_HEX = """
  ;; write the 2n lowercase hex digits of the n bytes at $src to $dst
  (func $hex (param $src i32) (param $n i32) (param $dst i32)
    (local $i i32) (local $b i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $b (i32.load8_u (i32.add (local.get $src) (local.get $i))))
      (i32.store8 (i32.add (local.get $dst) (i32.shl (local.get $i) (i32.const 1)))
        (i32.load8_u (i32.add (i32.const 1024) (i32.shr_u (local.get $b) (i32.const 4)))))
      (i32.store8 (i32.add (local.get $dst)
                           (i32.add (i32.shl (local.get $i) (i32.const 1)) (i32.const 1)))
        (i32.load8_u (i32.add (i32.const 1024) (i32.and (local.get $b) (i32.const 15)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next))))"""

CLOCK_PROBE_LAYOUT = "<QQQQ16s16sI"
"""realtime, realtime again, monotonic, realtime resolution, random 16 B twice, errno sum."""


def clock_probe() -> bytes:
    """Reads the realtime clock twice, the monotonic clock, the realtime resolution and two
    16-byte random blocks; returns them (CLOCK_PROBE_LAYOUT) as one hex JSON string."""
    return core("""
    (local.set $n (call $clock (i32.const 0) (i64.const 1) (i32.const 2048)))
    (local.set $n (i32.add (local.get $n) (call $clock (i32.const 0) (i64.const 1)
                                                       (i32.const 2056))))
    (local.set $n (i32.add (local.get $n) (call $clock (i32.const 1) (i64.const 1)
                                                       (i32.const 2064))))
    (local.set $n (i32.add (local.get $n) (call $res (i32.const 0) (i32.const 2072))))
    (local.set $n (i32.add (local.get $n) (call $random (i32.const 2080) (i32.const 16))))
    (local.set $n (i32.add (local.get $n) (call $random (i32.const 2096) (i32.const 16))))
    (i32.store (i32.const 2112) (local.get $n))
    (i32.store8 (i32.const 4096) (i32.const 34))
    (call $hex (i32.const 2048) (i32.const 68) (i32.const 4097))
    (i32.store8 (i32.const 4233) (i32.const 34))
    (call $pack (i32.const 4096) (i32.const 138))""", imports=_CLOCK_IMPORTS, funcs=_HEX,
                data="0123456789abcdef")


def file_opener(path: str, *, gate: bool = False) -> bytes:
    """Calls WASI path_open(fd 3, `path`) and returns {"errno":N}."""
    imports = """(import "wasi_snapshot_preview1" "path_open"
               (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))"""
    prefix = b'{"errno":'
    raw = prefix + path.encode()
    return core(f"""
    (local.set $n (call $path_open (i32.const 3) (i32.const 0)
                   (i32.const {DATA_BASE + len(prefix)}) (i32.const {len(path.encode())})
                   (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 64)))
    (call $json_int (i32.const {len(prefix)}) (local.get $n))""", data=raw, imports=imports,
                gate=gate)


# -- hostile guests (gate=True: `{}` is echoed, any other input is hostile) -------------------

def infinite_loop() -> bytes:
    return core("(loop $spin (br $spin)) (unreachable)", gate=True)


def memory_bomb() -> bytes:
    """Grows memory a page at a time until memory.grow fails, then traps."""
    return core("""
    (loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    (unreachable)""", gate=True)


def big_initial_memory(pages: int) -> bytes:
    return core("(call $pack (local.get $ptr) (local.get $len))", pages=pages)


def deep_recursion() -> bytes:
    funcs = """
  (func $deep (param $x i32) (result i32)
    (i32.add (call $deep (i32.add (local.get $x) (i32.const 1))) (i32.const 1)))"""
    return core("(i64.extend_i32_u (call $deep (i32.const 0)))", funcs=funcs, gate=True)


def trapper() -> bytes:
    """Traps with `unreachable` on any input but `{}`."""
    return core("(unreachable)", gate=True)


def gated_constant(text: str | bytes) -> bytes:
    """Echoes `{}`, returns `text` for any other input."""
    raw = text.encode() if isinstance(text, str) else text
    return core(f"(call $pack (i32.const {DATA_BASE}) (i32.const {len(raw)}))", data=raw,
                gate=True)



def initialize_loop() -> bytes:
    """An `_initialize` export that never returns (runs at instantiation)."""
    return core("(call $pack (local.get $ptr) (local.get $len))",
                funcs='(func (export "_initialize") (loop $spin (br $spin)))')


def host_call_out_of_bounds(ptr: int, length: int) -> bytes:
    """Passes a request pointer/length outside linear memory to loom.host_call."""
    return core(f"""
    (drop (call $host_call (i32.const {ptr}) (i32.const {length})))
    (call $pack (local.get $ptr) (local.get $len))""", imports=HOST_IMPORTS, gate=True)


def host_result_out_of_bounds(dst: int) -> bytes:
    """Makes a valid host call, then asks for the result at `dst` outside linear memory."""
    return core(f"""
    (drop (call $host_call (local.get $ptr) (local.get $len)))
    (drop (call $host_result (i32.const {dst})))
    (call $pack (local.get $ptr) (local.get $len))""", imports=HOST_IMPORTS, gate=True)

# -- malformed modules ------------------------------------------------------------------------

def missing_run() -> bytes:
    return core("(call $pack (local.get $ptr) (local.get $len))", run_export="not_loom_run")


def wrong_run_signature() -> bytes:
    return core("(local.get $ptr)", run_signature="(param $ptr i32) (result i32)")


def with_import(module: str, name: str, signature: str) -> bytes:
    imports = f'(import "{module}" "{name}" (func $imported {signature}))'
    return core("(call $pack (local.get $ptr) (local.get $len))", imports=imports)


# -- WASI command programs ---------------------------------------------------------------------

_WASI_IMPORTS = """
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))"""

# iovec at 0 (buf, len), nread/nwritten at 8, data at 1024, stdin buffer from 65536 (64 KiB)
_WASI_READ_WRITE = """
  (func $write (param $fd i32) (param $buf i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $buf))
    (i32.store (i32.const 4) (local.get $len))
    (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
  (func $read_stdin (result i32)
    (local $total i32) (local $err i32)
    (block $done (loop $more
      (i32.store (i32.const 0) (i32.add (i32.const 65536) (local.get $total)))
      (i32.store (i32.const 4) (i32.sub (i32.const 65536) (local.get $total)))
      (local.set $err (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br_if $done (local.get $err))
      (br_if $done (i32.eqz (i32.load (i32.const 8))))
      (local.set $total (i32.add (local.get $total) (i32.load (i32.const 8))))
      (br $more)))
    (local.get $total))"""


def wasi_wat(start: str, *, data: bytes | str = b"") -> str:
    data_seg = f'(data (i32.const {DATA_BASE}) "{wat_string(data)}")' if data else ""
    return f"""(module
  {_WASI_IMPORTS}
  (memory (export "memory") 2)
  {data_seg}
  {_WASI_READ_WRITE}
  (func (export "_start")
    (local $n i32) (local $i i32)
    {start}))"""


def wasi(start: str, *, data: bytes | str = b"") -> bytes:
    return wasmtime.wat2wasm(wasi_wat(start, data=data))


def wasi_echo() -> bytes:
    """stdin -> stdout."""
    return wasi("""
    (local.set $n (call $read_stdin))
    (drop (call $write (i32.const 1) (i32.const 65536) (local.get $n)))""")


def wasi_clock_echo() -> bytes:
    """Reads the realtime clock at start-up (as many libcs and runtimes do), traps if that
    fails, then copies stdin to stdout."""
    wat = wasi_wat("""
    (if (call $clock (i32.const 0) (i64.const 1) (i32.const 16)) (then (unreachable)))
    (local.set $n (call $read_stdin))
    (drop (call $write (i32.const 1) (i32.const 65536) (local.get $n)))""")
    imports = ('(import "wasi_snapshot_preview1" "clock_time_get" '
               '(func $clock (param i32 i64 i32) (result i32)))')
    return wasmtime.wat2wasm(wat.replace("(module", "(module " + imports, 1))


def wasi_environ() -> bytes:
    """Writes its WASI environment to stdout as one JSON string, "K=V;" per variable."""
    wat = wasi_wat("""
    (drop (call $sizes (i32.const 0) (i32.const 4)))
    (drop (call $environ (i32.const 16) (i32.const 2049)))
    (local.set $n (i32.load (i32.const 4)))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (if (i32.eqz (i32.load8_u (i32.add (i32.const 2049) (local.get $i))))
        (then (i32.store8 (i32.add (i32.const 2049) (local.get $i)) (i32.const 59))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (i32.store8 (i32.const 2048) (i32.const 34))
    (i32.store8 (i32.add (i32.const 2049) (local.get $n)) (i32.const 34))
    (drop (call $write (i32.const 1) (i32.const 2048) (i32.add (local.get $n) (i32.const 2))))""")
    imports = ('(import "wasi_snapshot_preview1" "environ_sizes_get" '
               '(func $sizes (param i32 i32) (result i32)))'
               '(import "wasi_snapshot_preview1" "environ_get" '
               '(func $environ (param i32 i32) (result i32)))')
    return wasmtime.wat2wasm(wat.replace("(module", "(module " + imports, 1))


def wasi_fail(stderr: str, code: int) -> bytes:
    """Writes `stderr` to fd 2 and exits with `code`."""
    raw = stderr.encode()
    return wasi(f"""
    (drop (call $write (i32.const 2) (i32.const {DATA_BASE}) (i32.const {len(raw)})))
    (call $proc_exit (i32.const {code}))""", data=raw)


def wasi_flood(chunk: int = 4096, max_writes: int = 100_000) -> bytes:
    """Writes `chunk`-byte blocks of 'x' to stdout until a write fails (or max_writes)."""
    return wasi(f"""
    (memory.fill (i32.const 65536) (i32.const 120) (i32.const {chunk}))
    (block $stop (loop $again
      (br_if $stop (call $write (i32.const 1) (i32.const 65536) (i32.const {chunk})))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const {max_writes})))))""")


def wasi_loop() -> bytes:
    return wasi("(loop $spin (br $spin))")


def wasi_recursion(*, prelude: str = "", data: bytes | str = b"") -> bytes:
    """Runs `prelude`, then recurses until the stack overflows."""
    wat = wasi_wat(prelude + "(drop (call $deep (i32.const 0)))", data=data)
    deep = """(func $deep (param $x i32) (result i32)
    (i32.add (call $deep (i32.add (local.get $x) (i32.const 1))) (i32.const 1)))
  (func (export "_start")"""
    return wasmtime.wat2wasm(wat.replace('(func (export "_start")', deep))


def wasi_flood_forever(chunk: int = 4096) -> bytes:
    """Writes `chunk`-byte blocks of 'x' to stdout forever, ignoring every error."""
    return wasi(f"""
    (memory.fill (i32.const 65536) (i32.const 120) (i32.const {chunk}))
    (loop $again
      (drop (call $write (i32.const 1) (i32.const 65536) (i32.const {chunk})))
      (br $again))""")


# -- manifests and executors -------------------------------------------------------------------

def manifest(name: str, version: str = "1.0.0", *, limits: Mapping[str, Any] | None = None,
             capabilities: Mapping[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A manifest dict (no sha256: upload fills it in)."""
    m: dict[str, Any] = {"name": name, "version": version, **fields}
    if limits:
        m["limits"] = dict(limits)
    if capabilities:
        m["capabilities"] = dict(capabilities)
    return m


def make_executor(home: Path, *, secrets: Mapping[str, str] | None = None,
                  env: Mapping[str, str] | None = None, **settings: Any) -> Executor:
    settings.setdefault("pool_size", 4)
    settings.setdefault("epoch_tick_ms", 5)
    return Executor(load_settings(home=home, **settings), secrets=dict(secrets or {}),
                    env=dict(env or {}))


@contextmanager
def executor_at(home: Path, **kw: Any) -> Iterator[Executor]:
    ex = make_executor(home, **kw)
    try:
        yield ex
    finally:
        ex.close()


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# -- assertions ---------------------------------------------------------------------------------

def check_error(exc: BaseException, cls: type, *, code: str, activity: str | None,
                version: str | None = "1.0.0", key: str | None = None, retryable: bool = False,
                mentions: tuple[str, ...] = ()) -> None:
    """Assert the exact error type, its taxonomy code, retryability, where, and message."""
    from runtime import errors

    assert type(exc) is cls, f"expected {cls.__name__}, got {type(exc).__name__}: {exc}"
    assert isinstance(exc, errors.LoomError)
    assert exc.code.value == code
    assert exc.to_dict()["code"] == code
    assert exc.retryable is retryable
    assert exc.to_dict()["retryable"] is retryable
    assert exc.activity == activity
    assert exc.version == version
    if key is not None:
        assert exc.idempotency_key == key
    for word in mentions:
        assert word in exc.message, f"{word!r} not in message {exc.message!r}"
