"""What the Cosmos journal promises beyond the contract: what it costs (an idle scheduler
issues about one query a second; an inbox read decodes only what it returns), how it meets
429s, how compaction bounds an actor's partition, and how an enqueue that was cut off, or
numbered out of order, still gets its message handled."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import CosmosServer

from runtime import errors
from runtime.backends.blob_fs import FileBlobStore
from runtime.journal.cosmos import CosmosJournal

pytestmark = pytest.mark.filterwarnings(
    "ignore::urllib3.exceptions.InsecureRequestWarning")  # the emulator's self-signed cert
DB = "loom-cosmos-journal"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def env(target: str, mid: str, kind: str = "call", deliver_at: float = 0.0,
        **extra: Any) -> dict[str, Any]:
    return {"id": mid, "target": target, "kind": kind, "payload": {"mid": mid},
            "deliver_at": deliver_at, **extra}


@pytest.fixture
def make(cosmos_server: CosmosServer) -> Iterator[Callable[..., CosmosJournal]]:
    made: list[CosmosJournal] = []

    def make(**kw: Any) -> CosmosJournal:
        kw.setdefault("container", f"t-{uuid.uuid4().hex[:16]}")
        journal = CosmosJournal(cosmos_server.endpoint, cosmos_server.key, database=DB,
                                verify_tls=False, **kw)
        made.append(journal)
        return journal

    yield make
    from azure.cosmos import CosmosClient
    from azure.cosmos.exceptions import CosmosResourceNotFoundError

    for journal in made:
        run(journal.close())
    client = CosmosClient(cosmos_server.endpoint, cosmos_server.key, connection_verify=False)
    try:
        with contextlib.suppress(CosmosResourceNotFoundError):  # never created
            client.delete_database(DB)
    finally:
        client.close()


def queries(journal: CosmosJournal, op: str) -> int:
    return int(journal.stats[f"requests:{op}"])


def test_an_idle_scheduler_queries_about_once_a_second(make: Callable[..., CosmosJournal]
                                                      ) -> None:
    journal = make()  # poll_interval_s=1.0 by default

    async def main() -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.5:  # the runtime's loop: every 50 ms, here 10 ms
            assert await journal.due_actors(time.time(), owner="w") == []
            await journal.next_due(time.time())
            await asyncio.sleep(0.01)
        assert queries(journal, "due_actors") == 3, dict(journal.stats)
        assert journal.stats["requests:next_due"] == 0
        # a timer this process set wakes on time, not at the next poll
        await journal.due_actors(time.time(), owner="w")
        due_at = time.time() + 1.5  # an enqueue takes ~0.4 s on the emulator
        await journal.enqueue(env("sleepy/1", "t1", "timer", deliver_at=due_at))
        next_due = await journal.next_due(time.time())
        assert next_due == due_at
        before = queries(journal, "due_actors")
        while not await journal.due_actors(time.time(), owner="w"):
            await asyncio.sleep(0.01)
        assert time.time() - due_at < 0.2
        assert queries(journal, "due_actors") <= before + 2  # a regular poll, and the timer
        # another process's message is seen at the next poll (within poll_interval_s)
        other = make(container=journal.container)
        await other.enqueue(env("remote/1", "m1"))
        t1 = time.monotonic()
        while "remote/1" not in await journal.due_actors(time.time(), owner="w"):
            await asyncio.sleep(0.01)
        assert time.monotonic() - t1 <= 1.2

    run(main())


def test_owners_is_cached(make: Callable[..., CosmosJournal]) -> None:
    journal = make(poll_interval_s=0.2)

    async def main() -> None:
        await journal.acquire("o/1", "a", time.time(), 10.0)
        for _ in range(20):
            assert await journal.owners() == {"a": 1}
        assert queries(journal, "owners") == 1
        await asyncio.sleep(2.1)
        await journal.owners()
        assert queries(journal, "owners") == 2

    run(main())


class _Blobs(FileBlobStore):
    gets = 0

    def get(self, key: str) -> bytes:
        type(self).gets += 1
        return super().get(key)


def test_inbox_decodes_only_what_it_returns(make: Callable[..., CosmosJournal],
                                            tmp_path: Path) -> None:
    blobs = _Blobs(tmp_path / "blobs")
    journal = make(blob=blobs, max_item_bytes=4096, poll_interval_s=0.0)

    async def main() -> None:
        for i in range(6):  # each payload goes to the blob store
            await journal.enqueue(env("drain/1", f"c{i}", payload={"data": str(i) * 8000}))
        await journal.enqueue(env("drain/1", "e1", "event", name="x"))
        got = await journal.inbox("drain/1", 1.0, calls=1)
        assert [e["id"] for e in got] == ["e1", "c0"]
        assert got[1]["payload"] == {"data": "0" * 8000}
        assert _Blobs.gets == 1  # only c0's payload was fetched
        await journal.consume("drain/1", ["c0"], 2.0)
        got = await journal.inbox("drain/1", 3.0, calls=1)
        assert [e["id"] for e in got] == ["e1", "c1"] and _Blobs.gets == 2

    run(main())


class _Throttling:
    """A container whose every call is refused with 429 `times` times first."""

    def __init__(self, times: int, retry_after_ms: str | None) -> None:
        self.times = times
        self.retry_after_ms = retry_after_ms
        self.calls: list[float] = []

    def read_item(self, item: str, partition_key: str) -> dict[str, Any]:
        from azure.cosmos.exceptions import CosmosHttpResponseError

        self.calls.append(time.monotonic())
        if len(self.calls) <= self.times:
            exc = CosmosHttpResponseError(status_code=429, message="Request rate is large")
            exc.headers = ({} if self.retry_after_ms is None else
                           {"x-ms-retry-after-ms": self.retry_after_ms})
            raise exc
        return {"id": item, "actor": partition_key, "type": "sched", "owner": "a",
                "lease_until": 0.0}


@pytest.mark.parametrize("after", ["120", None])
def test_429_waits_what_the_server_asks(after: str | None) -> None:
    journal = CosmosJournal("https://127.0.0.1:1", "a2V5", verify_tls=False)
    fake = _Throttling(2, after)
    journal._container = fake  # type: ignore[assignment]

    async def main() -> None:
        t0 = time.monotonic()
        row = await journal._read("acquire", "x/1", "s")
        assert row is not None and row["owner"] == "a"
        assert len(fake.calls) == 3 and journal.stats["throttled"] == 2
        if after is not None:  # 120 ms twice
            assert fake.calls[1] - fake.calls[0] >= 0.11 and time.monotonic() - t0 >= 0.23
        else:  # no hint: a short backoff, not a hammering
            assert fake.calls[1] - fake.calls[0] >= 0.005

    run(main())


def test_429_surfaces_as_a_storage_error_after_a_bounded_wait() -> None:
    journal = CosmosJournal("https://127.0.0.1:1", "a2V5", verify_tls=False,
                            max_throttle_wait_s=0.5)
    fake = _Throttling(10**6, "200")
    journal._container = fake  # type: ignore[assignment]
    t0 = time.monotonic()
    with pytest.raises(errors.StorageError) as info:
        run(journal._read("acquire", "x/1", "s"))
    assert info.value.retryable and info.value.details["status"] == 429
    assert 0.35 <= time.monotonic() - t0 < 1.0 and len(fake.calls) == 3


def test_an_enqueue_cut_off_before_numbering_is_finished_by_the_retry(
        make: Callable[..., CosmosJournal], monkeypatch: pytest.MonkeyPatch) -> None:
    journal = make(poll_interval_s=0.0)

    async def main() -> None:
        real = journal._number

        async def crash(*_: Any) -> None:
            raise errors.StorageError("cut off")

        monkeypatch.setattr(journal, "_number", crash)
        with pytest.raises(errors.StorageError):
            await journal.enqueue(env("cut/1", "m1"))
        assert await journal.inbox("cut/1", 1.0) == []  # not visible half-made
        assert await journal.due_actors(1.0) == []
        monkeypatch.setattr(journal, "_number", real)
        assert await journal.enqueue(env("cut/1", "m1")) is False  # the id is taken...
        assert await journal.due_actors(1.0) == ["cut/1"]  # ... and now it is due
        got = await journal.inbox("cut/1", 1.0)
        assert [(e["id"], e["n"]) for e in got] == [("m1", 1)]

    run(main())


def test_settle_repairs_an_entry_left_unnumbered(make: Callable[..., CosmosJournal],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    journal = make(poll_interval_s=0.0)

    async def main() -> None:
        real = journal._number

        async def crash(*_: Any) -> None:
            raise errors.StorageError("cut off")

        await journal.acquire("cut/2", "w", 1.0, 100.0)
        monkeypatch.setattr(journal, "_number", crash)
        with pytest.raises(errors.StorageError):
            await journal.enqueue(env("cut/2", "m1"))
        monkeypatch.setattr(journal, "_number", real)
        monkeypatch.setattr("runtime.journal.cosmos.REPAIR_AFTER_S", -1.0)
        await journal.settle("cut/2", "w", now=2.0, seen_n=0, busy=False)
        assert await journal.due_actors(3.0) == ["cut/2"]
        assert [e["n"] for e in await journal.inbox("cut/2", 3.0)] == [1]

    run(main())


def test_an_entry_numbered_below_what_the_reader_saw_is_not_lost(
        make: Callable[..., CosmosJournal], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two senders: m1 takes number 1 but is slow to write it into its entry; m2 takes 2 and
    finishes. The owner reads m2 only and settles having seen up to 2: m1 must stay due."""
    journal = make(poll_interval_s=0.0)

    async def main() -> None:
        await journal.acquire("race/1", "w", 1.0, 100.0)
        go = asyncio.Event()
        real = journal._write_number

        async def slow(actor: str, item_id: str, n: int) -> None:
            if item_id == "i:m1":
                await go.wait()
            await real(actor, item_id, n)

        monkeypatch.setattr(journal, "_write_number", slow)
        first = asyncio.ensure_future(journal.enqueue(env("race/1", "m1")))
        while journal.stats["requests:enqueue"] < 3:  # created, numbered 1, not written
            await asyncio.sleep(0.01)
        assert await journal.enqueue(env("race/1", "m2")) is True
        got = await journal.inbox("race/1", 2.0)
        assert [(e["id"], e["n"]) for e in got] == [("m2", 2)]
        go.set()
        assert await first is True
        await journal.consume("race/1", ["m2"], 2.0)
        await journal.settle("race/1", "w", now=2.0, seen_n=2, busy=False)
        assert await journal.due_actors(3.0) == ["race/1"]  # m1 was never seen
        assert [e["id"] for e in await journal.inbox("race/1", 3.0)] == ["m1"]

    run(main())


