"""State deltas (runtime/actors/delta.py): a completing commit carries what changed, with a
snapshot now and then; loading folds them back into exactly the state that was committed."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic_core import from_json, to_json

from runtime import errors
from runtime.actors import Actor, ActorContext, ActorRuntime, delta, handler, invariant
from runtime.actors.replay import replay_commits
from runtime.journal import MemoryJournal
from runtime.journal.sqlite import SqliteJournal
from runtime.journal.store import JournalStore
from runtime.testing import StubActivities

# -- diff and apply ---------------------------------------------------------------------------

KEYS = ["a", "b", "é", "日本", "k-1", "", "with space", "0"]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.45:
        return rng.choice([
            None, True, False, 0, 1, -7, 2**70, 0.0, -0.0, 1.0, 1.5, -2.25e-300, 1e300,
            "", "x", "ünïcødé ☃", "\u0000nul", rng.randint(-1000, 1000), rng.random()])
    if roll < 0.75:
        return {rng.choice(KEYS) + str(rng.randint(0, 3)): random_value(rng, depth + 1)
                for _ in range(rng.randint(0, 5))}
    return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]


def mutate(rng: random.Random, value: Any, depth: int = 0) -> Any:
    """A changed copy of `value`: a few edits somewhere in it (or none)."""
    value = from_json(to_json(value))
    roll = rng.random()
    if roll < 0.1 or depth > 4:
        return random_value(rng, depth)  # a type change, or a new value
    if isinstance(value, dict) and value:
        key = rng.choice(list(value))
        op = rng.random()
        if op < 0.2:
            del value[key]
        elif op < 0.35:
            value[rng.choice(KEYS)] = random_value(rng, depth + 1)  # add (or replace)
        elif op < 0.45:  # same keys, another order
            items = list(value.items())
            rng.shuffle(items)
            value = dict(items)
        else:
            value[key] = mutate(rng, value[key], depth + 1)
        return value
    if isinstance(value, list) and value:
        op = rng.random()
        if op < 0.2:
            del value[rng.randrange(len(value)):]  # shrink
        elif op < 0.4:
            value.extend(random_value(rng, depth + 1) for _ in range(rng.randint(1, 3)))
        elif op < 0.5:
            value.insert(0, random_value(rng, depth + 1))
        else:
            i = rng.randrange(len(value))
            value[i] = mutate(rng, value[i], depth + 1)
        return value
    return random_value(rng, depth) if roll < 0.5 else value


def test_applying_the_diff_gives_exactly_the_new_state_through_a_json_round_trip() -> None:
    rng = random.Random(20261130)
    for _ in range(3000):
        old = random_value(rng)
        new = old
        for _ in range(rng.randint(1, 4)):
            new = mutate(rng, new)
        ops = delta.diff(old, new)
        for codec in (lambda v: from_json(to_json(v)), lambda v: json.loads(json.dumps(v))):
            got = delta.apply(codec(old), codec(ops))
            assert to_json(got) == to_json(new), (old, new, ops)  # types, order, -0.0


def test_the_diff_names_only_what_changed() -> None:
    old = {"items": [{"id": i, "qty": i} for i in range(100)], "n": 1, "gone": True}
    new = from_json(to_json(old))
    new["items"][42]["qty"] = 0.5
    new["n"] = 2
    del new["gone"]
    new["added"] = "é"
    assert delta.diff(old, new) == [["d", ["gone"]], ["s", ["items", 42, "qty"], 0.5],
                                    ["s", ["n"], 2], ["s", ["added"], "é"]]
    assert delta.diff(old, from_json(to_json(old))) == []
    assert delta.diff({"a": 1}, {"a": True}) == [["s", ["a"], True]]  # equal in Python
    assert delta.diff({"a": 0.0}, {"a": -0.0}) == [["s", ["a"], -0.0]]
    assert delta.diff({"a": 1, "b": 2}, {"b": 2, "a": 1}) == [["s", [], {"b": 2, "a": 1}]]
    assert delta.diff([1, 2, 3], [1]) == [["t", [], 1]]
    assert delta.diff([1], [1, 2]) == [["s", [1], 2]]
    assert delta.diff({"a": 1}, [1]) == [["s", [], [1]]]


def test_a_delta_that_does_not_fit_the_state_is_refused_loudly() -> None:
    for state, ops in (({"a": 1}, [["d", ["b"]]]), ([1], [["t", [], 3]]),
                       ({"a": 1}, [["s", ["a", "x"], 1]]), ({}, [["?", ["a"]]]),
                       ([1], [["s", [5], 1]])):
        with pytest.raises(errors.LoomError, match="does not apply"):
            delta.apply(state, ops)


def test_current_state_folds_the_deltas_after_the_last_snapshot() -> None:
    commits = [{"seq": 0, "state": {"n": 0}, "kind": "completed"},
               {"seq": 1, "delta": [["s", ["n"], 1]], "kind": "completed"},
               {"seq": 2, "events": []},
               {"seq": 3, "delta": [["s", ["m"], 2]], "kind": "completed"},
               {"seq": 4, "events": [], "run": {"msg": "m"}}]
    assert delta.current_state(commits) == {"n": 1, "m": 2}
    assert delta.current_state(commits[2:]) is None  # no snapshot among them
    assert delta.after_last_state(commits) == commits[4:]
    state, policy, unfinished = delta.load_tail(from_json(to_json(commits)))
    assert (state, unfinished) == ({"n": 1, "m": 2}, commits[4:])
    assert (policy.base_seq, policy.base_bytes, policy.nbytes) == (0, 7, 2 * 15)
    assert delta.load_tail(commits[2:]) == (None, delta.SnapshotPolicy(), commits[4:])
    assert delta.current_state([{"seq": 0, "state": {"n": 0}}, *commits[1:2],
                                {"seq": 2, "state": {"fresh": 1}}]) == {"fresh": 1}
    # a delta that sets a container and a later one that changes inside it: folding the
    # same commits twice gives the same state (the commits are left as they were)
    nested = [{"seq": 0, "state": {}}, {"seq": 1, "delta": [["s", ["k"], {"a": 1}]]},
              {"seq": 2, "delta": [["s", ["k", "a"], 2]]}]
    before = to_json(nested)
    assert delta.current_state(nested) == delta.current_state(nested) == {"k": {"a": 2}}
    assert to_json(nested) == before


# -- when a commit is a snapshot ----------------------------------------------------------------

def test_snapshot_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    big = {"items": list(range(500))}
    changed = {"items": [*range(499), -1]}
    policy = delta.SnapshotPolicy()
    assert policy.fields(0, None, big) == {"state": big}  # no base yet
    assert policy.fields(1, big, changed) == {"delta": [["s", ["items", 499], -1]]}
    # a small state is always whole: its delta would not be smaller
    small = delta.SnapshotPolicy()
    small.fields(0, None, {"n": 1})
    assert "state" in small.fields(1, {"n": 1}, {"n": 2})
    # ... and one of SMALL_STATE bytes or less is not even diffed (even unchanged, when an
    # empty delta would be smaller); one byte more is
    diffed: list[Any] = []
    real_diff = delta.diff

    def counting(before: Any, after: Any) -> Any:
        diffed.append(after)
        return real_diff(before, after)

    monkeypatch.setattr(delta, "diff", counting)
    for pad in (delta.SMALL_STATE - 8, delta.SMALL_STATE - 7):  # {"s":"…"} is 8 bytes + pad
        state = {"s": "x" * pad}
        tiny = delta.SnapshotPolicy()
        tiny.fields(0, None, state)
        kind = next(iter(tiny.fields(1, state, state)))
        assert (kind, len(diffed)) == (("state", 0) if len(to_json(state)) <= delta.SMALL_STATE
                                       else ("delta", 1)), (pad, kind, diffed)
    monkeypatch.undo()
    # SNAPSHOT_EVERY commits after the last snapshot, whatever happened in between
    assert "delta" in policy.fields(delta.SNAPSHOT_EVERY - 1, changed, big)
    assert "state" in policy.fields(delta.SNAPSHOT_EVERY, big, changed)
    # where the journal compacts (Cosmos: compact_every), a state commit is a snapshot
    assert "delta" in policy.fields(delta.SNAPSHOT_EVERY + 1, changed, big, compact_every=7)
    assert "state" in policy.fields(delta.SNAPSHOT_EVERY + 6, big, changed, compact_every=7)
    # the deltas since the snapshot may not outgrow it
    grow = delta.SnapshotPolicy()
    state = {"l": list(range(100))}
    grow.fields(0, None, state)
    size, total, kinds = len(to_json(state)), 0, []
    for seq in range(1, 40):
        before, state = state, {"l": [-seq, *state["l"][1:]]}
        kinds.append(next(iter(grow.fields(seq, before, state))))
        total += len(to_json([["s", ["l", 0], -seq]]))
        if total >= size:
            break
    assert kinds == ["delta"] * (len(kinds) - 1) + ["state"] and len(kinds) > 10
    assert next(iter(grow.fields(40, state, {"l": [0, *state["l"][1:]]}))) == "delta"
    # a delta too large for a journal item is a snapshot (which Cosmos can move to a blob)
    huge = delta.SnapshotPolicy()
    old = {"big": "x" * (4 * delta.MAX_DELTA_BYTES), "n": 0}
    huge.fields(0, None, old)
    assert "delta" in huge.fields(1, old, {**old, "n": 1})
    assert "state" in huge.fields(2, old, {**old, "new": "y" * delta.MAX_DELTA_BYTES})


# -- through the runtime ----------------------------------------------------------------------

class Inventory(Actor, type_name="inventory"):
    """~10 KB of state; each message changes one field somewhere in it."""

    def initial_state(self) -> dict[str, Any]:
        return {"items": [{"id": i, "name": f"item-{i:04d}", "qty": i, "tags": ["a", "b"]}
                          for i in range(175)], "log": [], "n": 0}

    @handler
    async def set(self, ctx: ActorContext, payload: dict[str, Any]) -> int:
        self.state["items"][payload["i"]]["qty"] = payload["qty"]
        self.state["n"] += 1
        return int(self.state["n"])

    @handler
    async def edit(self, ctx: ActorContext, payload: dict[str, Any]) -> None:
        """Anything: a new whole state, from the payload."""
        self.state = payload

    @handler
    async def fail(self, ctx: ActorContext, payload: Any) -> None:
        self.state["n"] = -1
        raise RuntimeError("no")

    @handler
    async def get(self, ctx: ActorContext, payload: Any) -> Any:
        return self.state


def journals(tmp_path: Path) -> list[JournalStore]:
    return [MemoryJournal(), SqliteJournal(tmp_path / "j.db")]


@pytest.fixture
def deltas_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOM_STATE_DELTAS", "1")


async def fresh_state(journal: JournalStore, key: str) -> Any:
    """What a new runtime loads for `key` (its handler returns the state)."""
    async with ActorRuntime(journal, activities=StubActivities(), lint=False) as rt:
        rt.register(Inventory)
        return await rt.ask(key, "get")


@pytest.mark.usefixtures("deltas_on")
def test_random_states_load_back_exactly_from_snapshots_and_deltas(tmp_path: Path) -> None:
    async def main(journal: JournalStore) -> None:
        rng = random.Random(7)
        key = "inventory/r"
        state: Any = {"seed": 0}
        async with ActorRuntime(journal, activities=StubActivities(), lint=False) as rt:
            rt.register(Inventory)
            for i in range(150):
                state = mutate(rng, state) if i % 10 else random_value(rng)
                if not isinstance(state, dict):
                    state = {"v": state}
                await rt.ask(key, "edit", state)
                if i % 37 == 0:  # a new activation mid-chain loads what the last one wrote
                    loaded = await fresh_state(journal, key)
                    assert to_json(loaded) == to_json(state)
        assert to_json(await fresh_state(journal, key)) == to_json(state)
        commits = await journal.read(key)
        assert sum("delta" in c for c in commits) > sum("state" in c for c in commits)
        assert to_json(delta.current_state(commits)) == to_json(state)
        await journal.close()

    for journal in journals(tmp_path):
        asyncio.run(main(journal))


@pytest.mark.usefixtures("deltas_on")
def test_one_field_per_message_costs_a_small_commit_and_loads_exactly(tmp_path: Path) -> None:
    async def main(journal: JournalStore) -> None:
        key = "inventory/i"
        async with ActorRuntime(journal, activities=StubActivities(), lint=False) as rt:
            rt.register(Inventory)
            for n in range(200):
                await rt.ask(key, "set", {"i": n % 170, "qty": n * 1.5})
            with pytest.raises(errors.HandlerFailed):
                await rt.ask(key, "fail")  # its commit changes nothing
            expected = await rt.ask(key, "get")
        assert expected["n"] == 200 and expected["items"][5]["qty"] == 175 * 1.5
        commits = await journal.read(key)
        done = [c for c in commits if "kind" in c]
        snapshots = [c["seq"] for c in done if "state" in c]
        assert snapshots[0] == 0 and len(snapshots) == 4  # seq 0, 64, 128, 192
        assert all(b - a <= delta.SNAPSHOT_EVERY for a, b in itertools.pairwise(snapshots))
        sizes = [len(to_json(c)) for c in done[:200] if "delta" in c]
        assert max(sizes) < 1024 < 10_000 < len(to_json(done[0]))
        assert done[-2]["delta"] == [] or done[-1]["delta"] == []  # the failed run's
        tail = await journal.read_tail(key)
        assert tail[0]["seq"] == snapshots[-1] and len(tail) < delta.SNAPSHOT_EVERY
        assert await fresh_state(journal, key) == expected
        await journal.close()

    for journal in journals(tmp_path):
        asyncio.run(main(journal))


class Audited(Inventory, type_name="inventory"):
    seen: list[tuple[Any, Any]] = []

    @invariant
    def whole(self, before: Any, after: Any, events: Any) -> bool:
        Audited.seen.append((before, after))
        return True


@pytest.mark.usefixtures("deltas_on")
def test_invariants_see_whole_states() -> None:
    async def main() -> None:
        journal = MemoryJournal()
        for _ in range(2):  # the second runtime loads snapshot + deltas
            async with ActorRuntime(journal, activities=StubActivities(), lint=False) as rt:
                rt.register(Audited)
                for n in range(3):
                    await rt.ask("inventory/a", "set", {"i": n, "qty": -n})
        commits = await journal.read("inventory/a")
        assert ["state" in c for c in commits] == [True] + [False] * 5
        for before, after in Audited.seen:
            assert len(before["items"]) == len(after["items"]) == 175
        assert Audited.seen[-1][1] == delta.current_state(commits)

    Audited.seen = []
    asyncio.run(main())


def test_journals_of_either_kind_load_whatever_the_setting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A journal written with whole states (today's) loads with deltas on and continues
    with deltas; one written with deltas loads with them off and continues whole."""
    async def write(journal: JournalStore, first: int) -> Any:
        async with ActorRuntime(journal, activities=StubActivities(), lint=False) as rt:
            rt.register(Inventory)
            for n in range(first, first + 5):
                await rt.ask("inventory/x", "set", {"i": n, "qty": 1000 + n})
            return await rt.ask("inventory/x", "get")

    async def main(journal: JournalStore) -> None:
        monkeypatch.setenv("LOOM_STATE_DELTAS", "0")
        await write(journal, 0)
        assert all("state" in c for c in await journal.read("inventory/x"))
        monkeypatch.setenv("LOOM_STATE_DELTAS", "1")
        await write(journal, 5)
        assert any("delta" in c for c in await journal.read("inventory/x"))
        monkeypatch.setenv("LOOM_STATE_DELTAS", "0")
        expected = await write(journal, 10)
        assert [x["qty"] for x in expected["items"][:15]] == [1000 + n for n in range(15)]
        assert expected["n"] == 15 == (await fresh_state(journal, "inventory/x"))["n"]
        report = await replay_commits(Inventory, "inventory/x",
                                      await journal.read("inventory/x"))
        assert [r.status for r in report.runs] == ["ok"] * 19  # 15 sets, 4 gets
        await journal.close()

    for journal in journals(tmp_path):
        asyncio.run(main(journal))


