"""One contract for every JournalStore, run against memory, SQLite and Cosmos (the session
emulator, a fresh container per test): commits, the numbered inbox, outcomes, and the
schedule with its leases.

Each test runs its scenario with `asyncio.run` (no pytest-asyncio). A known bug of one store is
its param marked `xfail(strict=True, reason="BUG: ...")`, so the fix has to remove the mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from servers import CosmosServer, closed_port

from runtime import errors
from runtime.backends.blob_fs import FileBlobStore
from runtime.journal.store import JournalConflict, JournalStore

T = TypeVar("T")
COSMOS_DB = "loom-contract"
STORES = ("memory", "sqlite", "sqlite-process", "cosmos")  # sqlite-process: the SQLite
# journal's bulk writes through its writer process (sqlite_writer.py) from the first one

pytestmark = pytest.mark.filterwarnings(
    "ignore::urllib3.exceptions.InsecureRequestWarning")  # the emulator's self-signed cert


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def stores(**bugs: str) -> list[Any]:
    """Params for every store; `kind="why"` marks a known bug of that store (strict xfail)."""
    params = []
    for kind in STORES:
        marks: list[Any] = [pytest.mark.integration] if kind == "cosmos" else []
        if kind in bugs:
            marks.append(pytest.mark.xfail(strict=True, reason=f"BUG: {bugs[kind]}"))
        params.append(pytest.param(kind, marks=marks, id=kind))
    return params


# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def cosmos_admin(cosmos_server: CosmosServer) -> Iterator[Any]:
    """A plain SDK client on the emulator, to inspect raw items and drop test containers."""
    from azure.cosmos import CosmosClient

    client = CosmosClient(cosmos_server.endpoint, cosmos_server.key, connection_verify=False)
    db = client.create_database_if_not_exists(COSMOS_DB)
    try:
        yield db
    finally:
        try:
            client.delete_database(COSMOS_DB)
        finally:
            client.close()


@pytest.fixture
def make_cosmos(cosmos_server: CosmosServer, cosmos_admin: Any) -> Iterator[Callable[..., Any]]:
    """`make_cosmos(**kw)`: a CosmosJournal on a container of its own (dropped afterwards);
    `make_cosmos(container=name)` opens another journal on an existing one."""
    from azure.cosmos.exceptions import CosmosResourceNotFoundError

    from runtime.journal.cosmos import CosmosJournal

    made: list[CosmosJournal] = []

    def make(**kw: Any) -> CosmosJournal:
        kw.setdefault("container", f"t-{uuid.uuid4().hex[:16]}")
        kw.setdefault("poll_interval_s", 0.0)  # the contract: every call sees the schedule
        journal = CosmosJournal(cosmos_server.endpoint, cosmos_server.key, database=COSMOS_DB,
                                verify_tls=False, **kw)
        made.append(journal)
        return journal

    yield make
    for journal in made:
        run(journal.close())
    for name in {j.container for j in made}:
        with contextlib.suppress(CosmosResourceNotFoundError):
            cosmos_admin.delete_container(name)


def _open(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> JournalStore:
    if kind == "memory":
        from runtime.journal.memory import MemoryJournal
        return MemoryJournal()
    if kind in ("sqlite", "sqlite-process"):
        from runtime.journal.sqlite import SqliteJournal
        return SqliteJournal(tmp_path / "journal.db",
                             writer_process_after=0 if kind == "sqlite-process" else None)
    journal: JournalStore = request.getfixturevalue("make_cosmos")()
    return journal


@pytest.fixture(params=stores())
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JournalStore]:
    """A fresh, empty journal of each kind."""
    store = _open(request.param, request, tmp_path)
    yield store
    run(store.close())


def commit(actor: str, seq: int, **body: Any) -> dict[str, Any]:
    return {"actor": actor, "seq": seq, **body}


def env(target: str, mid: str, kind: str | None = "call", deliver_at: float = 0.0,
        **extra: Any) -> dict[str, Any]:
    return {"id": mid, "target": target, "kind": kind, "payload": {"mid": mid},
            "deliver_at": deliver_at, **extra}


def ids(envelopes: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in envelopes]


def seqs(commits: list[dict[str, Any]]) -> list[int]:
    return [c["seq"] for c in commits]


# -- commits -----------------------------------------------------------------------------------

def test_is_a_journal_store(journal: JournalStore) -> None:
    assert isinstance(journal, JournalStore)
    assert journal.url.split(":", 1)[0] in ("memory", "sqlite", "cosmos")


def test_append_then_read(journal: JournalStore) -> None:
    async def main() -> None:
        for seq in (3, 1, 2):  # out of order on purpose
            await journal.append(commit("counter/a", seq, n=seq))
        await journal.append(commit("counter/b", 1, n=100))
        docs = await journal.read("counter/a")
        assert docs == [commit("counter/a", s, n=s) for s in (1, 2, 3)]
        assert seqs(await journal.read("counter/a", after_seq=1)) == [2, 3]
        assert seqs(await journal.read("counter/a", after_seq=0)) == [1, 2, 3]
        assert await journal.read("counter/a", after_seq=3) == []
        assert seqs(await journal.read("counter/b")) == [1]
        assert await journal.read("counter/nobody") == []

    run(main())


def test_append_same_seq_conflicts_and_keeps_the_first(journal: JournalStore) -> None:
    async def main() -> None:
        await journal.append(commit("a/1", 1, v="first"))
        with pytest.raises(JournalConflict) as info:
            await journal.append(commit("a/1", 1, v="second", state={"x": 1}))
        assert "a/1" in str(info.value)
        assert await journal.read("a/1") == [commit("a/1", 1, v="first")]
        assert await journal.read_tail("a/1") == [commit("a/1", 1, v="first")]
        await journal.append(commit("a/2", 1, v="other actor, same seq"))  # no conflict

    run(main())


def test_concurrent_appends_of_one_seq_exactly_one_wins(journal: JournalStore) -> None:
    async def main() -> None:
        await journal.append(commit("race/1", 1))
        results = await asyncio.gather(
            *(journal.append(commit("race/1", 2, writer=w)) for w in range(16)),
            return_exceptions=True)
        winners = [w for w, r in enumerate(results) if r is None]
        assert len(winners) == 1, results
        assert all(isinstance(r, JournalConflict) for r in results if r is not None), results
        docs = await journal.read("race/1")
        assert seqs(docs) == [1, 2]
        assert docs[1]["writer"] == winners[0]

    run(main())


def test_read_tail(journal: JournalStore) -> None:
    async def main() -> None:
        for seq in (1, 2, 3):  # no commit holds state: the whole journal
            await journal.append(commit("none/1", seq))
        for seq in (1, 2, 3, 4, 5):  # state in the middle: from the latest state on
            body = {"state": {"n": seq}} if seq in (2, 3) else {}
            await journal.append(commit("mid/1", seq, **body))
        for seq in (1, 2, 3):  # the newest commit holds state: just that one
            body = {"state": {"n": seq}} if seq in (1, 3) else {}
            await journal.append(commit("new/1", seq, **body))
        await journal.append(commit("null/1", 1, state={"n": 1}))
        await journal.append(commit("null/1", 2, state=None))  # null state is still state

        assert seqs(await journal.read_tail("none/1")) == [1, 2, 3]
        tail = await journal.read_tail("mid/1")
        assert seqs(tail) == [3, 4, 5]
        assert tail[0]["state"] == {"n": 3}
        assert await journal.read_tail("new/1") == [commit("new/1", 3, state={"n": 3})]
        assert await journal.read_tail("null/1") == [commit("null/1", 2, state=None)]
        assert await journal.read_tail("nobody/1") == []

    run(main())


def test_documents_round_trip_faithfully(journal: JournalStore) -> None:
    body = {
        "text": "héllo ☃ 😀 日本語 \u0000 tab\t quote\" backslash\\ <>&'",
        "floats": [1.0, -0.0, 0.1, 1e-300, 5e-324, 1.7976931348623157e308, -2.5, 1e22],
        "ints": [0, -1, 2**53 + 1, 2**63 + 1, -(2**70)],
        "none": None, "flags": [True, False], "empty": [{}, [], ""],
        "nested": {"a": [{"b": [[1.5, None, "x"]]}], "$blob": "not a reference", "": "empty"},
        "keys with.dots/and/slashes": {"ü": 1},
    }
    canon = json.dumps(body, sort_keys=True)  # 1.0 vs 1 and -0.0 vs 0 differ here

    async def main() -> None:
        await journal.append(commit("rt/1", 1, **body))
        await journal.append(commit("rt/1", 2, state=body, result=body, events=[body]))
        first, second = await journal.read("rt/1")
        for value in (first, second["state"], second["result"], second["events"][0]):
            assert json.dumps({k: value[k] for k in body}, sort_keys=True) == canon
        tail = await journal.read_tail("rt/1")
        assert json.dumps(tail[0]["state"], sort_keys=True) == canon
        assert json.dumps(tail[0]["events"][0], sort_keys=True) == canon
        assert await journal.enqueue(env("rt/1", "m1", payload=body)) is True
        [got] = await journal.inbox("rt/1", now=1.0)
        assert json.dumps(got["payload"], sort_keys=True) == canon

    run(main())


@pytest.mark.parametrize("journal", stores(), indirect=True)
def test_unserialisable_commit_leaves_no_trace(journal: JournalStore) -> None:
    async def main() -> None:
        with pytest.raises(Exception):  # noqa: B017 - each store raises its serialiser's error
            await journal.append(commit("bad/1", 1, state={"x": object()}))
        assert await journal.read("bad/1") == []
        assert await journal.actors() == []

    run(main())


@pytest.mark.parametrize("journal", stores(), indirect=True)
def test_a_failing_append_does_not_fail_a_concurrent_one(journal: JournalStore) -> None:
    async def main() -> None:
        results = await asyncio.gather(journal.append(commit("ok/1", 1, v="kept")),
                                       journal.append(commit("odd/1", 2**64)),
                                       return_exceptions=True)
        assert results[0] is None, results
        assert await journal.read("ok/1") == [commit("ok/1", 1, v="kept")]

    run(main())


# -- the inbox -------------------------------------------------------------------------------

def test_enqueue_is_create_if_absent(journal: JournalStore) -> None:
    async def main() -> None:
        assert await journal.enqueue(env("inbox/1", "m1", payload="first")) is True
        assert await journal.enqueue(env("inbox/1", "m1", payload="second")) is False
        assert await journal.enqueue(env("inbox/2", "m1", payload="other actor")) is True
        [got] = await journal.inbox("inbox/1", now=1.0)
        assert got["payload"] == "first"
        results = await asyncio.gather(*(journal.enqueue(env("inbox/1", "m2")) for _ in range(8)))
        assert sorted(results) == [False] * 7 + [True]

    run(main())


@pytest.mark.parametrize("journal", stores(), indirect=True)
def test_enqueue_of_a_fresh_id_is_never_reported_as_duplicate(journal: JournalStore) -> None:
    async def main() -> None:
        try:
            fresh = await journal.enqueue(env("odd/1", "m1", kind=None))
        except Exception:
            return  # refusing a malformed envelope loudly is fine
        assert fresh is True

    run(main())


def test_inbox_is_in_enqueue_order(journal: JournalStore) -> None:
    order = ["m-7", "m-1", "z", "a", "m-3", "b/2", "0", "m-10"]

    async def main() -> None:
        for mid in order:
            assert await journal.enqueue(env("order/1", mid))
        await journal.enqueue(env("order/2", "m-0"))
        assert ids(await journal.inbox("order/1", now=1.0)) == order
        assert ids(await journal.inbox("order/2", now=1.0)) == ["m-0"]
        assert await journal.inbox("order/nobody", now=1.0) == []

    run(main())


def test_inbox_calls_limit(journal: JournalStore) -> None:
    async def main() -> None:
        for mid, kind in [("c1", "call"), ("e1", "event"), ("c2", "call"), ("t1", "timer"),
                          ("c3", "call"), ("e2", "event")]:
            await journal.enqueue(env("calls/1", mid, kind))
        await journal.enqueue({"id": "c0", "target": "calls/1"})  # no kind: a call
        assert ids(await journal.inbox("calls/1", 1.0)) == ["c1", "e1", "c2", "t1", "c3", "e2",
                                                            "c0"]
        assert ids(await journal.inbox("calls/1", 1.0, calls=2)) == ["e1", "t1", "e2", "c1",
                                                                     "c2"]
        assert ids(await journal.inbox("calls/1", 1.0, calls=1)) == ["e1", "t1", "e2", "c1"]
        assert ids(await journal.inbox("calls/1", 1.0, calls=0)) == ["e1", "t1", "e2"]
        assert ids(await journal.inbox("calls/1", 1.0, calls=10)) == ["e1", "t1", "e2", "c1",
                                                                      "c2", "c3", "c0"]
        await journal.consume("calls/1", ["c1", "e1"], 2.0)
        assert ids(await journal.inbox("calls/1", 3.0, calls=1)) == ["t1", "e2", "c2"]

    run(main())


def test_future_entries_wait_until_due(journal: JournalStore) -> None:
    async def main() -> None:
        await journal.enqueue(env("later/1", "timer", "timer", deliver_at=1000.0))
        await journal.enqueue(env("later/1", "now", deliver_at=0.0))
        await journal.enqueue(env("later/1", "soon", deliver_at=500.5))
        assert ids(await journal.inbox("later/1", now=100.0)) == ["now"]
        assert ids(await journal.inbox("later/1", now=500.5)) == ["now", "soon"]  # inclusive
        assert ids(await journal.inbox("later/1", now=999.0, calls=0)) == []
        assert ids(await journal.inbox("later/1", now=1000.0, calls=0)) == ["timer"]
        assert ids(await journal.inbox("later/1", now=2000.0)) == ["timer", "now", "soon"]

    run(main())


def test_consume_leaves_a_tombstone(journal: JournalStore) -> None:
    async def main() -> None:
        for mid in ("m1", "m2", "m3"):
            await journal.enqueue(env("tomb/1", mid))
        await journal.consume("tomb/1", ["m1", "m3", "never-enqueued"], 100.0)
        await journal.consume("tomb/1", [], 100.0)
        assert ids(await journal.inbox("tomb/1", now=200.0)) == ["m2"]
        # dedup survives consumption: a late duplicate is refused
        assert await journal.enqueue(env("tomb/1", "m1", payload="late duplicate")) is False
        assert ids(await journal.inbox("tomb/1", now=200.0)) == ["m2"]
        await journal.consume("tomb/1", ["m1"], 900.0)  # already consumed: keeps 100.0
        await journal.consume("tomb/2", ["m2"], 100.0)  # another actor's inbox: no effect
        assert ids(await journal.inbox("tomb/1", now=200.0)) == ["m2"]
        assert await journal.purge_tombstones(older_than=150.0) == 2  # m1 (100.0) and m3

    run(main())


def test_purge_tombstones(journal: JournalStore) -> None:
    async def main() -> None:
        for mid in ("old", "young", "pending"):
            await journal.enqueue(env("purge/1", mid))
        await journal.enqueue(env("purge/2", "old"))
        await journal.consume("purge/1", ["old"], 100.0)
        await journal.consume("purge/2", ["old"], 100.0)
        await journal.consume("purge/1", ["young"], 300.0)
        assert await journal.purge_tombstones(older_than=100.0) == 0  # strictly older only
        assert await journal.purge_tombstones(older_than=200.0) == 2
        assert await journal.purge_tombstones(older_than=200.0) == 0
        # a purged id is free again; a younger tombstone still refuses its id
        assert await journal.enqueue(env("purge/1", "old", payload="again")) is True
        assert await journal.enqueue(env("purge/1", "young")) is False
        got = await journal.inbox("purge/1", now=1.0)
        assert ids(got) == ["pending", "old"]
        assert got[1]["payload"] == "again"

    run(main())


def test_actors_by_prefix(journal: JournalStore) -> None:
    async def main() -> None:
        assert await journal.actors() == []
        for actor, seq in [("counter/2", 1), ("counter/1", 1), ("counter/1", 2), ("cart/x", 1),
                           ("counterfeit/1", 1)]:
            await journal.append(commit(actor, seq))
        await journal.enqueue(env("ghost/1", "m1"))  # an inbox alone is not an actor
        assert await journal.actors() == ["cart/x", "counter/1", "counter/2", "counterfeit/1"]
        assert await journal.actors("counter/") == ["counter/1", "counter/2"]
        assert await journal.actors("counter") == ["counter/1", "counter/2", "counterfeit/1"]
        assert await journal.actors("cart/x") == ["cart/x"]
        assert await journal.actors("ghost/") == []
        assert await journal.actors("zzz") == []

    run(main())


def test_awkward_ids_and_actor_names(journal: JournalStore) -> None:
    """Cosmos ids may not contain / \\ ? # (the journal escapes them, and '%' too)."""
    actor = "room/a#b?c\\d %2F é"
    mids = ["reply:a/b", "x#y", "q?x=1", "back\\slash", "a%2Fb", "a/b", "100%", "sp ace",
            "ünï 😀", "ctl\x01", "x" * 1500]

    async def main() -> None:
        await journal.append(commit(actor, 1, state={"ok": True}))
        assert await journal.read_tail(actor) == [commit(actor, 1, state={"ok": True})]
        assert await journal.actors("room/a#") == [actor]
        for mid in mids:
            assert await journal.enqueue(env(actor, mid)) is True, mid
        for mid in mids:
            assert await journal.enqueue(env(actor, mid)) is False, mid
        assert ids(await journal.inbox(actor, now=1.0)) == mids
        assert await journal.due_actors(1.0) == [actor]
        await journal.consume(actor, mids[:6], 10.0)
        assert ids(await journal.inbox(actor, now=1.0)) == mids[6:]
        assert await journal.enqueue(env(actor, "a/b")) is False
        assert await journal.purge_tombstones(older_than=20.0) == 6
        assert await journal.enqueue(env(actor, "a/b")) is True
        assert await journal.enqueue(env(actor, "a%2Fb")) is True  # not mistaken for "a/b"

    run(main())