def test_compaction_keeps_the_tail_outcomes_and_recent_tombstones(
        make: Callable[..., CosmosJournal], tmp_path: Path) -> None:
    journal = make(poll_interval_s=0.0, blob=FileBlobStore(tmp_path / "blobs"),
                   max_item_bytes=8192, compact_every=0)
    a = "long/1"

    async def main() -> None:
        for seq in range(6):
            body: dict[str, Any] = {"run": {"msg": f"m{seq}", "ts": 1.0, "start": seq},
                                    "kind": "completed", "result": seq,
                                    "state": {"n": seq, "big": "x" * 10_000}}
            if seq == 5:
                body = {"run": {"msg": "m6", "ts": 1.0, "start": 5}, "events": [],
                        "outbox": [{"id": "o1", "target": "x/1"}], "consumed": ["m5"]}
            await journal.append({"actor": a, "seq": seq, **body})
        for mid in ("old", "young", "pending"):
            await journal.enqueue(env(a, mid))
        await journal.consume(a, ["old"], 100.0)
        await journal.consume(a, ["young"], 1000.0)
        tail = await journal.read_tail(a)
        assert [c["seq"] for c in tail] == [4, 5]
        # nothing is old enough yet
        assert await journal.compact(a, now=1000.0) == (0, 0)
        journal.tombstone_ttl_s = 500.0
        journal.commit_margin_s = -10.0 - time.time()  # every commit counts as old
        assert await journal.compact(a, now=1000.0) == (4, 1)
        assert await journal.read_tail(a) == tail  # replay, outbox, consumed: untouched
        assert [c["seq"] for c in await journal.read(a)] == [4, 5]
        assert (await journal.outcome(a, "m4") or {}).get("result") == 4
        assert await journal.outcome(a, "m1") is None  # past the retention
        assert await journal.enqueue(env(a, "young")) is False  # still refused
        assert await journal.enqueue(env(a, "old")) is True  # past the TTL: new again
        assert not [k for k in journal.blob.list("journal/") if "/inbox/" not in k
                    and not any(f"/{s}/" in k for s in (4, 5))]  # type: ignore[union-attr]

    run(main())


