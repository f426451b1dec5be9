"""The journal in memory: for unit tests. Documents are JSON round-tripped like a real store."""

from __future__ import annotations

import itertools
import json
from typing import Any

from runtime.journal.store import Commit, Envelope, JournalConflict


def _copy(doc: dict[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = json.loads(json.dumps(doc))
    return copied


class MemoryJournal:
    def __init__(self) -> None:
        self.url = "memory://"
        self._commits: dict[str, dict[int, str]] = {}
        self._inbox: dict[str, dict[str, tuple[int, float, float | None, str]]] = {}
        self._enq = itertools.count()

    async def append(self, commit: Commit) -> None:
        doc = json.dumps(commit)
        seqs = self._commits.setdefault(commit["actor"], {})
        if commit["seq"] in seqs:
            raise JournalConflict(f"commit {commit['actor']}#{commit['seq']} already exists")
        seqs[commit["seq"]] = doc

    async def read(self, actor: str, after_seq: int = -1) -> list[Commit]:
        seqs = self._commits.get(actor, {})
        return [json.loads(seqs[s]) for s in sorted(seqs) if s > after_seq]

    async def read_tail(self, actor: str) -> list[Commit]:
        docs = await self.read(actor)
        start = max((i for i, d in enumerate(docs) if "state" in d), default=0)
        return docs[start:]

    async def enqueue(self, envelope: Envelope) -> bool:
        box = self._inbox.setdefault(envelope["target"], {})
        if envelope["id"] in box:
            return False
        box[envelope["id"]] = (next(self._enq), float(envelope.get("deliver_at", 0.0)), None,
                               json.dumps(envelope))
        return True

    async def inbox(self, actor: str, now: float, *, calls: int | None = None) -> list[Envelope]:
        entries = sorted((e for e in self._inbox.get(actor, {}).values()
                          if e[2] is None and e[1] <= now), key=lambda e: e[0])
        docs = [json.loads(e[3]) for e in entries]
        if calls is None:
            return docs
        others = [d for d in docs if d.get("kind", "call") != "call"]
        return others + [d for d in docs if d.get("kind", "call") == "call"][:calls]

    async def consume(self, actor: str, ids: list[str], now: float) -> None:
        box = self._inbox.get(actor, {})
        for i in ids:
            entry = box.get(i)
            if entry is not None and entry[2] is None:
                box[i] = (entry[0], entry[1], now, entry[3])

    async def due_actors(self, now: float, limit: int = 1000, *,
                         calls: bool = True) -> list[str]:
        return [a for a, box in self._inbox.items()
                if any(e[2] is None and e[1] <= now
                       and (calls or json.loads(e[3]).get("kind", "call") != "call")
                       for e in box.values())][:limit]

    async def next_due(self, now: float) -> float | None:
        times = [e[1] for box in self._inbox.values() for e in box.values()
                 if e[2] is None and e[1] > now]
        return min(times) if times else None

    async def actors(self, prefix: str = "") -> list[str]:
        return sorted(a for a in self._commits if a.startswith(prefix))

    async def purge_tombstones(self, older_than: float) -> int:
        n = 0
        for box in self._inbox.values():
            for i in [i for i, e in box.items() if e[2] is not None and e[2] < older_than]:
                del box[i]
                n += 1
        return n

    async def close(self) -> None:
        pass
