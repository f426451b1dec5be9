"""Delivery on Redis Streams (runtime/cluster/delivery.py) against a real redis-server: an
announced actor wakes its partition's owner at once; entries are acknowledged only once the
actor is settled; a new owner claims a dead owner's pending entries first; trimming never
drops a pending entry; a wiped Redis is set up again; and the runtime uses it, so a message
from another process is taken up without the owner's schedule poll."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import durable_actors as da
import pytest
from test_durable_core import run, runtime, stubs

from runtime.cluster import ClusterKeys
from runtime.cluster.delivery import GROUP, StreamDelivery
from runtime.cluster.partitions import partition_of
from runtime.demo.cluster import NoActorsHere
from runtime.journal import SqliteJournal

pytestmark = pytest.mark.integration
P = 4


def _url(redis_server: Any) -> str:
    return redis_server.url.rsplit("/", 1)[0] + "/14"


def _delivery(url: str, consumer: str, keys: ClusterKeys) -> StreamDelivery:
    return StreamDelivery(url, P, consumer, keys=keys, idle_wait_s=0.05, trim_every_s=0.0,
                          forget_consumers_after_s=0.2)


async def _until(check: Any, what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_announce_wake_ack_claim_and_trim(redis_server: Any) -> None:
    url = _url(redis_server)
    keys = ClusterKeys(f"d{uuid.uuid4().hex[:10]}")

    async def main() -> None:
        sender = _delivery(url, "sender", keys)
        a = _delivery(url, "worker-a", keys)
        woken_a: list[str] = []
        a.start(lambda: range(P), woken_a.append)
        await asyncio.sleep(0.2)
        actors = [f"x/{i}" for i in range(8)]
        for actor in actors:
            sender.announce(actor)
        await _until(lambda: sorted(set(woken_a)) == actors, "worker a to wake every actor")
        # acknowledged only when settled: until then the entries stay pending
        pending = {p: (await a.client.xpending(a.stream(p), GROUP))["pending"]
                   for p in range(P)}
        assert sum(pending.values()) == len(actors)
        for actor in actors[:3]:
            a.settled(actor)
        await _until(lambda: a.stats["acked"] == 3, "three acks")
        # worker a dies with five wake-ups unacknowledged: b takes every partition over
        await a.stop()
        b = _delivery(url, "worker-b", keys)
        woken_b: list[str] = []
        b.start(lambda: range(P), woken_b.append)
        await _until(lambda: sorted(set(woken_b)) == actors[3:], "b to claim a's pending")
        assert b.stats["claimed"] == 5 and b.stats["read"] == 0
        # trimming keeps the pending entries (and everything after them)
        sender.announce("x/new")
        await _until(lambda: "x/new" in woken_b, "b to read a new entry")
        await asyncio.sleep(0.1)  # a trim pass
        for actor in actors[3:]:
            p = partition_of(actor, P)
            entries = await b.client.xrange(b.stream(p))
            assert any(f[b"a"].decode() == actor for _, f in entries), f"{actor} trimmed"
        for actor in [*actors[3:], "x/new"]:
            b.settled(actor)
        await _until(lambda: b.stats["acked"] == 6, "b's acks")
        await asyncio.sleep(0.1)  # another trim pass: nothing pending, nothing undelivered
        lengths = [await b.client.xlen(b.stream(p)) for p in range(P)]
        assert sum(lengths) <= P, lengths  # at most the last delivered entry per stream
        await asyncio.sleep(0.4)  # a's consumer: idle, nothing pending (b claimed it all)
        for p in range(P):
            names = {c["name"].decode() for c in
                     await b.client.xinfo_consumers(b.stream(p), GROUP)}
            assert "worker-a" not in names and names <= {"worker-b"}, names
        # a wiped Redis: the streams and the group are gone; delivery sets them up again
        await b.client.flushdb()
        sender.announce("x/after-wipe")
        await _until(lambda: "x/after-wipe" in woken_b, "b to wake after the wipe",
                     timeout=10.0)
        await b.stop()
        await sender.stop()

    run(main())


class _All(NoActorsHere):
    """The ownership of a worker that holds every partition."""

    def owns(self, key: str) -> bool:
        return True

    def scope(self) -> None:
        return None


def test_a_message_from_another_process_wakes_its_owner_without_its_poll(
        redis_server: Any, tmp_path: Path) -> None:
    url = _url(redis_server)
    keys = ClusterKeys("loom")

    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db")
        client_journal = SqliteJournal(tmp_path / "j.db")
        # The owner's schedule poll runs every 30 s: only the stream can wake it in time.
        owner = runtime(journal, stubs("effect"), da.Shipper, poll_interval_s=30.0,
                        ownership=_All())
        owner.delivery = StreamDelivery(url, P, "owner", keys=keys, idle_wait_s=0.05)
        async with owner:
            owner.delivery.start(lambda: range(P), owner.notify)
            await asyncio.sleep(0.3)  # the owner's first tick is over; it now sleeps
            plain = runtime(client_journal, stubs(), ownership=NoActorsHere())
            async with plain:  # a sender without delivery: the message waits for the poll
                await plain.send("shipper/s0", "ship", {"order": "o0", "nap": 0.0},
                                 msg_id="m0")
                await asyncio.sleep(1.0)
                assert await journal.outcome("shipper/s0", "m0") is None
            sender = runtime(client_journal, stubs(), ownership=NoActorsHere())
            sender.delivery = StreamDelivery(url, P, "client", keys=keys)
            async with sender:
                await sender.send("shipper/s1", "ship", {"order": "o1", "nap": 0.0},
                                  msg_id="m1")
                for _ in range(250):
                    if await journal.outcome("shipper/s1", "m1") is not None:
                        break
                    await asyncio.sleep(0.02)
                assert await journal.outcome("shipper/s1", "m1") is not None
                await sender.delivery.stop()
            await owner.delivery.stop()
        await journal.close()
        await client_journal.close()

    run(main())