def test_compaction_runs_by_itself_every_few_snapshots(make: Callable[..., CosmosJournal]
                                                      ) -> None:
    journal = make(poll_interval_s=0.0, compact_every=4, tombstone_ttl_s=0.0,
                   commit_margin_s=-3600.0)

    async def main() -> None:
        for seq in range(9):
            await journal.append({"actor": "auto/1", "seq": seq, "state": {"n": seq}})
            await asyncio.sleep(0)
        for _ in range(100):
            if not journal._tasks:
                break
            await asyncio.sleep(0.05)
        seqs = [c["seq"] for c in await journal.read("auto/1")]
        assert seqs[0] in (4, 8) and seqs[-1] == 8, seqs

    run(main())


def test_an_idle_runtime_costs_about_one_request_a_second(
        make: Callable[..., CosmosJournal]) -> None:
    """The whole loop (due_actors, next_due, renew, owners every 50 ms / 3 s / 5 s) with no
    actors: about one cross-partition query a second, no reads or writes."""
    from runtime.actors import ActorRuntime

    journal = make()

    async def main() -> None:
        await journal.due_actors(0.0)  # connect (database and container) before counting
        journal.stats.clear()
        rt = ActorRuntime(journal, None)
        await rt.start()
        try:
            await asyncio.sleep(3.0)
        finally:
            await rt.stop()
        ops = {k: v for k, v in journal.stats.items() if k.startswith("requests:")}
        assert set(ops) <= {"requests:due_actors", "requests:owners"}, ops
        assert 2 <= journal.stats["requests"] <= 5, ops

    run(main())