class Miscounted(Inventory, type_name="inventory"):
    @handler
    async def set(self, ctx: ActorContext, payload: dict[str, Any]) -> int:
        self.state["items"][payload["i"]]["qty"] = payload["qty"] + 1
        self.state["n"] += 1
        return int(self.state["n"])


@pytest.mark.usefixtures("deltas_on")
def test_replay_checks_the_states_that_deltas_record() -> None:
    async def main() -> None:
        journal = MemoryJournal()
        async with ActorRuntime(journal, activities=StubActivities(), lint=False) as rt:
            rt.register(Inventory)
            for n in range(4):
                await rt.ask("inventory/p", "set", {"i": n, "qty": n})
        commits = await journal.read("inventory/p")
        assert sum("delta" in c for c in commits) == 3
        assert (await replay_commits(Inventory, "inventory/p", commits)).ok
        report = await replay_commits(Miscounted, "inventory/p", commits)
        assert [r.status for r in report.runs] == ["diverged"] * 4
        assert all("final state differs" in r.detail for r in report.runs)

    asyncio.run(main())


@pytest.mark.usefixtures("deltas_on")
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_deltas_on_cosmos_survive_compaction(cosmos_server: Any) -> None:
    """Snapshots land where Cosmos compacts (compact_every); compaction keeps the latest
    snapshot and the deltas after it, and a load gives back exactly the state."""
    from runtime.journal.cosmos import CosmosJournal

    container = f"deltas-{random.Random().getrandbits(48):012x}"

    def journal() -> CosmosJournal:
        return CosmosJournal(cosmos_server.endpoint, cosmos_server.key, database="loom-tests",
                             container=container, verify_tls=False, compact_every=8,
                             tombstone_ttl_s=0.0, commit_margin_s=0.0)

    async def main() -> None:
        first = journal()
        async with ActorRuntime(first, activities=StubActivities(), lint=False,
                                poll_interval_s=0.02) as rt:
            rt.register(Inventory)
            for n in range(21):
                await rt.ask("inventory/c", "set", {"i": n, "qty": n + 0.5})
            expected = await rt.ask("inventory/c", "get")
        # Cosmos _ts has whole seconds: compact as of later, so every commit counts as old
        await first.compact("inventory/c", now=time.time() + 2)
        left = await first.read("inventory/c")
        assert [c["seq"] for c in left] == list(range(16, 22))  # 21 sets, 1 get
        assert "state" in left[0] and all("delta" in c for c in left[1:])
        await first.close()
        second = journal()
        assert to_json(await fresh_state(second, "inventory/c")) == to_json(expected)
        await second.close()

    asyncio.run(main())
