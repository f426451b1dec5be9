"""Wasmtime engines, one per configuration, and the epoch clock that enforces deadlines."""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import threading
import time
from dataclasses import dataclass
from functools import cache, cached_property

import wasmtime
from wasmtime import _ffi as ffi

log = logging.getLogger("loom.executor")
IDLE_S = 1.0  # with no guest code running, the ticker wakes this often
# keeps the GIL (a few nanoseconds of work): no thread switch per increment
_increment_epoch = ctypes.PYFUNCTYPE(None, ctypes.c_void_p)(
    ("wasmtime_engine_increment_epoch", ffi.dll))

WASMTIME_VERSION = "50"


@dataclass(frozen=True, unsafe_hash=True)
class EngineConfig:
    """Everything that changes compiled code; modules never cross configurations."""

    fuel: bool
    max_stack: int

    @cached_property
    def fingerprint(self) -> str:
        return (f"wasmtime{_wasmtime_version()}-{platform.machine()}-epoch"
                f"-fuel{int(self.fuel)}-stack{self.max_stack}")


@cache
def _wasmtime_version() -> str:
    """The installed wasmtime-py version, from its dist-info folder name (a directory
    listing, ~0.1 ms; importlib.metadata scans sys.path and parses METADATA, ~0.5 ms)."""
    site = os.path.dirname(os.path.dirname(wasmtime.__file__))
    try:
        found = [n for n in os.listdir(site)
                 if n.startswith("wasmtime-") and n.endswith(".dist-info")]
    except OSError:  # pragma: no cover - unreadable site-packages
        found = []
    if len(found) == 1:
        return found[0][len("wasmtime-"):-len(".dist-info")]
    try:
        from importlib.metadata import version
        return version("wasmtime")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        return WASMTIME_VERSION


class Engines:
    """Lazily builds engines per config, and ticks their epochs every `tick_ms` while guest
    code runs, so that a call's epoch deadline (set `ticks` ahead) traps it on time.

    Guest code (arming a deadline, instantiating, calling) runs between `begin` and `end`.
    The ticker ticks while any runs, and for `IDLE_S` after the last; then it sleeps, and
    the next `begin` wakes it. Asleep, it still wakes every `IDLE_S` and counts that
    second's ticks at once, so that guest code run outside `begin`/`end` would still be
    trapped, late. An idle process used to wake 200 times a second, each time taking the
    GIL."""

    def __init__(self, tick_ms: int = 5) -> None:
        self.tick_ms = tick_ms
        self._tick_s = tick_ms / 1000
        self._engines: dict[EngineConfig, wasmtime.Engine] = {}
        self._lock = threading.Lock()
        self._mutex = threading.Lock()  # guards what follows
        self._clock = threading.Condition(self._mutex)  # the ticker waits on it
        self.running = 0  # guest calls between begin and end
        self._recent = False  # a call began since the ticker last looked
        self.asleep = False  # the ticker waits for a begin
        self.epoch = 0  # ticks so far, the same for every engine
        self._stop = False
        self._ticker = threading.Thread(target=self._tick, name="loom-epoch", daemon=True)
        self._ticker.start()

    def get(self, config: EngineConfig) -> wasmtime.Engine:
        engine = self._engines.get(config)
        if engine is None:
            with self._lock:
                engine = self._engines.get(config)
                if engine is None:
                    cfg = wasmtime.Config()
                    cfg.epoch_interruption = True
                    cfg.consume_fuel = config.fuel
                    cfg.max_wasm_stack = config.max_stack
                    cfg.cranelift_opt_level = "speed"
                    engine = wasmtime.Engine(cfg)
                    self._engines[config] = engine
        return engine

    def ticks_for(self, timeout_ms: int) -> int:
        """Epoch ticks covering `timeout_ms` (at least one full tick beyond it)."""
        return -(-timeout_ms // self.tick_ms) + 1

    def begin(self) -> None:
        """Guest code is about to run: the epochs tick until `end`. Its deadlines count from
        when they are set, whatever host work comes first (fetching, compiling)."""
        with self._mutex:
            self.running += 1
            self._recent = True
            if self.asleep:
                self.asleep = False
                self._clock.notify()

    def end(self) -> None:
        """Guest code that `begin` announced has returned."""
        with self._mutex:
            self.running -= 1

    def _tick(self) -> None:
        """Ticks until `close`. A tick that fails (an engine gone bad) is logged and the
        ticker goes on: without it, no deadline would ever trap a guest again."""
        while not self._stop:
            try:
                self._ticks()
            except Exception:
                log.exception("the epoch ticker failed (it goes on ticking)")
                time.sleep(self._tick_s)

    def _ticks(self) -> None:
        grace = idle_ticks = max(1, round(IDLE_S / self._tick_s))
        quiet = 0  # ticks since guest code last ran
        with self._clock:
            while not self._stop:
                if quiet < grace:
                    self._clock.wait(self._tick_s)
                    ticks = 1
                    quiet = 0 if self.running or self._recent else quiet + 1
                    self._recent = False
                else:
                    self.asleep = True
                    woken = self._clock.wait(IDLE_S)
                    ticks = 0 if woken else idle_ticks
                    if self.running or self._recent:  # a begin came: tick again
                        self.asleep, quiet, self._recent = False, 0, False
                pointers = [e.ptr() for e in list(self._engines.values())]
                for _ in range(ticks):
                    for ptr in pointers:
                        _increment_epoch(ptr)
                self.epoch += ticks

    def close(self) -> None:
        with self._clock:
            self._stop = True
            self._clock.notify()
        self._ticker.join(timeout=1)
