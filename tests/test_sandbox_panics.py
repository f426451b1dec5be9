"""Trapping WASI commands must not take the host process down at exit.

wasmtime-py 50 with `WasiConfig.stdout_custom`/`stderr_custom` callbacks prints "panic in a
function that cannot unwind" from a tokio thread at process exit after a guest trapped, and
sometimes aborts (SIGABRT). The executor captures stdout/stderr in its own `fd_write` shadow
instead. Each run here is a fresh process that runs guests which write to stdout and stderr
and then time out or overflow the stack, on the calling thread and on the executor's pool.

`LOOM_CHAOS_RUNS=500 .venv/bin/pytest tests/test_sandbox_panics.py` runs the long version.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

RUNS = int(os.environ.get("LOOM_CHAOS_RUNS", "40"))
TESTS = Path(__file__).parent

SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import guests
    from runtime import errors

    say = ("(drop (call $write (i32.const 1) (i32.const 1024) (i32.const 4)))"
           "(drop (call $write (i32.const 2) (i32.const 1024) (i32.const 4)))")
    spin = guests.wasi(say + "(loop $s (br $s))", data="out\\n")
    deep = guests.wasi_recursion(prelude=say, data="out\\n")
    with guests.executor_at(Path(sys.argv[1])) as ex:
        ex.upload(spin, guests.manifest("spin", abi="wasi-command",
                                        limits={{"timeout_ms": 10}}))
        ex.upload(deep, guests.manifest("deep", abi="wasi-command"))
        seen = []

        async def main() -> None:
            for name in ("spin", "deep"):
                for run in (lambda: ex.invoke(name, {{}}), None):
                    try:
                        if run is None:
                            ex.execute(name, {{}})
                        else:
                            await run()
                    except errors.LoomError as exc:
                        seen.append(type(exc).__name__)
        asyncio.run(main())
    print(",".join(seen))
""")

EXPECTED = "Timeout,Timeout,StackOverflow,StackOverflow"


def _run(home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT.format(tests=str(TESTS)), str(home)],
                          capture_output=True, text=True, timeout=120,
                          cwd=TESTS.parent, env={**os.environ, "RUST_BACKTRACE": "0"})


@pytest.mark.system
def test_trapping_wasi_commands_never_panic_or_abort_at_exit(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
        procs = list(pool.map(_run, [tmp_path / f"h{i}" for i in range(RUNS)]))
    panics = sum("panicked" in p.stderr or "cannot unwind" in p.stderr for p in procs)
    aborts = sum(p.returncode != 0 for p in procs)
    wrong = [p.stdout.strip() for p in procs if p.stdout.strip() != EXPECTED]
    first_bad = next((p.stderr[-800:] for p in procs if p.returncode or p.stderr), "")
    assert (panics, aborts, wrong) == (0, 0, []), (
        f"{panics} of {RUNS} runs printed a panic, {aborts} exited non-zero; first: {first_bad}")
