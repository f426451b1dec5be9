"""Wasmtime engines, one per configuration, and the epoch clock that enforces deadlines."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import math
import os
import platform
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, cached_property

import wasmtime
from wasmtime import _ffi as ffi

CATCH_UP_S = 0.1  # the ticker brings the epochs up to date at least this often
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
    """Lazily builds engines per config, and advances their epochs with wall time (one per
    `tick_ms`) so that a guest call's epoch deadline traps it on time.

    The epochs are brought up to date only when it matters, not every tick. A thread
    waking 200 times a second takes the GIL from the event loop each time; measured, that
    cost ~8 % of the loop's time per durable message. Now:

    - every call brings them up to date as it starts (`running`), so its deadline, set
      relative to the current epoch, counts from now;
    - the ticker thread sleeps until the earliest deadline among the calls in flight, and
      at least every `CATCH_UP_S`;
    - once a deadline has passed and its call is still running (say, in a host call), it
      ticks every `tick_ms` until that call ends, as before.

    A call's guest code must run inside `running` (instantiation too). Code that ran
    outside it would still be trapped, but up to `CATCH_UP_S` late."""

    def __init__(self, tick_ms: int = 5) -> None:
        self.tick_ms = tick_ms
        self._tick_s = tick_ms / 1000
        self._engines: dict[EngineConfig, wasmtime.Engine] = {}
        self._lock = threading.Lock()
        self._mutex = threading.Lock()  # guards the epoch and the calls in flight
        self._clock = threading.Condition(self._mutex)  # the ticker waits on it
        self._epoch = 0  # increments so far, the same for every engine
        self._base = time.monotonic()  # epoch k covers [base + k*tick, base + (k+1)*tick)
        self._due: dict[int, float] = {}  # call -> when its deadline epoch begins
        self._calls = itertools.count()
        self._wake_at = math.inf
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

    @contextlib.contextmanager
    def running(self, ticks: int) -> Iterator[None]:
        """Around guest code whose epoch deadlines are at most `ticks` ahead."""
        call = self.begin(ticks)
        try:
            yield
        finally:
            self.end(call)

    def begin(self, ticks: int) -> int:
        """Guest code whose epoch deadlines are at most `ticks` ahead is about to run: the
        epochs are brought up to date, and the ticker will wake when the deadline comes.
        Returns the call's number, for `end`."""
        now = time.monotonic()
        call = next(self._calls)
        with self._mutex:
            if now - self._base >= (self._epoch + 1) * self._tick_s:
                self._advance(now)
            at = self._base + (self._epoch + ticks) * self._tick_s
            self._due[call] = at
            if at < self._wake_at:
                self._clock.notify()
        return call

    def end(self, call: int) -> None:
        """The guest code `begin` announced has returned."""
        with self._mutex:
            del self._due[call]

    def _advance(self, now: float) -> None:
        """Bring every engine's epoch up to `now` (the caller holds `_mutex`)."""
        behind = int((now - self._base) / self._tick_s) - self._epoch
        if behind > 0:
            pointers = [e.ptr() for e in list(self._engines.values())]
            for _ in range(behind):
                for ptr in pointers:
                    _increment_epoch(ptr)
            self._epoch += behind

    def _tick(self) -> None:
        with self._clock:
            while not self._stop:
                now = time.monotonic()
                self._advance(now)
                soonest = min(self._due.values(), default=math.inf)
                # past due and still running: tick as often as the deadlines count
                self._wake_at = min(soonest if soonest > now else now + self._tick_s,
                                    now + CATCH_UP_S)
                self._clock.wait(self._wake_at - now)

    def close(self) -> None:
        with self._clock:
            self._stop = True
            self._clock.notify()
        self._ticker.join(timeout=1)
