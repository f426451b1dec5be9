"""Answers across processes: a worker that completes an asked message tells the asker's
process at once (Redis pub/sub), so the ask does not wait for the asker's journal poll. The
note carries no result (the journal does), and a lost note only costs the poll."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import durable_actors as da
import pytest
from test_durable_core import run, runtime, stubs

from runtime.cluster.replies import Replies
from runtime.demo.cluster import NoActorsHere
from runtime.journal import SqliteJournal

pytestmark = pytest.mark.integration


def test_an_ask_across_processes_is_answered_by_the_note_not_the_poll(
        redis_server: Any, tmp_path: Path) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/13"

    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db")
        client_journal = SqliteJournal(tmp_path / "j.db")  # another connection, as a process
        worker = runtime(journal, stubs("effect"), da.Shipper)
        worker.replies = Replies(url, worker.owner)
        # The client's scheduling loop wakes every 30 s: only a note can answer in time.
        client = runtime(client_journal, stubs(), poll_interval_s=30.0,
                         ownership=NoActorsHere())
        async with worker:
            async with client:
                with pytest.raises(TimeoutError):  # the control: no note, no answer yet
                    await client.ask("shipper/s0", "ship", {"order": "o0", "nap": 0.01},
                                     msg_id="m0", timeout=2.0)
            noted = runtime(client_journal, stubs(), poll_interval_s=30.0,
                            ownership=NoActorsHere())
            noted.replies = Replies(url, noted.owner)
            async with noted:
                await asyncio.sleep(0.2)  # subscribed
                got = await noted.ask("shipper/s1", "ship", {"order": "o1", "nap": 0.01},
                                      msg_id="m1", timeout=5.0)
                assert set(got) == {"a", "b"}
                # a failure travels the same way (the journal holds the error)
                replies = [await noted.ask("shipper/s1", "ship", {"order": f"o{i}",
                                                                  "nap": 0.0},
                                           msg_id=f"m{i}", timeout=5.0) for i in range(2, 5)]
                assert len(replies) == 3
        await journal.close()
        await client_journal.close()

    run(main())


def test_a_note_for_a_process_that_is_gone_is_harmless(redis_server: Any) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/13"
    notes: list[tuple[str, str]] = []
    listener = Replies(url, "listener")
    listener.start(lambda a, m: notes.append((a, m)))
    sender = Replies(url, "sender")
    try:
        sender.publish("nobody-listens", "x/1", "m")  # dropped by Redis, no error
        deadline = asyncio.run(_wait_subscribed(sender, "listener"))
        assert deadline
        sender.publish("listener", "x/2", "m2")
        for _ in range(100):
            if notes:
                break
            asyncio.run(asyncio.sleep(0.02))
        assert notes == [("x/2", "m2")]
    finally:
        listener.stop()
        sender.stop()


async def _wait_subscribed(sender: Replies, owner: str) -> bool:
    for _ in range(100):
        counts = sender.client.pubsub_numsub(sender.channel_of(owner))
        if counts and counts[0][1] > 0:
            return True
        await asyncio.sleep(0.02)
    return False
