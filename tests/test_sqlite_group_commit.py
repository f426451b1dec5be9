"""The SQLite journal's group commit writes appends and enqueues in bulk (a few statements per
transaction, runtime/journal/sqlite_bulk.py). These tests hold it to the one-write-at-a-time
semantics: the same results for every caller and the same rows, batch after random batch,
with duplicates, fenced commits and consumed entries mixed in."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from runtime import errors
from runtime.journal import sqlite_bulk
from runtime.journal.sqlite import Pending, Result, SqliteJournal
from runtime.journal.store import JournalConflict

ORDER = {"enqueue": 0, "": 1, "settle": 2, "append": 3}  # the order the bulk path takes


class OneByOne(SqliteJournal):
    """The reference: every write alone, in the order the bulk path takes its kinds (any
    order of one batch is a valid one: none of its writes completed before another was
    submitted), and in the order submitted within a kind."""

    def _in_bulk(self, db: sqlite3.Connection, batch: list[Pending]) -> list[Result]:
        ordered = sorted(batch, key=lambda item: ORDER[item[2][0] if item[2] else ""])
        return [self._one(db, w, f, savepoint=False) for w, f, _ in ordered]


def env(actor: str, mid: str, deliver_at: float = 0.0, kind: str = "call") -> dict[str, Any]:
    return {"id": mid, "target": actor, "kind": kind, "payload": {"m": mid},
            "deliver_at": deliver_at}


def dump(journal: SqliteJournal) -> dict[str, Any]:
    q = journal._query
    return {
        "inbox": q("SELECT actor, id, kind, n, deliver_at, consumed_at IS NOT NULL, doc "
                   "FROM inbox ORDER BY actor, n", ()),
        "sched": q("SELECT actor, last_n, due_at, owner, epoch, ver FROM sched ORDER BY actor",
                   ()),
        "commits": q("SELECT actor, seq, has_state, doc, done_msg FROM commits "
                     "ORDER BY actor, seq", ()),
    }


def outcome(result: Any) -> Any:
    return type(result).__name__ if isinstance(result, BaseException) else result


async def random_batches(journal: SqliteJournal, seed: int) -> list[list[Any]]:
    """Rounds of concurrent writes (one group commit each, as the journal batches what is
    submitted while it writes): enqueues with repeated ids, appends with taken seqs and
    fenced epochs, consuming what earlier rounds enqueued; leases taken in between."""
    rng = random.Random(seed)
    actors = [f"a/{i}" for i in range(5)]
    seqs = dict.fromkeys(actors, 0)
    pending: dict[str, list[str]] = {a: [] for a in actors}
    ids = 0
    out = []
    for a in actors[:3]:
        await journal.acquire(a, "me", 1000.0, 3600.0)  # a lease time both journals share
    for _ in range(30):
        ops = []
        for _ in range(rng.randint(1, 25)):
            a = rng.choice(actors)
            roll = rng.random()
            if roll < 0.15 and a in actors[:3]:
                ops.append(journal.settle(
                    a, "me", now=rng.choice([1.0, 3.0, 10.0]), seen_n=rng.randint(0, 12),
                    busy=rng.random() < 0.5, version=rng.choice([..., None, "v1", "v2"])))
            elif roll < 0.5:
                ids += 1
                mid = f"m{rng.randint(1, ids)}" if rng.random() < 0.2 else f"m{ids}"
                ops.append(journal.enqueue(env(a, mid, rng.choice([0.0, 0.0, 5.0, 2.0]),
                                               rng.choice(["call", "call", "event"]))))
            else:
                seq = seqs[a] + 1 if rng.random() < 0.85 else max(1, seqs[a])
                seqs[a] = max(seqs[a], seq)
                consumed = pending[a][:rng.randint(0, 2)]
                pending[a] = pending[a][len(consumed):]
                commit: dict[str, Any] = {"actor": a, "seq": seq, "ts": 7.0, "events": [],
                                          "consumed": consumed,
                                          "outbox": [{"x": 1}] if rng.random() < 0.2 else []}
                if a in actors[:3]:
                    commit["epoch"] = 1 if rng.random() < 0.9 else 99  # 99: fenced out
                if rng.random() < 0.3:
                    commit["state"] = {"v": rng.random()}
                ops.append(journal.append(commit))
        out.append([outcome(r) for r in await asyncio.gather(*ops, return_exceptions=True)])
        out.append(dump(journal)["sched"])  # after every batch: later writes hide nothing
        for a in actors:
            pending[a] = [e["id"] for e in await journal.inbox(a, 10.0)]
    return out


@pytest.mark.parametrize("seed", range(12))
def test_bulk_writes_match_one_write_at_a_time(tmp_path: Path, seed: int) -> None:
    async def main() -> None:
        bulk, ref = SqliteJournal(tmp_path / "bulk.db"), OneByOne(tmp_path / "ref.db")
        try:
            got = await random_batches(bulk, seed)
            want = await random_batches(ref, seed)
            assert got == want
            assert dump(bulk) == dump(ref)
            batches = got[::2]
            assert any(len(batch) > 1 for batch in batches)
            assert bulk.transactions < sum(len(b) for b in batches)  # batches were shared
        finally:
            await bulk.close()
            await ref.close()

    asyncio.run(main())


def test_enqueues_to_one_actor_in_one_batch_are_numbered_in_order(tmp_path: Path) -> None:
    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db")
        try:
            assert await journal.enqueue(env("a/1", "old")) is True
            results = await asyncio.gather(
                *(journal.enqueue(env("a/1", mid)) for mid in
                  ["x1", "x2", "old", "x1", "x3", "x4"]))
            assert results == [True, True, False, False, True, True]
            assert journal.transactions == 2  # the six went in one transaction
            entries = await journal.inbox("a/1", 1.0)
            assert [(e["id"], e["n"]) for e in entries] == [
                ("old", 1), ("x1", 2), ("x2", 3), ("x3", 4), ("x4", 5)]
            assert journal._query("SELECT last_n, due_at FROM sched", ()) == [(5, 0.0)]
        finally:
            await journal.close()

    asyncio.run(main())


def test_a_fenced_commit_in_a_bulk_fails_alone(tmp_path: Path) -> None:
    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db")
        try:
            await journal.acquire("a/1", "me", time.time(), 60.0)
            await journal.enqueue(env("a/2", "m1"))
            results = await asyncio.gather(
                journal.append({"actor": "a/1", "seq": 1, "ts": 1.0, "epoch": 2}),
                journal.append({"actor": "a/2", "seq": 1, "ts": 1.0, "consumed": ["m1"]}),
                journal.append({"actor": "a/3", "seq": 1, "ts": 1.0}),
                return_exceptions=True)
            assert isinstance(results[0], JournalConflict) and "fenced" in str(results[0])
            assert results[1:] == [None, None]
            assert await journal.inbox("a/2", 1.0) == []
            assert await journal.read("a/1") == []
        finally:
            await journal.close()

    asyncio.run(main())


def test_chunks_beyond_one_statement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_bulk, "CHUNK", 3)

    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db")
        try:
            made = await asyncio.gather(*(journal.enqueue(env(f"a/{i % 2}", f"m{i}"))
                                          for i in range(11)))
            assert made == [True] * 11
            assert [e["n"] for e in await journal.inbox("a/0", 1.0)] == [1, 2, 3, 4, 5, 6]
            await asyncio.gather(*(journal.append({"actor": f"a/{i % 2}", "seq": i // 2 + 1,
                                                   "ts": 2.0, "consumed": [f"m{i}"]})
                                   for i in range(11)))
            assert await journal.inbox("a/0", 1.0) == [] == await journal.inbox("a/1", 1.0)
            assert len(await journal.read("a/0")) == 6
        finally:
            await journal.close()

    asyncio.run(main())


def test_another_process_holding_the_write_lock_never_blocks_the_loop(tmp_path: Path) -> None:
    """The transaction's statements run on the loop only when the write lock is free at once;
    held by another process, the whole transaction waits for it on the writer thread while
    the loop goes on."""
    path = tmp_path / "j.db"

    async def main() -> None:
        journal = SqliteJournal(path)
        other = sqlite3.connect(path, isolation_level=None)
        try:
            await journal.enqueue(env("a/1", "first"))
            other.execute("BEGIN IMMEDIATE")  # another process, mid-transaction
            writes = asyncio.gather(journal.enqueue(env("a/1", "m1")),
                                    journal.enqueue(env("a/1", "m2")),
                                    journal.append({"actor": "a/1", "seq": 1, "ts": 1.0}))
            ticks = 0
            for _ in range(20):  # the loop keeps running while the lock is held
                await asyncio.sleep(0.01)
                ticks += 1
            assert ticks == 20 and not writes.done()
            other.execute("COMMIT")
            assert await asyncio.wait_for(writes, 10) == [True, True, None]
            assert [e["n"] for e in await journal.inbox("a/1", 1.0)] == [1, 2, 3]
        finally:
            other.close()
            await journal.close()

    asyncio.run(main())


def _commit(actor: str, seq: int, msg: str, activity: str, *, kind: str | None = None
            ) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "actor": actor, "seq": seq, "ts": 100.0 + seq, "run": {"msg": msg, "ts": 100.0,
                                                               "start": 0},
        "events": [{"step": seq, "op": "activity.done", "name": activity, "digest": ""}]}
    if seq == 0:
        doc["message"] = {"id": msg, "target": actor, "kind": "call", "handler": "go"}
    if kind is not None:
        doc.update(kind=kind, state={"n": seq})
    return doc


def test_the_run_index_folds_commits_from_here_and_from_another_connection(
        tmp_path: Path) -> None:
    """The catch-up takes commits appended through this journal from memory (no second
    decode) and decodes those another connection wrote; a conflicting append, which did
    not land, never reaches the index in place of the commit that did."""
    async def main() -> None:
        path = tmp_path / "j.db"
        here, other = SqliteJournal(path), SqliteJournal(path)
        try:
            await here.append(_commit("a/1", 0, "m1", "charge"))
            with pytest.raises(JournalConflict):  # the same seq again, another activity
                await here.append(_commit("a/1", 0, "m1", "forged"))
            await other.append(_commit("a/2", 0, "m2", "ship"))
            await here.append(_commit("a/1", 1, "m1", "pack", kind="completed"))
            await other.append(_commit("a/2", 1, "m2", "bill", kind="failed"))
            assert here._unfolded  # appended here, not folded yet: without their states
            assert [sorted(c) for c in here._unfolded.values()] == [
                ["actor", "events", "message", "run", "seq", "ts"],
                ["actor", "events", "kind", "run", "seq", "ts"]]
            rows = {r["msg"]: r for r in await here.runs()}
            assert not here._unfolded
            assert {m: (r["status"], r["activities"], r["handler"], r["last_seq"])
                    for m, r in rows.items()} == {
                "m1": ("completed", ["charge", "pack"], "go", 1),
                "m2": ("failed", ["ship", "bill"], "go", 1)}
            assert rows == {r["msg"]: r for r in await other.runs()}  # all decoded there
        finally:
            await here.close()
            await other.close()

    asyncio.run(main())


def test_a_failed_batch_leaves_its_commits_to_be_decoded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A COMMIT that fails drops the appends it carried from the catch-up's memory, and a
    catch-up rolled back after taking commits from memory decodes them next time."""
    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db")
        try:
            real = journal._commit
            fail = {"n": 1}

            def failing(batch: list[Pending], results: list[Result]) -> list[Result]:
                if fail["n"]:
                    fail["n"] -= 1
                    journal._writer.execute("ROLLBACK")
                    return [(fut, None, sqlite3.OperationalError("disk I/O error"))
                            for _, fut, _ in batch]
                return real(batch, results)

            monkeypatch.setattr(journal, "_commit", failing)
            with pytest.raises(errors.StorageError):
                await journal.append(_commit("a/1", 0, "m1", "lost"))
            assert journal._unfolded == {}
            await journal.append(_commit("a/1", 0, "m1", "charge"))
            fail["n"] = 1  # the catch-up's own transaction fails after taking from memory
            with pytest.raises(errors.StorageError):
                await journal.runs()
            assert journal._unfolded == {}
            rows = await journal.runs()
            assert [(r["msg"], r["activities"]) for r in rows] == [("m1", ["charge"])]
        finally:
            await journal.close()

    asyncio.run(main())


