"""A Python activity (component-v1) called by a durable actor and by a WDL workflow: its
structured retryable errors are retried by the caller's policy, with one idempotency key
for every attempt, and the attempts are journaled."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from component_builds import executor_at, upload

from runtime.actors import Actor, ActorContext, ActorRuntime, handler
from runtime.journal import SqliteJournal
from wdl import load, run_workflow

RETRY = {"max_attempts": 4, "initial_interval_ms": 1, "max_interval_ms": 1, "jitter": False}


class Billing(Actor, type_name="billing"):
    @handler
    async def charge(self, ctx: ActorContext, payload: dict[str, Any]) -> Any:
        return await ctx.call_activity("conf_py", {"op": "flaky", "succeed_at": 3,
                                                   "total": payload["total"]}, retry=RETRY)


async def _nothing(_seconds: float) -> None:
    return None


def events(commits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for c in commits for e in c.get("events", [])]


def test_an_actor_retries_a_python_activity_on_its_retryable_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        with executor_at(tmp_path / "blobs") as ex:
            upload(ex, "conf_py")
            journal = SqliteJournal(tmp_path / "j.db")
            async with ActorRuntime(journal, ex, poll_interval_s=0.01, sleep=_nothing) as rt:
                rt.register(Billing)
                result = await rt.ask("billing/b1", "charge", {"total": 42}, msg_id="m1",
                                      timeout=30)
                assert result == {"calls": 3, "key": "billing/b1:m1:0", "total": 42}
                done = [e for e in events(await journal.read("billing/b1"))
                        if e.get("op") == "activity.done"]
                assert [e.get("attempts") for e in done] == [3]
            await journal.close()

    asyncio.run(scenario())


def test_a_workflow_retries_a_python_activity_step(tmp_path: Path) -> None:
    wf = load({
        "name": "charge-flow", "version": "1.0.0",
        "steps": [{"id": "charge", "kind": "activity", "activity": "conf_py",
                   "input": {"op": "flaky", "succeed_at": 2, "total": "{{ input.total }}"},
                   "retry": RETRY}],
        "output": {"calls": "{{ charge.calls }}", "total": "{{ charge.total }}"},
    })

    async def scenario() -> None:
        with executor_at(tmp_path / "blobs") as ex:
            upload(ex, "conf_py")
            journal = SqliteJournal(tmp_path / "wf.db")
            async with ActorRuntime(journal, ex, poll_interval_s=0.01, sleep=_nothing) as rt:
                outcome = await run_workflow(rt, wf, {"total": 7}, instance="w1", timeout=30)
            await journal.close()
        assert outcome["status"] == "completed", outcome
        assert outcome["output"] == {"calls": 2, "total": 7}

    asyncio.run(scenario())
