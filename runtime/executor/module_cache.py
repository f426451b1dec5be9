"""Compiled-module cache: an in-memory LRU over an HMAC-authenticated on-disk cache.

`Module.deserialize` runs whatever native code the bytes contain, so a disk entry is
loaded only when its HMAC (keyed per installation) verifies over the engine
fingerprint, the wasm sha256 and the serialized bytes. A bad entry is deleted and the
module recompiled from the verified wasm.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from runtime import errors

log = logging.getLogger("loom.cache")
TAG_LEN = 32


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    compiles: int = 0
    rejected: int = 0


def load_or_create_key(path: Path) -> bytes:
    """The per-installation HMAC key: 32 random bytes in a file readable by its owner only."""
    try:
        key = path.read_bytes()
        if len(key) == 32:
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


class ModuleCache:
    def __init__(self, directory: Path | None, key: bytes, capacity: int = 64) -> None:
        self.directory = directory
        self._key = key
        self.capacity = capacity
        self.stats = CacheStats()
        self._lru: OrderedDict[tuple[str, str], wasmtime.Module] = OrderedDict()
        self._lock = threading.Lock()
        self._compiling: dict[tuple[str, str], threading.Lock] = {}
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def get(self, engine: wasmtime.Engine, fingerprint: str, sha256: str,
            load_wasm: Callable[[], bytes]) -> wasmtime.Module:
        """Return the compiled module for `sha256`; `load_wasm` must return sha-verified bytes."""
        key = (fingerprint, sha256)
        with self._lock:
            module = self._lru.get(key)
            if module is not None:
                self._lru.move_to_end(key)
                self.stats.memory_hits += 1
                return module
            gate = self._compiling.setdefault(key, threading.Lock())
        with gate:  # one compile per key, concurrent callers wait for it
            with self._lock:
                module = self._lru.get(key)
            if module is None:
                module = self._from_disk(engine, fingerprint, sha256)
                if module is None:
                    module = self._compile(engine, load_wasm())
                    self.stats.compiles += 1
                    self._to_disk(module, fingerprint, sha256)
                else:
                    self.stats.disk_hits += 1
                self._remember(key, module)
        with self._lock:
            self._compiling.pop(key, None)
        return module

    def forget_memory(self) -> None:
        with self._lock:
            self._lru.clear()

    def _remember(self, key: tuple[str, str], module: wasmtime.Module) -> None:
        with self._lock:
            self._lru[key] = module
            self._lru.move_to_end(key)
            while len(self._lru) > self.capacity:
                self._lru.popitem(last=False)

    @staticmethod
    def _compile(engine: wasmtime.Engine, wasm: bytes) -> wasmtime.Module:
        try:
            return wasmtime.Module(engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise errors.ModuleInvalid(f"wasm does not compile: {_first_line(exc)}") from None

    def path_for(self, fingerprint: str, sha256: str) -> Path | None:
        if self.directory is None:
            return None
        config = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
        return self.directory / f"{sha256}.{config}.cwasm"

    def _tag(self, fingerprint: str, sha256: str, body: bytes) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        mac.update(fingerprint.encode() + b"\0" + sha256.encode() + b"\0")
        mac.update(body)
        return mac.digest()

    def _from_disk(self, engine: wasmtime.Engine, fingerprint: str,
                   sha256: str) -> wasmtime.Module | None:
        path = self.path_for(fingerprint, sha256)
        if path is None:
            return None
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        tag, body = blob[:TAG_LEN], blob[TAG_LEN:]
        expected = self._tag(fingerprint, sha256, body)
        if len(tag) != TAG_LEN or not hmac.compare_digest(tag, expected):
            self.stats.rejected += 1
            log.warning("discarding unauthenticated compiled-module cache file %s", path)
            path.unlink(missing_ok=True)
            return None
        try:
            return wasmtime.Module.deserialize(engine, body)
        except wasmtime.WasmtimeError as exc:
            self.stats.rejected += 1
            log.warning("discarding incompatible cache file %s: %s", path, _first_line(exc))
            path.unlink(missing_ok=True)
            return None

    def _to_disk(self, module: wasmtime.Module, fingerprint: str, sha256: str) -> None:
        path = self.path_for(fingerprint, sha256)
        if path is None:
            return
        body = bytes(module.serialize())
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self._tag(fingerprint, sha256, body))
                f.write(body)
            os.replace(tmp, path)
        except OSError as exc:  # a read-only or full disk only costs a recompile later
            log.warning("could not write cache file %s: %s", path, exc)
            Path(tmp).unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
