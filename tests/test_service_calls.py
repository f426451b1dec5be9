"""The service's activity runner (runtime/service/calls.py) as an actor runtime uses it: a
tenant's actor calls the tenant's own activity, with the tenant's own retry policy (not the
shared activity's of the same name)."""

from __future__ import annotations

from pathlib import Path

import durable_actors as da
from actor_guests import flaky
from guests import executor_at, manifest
from test_durable_core import run

from runtime.actors import ActorRuntime
from runtime.journal import MemoryJournal
from runtime.service import tenancy
from runtime.service.calls import Calls
from runtime.service.metrics import Metrics


def test_a_tenants_activity_is_retried_by_the_tenants_policy(tmp_path: Path) -> None:
    with executor_at(tmp_path) as ex:
        # shared `boom`: never retried; acme's own `boom`: fails twice, retried up to 3 times
        ex.upload(flaky(5), manifest("boom", reuse_instances=True,
                                     retry={"max_attempts": 1}))
        ex.upload(flaky(2), manifest(tenancy.activity("acme", "boom"), reuse_instances=True,
                                     retry={"max_attempts": 3, "initial_interval_ms": 1,
                                            "jitter": False}))
        calls = Calls(ex, Metrics())

        async def main() -> None:
            rt = ActorRuntime(MemoryJournal(), activities=calls, poll_interval_s=0.01,
                              tenant_of=lambda key: "acme")
            rt.register(da.Poison)
            async with rt:
                assert await rt.ask("poison/p1", "go", None, timeout=20) == {"count": 3}
            attempts = [e for c in await rt.journal.read("poison/p1")
                        for e in c.get("events", []) if e["op"] == "activity.done"]
            assert [e["attempts"] for e in attempts] == [3]

        run(main())
