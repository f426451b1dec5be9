"""Compiled-code cache: an in-memory LRU over an HMAC-authenticated on-disk cache.

Holds core modules (`wasmtime.Module`) and components (`wasmtime.component.Component`).
`deserialize` runs whatever native code the bytes contain, so a disk entry is loaded
only when its HMAC (keyed per installation) verifies over the kind, the engine
fingerprint, the wasm sha256 and the serialized bytes. A bad entry is deleted and the
code recompiled from the verified wasm.

Large entries (components: ~36 MB) load through a sealed memfd: the file's body is
copied by the kernel into an anonymous memory file, sealed against every write, and
the HMAC is checked over that sealed copy, which wasmtime then maps with
`deserialize_file` (~3 ms instead of ~47 ms from bytes). What is verified is exactly
what is loaded; swapping or rewriting the cache file after the check changes nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import logging
import mmap
import os
import secrets
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import wasmtime
from wasmtime.component import Component

from runtime import errors

log = logging.getLogger("loom.cache")
TAG_LEN = 32
MEMFD_MIN_BYTES = 1024 * 1024
"""Entries at least this large load through a sealed memfd (see the module docstring)."""
Kind = Literal["module", "component"]
Compiled = Any
"""A `wasmtime.Module` or a `wasmtime.component.Component`."""


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
        self._lru: OrderedDict[tuple[str, str, str], Compiled] = OrderedDict()
        self._lock = threading.Lock()
        self._compiling: dict[tuple[str, str, str], threading.Lock] = {}
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def get(self, engine: wasmtime.Engine, fingerprint: str, sha256: str,
            load_wasm: Callable[[], bytes], *, kind: Kind = "module",
            on_compile: Callable[[], None] | None = None) -> Compiled:
        """Return the compiled module (or component) for `sha256`; `load_wasm` must return
        sha-verified bytes. `on_compile` is called before a (slow) compile starts."""
        key = (kind, fingerprint, sha256)
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
                module = self._from_disk(engine, fingerprint, sha256, kind)
                if module is None:
                    wasm = load_wasm()
                    if on_compile is not None:
                        on_compile()
                    module = self._compile(engine, wasm, kind)
                    self.stats.compiles += 1
                    self._to_disk(module, fingerprint, sha256, kind)
                else:
                    self.stats.disk_hits += 1
                self._remember(key, module)
        with self._lock:
            self._compiling.pop(key, None)
        return module

    def forget_memory(self) -> None:
        with self._lock:
            self._lru.clear()

    def _remember(self, key: tuple[str, str, str], module: Compiled) -> None:
        with self._lock:
            self._lru[key] = module
            self._lru.move_to_end(key)
            while len(self._lru) > self.capacity:
                self._lru.popitem(last=False)

    @staticmethod
    def _compile(engine: wasmtime.Engine, wasm: bytes, kind: Kind) -> Compiled:
        try:
            if kind == "component":
                return Component(engine, wasm)
            return wasmtime.Module(engine, wasm)
        except wasmtime.WasmtimeError as exc:
            what = "component" if kind == "component" else "wasm"
            raise errors.ModuleInvalid(f"{what} does not compile: {_first_line(exc)}") from None

    def path_for(self, fingerprint: str, sha256: str, kind: Kind = "module") -> Path | None:
        if self.directory is None:
            return None
        config = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
        suffix = "ccwasm" if kind == "component" else "cwasm"
        return self.directory / f"{sha256}.{config}.{suffix}"

    def _tag(self, fingerprint: str, sha256: str, body: Any, kind: Kind = "module") -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        prefix = b"component\0" if kind == "component" else b""  # module tags stay as before
        mac.update(prefix + fingerprint.encode() + b"\0" + sha256.encode() + b"\0")
        mac.update(body)
        return mac.digest()

    def _from_disk(self, engine: wasmtime.Engine, fingerprint: str, sha256: str,
                   kind: Kind = "module") -> Compiled | None:
        path = self.path_for(fingerprint, sha256, kind)
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            if size >= MEMFD_MIN_BYTES and hasattr(os, "memfd_create"):
                loaded = self._load_sealed(engine, fd, size, fingerprint, sha256, kind, path)
                if loaded is not _UNSUPPORTED:
                    return loaded
            with os.fdopen(os.dup(fd), "rb") as f:
                blob = f.read()
        finally:
            os.close(fd)
        tag, body = blob[:TAG_LEN], blob[TAG_LEN:]
        if len(tag) != TAG_LEN or not hmac.compare_digest(
                tag, self._tag(fingerprint, sha256, body, kind)):
            self._reject(path, "unauthenticated")
            return None
        return self._deserialize(engine, kind, body, path)

    def _deserialize(self, engine: wasmtime.Engine, kind: Kind, source: bytes | str,
                     path: Path) -> Compiled | None:
        """Load verified bytes (or the sealed file named by `source`); None if refused."""
        cls: Any = Component if kind == "component" else wasmtime.Module
        try:
            if isinstance(source, str):
                return cls.deserialize_file(engine, source)
            return cls.deserialize(engine, source)
        except wasmtime.WasmtimeError as exc:
            self._reject(path, f"incompatible ({_first_line(exc)})")
            return None

    def _load_sealed(self, engine: wasmtime.Engine, fd: int, size: int, fingerprint: str,
                     sha256: str, kind: Kind, path: Path) -> Compiled | None:
        """Copy the body into a sealed memfd, verify the copy, map it with wasmtime."""
        try:
            tag = os.pread(fd, TAG_LEN, 0)
            mem = os.memfd_create("loom-cache", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except OSError:
            return _UNSUPPORTED
        try:
            body_len, copied = size - TAG_LEN, 0
            while copied < body_len:
                n = os.sendfile(mem, fd, TAG_LEN + copied, body_len - copied)
                if n == 0:
                    break
                copied += n
            fcntl.fcntl(mem, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK
                        | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            if len(tag) != TAG_LEN or copied != body_len or body_len <= 0:
                self._reject(path, "unauthenticated")
                return None
            with mmap.mmap(mem, body_len, prot=mmap.PROT_READ) as view:
                ok = hmac.compare_digest(tag, self._tag(fingerprint, sha256, view, kind))
            if not ok:
                self._reject(path, "unauthenticated")
                return None
            return self._deserialize(engine, kind, f"/proc/self/fd/{mem}", path)
        except OSError:  # no sealing or no /proc here: the plain path reads and checks
            return _UNSUPPORTED
        finally:
            os.close(mem)

    def _reject(self, path: Path, why: str) -> None:
        self.stats.rejected += 1
        log.warning("discarding %s compiled-code cache file %s", why, path)
        path.unlink(missing_ok=True)

    def _to_disk(self, module: Compiled, fingerprint: str, sha256: str,
                 kind: Kind = "module") -> None:
        path = self.path_for(fingerprint, sha256, kind)
        if path is None:
            return
        body = bytes(module.serialize())
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self._tag(fingerprint, sha256, body, kind))
                f.write(body)
            os.replace(tmp, path)
        except OSError as exc:  # a read-only or full disk only costs a recompile later
            log.warning("could not write cache file %s: %s", path, exc)
            Path(tmp).unlink(missing_ok=True)


_UNSUPPORTED: Any = object()
"""_load_sealed's answer when this system cannot seal: fall back to reading bytes."""


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
