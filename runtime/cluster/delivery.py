"""Delivery on Redis Streams: one stream per partition (`loom:{pN}:stream`), one consumer
group (`loom`), each worker a consumer. A stream entry says "actor X has something new"; it
is a doorbell with a memory, never the message itself.

- A sender writes the message to the journal first (durable, numbered), then announces its
  actor on the actor's partition stream and rings the partition's bell (pub/sub).
- The partition's owner reads its streams (`XREADGROUP >`), wakes each actor named, and
  acknowledges (`XACK`) an entry once that actor's schedule row has been settled after the
  wake-up: after its commits.
- A new owner first claims the old owner's pending entries (`XAUTOCLAIM` from `0-0`, looping
  on the cursor; idle time 0, since the partition lease already moved) and wakes those
  actors, then reads new ones.
- Trimming keeps every entry at or above the oldest pending one and every entry not yet
  delivered (`XTRIM MINID`), so no pending reference dangles; consumers of past workers
  with nothing pending are deleted after `forget_consumers_after_s`.
- Redis is not the record: an entry lost with Redis (a restart, a wipe, a failover that
  dropped a second of writes) only delays its actor until the runtime's schedule poll, which
  reads the journal. That poll stays on, so delivery is at least as good as without Redis.

Every key of a partition shares its hash tag, and no command touches two partitions, so it
works unchanged on Redis Cluster (the bell is pub/sub, which Redis Cluster broadcasts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import redis
import redis.asyncio as aioredis

from runtime.cluster.keys import ClusterKeys
from runtime.cluster.partitions import partition_of

log = logging.getLogger("loom.cluster")
GROUP = "loom"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class StreamDelivery:
    """One worker's side of delivery (sender and, with `start`, owner). Runs on the event
    loop (redis.asyncio). `held()` gives the partitions this worker holds right now."""

    def __init__(self, url: str, partitions: int, consumer: str, *,
                 keys: ClusterKeys | None = None, batch: int = 256,
                 idle_wait_s: float = 0.5, trim_every_s: float = 10.0,
                 forget_consumers_after_s: float = 600.0) -> None:
        self.client: Any = aioredis.Redis.from_url(url, socket_timeout=5.0,
                                                   socket_connect_timeout=2.0)
        self.partitions = partitions
        self.consumer = consumer
        self.keys = keys or ClusterKeys()
        self.batch = batch
        self.idle_wait_s = idle_wait_s
        self.trim_every_s = trim_every_s
        self.forget_consumers_after_s = forget_consumers_after_s
        self._outgoing: set[str] = set()
        self._flushing: asyncio.Task[None] | None = None
        self._ready: set[int] = set()  # partitions whose group exists and pending are claimed
        self._unacked: dict[str, list[tuple[int, str]]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None
        self._trimmed_at = 0.0
        self._stopping = False
        self.stats = {"announced": 0, "read": 0, "claimed": 0, "acked": 0}

    def stream(self, partition: int) -> str:
        return self.keys.key(partition, "stream")

    def bell(self, partition: int) -> str:
        return self.keys.key(partition, "bell")

    # -- sending -----------------------------------------------------------------------------
    def announce(self, actor: str) -> None:
        """After the actor's message is durable in the journal: name it on its partition's
        stream (batched; a failure is logged, and the schedule poll covers it)."""
        self._outgoing.add(actor)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let a burst of sends gather
        while self._outgoing:
            actors, self._outgoing = sorted(self._outgoing), set()
            try:
                pipe = self.client.pipeline(transaction=False)
                for actor in actors:
                    p = partition_of(actor, self.partitions)
                    pipe.xadd(self.stream(p), {"a": actor})
                    pipe.publish(self.bell(p), b"")
                await pipe.execute()
                self.stats["announced"] += len(actors)
            except (redis.RedisError, OSError) as exc:
                log.info("announcing %d actor(s) failed (the schedule poll finds them): %s",
                         len(actors), exc)

    # -- owning ------------------------------------------------------------------------------
    def start(self, held: Callable[[], Iterable[int]], wake: Callable[[str], None]) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(held, wake))

    async def _run(self, held: Callable[[], Iterable[int]], wake: Callable[[str], None]) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        listening: set[int] = set()
        while not self._stopping:
            try:
                mine = set(held())
                self._ready &= mine
                if mine - listening:
                    await pubsub.subscribe(*(self.bell(p) for p in mine - listening))
                if listening - mine:
                    await pubsub.unsubscribe(*(self.bell(p) for p in listening - mine))
                listening = mine
                for p in sorted(mine - self._ready):
                    await self._take_over(p, wake)
                got = await self._read(sorted(self._ready), wake)
                if time.monotonic() >= self._trimmed_at + self.trim_every_s:
                    self._trimmed_at = time.monotonic()
                    await self._trim(sorted(self._ready))
                if not got:
                    if listening:
                        await pubsub.get_message(timeout=self.idle_wait_s)
                        while await pubsub.get_message(timeout=0.0) is not None:
                            pass  # one read serves every bell rung meanwhile
                    else:
                        await asyncio.sleep(self.idle_wait_s)
            except Exception as exc:  # never die: the next round sets everything up again
                log.log(logging.INFO if isinstance(exc, (redis.RedisError, OSError))
                        else logging.ERROR, "stream delivery: %s: %s (retrying; the schedule "
                        "poll covers it)", type(exc).__name__, exc)
                self._ready.clear()  # a restarted or wiped Redis: groups are set up again
                listening = set()
                await _close(pubsub)
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                await asyncio.sleep(self.idle_wait_s)
        await _close(pubsub)

    async def _take_over(self, p: int, wake: Callable[[str], None]) -> None:
        """Set the group up and claim every pending entry of the partition's past owners."""
        stream = self.stream(p)
        with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: it exists
            await self.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        cursor = "0-0"
        while True:
            reply = await self.client.xautoclaim(stream, GROUP, self.consumer, 0,
                                                 start_id=cursor, count=self.batch)
            cursor, entries = _text(reply[0]), reply[1]
            for entry_id, fields in entries:
                if fields:
                    self._wake_one(p, _text(entry_id), fields, wake)
                    self.stats["claimed"] += 1
            if cursor == "0-0":
                break
        self._ready.add(p)

    async def _read(self, ready: list[int], wake: Callable[[str], None]) -> int:
        if not ready:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for p in ready:  # one command per partition: never two hash slots in one command
            pipe.xreadgroup(GROUP, self.consumer, {self.stream(p): ">"}, count=self.batch)
        replies = await pipe.execute(raise_on_error=False)
        n = 0
        for p, reply in zip(ready, replies, strict=True):
            if isinstance(reply, Exception):
                if "NOGROUP" in str(reply):
                    self._ready.discard(p)  # the stream or group is gone: set up again
                    continue
                raise reply
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    self._wake_one(p, _text(entry_id), fields, wake)
                    n += 1
        self.stats["read"] += n
        return n

    def _wake_one(self, p: int, entry_id: str, fields: Any, wake: Callable[[str], None]
                  ) -> None:
        actor = _text(fields.get(b"a") or fields.get("a") or "")
        self._unacked[actor].append((p, entry_id))
        if actor:
            wake(actor)

    def settled(self, actor: str) -> None:
        """The actor's schedule row was settled after the wake-ups read so far: acknowledge
        their entries (batched by partition; a lost ack only means a later duplicate wake)."""
        entries = self._unacked.pop(actor, None)
        if entries:
            asyncio.get_running_loop().create_task(self._ack(entries))

    async def _ack(self, entries: list[tuple[int, str]]) -> None:
        by_partition: dict[int, list[str]] = defaultdict(list)
        for p, entry_id in entries:
            by_partition[p].append(entry_id)
        try:
            pipe = self.client.pipeline(transaction=False)
            for p, ids in by_partition.items():
                pipe.xack(self.stream(p), GROUP, *ids)
            await pipe.execute()
            self.stats["acked"] += len(entries)
        except (redis.RedisError, OSError) as exc:
            log.debug("ack failed (a duplicate wake later): %s", exc)

    def forget(self, partition: int) -> None:
        """The partition left this worker: its unacknowledged entries stay pending in Redis
        for the next owner to claim."""
        self._ready.discard(partition)
        for actor in [a for a, es in self._unacked.items() if es and es[0][0] == partition]:
            del self._unacked[actor]

    async def _trim(self, ready: list[int]) -> None:
        """Drop entries below the oldest pending one (or, with none pending, below the last
        delivered one): what no consumer can still need."""
        for p in ready:
            stream = self.stream(p)
            pending = await self.client.xpending(stream, GROUP)
            groups = await self.client.xinfo_groups(stream)
            last = next((_text(g["last-delivered-id"]) for g in groups
                         if _text(g["name"]) == GROUP), None)
            if last is None:
                continue
            floor = _text(pending["min"]) if pending and pending.get("pending") else last
            await self.client.xtrim(stream, minid=floor, approximate=False)
            # Every restart of a worker is a new consumer; once idle with nothing pending
            # (their entries were claimed), past ones are dropped so groups do not grow.
            for c in await self.client.xinfo_consumers(stream, GROUP):
                if _text(c["name"]) != self.consumer and int(c["pending"]) == 0 and \
                        int(c["idle"]) >= self.forget_consumers_after_s * 1000:
                    await self.client.xgroup_delconsumer(stream, GROUP, _text(c["name"]))

    async def stop(self) -> None:
        # A flag, not a cancel: redis.asyncio's PubSub.get_message can hang for good when
        # cancelled while it waits (seen with redis-py 8.1).
        self._stopping = True
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=self.idle_wait_s + 2.0)
            if not done:
                self._task.cancel()
        if self._flushing is not None:
            with contextlib.suppress(Exception):
                await self._flushing
        await _close(self.client)


async def _close(closable: Any) -> None:
    """Close a client or pubsub without waiting on a connection cut mid-command."""
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(closable.aclose(), 1.0)
