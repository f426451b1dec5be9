"""The journal in memory: for unit tests and simulations. Documents are JSON round-tripped
like a real store, and scheduling costs O(what is due) like the SQLite index does."""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Collection
from dataclasses import dataclass
from types import EllipsisType
from typing import Any

from runtime.journal import runs as run_index
from runtime.journal.keyhash import Scope, in_scope
from runtime.journal.store import CRASHED, ActorLease, Commit, Envelope, JournalConflict

INF = float("inf")


@dataclass
class _Entry:
    n: int
    kind: str
    deliver_at: float
    consumed_at: float | None
    doc: str
    deliveries: int = 0
    delivered_at: int = -2


@dataclass
class _Sched:
    last_n: int = 0
    due_at: float | None = None  # 0 = ready now (ordered by ready_n)
    ready_n: int = 0
    owner: str | None = None
    lease_until: float = 0.0
    epoch: int = 0
    ver: str | None = None  # the code version of the run in flight, if any


class MemoryJournal:
    """`fence_epochs=False` makes it fence by (actor, seq) only, as the Cosmos journal does
    (the simulation runs both ways)."""

    def __init__(self, *, fence_epochs: bool = True) -> None:
        self.url = "memory://"
        self.consumes_with_append = True
        self.fence_epochs = fence_epochs
        self._commits: dict[str, dict[int, str]] = {}
        self._outcomes: dict[tuple[str, str], int] = {}
        self._inbox: dict[str, dict[str, _Entry]] = {}  # every entry, tombstones too
        self._pending: dict[str, dict[str, _Entry]] = {}  # the unconsumed ones, by id
        self._sched: dict[str, _Sched] = {}
        self._ready: dict[str, int] = {}  # actor -> ready_n, for due_at == 0
        self._timed: list[tuple[float, str]] = []  # heap of (due_at, actor), lazily pruned
        self._timed_due: dict[str, float] = {}  # timed actors whose time has come
        self._counter = itertools.count(1)
        self._dead: dict[tuple[str, str], str] = {}
        self._runs: dict[tuple[str, str], run_index.Run] = {}

    # -- commits ---------------------------------------------------------------------------
    async def append(self, commit: Commit) -> None:
        doc = json.dumps(commit)
        seqs = self._commits.setdefault(commit["actor"], {})
        if commit["seq"] in seqs:
            raise JournalConflict(f"commit {commit['actor']}#{commit['seq']} already exists")
        row = self._sched.get(commit["actor"])
        epoch = commit.get("epoch")
        if self.fence_epochs and epoch and row is not None and row.epoch != epoch:
            raise JournalConflict(f"commit {commit['actor']}#{commit['seq']} of lease epoch "
                                  f"{epoch} is fenced out by epoch {row.epoch}")
        seqs[commit["seq"]] = doc
        if "kind" in commit and commit.get("run"):
            self._outcomes[(commit["actor"], commit["run"]["msg"])] = commit["seq"]
        run = commit.get("run")
        if isinstance(run, dict):  # the run index, in the same step as the commit
            key = (commit["actor"], str(run.get("msg")))
            indexed = run_index.fold(self._runs.get(key), commit)
            if indexed is not None:
                self._runs[key] = indexed
        if commit.get("consumed") and not commit.get("outbox"):
            await self.consume(commit["actor"], list(commit["consumed"]), float(commit["ts"]))

    async def append_entry(self, commit: Commit, envelope: Envelope, n: int) -> int:
        """Write `envelope`'s entry (as `enqueue_numbered`) and, only if it became entry
        `n`, `commit` with it, in one step; the entry's number (0: the id was taken, nothing
        written). JournalConflict: the entry was written, the commit refused."""
        json.dumps(commit)  # fails before anything changes
        number = await self.enqueue_numbered(envelope)
        if number == n:
            await self.append(commit)
        return number

    async def read(self, actor: str, after_seq: int = -1) -> list[Commit]:
        seqs = self._commits.get(actor, {})
        return [json.loads(seqs[s]) for s in sorted(seqs) if s > after_seq]

    async def read_tail(self, actor: str) -> list[Commit]:
        docs = await self.read(actor)
        start = max((i for i, d in enumerate(docs) if "state" in d), default=0)
        return docs[start:]

    async def outcome(self, actor: str, msg_id: str) -> Commit | None:
        seq = self._outcomes.get((actor, msg_id))
        if seq is None:
            return None
        found: Commit = json.loads(self._commits[actor][seq])
        return found

    # -- inbox -----------------------------------------------------------------------------
    async def enqueue(self, envelope: Envelope) -> bool:
        return bool(await self.enqueue_numbered(envelope))

    async def enqueue_numbered(self, envelope: Envelope) -> int:
        """`enqueue`, answering the number `n` the entry was created with (0: not created)."""
        actor = envelope["target"]
        box = self._inbox.setdefault(actor, {})
        if envelope["id"] in box:
            return 0
        doc = json.dumps(envelope)  # fails before anything changes
        row = self._sched.setdefault(actor, _Sched())
        row.last_n += 1
        deliver_at = float(envelope.get("deliver_at", 0.0))
        entry = _Entry(row.last_n, envelope.get("kind") or "call", deliver_at, None, doc)
        box[envelope["id"]] = entry
        self._pending.setdefault(actor, {})[envelope["id"]] = entry
        self._set_due(actor, row, deliver_at if row.due_at is None
                      else min(row.due_at, deliver_at))
        return row.last_n

    async def inbox(self, actor: str, now: float, *, calls: int | None = None) -> list[Envelope]:
        entries = sorted((e for e in self._pending.get(actor, {}).values()
                          if e.deliver_at <= now), key=lambda e: e.n)
        if calls is not None:
            taken = [e for e in entries if e.kind == "call"][:calls]
            entries = [e for e in entries if e.kind != "call"] + taken
        return [{**json.loads(e.doc), "n": e.n} for e in entries]

    async def consume(self, actor: str, ids: list[str], now: float) -> None:
        pending = self._pending.get(actor, {})
        for i in ids:
            entry = pending.pop(i, None)
            if entry is not None:
                entry.consumed_at = now

    # -- schedule --------------------------------------------------------------------------
    def _set_due(self, actor: str, row: _Sched, due_at: float | None) -> None:
        if due_at == row.due_at and (due_at != 0 or actor in self._ready):
            return
        row.due_at = due_at
        self._ready.pop(actor, None)
        self._timed_due.pop(actor, None)
        if due_at is None:
            return
        if due_at <= 0:
            row.ready_n = next(self._counter)
            self._ready[actor] = row.ready_n
        else:
            heapq.heappush(self._timed, (due_at, actor))

    def _free_for(self, row: _Sched, owner: str | None, now: float,
                  versions: Collection[str] | None = None) -> bool:
        if versions is not None and row.ver is not None and row.ver not in versions:
            return False
        return owner is None or row.owner in (None, owner) or row.lease_until < now

    async def due_actors(self, now: float, limit: int = 256, *, owner: str | None = None,
                         versions: Collection[str] | None = None,
                         scope: Scope | None = None) -> list[str]:
        while self._timed and self._timed[0][0] <= now:
            due_at, actor = heapq.heappop(self._timed)
            row = self._sched.get(actor)
            if row is not None and row.due_at == due_at:
                self._timed_due[actor] = due_at
        ready = [a for a, _ in sorted(self._ready.items(), key=lambda kv: kv[1])
                 if self._free_for(self._sched[a], owner, now, versions) and in_scope(a, scope)
                 ][:limit]
        timed = [a for a, d in sorted(self._timed_due.items(), key=lambda kv: kv[1])
                 if d <= now and self._free_for(self._sched[a], owner, now, versions)
                 and in_scope(a, scope)][:limit]
        out = list(dict.fromkeys(ready + timed))
        return out

    async def due_pinned(self, now: float, limit: int = 256, *, owner: str | None = None,
                         versions: Collection[str]) -> list[tuple[str, str]]:
        await self.due_actors(now, 0)  # move timers whose time has come out of the heap
        due = [a for a in [*self._ready, *(a for a, d in self._timed_due.items() if d <= now)]
               if self._sched[a].ver in versions and self._free_for(self._sched[a], owner, now)]
        return [(a, str(self._sched[a].ver)) for a in dict.fromkeys(due)][:limit]

    async def next_due(self, now: float, *,
                       versions: Collection[str] | None = None) -> float | None:
        found: float | None = None
        skipped: list[tuple[float, str]] = []
        while self._timed:
            due_at, actor = self._timed[0]
            row = self._sched.get(actor)
            if row is not None and row.due_at == due_at and due_at > now:
                if versions is None or row.ver is None or row.ver in versions:
                    found = due_at
                    break
                skipped.append((due_at, actor))  # another version's: not this caller's wake
            elif row is not None and row.due_at == due_at:  # due already: due_actors takes it
                self._timed_due[actor] = due_at
            heapq.heappop(self._timed)
        for item in skipped:
            heapq.heappush(self._timed, item)
        # taken from the heap by an earlier, later `now` (a clock that stepped back)
        later = [d for a, d in self._timed_due.items() if d > now and self._free_for(
            self._sched[a], None, now, versions)]
        return min([*later, found]) if later and found is not None else \
            (min(later) if later else found)

    async def acquire(self, actor: str, owner: str, now: float, ttl: float
                      ) -> ActorLease | None:
        row = self._sched.setdefault(actor, _Sched())
        if row.owner not in (None, owner) and row.lease_until >= now:
            return None
        taken_over = row.owner not in (None, owner) or (row.owner is None and
                                                         row.lease_until == CRASHED)
        if row.owner != owner:
            row.epoch += 1
            row.owner = owner
        row.lease_until = now + ttl
        return ActorLease(row.epoch, taken_over)

    async def renew(self, owner: str, now: float, ttl: float) -> set[str]:
        held: set[str] = set()
        until = now + ttl
        for actor, row in self._sched.items():
            if row.owner != owner:
                continue
            if row.due_at is not None and row.due_at == row.lease_until:
                self._set_due(actor, row, until)
            row.lease_until = until
            held.add(actor)
        return held

    async def settle(self, actor: str, owner: str, *, now: float, seen_n: int, busy: bool,
                     release: bool = False, version: str | EllipsisType | None = ...) -> None:
        row = self._sched.get(actor)
        if row is None or row.owner != owner:
            return
        if not isinstance(version, EllipsisType):
            row.ver = version
        due = INF
        for e in self._pending.get(actor, {}).values():
            if e.deliver_at > now or (e.n > seen_n and not (busy and e.kind == "call")):
                due = min(due, e.deliver_at)
        if release:
            row.owner = None
            row.lease_until = 0.0
        elif busy:
            due = min(due, row.lease_until)
        self._set_due(actor, row, None if due == INF else due)

    async def owners(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self._sched.values():
            if row.owner is not None:
                counts[row.owner] = counts.get(row.owner, 0) + 1
        return counts

    async def run_versions(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self._sched.values():
            if row.ver is not None:
                counts[row.ver] = counts.get(row.ver, 0) + 1
        return counts

    async def expire_owner(self, owner: str) -> int:
        n = 0
        for actor, row in self._sched.items():
            if row.owner == owner:  # the lease ends: renew() no longer returns it
                row.owner = None
                row.lease_until = CRASHED
                if row.due_at is not None and row.due_at > 0:
                    self._set_due(actor, row, 0.0)
                n += 1
        return n

    # -- deliveries and dead letters -----------------------------------------------------------
    async def bump_delivery(self, actor: str, msg_id: str, at_seq: int) -> int:
        entry = self._inbox.get(actor, {}).get(msg_id)
        if entry is None or entry.consumed_at is not None:
            return 0
        entry.deliveries = entry.deliveries + 1 if entry.delivered_at == at_seq else 1
        entry.delivered_at = at_seq
        return entry.deliveries

    async def put_dead_letter(self, entry: dict[str, Any]) -> None:
        key = (entry["actor"], entry["msg"])
        self._dead.pop(key, None)
        self._dead[key] = json.dumps(entry)

    async def dead_letters(self, limit: int = 1000) -> list[dict[str, Any]]:
        return [json.loads(d) for d in list(self._dead.values())[:limit]]

    async def drop_dead_letter(self, actor: str, msg_id: str) -> bool:
        return self._dead.pop((actor, msg_id), None) is not None

    # -- the run index -------------------------------------------------------------------------
    async def runs(self, *, type: str | None = None, status: str | None = None,
                   activity: str | None = None, id_prefix: str | None = None,
                   started_after: float | None = None, started_before: float | None = None,
                   ended_after: float | None = None, ended_before: float | None = None,
                   limit: int = 100, after: str | None = None) -> list[dict[str, Any]]:
        key = run_index.check(status, limit, after)
        found = [r for r in self._runs.values() if run_index.matches(
            r, type=type, status=status, activity=activity, id_prefix=id_prefix,
            started_after=started_after, started_before=started_before,
            ended_after=ended_after, ended_before=ended_before, key=key)]
        found.sort(key=run_index.order, reverse=True)
        return [run_index.shown(r) for r in found[:limit]]

    # -- listing and upkeep ------------------------------------------------------------------
    async def actors(self, prefix: str = "") -> list[str]:
        return sorted(a for a in self._commits if a.startswith(prefix))

    async def purge_tombstones(self, older_than: float) -> int:
        n = 0
        for box in self._inbox.values():
            for i in [i for i, e in box.items()
                      if e.consumed_at is not None and e.consumed_at < older_than]:
                del box[i]
                n += 1
        return n

    async def close(self) -> None:
        pass
