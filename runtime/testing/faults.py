"""Faults for simulated processes: storage errors (before or after a write lands), crashes
at any journal call or commit point, pauses past a lease, clock skew and steps."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime import errors
from runtime.journal.store import Commit, Envelope, JournalStore

if TYPE_CHECKING:
    from runtime.testing.simulation import Node

WRITES = frozenset({"append", "enqueue", "consume", "acquire", "renew", "settle",
                    "expire_owner", "purge_tombstones"})


@dataclass
class Faults:
    """Chances per journal call (`storage`, `ambiguous`, `crash`), per activity call
    (`flaky`), and per chaos tick of about a second (`pause`, `clock_step`, `kill`)."""

    storage: float = 0.0  # a call fails before it lands (StorageError)
    ambiguous: float = 0.0  # a write lands, then reports a failure
    crash: float = 0.0  # the process dies at a journal call or a commit point
    flaky: float = 0.0  # an activity fails retryably before its effect
    kill: float = 0.0  # the process is killed at a random moment
    pause: float = 0.0  # the process freezes past its leases (GC, SIGSTOP), then resumes
    clock_step: float = 0.0  # the process's clock jumps by up to `skew_s`
    skew_s: float = 0.0  # processes' clocks differ by up to this much
    processes: int = 1  # runtimes contending for the same actors
    evict: bool = False  # a tiny activation cache: parked runs leave memory and replay
    seq_fence_only: bool = False  # commits fenced by (actor, seq) only, as on Cosmos

    @classmethod
    def none(cls) -> Faults:
        return cls()

    @classmethod
    def chaos(cls, rng: random.Random) -> Faults:
        """A random mix, different for every seed."""
        pick = rng.random
        return cls(storage=pick() * 0.04, ambiguous=pick() * 0.02, crash=pick() * 0.02,
                   flaky=pick() * 0.2, kill=pick() * 0.15, pause=pick() * 0.1,
                   clock_step=pick() * 0.1, skew_s=rng.choice([0.0, 0.5, 3.0, 30.0]),
                   processes=rng.choice([1, 2, 2, 3]), evict=rng.random() < 0.4,
                   seq_fence_only=rng.random() < 0.3)


class FaultyJournal:
    """One process's view of a shared journal: every call passes through its faults.
    `around` picks the class: one that also numbers entries if the shared journal does."""

    def __init__(self, inner: JournalStore, node: Node) -> None:
        self.inner = inner
        self.node = node
        self.url = inner.url

    @staticmethod
    def around(inner: JournalStore, node: Node) -> FaultyJournal:
        numbering = hasattr(inner, "enqueue_numbered")
        return (NumberingFaultyJournal if numbering else FaultyJournal)(inner, node)

    def __getattr__(self, op: str) -> Any:
        fn = getattr(self.inner, op)
        if not asyncio.iscoroutinefunction(fn) or op == "close":
            return fn
        return self._through(op, fn)

    def _through(self, op: str, fn: Any) -> Any:
        async def call(*args: Any, **kw: Any) -> Any:
            node = self.node
            await node.gate()
            faults, rng = node.faults, node.rng
            if node.faulty:
                roll = rng.random()
                if roll < faults.crash and node.can_crash:
                    node.crash(f"before {op}")
                if roll < faults.crash + faults.storage:
                    node.stats["storage_errors"] += 1
                    raise errors.StorageError(f"injected: {op} failed")
            result = await fn(*args, **kw)
            if node.faulty and op in WRITES:
                roll = rng.random()
                if roll < faults.ambiguous:
                    node.stats["ambiguous_writes"] += 1
                    raise errors.StorageError(f"injected: {op} landed, then failed")
                if roll < faults.ambiguous + faults.crash and node.can_crash:
                    node.crash(f"after {op}")
            await node.gate()
            return result

        return call


class NumberingFaultyJournal(FaultyJournal):
    """A FaultyJournal around a journal that answers entry numbers (memory, SQLite): the
    runtime then hands a call from here straight to an idle actor, as it would unwrapped."""

    async def enqueue(self, envelope: Envelope) -> bool:
        return bool(await self.enqueue_numbered(envelope))

    async def enqueue_numbered(self, envelope: Envelope) -> int:
        numbered = self.inner.enqueue_numbered  # type: ignore[attr-defined]
        number: int = await self._through("enqueue", numbered)(envelope)
        return number

    async def append(self, commit: Commit) -> None:
        await self._through("append", self.inner.append)(commit)

    async def append_entry(self, commit: Commit, envelope: Envelope, n: int) -> int:
        """An entry with its run's first commit: faults as for an append."""
        entering = self.inner.append_entry  # type: ignore[attr-defined]
        number: int = await self._through("append", entering)(commit, envelope, n)
        self.node.stats["entries_with_commit" if number == n else "entries_not_next"] += 1
        return number