@pytest.mark.parametrize("journal", [p for p in stores() if p.id != "memory"], indirect=True)
def test_a_second_instance_sees_the_same_journal(journal: JournalStore, tmp_path: Path,
                                                request: pytest.FixtureRequest) -> None:
    async def write() -> None:
        await journal.append(commit("shared/1", 1, state={"n": 1}))
        await journal.enqueue(env("shared/1", "m1"))
        await journal.consume("shared/1", ["m1"], 5.0)
        await journal.enqueue(env("shared/1", "m2"))

    run(write())
    if journal.url.startswith("sqlite"):
        from runtime.journal.sqlite import SqliteJournal
        other: JournalStore = SqliteJournal(tmp_path / "journal.db")
    else:
        other = request.getfixturevalue("make_cosmos")(container=journal.container)  # type: ignore[attr-defined]

    async def read() -> None:
        try:
            assert await other.read("shared/1") == [commit("shared/1", 1, state={"n": 1})]
            with pytest.raises(JournalConflict):
                await other.append(commit("shared/1", 1))
            assert await other.enqueue(env("shared/1", "m1")) is False
            assert await other.enqueue(env("shared/1", "m3")) is True
            assert ids(await other.inbox("shared/1", 10.0)) == ["m2", "m3"]
        finally:
            await other.close()

    run(read())


