"""One contract for every JournalStore, run against memory, SQLite and Cosmos (the session
emulator, a fresh container per test).

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
STORES = ("memory", "sqlite", "cosmos")

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
    if kind == "sqlite":
        from runtime.journal.sqlite import SqliteJournal
        return SqliteJournal(tmp_path / "journal.db")
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


def test_due_actors_and_next_due(journal: JournalStore) -> None:
    async def main() -> None:
        assert await journal.due_actors(1.0) == []
        assert await journal.next_due(1.0) is None
        await journal.enqueue(env("due/a", "a1", deliver_at=0.0))
        await journal.enqueue(env("due/a", "a2", deliver_at=50.0))
        await journal.enqueue(env("due/b", "b1", "timer", deliver_at=500.0))
        await journal.enqueue(env("due/c", "c1", deliver_at=10.0))
        await journal.enqueue(env("due/d", "d1", deliver_at=300.0))
        await journal.consume("due/c", ["c1"], 20.0)
        await journal.consume("due/d", ["d1"], 20.0)  # a consumed future entry: not due ever

        assert await journal.due_actors(100.0) == ["due/a"]
        assert await journal.due_actors(100.0, limit=1) == ["due/a"]
        assert sorted(await journal.due_actors(500.0)) == ["due/a", "due/b"]
        assert len(await journal.due_actors(500.0, limit=1)) == 1
        assert await journal.next_due(100.0) == 500.0
        assert await journal.next_due(20.0) == 50.0
        assert await journal.next_due(500.0) is None  # strictly after `now`
        await journal.consume("due/b", ["b1"], 30.0)
        assert await journal.next_due(100.0) is None
        await journal.consume("due/a", ["a1", "a2"], 30.0)
        assert await journal.due_actors(1e12) == []

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
        assert await journal.inbox("big/2", 1.0) == [big]

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


def test_due_actors_without_calls_counts_only_timers_and_events(journal: JournalStore) -> None:
    async def main() -> None:
        await journal.enqueue(env("busy/1", "c1"))
        await journal.enqueue(env("timer/1", "t1", kind="timer", deliver_at=5.0))
        await journal.enqueue(env("event/1", "e1", kind="event", name="go"))
        assert sorted(await journal.due_actors(10.0)) == ["busy/1", "event/1", "timer/1"]
        assert sorted(await journal.due_actors(10.0, calls=False)) == ["event/1", "timer/1"]
        assert await journal.due_actors(1.0, calls=False) == ["event/1"]  # timer not yet due
        await journal.consume("event/1", ["e1"], now=2.0)
        assert await journal.due_actors(1.0, calls=False) == []

    run(main())
