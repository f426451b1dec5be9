"""Resource use is reported for both ABIs: peak linear memory, and fuel where it is on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import guests
import pytest
from guests import manifest

from runtime.executor import Executor

PAGE = 65536


@pytest.fixture
def executor(tmp_path: Path) -> Iterator[Executor]:
    with guests.executor_at(tmp_path / "home") as ex:
        yield ex


def _wasi_grower(pages: int) -> bytes:
    """Grows memory by `pages` (from 2), then copies stdin to stdout."""
    return guests.wasi(f"""
    (drop (memory.grow (i32.const {pages})))
    (local.set $n (call $read_stdin))
    (drop (call $write (i32.const 1) (i32.const 65536) (local.get $n)))""")


def _core_grower(pages: int) -> bytes:
    return guests.core(f"""
    (drop (memory.grow (i32.const {pages})))
    (call $pack (local.get $ptr) (local.get $len))""")


@pytest.mark.parametrize("abi, make", [("wasi-command", _wasi_grower),
                                       ("core-v1", _core_grower)])
@pytest.mark.parametrize("fuel", [None, 5_000_000])
def test_peak_memory_and_fuel_are_reported(executor: Executor, abi: str, make: object,
                                           fuel: int | None) -> None:
    assert callable(make)
    for grow in (3, 9):
        name = f"grow{grow}-{abi}"
        limits = {"fuel": fuel} if fuel else None
        executor.upload(make(grow), manifest(name, abi=abi, limits=limits))
        result = executor.execute(name, {"x": "y" * 100})
        assert result.output == {"x": "y" * 100}
        assert result.memory_bytes == (2 + grow) * PAGE, (abi, grow, result.memory_bytes)
        if fuel is None:
            assert result.fuel_used is None
        else:
            assert result.fuel_used is not None and 0 < result.fuel_used < fuel


def test_sample_wasi_command_reports_memory(executor: Executor) -> None:
    """The C sample `wasi_upper` (zig-built, wasi-libc) reports its real memory."""
    root = Path(__file__).parents[1] / "activities" / "build"
    wasm, meta = root / "wasi_upper.wasm", root / "wasi_upper.manifest.json"
    if not wasm.is_file():
        pytest.skip("run `make activities` first")
    executor.upload(wasm.read_bytes(), meta.read_text())
    result = executor.execute("wasi_upper", {"text": "abc"})
    assert result.output["upper"] == "ABC"
    assert result.memory_bytes >= 5 * PAGE