@pytest.mark.parametrize("seed", range(20))
def test_what_waits_to_be_folded_folds_like_the_whole_commit(seed: int) -> None:
    """The catch-up keeps only `runs.foldable(commit)` of a commit (no state, results or
    payloads, however large); folding it gives the same index row as the whole commit."""
    from runtime.journal import runs

    rng = random.Random(seed)
    ops = [*runs.OPENS, *runs.CLOSES, "activity.done", "compensation.failed", "send.sent",
           "run.cancelled", "activity.retry", "timer.start", ""]
    row_whole: Any = None
    row_part: Any = None
    for seq in range(rng.randint(1, 12)):
        events = []
        for _ in range(rng.randint(0, 4)):
            event: dict[str, Any] = {"op": rng.choice(ops), "step": rng.choice(
                [0, 1, 2, "b/0", "b/1"]), "name": rng.choice(["charge", "ship", "", "w"]),
                "result": {"big": "x" * 100}, "resources": [{"ok": True}]}
            for missing in rng.sample(["op", "step", "name"], rng.randint(0, 1)):
                del event[missing]
            events.append(event)
        commit: dict[str, Any] = {"actor": "a/1", "seq": seq, "ts": 100.0 + seq,
                                  "run": {"msg": "m1", "ts": 100.0, "start": 0},
                                  "events": events, "state": {"big": list(range(50))}}
        if seq == 0 and rng.random() < 0.8:
            commit["message"] = rng.choice([{"handler": "go", "payload": [1] * 50},
                                            {"name": "evt"}, {"handler": None}])
        if rng.random() < 0.2:
            commit["kind"] = rng.choice(["completed", "failed", "cancelled"])
            commit["error"] = {"code": "x", "type": "E", "message": "m", "retryable": True}
        part = runs.foldable(commit)
        assert "state" not in part and all("result" not in e for e in part.get("events", []))
        row_whole, row_part = runs.fold(row_whole, commit), runs.fold(row_part, part)
        assert row_whole == row_part, (seed, seq, commit, part)


