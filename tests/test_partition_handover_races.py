"""A partition can leave a worker at any await: between the ownership check and the journal
lease, or while an activation of it is already running. Neither may leave the actor with
the old worker (which never pumps it again, while it keeps renewing the actor's lease, so
the new owner cannot take it: its messages waited for the idle sweep, five minutes). And a
worker takes back the leases of dead owners of its own host only, PID namespace included."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from runtime.actors import Actor, ActorContext, ActorRuntime, handler
from runtime.journal.sqlite import SqliteJournal
from runtime.testing import StubActivities


class Counter(Actor, type_name="counter"):
    @handler
    async def inc(self, ctx: ActorContext, payload: Any) -> int:
        self.state["n"] = self.state.get("n", 0) + 1
        return int(self.state["n"])


class Partitions:
    """One partition; whether this worker holds it is for the test to say."""

    def __init__(self, held: bool) -> None:
        self.held = held

    def partition(self, key: str) -> int:
        return 0

    def owns(self, key: str) -> bool:
        return self.held

    def scope(self) -> None:
        return None

    def report(self, in_flight: int) -> None:
        pass

    def accepts(self, key: str, version: str) -> bool:
        return True


def worker(journal: SqliteJournal, held: bool) -> tuple[ActorRuntime, Partitions]:
    ownership = Partitions(held)
    rt = ActorRuntime(journal, activities=StubActivities(), lint=False, poll_interval_s=0.02,
                      lease_ttl_s=1.0, ownership=ownership)
    rt.register(Counter)
    return rt, ownership


async def answered_by_the_new_owner(journal: SqliteJournal, old: ActorRuntime,
                                    mine: Partitions) -> int:
    new, theirs = worker(journal, False)
    mine.held, theirs.held = False, True  # the partition moves
    async with new:
        started = time.monotonic()
        got = await new.ask("counter/x", "inc", None, timeout=10)
        assert time.monotonic() - started < 5  # a lease renewal, not the idle sweep
        assert "counter/x" not in old.activations
        return int(got)


def test_a_partition_that_leaves_while_the_lease_is_taken(tmp_path: Path) -> None:
    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db")
        old, mine = worker(journal, True)
        real = journal.acquire
        inside = asyncio.Event()

        async def slow_acquire(*args: Any, **kw: Any) -> Any:
            inside.set()
            await asyncio.sleep(0.3)  # the partition leaves meanwhile
            return await real(*args, **kw)

        journal.acquire = slow_acquire  # type: ignore[method-assign]
        async with old:
            await old.send("counter/x", "inc", None)
            await inside.wait()
            mine.held = False
            await asyncio.sleep(0.5)
            journal.acquire = real  # type: ignore[method-assign]
            assert "counter/x" not in old.activations  # handed off at once
            assert await answered_by_the_new_owner(journal, old, mine) == 2
        await journal.close()

    asyncio.run(main())


def test_an_activation_left_behind_is_given_back_at_the_next_renewal(tmp_path: Path) -> None:
    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db")
        old, mine = worker(journal, True)
        async with old:
            assert await old.ask("counter/x", "inc", None) == 1
            assert "counter/x" in old.activations  # the hand-over below does not see it
            assert await answered_by_the_new_owner(journal, old, mine) == 2
        await journal.close()

    asyncio.run(main())


def test_only_owners_of_this_host_and_pid_namespace_are_reaped() -> None:
    """A lease whose owner's process is gone is taken back at once, but only when that
    owner ran here: containers sharing a host name (say, --network host) do not share
    processes, so a pid missing here says nothing about theirs (their live runs were cut
    off, again and again)."""
    import os
    import socket
    import subprocess
    import sys

    from runtime.actors.runtime import HOST_ID, _owner_dead

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(gone.stdout)  # a process that has exited
    assert _owner_dead(f"{HOST_ID}:{pid}:nonce")
    assert not _owner_dead(f"{HOST_ID}:{os.getppid()}:nonce")  # alive
    name = socket.gethostname()
    for elsewhere in (f"{name}@1:{pid}:nonce",  # same name, another PID namespace
                      f"other-host:{pid}:nonce"):
        assert not _owner_dead(elsewhere)
    # a same-named container's id as Loom wrote it before the namespace was part of it:
    # nothing here can tell that its process is gone
    assert name != HOST_ID and not _owner_dead(f"{name}:{pid}:nonce")
