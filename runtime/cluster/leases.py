"""One lease per partition in Redis, each grant numbered by a fencing epoch.

Acquire, renew and release are Lua scripts on one partition's keys (one hash tag, one
slot), so each is atomic and Redis Cluster-safe:

- acquire: `SET lease token NX PX ttl`; on a grant only, `INCR epoch`, raised to the Redis
  server's clock in milliseconds if it is below it (so epochs keep increasing across a
  wipe of Redis, see docs/cluster.md), and the new epoch is returned.
- renew: `PEXPIRE lease ttl` only if the lease still holds the caller's token.
- release: `DEL lease` only if it still holds the caller's token.

Expiry is Redis's own (PX, on the server's clock); no worker clock is compared with
another. `LeaseKeeper` keeps a set of leases renewed on its own thread.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from runtime.cluster.keys import ClusterKeys

ACQUIRE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return false
end
local epoch = redis.call('INCR', KEYS[2])
if ARGV[3] == '1' then
  local now = redis.call('TIME')
  local floor = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  if epoch < floor then
    redis.call('SET', KEYS[2], floor)
    epoch = floor
  end
end
return epoch
"""

RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class Lease:
    """One grant of a partition's lease. `epoch` is the fencing epoch of this grant: the
    runtime writes it into every journal commit made under the lease."""

    partition: int
    token: str
    epoch: int

    @property
    def owner(self) -> str:
        """The worker id the token was made for."""
        return owner_of(self.token)


def owner_of(token: str) -> str:
    return token.rpartition("/")[0]


def new_token(worker_id: str) -> str:
    """A token unique to one grant: `<worker id>/<random>`."""
    return f"{worker_id}/{uuid.uuid4().hex}"


@dataclass(frozen=True)
class PartitionState:
    """What Redis says about a partition (for status and balancing)."""

    partition: int
    token: str | None
    epoch: int
    ttl_ms: int | None

    @property
    def owner(self) -> str | None:
        return None if self.token is None else owner_of(self.token)


class PartitionLeases:
    """The lease operations on a cluster's partitions, stateless: one Redis round trip each.
    Thread-safe (redis-py clients are)."""

    def __init__(self, client: redis.Redis, *, ttl_ms: int, keys: ClusterKeys | None = None,
                 epoch_floor: bool = True) -> None:
        if ttl_ms < 10:
            raise ValueError(f"a lease TTL below 10 ms is not workable: {ttl_ms} ms")
        self.client = client
        self.keys = keys or ClusterKeys()
        self.ttl_ms = int(ttl_ms)
        self.epoch_floor = epoch_floor
        self._acquire = client.register_script(ACQUIRE)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)

    def acquire(self, partition: int, token: str) -> Lease | None:
        """The lease with a new epoch, or None if someone holds it."""
        epoch = self._acquire(keys=[self.keys.lease(partition), self.keys.epoch(partition)],
                              args=[token, self.ttl_ms, "1" if self.epoch_floor else "0"])
        return None if epoch is None else Lease(partition, token, int(epoch))

    def renew(self, lease: Lease) -> bool:
        """Extend the lease by the TTL from now; False if the caller no longer holds it."""
        return bool(self._renew(keys=[self.keys.lease(lease.partition)],
                                args=[lease.token, self.ttl_ms]))

    def renew_many(self, leases: Sequence[Lease]) -> list[bool]:
        """`renew` for each, in one pipelined round trip (not a transaction: each script is
        atomic on its own partition, and partitions may live on different cluster nodes)."""
        if not leases:
            return []
        pipe = self.client.pipeline(transaction=False)
        for lease in leases:
            self._renew(keys=[self.keys.lease(lease.partition)],
                        args=[lease.token, self.ttl_ms], client=pipe)
        return [bool(r) for r in pipe.execute()]

    def release(self, lease: Lease) -> bool:
        """Give the lease up; False if the caller did not hold it any more."""
        return bool(self._release(keys=[self.keys.lease(lease.partition)], args=[lease.token]))

    def states(self, partitions: Sequence[int]) -> list[PartitionState]:
        """Holder token, current epoch and remaining TTL of each partition (pipelined)."""
        pipe = self.client.pipeline(transaction=False)
        for p in partitions:
            pipe.get(self.keys.lease(p))
            pipe.get(self.keys.epoch(p))
            pipe.pttl(self.keys.lease(p))
        raw: list[Any] = pipe.execute()
        out = []
        for i, p in enumerate(partitions):
            token, epoch, pttl = raw[3 * i: 3 * i + 3]
            out.append(PartitionState(
                p, None if token is None else _text(token), int(epoch or 0),
                int(pttl) if token is not None and int(pttl) >= 0 else None))
        return out

    def free(self, partitions: Sequence[int]) -> list[int]:
        """Those of `partitions` nobody holds right now (pipelined EXISTS)."""
        pipe = self.client.pipeline(transaction=False)
        for p in partitions:
            pipe.exists(self.keys.lease(p))
        return [p for p, n in zip(partitions, pipe.execute(), strict=True) if not n]

    def holders(self, partitions: Sequence[int]) -> dict[int, str | None]:
        """The worker holding each of `partitions` now, or None (pipelined GET: one command
        a partition, as `free`)."""
        pipe = self.client.pipeline(transaction=False)
        for p in partitions:
            pipe.get(self.keys.lease(p))
        return {p: None if token is None else owner_of(_text(token))
                for p, token in zip(partitions, pipe.execute(), strict=True)}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
