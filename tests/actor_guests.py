"""Helpers for the actor runtime tests: WAT guests, a recording executor, journals that can be
"reopened" as after a restart, and polling helpers.

Kept apart from the actor modules on purpose: the determinism lint runs on the module of
every registered actor class, and the helpers here use the real clock and `asyncio.sleep`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import guests
from guests import DATA_BASE, HOST_IMPORTS, RESULT_BASE, RESULT_CAP, core, manifest

from runtime.executor import Executor
from runtime.journal import MemoryJournal, SqliteJournal
from runtime.journal.store import Commit, JournalStore
from runtime.settings import load_settings

# -- guests ------------------------------------------------------------------------------------

ERROR_BIT = "(i64.const 0x8000000000000000)"


def flaky(failures: int, *, retryable: bool = True, code: str = "flaky") -> bytes:
    """Counts its calls in a global; the first `failures` calls return a guest error
    `{"message","retryable","code"}`, later ones return {"count":N}. Needs
    `reuse_instances: true` so that the count survives between calls."""
    prefix = b'{"count":'
    err = json.dumps({"message": f"flaky failure ({code})", "retryable": retryable,
                      "code": code}, separators=(",", ":")).encode()
    err_at = DATA_BASE + len(prefix)
    return core(f"""
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (if (i32.le_u (global.get $count) (i32.const {failures}))
      (then (return (i64.or (call $pack (i32.const {err_at}) (i32.const {len(err)}))
                            {ERROR_BIT}))))
    (call $json_int (i32.const {len(prefix)}) (global.get $count))""",
                data=prefix + err, globals_="(global $count (mut i32) (i32.const 0))")


def failing(message: str = "always fails", *, retryable: bool = True,
            code: str = "down") -> bytes:
    """Every call returns a guest error."""
    err = json.dumps({"message": message, "retryable": retryable, "code": code})
    return guests.constant(err, error=True)


def key_reporter() -> bytes:
    """Asks the host for the call's idempotency key; returns {"ok":true,"value":"<key>"}.
    The input is ignored (beyond being a JSON object)."""
    request = b'{"op":"idempotency_key"}'
    return core(f"""
    (local.set $n (call $host_call (i32.const {DATA_BASE}) (i32.const {len(request)})))
    (if (i32.gt_u (local.get $n) (i32.const {RESULT_CAP})) (then (unreachable)))
    (drop (call $host_result (i32.const {RESULT_BASE})))
    (call $pack (i32.const {RESULT_BASE}) (local.get $n))""", imports=HOST_IMPORTS,
                data=request)


# -- the executor ------------------------------------------------------------------------------

class RecordingExecutor(Executor):
    """An executor that records every invocation the runtime asks for (before the guest runs):
    (activity, idempotency key, timeout_ms). Calls refused by an open breaker never get here."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.calls: list[tuple[str, str | None, int | None]] = []
        self._calls_lock = threading.Lock()

    def execute(self, name: str, input: Any, **kw: Any) -> Any:  # type: ignore[override]
        with self._calls_lock:  # every path (invoke_sync, the runtime) comes through here
            self.calls.append((name, kw.get("idempotency_key"), kw.get("timeout_ms")))
        return super().execute(name, input, **kw)

    def keys(self, name: str) -> list[str | None]:
        with self._calls_lock:
            return [k for n, k, _ in self.calls if n == name]

    def count(self, name: str) -> int:
        return len(self.keys(name))

    def add(self, name: str, wasm: bytes, **fields: Any) -> None:
        self.upload(wasm, manifest(name, **fields))


def recording_executor(home: Path) -> RecordingExecutor:
    return RecordingExecutor(load_settings(home=home, pool_size=4, epoch_tick_ms=5),
                             secrets={}, env={})


# -- journals ----------------------------------------------------------------------------------

class Journals:
    """Opens "the same" journal again, as a restarted process would: the very same
    MemoryJournal object, or a new connection to the same SQLite file."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.path = path
        self._memory = MemoryJournal() if kind == "memory" else None
        self._open: list[JournalStore] = []

    def open(self) -> JournalStore:
        journal: JournalStore = (self._memory if self._memory is not None
                                 else SqliteJournal(self.path))
        self._open.append(journal)
        return journal

    async def close_all(self) -> None:
        for journal in self._open:
            if journal is not self._memory:
                await journal.close()
        self._open.clear()


def events_of(commits: list[Commit]) -> list[dict[str, Any]]:
    return [e for c in commits for e in c.get("events", [])]


async def wait_until(predicate: Callable[[], Awaitable[Any]], *, timeout: float = 5.0,
                     what: str = "condition") -> Any:
    """Poll an async predicate until it returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def wait_for_event_op(journal: JournalStore, actor: str, op: str, *,
                            timeout: float = 5.0) -> dict[str, Any]:
    """Wait until a journal event with operation `op` exists for `actor`; return it."""

    async def found() -> dict[str, Any] | None:
        for event in events_of(await journal.read(actor)):
            if event["op"] == op:
                return event
        return None

    event: dict[str, Any] = await wait_until(found, timeout=timeout, what=f"{op} in {actor}")
    return event


async def pause(seconds: float) -> None:
    """A real wait in the test driver (not in actor code)."""
    await asyncio.sleep(seconds)


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.start = time.monotonic()
        self.elapsed = 0.0
        return self

    def __exit__(self, *_: object) -> None:
        self.elapsed = time.monotonic() - self.start


def context_values(actor: str, msg_id: str, draws: int,
                   branch: str = "") -> list[tuple[float, str]]:
    """What `ctx.random().random()` then `ctx.uuid()` yield, `draws` times, for the run of
    message `msg_id` at `actor` (the documented seed is "<actor>:<message id>:<branch path>")."""
    import random
    import uuid

    rng = random.Random(f"{actor}:{msg_id}:{branch}")
    out = []
    for _ in range(draws):
        r = rng.random()
        out.append((r, str(uuid.UUID(int=rng.getrandbits(128), version=4))))
    return out