# -- inbox numbers and outcomes -----------------------------------------------------------------

def numbers(envelopes: list[dict[str, Any]]) -> list[int]:
    return [e["n"] for e in envelopes]


def test_inbox_numbers_are_per_actor_and_increasing(journal: JournalStore) -> None:
    async def main() -> None:
        for mid in ("z", "a", "m"):
            assert await journal.enqueue(env("num/a", mid))
        await journal.enqueue(env("num/b", "b1"))
        await journal.enqueue(env("num/a", "later", deliver_at=50.0))
        got = await journal.inbox("num/a", now=1.0)
        assert ids(got) == ["z", "a", "m"] and numbers(got) == [1, 2, 3]
        assert numbers(await journal.inbox("num/b", now=1.0)) == [1]  # numbered per actor
        assert numbers(await journal.inbox("num/a", now=60.0)) == [1, 2, 3, 4]
        # the number, not the clock or the id, orders the inbox
        await journal.enqueue(env("num/a", "0-early", deliver_at=0.0))
        assert ids(await journal.inbox("num/a", now=60.0))[-1] == "0-early"

    run(main())


def test_a_duplicate_enqueue_changes_nothing(journal: JournalStore) -> None:
    async def main() -> None:
        for mid in ("m1", "m2"):
            await journal.enqueue(env("dup/1", mid))
        assert await journal.acquire("dup/1", "w", 1.0, 10.0) is not None
        seen = await journal.inbox("dup/1", 1.0)
        await journal.consume("dup/1", ["m1", "m2"], 1.0)
        await journal.settle("dup/1", "w", now=1.0, seen_n=max(numbers(seen)), busy=False)
        assert await journal.due_actors(2.0) == []
        assert await journal.enqueue(env("dup/1", "m1", deliver_at=0.0)) is False  # consumed
        await journal.enqueue(env("dup/1", "t1", "timer", deliver_at=500.0))
        await journal.acquire("dup/1", "w", 2.0, 10.0)
        await journal.settle("dup/1", "w", now=2.0, seen_n=2, busy=False)
        assert await journal.due_actors(3.0) == []
        # pending, and raced by many senders: one wins, no number or due time moves
        assert await journal.enqueue(env("dup/1", "t1", "timer", deliver_at=0.0)) is False
        results = await asyncio.gather(*(journal.enqueue(env("dup/1", "m3")) for _ in range(6)))
        assert sorted(results) == [False] * 5 + [True]
        assert await journal.enqueue(env("dup/1", "m3")) is False
        got = await journal.inbox("dup/1", 600.0)
        # (on Cosmos a duplicate that races the first enqueue may number the entry first:
        # the number it reserved stands and the first's is a gap; see docs/journal.md)
        assert ids(got) == ["t1", "m3"] and numbers(got)[0] == 3 and numbers(got)[1] >= 4
        assert await journal.due_actors(3.0) == ["dup/1"]  # m3 (new) is due, not t1
        await journal.settle("dup/1", "w", now=3.0, seen_n=numbers(got)[1], busy=True)
        assert await journal.due_actors(11.0) == []  # busy: the call waits; lease ends at 12
        assert await journal.due_actors(12.0) == ["dup/1"]

    run(main())


def test_outcome_finds_the_completing_commit(journal: JournalStore) -> None:
    async def main() -> None:
        run_of = {"msg": "m1", "ts": 1.0, "start": 1}
        await journal.append(commit("out/1", 0, state={}))
        await journal.append(commit("out/1", 1, run=run_of, events=[{"op": "x"}]))
        assert await journal.outcome("out/1", "m1") is None  # started, not completed
        await journal.append(commit("out/1", 2, run=run_of, kind="completed", result=7,
                                    state={"n": 1}))
        await journal.append(commit("out/1", 3, run={"msg": "m2", "ts": 2.0, "start": 3},
                                    kind="failed", error={"type": "X"}, state={"n": 1}))
        assert (await journal.outcome("out/1", "m1") or {}).get("result") == 7
        found = await journal.outcome("out/1", "m2")
        assert found is not None and found["seq"] == 3 and found["kind"] == "failed"
        assert await journal.outcome("out/1", "m3") is None
        assert await journal.outcome("out/2", "m1") is None  # another actor

    run(main())


# -- the schedule ----------------------------------------------------------------------------

def test_due_actors_and_next_due(journal: JournalStore) -> None:
    async def main() -> None:
        assert await journal.due_actors(1.0) == []
        assert await journal.next_due(1.0) is None
        await journal.enqueue(env("due/a", "a1", deliver_at=0.0))
        await journal.enqueue(env("due/a", "a2", deliver_at=50.0))
        await journal.enqueue(env("due/b", "b1", "timer", deliver_at=500.0))
        await journal.enqueue(env("due/c", "c1", deliver_at=10.0))
        await journal.enqueue(env("due/d", "d1", deliver_at=300.0))
        assert await journal.due_actors(5.0) == ["due/a"]
        assert await journal.next_due(5.0) == 10.0
        assert await journal.due_actors(100.0) == ["due/a", "due/c"]
        assert await journal.next_due(100.0) == 300.0
        assert len(await journal.due_actors(500.0, limit=1)) <= 2  # one of each kind at most
        assert sorted(await journal.due_actors(500.0)) == ["due/a", "due/b", "due/c", "due/d"]
        assert await journal.next_due(500.0) is None  # strictly after `now`
        # consuming does not move the schedule; the owner's settle does
        for actor, mid in (("due/c", "c1"), ("due/d", "d1")):
            assert await journal.acquire(actor, "w", 20.0, 10.0) is not None
            await journal.consume(actor, [mid], 20.0)
            await journal.settle(actor, "w", now=20.0, seen_n=1, busy=False, release=True)
        assert await journal.due_actors(100.0) == ["due/a"]
        assert await journal.next_due(100.0) == 500.0
        await journal.acquire("due/a", "w", 30.0, 10.0)
        await journal.consume("due/a", ["a1"], 30.0)
        await journal.settle("due/a", "w", now=30.0, seen_n=2, busy=False)
        assert await journal.due_actors(40.0) == []
        assert await journal.next_due(40.0) == 50.0  # a2, not yet due when it was settled
        assert await journal.due_actors(50.0) == ["due/a"]

    run(main())