def _claim(msg: str, epoch: int | None = None, kind: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"actor": "t/a", "seq": 0, "ts": 1.0,
                           "run": {"msg": msg, "ts": 1.0, "start": 0},
                           "message": {"id": msg, "handler": "h_" + msg}, "events": []}
    if epoch is not None:
        doc["epoch"] = epoch
    if kind is not None:
        doc.update(kind=kind, state={})
    return doc


def test_a_refused_append_never_reaches_the_index_for_a_row_another_connection_wrote(
        tmp_path: Path) -> None:
    """Two connections (two processes) on one file: the one whose append of (t/a, 0) is
    refused, while a catch-up shares its group commit, must not index its commit for the
    row the other one wrote."""
    async def main() -> None:
        path = tmp_path / "j.db"
        j1, j2 = SqliteJournal(path), SqliteJournal(path)
        try:
            await j2.append(_claim("m1"))
            refused, rows = await asyncio.gather(j1.append(_claim("m2", kind="completed")),
                                                 j1.runs(), return_exceptions=True)
            assert isinstance(refused, JournalConflict)
            assert [c["run"]["msg"] for c in await j1.read("t/a")] == ["m1"]
            assert isinstance(rows, list)
            for got in (rows, await j2.runs()):
                assert [(r["msg"], r["handler"], r["status"]) for r in got] == [
                    ("m1", "h_m1", "running")]
        finally:
            await j1.close()
            await j2.close()

    asyncio.run(main())


