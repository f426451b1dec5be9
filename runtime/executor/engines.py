"""Wasmtime engines, one per configuration, and the epoch ticker that enforces deadlines."""

from __future__ import annotations

import os
import platform
import threading
from dataclasses import dataclass
from functools import cache, cached_property

import wasmtime

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
    """Lazily builds engines per config and ticks their epochs every `tick_ms`."""

    def __init__(self, tick_ms: int = 5) -> None:
        self.tick_ms = tick_ms
        self._engines: dict[EngineConfig, wasmtime.Engine] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
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

    def _tick(self) -> None:
        interval = self.tick_ms / 1000
        while not self._stop.wait(interval):
            for engine in list(self._engines.values()):
                engine.increment_epoch()

    def close(self) -> None:
        self._stop.set()
        self._ticker.join(timeout=1)