def test_ready_actors_oldest_first_and_timers_earliest_first(journal: JournalStore) -> None:
    async def main() -> None:
        for actor in ("r/3", "r/1", "r/2"):
            await journal.enqueue(env(actor, "m"))
        await journal.enqueue(env("r/3", "again"))  # already ready: keeps its place
        for actor, at in (("t/b", 20.0), ("t/a", 30.0), ("t/c", 10.0)):
            await journal.enqueue(env(actor, "t", "timer", deliver_at=at))
        got = await journal.due_actors(100.0)
        assert [a for a in got if a.startswith("r/")] == ["r/3", "r/1", "r/2"]
        assert [a for a in got if a.startswith("t/")] == ["t/c", "t/b", "t/a"]
        assert await journal.due_actors(15.0) == ["r/3", "r/1", "r/2", "t/c"]
        assert (await journal.due_actors(100.0, limit=2))[:2] == ["r/3", "r/1"]

    run(main())


def test_ready_actors_do_not_starve_a_due_timer(journal: JournalStore) -> None:
    async def main() -> None:
        # the emulator takes ~100 ms an enqueue (a TLS handshake a request): fewer there
        ready, limit = (40, 32) if journal.url.startswith("cosmos") else (300, 256)
        await journal.enqueue(env("late/timer", "t", "timer", deliver_at=5.0))
        await asyncio.gather(*(journal.enqueue(env(f"ready/{i:03d}", "m"))
                               for i in range(ready)))
        got = await journal.due_actors(10.0, limit=limit)
        assert "late/timer" in got
        assert len([a for a in got if a.startswith("ready/")]) == limit

    run(main())


def test_due_actors_skips_actors_leased_to_another_live_owner(journal: JournalStore) -> None:
    async def main() -> None:
        assert await journal.acquire("own/x", "a", 0.0, 10.0) is not None
        await journal.enqueue(env("own/x", "m1"))
        await journal.enqueue(env("own/y", "m1"))
        assert await journal.due_actors(1.0, owner="b") == ["own/y"]
        assert await journal.due_actors(1.0, owner="a") == ["own/x", "own/y"]
        assert await journal.due_actors(1.0) == ["own/x", "own/y"]  # no owner: everything
        assert await journal.due_actors(10.0, owner="b") == ["own/y"]  # until the lease end
        assert await journal.due_actors(10.5, owner="b") == ["own/x", "own/y"]

    run(main())


def _keys_in(partition: int, prefix: str, n: int) -> list[str]:
    """`n` actor keys of `partition`, of 4."""
    from runtime.cluster.partitions import partition_of
    return [k for k in (f"{prefix}/{i}" for i in range(10_000))
            if partition_of(k, 4) == partition][:n]


def test_a_scoped_due_poll_finds_its_partitions_behind_a_backlog_elsewhere(
        journal: JournalStore) -> None:
    """A worker holding partition 0 of 4 polls with `limit` 4 while 6 ready actors and 6
    due timers of partitions held elsewhere arrived first: unscoped, the page is theirs;
    scoped, it holds this worker's own ready actor and due timer (what a missed stream
    wake-up leaves to the poll)."""
    from runtime.journal.keyhash import Scope

    async def main() -> None:
        others = [k for p in (1, 2, 3) for k in _keys_in(p, "far", 4)]
        for key in others[:6]:
            await journal.enqueue(env(key, "m"))
        for i, key in enumerate(others[6:12]):
            await journal.enqueue(env(key, "t", "timer", deliver_at=1.0 + i))
        mine_ready, mine_timer = _keys_in(0, "near", 2)
        await journal.enqueue(env(mine_ready, "m"))
        await journal.enqueue(env(mine_timer, "t", "timer", deliver_at=9.0))
        unscoped = await journal.due_actors(10.0, limit=4)
        assert mine_ready not in unscoped and mine_timer not in unscoped  # the old blind spot
        got = await journal.due_actors(10.0, limit=4, scope=Scope(4, frozenset({0})))
        assert got == [mine_ready, mine_timer]
        got = await journal.due_actors(10.0, limit=4, owner="w", scope=Scope(4, {0}))
        assert got == [mine_ready, mine_timer]
        assert await journal.due_actors(10.0, limit=4, scope=Scope(4, frozenset())) == []
        both = await journal.due_actors(10.0, limit=50, scope=Scope(4, frozenset({0, 2})))
        assert set(both) == {mine_ready, mine_timer, *_keys_in(2, "far", 4)}

    run(main())


@pytest.mark.integration
def test_cosmos_polls_again_when_the_partitions_held_change(make_cosmos: Any) -> None:
    """Cosmos answers a due poll within `poll_interval_s` of the last one from what that
    query found; that holds for the same partitions only."""
    from runtime.journal.keyhash import Scope

    journal = make_cosmos(poll_interval_s=60.0)

    async def main() -> None:
        mine, = _keys_in(0, "near", 1)
        theirs, = _keys_in(1, "far", 1)
        await journal.enqueue(env(theirs, "m"))
        assert await journal.due_actors(10.0, scope=Scope(4, {1})) == [theirs]
        assert await journal.due_actors(10.0, scope=Scope(4, {0})) == []
        other = make_cosmos(container=journal.container)  # another process's message
        await other.enqueue(env(mine, "m"))
        assert await journal.due_actors(10.0, scope=Scope(4, {0})) == []  # rate-limited
        assert await journal.due_actors(10.0, scope=Scope(4, {0, 1})) == [theirs, mine]
        # the next due time (its own query when scoped) is of these partitions only
        later_mine, = _keys_in(0, "timer", 1)
        later_theirs, = _keys_in(1, "timer", 1)
        await other.enqueue(env(later_theirs, "t", "timer", deliver_at=20.0))
        await other.enqueue(env(later_mine, "t", "timer", deliver_at=30.0))
        assert await journal.due_actors(11.0, scope=Scope(4, {0}), owner="w") == [mine]
        assert await journal.next_due(11.0) == 30.0
        assert await journal.due_actors(31.0, scope=Scope(4, {0}), owner="w") == \
            [mine, later_mine]

    run(main())


def test_acquire_renew_and_epochs(journal: JournalStore) -> None:
    async def main() -> None:
        first = await journal.acquire("l/x", "a", 0.0, 10.0)
        assert first is not None and not first.taken_over
        assert await journal.acquire("l/x", "a", 1.0, 10.0) == first  # same owner, same epoch
        assert await journal.acquire("l/x", "b", 5.0, 10.0) is None  # a holds it until 11
        assert await journal.acquire("l/y", "a", 0.0, 10.0) is not None
        assert await journal.renew("a", 2.0, 10.0) == {"l/x", "l/y"}  # now until 12
        assert await journal.acquire("l/x", "b", 11.5, 10.0) is None
        second = await journal.acquire("l/x", "b", 12.5, 10.0)  # expired: b takes over
        assert second is not None and second.epoch > first.epoch and second.taken_over
        assert await journal.renew("a", 13.0, 10.0) == {"l/y"}  # l/x was lost
        assert await journal.renew("b", 13.0, 10.0) == {"l/x"}
        assert await journal.acquire("l/x", "a", 20.0, 10.0) is None  # b renewed until 23
        assert await journal.acquire("l/x", "b", 21.0, 10.0) == (second.epoch, False)
        assert await journal.owners() == {"a": 1, "b": 1}
        await journal.settle("l/y", "a", now=22.0, seen_n=0, busy=False, release=True)
        clean = await journal.acquire("l/y", "b", 22.5, 10.0)  # released: nothing cut off
        assert clean is not None and not clean.taken_over
        assert await journal.renew("nobody", 13.0, 10.0) == set()

    run(main())


def test_renew_moves_a_busy_actor_due_at_the_lease_end(journal: JournalStore) -> None:
    async def main() -> None:
        await journal.acquire("busy/x", "a", 0.0, 10.0)
        await journal.enqueue(env("busy/x", "c1"))
        await journal.enqueue(env("busy/x", "c2"))
        got = await journal.inbox("busy/x", 1.0, calls=1)
        await journal.consume("busy/x", ["c1"], 1.0)
        await journal.settle("busy/x", "a", now=1.0, seen_n=max(numbers(got)), busy=True)
        assert await journal.due_actors(9.0) == []  # c2 waits for the run to end
        assert await journal.due_actors(10.0) == ["busy/x"]  # ... or for a crash
        assert await journal.renew("a", 5.0, 10.0) == {"busy/x"}
        assert await journal.due_actors(10.0) == []
        assert await journal.due_actors(15.0) == ["busy/x"]

    run(main())