def test_a_fenced_append_never_reaches_the_index_for_the_new_holders_row(
        tmp_path: Path) -> None:
    """One process: a cut-off holder (epoch 1) and the new one (epoch 2) both append
    (t/a, 0) in one group commit; the fenced commit's run must not be indexed for the row
    that landed, even by a catch-up in the very next transaction."""
    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db")
        try:
            await journal.acquire("t/a", "p1", 0.0, 1.0)
            await journal.acquire("t/a", "p2", 5.0, 100.0)  # takes over: epoch 2

            async def next_transaction() -> list[dict[str, Any]]:
                await asyncio.sleep(0)
                return await journal.runs()

            stale, new, rows = await asyncio.gather(
                journal.append(_claim("STALE", 1, "completed")), journal.append(_claim(
                    "m-new", 2)), next_transaction(), return_exceptions=True)
            assert isinstance(stale, JournalConflict) and new is None
            assert isinstance(rows, list)
            assert [(r["msg"], r["handler"], r["status"]) for r in rows] == [
                ("m-new", "h_m-new", "running")]
        finally:
            await journal.close()

    asyncio.run(main())


def test_two_connections_keep_no_stale_folds_and_an_odd_row_is_skipped(tmp_path: Path) -> None:
    """Each connection's catch-up folds the other's commits by decoding them; what this one
    kept in memory for those rows must not pile up (it would fill the cap and switch the
    fast path off). A row that does not decode is logged and skipped, not retried for
    ever."""
    async def main() -> None:
        path = tmp_path / "j.db"
        j1, j2 = SqliteJournal(path), SqliteJournal(path)
        try:
            for i in range(30):
                await (j1 if i % 2 else j2).append(_commit(f"a/{i}", 0, f"m{i}", "charge"))
            await j2.runs()  # folds all 30, j1's 15 by decoding them
            assert len(j1._unfolded) == 15
            await j2.append(_commit("a/odd", 0, "m-odd", "charge"))
            await asyncio.to_thread(_corrupt, path, "a/odd")  # j1 has to decode this one
            await j1.append(_commit("a/last", 0, "m-last", "charge"))
            rows = await j1.runs()  # nothing left to fold: every kept entry is stale
            assert j1._unfolded == {} and len(rows) == 31
            assert "m-odd" not in {r["msg"] for r in rows} and "m-last" in {
                r["msg"] for r in rows}
        finally:
            await j1.close()
            await j2.close()

    asyncio.run(main())


