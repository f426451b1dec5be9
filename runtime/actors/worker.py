"""`loom worker`: run the actors of a module until SIGTERM/SIGINT, then stop gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal

from runtime.actors.loading import actor_classes, load_module
from runtime.actors.resilience import breakers_from_settings
from runtime.actors.runtime import ActorRuntime
from runtime.executor import Executor
from runtime.journal.factory import open_journal
from runtime.settings import LoomSettings

log = logging.getLogger("loom.worker")


async def run_worker(module_spec: str, settings: LoomSettings, *,
                     poll_interval_s: float = 0.05, drain_timeout_s: float = 30.0) -> None:
    """Run until SIGTERM/SIGINT, then drain: no new work, runs in flight finish within
    `drain_timeout_s`, leases are released. A second signal stops at once."""
    module = load_module(module_spec)
    classes = actor_classes(module)
    if not classes:
        raise SystemExit(f"no Actor subclasses in {module_spec}")
    journal = open_journal(settings)
    stop, now = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        (now if stop.is_set() else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    with Executor(settings) as executor:
        breakers = breakers_from_settings(settings.breaker_url,
                                          fail_max=settings.breaker_fail_max,
                                          reset_timeout=settings.breaker_reset_s)
        runtime = ActorRuntime(journal, executor, poll_interval_s=poll_interval_s,
                               breakers=breakers)
        for cls in classes:
            runtime.register(cls)
        await runtime.start()
        log.info("worker running %s on %s", ", ".join(c.type_name for c in classes),
                 journal.url)
        print(f"loom worker: {', '.join(c.type_name for c in classes)} on {journal.url}",
              flush=True)
        await stop.wait()
        print(f"loom worker: draining (up to {drain_timeout_s:g} s; signal again to stop now)",
              flush=True)
        finished = await runtime.drain(drain_timeout_s, abort=now)
        print("loom worker: drained and stopped" if finished else
              "loom worker: stopped with runs cut off; they resume elsewhere by replay",
              flush=True)
    await journal.close()
