"""State deltas: a completing commit carries what its run changed in the actor's state.

A commit carries either `state` (a snapshot: the whole state) or `delta`: a list of
field-level operations that turn the previous committed state into this one. Journals tell
the two apart by `"state" in commit`, so `read_tail` returns the latest snapshot and every
commit after it, and a load applies the deltas in order. Every operation is a JSON list
whose path is a list of dict keys (strings) and list indexes (integers):

- `["s", path, value]`: set (replace a value, add a dict key at the end, or append to a
  list when the index is its length); the empty path replaces the whole state;
- `["d", path]`: delete a dict key;
- `["t", path, n]`: truncate the list at `path` to its first `n` items.

Applying a delta gives back exactly the committed state: JSON types (1, 1.0 and true
differ; so do 0.0 and -0.0), list lengths and dict key order (a dict whose keys were
reordered is set whole).

A state commit is a snapshot (`SnapshotPolicy`) when the actor has none yet, when the
last one is `SNAPSHOT_EVERY` (64) or more commits back (a load reads them all), when the
deltas since it would add up to more bytes than it (a small state is always whole; while
the last snapshot is `SMALL_STATE` bytes or less, nothing is diffed), when the delta would
exceed `MAX_DELTA_BYTES`, and at the sequence numbers where the journal compacts
(`compact_every`, Cosmos), so compaction keeps its rhythm.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pydantic_core import from_json, to_json

from runtime import errors
from runtime.journal.store import Commit

SNAPSHOT_EVERY = 64
"""A state commit this many commits after the last snapshot is a snapshot again."""
MAX_DELTA_BYTES = 64 * 1024
"""A larger change is written as a snapshot: a journal can move a large `state` to its blob
store (Cosmos), never a `delta`."""
SMALL_STATE = 64
"""While the last snapshot is at most this many bytes, state commits are snapshots, not
diffed: a delta could save a few dozen bytes, and the diff costs more than writing them."""

Op = list[Any]


_ON, _OFF = ("1", "true", "yes", "on", "t", "y"), ("0", "false", "no", "off", "f", "n")


def enabled() -> bool:
    """Whether completing commits carry deltas: yes unless `LOOM_STATE_DELTAS=0` (which a
    fleet upgrading from a Loom that cannot read deltas sets until every worker can)."""
    value = os.environ.get("LOOM_STATE_DELTAS", "1").strip().lower()
    if value not in _ON + _OFF:
        raise errors.SettingsInvalid(
            f"invalid settings: LOOM_STATE_DELTAS: {value!r} is not one of 1/0, true/false, "
            "yes/no, on/off")
    return value in _ON


def diff(old: Any, new: Any) -> list[Op]:
    """The operations that turn `old` into `new` (both JSON values as decoded)."""
    ops: list[Op] = []
    _diff(old, new, [], ops)
    return ops


def _diff(a: Any, b: Any, path: list[Any], ops: list[Op]) -> None:
    if a is b:
        return
    kind = type(a)
    if kind is not type(b):
        ops.append(["s", path, b])
    elif kind in (dict, list) and a == b and to_json(a) == to_json(b):
        return  # equal (the bytes also tell 1 from 1.0 and true, -0.0, key order)
    elif kind is dict:
        kept = [k for k in a if k in b]
        added = [k for k in b if k not in a]
        if [*kept, *added] != list(b):
            ops.append(["s", path, b])  # keys reordered: the order must survive
            return
        for k in a:
            if k not in b:
                ops.append(["d", [*path, k]])
        for k in kept:
            _diff(a[k], b[k], [*path, k], ops)
        for k in added:
            ops.append(["s", [*path, k], b[k]])
    elif kind is list:
        common = min(len(a), len(b))
        if len(b) < len(a):
            ops.append(["t", path, len(b)])
        for i in range(common):
            _diff(a[i], b[i], [*path, i], ops)
        for i in range(common, len(b)):
            ops.append(["s", [*path, i], b[i]])
    elif kind is float:
        if a.hex() != b.hex():  # exact: 0.0 and -0.0 differ, NaN equals NaN
            ops.append(["s", path, b])
    elif a != b:
        ops.append(["s", path, b])


def apply(state: Any, ops: list[Op]) -> Any:
    """`state` after `ops` (changed in place where it can be; use the returned value)."""
    for op in ops:
        try:
            kind, path = op[0], op[1]
            if kind == "s" and not path:
                state = op[2]
                continue
            parent = state
            for key in path[:-1]:
                parent = parent[key]
            last = path[-1] if path else None
            if kind == "s":
                if type(parent) is list and last == len(parent):
                    parent.append(op[2])
                else:
                    parent[last] = op[2]
            elif kind == "d":
                del parent[last]
            elif kind == "t":
                target = parent if not path else parent[last]
                if type(target) is not list or not 0 <= op[2] <= len(target):
                    raise ValueError("truncates past the end of a list")
                del target[op[2]:]
            else:
                raise ValueError(f"unknown operation {kind!r}")
        except (LookupError, TypeError, ValueError) as exc:
            raise errors.LoomError(f"a state delta does not apply ({op!r:.200}): {exc}") \
                from None
    return state


def current_state(commits: list[Commit]) -> Any:
    """The state after the last of `commits` (from `read_tail` or `read`): the latest
    snapshot with the deltas after it applied (to a copy); None if none carries a snapshot."""
    start = next((i for i in range(len(commits) - 1, -1, -1) if "state" in commits[i]), None)
    if start is None:
        return None
    state = from_json(to_json(commits[start]["state"]))
    for commit in commits[start + 1:]:
        if "delta" in commit:  # applied as a copy: later deltas change what it sets in place
            state = apply(state, from_json(to_json(commit["delta"])))
    return state


def load_tail(tail: list[Commit]) -> tuple[Any, SnapshotPolicy, list[Commit]]:
    """From `read_tail`'s answer (normally a snapshot first, if the actor has one): the
    committed state from its latest snapshot (None: no snapshot), where the delta chain
    stands, and the commits after the last state commit (those of a run in progress). One
    pass over a long tail; the snapshot in `tail` is changed in place."""
    end = len(tail)
    while end > 0 and "state" not in tail[end - 1] and "delta" not in tail[end - 1]:
        end -= 1
    # The latest snapshot, which is not always first: a compaction between read_tail's
    # two queries may have removed the older one it started from, but not every delta
    # after it (Cosmos deletes one item at a time).
    start = next((i for i in range(end - 1, -1, -1) if "state" in tail[i]), None)
    if start is None:
        return None, SnapshotPolicy(), tail[end:]
    state, nbytes = tail[start]["state"], 0
    policy = SnapshotPolicy(int(tail[start]["seq"]), len(to_json(state)))
    for commit in tail[start + 1:end]:
        if "delta" in commit:
            state = apply(state, commit["delta"])
            nbytes += len(to_json(commit["delta"]))
    policy.nbytes = nbytes
    return state, policy, tail[end:]


def after_last_state(commits: list[Commit]) -> list[Commit]:
    """The commits after the last one that carries `state` or `delta` (a run's completing
    commit): those of the run in progress, if any, and stray-timer sweeps."""
    for i in range(len(commits) - 1, -1, -1):
        if "state" in commits[i] or "delta" in commits[i]:
            return commits[i + 1:]
    return commits


@dataclass
class SnapshotPolicy:
    """Where the actor's delta chain stands, and whether its next state commit is a
    snapshot. A load reads the latest snapshot and every commit after it, steps of the
    runs since included, so a snapshot is also due `SNAPSHOT_EVERY` commits after the last."""

    base_seq: int | None = None  # the latest snapshot's seq (None: the actor has none)
    base_bytes: int = 0  # its size
    nbytes: int = 0  # the size of the deltas since

    def fields(self, seq: int, before: Any, after: Any, compact_every: int = 0
               ) -> dict[str, Any]:
        """`{"state": after}` or `{"delta": ops}` for the state commit at `seq`."""
        if self.base_seq is not None and seq - self.base_seq < SNAPSHOT_EVERY and \
                self.base_bytes > SMALL_STATE and not (
                    compact_every > 0 and seq % compact_every == 0):
            ops = diff(before, after)
            size = len(to_json(ops))
            if size <= MAX_DELTA_BYTES and self.nbytes + size < self.base_bytes:
                self.nbytes += size
                return {"delta": ops}
        self.base_seq, self.base_bytes, self.nbytes = seq, len(to_json(after)), 0
        return {"state": after}