def _corrupt(path: Path, actor: str) -> None:
    con = sqlite3.connect(path)
    con.execute("UPDATE commits SET doc = X'7B6E6F' WHERE actor = ?", (actor,))
    con.commit()
    con.close()


def test_a_lease_written_after_waiting_for_the_lock_lasts_its_ttl_from_the_write(
        tmp_path: Path) -> None:
    """`acquire` and `renew` are given `now` before they wait (for the group commit, or for
    another process's write lock: seconds). The lease must last `ttl` from when it is
    written: computed from the `now` they were given, a long wait wrote a lease already
    (nearly) over, and another process could take the actor from its live holder."""
    import threading

    path = tmp_path / "j.db"

    def lease_until() -> float:
        with sqlite3.connect(path) as con:
            return float(con.execute("SELECT lease_until FROM sched WHERE actor = 'l/x'"
                                     ).fetchone()[0])

    async def main() -> None:
        journal = SqliteJournal(path, writer_process_after=None)
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            for step in ("acquire", "renew"):
                other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
                threading.Timer(0.6, lambda: other.execute("ROLLBACK")).start()
                asked = time.time()
                if step == "acquire":
                    assert await journal.acquire("l/x", "a", asked, 1.0) is not None
                else:
                    assert await journal.renew("a", asked, 1.0) == {"l/x"}
                waited = time.time() - asked
                assert waited >= 0.5, waited
                assert lease_until() >= asked + waited + 1.0 - 0.05, (step, waited)
        finally:
            other.close()
            await journal.close()

    asyncio.run(main())
