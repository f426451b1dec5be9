"""Per-instance host state: the capabilities in force and what the current call did.

Host functions (`runtime.executor.hostfuncs`) are defined once per linker
(store-independent); they find the session of the calling store through the store's
context address and report violations on it, never through a process-wide variable.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from runtime import errors
from runtime.executor import http_capability
from schemas.manifest import ActivityManifest

MAX_REQUEST_BYTES = 1024 * 1024
CLOCK_RESOLUTION_NS = 1_000_000
"""The deterministic clock (no `clock` grant) moves in whole milliseconds: it does not move."""
STDERR_TAIL = 2048
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "warn": logging.WARNING, "error": logging.ERROR}

SESSIONS: dict[int, GuestSession] = {}
"""Store context address -> session. Entries live exactly as long as their store."""


def context_address(ctx: Any) -> int:
    return ctypes.cast(ctx, ctypes.c_void_p).value or 0


def host_failure(session: GuestSession | None, exc: BaseException) -> str:
    """Record why a host function failed on its session (the first reason wins) and
    return the message for the trap handed to wasmtime."""
    error = exc if isinstance(exc, errors.LoomError) else errors.Trap(
        f"host function failed: {type(exc).__name__}: {exc}")
    if session is not None and session.violation is None:
        session.violation = error
    return error.message


class GuestSession:
    def __init__(self, manifest: ActivityManifest, *, env: Mapping[str, str],
                 secret: Callable[[str], str | None], command: bool = False) -> None:
        self.manifest = manifest
        self.caps = manifest.capabilities
        self.limits = manifest.limits
        self.command = command
        """wasi-command: stdout is the output; core-v1: stdout is more logging."""
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
        self.stderr = bytearray()
        self.started_ns = time.time_ns()
        self._random_counter = 0

    # -- WASI stdout/stderr (through the fd_write shadow) -------------------------------
    def write(self, fd: int, data: bytes) -> None:
        if fd == 1 and self.command:
            self.write_stdout(data)
        else:
            self.write_stderr(data)

    def write_stdout(self, data: bytes) -> None:
        """Append to the output; the first write past the cap stops the guest."""
        if len(self.stdout) + len(data) > self.limits.max_output_bytes:
            raise errors.OutputTooLarge(
                f"stdout exceeded max_output_bytes={self.limits.max_output_bytes} (a write of "
                f"{len(data)} bytes after {len(self.stdout)})")
        self.stdout += data

    def write_stderr(self, data: bytes) -> None:
        self.stderr += data
        if len(self.stderr) > 4 * STDERR_TAIL:
            del self.stderr[:-STDERR_TAIL]
        if self.caps.log:
            self._log("info", data.decode("utf-8", "replace").rstrip("\n"), {"stream": "stderr"})

    # -- the deterministic clock and random source (no `clock` grant) --------------------
    def frozen_time_ns(self, clock_id: int) -> int:
        """Realtime: the call's start, truncated to the millisecond; other clocks: 0."""
        if clock_id == 0:
            return self.started_ns - self.started_ns % CLOCK_RESOLUTION_NS
        return 0

    def random_bytes(self, n: int) -> bytes:
        """SHAKE-256 over (activity, version, idempotency key, call counter)."""
        self._random_counter += 1
        seed = (f"loom-random\0{self.manifest.name}@{self.manifest.version}\0"
                f"{self.idempotency_key}\0{self._random_counter}").encode()
        return hashlib.shake_256(seed).digest(n)

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
        answer = http_capability.perform(request, cap, idempotency_key=self.idempotency_key,
                                         timeout_s=min(timeout, remaining))
        if not answer.get("ok", True) and remaining < timeout and \
                time.monotonic() >= self.deadline:
            # Cut by the activity's own deadline, not the host-call budget: the activity
            # timed out, whatever the guest would make of a failed request.
            raise errors.Timeout("the activity's deadline passed during an HTTP request")
        return answer

    def _log(self, level: str, message: str, fields: dict[str, Any]) -> None:
        if level not in LEVELS:  # the guest's own word: counted and kept only if known
            level = "info"
        size = len(level) + len(message) + len(json.dumps(fields, default=str))
        if self.log_bytes + size > self.limits.max_log_bytes:
            self.logs_dropped += 1
            return
        self.log_bytes += size
        entry = {"level": level, "message": message, "fields": fields}
        self.logs.append(entry)
        self.logger.log(LEVELS.get(level, logging.INFO), "%s", message, extra={
            "activity": self.manifest.name, "version": self.manifest.version,
            "idempotency_key": self.idempotency_key, "fields": fields})
