"""Per-instance host state: the capabilities in force and what the current call did.

Host functions are defined once per linker (store-independent); they find the
session of the calling store through the store's context address.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

from runtime import errors
from runtime.executor import http_capability
from schemas.manifest import ActivityManifest

MAX_REQUEST_BYTES = 1024 * 1024
STDERR_TAIL = 2048
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "warn": logging.WARNING, "error": logging.ERROR}

SESSIONS: dict[int, GuestSession] = {}
"""Store context address -> session. Entries live exactly as long as their store."""


def context_address(ctx: Any) -> int:
    return ctypes.cast(ctx, ctypes.c_void_p).value or 0


class GuestSession:
    def __init__(self, manifest: ActivityManifest, *, env: Mapping[str, str],
                 secret: Callable[[str], str | None]) -> None:
        self.manifest = manifest
        self.caps = manifest.capabilities
        self.limits = manifest.limits
        self.env = {k: env[k] for k in self.caps.env if k in env}
        self._secret = secret
        self.logger = logging.getLogger(f"loom.activity.{manifest.name}")
        self.begin(None, time.monotonic() + manifest.limits.timeout_ms / 1000)

    def begin(self, idempotency_key: str | None, deadline: float) -> None:
        """Reset the per-call state before the guest runs."""
        self.idempotency_key = idempotency_key
        self.deadline = deadline
        self.logs: list[dict[str, Any]] = []
        self.log_bytes = 0
        self.logs_dropped = 0
        self.http_requests = 0
        self.pending = b""
        self.violation: errors.LoomError | None = None
        self.stdout = bytearray()
        self.stdout_overflow = False
        self.stderr = bytearray()

    # -- WASI stdout/stderr ------------------------------------------------------------
    def write_stdout(self, data: bytes) -> int:
        if len(self.stdout) + len(data) > self.limits.max_output_bytes:
            self.stdout_overflow = True
            return -errno.EFBIG
        self.stdout += data
        return len(data)

    def write_stderr(self, data: bytes) -> int:
        self.stderr += data
        if len(self.stderr) > 4 * STDERR_TAIL:
            del self.stderr[:-STDERR_TAIL]
        if self.caps.log:
            self._log("info", data.decode("utf-8", "replace").rstrip("\n"), {"stream": "stderr"})
        return len(data)

    # -- the loom.host_call operations ---------------------------------------------------
    def handle(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return {"ok": False, "error": {"code": "bad_request",
                                           "message": "request must be an object with an 'op'"}}
        op = request["op"]
        if op == "log":
            if not self.caps.log:
                raise errors.CapabilityDenied("logging requires the 'log' capability")
            fields = request.get("fields")
            self._log(str(request.get("level", "info")), str(request.get("message", "")),
                      fields if isinstance(fields, dict) else {})
            return {"ok": True}
        if op == "env":
            name = str(request.get("name"))
            if name not in self.caps.env:
                raise errors.CapabilityDenied(f"environment variable {name!r} is not granted")
            return {"ok": True, "value": self.env.get(name)}
        if op == "secret":
            name = str(request.get("name"))
            if name not in self.caps.secrets:
                raise errors.CapabilityDenied(f"secret {name!r} is not granted")
            return {"ok": True, "value": self._secret(name)}
        if op == "idempotency_key":
            return {"ok": True, "value": self.idempotency_key}
        if op == "http":
            return self._http(request)
        return {"ok": False, "error": {"code": "unknown_op", "message": f"unknown op {op!r}"}}

    def _http(self, request: dict[str, Any]) -> dict[str, Any]:
        cap = self.caps.http
        if cap is None:
            raise errors.CapabilityDenied("network access requires the 'http' capability")
        self.http_requests += 1
        if self.http_requests > cap.max_requests:
            raise errors.CapabilityDenied(f"more than max_requests={cap.max_requests} requests")
        timeout = min(cap.timeout_ms, self.limits.host_call_timeout_ms) / 1000
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise errors.Timeout(f"deadline of {self.limits.timeout_ms} ms passed before the "
                                 "HTTP request")
        return http_capability.perform(request, cap, idempotency_key=self.idempotency_key,
                                       timeout_s=min(timeout, remaining))

    def _log(self, level: str, message: str, fields: dict[str, Any]) -> None:
        size = len(message) + len(json.dumps(fields, default=str))
        if self.log_bytes + size > self.limits.max_log_bytes:
            self.logs_dropped += 1
            return
        self.log_bytes += size
        entry = {"level": level, "message": message, "fields": fields}
        self.logs.append(entry)
        self.logger.log(LEVELS.get(level, logging.INFO), "%s", message, extra={
            "activity": self.manifest.name, "version": self.manifest.version,
            "idempotency_key": self.idempotency_key, "fields": fields})


# -- host functions shared by every store of a linker -------------------------------------

def _guest_memory(caller: wasmtime.Caller) -> tuple[int, int]:
    mem = caller.get("memory")
    if not isinstance(mem, wasmtime.Memory):
        raise errors.Trap("guest has no exported memory for host calls")
    ctx = caller._context()
    base = ctypes.cast(ffi.wasmtime_memory_data(ctx, ctypes.byref(mem._memory)), ctypes.c_void_p)
    return base.value or 0, ffi.wasmtime_memory_data_size(ctx, ctypes.byref(mem._memory))


def _session(caller: wasmtime.Caller) -> GuestSession:
    session = SESSIONS.get(context_address(caller._context()))
    if session is None:  # pragma: no cover - only if a store outlives its registration
        raise errors.Trap("host call from an unregistered store")
    return session


def host_call(caller: wasmtime.Caller, ptr: int, length: int) -> int:
    session = _session(caller)
    try:
        base, size = _guest_memory(caller)
        if length < 0 or length > MAX_REQUEST_BYTES or ptr < 0 or ptr + length > size:
            raise errors.Trap(f"host_call request out of bounds (ptr={ptr}, len={length})")
        raw = ctypes.string_at(base + ptr, length)
        try:
            request = json.loads(raw)
        except ValueError:
            request = None
        response = session.handle(request)
    except errors.LoomError as exc:
        session.violation = exc
        raise
    session.pending = json.dumps(response, separators=(",", ":")).encode()
    return len(session.pending)


def host_result(caller: wasmtime.Caller, dst: int) -> int:
    session = _session(caller)
    data, session.pending = session.pending, b""
    base, size = _guest_memory(caller)
    if dst < 0 or dst + len(data) > size:
        session.violation = errors.Trap(f"host_result destination out of bounds (ptr={dst})")
        raise session.violation
    ctypes.memmove(base + dst, data, len(data))
    return len(data)


def deny(what: str) -> Callable[..., int]:
    """A WASI shadow that traps with CapabilityDenied when called."""

    def denied(caller: wasmtime.Caller, *_: Any) -> int:
        session = _session(caller)
        session.violation = errors.CapabilityDenied(what)
        raise session.violation

    return denied
