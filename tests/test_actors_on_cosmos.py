"""The actor runtime end to end on the Cosmos DB journal (the emulator over HTTPS):
activity, durable timer, event, outbox; a restart mid-run resumes by replay."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from runtime.actors import Actor, ActorContext, ActorRuntime, handler
from runtime.executor import Executor
from runtime.journal.cosmos import CosmosJournal
from runtime.settings import load_settings

BUILD = Path(__file__).resolve().parents[1] / "activities" / "build"
pytestmark = pytest.mark.filterwarnings(
    "ignore::urllib3.exceptions.InsecureRequestWarning")


class Shipment(Actor, type_name="shipment"):
    @handler
    async def run(self, ctx: ActorContext, payload: dict[str, Any]) -> dict[str, Any]:
        echoed = await ctx.call_activity("echo", {"parcel": payload["parcel"]})
        await ctx.sleep(0.3)
        signed = await ctx.wait_for_event("delivered", timeout=20)
        await ctx.send(f"ledger/{ctx.actor.id}", "note", {"parcel": echoed["parcel"]})
        self.state.update(parcel=echoed["parcel"], signed=signed["by"])
        return dict(self.state)


class Ledger(Actor, type_name="ledger"):
    @handler
    async def note(self, ctx: ActorContext, payload: dict[str, Any]) -> int:
        self.state["notes"] = self.state.get("notes", 0) + 1
        return int(self.state["notes"])


def test_a_run_survives_a_restart_on_cosmos(cosmos_server: Any, tmp_path: Path) -> None:
    container = f"actors-{uuid.uuid4().hex[:12]}"  # loom: allow(test setup, not the actor)

    def journal() -> CosmosJournal:
        return CosmosJournal(cosmos_server.endpoint, cosmos_server.key, database="loom-tests",
                             container=container, verify_tls=False)

    async def main(ex: Executor) -> None:
        first = journal()
        rt = ActorRuntime(first, ex, poll_interval_s=0.02)
        rt.register(Shipment)
        rt.register(Ledger)
        await rt.start()
        await rt.send("shipment/s1", "run", {"parcel": "p-1"}, msg_id="go")
        for _ in range(200):  # wait until the run is parked on its timer or event
            commits = await first.read("shipment/s1")
            if any(e["op"] == "timer.start" for c in commits for e in c["events"]):
                break
            await asyncio.sleep(0.05)  # loom: allow(test driver code, not the actor)
        await rt.stop()  # "crash": the run is unfinished in the journal
        await first.close()

        second = journal()
        async with ActorRuntime(second, ex, poll_interval_s=0.02) as rt2:
            rt2.register(Shipment)
            rt2.register(Ledger)
            await rt2.signal("shipment/s1", "delivered", {"by": "Ada"})
            for _ in range(400):
                state = await rt2.state_of("shipment/s1")
                ledger = await rt2.state_of("ledger/s1")
                if state and ledger:
                    break
                await asyncio.sleep(0.05)  # loom: allow(test driver code, not the actor)
            assert state == {"parcel": "p-1", "signed": "Ada"}
            assert ledger == {"notes": 1}
            commits = await second.read("shipment/s1")
            ops = [e["op"] for c in commits for e in c["events"]]
            assert ops.count("activity.done") == 1, ops  # not run again after the restart
            assert [c["seq"] for c in commits] == list(range(len(commits)))
        await second.close()

    with Executor(load_settings(home=tmp_path)) as ex:
        ex.upload((BUILD / "echo.wasm").read_bytes(),
                  json.loads((BUILD / "echo.manifest.json").read_text()))
        asyncio.run(main(ex))
