"""Fleet-wide activity limits in the actor runtime (issue "many workers"): a call over the
limit waits for room; it never fails. Two runtimes (as two workers) share one limit in a
real redis-server; the in-memory limiter holds within one process."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import durable_actors as da
import pytest
from test_durable_core import run, runtime, stubs

from runtime.journal import SqliteJournal
from runtime.limits import limiter_from_settings

LIMITS = json.dumps({"slow": {"concurrency": 2, "lease_s": 30}})


def _counting(acts: Any, gauge: dict[str, int]) -> None:
    async def before() -> None:
        gauge["now"] += 1
        gauge["max"] = max(gauge["max"], gauge["now"])
        await asyncio.sleep(0.05)

    async def after() -> None:
        gauge["now"] -= 1

    acts.before, acts.after = before, after


@pytest.mark.parametrize("where", ["memory", pytest.param("redis", marks=pytest.mark.integration)])
def test_a_call_over_the_limit_waits_and_never_fails(where: str, tmp_path: Path,
                                                     request: pytest.FixtureRequest) -> None:
    if where == "redis":
        server = request.getfixturevalue("redis_server")
        url = server.url.rsplit("/", 1)[0] + "/8"
        import redis

        redis.Redis.from_url(url).flushdb()
    else:
        url = "memory://"
    gauge = {"now": 0, "max": 0}

    async def main() -> None:
        limiter = limiter_from_settings(LIMITS, url)
        journals = [SqliteJournal(tmp_path / "j.db"), SqliteJournal(tmp_path / "j.db")]
        runtimes = []
        for journal in journals:
            acts = stubs("slow")
            _counting(acts, gauge)
            # two workers: with Redis each has its own limiter client on the shared limit
            own = limiter_from_settings(LIMITS, url) if where == "redis" else limiter
            runtimes.append(runtime(journal, acts, da.Limited, limiter=own))
        async with runtimes[0], runtimes[1]:
            asks = [runtimes[n % 2].ask(f"limited/l{n}", "call", n, msg_id="m")
                    for n in range(10)]
            results = await asyncio.wait_for(asyncio.gather(*asks), 30)
        assert [r["id"] for r in results] == [f"slow:limited/l{n}:m:0" for n in range(10)]
        for journal in journals:
            await journal.close()

    run(main())
    assert gauge["max"] == 2  # the limit was reached and never exceeded