def test_settle(journal: JournalStore) -> None:
    async def main() -> None:
        x = "set/x"
        await journal.acquire(x, "a", 0.0, 100.0)
        await journal.enqueue(env(x, "e1", "event", name="stray"))
        got = await journal.inbox(x, 1.0)
        await journal.settle(x, "a", now=1.0, seen_n=max(numbers(got)), busy=False)
        assert await journal.due_actors(2.0) == []  # an event it saw and left: not due
        await journal.enqueue(env(x, "e2", "event", name="new"))
        assert await journal.due_actors(2.0) == [x]
        got = await journal.inbox(x, 2.0)
        await journal.settle(x, "a", now=2.0, seen_n=1, busy=False)  # e2 (2) not seen yet
        assert await journal.due_actors(3.0) == [x]
        await journal.settle(x, "a", now=2.0, seen_n=2, busy=True)
        assert await journal.due_actors(3.0) == []
        # busy: an unseen call waits (no later than the lease end); an unseen event does not
        await journal.enqueue(env(x, "c1"))
        got = await journal.inbox(x, 3.0, calls=0)
        await journal.settle(x, "a", now=3.0, seen_n=2, busy=True)
        assert await journal.due_actors(99.0) == []
        assert await journal.due_actors(100.0) == [x]
        await journal.settle(x, "a", now=3.0, seen_n=2, busy=False)
        assert await journal.due_actors(4.0) == [x]
        # a future timer always counts, seen or not
        await journal.enqueue(env(x, "t1", "timer", deliver_at=50.0))
        got = await journal.inbox(x, 4.0)
        await journal.consume(x, ["c1"], 4.0)
        await journal.settle(x, "a", now=4.0, seen_n=4, busy=False)
        assert await journal.due_actors(49.0) == []
        assert await journal.next_due(49.0) == 50.0
        assert await journal.due_actors(50.0) == [x]
        # the cap is the lease end only when that comes first
        await journal.settle(x, "a", now=4.0, seen_n=4, busy=True)
        assert await journal.due_actors(50.0) == [x]
        # a non-owner's settle is a no-op
        await journal.settle(x, "b", now=4.0, seen_n=99, busy=False, release=True)
        assert await journal.due_actors(50.0) == [x]
        assert await journal.acquire(x, "b", 5.0, 10.0) is None
        # release frees the lease at once and keeps the due time
        await journal.settle(x, "a", now=5.0, seen_n=4, busy=False, release=True)
        assert await journal.acquire(x, "b", 6.0, 10.0) is not None
        assert await journal.due_actors(50.0, owner="b") == [x]
        assert await journal.renew("a", 7.0, 10.0) == set()
        assert x not in await journal.owners() or (await journal.owners())[x] == 0

    run(main())


def test_expire_owner(journal: JournalStore) -> None:
    async def main() -> None:
        await journal.acquire("exp/x", "dead", 0.0, 100.0)
        await journal.acquire("exp/y", "dead", 0.0, 100.0)
        await journal.acquire("exp/z", "alive", 0.0, 100.0)
        await journal.enqueue(env("exp/x", "t1", "timer", deliver_at=1000.0))
        await journal.settle("exp/x", "dead", now=1.0, seen_n=1, busy=True)  # due at 100
        assert await journal.owners() == {"dead": 2, "alive": 1}
        assert await journal.due_actors(2.0, owner="b") == []
        assert await journal.expire_owner("dead") == 2
        assert await journal.owners() == {"alive": 1}
        assert await journal.due_actors(2.0, owner="b") == ["exp/x"]  # due now, for anyone
        taken = await journal.acquire("exp/y", "b", 2.0, 10.0)
        assert taken is not None and taken.taken_over  # its holder was cut off
        assert await journal.renew("dead", 3.0, 10.0) == set()
        assert await journal.expire_owner("dead") == 0
        assert await journal.acquire("exp/z", "b", 2.0, 10.0) is None

    run(main())


@pytest.mark.parametrize("journal", [p for p in stores() if p.id != "memory"], indirect=True)
def test_two_instances_contend_for_one_lease(journal: JournalStore, tmp_path: Path,
                                            request: pytest.FixtureRequest) -> None:
    if journal.url.startswith("sqlite"):
        from runtime.journal.sqlite import SqliteJournal
        other: JournalStore = SqliteJournal(tmp_path / "journal.db")
    else:
        other = request.getfixturevalue("make_cosmos")(container=journal.container)  # type: ignore[attr-defined]

    async def main() -> None:
        try:
            for i in range(4):
                actor = f"two/{i}"
                await journal.enqueue(env(actor, "m"))
                won = await asyncio.gather(journal.acquire(actor, "a", 1.0, 10.0),
                                           other.acquire(actor, "b", 1.0, 10.0))
                assert sum(e is not None for e in won) == 1, won
                winner, loser = (journal, other) if won[0] is not None else (other, journal)
                mine, theirs = ("a", "b") if won[0] is not None else ("b", "a")
                assert actor in await winner.renew(mine, 2.0, 10.0)
                assert actor not in await loser.renew(theirs, 2.0, 10.0)
                assert actor not in await loser.due_actors(3.0, owner=theirs)
                epoch = won[0] if won[0] is not None else won[1]
                assert epoch is not None
                taken = await loser.acquire(actor, theirs, 13.0, 10.0)  # after the lease
                assert taken is not None and taken > epoch
                assert actor not in await winner.renew(mine, 14.0, 10.0)
        finally:
            await other.close()

    run(main())


# -- Cosmos only -----------------------------------------------------------------------------

BIG = 1_000_000  # characters; two such values make an item far over the 1.5 MB limit


def _big_commit(actor: str, seq: int, tag: str) -> dict[str, Any]:
    return commit(actor, seq, kind="completed", writer=tag,
                  state={"blob": tag * BIG, "small": 1.0},
                  result={"r": "é" * (BIG // 2)},
                  events=[{"op": "activity", "result": "r" * BIG}, {"op": "tiny", "result": 1}],
                  outbox=[{"id": "o1", "target": "x/1", "payload": "p" * BIG}],
                  message={"id": "m", "payload": "small"})


def test_cosmos_oversized_commit_moves_values_to_blobs(make_cosmos: Callable[..., Any],
                                                      cosmos_admin: Any, tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path / "blobs")
    journal = make_cosmos(blob=blobs)
    big = _big_commit("big/1", 2, "s")

    async def main() -> None:
        await journal.append(commit("big/1", 1))
        await journal.append(big)
        assert await journal.read("big/1") == [commit("big/1", 1), big]
        assert await journal.read_tail("big/1") == [big]
        with pytest.raises(JournalConflict):
            await journal.append(_big_commit("big/1", 2, "t"))
        assert await journal.read_tail("big/1") == [big]

    run(main())
    keys = blobs.list("journal/")
    assert keys and all(k.startswith("journal/big@2f1/2/") for k in keys), keys
    raw = cosmos_admin.get_container_client(journal.container).read_item(
        "c:000000000002", partition_key="big/1")
    assert raw["has_state"] is True and raw["type"] == "commit" and raw["blobs"]
    assert len(json.dumps(raw)) < 1_500_000
    body = json.loads(raw["body"])
    assert ["state"] in [ref["path"] for ref in raw["blobs"]]
    for ref in raw["blobs"]:
        value = body
        for part in ref["path"]:
            value = value[part]
        assert value == {"$blob": ref["key"]} and ref["key"] in keys


def test_cosmos_racing_oversized_appends_never_mix_blobs(make_cosmos: Callable[..., Any],
                                                        tmp_path: Path) -> None:
    journal = make_cosmos(blob=FileBlobStore(tmp_path / "blobs"))

    async def main() -> None:
        tags = "abcd"
        results = await asyncio.gather(*(journal.append(_big_commit("race/1", 1, t))
                                         for t in tags), return_exceptions=True)
        won = [t for t, r in zip(tags, results, strict=True) if r is None]
        assert len(won) == 1, results
        [doc] = await journal.read("race/1")
        assert doc == _big_commit("race/1", 1, won[0])

    run(main())


def test_cosmos_oversized_without_blob_store_writes_nothing(
        make_cosmos: Callable[..., Any]) -> None:
    journal = make_cosmos()

    async def main() -> None:
        with pytest.raises(errors.StorageError) as info:
            await journal.append(_big_commit("big/9", 7, "s"))
        assert "big/9" in str(info.value) and "#7" in str(info.value)
        assert await journal.read("big/9") == []
        assert await journal.actors() == []
        with pytest.raises(errors.StorageError):
            await journal.enqueue(env("big/9", "m1", payload="p" * 2_000_000))
        assert await journal.enqueue(env("big/9", "m1")) is True  # the id was not taken
        await journal.append(commit("big/9", 7))  # nor the seq

    run(main())


def test_cosmos_oversized_envelope_with_blob_store(make_cosmos: Callable[..., Any],
                                                  tmp_path: Path) -> None:
    journal = make_cosmos(blob=FileBlobStore(tmp_path / "blobs"))
    big = env("big/2", "m/1", payload={"data": "d" * 2_000_000})

    async def main() -> None:
        assert await journal.enqueue(big) is True
        assert await journal.enqueue(big) is False
        assert await journal.inbox("big/2", 1.0) == [{**big, "n": 1}]

    run(main())


def test_cosmos_unreachable_endpoint_is_a_storage_error() -> None:
    from runtime.journal.cosmos import CosmosJournal

    key = "c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC1rZXk="
    journal = CosmosJournal(f"https://127.0.0.1:{closed_port()}", key, verify_tls=False)
    assert journal.url.startswith("cosmos://127.0.0.1:") and journal.url.endswith("/loom/journal")
    t0 = time.monotonic()
    with pytest.raises(errors.StorageError) as info:
        run(journal.read("a/1"))
    assert time.monotonic() - t0 < 10
    assert key not in str(info.value) and "127.0.0.1" in str(info.value)
    assert info.value.retryable


def test_cosmos_refuses_a_container_with_another_partition_key(
        make_cosmos: Callable[..., Any], cosmos_admin: Any) -> None:
    from azure.cosmos import PartitionKey

    name = f"t-{uuid.uuid4().hex[:16]}"
    cosmos_admin.create_container(name, partition_key=PartitionKey(path="/id"))
    journal = make_cosmos(container=name)
    with pytest.raises(errors.SettingsInvalid, match="not a Loom journal"):
        run(journal.read("a/1"))


def test_cosmos_from_settings(cosmos_server: CosmosServer, cosmos_admin: Any) -> None:
    from runtime.journal.cosmos import CosmosJournal
    from runtime.journal.factory import open_journal
    from runtime.settings import LoomSettings

    name = f"t-{uuid.uuid4().hex[:16]}"
    settings = LoomSettings(journal_url=cosmos_server.endpoint.replace("https://", "cosmos://"),
                            cosmos_key=cosmos_server.key, cosmos_database=COSMOS_DB,
                            cosmos_container=name, cosmos_verify_tls=False)
    journal = open_journal(settings)
    assert isinstance(journal, CosmosJournal)
    assert journal.url == f"cosmos://127.0.0.1:{cosmos_server.port}/{COSMOS_DB}/{name}"

    async def main() -> None:
        try:
            await journal.append(commit("cfg/1", 1, state=None))
            assert await journal.read_tail("cfg/1") == [commit("cfg/1", 1, state=None)]
        finally:
            await journal.close()

    try:
        run(main())
    finally:
        cosmos_admin.delete_container(name)


def test_delivery_counts_and_dead_letters(journal: JournalStore) -> None:
    async def main() -> None:
        await journal.enqueue(env("dl/a", "m1"))
        assert await journal.bump_delivery("dl/a", "m1", 3) == 1
        assert await journal.bump_delivery("dl/a", "m1", 3) == 2
        assert await journal.bump_delivery("dl/a", "m1", 4) == 1  # progress: counted anew
        assert await journal.bump_delivery("dl/a", "nope", 0) == 0
        await journal.consume("dl/a", ["m1"], 1.0)
        assert await journal.bump_delivery("dl/a", "m1", 4) == 0  # consumed
        assert await journal.dead_letters() == []
        entry = {"actor": "dl/a", "msg": "m1", "envelope": env("dl/a", "m1"),
                 "deliveries": 6, "error": {"message": "x"}, "at": 5.0}
        await journal.put_dead_letter(entry)
        await journal.put_dead_letter({**entry, "deliveries": 7})  # replaces
        await journal.put_dead_letter({**entry, "actor": "dl/b", "at": 6.0})
        got = await journal.dead_letters()
        assert [(d["actor"], d["deliveries"]) for d in got] == [("dl/a", 7), ("dl/b", 6)]
        assert await journal.drop_dead_letter("dl/a", "m1") is True
        assert await journal.drop_dead_letter("dl/a", "m1") is False
        assert [d["actor"] for d in await journal.dead_letters()] == ["dl/b"]

    run(main())


def test_a_run_pinned_to_a_code_version_is_due_only_where_it_can_resume(
        journal: JournalStore) -> None:
    async def main() -> None:
        old, new = "v/old", "v/new"
        for actor in (old, new):
            await journal.acquire(actor, "a", 0.0, 100.0)
            await journal.enqueue(env(actor, "m"))
            await journal.enqueue(env(actor, "t", "timer", deliver_at=50.0, name="t"))
        # `old` parks a run started under v1 (its message seen, a timer at 50): pinned
        got = await journal.inbox(old, 1.0, calls=1)
        await journal.settle(old, "a", now=1.0, seen_n=max(numbers(got)), busy=True,
                             release=True, version="v1")
        await journal.settle(new, "a", now=1.0, seen_n=-1, busy=False, release=True,
                             version=None)
        assert await journal.run_versions() == {"v1": 1}
        if not journal.url.startswith("cosmos"):  # Cosmos answers from its last query
            assert await journal.next_due(2.0, versions={"v2"}) is None  # old's timer: v1's
            assert await journal.next_due(2.0, versions={"v1"}) == 50.0
            assert await journal.next_due(2.0) == 50.0
        assert await journal.due_actors(2.0, owner="b", versions={"v2"}) == [new]
        assert await journal.due_actors(60.0, owner="b", versions={"v2"}) == [new]
        assert set(await journal.due_actors(60.0, owner="b", versions={"v1", "v2"})) == \
            {old, new}
        assert set(await journal.due_actors(60.0)) == {old, new}  # unversioned: sees all
        assert await journal.due_pinned(60.0, owner="b", versions={"v1"}) == [(old, "v1")]
        assert await journal.due_pinned(60.0, owner="b", versions={"v2"}) == []
        assert await journal.due_pinned(2.0, owner="b", versions={"v1"}) == []  # not yet due
        # a settle that does not name a version keeps the pin; one that names None clears it
        await journal.acquire(old, "b", 60.0, 100.0)
        await journal.settle(old, "b", now=60.0, seen_n=-1, busy=True)
        assert await journal.run_versions() == {"v1": 1}
        assert await journal.due_actors(61.0, owner="c", versions={"v2"}) == [new]
        await journal.settle(old, "b", now=60.0, seen_n=-1, busy=False, release=True,
                             version=None)
        assert await journal.run_versions() == {}
        assert set(await journal.due_actors(61.0, owner="c", versions={"v2"})) == {old, new}

    run(main())


# -- the run index -------------------------------------------------------------------------------

def step(actor: str, seq: int, msg: str, *events: dict[str, Any], start: int, ts: float,
         first: str | None = None, **body: Any) -> dict[str, Any]:
    """A commit of run `msg` as the runtime writes one (`first`: the handler, on the run's
    first commit, which carries the message)."""
    doc: dict[str, Any] = {"actor": actor, "seq": seq, "ts": ts + seq / 10,
                           "run": {"msg": msg, "ts": ts, "start": start},
                           "events": list(events), "outbox": [], "consumed": [], **body}
    if first is not None:
        doc["message"] = {"id": msg, "target": actor, "kind": "call", "handler": first}
    return doc


def ev(step_: Any, op: str, name: str = "x", **fields: Any) -> dict[str, Any]:
    return {"step": step_, "op": op, "name": name, "digest": "", **fields}


def one(rows: list[dict[str, Any]], msg: str) -> dict[str, Any]:
    found = [r for r in rows if r["msg"] == msg]
    assert len(found) == 1, rows
    return found[0]


def test_run_index_follows_a_run_through_its_life(journal: JournalStore) -> None:
    a = "order/a1"

    async def status() -> tuple[str, str | None, int]:
        row = one(await journal.runs(), "m1")
        return row["status"], row["waiting"], row["last_seq"]

    async def main() -> None:
        assert await journal.runs() == []
        await journal.append(step(a, 0, "m1", ev(0, "activity.done", "charge"), start=0,
                                  ts=100.0, first="place"))
        row = one(await journal.runs(), "m1")
        assert {k: row[k] for k in ("actor", "type", "msg", "handler", "status", "started",
                                    "ended", "first_seq", "last_seq", "activities", "error")
                } == {"actor": a, "type": "order", "msg": "m1", "handler": "place",
                      "status": "running", "started": 100.0, "ended": None, "first_seq": 0,
                      "last_seq": 0, "activities": ["charge"], "error": None}
        await journal.append(step(a, 1, "m1", ev(1, "timer.start", "sleep", timer="t1"),
                                  start=0, ts=100.0))
        assert await status() == ("parked", "timer", 1)
        await journal.append(step(a, 2, "m1", ev(1, "timer.fired", "timer"),
                                  ev(2, "wait.start", "approved"), start=0, ts=100.0))
        assert await status() == ("parked", "event", 2)
        await journal.append(step(a, 3, "m1", ev(2, "wait.event", "approved"),
                                  ev(3, "activity.retry", "ship", timer="t2"), start=0,
                                  ts=100.0))
        assert await status() == ("parked", "timer", 3)  # a durable back-off
        await journal.append(step(a, 4, "m1", ev(3, "timer.fired", "timer"),
                                  ev(3, "activity.done", "ship"), ev(4, "ask.sent", "b/1.go"),
                                  start=0, ts=100.0))
        assert await status() == ("parked", "event", 4)  # waiting for a reply
        await journal.append(step(a, 5, "m1", ev(4, "ask.reply", "reply:x"), start=0,
                                  ts=100.0))
        assert await status() == ("running", None, 5)
        await journal.append(step(a, 6, "m1", start=0, ts=100.0, kind="completed",
                                  state={"n": 1}, result=1))
        row = one(await journal.runs(), "m1")
        assert (row["status"], row["ended"], row["last_seq"]) == ("completed", 100.6, 6)
        assert row["activities"] == ["charge", "ship"] and row["error"] is None
        # a sweep of stray timers (no run) indexes nothing; the next run starts its own row
        await journal.append({"actor": a, "seq": 7, "ts": 200.0, "events": [], "outbox": [],
                              "consumed": ["t9"]})
        error = {"code": "handler_failed", "type": "ValueError", "message": "no stock",
                 "retryable": False}
        await journal.append(step(a, 8, "m2", start=8, ts=201.0, first="place", kind="failed",
                                  state={"n": 1}, error=error))
        rows = await journal.runs()
        assert [r["msg"] for r in rows] == ["m2", "m1"]  # newest first
        assert rows[0]["status"] == "failed" and rows[0]["first_seq"] == 8
        assert rows[0]["error"] == {"code": "handler_failed", "type": "ValueError",
                                    "message": "no stock"}

    run(main())


def test_run_index_ending_kinds_and_cancel(journal: JournalStore) -> None:
    async def main() -> None:
        for i, kind in enumerate(("rejected", "cancelled", "dead_lettered", "failed")):
            await journal.append(step(f"k/{i}", 0, f"m{i}", start=0, ts=10.0 + i, first="h",
                                      kind=kind, state={},
                                      error={"code": kind, "message": kind}))
            assert one(await journal.runs(), f"m{i}")["status"] == kind
        # a cancel fails the run's waits: it unwinds (compensates) and is running again
        await journal.append(step("k/c", 0, "mc", ev(0, "wait.start", "go"), start=0, ts=20.0,
                                  first="h"))
        assert one(await journal.runs(), "mc")["status"] == "parked"
        await journal.append(step("k/c", 1, "mc", ev("cancel", "run.cancelled", "cancel"),
                                  start=0, ts=20.0))
        assert one(await journal.runs(), "mc")["status"] == "running"
        # parallel branches: one still waits while another records a step -> still parked
        await journal.append(step("k/p", 0, "mp", ev("b0.0", "timer.start", "sleep"),
                                  start=0, ts=30.0, first="h"))
        await journal.append(step("k/p", 1, "mp", ev("b1.0", "activity.done", "echo"),
                                  start=0, ts=30.0))
        row = one(await journal.runs(), "mp")
        assert (row["status"], row["waiting"]) == ("parked", "timer")

    run(main())


async def _fill(journal: JournalStore) -> None:
    """Runs of two types: started at 10, 20, ... (two tied at 30), some ended."""
    plan = [("order/1", "a", 10.0, "completed", ["charge"]),
            ("order/2", "b", 20.0, "failed", ["charge", "ship"]),
            ("order/3", "c", 30.0, None, ["ship"]),
            ("cart/1", "d", 30.0, "completed", []),
            ("cart/acme~2", "e", 40.0, None, []),
            ("cart/acme~3", "f", 50.0, "completed", ["charge"])]
    for actor, msg, ts, kind, acts in plan:
        events = [ev(i, "activity.done", name) for i, name in enumerate(acts)]
        body: dict[str, Any] = {"kind": kind, "state": {}} if kind else {}
        await journal.append(step(actor, 0, msg, *events, start=0, ts=ts, first="go", **body))


def msgs(rows: list[dict[str, Any]]) -> list[str]:
    return [r["msg"] for r in rows]


def test_run_index_filters(journal: JournalStore) -> None:
    async def main() -> None:
        await _fill(journal)
        assert msgs(await journal.runs()) == ["f", "e", "c", "d", "b", "a"]
        assert msgs(await journal.runs(type="order")) == ["c", "b", "a"]
        assert msgs(await journal.runs(status="completed")) == ["f", "d", "a"]
        assert msgs(await journal.runs(status="running")) == ["e", "c"]
        assert msgs(await journal.runs(type="order", status="failed")) == ["b"]
        assert msgs(await journal.runs(activity="ship")) == ["c", "b"]
        assert msgs(await journal.runs(activity="charge", type="cart")) == ["f"]
        assert msgs(await journal.runs(activity="nothing")) == []
        assert msgs(await journal.runs(id_prefix="acme~")) == ["f", "e"]
        assert msgs(await journal.runs(started_after=20.0, started_before=40.0)) == \
            ["c", "d", "b"]
        assert msgs(await journal.runs(ended_after=20.0)) == ["f", "d", "b"]
        assert msgs(await journal.runs(ended_before=30.0)) == ["b", "a"]
        for bad in ({"status": "sleeping"}, {"limit": 0}, {"limit": 100_000},
                    {"after": "not a cursor"}):
            with pytest.raises(ValueError, match=next(iter(bad))):
                await journal.runs(**bad)

    run(main())


def test_run_index_pages_newest_first(journal: JournalStore) -> None:
    async def main() -> None:
        await _fill(journal)
        pages: list[list[str]] = []
        after = None
        while True:
            rows = await journal.runs(limit=2, after=after)
            if not rows:
                break
            pages.append(msgs(rows))
            after = rows[-1]["cursor"]
        assert pages == [["f", "e"], ["c", "d"], ["b", "a"]]  # the tie at 30 split exactly
        rows = await journal.runs(limit=1, type="order")
        assert msgs(await journal.runs(limit=5, type="order", after=rows[0]["cursor"])) == \
            ["b", "a"]
        # a row that changes keeps its place: the keyset is its start
        await journal.append(step("order/3", 1, "c", start=0, ts=30.0, kind="completed",
                                  state={}))
        first = await journal.runs(limit=3)
        assert msgs(first) == ["f", "e", "c"] and first[-1]["status"] == "completed"
        assert msgs(await journal.runs(limit=3, after=first[-1]["cursor"])) == ["d", "b", "a"]

    run(main())


def test_run_index_is_unchanged_by_a_failed_append(journal: JournalStore) -> None:
    async def main() -> None:
        a = "order/f"
        await journal.append(step(a, 0, "m", ev(0, "wait.start", "go"), start=0, ts=5.0,
                                  first="h"))
        before = await journal.runs()
        with pytest.raises(JournalConflict):  # the same seq again, completing: refused
            await journal.append(step(a, 0, "m", ev(0, "activity.done", "x"), start=0,
                                      ts=5.0, first="h", kind="completed", state={}))
        with pytest.raises(Exception):  # noqa: B017 - not JSON: fails before writing
            await journal.append(step(a, 1, "m", ev(1, "activity.done", "y"), start=0,
                                      ts=5.0, kind="completed", state={"bad": object()}))
        assert await journal.runs() == before
        if not journal.url.startswith("cosmos"):  # Cosmos fences by (actor, seq) only
            await journal.acquire(a, "w1", 0.0, 1.0)
            await journal.acquire(a, "w2", 2.0, 10.0)  # epoch 2
            with pytest.raises(JournalConflict):
                await journal.append(step(a, 1, "m", start=0, ts=5.0, kind="completed",
                                          state={}, epoch=1))
            assert await journal.runs() == before

    run(main())


def test_sqlite_v3_journal_gets_its_run_index(tmp_path: Path) -> None:
    import sqlite3

    from runtime.journal.sqlite import VERSION, SqliteJournal

    path = tmp_path / "old.db"

    async def write() -> None:
        journal = SqliteJournal(path)
        await _fill(journal)
        await journal.append(step("order/3", 1, "c", ev(1, "timer.start", "sleep"), start=0,
                                  ts=30.0))
        await journal.close()

    run(write())
    db = sqlite3.connect(path)  # make it the journal Loom 0.3 wrote: no run index
    db.executescript("DROP TABLE runs; DROP TABLE run_activities; PRAGMA user_version=3;")
    db.close()

    async def read() -> None:
        journal = SqliteJournal(path)
        try:
            assert msgs(await journal.runs()) == ["f", "e", "c", "d", "b", "a"]
            assert msgs(await journal.runs(status="parked")) == ["c"]
            assert msgs(await journal.runs(activity="ship")) == ["c", "b"]
        finally:
            await journal.close()

    run(read())
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == VERSION >= 4
    db.close()


@pytest.mark.integration
def test_cosmos_a_lagging_run_item_is_repaired_at_the_next_commit(
        make_cosmos: Callable[..., Any]) -> None:
    async def main() -> None:
        journal = make_cosmos()
        real = journal._index_run

        async def lost(commit: dict[str, Any]) -> None:  # the write after the commit is lost
            return None

        a = "order/r"
        await journal.append(step(a, 0, "m1", ev(0, "activity.done", "charge"), start=0,
                                  ts=1.0, first="h"))
        journal._index_run = lost
        await journal.append(step(a, 1, "m1", ev(1, "timer.start", "sleep"), start=0, ts=1.0))
        journal._index_run = real
        assert one(await journal.runs(), "m1")["status"] == "running"  # lagging
        journal._run_rows.clear()  # another process writes the next commit
        await journal.append(step(a, 2, "m1", ev(1, "timer.fired", "timer"),
                                  ev(2, "activity.done", "ship"), start=0, ts=1.0))
        row = one(await journal.runs(), "m1")
        assert (row["status"], row["last_seq"], row["activities"]) == \
            ("running", 2, ["charge", "ship"])
        # the completing commit's index write is lost; the next run's first commit fixes it
        journal._index_run = lost
        await journal.append(step(a, 3, "m1", start=0, ts=1.0, kind="completed", state={}))
        journal._index_run = real
        assert one(await journal.runs(), "m1")["status"] == "running"
        await journal.append(step(a, 4, "m2", start=4, ts=9.0, first="h"))
        rows = await journal.runs()
        assert [(r["msg"], r["status"]) for r in rows] == [("m2", "running"),
                                                           ("m1", "completed")]

    run(main())


def test_sqlite_run_index_catches_up_in_batches_and_across_processes(tmp_path: Path) -> None:
    """The SQLite index is folded in batches behind a watermark: commits written by one
    process and never queried there are indexed by the next query, in any process, each
    exactly once (a commit folded twice would list its activity twice or end twice)."""
    import sqlite3

    from runtime.journal import sqlite as sqlite_journal

    path = tmp_path / "j.db"
    n = sqlite_journal.INDEX_BATCH + 300  # more than one catch-up transaction

    async def write() -> None:
        journal = sqlite_journal.SqliteJournal(path)
        for i in range(n):
            await journal.append(step(f"order/{i % 7}", i // 7, f"m{i}",
                                      ev(0, "activity.done", "charge"), start=i // 7,
                                      ts=float(i), first="place", kind="completed", state={}))
        await journal.close()  # no query here: part of it is not indexed yet

    run(write())
    db = sqlite3.connect(path)
    mark = db.execute("SELECT value FROM meta WHERE key = 'runs_indexed'").fetchone()[0]
    last = db.execute("SELECT MAX(rowid) FROM commits").fetchone()[0]
    db.close()
    assert mark < last  # the catch-up is behind: the test means something

    async def read() -> None:
        journal = sqlite_journal.SqliteJournal(path)  # another process, as far as it knows
        async def every(**filters: Any) -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = []
            while True:
                page = await journal.runs(limit=1000, after=rows[-1]["cursor"] if rows
                                          else None, **filters)
                rows += page
                if len(page) < 1000:
                    return rows

        try:
            rows = await every()
            assert len(rows) == n
            assert {r["status"] for r in rows} == {"completed"}
            assert all(r["activities"] == ["charge"] for r in rows)
            assert len(await every(activity="charge")) == n
            assert await every() == rows  # nothing folded twice
        finally:
            await journal.close()

    run(read())
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'runs_indexed'").fetchone()[0] == last
    db.close()


def test_append_consumes_with_the_commit_when_nothing_is_to_be_dispatched(
        journal: JournalStore) -> None:
    """Where the journal says it does (memory, SQLite): an outbox-free commit's consumed
    entries become tombstones in the same write; a commit with an outbox leaves them for
    the caller to consume after the dispatch (an unconsumed entry marks an undispatched
    outbox). Elsewhere (Cosmos) append consumes nothing."""
    async def main() -> None:
        for mid in ("m1", "m2"):
            await journal.enqueue(env("cwa/x", mid))
        await journal.append(step("cwa/x", 0, "m1", start=0, ts=1.0, first="go",
                                  kind="completed", state={}, consumed=["m1"]))
        out = {"id": "o1", "target": "other/y", "kind": "call", "payload": None,
               "deliver_at": 0.0}
        await journal.append(step("cwa/x", 1, "m2", start=1, ts=2.0, first="go",
                                  kind="completed", state={}, consumed=["m2"], outbox=[out]))
        left = ids(await journal.inbox("cwa/x", 10.0))
        if journal.consumes_with_append:
            assert left == ["m2"]  # m1 went with its commit; m2 waits for its dispatch
        else:
            assert left == ["m1", "m2"]

    run(main())


def test_sqlite_group_commit_fails_only_the_write_that_failed(tmp_path: Path) -> None:
    """Writes of one group commit share a transaction without savepoints; a write that fails
    after changing something (not with a clean JournalConflict) must still fail alone: the
    batch is rolled back and run again with a savepoint per write."""
    import sqlite3

    from runtime.journal import sqlite as sqlite_journal

    async def main() -> None:
        journal = sqlite_journal.SqliteJournal(tmp_path / "j.db")

        def half_done(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO meta (key, value) VALUES ('half', 1)")
            raise RuntimeError("failed after a change")

        try:
            results = await asyncio.gather(
                journal.append(commit("ok/1", 1, v="kept")), journal._submit(half_done),
                journal.enqueue(env("ok/1", "m1")), journal.append(commit("ok/1", 1, v="twin")),
                return_exceptions=True)
            assert results[0] is None and results[2] is True, results
            assert isinstance(results[1], RuntimeError), results
            assert isinstance(results[3], JournalConflict), results
            assert await journal.read("ok/1") == [commit("ok/1", 1, v="kept")]
            assert [e["id"] for e in await journal.inbox("ok/1", time.time())] == ["m1"]
            found = journal._query("SELECT 1 FROM meta WHERE key = 'half'", ())
            assert found == []
        finally:
            await journal.close()

    run(main())


def test_sqlite_journal_of_schema_5_loses_its_state_index_and_reads_the_same(
        tmp_path: Path) -> None:
    """Schema 6 drops the index of state-carrying commits; `read_tail` walks back instead."""
    import sqlite3

    from runtime.journal import sqlite as sqlite_journal

    path = tmp_path / "j.db"

    async def write() -> None:
        journal = sqlite_journal.SqliteJournal(path)
        await journal.append(commit("a/1", 1, v="old"))
        await journal.append({**commit("a/1", 2), "state": {"v": 2}})
        await journal.append(commit("a/1", 3, v="after"))
        await journal.close()

    run(write())
    db = sqlite3.connect(path)
    db.execute("CREATE INDEX commits_state ON commits (actor, seq) WHERE has_state = 1")
    db.execute("PRAGMA user_version=5")
    db.commit()
    db.close()

    async def read() -> None:
        journal = sqlite_journal.SqliteJournal(path)
        try:
            assert [c["seq"] for c in await journal.read_tail("a/1")] == [2, 3]
            assert [c["seq"] for c in await journal.read_tail("none/1")] == []
        finally:
            await journal.close()

    run(read())
    db = sqlite3.connect(path)
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'commits_state'").fetchall() \
        == []
    assert db.execute("PRAGMA user_version").fetchone()[0] == sqlite_journal.VERSION
    db.close()
